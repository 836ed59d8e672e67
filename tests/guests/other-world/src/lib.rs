//! A valid component for some other world: the host must refuse it and say
//! that the guest interface is missing.

wit_bindgen::generate!({
    inline: r#"
        package example:greeter@1.0.0;
        world greeter {
            export greet: func(name: string) -> string;
        }
    "#,
});

struct Greeter;
impl Guest for Greeter {
    fn greet(name: String) -> String {
        format!("hello {name}")
    }
}
export!(Greeter);

//! A plugin built against a newer major version of the contract
//! (`presence:plugin@0.2.0`): the host must refuse it, naming both versions.

wit_bindgen::generate!({
    inline: r#"
        package presence:plugin@0.2.0;
        interface guest {
            select: func(user-data: string) -> result<string, string>;
        }
        world plugin {
            export guest;
        }
    "#,
});

struct Future;
impl exports::presence::plugin::guest::Guest for Future {
    fn select(user_data: String) -> Result<String, String> {
        Ok(user_data)
    }
}
export!(Future);

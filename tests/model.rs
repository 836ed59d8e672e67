//! The randomized model check (see `support/model.rs`) on a fixed set of
//! seeds. A failure names its seed; replay it, or run many more, with
//! `cargo run -p presence-tests --bin soak -- --seed N --seconds S`.

use presence_tests::model::{run, Config};

async fn seed(seed: u64) {
    match run(Config::new(seed)).await {
        Ok(report) => println!("seed {seed}: {report:?}"),
        Err(e) => panic!("model check failed with seed {seed}: {e}\nreplay: cargo run -p presence-tests --bin soak -- --seed {seed} --seconds 0"),
    }
}

presence_tests::seeded_tests!(seed: seed_1 = 1, seed_2 = 2, seed_3 = 3, seed_4 = 4, seed_5 = 5, seed_6 = 6);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_1() {
    seed(1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_2() {
    seed(2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_3() {
    seed(3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_4() {
    seed(4).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_5() {
    seed(5).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_6() {
    seed(6).await
}

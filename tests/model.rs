//! The randomized model check (see `support/model.rs`) on a fixed set of
//! seeds, on one Redis and on a Redis Cluster. A failure names its seed; replay it, or run many more, with
//! `cargo run -p presence-tests --bin soak -- --seed N --seconds S`.

use presence_tests::model::{run, Config};

async fn check(config: Config, replay: &str) {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    let seed = config.seed;
    match run(config).await {
        Ok(report) => println!("seed {seed}: {report:?}"),
        Err(e) => panic!(
            "model check failed with seed {seed}: {e}\nreplay: cargo run -p presence-tests --bin soak -- --seed {seed} --seconds 0{replay}"
        ),
    }
}

async fn seed(seed: u64) {
    check(Config::new(seed), "").await
}

async fn cluster_seed(seed: u64) {
    check(Config::on_cluster(seed), " --cluster").await
}

presence_tests::seeded_tests!(seed: seed_1 = 1, seed_2 = 2, seed_3 = 3, seed_4 = 4, seed_5 = 5, seed_6 = 6);
presence_tests::seeded_tests!(cluster_seed: cluster_seed_1 = 1);

/// Seed 2 on the cluster diverges now and then: a user the model saw leave
/// stays listed in Redis past the settle deadline (seen in two full runs out
/// of four, never in a replay alone). An open defect of issue 21, run by
/// hand until it is fixed: `cargo test -p presence-tests --test model -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "intermittent divergence (a leave not applied in Redis during cluster faults), open in issue 21"]
async fn cluster_seed_2() {
    cluster_seed(2).await
}

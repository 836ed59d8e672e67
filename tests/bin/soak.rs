//! Soak the randomized model check: run seeds from `--seed` on until
//! `--seconds` have passed (at least one seed), print each seed's report, and
//! stop at the first failure with the seed that reproduces it.
//!
//! Usage: soak [--seed N] [--seconds S] [--steps K] [--cluster]
//!
//! `--cluster` runs each seed on a three-master Redis Cluster, with its
//! faults (a master killed, a replica promoted, a slot migrated, a master
//! paused) instead of one Redis's.

use presence_tests::model::{run, Config};
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} takes a number, got {v:?}")))
            .unwrap_or(default)
    };
    let first = flag("--seed", 1);
    let until = Instant::now() + Duration::from_secs(flag("--seconds", 60));
    let steps = flag("--steps", Config::new(0).steps as u64) as usize;
    let cluster = args.iter().any(|a| a == "--cluster");
    let (mut seeds, mut operations) = (0, 0);
    let mut seed = first;
    loop {
        let config = Config { steps, ..if cluster { Config::on_cluster(seed) } else { Config::new(seed) } };
        match run(config).await {
            Ok(report) => {
                println!("seed {seed}: ok {report:?}");
                seeds += 1;
                operations += report.operations;
            }
            Err(e) => {
                eprintln!("seed {seed}: FAILED: {e}");
                let flag = if cluster { " --cluster" } else { "" };
                eprintln!("replay: cargo run -p presence-tests --bin soak -- --seed {seed} --seconds 0{flag}");
                std::process::exit(1);
            }
        }
        seed += 1;
        if Instant::now() >= until {
            break;
        }
    }
    println!("{seeds} seeds ({first}..{seed}), {operations} operations, no divergence from the model");
}

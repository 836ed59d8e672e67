//! Waiting in tests, with one contract for every wait: `check` is tried until
//! it gives `Ok`, pausing [`EVERY`] between tries, for at most `within`. Past
//! that the wait fails naming what it waited for and what the last try saw
//! (its `Err`). Nothing sleeps blindly: a wait ends at the first success.
//!
//! [`until`] and [`until_blocking`] panic on failure (a test's assertion);
//! [`try_until`] returns the failure (the model check, which reports it with
//! its seed).

use std::fmt::Display;
use std::time::{Duration, Instant};

/// The pause between two tries.
pub const EVERY: Duration = Duration::from_millis(20);

/// Try `check` until it gives `Ok` or `within` passes; the error names `what`
/// and the last `Err`.
pub async fn try_until<T, E: Display>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> Result<T, E>,
) -> Result<T, String> {
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(last) if Instant::now() >= deadline => {
                return Err(format!("{what}: not within {within:?}; last seen: {last}"))
            }
            Err(_) => tokio::time::sleep(EVERY).await,
        }
    }
}

/// [`try_until`], panicking on failure.
pub async fn until<T, E: Display>(what: &str, within: Duration, check: impl AsyncFnMut() -> Result<T, E>) -> T {
    try_until(what, within, check).await.unwrap_or_else(|failure| panic!("{failure}"))
}

/// [`until`] for code outside a runtime (process and cluster set-up).
pub fn until_blocking<T, E: Display>(what: &str, within: Duration, mut check: impl FnMut() -> Result<T, E>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => panic!("{what}: not within {within:?}; last seen: {last}"),
            Err(_) => std::thread::sleep(EVERY),
        }
    }
}

/// `Ok(())` when `holds`, else an `Err` showing `seen` (for checks that are
/// a condition on a value).
pub fn when<S: std::fmt::Debug>(holds: bool, seen: S) -> Result<(), String> {
    if holds {
        Ok(())
    } else {
        Err(format!("{seen:?}"))
    }
}

//! The coalescing window shared by the hub's `presence_diff` flush and the
//! engine's `count` events: after the first change of a burst, wait one
//! window, then flush everything that piled up meanwhile, at once.

use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// Each time `wanted` is notified, wait `window` (0: until the runtime gets
/// back to this task) and call `flush` on the owner. Returns once the owner
/// is gone; holds only a weak reference meanwhile.
pub(crate) async fn flush_after_window<T>(owner: Weak<T>, wanted: Arc<Notify>, window: Duration, flush: fn(&T)) {
    loop {
        wanted.notified().await;
        if window.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(window).await;
        }
        let Some(owner) = owner.upgrade() else { return };
        flush(&owner);
    }
}

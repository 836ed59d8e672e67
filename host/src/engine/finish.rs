//! Operations that finish even when their caller stops waiting. A future
//! wrapped in [`Finish`] is polled in place, at no extra cost, as long as its
//! caller polls it; if the caller drops it half-way (a plugin deadline, a
//! cancelled request, a `select!` that took another branch), the remainder is
//! handed to the runtime and runs to completion there. So no engine
//! operation is ever cut in half between a backend call and its bookkeeping.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pub(super) struct Finish<F: Future<Output = ()> + Send + 'static> {
    /// `None` once it completed.
    future: Option<Pin<Box<F>>>,
}

impl<F: Future<Output = ()> + Send + 'static> Finish<F> {
    pub fn new(future: F) -> Self {
        Self { future: Some(Box::pin(future)) }
    }
}

impl<F: Future<Output = ()> + Send + 'static> Future for Finish<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(future) = self.future.as_mut() else { return Poll::Ready(()) };
        // A future that panicked must not be handed on by `drop`.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => {
                self.future = None;
                Poll::Ready(())
            }
            Err(panic) => {
                self.future = None;
                std::panic::resume_unwind(panic)
            }
        }
    }
}

impl<F: Future<Output = ()> + Send + 'static> Drop for Finish<F> {
    fn drop(&mut self) {
        if let Some(rest) = self.future.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(rest)),
                Err(_) => tracing::warn!("an engine operation was dropped outside a runtime and cannot finish"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Dropped half-way, the operation still runs to its end.
    #[tokio::test]
    async fn a_dropped_operation_finishes_on_the_runtime() {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let op = Finish::new(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            flag.store(true, Ordering::SeqCst);
        });
        assert!(tokio::time::timeout(Duration::from_millis(1), op).await.is_err(), "the caller gave up");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(done.load(Ordering::SeqCst));
    }
}

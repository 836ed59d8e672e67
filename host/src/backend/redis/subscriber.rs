//! The pub/sub side of the Redis backend: one task owns one subscriber
//! connection, the set of channels the engine watches, and reconnection.
//!
//! Commands (watch/unwatch) arrive in order over a channel, so a topic that is
//! dropped and watched again is never left unsubscribed by a late UNSUBSCRIBE.
//! When the connection drops (or cannot subscribe, as when an ACL refuses the
//! channels), the task waits with exponential backoff — reset only once a
//! session stayed up longer than the cap, so a server that accepts connections
//! but refuses subscriptions is not hammered — then subscribes every watched
//! channel again in batches and emits [`BackendEvent::Resynced`] so the engine
//! re-reads what it may have missed.

use super::keys::topic_of_channel;
use crate::backend::{BackendError, BackendEvent, Change, ChangeKind};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// First wait after a failed session; doubles per failure.
pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between reconnects; a session that lasted this long resets the backoff.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Channels per SUBSCRIBE when resubscribing.
const SUBSCRIBE_BATCH: usize = 256;

pub(super) enum Command {
    Watch(String, oneshot::Sender<Result<(), BackendError>>),
    Unwatch(String),
}

/// Handle to the subscriber task; dropping it stops the task.
pub(super) struct Subscriber {
    pub commands: mpsc::UnboundedSender<Command>,
    connected: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscriber {
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Subscribed and receiving (false while reconnecting).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Spawn the task `task` makes from the command receiver and the
    /// "connected" flag it keeps (either topology's subscriber).
    pub(super) fn spawn<F>(task: impl FnOnce(mpsc::UnboundedReceiver<Command>, Arc<AtomicBool>) -> F) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (commands, rx) = mpsc::unbounded_channel();
        let connected = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(task(rx, connected.clone()));
        Subscriber { commands, connected, task }
    }

    /// The subscriber of one Redis node.
    pub fn start(
        client: redis::Client,
        prefix: String,
        timeout: Duration,
        events: mpsc::UnboundedSender<BackendEvent>,
    ) -> Self {
        Self::spawn(|commands, connected| {
            Task { client, prefix, timeout, events, commands, watched: HashSet::new(), connected }.run()
        })
    }
}

pub(super) fn unavailable(reason: impl ToString) -> BackendError {
    BackendError::unavailable("subscribe", reason.to_string())
}

/// Why a session ended.
enum Ended {
    /// The backend is gone: stop.
    Stopped,
    /// Reconnect (after a wait), for this reason.
    Failed(String),
}

struct Task {
    client: redis::Client,
    prefix: String,
    timeout: Duration,
    events: mpsc::UnboundedSender<BackendEvent>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Channels the engine wants, kept across reconnects.
    watched: HashSet<String>,
    connected: Arc<AtomicBool>,
}

impl Task {
    async fn run(mut self) {
        let mut sessions = 0u64;
        let mut backoff = MIN_BACKOFF;
        loop {
            let started = Instant::now();
            let ended = self.session(sessions).await;
            self.connected.store(false, Ordering::Relaxed);
            sessions += 1;
            let Ended::Failed(reason) = ended else { return };
            if started.elapsed() >= MAX_BACKOFF {
                backoff = MIN_BACKOFF;
            }
            tracing::warn!(%reason, "redis subscriber: disconnected; retrying in {backoff:?}");
            if !self.wait(backoff, &reason).await {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Sleep, answering watches at once (with an error) instead of making
    /// callers wait. False when the backend is gone.
    async fn wait(&mut self, period: Duration, reason: &str) -> bool {
        let wait = tokio::time::sleep(period);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => return true,
                command = self.commands.recv() => match command {
                    None => return false,
                    Some(Command::Watch(channel, ack)) => {
                        self.watched.insert(channel);
                        let _ = ack.send(Err(unavailable(reason)));
                    }
                    Some(Command::Unwatch(channel)) => { self.watched.remove(&channel); }
                },
            }
        }
    }

    /// One connection: subscribe everything watched, then serve commands and
    /// forward messages until something fails.
    async fn session(&mut self, earlier: u64) -> Ended {
        let timeout = self.timeout;
        let pubsub = match tokio::time::timeout(timeout, self.client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => return Ended::Failed(format!("cannot connect: {e}")),
            Err(_) => return Ended::Failed(format!("no connection within {timeout:?}")),
        };
        let (mut sink, mut stream) = pubsub.split();
        let channels: Vec<&String> = self.watched.iter().collect();
        for batch in channels.chunks(SUBSCRIBE_BATCH) {
            match tokio::time::timeout(timeout, sink.subscribe(batch)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Ended::Failed(format!("cannot subscribe: {e}")),
                Err(_) => return Ended::Failed(format!("no subscribe reply within {timeout:?}")),
            }
        }
        self.connected.store(true, Ordering::Relaxed);
        if earlier > 0 {
            tracing::info!(channels = self.watched.len(), "redis subscriber: reconnected");
            let _ = self.events.send(BackendEvent::Resynced);
        }
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    None => return Ended::Stopped,
                    Some(Command::Watch(channel, ack)) => {
                        self.watched.insert(channel.clone());
                        let result = match tokio::time::timeout(timeout, sink.subscribe(&channel)).await {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(e)) => Err(unavailable(e)),
                            Err(_) => Err(BackendError::Timeout { op: "subscribe", after: timeout }),
                        };
                        let failed = result.as_ref().err().map(ToString::to_string);
                        if failed.is_some() {
                            // Unready before the caller hears of the failure.
                            self.connected.store(false, Ordering::Relaxed);
                        }
                        let _ = ack.send(result);
                        if let Some(reason) = failed {
                            return Ended::Failed(reason);
                        }
                    }
                    Some(Command::Unwatch(channel)) => {
                        self.watched.remove(&channel);
                        if tokio::time::timeout(timeout, sink.unsubscribe(&channel)).await.is_err() {
                            return Ended::Failed(format!("no unsubscribe reply within {timeout:?}"));
                        }
                    }
                },
                message = stream.next() => match message {
                    None => return Ended::Failed("connection lost".into()),
                    Some(message) => {
                        let Some(topic) = topic_of_channel(&self.prefix, message.get_channel_name()) else { continue };
                        match parse(topic, message.get_payload_bytes()) {
                            Ok(event) => { let _ = self.events.send(event); }
                            Err(e) => tracing::warn!(topic, error = %e, "redis subscriber: malformed event ignored"),
                        }
                    }
                },
            }
        }
    }
}

/// An event as join.lua, leave.lua, the sweep and clear.lua publish it.
#[derive(Deserialize)]
struct Wire<'a> {
    i: String,
    s: u64,
    /// The topic's sequence number before this change.
    #[serde(default)]
    b: Option<u64>,
    e: &'a str,
    #[serde(default)]
    k: String,
    #[serde(default, borrow)]
    d: Option<&'a RawValue>,
    #[serde(default)]
    p: String,
}

pub(super) fn parse(topic: &str, payload: &[u8]) -> Result<BackendEvent, String> {
    let wire: Wire = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    let kind = match wire.e {
        "join" => ChangeKind::Join,
        "updated" => ChangeKind::Updated,
        "leave" => ChangeKind::Leave,
        "clear" => return Ok(BackendEvent::Cleared { topic: topic.to_owned(), instance: wire.i, epoch: wire.p }),
        other => return Err(format!("unknown event kind {other:?}")),
    };
    Ok(BackendEvent::Change(Change {
        topic: topic.to_owned(),
        instance: wire.i,
        seq: wire.s,
        previous: wire.b,
        kind,
        key: wire.k,
        data: wire.d.map_or_else(|| "null".to_owned(), |raw| raw.get().to_owned()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_scripts_publish() {
        let event = parse("r", br#"{"i":"00ff","s":7,"b":5,"e":"leave","k":"a|b","d":{"n":"\u00fc"}}"#).unwrap();
        let BackendEvent::Change(change) = event else { panic!("{event:?}") };
        assert_eq!((change.seq, change.kind, change.key.as_str()), (7, ChangeKind::Leave, "a|b"));
        assert_eq!(change.previous, Some(5));
        assert_eq!(change.data, r#"{"n":"\u00fc"}"#);
        assert!(parse("r", b"{not json").is_err());
        assert!(parse("r", br#"{"i":"x","s":1,"e":"boom"}"#).is_err());
    }
}

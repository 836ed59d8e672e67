//! The pub/sub side of the Redis backend: one task owns one subscriber
//! connection, the set of channels the engine watches, and reconnection.
//!
//! Commands (watch/unwatch) arrive in order over a channel, so a topic that is
//! dropped and watched again is never left unsubscribed by a late UNSUBSCRIBE.
//! When the connection drops, the task reconnects with capped backoff,
//! subscribes every watched channel again and emits [`BackendEvent::Resynced`]
//! so the engine re-reads what it may have missed.

use super::keys::topic_of_channel;
use crate::backend::{BackendError, BackendEvent, Change, ChangeKind};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub(super) enum Command {
    Watch(String, oneshot::Sender<Result<(), BackendError>>),
    Unwatch(String),
}

/// Handle to the subscriber task; dropping it stops the task.
pub(super) struct Subscriber {
    pub commands: mpsc::UnboundedSender<Command>,
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

    pub fn start(
        client: redis::Client,
        prefix: String,
        timeout: Duration,
        events: mpsc::UnboundedSender<BackendEvent>,
    ) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(client, prefix, timeout, events, rx));
        Subscriber { commands, task }
    }
}

fn unavailable(reason: impl ToString) -> BackendError {
    BackendError::Unavailable { op: "subscribe", reason: reason.to_string() }
}

async fn run(
    client: redis::Client,
    prefix: String,
    timeout: Duration,
    events: mpsc::UnboundedSender<BackendEvent>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut watched: HashSet<String> = HashSet::new();
    let mut connected_before = false;
    let mut backoff = Duration::from_millis(20);
    loop {
        let connection = tokio::time::timeout(timeout, client.get_async_pubsub()).await;
        let pubsub = match connection {
            Ok(Ok(pubsub)) => pubsub,
            failed => {
                let reason = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no connection within {timeout:?}"),
                };
                tracing::warn!(%reason, "redis subscriber: cannot connect; retrying in {backoff:?}");
                // While disconnected, answer watches at once instead of making callers wait.
                let wait = tokio::time::sleep(backoff);
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        _ = &mut wait => break,
                        command = commands.recv() => match command {
                            None => return,
                            Some(Command::Watch(channel, ack)) => {
                                watched.insert(channel);
                                let _ = ack.send(Err(unavailable(&reason)));
                            }
                            Some(Command::Unwatch(channel)) => { watched.remove(&channel); }
                        },
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut healthy = true;
        for channel in &watched {
            if !matches!(tokio::time::timeout(timeout, sink.subscribe(channel)).await, Ok(Ok(()))) {
                healthy = false;
                break;
            }
        }
        if !healthy {
            continue;
        }
        backoff = Duration::from_millis(20);
        if connected_before {
            tracing::info!(channels = watched.len(), "redis subscriber: reconnected");
            let _ = events.send(BackendEvent::Resynced);
        }
        connected_before = true;
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None => return,
                    Some(Command::Watch(channel, ack)) => {
                        watched.insert(channel.clone());
                        let result = match tokio::time::timeout(timeout, sink.subscribe(&channel)).await {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(e)) => Err(unavailable(e)),
                            Err(_) => Err(BackendError::Timeout { op: "subscribe", after: timeout }),
                        };
                        let failed = result.is_err();
                        let _ = ack.send(result);
                        if failed {
                            break;
                        }
                    }
                    Some(Command::Unwatch(channel)) => {
                        watched.remove(&channel);
                        if tokio::time::timeout(timeout, sink.unsubscribe(&channel)).await.is_err() {
                            break;
                        }
                    }
                },
                message = stream.next() => match message {
                    None => {
                        tracing::warn!("redis subscriber: connection lost; reconnecting");
                        break;
                    }
                    Some(message) => {
                        let Some(topic) = topic_of_channel(&prefix, message.get_channel_name()) else { continue };
                        match parse(topic, message.get_payload_bytes()) {
                            Ok(event) => { let _ = events.send(event); }
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
    e: &'a str,
    #[serde(default)]
    k: String,
    #[serde(default, borrow)]
    d: Option<&'a RawValue>,
    #[serde(default)]
    p: String,
}

fn parse(topic: &str, payload: &[u8]) -> Result<BackendEvent, String> {
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
        let event = parse("r", br#"{"i":"00ff","s":7,"e":"leave","k":"a|b","d":{"n":"\u00fc"}}"#).unwrap();
        let BackendEvent::Change(change) = event else { panic!("{event:?}") };
        assert_eq!((change.seq, change.kind, change.key.as_str()), (7, ChangeKind::Leave, "a|b"));
        assert_eq!(change.data, r#"{"n":"\u00fc"}"#);
        assert!(parse("r", b"{not json").is_err());
        assert!(parse("r", br#"{"i":"x","s":1,"e":"boom"}"#).is_err());
    }
}

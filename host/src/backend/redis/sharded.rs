//! The pub/sub side of the Redis backend on a cluster: one task owns one
//! cluster connection in RESP3, `SSUBSCRIBE`s each watched topic's channel on
//! the shard that owns the topic's slot, and keeps it there.
//!
//! The cluster client (redis-rs) tracks the subscriptions and subscribes them
//! again where their slots live after a node reconnects or the topology
//! changes (a failover). Two things are ours:
//!
//! - **Knowing what was missed.** A channel confirmed a second time was lost
//!   for a while (its node died or reconnected): events published meanwhile
//!   are gone, so the topic is re-read ([`BackendEvent::TopicResynced`]) —
//!   that topic only, not every topic the instance watches.
//! - **Slot moves.** When a slot migrates, its old owner ends the channels of
//!   that slot with a server-sent `SUNSUBSCRIBE`, which the client takes as
//!   final. A channel still watched is subscribed again (the client routes it
//!   to the new owner, retrying until one answers) and then re-read.

use super::connection::Endpoint;
use super::keys::topic_of_channel;
use super::subscriber::{parse, unavailable, Command, Subscriber, MAX_BACKOFF, MIN_BACKOFF};
use crate::backend::{BackendError, BackendEvent};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How often channels the server ended are tried again while their slot has
/// no reachable owner.
const RESUBSCRIBE_EVERY: Duration = Duration::from_millis(250);

/// Start the sharded subscriber for a cluster.
pub(super) fn start(
    endpoint: Endpoint,
    prefix: String,
    timeout: Duration,
    events: mpsc::UnboundedSender<BackendEvent>,
) -> Result<Subscriber, BackendError> {
    let (commands, command_rx) = mpsc::unbounded_channel();
    let (push_tx, pushes) = mpsc::unbounded_channel();
    let client = endpoint.cluster_client(Some(push_tx))?;
    let connected = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(
        Task {
            client,
            prefix,
            timeout,
            events,
            commands: command_rx,
            pushes,
            watched: HashSet::new(),
            confirmed: HashSet::new(),
            lapsed: HashSet::new(),
            connected: connected.clone(),
        }
        .run(),
    );
    Ok(Subscriber { commands, connected, task })
}

struct Task {
    client: redis::cluster::ClusterClient,
    prefix: String,
    timeout: Duration,
    events: mpsc::UnboundedSender<BackendEvent>,
    commands: mpsc::UnboundedReceiver<Command>,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    /// Channels the engine wants.
    watched: HashSet<String>,
    /// Watched channels the server confirmed at least once.
    confirmed: HashSet<String>,
    /// Watched channels the server ended (slot moved), not yet subscribed again.
    lapsed: HashSet<String>,
    connected: Arc<AtomicBool>,
}

impl Task {
    async fn run(mut self) {
        let Some(mut conn) = self.connect().await else { return };
        self.connected.store(true, Ordering::Relaxed);
        let mut retry = tokio::time::interval(RESUBSCRIBE_EVERY);
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    None => return,
                    Some(Command::Watch(channel, ack)) => {
                        let result = self.subscribe(&mut conn, &channel).await;
                        if result.is_ok() {
                            self.watched.insert(channel);
                        }
                        let _ = ack.send(result);
                    }
                    Some(Command::Unwatch(channel)) => {
                        self.watched.remove(&channel);
                        self.confirmed.remove(&channel);
                        self.lapsed.remove(&channel);
                        let _ = tokio::time::timeout(self.timeout, conn.sunsubscribe(&channel)).await;
                    }
                },
                push = self.pushes.recv() => match push {
                    None => return,
                    Some(push) => self.on_push(push),
                },
                _ = retry.tick(), if !self.lapsed.is_empty() => self.resubscribe_lapsed(&mut conn).await,
            }
        }
    }

    /// The first connection, retried with backoff; watches that arrive
    /// meanwhile are answered with an error at once. `None`: the backend is gone.
    async fn connect(&mut self) -> Option<ClusterConnection> {
        let mut backoff = MIN_BACKOFF;
        loop {
            let reason = match tokio::time::timeout(self.timeout, self.client.get_async_connection()).await {
                Ok(Ok(conn)) => return Some(conn),
                Ok(Err(e)) => format!("cannot connect: {e}"),
                Err(_) => format!("no connection within {:?}", self.timeout),
            };
            tracing::warn!(%reason, "redis cluster subscriber: retrying in {backoff:?}");
            let wait = tokio::time::sleep(backoff);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    command = self.commands.recv() => match command {
                        None => return None,
                        Some(Command::Watch(_, ack)) => { let _ = ack.send(Err(unavailable(&reason))); }
                        Some(Command::Unwatch(_)) => {}
                    },
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn subscribe(&self, conn: &mut ClusterConnection, channel: &str) -> Result<(), BackendError> {
        match tokio::time::timeout(self.timeout, conn.ssubscribe(channel)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(BackendError::Timeout { op: "subscribe", after: self.timeout }),
        }
    }

    fn on_push(&mut self, push: PushInfo) {
        let channel = match push.data.first() {
            Some(Value::BulkString(name)) => String::from_utf8_lossy(name).into_owned(),
            _ => return,
        };
        match push.kind {
            PushKind::SMessage => {
                let (Some(topic), Some(Value::BulkString(payload))) =
                    (topic_of_channel(&self.prefix, &channel), push.data.get(1))
                else {
                    return;
                };
                match parse(topic, payload) {
                    Ok(event) => {
                        let _ = self.events.send(event);
                    }
                    Err(e) => tracing::warn!(topic, error = %e, "redis cluster subscriber: malformed event ignored"),
                }
            }
            PushKind::SSubscribe if self.watched.contains(&channel) => {
                // Confirmed before: this is the client subscribing it again
                // after its node came back or its slot moved.
                if !self.confirmed.insert(channel.clone()) {
                    if let Some(topic) = topic_of_channel(&self.prefix, &channel) {
                        tracing::info!(topic, "redis cluster subscriber: topic's shard changed; re-reading it");
                        let _ = self.events.send(BackendEvent::TopicResynced { topic: topic.to_owned() });
                    }
                }
            }
            PushKind::SUnsubscribe if self.watched.contains(&channel) => {
                // Not ours (an unwatch forgets the channel first): the
                // server ended it because its slot moved away.
                self.lapsed.insert(channel);
            }
            _ => {}
        }
    }

    /// Subscribe again every channel the server ended; the ones whose slot
    /// has no reachable owner yet stay for the next try.
    async fn resubscribe_lapsed(&mut self, conn: &mut ClusterConnection) {
        let lapsed: Vec<String> = self.lapsed.iter().cloned().collect();
        for channel in lapsed {
            match self.subscribe(conn, &channel).await {
                Ok(()) => {
                    self.lapsed.remove(&channel);
                }
                Err(e) => tracing::debug!(%channel, error = %e, "redis cluster subscriber: channel not back yet"),
            }
        }
    }
}

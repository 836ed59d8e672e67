//! The pub/sub side of the Redis backend on a cluster: one task owns one
//! cluster connection in RESP3, `SSUBSCRIBE`s each watched topic's channel on
//! the shard that owns the topic's slot, and keeps it there.
//!
//! The cluster client (redis-rs) tracks the subscriptions and means to
//! subscribe them again where their slots live after a node reconnects or
//! the topology changes (a failover). What is ours:
//!
//! - **Knowing what was missed.** A channel confirmed a second time was lost
//!   for a while (its node died or reconnected): events published meanwhile
//!   are gone, so the topic is re-read ([`BackendEvent::TopicResynced`]) —
//!   that topic only, not every topic the instance watches.
//! - **Dropped connections.** When a node's connection drops (killed,
//!   restarted, a network blip), the client reconnects but does not reliably
//!   subscribe that node's channels again (redis-rs 1.8, seen in tests), and
//!   its `Disconnection` push does not name the node: every watched channel
//!   is subscribed again, and each confirmation re-reads its topic.
//! - **Slot moves.** When a slot migrates, its old owner ends the channels of
//!   that slot with a server-sent `SUNSUBSCRIBE`, which the client takes as
//!   final. A channel still watched is subscribed again (the client routes it
//!   to the new owner, retrying until one answers) and then re-read.
//! - **Failovers.** The client only re-reads the topology when a request
//!   fails, and this connection sends none once it is subscribed: a master
//!   that died would keep its channels unsubscribed forever. So the task reads
//!   the slot table itself (every second, and four times a second for a while
//!   after a connection dropped) and subscribes again each channel whose slot
//!   has a new master; the confirmation then re-reads that topic.

use super::connection::Endpoint;
use super::keys::topic_of_channel;
use super::slots::{slot_of, Node, SlotTable};
use super::subscriber::{parse, unavailable, Command, Subscriber, MAX_BACKOFF, MIN_BACKOFF};
use crate::backend::{BackendError, BackendEvent};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often channels the server ended are tried again while their slot has
/// no reachable owner, and the slot table is read after a connection dropped.
const RESUBSCRIBE_EVERY: Duration = Duration::from_millis(250);
/// How often the slot table is read otherwise.
const TOPOLOGY_EVERY: Duration = Duration::from_secs(1);
/// Channels subscribed again at once after a connection dropped.
const RESUBSCRIBE_AT_ONCE: usize = 64;
/// How long after a dropped connection the table is read at the fast pace
/// (a failover takes about `cluster-node-timeout` plus an election).
const WATCH_AFTER_DROP: Duration = Duration::from_secs(30);

/// Start the sharded subscriber for a cluster.
pub(super) fn start(
    endpoint: Endpoint,
    prefix: String,
    timeout: Duration,
    events: mpsc::UnboundedSender<BackendEvent>,
) -> Result<Subscriber, BackendError> {
    let (push_tx, pushes) = mpsc::unbounded_channel();
    let client = endpoint.cluster_client(Some(push_tx))?;
    Ok(Subscriber::spawn(|commands, connected| {
        Task {
            client,
            prefix,
            timeout,
            events,
            commands,
            pushes,
            watched: HashSet::new(),
            confirmed: HashSet::new(),
            lapsed: HashSet::new(),
            owners: HashMap::new(),
            table: None,
            dropped_at: None,
            checked_at: Instant::now(),
            connected,
        }
        .run()
    }))
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
    /// Watched channels the server ended (slot moved) or a dropped connection
    /// lost, not yet subscribed again.
    lapsed: HashSet<String>,
    /// The master each watched channel was subscribed on, as the table said.
    owners: HashMap<String, Node>,
    /// The slot table as last read.
    table: Option<SlotTable>,
    /// When a node's connection last dropped.
    dropped_at: Option<Instant>,
    /// When the slot table was last read.
    checked_at: Instant,
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
                            self.note_owner(&channel);
                            self.watched.insert(channel);
                        }
                        let _ = ack.send(result);
                    }
                    Some(Command::Unwatch(channel)) => {
                        self.watched.remove(&channel);
                        self.confirmed.remove(&channel);
                        self.lapsed.remove(&channel);
                        self.owners.remove(&channel);
                        let _ = tokio::time::timeout(self.timeout, conn.sunsubscribe(&channel)).await;
                    }
                },
                push = self.pushes.recv() => match push {
                    None => return,
                    Some(push) => self.on_push(push),
                },
                _ = retry.tick() => {
                    if !self.lapsed.is_empty() {
                        self.resubscribe_lapsed(&mut conn).await;
                    }
                    let fast = self.dropped_at.is_some_and(|at| at.elapsed() < WATCH_AFTER_DROP);
                    if fast || self.checked_at.elapsed() >= TOPOLOGY_EVERY {
                        self.follow_topology(&mut conn).await;
                    }
                }
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
        if push.kind == PushKind::Disconnection {
            // The client reconnects to the node but does not always
            // subscribe its channels there again, and does not say which node
            // it was: every watched channel is subscribed again (a no-op on
            // the nodes that stayed up), and each confirmation re-reads its
            // topic, since what was published meanwhile is gone.
            self.dropped_at = Some(Instant::now());
            self.lapsed.extend(self.watched.iter().cloned());
            return;
        }
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
            PushKind::SSubscribe if self.watched.contains(&channel) => self.confirmed(channel),
            PushKind::SUnsubscribe if self.watched.contains(&channel) => {
                // Not ours (an unwatch forgets the channel first): the
                // server ended it because its slot moved away.
                self.lapsed.insert(channel);
            }
            _ => {}
        }
    }

    /// The server confirmed a watched channel. Confirmed before: this is a
    /// subscription made again (its node came back, its slot moved), and
    /// what was published meanwhile is lost: re-read the topic.
    fn confirmed(&mut self, channel: String) {
        let Some(topic) = topic_of_channel(&self.prefix, &channel).map(str::to_owned) else { return };
        if !self.confirmed.insert(channel) {
            tracing::info!(topic, "redis cluster subscriber: topic's shard changed; re-reading it");
            let _ = self.events.send(BackendEvent::TopicResynced { topic });
        }
    }

    /// Remember which master `channel` was subscribed on.
    fn note_owner(&mut self, channel: &str) {
        if let Some(node) = self.table.as_ref().and_then(|t| t.node_of(slot_of(channel.as_bytes()))) {
            self.owners.insert(channel.to_owned(), node.clone());
        }
    }

    /// Read the slot table; subscribe again each watched channel whose slot
    /// has another master now (its confirmation re-reads the topic).
    async fn follow_topology(&mut self, conn: &mut ClusterConnection) {
        self.checked_at = Instant::now();
        let read = tokio::time::timeout(self.timeout, redis::cmd("CLUSTER").arg("SLOTS").query_async(conn)).await;
        let Ok(Ok(reply)) = read else { return };
        let Ok(table) = SlotTable::parse(&reply) else { return };
        let moved: Vec<String> = self
            .watched
            .iter()
            .filter(|channel| {
                let now = table.node_of(slot_of(channel.as_bytes()));
                now.is_some() && now != self.owners.get(*channel)
            })
            .cloned()
            .collect();
        let first_read = self.table.is_none();
        self.table = Some(table);
        for channel in moved {
            if first_read && !self.owners.contains_key(&channel) {
                // Subscribed before any table was read: just note where.
                self.note_owner(&channel);
                continue;
            }
            match self.subscribe(conn, &channel).await {
                Ok(()) => self.note_owner(&channel),
                Err(e) => {
                    tracing::debug!(%channel, error = %e, "redis cluster subscriber: new master not reachable yet")
                }
            }
        }
    }

    /// Subscribe again every channel that lapsed (the server ended it, or
    /// a node's connection dropped), many at once; the ones whose slot has
    /// no reachable owner yet stay for the next try.
    async fn resubscribe_lapsed(&mut self, conn: &mut ClusterConnection) {
        use futures::StreamExt;
        let lapsed: Vec<String> = self.lapsed.iter().cloned().collect();
        let this = &*self;
        let results: Vec<(String, Result<(), BackendError>)> = futures::stream::iter(lapsed)
            .map(|channel| {
                let mut conn = conn.clone();
                async move {
                    let result = this.subscribe(&mut conn, &channel).await;
                    (channel, result)
                }
            })
            .buffer_unordered(RESUBSCRIBE_AT_ONCE)
            .collect()
            .await;
        for (channel, result) in results {
            match result {
                Ok(()) => {
                    self.lapsed.remove(&channel);
                    self.note_owner(&channel);
                }
                Err(e) => tracing::debug!(%channel, error = %e, "redis cluster subscriber: channel not back yet"),
            }
        }
    }
}

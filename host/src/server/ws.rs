//! One WebSocket connection's life: upgrade (a session cookie from the auth
//! preflight, the plugin's `authenticate`, or the query string as the demo
//! user data), then a loop over client frames, outgoing frames, keepalive and
//! shutdown; on exit the close hook runs and the connection leaves every
//! topic.
//!
//! The first frame decides the generation: `hello` makes a current (0.5)
//! client — acks with `ref`, machine-word denials, presence as
//! `presence_state`/`presence_diff` — anything else a legacy one (0.3/0.4),
//! served as it always was. Close codes are chosen for how the clients react:
//! 4401/4403 stop a current client for good (an upgrade the plugin refuses),
//! 4429 makes it back off (flooding), everything else is retried.

use super::admission::{Refused, Ticket};
use super::protocol::{self, ClientMessage, DenialReason, Refusal, MAX_BATCH_TOPICS};
use super::Shared;
use crate::engine::{limit_word, PRESENCE_PREFIX};
use crate::hub::{Frame, Outbox};
use crate::plugin::{Action, Denial, Pair, PolicyError, UpgradeRequest};
use crate::ConnId;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

/// Close codes (RFC 6455 §7.4.1, and the clients' own 4xxx).
const GOING_AWAY: u16 = 1001;
const TOO_BIG: u16 = 1009;
const INTERNAL: u16 = 1011;
const TRY_AGAIN_LATER: u16 = 1013;
const UNAUTHENTICATED: u16 = 4401;
const FORBIDDEN: u16 = 4403;
const RATE_LIMITED: u16 = 4429;

pub(super) async fn upgrade(
    State(shared): State<Arc<Shared>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    uri: Uri,
    ws: WebSocketUpgrade,
) -> Response {
    if shared.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let peer = peer.map(|p| p.0 .0);
    if let Err(refused) = shared.limits.allowed_origins.check(&headers) {
        shared.metrics.refused_origin.fetch_add(1, Relaxed);
        tracing::warn!(peer = ?peer, %refused, "cross-origin upgrade refused");
        return (StatusCode::FORBIDDEN, format!("{refused}\n")).into_response();
    }
    let ticket = match shared.admission.admit(peer.map(|p| p.ip())) {
        Ok(ticket) => ticket,
        Err(refused) => return refuse_over_limit(&shared, &headers, ws, refused, peer),
    };
    let identity = match shared.sessions.verify(&headers) {
        Some(user_data) => Ok(user_data),
        None => authenticate(&shared, &uri, &headers, peer).await,
    };
    // Frames up to 4× the limit are read and refused with a close (1009)
    // that names the limit; beyond that the WebSocket layer drops the socket.
    let hard_limit = shared.limits.max_frame_bytes.saturating_mul(4);
    // Small buffers: an idle connection should cost a few kilobytes, not the
    // 128 KiB tungstenite reserves by default. Reads grow the buffer to the
    // frame in hand; writes are batched up to 4 KiB before reaching the socket.
    let ws = ws.max_frame_size(hard_limit).max_message_size(hard_limit).read_buffer_size(256).write_buffer_size(4096);
    match identity {
        Ok(user_data) => {
            let tracker = shared.connections.clone();
            let address = peer.map(|p| p.ip());
            ws.on_upgrade(move |socket| tracker.track_future(serve(shared, socket, user_data, address, ticket)))
        }
        // A browser never sees an HTTP status on an upgrade (a 401 reaches it
        // as 1006, retried forever): accept, then close with a code it acts on.
        Err(denial) => {
            shared.metrics.upgrades_denied.fetch_add(1, Relaxed);
            tracing::info!(status = denial.status, reason = %denial.reason, "upgrade refused");
            let code = match denial.status {
                401 => UNAUTHENTICATED,
                429 => RATE_LIMITED,
                500..=599 => INTERNAL,
                _ => FORBIDDEN,
            };
            close_after_upgrade(ws, shared.limits.pong_timeout, code, denial.reason, Some(ticket))
        }
    }
}

/// A connection over a limit. A browser never sees an HTTP status on an
/// upgrade (a 503 reaches it as 1006, retried at once), so a browser (it
/// sends `Origin`) gets the upgrade and a 4429 close, which makes a current
/// client back off; other clients get 503 with `Retry-After`.
fn refuse_over_limit(
    shared: &Shared,
    headers: &HeaderMap,
    ws: WebSocketUpgrade,
    refused: Refused,
    peer: Option<SocketAddr>,
) -> Response {
    let counter = match refused {
        Refused::Full(_) => &shared.metrics.refused_full,
        _ => &shared.metrics.refused_address,
    };
    counter.fetch_add(1, Relaxed);
    tracing::info!(peer = ?peer, %refused, "upgrade refused");
    if headers.contains_key(header::ORIGIN) {
        return close_after_upgrade(ws, shared.limits.pong_timeout, RATE_LIMITED, refused.to_string(), None);
    }
    (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "5")], format!("{refused}\n")).into_response()
}

/// Accept the upgrade only to close it with `code` (what a browser can see),
/// within `within`; the connection's place, if it has one, is held until then.
fn close_after_upgrade(
    ws: WebSocketUpgrade,
    within: std::time::Duration,
    code: u16,
    reason: String,
    ticket: Option<Ticket>,
) -> Response {
    ws.on_upgrade(move |mut socket| async move {
        let _ = tokio::time::timeout(within, socket.send(close(code, &reason))).await;
        drop(ticket);
    })
}

/// Who is this request? The plugin's `authenticate`, or without a plugin
/// the query string (`/ws?id=ada&name=Ada`, a demo default, for loopback
/// clients only unless [`super::ServerConfig::insecure_demo_auth`]).
pub(super) async fn authenticate(
    shared: &Shared,
    uri: &Uri,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<Value, Denial> {
    let user_data = identify(shared, uri, headers, peer).await?;
    // Every connection keeps its user data (and hands it to each plugin call).
    let size = serde_json::to_string(&user_data).map_or(usize::MAX, |json| json.len());
    let limit = shared.limits.max_user_data_bytes;
    if size > limit {
        tracing::warn!(size, limit, "user data over the limit; upgrade refused");
        return Err(Denial {
            status: 403,
            reason: format!("user data is {size} bytes, over the limit of {limit} (max_user_data_bytes)"),
        });
    }
    Ok(user_data)
}

async fn identify(shared: &Shared, uri: &Uri, headers: &HeaderMap, peer: Option<SocketAddr>) -> Result<Value, Denial> {
    match &shared.plugin {
        Some(plugin) => plugin.authenticate(upgrade_request(uri, headers, peer)).await,
        // Anyone can claim to be anyone: only for loopback clients, unless
        // the embedder asked for it by name.
        None if !shared.insecure_demo_auth && !peer.is_some_and(|p| p.ip().is_loopback()) => Err(Denial {
            status: 403,
            reason: "without a plugin the query-string identity serves loopback clients only".into(),
        }),
        None => Ok(presence_defaults::user_data_from_query(uri.query().unwrap_or(""))),
    }
}

fn upgrade_request(uri: &Uri, headers: &HeaderMap, peer: Option<SocketAddr>) -> UpgradeRequest {
    let text = |v: &axum::http::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    let cookies = headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .flat_map(|v| text(v).split(';').map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|c| c.trim().split_once('=').map(|(n, v)| Pair { name: n.to_owned(), value: v.to_owned() }))
        .collect();
    UpgradeRequest {
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or("").to_owned(),
        headers: headers.iter().map(|(n, v)| Pair { name: n.as_str().to_owned(), value: text(v) }).collect(),
        cookies,
        remote_address: peer.map(|p| p.to_string()).unwrap_or_default(),
    }
}

/// A per-connection token bucket: `rate` frames per second, bursts of `rate`.
struct RateLimit {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    fn new(rate: u32) -> Self {
        Self { rate: rate as f64, tokens: rate as f64, at: Instant::now() }
    }

    fn admit(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A close frame; the reason is cut to what a close frame can carry.
fn close(code: u16, reason: &str) -> Message {
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame { code, reason: reason[..end].to_owned().into() }))
}

/// What `authorize` is asked about: `__presence:<t>` is observing `t`;
/// any other topic is itself, with `action`.
fn policy_subject(topic: &str, action: Action) -> (&str, Action) {
    match topic.strip_prefix(PRESENCE_PREFIX) {
        Some(watched) => (watched, Action::Observe),
        None => (topic, action),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Generation {
    /// No frame yet.
    Unknown,
    /// 0.3 / 0.4: no `hello`, no acks, presence as list/join/leave/updated.
    Legacy,
    /// 0.5: `hello` first.
    Current,
}

/// One connection's protocol state.
struct Session {
    shared: Arc<Shared>,
    conn: ConnId,
    /// The client's address (for the per-address bounds).
    address: Option<IpAddr>,
    /// JSON text, shared with the hub.
    user_data: Arc<str>,
    generation: Generation,
    subscriptions: HashSet<String>,
    rate: RateLimit,
    /// Frames refused in a row for exceeding the rate.
    flooding: u32,
}

/// The socket, whose writes are each bounded by the send timeout: a client
/// that stops reading cannot park the connection's task. Not split: the
/// connection's one task reads and writes it in turn, without a lock.
struct Socket {
    ws: WebSocket,
    within: std::time::Duration,
    shared: Arc<Shared>,
}

impl Socket {
    /// Send one message; false if the socket failed or the client did not
    /// take it in time.
    async fn send(&mut self, message: Message) -> bool {
        let written = bounded(self.within, self.ws.send(message)).await;
        self.done(written)
    }

    /// Write a queued frame and everything queued behind it, then flush once.
    async fn send_queued(&mut self, first: Frame, outbox: &mut Outbox) -> bool {
        let ws = &mut self.ws;
        let write = async {
            ws.feed(Message::Text(first.into_text())).await?;
            while let Some(next) = outbox.try_recv() {
                ws.feed(Message::Text(next.into_text())).await?;
            }
            ws.flush().await
        };
        let written = bounded(self.within, write).await;
        self.done(written)
    }

    /// Whether a write went through, counting the ones that timed out.
    fn done(&self, written: Result<Result<(), axum::Error>, tokio::time::error::Elapsed>) -> bool {
        match written {
            Ok(result) => result.is_ok(),
            Err(_) => {
                self.shared.metrics.send_timeouts.fetch_add(1, Relaxed);
                false
            }
        }
    }
}

/// `write` bounded by `within`. The timer is armed only when the write has to
/// wait, which a client that keeps reading almost never makes it do.
async fn bounded<F: std::future::Future>(
    within: std::time::Duration,
    write: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut write = std::pin::pin!(write);
    match futures::poll!(write.as_mut()) {
        std::task::Poll::Ready(done) => Ok(done),
        std::task::Poll::Pending => tokio::time::timeout(within, write).await,
    }
}

async fn serve(shared: Arc<Shared>, socket: WebSocket, user_data: Value, address: Option<IpAddr>, _ticket: Ticket) {
    let (conn, mut outbox) = shared.hub.connect(user_data, shared.limits.send_queue_bytes);
    let user_data = shared.hub.user_data_json(conn).expect("just connected");
    shared.metrics.connections_open.fetch_add(1, Relaxed);
    shared.metrics.connections_total.fetch_add(1, Relaxed);
    shared.hub.send_text(conn, protocol::welcome(&format!("{:032x}", rand::random::<u128>())));
    let limits = &shared.limits;
    let mut socket = Socket { ws: socket, within: limits.pong_timeout, shared: shared.clone() };
    // One server-wide ticker instead of a timer per connection.
    let mut keepalive = shared.keepalive.subscribe();
    let mut last_heard = Instant::now();
    let mut sent_since_tick = false;
    let mut session = Session {
        shared: shared.clone(),
        conn,
        address,
        user_data,
        generation: Generation::Unknown,
        subscriptions: HashSet::new(),
        rate: RateLimit::new(limits.messages_per_second),
        flooding: 0,
    };
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => {
                socket.send(close(GOING_AWAY, "server shutting down")).await;
                break;
            }
            frame = outbox.recv() => match frame {
                Some(frame) => {
                    sent_since_tick = true;
                    if !socket.send_queued(frame, &mut outbox).await {
                        break;
                    }
                }
                None => {
                    // The hub cut us off: it said why, or the client did not
                    // read fast enough. Either way the client tries again.
                    let reason = outbox.close_reason();
                    socket.send(close(TRY_AGAIN_LATER, reason.as_deref().unwrap_or("too slow: send queue full"))).await;
                    break;
                }
            },
            message = socket.ws.next() => {
                last_heard = Instant::now();
                match message {
                    Some(Ok(Message::Text(text))) if text.len() > limits.max_frame_bytes => {
                        shared.metrics.frames_refused.fetch_add(1, Relaxed);
                        socket.send(close(TOO_BIG, "frame over the size limit")).await;
                        break;
                    }
                    Some(Ok(Message::Text(text))) => {
                        shared.metrics.frames_in.fetch_add(1, Relaxed);
                        // Boxed: an idle connection should not carry the
                        // space of a plugin call in its task.
                        if let Some((code, reason)) = Box::pin(session.handle(text.as_str())).await {
                            socket.send(close(code, reason)).await;
                            break;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        shared.metrics.frames_refused.fetch_add(1, Relaxed);
                        if let Some((code, reason)) = session.count_frame() {
                            socket.send(close(code, reason)).await;
                            break;
                        }
                        let refusal = Refusal::new(DenialReason::InvalidTopic, "bad-request", None, "binary frames are not part of the protocol");
                        session.refuse_legacy(&refusal);
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                }
            }
            _ = keepalive.changed() => {
                if last_heard.elapsed() > limits.ping_interval + limits.pong_timeout {
                    shared.metrics.keepalive_timeouts.fetch_add(1, Relaxed);
                    socket.send(close(GOING_AWAY, "keepalive timeout")).await;
                    break;
                }
                // Browser code cannot see pings: a quiet connection also gets
                // an application frame, so clients never think it dead.
                if !sent_since_tick && !socket.send(Message::Text(protocol::KEEPALIVE.into())).await {
                    break;
                }
                sent_since_tick = false;
                if !socket.send(Message::Ping(Default::default())).await {
                    break;
                }
            }
        }
    }
    // The close hook and the leave are boxed, like `handle`: their futures
    // are large, and every idle connection's task would otherwise hold them.
    if let Some(plugin) = &shared.plugin {
        let _turn = shared.hook_gate.enter(address).await;
        if let Err(e) = Box::pin(plugin.on_close(conn, &*session.user_data)).await {
            plugin.log_failure("plugin on-close failed", Some(conn), None, &e);
        }
    }
    // Whatever the hook did, a closed connection never lingers in presence.
    if let Err(e) = Box::pin(shared.presence.leave_all(conn)).await {
        tracing::warn!(%conn, error = %e, "leave on close failed; the heartbeat will finish it");
    }
    shared.hub.disconnect(conn);
    shared.metrics.connections_open.fetch_sub(1, Relaxed);
}

impl Session {
    fn send(&self, text: String) {
        self.shared.hub.send_text(self.conn, text);
    }

    /// Legacy clients hear about a refused frame in an `error` envelope.
    fn refuse_legacy(&self, refusal: &Refusal) {
        if self.generation != Generation::Current {
            self.send(refusal.envelope().to_json());
        }
    }

    /// Count one frame, whatever it is, against the rate (before any work is
    /// done for it). `Some(code, reason)`: the client kept flooding for a
    /// second's worth of frames: close it (4429 makes current clients back
    /// off for minutes).
    fn count_frame(&mut self) -> Option<(u16, &'static str)> {
        if self.rate.admit() {
            self.flooding = 0;
            return None;
        }
        self.flooding += 1;
        (self.flooding > self.shared.limits.messages_per_second).then_some((RATE_LIMITED, "too many frames"))
    }

    /// Act on one client frame. `Some(code, reason)`: close the connection.
    async fn handle(&mut self, text: &str) -> Option<(u16, &'static str)> {
        let flooded = self.flooding;
        if let Some(close) = self.count_frame() {
            self.shared.metrics.frames_refused.fetch_add(1, Relaxed);
            return Some(close);
        }
        let over_rate = self.flooding > flooded;
        let shared = self.shared.clone();
        let metrics = &shared.metrics;
        let message = match protocol::parse(text) {
            Ok(message) => message,
            Err(refusal) => {
                metrics.frames_refused.fetch_add(1, Relaxed);
                self.refuse_legacy(&refusal);
                return None;
            }
        };
        if self.generation == Generation::Unknown {
            self.generation = match &message {
                ClientMessage::Hello { caps } => {
                    self.shared.hub.set_current(self.conn, caps.iter().any(|c| c == "batch"));
                    Generation::Current
                }
                _ => Generation::Legacy,
            };
        }
        if over_rate {
            metrics.frames_refused.fetch_add(1, Relaxed);
            let refusal = Refusal::new(
                DenialReason::RateLimited,
                "rate-limited",
                None,
                format!("more than {} frames per second", self.shared.limits.messages_per_second),
            );
            self.refuse_legacy(&refusal);
            self.deny_all(&message, &refusal);
            return None;
        }
        match message {
            ClientMessage::Hello { .. } | ClientMessage::Reply {} => {}
            ClientMessage::Subscribe { topic, reference } => self.subscribe(&topic, reference.as_ref()).await,
            ClientMessage::SubscribeBatch { topics, reference } => {
                for topic in topics.iter().take(MAX_BATCH_TOPICS) {
                    self.subscribe(topic, reference.as_ref()).await;
                }
            }
            ClientMessage::Unsubscribe { topic } => self.unsubscribe(&topic).await,
            ClientMessage::Resume {} => self.send(protocol::RESUMED.to_owned()),
            ClientMessage::PresenceSnapshot { topic } => self.shared.presence.resend_list(self.conn, &topic),
            ClientMessage::Unknown => {
                metrics.frames_unknown.fetch_add(1, Relaxed);
                let refusal = Refusal::new(DenialReason::InvalidTopic, "bad-request", None, "unknown message type");
                self.refuse_legacy(&refusal);
            }
        }
        None
    }

    /// A refused frame's subscriptions are denied, each with its ref.
    fn deny_all(&self, message: &ClientMessage, refusal: &Refusal) {
        let (topics, reference) = match message {
            ClientMessage::Subscribe { topic, reference } => (std::slice::from_ref(topic), reference),
            ClientMessage::SubscribeBatch { topics, reference } => {
                (&topics[..topics.len().min(MAX_BATCH_TOPICS)], reference)
            }
            _ => return,
        };
        if let Some(reference) = reference {
            for topic in topics {
                self.send(protocol::subscribe_denied(topic, reference, &refusal.reason));
            }
        }
    }

    /// Subscribe, then acknowledge: `subscribed` or `subscribe-denied` for a
    /// frame with a `ref`, an error envelope for a refused legacy one.
    async fn subscribe(&mut self, topic: &str, reference: Option<&Value>) {
        let result = self.try_subscribe(topic).await;
        match (result, reference) {
            (Ok(()), Some(reference)) => self.send(protocol::subscribed(topic, reference)),
            (Ok(()), None) => {}
            (Err(refusal), reference) => {
                self.shared.metrics.frames_refused.fetch_add(1, Relaxed);
                let message = crate::plugin::single_line(&refusal.message, 512);
                tracing::debug!(conn = %self.conn, topic, reason = refusal.reason.word(), message, "subscribe denied");
                match reference {
                    Some(reference) => self.send(protocol::subscribe_denied(topic, reference, &refusal.reason)),
                    None => self.refuse_legacy(&refusal),
                }
            }
        }
    }

    async fn try_subscribe(&mut self, topic: &str) -> Result<(), Refusal> {
        let shared = self.shared.clone();
        protocol::check_topic(topic, shared.presence.options().max_topic_bytes)
            .map_err(|r| Refusal { topic: Some(topic.to_owned()), ..r })?;
        let refuse = |reason, code, message: String| Refusal::new(reason, code, Some(topic), message);
        // Current clients never send `__` topics; legacy ones watch
        // `__presence:<topic>`, and nothing else of ours.
        if topic.starts_with("__") && (self.generation == Generation::Current || !topic.starts_with(PRESENCE_PREFIX)) {
            let message = "topics starting with `__` are internal".into();
            return Err(refuse(DenialReason::InvalidTopic, "bad-request", message));
        }
        if self.subscriptions.contains(topic) {
            return Ok(()); // already subscribed: nothing new to do or send
        }
        if self.subscriptions.len() >= shared.limits.max_subscriptions {
            let message = format!("at most {} subscriptions per connection", shared.limits.max_subscriptions);
            return Err(refuse(DenialReason::RateLimited, "too-many-subscriptions", message));
        }
        let (subject, action) = policy_subject(topic, Action::Subscribe);
        if let Some(plugin) = &shared.plugin {
            plugin.authorize(self.conn, &*self.user_data, subject, action).await.map_err(|e| match e {
                PolicyError::Denied(reason) => refuse(DenialReason::from_policy(&reason), "denied", reason),
                error @ (PolicyError::Failed(_) | PolicyError::InvalidOutput(_)) => {
                    plugin.log_failure("authorize failed; denied", Some(self.conn), Some(topic), &error);
                    refuse(DenialReason::InternalError, "denied", "the policy is unavailable".into())
                }
            })?;
        }
        self.subscriptions.insert(topic.to_owned());
        if !topic.starts_with(PRESENCE_PREFIX) {
            crate::Platform::subscribe(&*shared.hub, self.conn, topic);
        }
        let hooked = match &shared.plugin {
            Some(plugin) => {
                let _turn = shared.hook_gate.enter(self.address).await;
                plugin.on_subscribe(self.conn, &*self.user_data, topic).await.map_err(|e| e.to_string())
            }
            None => shared.presence.hooks().subscribe(self.conn, topic).await.map_err(|e| e.to_string()),
        };
        hooked.map_err(|message| {
            // Nothing of a failed subscribe stays behind.
            self.subscriptions.remove(topic);
            if !topic.starts_with(PRESENCE_PREFIX) {
                crate::Platform::unsubscribe(&*shared.hub, self.conn, topic);
            }
            // A cap (topic full, too many topics…) is the client's to act on.
            match limit_word(&message) {
                Some(word) => refuse(DenialReason::Policy(word.into()), "limit", message),
                None => {
                    match &shared.plugin {
                        Some(plugin) => {
                            plugin.log_failure("subscribe hook failed", Some(self.conn), Some(topic), &message)
                        }
                        None => tracing::warn!(conn = %self.conn, topic, error = %message, "subscribe failed"),
                    }
                    refuse(DenialReason::InternalError, "failed", message)
                }
            }
        })
    }

    async fn unsubscribe(&mut self, topic: &str) {
        let shared = self.shared.clone();
        if let Err(refusal) = protocol::check_topic(topic, shared.presence.options().max_topic_bytes) {
            self.refuse_legacy(&refusal);
            return;
        }
        let (subject, action) = policy_subject(topic, Action::Unsubscribe);
        if let Some(plugin) = &shared.plugin {
            if let Err(e) = plugin.authorize(self.conn, &*self.user_data, subject, action).await {
                self.refuse_legacy(&Refusal::new(DenialReason::Forbidden, "denied", Some(topic), e.to_string()));
                return;
            }
        }
        self.subscriptions.remove(topic);
        if !topic.starts_with(PRESENCE_PREFIX) {
            crate::Platform::unsubscribe(&*shared.hub, self.conn, topic);
        }
        let result = match &shared.plugin {
            Some(plugin) => {
                let _turn = shared.hook_gate.enter(self.address).await;
                plugin.on_unsubscribe(self.conn, &*self.user_data, topic).await.map_err(|e| e.to_string())
            }
            None => shared.presence.hooks().unsubscribe(self.conn, topic).await.map_err(|e| e.to_string()),
        };
        if let Err(message) = result {
            self.refuse_legacy(&Refusal::new(DenialReason::InternalError, "failed", Some(topic), message));
        }
    }
}

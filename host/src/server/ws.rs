//! One WebSocket connection's life: upgrade (the plugin authenticates, or the
//! query string is the demo user data), then a loop over client frames,
//! outgoing frames, keepalive pings and shutdown; on exit the close hook runs
//! and the connection leaves every topic.

use super::protocol::{self, ClientMessage, Refusal};
use super::Shared;
use crate::engine::PRESENCE_PREFIX;
use crate::plugin::{Action, Pair, UpgradeRequest};
use crate::ConnId;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

/// Close codes (RFC 6455 §7.4.1).
const GOING_AWAY: u16 = 1001;
const POLICY: u16 = 1008;
const TOO_BIG: u16 = 1009;
const TRY_AGAIN_LATER: u16 = 1013;

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
    let query = uri.query().unwrap_or("");
    let user_data = match &shared.plugin {
        Some(plugin) => match plugin.authenticate(upgrade_request(&uri, &headers, peer.map(|p| p.0 .0))).await {
            Ok(user_data) => user_data,
            Err(denial) => {
                shared.metrics.upgrades_denied.fetch_add(1, Relaxed);
                let status = StatusCode::from_u16(denial.status).unwrap_or(StatusCode::FORBIDDEN);
                return (status, denial.reason).into_response();
            }
        },
        None => demo_user_data(query),
    };
    // Frames up to 4× the limit are read and refused with a close (1009)
    // that names the limit; beyond that the WebSocket layer drops the socket.
    let hard_limit = shared.limits.max_frame_bytes.saturating_mul(4);
    let tracker = shared.connections.clone();
    // Small buffers: an idle connection should cost kilobytes, not the
    // 128 KiB tungstenite reserves by default.
    ws.max_frame_size(hard_limit)
        .max_message_size(hard_limit)
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .on_upgrade(move |socket| tracker.track_future(serve(shared, socket, user_data)))
}

/// Without a plugin, the query string is the user data: `/ws?id=ada&name=Ada`.
/// A demo default — production deployments authenticate with a plugin.
fn demo_user_data(query: &str) -> Value {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    Value::Object(pairs.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
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

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}

async fn serve(shared: Arc<Shared>, socket: WebSocket, user_data: Value) {
    let (conn, mut outbox) = shared.hub.connect(user_data.clone(), shared.limits.send_queue);
    shared.metrics.connections_open.fetch_add(1, Relaxed);
    shared.metrics.connections_total.fetch_add(1, Relaxed);
    let (mut sink, mut stream) = socket.split();
    let limits = &shared.limits;
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + limits.ping_interval, limits.ping_interval);
    let mut last_heard = Instant::now();
    let mut rate = RateLimit::new(limits.messages_per_second);
    let mut subscriptions = HashSet::new();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => {
                let _ = sink.send(close(GOING_AWAY, "server shutting down")).await;
                break;
            }
            frame = outbox.recv() => match frame {
                Some(text) => {
                    if sink.send(Message::Text(text.as_ref().into())).await.is_err() {
                        break;
                    }
                }
                None => {
                    // The hub cut us off: the client did not read fast enough.
                    let _ = sink.send(close(TRY_AGAIN_LATER, "too slow: send queue full")).await;
                    break;
                }
            },
            message = stream.next() => {
                last_heard = Instant::now();
                match message {
                    Some(Ok(Message::Text(text))) if text.len() > limits.max_frame_bytes => {
                        shared.metrics.frames_refused.fetch_add(1, Relaxed);
                        let _ = sink.send(close(TOO_BIG, "frame over the size limit")).await;
                        break;
                    }
                    Some(Ok(Message::Text(text))) => {
                        shared.metrics.frames_in.fetch_add(1, Relaxed);
                        let result = if rate.admit() {
                            handle(&shared, conn, &user_data, &mut subscriptions, text.as_str()).await
                        } else {
                            Err(Refusal::new("rate-limited", None, format!("more than {} frames per second", limits.messages_per_second)))
                        };
                        if let Err(refusal) = result {
                            shared.metrics.frames_refused.fetch_add(1, Relaxed);
                            shared.hub.send_text(conn, refusal.envelope().to_json());
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        shared.metrics.frames_refused.fetch_add(1, Relaxed);
                        let refusal = Refusal::new("bad-request", None, "binary frames are not part of the protocol");
                        shared.hub.send_text(conn, refusal.envelope().to_json());
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                }
            }
            _ = keepalive.tick() => {
                if last_heard.elapsed() > limits.ping_interval + limits.pong_timeout {
                    shared.metrics.keepalive_timeouts.fetch_add(1, Relaxed);
                    let _ = sink.send(close(POLICY, "keepalive timeout")).await;
                    break;
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
        }
    }
    if let Some(plugin) = &shared.plugin {
        if let Err(e) = plugin.on_close(conn, &user_data).await {
            tracing::warn!(conn, error = %e, "plugin on-close failed");
        }
    }
    // Whatever the hook did, a closed connection never lingers in presence.
    if let Err(e) = shared.presence.leave(conn, None).await {
        tracing::warn!(conn, error = %e, "leave on close failed; the heartbeat will finish it");
    }
    shared.hub.disconnect(conn);
    shared.metrics.connections_open.fetch_sub(1, Relaxed);
}

/// Act on one client frame: check, authorize, run the hook.
async fn handle(
    shared: &Shared,
    conn: ConnId,
    user_data: &Value,
    subscriptions: &mut HashSet<String>,
    text: &str,
) -> Result<(), Refusal> {
    let message = protocol::parse(text, shared.presence.options().max_topic_bytes)?;
    let (ClientMessage::Subscribe { topic } | ClientMessage::Unsubscribe { topic }) = &message;
    let subscribe = matches!(message, ClientMessage::Subscribe { .. });
    if subscribe && !subscriptions.contains(topic) && subscriptions.len() >= shared.limits.max_subscriptions {
        let message = format!("at most {} subscriptions per connection", shared.limits.max_subscriptions);
        return Err(Refusal::new("too-many-subscriptions", Some(topic), message));
    }
    let (subject, action) = match (topic.strip_prefix(PRESENCE_PREFIX), subscribe) {
        (Some(watched), _) => (watched, Action::Observe),
        (None, true) => (topic.as_str(), Action::Subscribe),
        (None, false) => (topic.as_str(), Action::Unsubscribe),
    };
    if let Some(plugin) = &shared.plugin {
        plugin
            .authorize(conn, user_data, subject, action)
            .await
            .map_err(|reason| Refusal::new("denied", Some(topic), reason))?;
    }
    let result = if subscribe {
        subscriptions.insert(topic.clone());
        if !topic.starts_with(PRESENCE_PREFIX) {
            crate::Platform::subscribe(&*shared.hub, conn, topic);
        }
        match &shared.plugin {
            Some(plugin) => plugin.on_subscribe(conn, user_data, topic).await,
            None => shared.presence.hooks().subscribe(conn, topic).await.map_err(|e| e.to_string()),
        }
    } else {
        subscriptions.remove(topic);
        if !topic.starts_with(PRESENCE_PREFIX) {
            crate::Platform::unsubscribe(&*shared.hub, conn, topic);
        }
        match &shared.plugin {
            Some(plugin) => plugin.on_unsubscribe(conn, user_data, topic).await,
            None => shared.presence.hooks().unsubscribe(conn, topic).await.map_err(|e| e.to_string()),
        }
    };
    result.map_err(|message| Refusal::new("failed", Some(topic), message))
}

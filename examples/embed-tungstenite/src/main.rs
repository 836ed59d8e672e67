//! The engine without axum: a plain `tokio-tungstenite` accept loop that
//! implements [`Platform`] itself, in a hundred lines.
//!
//! Each socket gets a channel its writer task drains; the platform keeps the
//! channels, the user data (the demo identity from the query string) and the
//! subscriptions. Client frames are the legacy protocol's
//! `{"type":"subscribe"|"unsubscribe","topic":"…"}`, routed through the
//! engine's ready-made hooks.
//!
//! Run with: `cargo run -p embed-tungstenite`, then connect to
//! `ws://127.0.0.1:3001/?id=ada&name=Ada`.

use futures::{SinkExt, StreamExt};
use presence::backend::memory::MemoryStore;
use presence::{ConnId, Envelope, Platform, Presence};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

/// The connections this server holds: what the engine reaches them through.
#[derive(Default)]
struct Sockets {
    next: AtomicU64,
    conns: Mutex<HashMap<ConnId, Socket>>,
}

struct Socket {
    user_data: Value,
    topics: HashSet<String>,
    out: mpsc::UnboundedSender<String>,
}

impl Sockets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnId, Socket>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Platform for Sockets {
    fn user_data(&self, conn: ConnId) -> Option<Value> {
        self.lock().get(&conn).map(|s| s.user_data.clone())
    }

    fn subscribe(&self, conn: ConnId, topic: &str) {
        if let Some(socket) = self.lock().get_mut(&conn) {
            socket.topics.insert(topic.to_owned());
        }
    }

    fn unsubscribe(&self, conn: ConnId, topic: &str) {
        if let Some(socket) = self.lock().get_mut(&conn) {
            socket.topics.remove(topic);
        }
    }

    fn send(&self, conn: ConnId, envelope: &Envelope) {
        if let Some(socket) = self.lock().get(&conn) {
            let _ = socket.out.send(envelope.to_json());
        }
    }

    fn publish(&self, topic: &str, envelope: &Envelope) {
        let frame = envelope.to_json();
        for socket in self.lock().values().filter(|s| s.topics.contains(topic)) {
            let _ = socket.out.send(frame.clone());
        }
    }

    fn is_open(&self, conn: ConnId) -> bool {
        self.lock().contains_key(&conn)
    }
}

/// Accept sockets forever.
async fn serve(listener: TcpListener, presence: Presence, sockets: Arc<Sockets>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(connection(stream, presence.clone(), sockets.clone()));
    }
}

/// One socket: register it, route its frames to the hooks, leave on close.
// The handshake callback's error type is tungstenite's own HTTP response.
#[allow(clippy::result_large_err)]
async fn connection(stream: TcpStream, presence: Presence, sockets: Arc<Sockets>) {
    let mut query = String::new();
    let read_query = |request: &Request, response: Response| {
        query = request.uri().query().unwrap_or("").to_owned();
        Ok(response)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, read_query).await else { return };
    let (mut write, mut read) = ws.split();
    let (out, mut frames) = mpsc::unbounded_channel::<String>();
    let conn = ConnId::new(sockets.next.fetch_add(1, Ordering::Relaxed) + 1);
    let user_data = presence::defaults::user_data_from_query(&query);
    sockets.lock().insert(conn, Socket { user_data, topics: HashSet::new(), out });
    let writer = tokio::spawn(async move {
        while let Some(frame) = frames.recv().await {
            if write.send(Message::text(frame)).await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(message)) = read.next().await {
        let Message::Text(text) = message else { continue };
        let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
        let topic = frame["topic"].as_str().unwrap_or_default();
        let result = match frame["type"].as_str() {
            Some("subscribe") => presence.hooks().subscribe(conn, topic).await,
            Some("unsubscribe") => presence.hooks().unsubscribe(conn, topic).await,
            _ => Ok(()),
        };
        if let Err(e) = result {
            eprintln!("connection {conn}: {e}");
        }
    }
    let _ = presence.hooks().close(conn).await;
    sockets.lock().remove(&conn);
    writer.abort();
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sockets = Arc::new(Sockets::default());
    let presence = Presence::builder(Arc::new(MemoryStore::new().backend()), sockets.clone()).build()?;
    let listener = TcpListener::bind("127.0.0.1:3001").await?;
    println!("embed-tungstenite: ws://{}/?id=you", listener.local_addr()?);
    serve(listener, presence, sockets).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn client(
        addr: std::net::SocketAddr,
        query: &str,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/?{query}")).await.expect("connect");
        ws
    }

    /// The next envelope with this event, within ten seconds.
    async fn next_event(
        ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
        event: &str,
    ) -> Value {
        let wait = async {
            while let Some(Ok(Message::Text(text))) = ws.next().await {
                let envelope: Value = serde_json::from_str(&text).expect("JSON frames");
                if envelope["event"] == event {
                    return envelope;
                }
            }
            panic!("the socket closed before a `{event}`");
        };
        tokio::time::timeout(Duration::from_secs(10), wait).await.unwrap_or_else(|_| panic!("no `{event}` in 10 s"))
    }

    /// Two clients over real sockets: the second's join and its leave reach
    /// the first, through a `Platform` that is not the crate's `Hub`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_see_each_other_through_a_hand_written_platform() {
        let sockets = Arc::new(Sockets::default());
        let presence = Presence::builder(Arc::new(MemoryStore::new().backend()), sockets.clone()).build().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, presence.clone(), sockets));

        let subscribe = Message::text(r#"{"type":"subscribe","topic":"lobby"}"#);
        let mut ada = client(addr, "id=ada&name=Ada").await;
        ada.send(subscribe.clone()).await.unwrap();
        let list = next_event(&mut ada, "list").await;
        assert_eq!(list["data"][0]["key"], "ada");
        let mut bob = client(addr, "id=bob").await;
        bob.send(subscribe).await.unwrap();
        let join = next_event(&mut ada, "join").await;
        assert_eq!(join["data"]["key"], "bob");
        assert_eq!(presence.count("lobby").await.unwrap(), 2);
        bob.close(None).await.unwrap();
        let leave = next_event(&mut ada, "leave").await;
        assert_eq!(leave["data"]["key"], "bob");
    }
}

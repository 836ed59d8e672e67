//! Real WebSocket clients (tokio-tungstenite) against a `PresenceServer`
//! served on a free loopback port.

use futures::{SinkExt, StreamExt};
use presence::server::{PresenceServer, ServerConfig};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A server on 127.0.0.1:<free>, stopped (gracefully) on `stop` or drop.
pub struct Served {
    pub server: PresenceServer,
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    pub async fn start(config: ServerConfig) -> Self {
        let server = PresenceServer::start(config).await.expect("server starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = server.router().into_make_service_with_connect_info::<SocketAddr>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { server, addr, task }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.addr)
    }

    pub async fn connect(&self, query: &str) -> WsClient {
        WsClient::connect(&self.url(&format!("/ws?{query}"))).await.expect("upgrade accepted")
    }

    /// Like `connect`, for use with `join_all`.
    pub async fn connect_owned(&self, query: String) -> WsClient {
        self.connect(&query).await
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }

    /// Graceful shutdown, as on SIGTERM.
    pub async fn stop(&self) {
        self.server.shutdown().await;
        self.task.abort();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A minimal HTTP/1.1 GET (status, body) — enough for health and metrics.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub seen: Vec<Value>,
    pub closed: Option<Option<u16>>,
}

impl WsClient {
    pub async fn connect(url: &str) -> Result<Self, tungstenite::Error> {
        let (stream, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Self { stream, seen: Vec::new(), closed: None })
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Message::Text(text.into())).await.unwrap();
    }

    pub async fn subscribe(&mut self, topic: &str) {
        self.send_text(&json!({"type": "subscribe", "topic": topic}).to_string()).await;
    }

    pub async fn unsubscribe(&mut self, topic: &str) {
        self.send_text(&json!({"type": "unsubscribe", "topic": topic}).to_string()).await;
    }

    pub async fn send_raw(&mut self, message: Message) -> Result<(), tungstenite::Error> {
        self.stream.send(message).await
    }

    /// Read until an envelope with this event matches `pred`.
    pub async fn wait_for(&mut self, event: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + super::DEADLINE;
        if let Some(found) = self.seen.iter().find(|e| e["event"] == event && pred(e)) {
            return found.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    let envelope: Value = serde_json::from_str(&text).expect("server sends JSON");
                    self.seen.push(envelope.clone());
                    if envelope["event"] == event && pred(&envelope) {
                        return envelope;
                    }
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    self.closed = Some(frame.map(|f| f.code.into()));
                    panic!("closed while waiting for `{event}`: {:?}; seen {:#?}", self.closed, self.seen);
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("socket error while waiting for `{event}`: {e}"),
                Ok(None) => panic!("socket ended while waiting for `{event}`"),
                Err(_) => panic!("no `{event}` within {:?}; seen {:#?}", super::DEADLINE, self.seen),
            }
        }
    }

    /// Read until the server closes; returns the close code.
    pub async fn wait_closed(&mut self) -> Option<u16> {
        let deadline = Instant::now() + super::DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code.into()),
                Ok(Some(Ok(Message::Text(text)))) => self.seen.push(serde_json::from_str(&text).unwrap()),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) | Ok(None) => return None,
                Err(_) => panic!("not closed within {:?}", super::DEADLINE),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
        // Drain until the server's close arrives, so the server has run its close hook.
        let _ =
            tokio::time::timeout(Duration::from_secs(5), async { while self.stream.next().await.is_some() {} }).await;
    }
}

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
        let serving = server.clone();
        let task = tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
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

/// A minimal HTTP/1.1 POST with extra headers: (status, response headers and body).
pub async fn http_post(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    http_request(addr, "POST", path, headers).await
}

/// A minimal HTTP/1.1 DELETE with extra headers: (status, response headers and body).
pub async fn http_delete(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    http_request(addr, "DELETE", path, headers).await
}

async fn http_request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let extra: String = headers.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n{extra}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response)
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
    /// The reason of the server's close frame, once `wait_closed` saw it.
    pub close_reason: Option<String>,
}

impl WsClient {
    pub async fn connect(url: &str) -> Result<Self, tungstenite::Error> {
        let (stream, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Self { stream, seen: Vec::new(), closed: None, close_reason: None })
    }

    /// Connect sending a `Cookie` header (e.g. a preflight's session).
    pub async fn connect_with_cookie(url: &str, cookie: &str) -> Result<Self, tungstenite::Error> {
        use tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request()?;
        request.headers_mut().insert("cookie", cookie.parse().unwrap());
        let (stream, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Self { stream, seen: Vec::new(), closed: None, close_reason: None })
    }

    /// Open as a current (0.5) client: `hello` with these capabilities.
    pub async fn hello(&mut self, caps: &[&str]) {
        self.send_text(&json!({"type": "hello", "caps": caps}).to_string()).await;
    }

    pub async fn subscribe_ref(&mut self, topic: &str, reference: u64) {
        self.send_text(&json!({"type": "subscribe", "topic": topic, "ref": reference}).to_string()).await;
    }

    pub async fn subscribe_batch(&mut self, topics: &[String], reference: Option<u64>) {
        let mut frame = json!({"type": "subscribe-batch", "topics": topics});
        if let Some(reference) = reference {
            frame["ref"] = json!(reference);
        }
        self.send_text(&frame.to_string()).await;
    }

    /// Read until any frame matches `pred` (batch frames are also kept whole).
    pub async fn wait_frame(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + super::DEADLINE;
        if let Some(found) = self.seen.iter().find(|f| pred(f)) {
            return found.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    let frame: Value = serde_json::from_str(&text).expect("server sends JSON");
                    self.seen.push(frame.clone());
                    if pred(&frame) {
                        return frame;
                    }
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    self.closed = Some(frame.map(|f| f.code.into()));
                    panic!("closed while waiting for {what}: {:?}; seen {:#?}", self.closed, self.seen);
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("socket error while waiting for {what}: {e}"),
                Ok(None) => panic!("socket ended while waiting for {what}"),
                Err(_) => panic!("no {what} within {:?}; seen {:#?}", super::DEADLINE, self.seen),
            }
        }
    }

    /// Frames of this `type` received so far.
    pub fn of_type(&self, kind: &str) -> Vec<Value> {
        self.seen.iter().filter(|f| f["type"] == kind).cloned().collect()
    }

    /// Replay the presence frames of `topic` a current client received
    /// (`presence_state` replaces, `presence_diff` removes its leaves then
    /// adds its joins), batches included: key → data.
    pub fn presence_view(&self, topic: &str) -> std::collections::BTreeMap<String, Value> {
        let presence = format!("__presence:{topic}");
        let mut view = std::collections::BTreeMap::new();
        let events = self.seen.iter().flat_map(|f| match f["type"].as_str() {
            Some("batch") => f["events"].as_array().cloned().unwrap_or_default(),
            _ => vec![f.clone()],
        });
        for event in events.filter(|e| e["topic"] == presence.as_str()) {
            let data = &event["data"];
            match event["event"].as_str() {
                Some("presence_state") => {
                    view = data.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                }
                Some("presence_diff") => {
                    for key in data["leaves"].as_object().unwrap().keys() {
                        view.remove(key);
                    }
                    for (key, value) in data["joins"].as_object().unwrap() {
                        view.insert(key.clone(), value.clone());
                    }
                }
                _ => {}
            }
        }
        view
    }

    /// Read whatever arrives within `period` (for counting frames of a burst).
    pub async fn drain_for(&mut self, period: Duration) {
        let until = Instant::now() + period;
        while let Ok(Some(Ok(Message::Text(text)))) =
            tokio::time::timeout(until.saturating_duration_since(Instant::now()), self.stream.next()).await
        {
            self.seen.push(serde_json::from_str(&text).expect("server sends JSON"));
        }
    }

    /// Read whatever arrives within `period`, noting a close (its code in
    /// `closed`); true once the socket is closed.
    pub async fn drain_until_closed(&mut self, period: Duration) -> bool {
        let until = Instant::now() + period;
        loop {
            match tokio::time::timeout(until.saturating_duration_since(Instant::now()), self.stream.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => self.seen.push(serde_json::from_str(&text).expect("JSON")),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    self.closed = Some(frame.map(|f| f.code.into()));
                    return true;
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) | Ok(None) => {
                    self.closed.get_or_insert(None);
                    return true;
                }
                Err(_) => return false,
            }
        }
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
        self.wait_frame(&format!("`{event}`"), |e| e["event"] == event && pred(e)).await
    }

    /// Read until the server closes; returns the close code.
    pub async fn wait_closed(&mut self) -> Option<u16> {
        let deadline = Instant::now() + super::DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => {
                    self.close_reason = frame.as_ref().map(|f| f.reason.to_string());
                    return frame.map(|f| f.code.into());
                }
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

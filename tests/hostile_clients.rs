//! Hostile clients against a real server on a loopback port: slow readers
//! under churn, list amplification, slowloris upgrades, cross-origin
//! upgrades and a connection flood. Each test asserts that the server keeps
//! answering, that the bad connections are closed (and their users leave),
//! and that this process's memory grows less than a stated bound — measured
//! from `/proc/self/status`, so the tests take turns.

use presence::server::admission::AllowedOrigins;
use presence::server::{ServerConfig, ServerLimits};
use presence_tests::ws::{http_get, Served};
use presence_tests::*;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// RSS is per process: one test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Tracks the largest RSS seen since it started.
struct RssWatch {
    start: u64,
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssWatch {
    fn start() -> Self {
        let start = rss_kib();
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(start));
        let seen = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                seen.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self { start, peak, task }
    }

    /// Assert the peak growth stayed under `bound_mib`; returns it in KiB.
    fn assert_grew_less_than(self, bound_mib: u64, what: &str) -> u64 {
        self.task.abort();
        let grown = self.peak.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(self.start);
        println!("{what}: RSS grew by {} KiB at its peak (bound {bound_mib} MiB)", grown);
        assert!(grown < bound_mib * 1024, "{what}: RSS grew by {grown} KiB, over the {bound_mib} MiB bound");
        grown
    }
}

/// A metric's value from `/metrics` (the first line starting with `line`).
async fn metric(addr: SocketAddr, line: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(line).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no metric {line}"))
}

/// A WebSocket upgrade by hand, on a socket with a small receive buffer (so
/// a client that never reads fills up quickly). Returns the socket and the
/// response status; the socket is left unread after the headers.
async fn raw_upgrade(addr: SocketAddr, path: &str, origin: Option<&str>) -> (TcpStream, u16) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{origin}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(DEADLINE, stream.read(&mut byte)).await.expect("response headers in time") {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (stream, status)
}

/// A masked client text frame.
fn client_frame(text: &str) -> Vec<u8> {
    let payload = text.as_bytes();
    let mut frame = vec![0x81];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    let mask = [0x12, 0x34, 0x56, 0x78];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Whether the server has closed this socket: read (and drop) what is
/// buffered until end of stream or an error.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut sink = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// A server with fast heartbeats and these limits.
async fn serve(limits: ServerLimits) -> Served {
    Served::start(ServerConfig { options: fast_options(), limits, ..ServerConfig::default() }).await
}

/// Fast keepalive; the tests' many clients share one address (loopback).
fn limits() -> ServerLimits {
    ServerLimits {
        ping_interval: Duration::from_millis(300),
        pong_timeout: Duration::from_millis(300),
        max_connections_per_address: 1000,
        max_pending_per_address: 1000,
        ..ServerLimits::default()
    }
}

/// 50 sockets join a busy topic and stop reading, while other users come
/// and go with 2 KB of data each. Every slow socket is closed (by the send
/// timeout, the byte-bounded queue or keepalive) and its user leaves; the
/// server keeps serving the churn; memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_under_churn_are_cut_off_and_leave() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let limits = ServerLimits { send_queue_bytes: 256 << 10, ..limits() };
    let served = serve(limits).await;
    let rss = RssWatch::start();
    let subscribe_room = client_frame(&json!({"topic": "room", "type": "subscribe"}).to_string());
    let mut slow = Vec::new();
    for i in 0..50 {
        let (mut stream, status) = raw_upgrade(served.addr, &format!("/ws?id=slow-{i}"), None).await;
        assert_eq!(status, 101);
        stream.write_all(&subscribe_room).await.unwrap();
        slow.push(stream);
    }
    let presence = served.server.presence().clone();
    eventually("the slow readers joined", || async { presence.count("room").await.unwrap() == 50 }).await;

    // Churn: users with 2 KB of data join and leave, 20 at a time.
    let bio = "b".repeat(2048);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let churn = {
        let url = served.url("/ws");
        tokio::spawn(async move {
            let mut rounds = 0u32;
            while !*stopped.borrow() {
                let clients = futures::future::join_all((0..20).map(|i| {
                    let url = format!("{url}?id=churn-{i}&bio={bio}");
                    async move { presence_tests::ws::WsClient::connect(&url).await.unwrap() }
                }))
                .await;
                let mut joined = Vec::new();
                for mut client in clients {
                    client.subscribe("room").await;
                    joined.push(client);
                }
                for client in joined {
                    client.close().await;
                }
                rounds += 1;
            }
            rounds
        })
    };
    // Every slow reader is closed and leaves; the churn keeps being served.
    eventually("every slow reader left", || async {
        let members = presence.list("room").await.unwrap();
        !members.iter().any(|m| m.key.starts_with("slow-"))
    })
    .await;
    for stream in &mut slow {
        assert!(closed_by_server(stream).await, "a slow reader's socket is still open");
    }
    let (status, _) = served.get("/healthz").await;
    assert_eq!(status, 200);
    assert!(!churn.is_finished(), "the churn stopped on its own: {:?}", churn.await);
    stop.send(true).unwrap();
    let rounds = churn.await.expect("the churn was served to the end");
    assert!(rounds > 0, "no churn round completed");
    let cut = metric(served.addr, "presence_send_timeouts_total").await
        + metric(served.addr, "presence_slow_client_disconnects_total").await
        + metric(served.addr, "presence_keepalive_timeouts_total").await;
    assert!(cut >= 50.0, "{cut} connections cut off");
    rss.assert_grew_less_than(64, "slow readers under churn");
}

/// A client that never reads and keeps re-subscribing to the presence of a
/// room of 200 members with 4 KB each (800 KB a list) is cut off once its
/// queue holds its byte bound; the server does not buffer list after list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_amplification_is_cut_off() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let served = serve(limits()).await;
    let (hub, presence) = (served.server.hub().clone(), served.server.presence().clone());
    let bio = "m".repeat(4096);
    let mut members = Vec::new();
    for i in 0..200 {
        let (conn, mut outbox) = hub.connect(json!({"id": format!("member-{i}"), "bio": bio}), 64 << 20);
        presence.join(conn, "room").await.unwrap();
        while outbox.try_recv().is_some() {}
        members.push(outbox);
    }
    // The members read what they are sent, as healthy clients do.
    let readers = tokio::spawn(async move {
        loop {
            for outbox in &mut members {
                while outbox.try_recv().is_some() {}
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let rss = RssWatch::start();
    let (mut stream, status) = raw_upgrade(served.addr, "/ws?id=amplifier", None).await;
    assert_eq!(status, 101);
    let subscribe = client_frame(&json!({"type": "subscribe", "topic": "__presence:room"}).to_string());
    let unsubscribe = client_frame(&json!({"type": "unsubscribe", "topic": "__presence:room"}).to_string());
    // Each pair asks for the 800 KB list again; 40 pairs would be 32 MB.
    let started = Instant::now();
    for _ in 0..40 {
        if stream.write_all(&subscribe).await.is_err() || stream.write_all(&unsubscribe).await.is_err() {
            break; // already cut off
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(closed_by_server(&mut stream).await, "the amplifier is still connected");
    println!("amplifier cut off after {:?}", started.elapsed());
    let cut = metric(served.addr, "presence_slow_client_disconnects_total").await
        + metric(served.addr, "presence_send_timeouts_total").await;
    assert!(cut >= 1.0, "cut off by the queue bound or the send timeout");
    let (status, _) = served.get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(presence.count("room").await.unwrap(), 200);
    readers.abort();
    rss.assert_grew_less_than(48, "list amplification");
}

/// Connections that dribble their request headers are dropped after the
/// header-read timeout; they never reach the upgrade, and the server keeps
/// answering everyone else meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_upgrades_are_dropped() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let limits =
        ServerLimits { header_read_timeout: Duration::from_millis(300), max_pending_per_address: 16, ..limits() };
    let served = serve(limits).await;
    let rss = RssWatch::start();
    // From an address of their own (127.0.0.2), as an attacker's would be,
    // and beyond its bound on requests not yet upgraded: the first 16 are
    // held until the timeout, the rest refused at once.
    let mut dribblers = Vec::new();
    for _ in 0..100 {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut stream = socket.connect(served.addr).await.unwrap();
        let _ = stream.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await;
        dribblers.push(stream);
    }
    // One more header line every 100 ms: never a complete request.
    let started = Instant::now();
    let mut open = dribblers.len();
    while open > 0 && started.elapsed() < DEADLINE {
        let (status, _) = served.get("/healthz").await;
        assert_eq!(status, 200, "the server answers while it is being dribbled at");
        open = 0;
        for stream in &mut dribblers {
            if stream.write_all(b"X-Slow: 1\r\n").await.is_ok() {
                open += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for stream in &mut dribblers {
        assert!(closed_by_server(stream).await, "a slowloris connection is still open");
    }
    println!("100 slowloris connections dropped within {:?}", started.elapsed());
    assert_eq!(metric(served.addr, "presence_connections").await, 0.0);
    rss.assert_grew_less_than(16, "slowloris upgrades");
}

/// A page on another site cannot open a socket in a visitor's browser;
/// the server's own host, loopback pages and non-browser clients can. An
/// explicit list replaces the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_upgrades_are_refused() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let served = serve(limits()).await;
    let own = format!("http://{}", served.addr);
    for (origin, expected) in [
        (Some("https://evil.example"), 403),
        (Some("http://localhost:5173"), 101),
        (Some(own.as_str()), 101),
        (None, 101),
    ] {
        let (_, status) = raw_upgrade(served.addr, "/ws?id=o", origin).await;
        assert_eq!(status, expected, "origin {origin:?}");
    }
    assert_eq!(metric(served.addr, "presence_connections_refused_total{reason=\"origin\"}").await, 1.0);

    let allowed = AllowedOrigins::parse("https://app.example").unwrap();
    let limits = ServerLimits { allowed_origins: allowed, ..limits() };
    let strict = serve(limits).await;
    for (origin, expected) in [(Some("https://app.example"), 101), (Some("http://localhost:5173"), 403), (None, 101)] {
        let (_, status) = raw_upgrade(strict.addr, "/ws?id=o", origin).await;
        assert_eq!(status, expected, "origin {origin:?} against an explicit list");
    }
}

/// A flood of connections meets clear refusals: beyond the limit per
/// address (the total limit works the same way, see `server::admission`)
/// 503 before the upgrade, or for a browser the upgrade and a 4429 close;
/// a plain 503 for TCP connections beyond the bound on those not yet
/// upgraded. Places come back as connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_refused_clearly() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let limits = ServerLimits { max_connections: 20, max_connections_per_address: 10, ..limits() };
    let served = serve(limits).await;
    let rss = RssWatch::start();
    let mut open = Vec::new();
    for i in 0..10 {
        open.push(served.connect(&format!("id=f{i}")).await);
    }
    let (_, status) = raw_upgrade(served.addr, "/ws?id=f10", None).await;
    assert_eq!(status, 503, "the 11th connection from one address");
    // A browser cannot see a 503 on an upgrade: it gets the upgrade and 4429.
    let (mut browser, status) = raw_upgrade(served.addr, "/ws?id=f11", Some("http://localhost:5173")).await;
    assert_eq!(status, 101);
    let mut close = [0u8; 4];
    tokio::time::timeout(DEADLINE, browser.read_exact(&mut close)).await.unwrap().unwrap();
    assert_eq!((close[0], u16::from_be_bytes([close[2], close[3]])), (0x88, 4429), "a close frame with 4429");
    assert_eq!(metric(served.addr, "presence_connections_refused_total{reason=\"address\"}").await, 2.0);
    // Places come back when connections close.
    open.pop().unwrap().close().await;
    eventually("a place is free again", || async { raw_upgrade(served.addr, "/ws?id=again", None).await.1 == 101 })
        .await;

    // TCP connections that never send a request hold the places of
    // connections not yet upgraded; beyond them, a plain 503.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(served.addr).await.unwrap());
    }
    let mut extra = TcpStream::connect(served.addr).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(DEADLINE, extra.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 503") && answer.ends_with("server busy\n"), "{answer}");
    drop(idle);
    eventually("the server answers again", || async { http_get(served.addr, "/healthz").await.0 == 200 }).await;
    assert!(metric(served.addr, "presence_connections_refused_total{reason=\"busy\"}").await >= 1.0);
    rss.assert_grew_less_than(16, "connection flood");
}

/// One client subscribes to 100 new topics and closes, five times over, on
/// a server that serves at most 300 topics: the topics are forgotten (after
/// lingering a moment, not counted against the cap), so a new user's
/// subscribe is never refused `LIMIT_EXCEEDED`, and once the moment is over
/// no topic is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_nobody_uses_are_forgotten() {
    let _one = ONE_AT_A_TIME.lock().await;
    let options = presence::Options { max_topics_per_instance: 300, ..fast_options() };
    let served = Served::start(ServerConfig { options, limits: limits(), ..ServerConfig::default() }).await;
    for round in 0..5 {
        let mut client = served.connect(&format!("id=roamer{round}")).await;
        client.hello(&[]).await;
        let topics: Vec<String> = (0..100).map(|n| format!("r{round}-topic-{n}")).collect();
        client.subscribe_batch(&topics, Some(round)).await;
        for topic in &topics {
            let topic = topic.clone();
            let ack = client.wait_frame("an ack", move |f| f["ref"] == round && f["topic"] == topic.as_str()).await;
            assert_eq!(ack["type"], "subscribed", "round {round}: {ack}");
        }
        client.close().await;
        poll::until("the roamer's topics are idle", DEADLINE, async || {
            let in_use = metric(served.addr, "presence_topics ").await;
            poll::when(in_use == 0.0, in_use)
        })
        .await;
    }
    let mut newcomer = served.connect("id=newcomer").await;
    newcomer.hello(&[]).await;
    newcomer.subscribe_ref("lobby", 1).await;
    let ack = newcomer.wait_frame("an ack", |f| f["ref"] == 1).await;
    assert_eq!(ack["type"], "subscribed", "a new user is not refused: {ack}");
    let lingering = metric(served.addr, "presence_topics_lingering ").await;
    assert!(lingering <= 1024.0, "lingering is bounded: {lingering}");
    poll::until("lingering topics are forgotten", DEADLINE, async || {
        newcomer.drain_for(Duration::from_millis(10)).await; // answer pings
        let left = served.server.presence().lingering_topics();
        poll::when(left == 0, left)
    })
    .await;
    assert_eq!(served.server.presence().local_topics(), 1, "only the lobby is in use");
}

/// A room whose state is bigger than the send queue: 70 users with 15 KB of
/// public data each (about 1 MB of `presence_state`, four times a 256 KiB
/// queue). A joiner that reads as fast as it can gets the whole state and
/// stays connected, receiving what follows; then 40 joiners that never read
/// share the room's state in their queues: each holds only the copy its
/// socket's write buffer takes of it (until the write timeout closes it), not
/// another one built for it, so memory grows by about one state per joiner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_bigger_than_the_send_queue_can_be_joined() {
    let _one = ONE_AT_A_TIME.lock().await;
    let limits = ServerLimits { send_queue_bytes: 256 << 10, ..limits() };
    let served = Served::start(ServerConfig { options: fast_options(), limits, ..ServerConfig::default() }).await;
    let (hub, presence) = (served.server.hub().clone(), served.server.presence().clone());
    let bio = "b".repeat(15_000);
    let mut members = Vec::new();
    for i in 0..70 {
        let (conn, outbox) = hub.connect(json!({"id": format!("member-{i}"), "bio": bio}), 64 << 20);
        presence.join(conn, "big").await.unwrap();
        members.push(outbox);
    }
    let readers = tokio::spawn(async move {
        loop {
            for outbox in &mut members {
                while outbox.try_recv().is_some() {}
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut reader = served.connect("id=reader").await;
    reader.hello(&[]).await;
    reader.subscribe_ref("big", 1).await;
    reader.wait_frame("the ack", |f| f["ref"] == 1).await;
    let state = reader.wait_frame("the state", |f| f["event"] == "presence_state").await;
    assert_eq!(state["data"].as_object().map(|m| m.len()), Some(71), "the whole room, the reader included");
    assert!(state.to_string().len() > 4 * (256 << 10), "bigger than the queue: {} bytes", state.to_string().len());
    // What follows still reaches it: it was not cut off after the state.
    let (late, _late_rx) = hub.connect(json!({"id": "late"}), 1 << 20);
    presence.join(late, "big").await.unwrap();
    reader
        .wait_frame("the next diff", |f| f["event"] == "presence_diff" && f["data"]["joins"].get("late").is_some())
        .await;
    assert_eq!(metric(served.addr, "presence_slow_client_disconnects_total").await, 0.0);

    let rss = RssWatch::start();
    let mut silent = Vec::new();
    for i in 0..40 {
        let (mut stream, status) = raw_upgrade(served.addr, &format!("/ws?id=silent-{i}"), None).await;
        assert_eq!(status, 101);
        stream.write_all(&client_frame(r#"{"type":"hello","caps":["batch"]}"#)).await.unwrap();
        stream.write_all(&client_frame(r#"{"type":"subscribe","topic":"big","ref":1}"#)).await.unwrap();
        silent.push(stream);
    }
    poll::until("every silent joiner is in the room", DEADLINE, async || {
        let n = presence.count("big").await.map_err(|e| e.to_string())?;
        poll::when(n == 112, n)
    })
    .await;
    let room_kib = state.to_string().len() as u64 / 1024;
    let grown = rss.assert_grew_less_than(40 * room_kib * 5 / 4 / 1024, "40 silent joiners of a 1 MB room");
    println!("40 silent joiners of a {room_kib} KiB room: RSS +{grown} KiB, {} KiB each", grown / 40);
    readers.abort();
}

/// What the process logs, for the one test that reads its own log.
static LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogBuffer;

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A guest's error text cannot forge a log record (control characters are
/// escaped), and a client that makes a plugin fail over and over gets a
/// bounded number of log lines, not one (or a backtrace) per frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_text_in_logs_is_escaped_and_bounded() {
    let _one = ONE_AT_A_TIME.lock().await;
    let installed = tracing_subscriber::fmt().with_writer(|| LogBuffer).with_ansi(false).try_init().is_ok();
    assert!(installed, "this test binary installs no other log subscriber");
    let wasm = presence_tests::guests::build_guest("tests/guests/hostile");
    let served = Served::start(ServerConfig {
        plugin: Some(presence::plugin::PluginConfig::new(wasm)),
        options: fast_options(),
        limits: limits(),
        ..ServerConfig::default()
    })
    .await;
    LOG.lock().unwrap().clear();
    let mut client = served.connect("id=forger").await;
    client.hello(&[]).await;
    for n in 0..40 {
        client.subscribe_ref(&format!("forge-{n}"), n).await;
    }
    client.wait_frame("the last denial", |f| f["ref"] == 39).await;
    let log = String::from_utf8_lossy(&LOG.lock().unwrap()).into_owned();
    let failures = log.lines().filter(|l| l.contains("subscribe hook failed")).count();
    assert!((1..=20).contains(&failures), "{failures} lines for 40 failing hooks:\n{log}");
    assert!(log.contains(r"oops\\n2026-01-01"), "the newline is escaped:\n{log}");
    assert!(!log.lines().any(|l| l.starts_with("2026-01-01")), "no forged record:\n{log}");
}

/// Junk counts: unparseable, binary and unknown frames count against the
/// frame rate like any other, and a client of any generation that keeps
/// flooding is closed (4429), legacy ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_floods_are_rate_limited_and_closed() {
    let _one = ONE_AT_A_TIME.lock().await;
    let served = serve(limits()).await;
    for junk in ["not json at all", r#"{"type":"nonsense"}"#, "binary"] {
        let mut client = served.connect("id=flooder").await;
        let mut sent = 0;
        'flood: for _ in 0..30 {
            for _ in 0..100 {
                let frame = match junk {
                    "binary" => tokio_tungstenite::tungstenite::Message::Binary(vec![1, 2, 3].into()),
                    text => tokio_tungstenite::tungstenite::Message::Text(text.into()),
                };
                if client.send_raw(frame).await.is_err() {
                    break 'flood;
                }
                sent += 1;
            }
            // Read what came back, as a client does, so a close can arrive.
            if client.drain_until_closed(Duration::from_millis(2)).await {
                break;
            }
        }
        if client.closed.is_none() {
            client.drain_until_closed(DEADLINE).await; // the close frame, after a refused send
        }
        assert_eq!(client.closed, Some(Some(4429)), "{junk:?}: closed as a flood after {sent} frames");
    }
    assert!(metric(served.addr, "presence_frames_refused_total").await >= 150.0);
}

/// Echoed fields are bounded: a `ref` is a number or a short string, so a
/// `subscribe-batch` cannot make the server repeat a long one in each of its
/// 256 acks; topics starting with `__` are refused for every generation
/// (legacy clients watch `__presence:<topic>`, nothing else of ours).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_fields_are_bounded_and_internal_topics_refused() {
    let _one = ONE_AT_A_TIME.lock().await;
    let served = serve(limits()).await;
    let mut client = served.connect("id=echo").await;
    client.hello(&[]).await;
    let topics: Vec<String> = (0..256).map(|n| format!("t{n}")).collect();
    let long_ref = "r".repeat(8 * 1024);
    let frame = json!({"type": "subscribe-batch", "topics": topics, "ref": long_ref}).to_string();
    client.send_text(&frame).await;
    client.subscribe_ref("after", 1).await;
    client.wait_frame("the next ack", |f| f["ref"] == 1).await;
    let echoed: usize = client.seen.iter().map(|f| f.to_string().len()).sum();
    assert!(echoed < frame.len(), "{echoed} bytes sent back for a {} byte frame", frame.len());
    assert!(client.of_type("subscribed").iter().all(|f| f["ref"] == 1), "the long ref was never echoed");

    let mut legacy = served.connect("id=old").await;
    legacy.subscribe("__internal").await;
    let refused = legacy.wait_for("error", |e| e["data"]["code"] == "bad-request").await;
    assert!(refused.to_string().contains("internal"), "{refused}");
    assert_eq!(served.server.hub().subscribers("__internal"), 0);
    legacy.subscribe("__presence:room").await;
    legacy.wait_for("list", |_| true).await;
}

/// One address holding idle, never-upgraded TCP connections cannot take the
/// server's places for requests not yet upgraded: past its own bound it is
/// refused, and `/healthz` (from another address) keeps answering 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_of_one_address_leave_health_reachable() {
    let _one = ONE_AT_A_TIME.lock().await;
    let limits = ServerLimits {
        max_connections: 40,
        max_pending_per_address: 16,
        header_read_timeout: Duration::from_secs(30),
        ..limits()
    };
    let served = serve(limits).await;
    let mut idle = Vec::new();
    for _ in 0..60 {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        if let Ok(stream) = socket.connect(served.addr).await {
            idle.push(stream);
        }
    }
    poll::until("the idle sockets are counted", DEADLINE, async || {
        let refused = metric(served.addr, "presence_connections_refused_total{reason=\"busy\"}").await;
        poll::when(refused >= 1.0, refused)
    })
    .await;
    for _ in 0..5 {
        let (status, _) = served.get("/healthz").await;
        assert_eq!(status, 200, "health answers while one address holds idle sockets");
    }
    drop(idle);
}

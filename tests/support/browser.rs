//! Headless Chromium driven over the DevTools protocol (a few CDP calls over
//! the WebSocket chromium opens): pages in isolated browser contexts, script
//! evaluation to read the page, screenshots.

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct Browser {
    child: Child,
    cdp: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _profile: super::guests::Scratch,
}

/// One tab, in its own browser context (separate cookies and storage).
pub struct Page {
    pub target: String,
    pub session: String,
}

impl Browser {
    pub async fn launch() -> Self {
        let profile = super::guests::Scratch::new("chromium");
        let binary = ["chromium", "chromium-browser", "google-chrome"]
            .into_iter()
            .find(|b| Command::new("which").arg(b).output().is_ok_and(|o| o.status.success()))
            .expect("headless Chromium is installed (`apt-get install chromium`; .ci/run does it)");
        let mut child = Command::new(binary)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
            .args(["--disable-quic", "--disable-component-update", "--disable-sync", "--remote-debugging-port=0"])
            .arg(format!("--user-data-dir={}", profile.0.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        // Chromium announces its DevTools endpoint on stderr.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(30)).expect("chromium printed its DevTools URL within 30 s");
        let (cdp, _) = tokio_tungstenite::connect_async(url).await.expect("connect to DevTools");
        Self { child, cdp, next_id: 0, _profile: profile }
    }

    /// One CDP command; events arriving meanwhile are skipped.
    pub async fn call(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        self.cdp.send(Message::Text(command.to_string().into())).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = tokio::time::timeout(left, self.cdp.next()).await.expect("DevTools answered in time");
            let Some(Ok(Message::Text(text))) = message else { continue };
            let reply: Value = serde_json::from_str(&text).unwrap();
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method} failed: {reply}");
                return reply["result"].clone();
            }
        }
    }

    pub async fn open(&mut self, url: &str) -> Page {
        let context = self.call("Target.createBrowserContext", json!({}), None).await;
        let target = self
            .call("Target.createTarget", json!({"url": url, "browserContextId": context["browserContextId"]}), None)
            .await["targetId"]
            .as_str()
            .unwrap()
            .to_owned();
        let session = self.call("Target.attachToTarget", json!({"targetId": target, "flatten": true}), None).await
            ["sessionId"]
            .as_str()
            .unwrap()
            .to_owned();
        Page { target, session }
    }

    /// Evaluate a JavaScript expression in the page; its JSON value.
    pub async fn eval(&mut self, page: &Page, expression: &str) -> Value {
        let result = self
            .call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true}), Some(&page.session))
            .await;
        result["result"]["value"].clone()
    }

    /// Poll an expression until it equals `expected`.
    pub async fn wait_for(&mut self, page: &Page, expression: &str, expected: Value) {
        let what = format!("`{expression}` is {expected}");
        super::poll::until(&what, super::DEADLINE, async || {
            let seen = self.eval(page, expression).await;
            super::poll::when(seen == expected, seen)
        })
        .await
    }

    pub async fn screenshot(&mut self, page: &Page, path: &std::path::Path) {
        use base64::Engine;
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}), Some(&page.session)).await;
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    pub async fn close(&mut self, page: Page) {
        self.call("Target.closeTarget", json!({"targetId": page.target}), None).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

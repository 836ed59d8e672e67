//! An existing axum application that adds presence in a few lines, keeping
//! its own routes, state and pages.
//!
//! Run with: `cargo run -p embed-axum` then open http://127.0.0.1:3000/
//! (the WebSocket endpoint is `/ws`; share presence between instances with
//! `.redis(RedisOptions::new(url))` on the builder, add policy with
//! `.plugin(PluginConfig::new(path))`).

use axum::extract::{Path, State};
use axum::response::Html;
use axum::routing::get;
use axum::{Json, Router};
use presence::server::PresenceServer;
use std::net::SocketAddr;

/// The application's own state; presence is one more field.
#[derive(Clone)]
struct AppState {
    name: &'static str,
    presence: PresenceServer,
}

async fn home(State(state): State<AppState>) -> Html<String> {
    let online = state.presence.presence().count("lobby").await.unwrap_or(0);
    Html(format!("<h1>{}</h1><p>{online} online in the lobby. Connect to <code>/ws?id=you</code>.</p>", state.name))
}

/// The app's own API, reading presence.
async fn online(State(state): State<AppState>, Path(topic): Path<String>) -> Json<serde_json::Value> {
    let members = state.presence.presence().list(&topic).await.unwrap_or_default();
    Json(serde_json::json!({ "topic": topic, "members": members }))
}

/// The whole application: its routes, plus presence's WebSocket endpoint.
fn app(presence: PresenceServer) -> Router {
    let state = AppState { name: "My existing app", presence: presence.clone() };
    Router::new()
        .route("/", get(home))
        .route("/online/{topic}", get(online))
        .with_state(state)
        .merge(presence.ws_router()) // ← the one line that adds presence
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let presence = PresenceServer::builder().start().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("embed-axum: http://{}/", listener.local_addr()?);
    let stopping = presence.clone();
    axum::serve(listener, app(presence).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            stopping.shutdown().await;
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    /// The embedded presence serves WebSocket clients next to the app's own
    /// routes, and the app reads presence through its own API.
    #[tokio::test]
    async fn presence_runs_inside_the_app() {
        let presence = PresenceServer::builder().start().await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = app(presence.clone()).into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, service).await });

        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?id=ada")).await.unwrap();
        ws.send(Message::Text(r#"{"type":"subscribe","topic":"lobby"}"#.into())).await.unwrap();
        // The first frame is the session's `welcome`; the list follows the subscribe.
        let list = loop {
            let Some(Ok(Message::Text(frame))) = ws.next().await else { panic!("expected the list") };
            if frame.contains(r#""event":"list""#) {
                break frame;
            }
        };
        assert!(list.contains(r#""key":"ada""#), "{list}");
        assert_eq!(presence.presence().count("lobby").await.unwrap(), 1);

        let api = app(presence.clone());
        let response = tower_oneshot(api, "/online/lobby").await;
        assert!(response.contains(r#""key":"ada""#), "{response}");
    }

    /// Call a route in-process (no port), as axum's testing example does.
    async fn tower_oneshot(app: Router, path: &str) -> String {
        use axum::body::Body;
        use axum::http::Request;
        use tower::ServiceExt;
        let response = app.oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }
}

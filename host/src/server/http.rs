//! The plain HTTP routes: the demo page, liveness, readiness and metrics.

use super::Shared;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse};
use std::sync::Arc;
use std::time::Duration;

pub(super) async fn demo() -> Html<&'static str> {
    Html(include_str!("demo.html"))
}

/// The process is up.
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready to serve: Redis answers (when configured), the engine's background
/// tasks run and its events flow, and a plugin is loaded (when configured).
pub(super) async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if shared.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".to_owned());
    }
    if let Some(conn) = &shared.redis {
        let mut conn = conn.clone();
        let ping =
            tokio::time::timeout(Duration::from_secs(1), redis::cmd("PING").query_async::<String>(&mut conn)).await;
        if !matches!(ping, Ok(Ok(_))) {
            return (StatusCode::SERVICE_UNAVAILABLE, "redis unreachable\n".to_owned());
        }
    }
    if let Some(reason) = shared.presence.unready_reason() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"));
    }
    if let Some(plugin) = &shared.plugin {
        if plugin.generation() == 0 {
            return (StatusCode::SERVICE_UNAVAILABLE, "no plugin loaded\n".to_owned());
        }
    }
    (StatusCode::OK, "ready\n".to_owned())
}

pub(super) async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], super::metrics::render(&shared))
}

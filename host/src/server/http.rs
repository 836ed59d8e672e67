//! The plain HTTP routes: the demo page, liveness, readiness, metrics, and
//! the clients' auth preflight.

use super::Shared;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// `POST /__ws/auth` (the client's opt-in `auth: true`): authenticate this
/// request as an upgrade would be, and on success answer 204 with a signed
/// session cookie the next upgrade accepts on any instance sharing the key.
/// A refusal answers the plugin's status (4xx stops the client for good,
/// 5xx is retried). The client's `x-requested-with` header is required, so
/// a cross-site form cannot obtain a session.
pub(super) async fn auth_preflight(
    State(shared): State<Arc<Shared>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    if headers.get("x-requested-with").is_none_or(|v| v != "svelte-adapter-uws") {
        return (StatusCode::FORBIDDEN, "the preflight needs `x-requested-with: svelte-adapter-uws`\n").into_response();
    }
    match super::ws::authenticate(&shared, &uri, &headers, peer.map(|p| p.0 .0)).await {
        Ok(user_data) => match shared.sessions.issue(&user_data, over_https(&headers)) {
            Some(cookie) => (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response(),
            None => (StatusCode::UNAUTHORIZED, "the token has expired\n").into_response(),
        },
        Err(denial) => {
            shared.metrics.upgrades_denied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let status = StatusCode::from_u16(denial.status)
                .ok()
                .filter(|s| s.is_client_error() || s.is_server_error())
                .unwrap_or(StatusCode::FORBIDDEN);
            (status, denial.reason).into_response()
        }
    }
}

/// `DELETE /__ws/auth`: end the session (the browser drops its cookie).
pub(super) async fn logout(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if headers.get("x-requested-with").is_none_or(|v| v != "svelte-adapter-uws") {
        return (StatusCode::FORBIDDEN, "logging out needs `x-requested-with: svelte-adapter-uws`\n").into_response();
    }
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, shared.sessions.logout(over_https(&headers)))]).into_response()
}

/// The request reached the proxy in front of us over HTTPS.
fn over_https(headers: &HeaderMap) -> bool {
    headers.get("x-forwarded-proto").is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"))
}

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

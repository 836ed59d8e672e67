//! Serving [`PresenceServer`] on a TCP listener, with the HTTP-level
//! protections `axum::serve` leaves out: a header-read timeout (a slowloris
//! upgrade is dropped, an idle keep-alive connection too), a bound on
//! connections that have not upgraded yet, in total and per address
//! (refused with a plain 503), and
//! TCP_NODELAY (small frames must not wait for the peer's delayed ACK).

use super::PresenceServer;
use axum::extract::connect_info::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 12\r\nconnection: close\r\n\r\nserver busy\n";

impl PresenceServer {
    /// Serve every route on `listener` until `stop` completes, then shut
    /// down gracefully ([`PresenceServer::shutdown`]).
    pub async fn serve(&self, listener: TcpListener, stop: impl Future<Output = ()>) {
        let limits = self.shared.limits.clone();
        let router = self.router();
        // HTTP connections that have not (yet) upgraded, in total and per
        // address; upgraded ones are counted by the WebSocket endpoint's own.
        let unupgraded = super::admission::Admission::new(limits.max_connections, limits.max_pending_per_address);
        tokio::pin!(stop);
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, most likely: let some close.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut stop => break,
            };
            let Ok(permit) = unupgraded.admit(Some(peer.ip())) else {
                self.shared.metrics.refused_busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(refuse_busy(tcp));
                continue;
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            let router = router.clone();
            let header_read_timeout = limits.header_read_timeout;
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    router.clone().oneshot(request)
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_read_timeout)
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades();
                if let Err(e) = connection.await {
                    tracing::debug!(%peer, error = %e, "http connection ended");
                }
                drop(permit);
            });
        }
        self.shutdown().await;
    }
}

/// A plain 503 for a connection over the limit, written without waiting long.
async fn refuse_busy(mut tcp: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(BUSY)).await;
}

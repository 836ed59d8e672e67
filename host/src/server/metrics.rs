//! `/metrics`: the server's own counters plus the engine's, the backend's
//! and the plugin's, in Prometheus text format.

use super::Shared;
use crate::metrics::type_line;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct ServerMetrics {
    pub connections_open: AtomicI64,
    pub connections_total: AtomicU64,
    pub upgrades_denied: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_refused: AtomicU64,
    /// Frames of a type this server does not know (ignored).
    pub frames_unknown: AtomicU64,
    pub keepalive_timeouts: AtomicU64,
    /// Writes that did not finish within the send timeout (client not reading).
    pub send_timeouts: AtomicU64,
    /// Connections refused before the upgrade, by reason.
    pub refused_origin: AtomicU64,
    pub refused_full: AtomicU64,
    pub refused_address: AtomicU64,
    pub refused_busy: AtomicU64,
}

pub fn render(shared: &Shared) -> String {
    let mut out = String::new();
    let m = &shared.metrics;
    let mut line = |name: &str, kind: &str, value: String| {
        type_line(&mut out, name, kind);
        let _ = writeln!(out, "{name} {value}");
    };
    line("presence_connections", "gauge", m.connections_open.load(Relaxed).to_string());
    line("presence_connections_total", "counter", m.connections_total.load(Relaxed).to_string());
    line("presence_upgrades_denied_total", "counter", m.upgrades_denied.load(Relaxed).to_string());
    line("presence_frames_received_total", "counter", m.frames_in.load(Relaxed).to_string());
    line("presence_frames_refused_total", "counter", m.frames_refused.load(Relaxed).to_string());
    line("presence_frames_unknown_total", "counter", m.frames_unknown.load(Relaxed).to_string());
    line("presence_frames_sent_total", "counter", shared.hub.frames_sent().to_string());
    line("presence_keepalive_timeouts_total", "counter", m.keepalive_timeouts.load(Relaxed).to_string());
    line("presence_send_timeouts_total", "counter", m.send_timeouts.load(Relaxed).to_string());
    line("presence_slow_client_disconnects_total", "counter", shared.hub.overflows().to_string());
    line("presence_topics", "gauge", shared.presence.local_topics().to_string());
    line("presence_topics_lingering", "gauge", shared.presence.lingering_topics().to_string());
    line("presence_engine_connections", "gauge", shared.presence.connections().to_string());
    let stats = shared.presence.stats();
    let health = shared.presence.health();
    line("presence_task_restarts_total", "counter", health.restarts.to_string());
    line("presence_resyncs_total", "counter", stats.resyncs.to_string());
    line("presence_replica_repairs_total", "counter", stats.repairs.to_string());
    line("presence_tasks_down", "gauge", health.down.len().to_string());
    type_line(&mut out, "presence_events_total", "counter");
    for (event, counter) in [("join", stats.joins), ("leave", stats.leaves), ("updated", stats.updates)] {
        let _ = writeln!(out, "presence_events_total{{event=\"{event}\"}} {counter}");
    }
    type_line(&mut out, "presence_connections_refused_total", "counter");
    for (reason, counter) in [
        ("origin", &m.refused_origin),
        ("full", &m.refused_full),
        ("address", &m.refused_address),
        ("busy", &m.refused_busy),
    ] {
        let _ = writeln!(out, "presence_connections_refused_total{{reason=\"{reason}\"}} {}", counter.load(Relaxed));
    }
    shared.backend_metrics.render(&mut out);
    if let Some(plugin) = &shared.plugin {
        plugin.render_metrics(&mut out);
    }
    out
}

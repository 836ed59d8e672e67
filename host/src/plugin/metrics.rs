//! Counters per export (calls, errors, traps, timeouts, a latency histogram)
//! and per plugin (generation, reloads), rendered in Prometheus text format.

use crate::metrics::{type_line, Histogram};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The plugin's exports, in metric order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Export {
    Authenticate,
    Authorize,
    Select,
    OnSubscribe,
    OnUnsubscribe,
    OnClose,
}

impl Export {
    pub const ALL: [Export; 6] = [
        Export::Authenticate,
        Export::Authorize,
        Export::Select,
        Export::OnSubscribe,
        Export::OnUnsubscribe,
        Export::OnClose,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Export::Authenticate => "authenticate",
            Export::Authorize => "authorize",
            Export::Select => "select",
            Export::OnSubscribe => "on-subscribe",
            Export::OnUnsubscribe => "on-unsubscribe",
            Export::OnClose => "on-close",
        }
    }

    pub fn is_hook(self) -> bool {
        matches!(self, Export::OnSubscribe | Export::OnUnsubscribe | Export::OnClose)
    }
}

#[derive(Default)]
pub struct ExportMetrics {
    pub calls: AtomicU64,
    /// The guest returned an error (a denial counts as an answer, not an error).
    pub errors: AtomicU64,
    pub traps: AtomicU64,
    pub timeouts: AtomicU64,
    pub latency: Histogram,
}

impl ExportMetrics {
    pub fn observe(&self, latency: Duration) {
        self.latency.observe(latency);
        self.calls.fetch_add(1, Relaxed);
    }
}

#[derive(Default)]
pub struct PluginMetrics {
    exports: [ExportMetrics; 6],
    pub generation: AtomicU64,
    pub reloads: AtomicU64,
    pub rejected_reloads: AtomicU64,
    /// Log lines dropped by the rate limit.
    pub dropped_log_lines: AtomicU64,
    /// Precompiled artifacts refused (planted, damaged, wrong owner or mode).
    pub cache_rejected: AtomicU64,
}

impl PluginMetrics {
    pub fn export(&self, export: Export) -> &ExportMetrics {
        &self.exports[Export::ALL.iter().position(|e| *e == export).expect("listed")]
    }

    /// Prometheus text exposition of every plugin metric.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# TYPE presence_plugin_generation gauge");
        let _ = writeln!(out, "presence_plugin_generation {}", self.generation.load(Relaxed));
        let _ = writeln!(out, "# TYPE presence_plugin_reloads_total counter");
        let _ = writeln!(out, "presence_plugin_reloads_total{{result=\"ok\"}} {}", self.reloads.load(Relaxed));
        let _ = writeln!(
            out,
            "presence_plugin_reloads_total{{result=\"rejected\"}} {}",
            self.rejected_reloads.load(Relaxed)
        );
        let _ = writeln!(out, "# TYPE presence_plugin_dropped_log_lines_total counter");
        let _ = writeln!(out, "presence_plugin_dropped_log_lines_total {}", self.dropped_log_lines.load(Relaxed));
        let _ = writeln!(out, "# TYPE presence_plugin_cache_rejected_total counter");
        let _ = writeln!(out, "presence_plugin_cache_rejected_total {}", self.cache_rejected.load(Relaxed));
        for (name, pick) in [
            ("calls", (|m: &ExportMetrics| &m.calls) as fn(&ExportMetrics) -> &AtomicU64),
            ("errors", |m| &m.errors),
            ("traps", |m| &m.traps),
            ("timeouts", |m| &m.timeouts),
        ] {
            let _ = writeln!(out, "# TYPE presence_plugin_{name}_total counter");
            for export in Export::ALL {
                let value = pick(self.export(export)).load(Relaxed);
                let _ = writeln!(out, "presence_plugin_{name}_total{{export=\"{}\"}} {value}", export.name());
            }
        }
        type_line(out, "presence_plugin_call_seconds", "histogram");
        for export in Export::ALL {
            self.export(export).latency.render(
                out,
                "presence_plugin_call_seconds",
                &format!("export=\"{}\"", export.name()),
            );
        }
    }
}

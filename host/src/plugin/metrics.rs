//! Counters per export (calls, errors, traps, timeouts, a latency histogram)
//! and per plugin (generation, reloads), rendered in Prometheus text format.

use crate::metrics::{type_line, Histogram};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The plugin's exports, in metric order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Export {
    /// `authenticate`.
    Authenticate,
    /// `authorize`.
    Authorize,
    /// `select`.
    Select,
    /// `on-subscribe`.
    OnSubscribe,
    /// `on-unsubscribe`.
    OnUnsubscribe,
    /// `on-close`.
    OnClose,
}

impl Export {
    /// Every export.
    pub const ALL: [Export; 6] = [
        Export::Authenticate,
        Export::Authorize,
        Export::Select,
        Export::OnSubscribe,
        Export::OnUnsubscribe,
        Export::OnClose,
    ];

    /// Its name in the WIT contract (and in metric labels).
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

    /// A hook (which runs presence operations, under the hook deadline).
    pub fn is_hook(self) -> bool {
        matches!(self, Export::OnSubscribe | Export::OnUnsubscribe | Export::OnClose)
    }
}

/// Counters and latency of one export.
#[derive(Default)]
pub struct ExportMetrics {
    /// Calls made.
    pub calls: AtomicU64,
    /// The guest returned an error (a denial counts as an answer, not an error).
    pub errors: AtomicU64,
    /// Calls that trapped.
    pub traps: AtomicU64,
    /// Calls stopped at their deadline.
    pub timeouts: AtomicU64,
    /// How long calls took.
    pub latency: Histogram,
}

impl ExportMetrics {
    /// Count one call that took `latency`.
    pub fn observe(&self, latency: Duration) {
        self.latency.observe(latency);
        self.calls.fetch_add(1, Relaxed);
    }
}

/// Everything the plugin host counts, for `/metrics`.
#[derive(Default)]
pub struct PluginMetrics {
    exports: [ExportMetrics; 6],
    /// The version serving (1 = the first loaded).
    pub generation: AtomicU64,
    /// Reloads that took effect.
    pub reloads: AtomicU64,
    /// Reloads refused (the previous version kept serving).
    pub rejected_reloads: AtomicU64,
    /// Log lines dropped by the rate limit.
    pub dropped_log_lines: AtomicU64,
    /// Precompiled artifacts refused (planted, damaged, wrong owner or mode).
    pub cache_rejected: AtomicU64,
    /// Instances retired after a call because their memory neared its cap
    /// (a garbage-collected guest's heap only grows).
    pub retired_instances: AtomicU64,
}

impl PluginMetrics {
    /// The counters of one export.
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
        let _ = writeln!(out, "# TYPE presence_plugin_retired_instances_total counter");
        let _ = writeln!(out, "presence_plugin_retired_instances_total {}", self.retired_instances.load(Relaxed));
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

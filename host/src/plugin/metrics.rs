//! Counters per export (calls, errors, traps, timeouts, a latency histogram)
//! and per plugin (generation, reloads), rendered in Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds.
pub const BUCKETS_US: [u64; 12] = [5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 100_000];

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
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl ExportMetrics {
    pub fn observe(&self, latency: Duration) {
        let us = latency.as_micros() as u64;
        let bucket = BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(BUCKETS_US.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
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
        let _ = writeln!(out, "# TYPE presence_plugin_call_seconds histogram");
        for export in Export::ALL {
            let m = self.export(export);
            let mut cumulative = 0;
            for (i, bound) in BUCKETS_US.iter().enumerate() {
                cumulative += m.buckets[i].load(Relaxed);
                let _ = writeln!(
                    out,
                    "presence_plugin_call_seconds_bucket{{export=\"{}\",le=\"{}\"}} {cumulative}",
                    export.name(),
                    *bound as f64 / 1e6
                );
            }
            cumulative += m.buckets[BUCKETS_US.len()].load(Relaxed);
            let name = export.name();
            let _ = writeln!(out, "presence_plugin_call_seconds_bucket{{export=\"{name}\",le=\"+Inf\"}} {cumulative}");
            let _ = writeln!(
                out,
                "presence_plugin_call_seconds_sum{{export=\"{name}\"}} {}",
                m.sum_us.load(Relaxed) as f64 / 1e6
            );
            let _ = writeln!(out, "presence_plugin_call_seconds_count{{export=\"{name}\"}} {cumulative}");
        }
    }
}

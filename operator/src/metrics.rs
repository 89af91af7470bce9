//! Operator metrics, served at `/metrics` in the Prometheus text format:
//! reconcile runs, failures by reason, and reconcile durations.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the reconcile duration histogram.
const BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0];

#[derive(Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Counts per bucket (cumulative at render), sum in microseconds.
    durations: Mutex<(Vec<u64>, u64, u64)>,
}

impl Metrics {
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        let mut d = self.durations.lock().expect("lock");
        if d.0.is_empty() {
            d.0 = vec![0; BUCKETS.len()];
        }
        let s = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| s <= *b) {
            d.0[i] += 1;
        }
        d.1 += took.as_micros() as u64;
        d.2 += 1;
    }

    pub fn failed(&self, reason: &'static str) {
        *self
            .failures
            .lock()
            .expect("lock")
            .entry(reason)
            .or_insert(0) += 1;
    }

    pub fn reconcile_count(&self) -> u64 {
        self.reconciles.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP realtime_operator_reconciles_total Reconciles run.\n");
        out.push_str("# TYPE realtime_operator_reconciles_total counter\n");
        out.push_str(&format!(
            "realtime_operator_reconciles_total {}\n",
            self.reconcile_count()
        ));
        out.push_str(
            "# HELP realtime_operator_reconcile_failures_total Failed reconciles by reason.\n",
        );
        out.push_str("# TYPE realtime_operator_reconcile_failures_total counter\n");
        for (reason, n) in self.failures.lock().expect("lock").iter() {
            out.push_str(&format!(
                "realtime_operator_reconcile_failures_total{{reason=\"{reason}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP realtime_operator_reconcile_duration_seconds Reconcile durations.\n");
        out.push_str("# TYPE realtime_operator_reconcile_duration_seconds histogram\n");
        let d = self.durations.lock().expect("lock");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += d.0.get(i).copied().unwrap_or(0);
            out.push_str(&format!(
                "realtime_operator_reconcile_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}\n"
            ));
        }
        out.push_str(&format!(
            "realtime_operator_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {}\n",
            d.2
        ));
        out.push_str(&format!(
            "realtime_operator_reconcile_duration_seconds_sum {}\n",
            d.1 as f64 / 1e6
        ));
        out.push_str(&format!(
            "realtime_operator_reconcile_duration_seconds_count {}\n",
            d.2
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_failures_and_durations() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(20));
        m.failed("database");
        let text = m.render();
        assert!(
            text.contains("realtime_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(text.contains("reason=\"database\"} 1"), "{text}");
        assert!(text.contains("le=\"0.05\"} 1"), "{text}");
    }
}

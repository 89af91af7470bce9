//! Operator metrics, served at `/metrics` in the OpenMetrics text format
//! through `prometheus-client`: reconcile runs, failures by reason, and
//! reconcile durations.
//!
//! | series | type | meaning |
//! | --- | --- | --- |
//! | `realtime_operator_reconciles_total` | counter | reconciles run |
//! | `realtime_operator_reconcile_failures_total{reason}` | counter | failed reconciles, by `reason`: `kubernetes`, `database`, `waiting` |
//! | `realtime_operator_reconcile_duration_seconds` | histogram | how long reconciles take |

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the reconcile duration histogram: from a
/// reconcile that finds nothing to do to one waiting on a slow database.
const BUCKETS: [f64; 8] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0];

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    reason: String,
}

/// The operator's series, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    failures: Family<FailureLabels, Counter>,
    durations: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let reconciles = Counter::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let durations = Histogram::new(BUCKETS);
        // Counters get their `_total` suffix from the registry.
        registry.register(
            "realtime_operator_reconciles",
            "Reconciles run",
            reconciles.clone(),
        );
        registry.register(
            "realtime_operator_reconcile_failures",
            "Failed reconciles by reason",
            failures.clone(),
        );
        registry.register(
            "realtime_operator_reconcile_duration_seconds",
            "Reconcile durations",
            durations.clone(),
        );
        Metrics {
            registry,
            reconciles,
            failures,
            durations,
        }
    }
}

impl Metrics {
    /// One reconcile ran, for `took`.
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.durations.observe(took.as_secs_f64());
    }

    /// One reconcile failed; `reason` is the error's metrics label.
    pub fn failed(&self, reason: &'static str) {
        self.failures
            .get_or_create(&FailureLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// The text exposition (see [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String does not fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line that starts with `series` (name and labels).
    fn sample(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(str::to_owned)
    }

    #[test]
    fn renders_counts_failures_and_durations_under_todays_names() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(20));
        m.reconciled(Duration::from_secs(2));
        m.failed("database");
        let text = m.render();
        assert_eq!(
            sample(&text, "realtime_operator_reconciles_total").as_deref(),
            Some("2"),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "realtime_operator_reconcile_failures_total{reason=\"database\"}"
            )
            .as_deref(),
            Some("1"),
            "{text}"
        );
        let bucket = |le: &str| {
            sample(
                &text,
                &format!("realtime_operator_reconcile_duration_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(bucket("0.01").as_deref(), Some("0"), "{text}");
        assert_eq!(bucket("0.05").as_deref(), Some("1"), "{text}");
        assert_eq!(bucket("5.0").as_deref(), Some("2"), "{text}");
        assert_eq!(bucket("+Inf").as_deref(), Some("2"), "{text}");
        assert_eq!(
            sample(&text, "realtime_operator_reconcile_duration_seconds_count").as_deref(),
            Some("2"),
            "{text}"
        );
        let sum: f64 = sample(&text, "realtime_operator_reconcile_duration_seconds_sum")
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 2.02).abs() < 1e-9, "{text}");
        assert!(
            text.contains("# TYPE realtime_operator_reconcile_duration_seconds histogram"),
            "{text}"
        );
    }
}

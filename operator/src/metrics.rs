//! Operator metrics, served at `/metrics` in the OpenMetrics text format
//! through `prometheus-client`: reconcile runs, failures by reason, reconcile
//! durations, and per RealtimeServer its replicas and the health of each of
//! its replication slots, as the last reconcile found them (every 5 minutes
//! at least, and at every change). The series of a deleted resource, or of a
//! dropped slot, are removed.
//!
//! | series | type | meaning |
//! | --- | --- | --- |
//! | `realtime_operator_reconciles_total` | counter | reconciles run |
//! | `realtime_operator_reconcile_failures_total{reason}` | counter | failed reconciles, by `reason`: `kubernetes`, `database`, `waiting` |
//! | `realtime_operator_reconcile_duration_seconds` | histogram | how long reconciles take |
//! | `realtime_operator_replicas{namespace,realtimeserver}` | gauge | `spec.replicas` |
//! | `realtime_operator_ready_replicas{namespace,realtimeserver}` | gauge | pods ready |
//! | `realtime_operator_slot_active{namespace,realtimeserver,slot}` | gauge | 1 while a server streams from the slot |
//! | `realtime_operator_slot_retained_wal_bytes{namespace,realtimeserver,slot}` | gauge | WAL the slot keeps from being recycled (from its `restart_lsn`) |
//! | `realtime_operator_slot_confirmed_lag_bytes{namespace,realtimeserver,slot}` | gauge | WAL written since the position the slot's server last confirmed |
//! | `realtime_operator_slots_lost_total{namespace,realtimeserver,slot}` | counter | slots found missing after the operator had created them (failover, restore), and recreated |

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the reconcile duration histogram: from a
/// reconcile that finds nothing to do to one waiting on a slow database.
const BUCKETS: [f64; 8] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0];

/// The `reason` labels of the failures counter (`Error::metric_label`).
pub const FAILURE_REASONS: [&str; 3] = ["kubernetes", "database", "waiting"];

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    reason: String,
}

/// The labels of a RealtimeServer's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    namespace: String,
    realtimeserver: String,
}

/// The labels of one slot's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabels {
    namespace: String,
    realtimeserver: String,
    slot: String,
}

/// One slot as a reconcile found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotHealth {
    pub name: String,
    pub active: bool,
    pub retained_wal_bytes: Option<i64>,
    pub confirmed_lag_bytes: Option<i64>,
}

/// The operator's series, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    failures: Family<FailureLabels, Counter>,
    durations: Histogram,
    replicas: Family<ResourceLabels, Gauge>,
    ready_replicas: Family<ResourceLabels, Gauge>,
    slot_active: Family<SlotLabels, Gauge>,
    slot_retained: Family<SlotLabels, Gauge>,
    slot_confirmed_lag: Family<SlotLabels, Gauge>,
    slots_lost: Family<SlotLabels, Counter>,
    /// The slots each resource has series for, to remove those that went.
    slots_of: Mutex<HashMap<ResourceLabels, BTreeSet<String>>>,
    /// The slots each resource has a lost count for.
    lost_of: Mutex<HashMap<ResourceLabels, BTreeSet<String>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let reconciles = Counter::default();
        let failures = Family::<FailureLabels, Counter>::default();
        // Every reason from 0, so that the first failure is an increase.
        for reason in FAILURE_REASONS {
            failures.get_or_create_owned(&FailureLabels {
                reason: reason.into(),
            });
        }
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
        let replicas = Family::<ResourceLabels, Gauge>::default();
        let ready_replicas = Family::<ResourceLabels, Gauge>::default();
        let slot_active = Family::<SlotLabels, Gauge>::default();
        let slot_retained = Family::<SlotLabels, Gauge>::default();
        let slot_confirmed_lag = Family::<SlotLabels, Gauge>::default();
        let slots_lost = Family::<SlotLabels, Counter>::default();
        registry.register(
            "realtime_operator_replicas",
            "Replicas a RealtimeServer asks for (spec.replicas)",
            replicas.clone(),
        );
        registry.register(
            "realtime_operator_ready_replicas",
            "Ready pods of a RealtimeServer",
            ready_replicas.clone(),
        );
        registry.register(
            "realtime_operator_slot_active",
            "1 while a server streams from the replication slot",
            slot_active.clone(),
        );
        registry.register(
            "realtime_operator_slot_retained_wal_bytes",
            "WAL the replication slot keeps from being recycled",
            slot_retained.clone(),
        );
        registry.register(
            "realtime_operator_slot_confirmed_lag_bytes",
            "WAL written since the position the slot's server last confirmed",
            slot_confirmed_lag.clone(),
        );
        registry.register(
            "realtime_operator_slots_lost",
            "Replication slots found missing after the operator created them, and recreated",
            slots_lost.clone(),
        );
        Metrics {
            registry,
            reconciles,
            failures,
            durations,
            replicas,
            ready_replicas,
            slot_active,
            slot_retained,
            slot_confirmed_lag,
            slots_lost,
            slots_of: Mutex::new(HashMap::new()),
            lost_of: Mutex::new(HashMap::new()),
        }
    }
}

fn resource(namespace: &str, name: &str) -> ResourceLabels {
    ResourceLabels {
        namespace: namespace.into(),
        realtimeserver: name.into(),
    }
}

fn slot_labels(r: &ResourceLabels, slot: &str) -> SlotLabels {
    SlotLabels {
        namespace: r.namespace.clone(),
        realtimeserver: r.realtimeserver.clone(),
        slot: slot.into(),
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

    /// `ready` of `replicas` pods of the resource `namespace/name`.
    pub fn replicas(&self, namespace: &str, name: &str, ready: i32, replicas: i32) {
        let r = resource(namespace, name);
        self.replicas.get_or_create(&r).set(replicas.into());
        self.ready_replicas.get_or_create(&r).set(ready.into());
    }

    /// The slots of the resource `namespace/name` are now `slots`: their
    /// gauges are set, those of slots no longer there removed.
    pub fn slots(&self, namespace: &str, name: &str, slots: &[SlotHealth]) {
        let r = resource(namespace, name);
        let mut known = self.slots_of.lock().expect("lock");
        let had = known.entry(r.clone()).or_default();
        let now: BTreeSet<String> = slots.iter().map(|s| s.name.clone()).collect();
        for gone in had.difference(&now) {
            self.remove_slot(&slot_labels(&r, gone));
        }
        let mut lost_of = self.lost_of.lock().expect("lock");
        let lost = lost_of.entry(r.clone()).or_default();
        for s in slots {
            let l = slot_labels(&r, &s.name);
            // From 0, so that the first loss is an increase Prometheus sees.
            self.slots_lost.get_or_create_owned(&l);
            lost.insert(s.name.clone());
            self.slot_active.get_or_create(&l).set(s.active.into());
            match s.retained_wal_bytes {
                Some(b) => {
                    self.slot_retained.get_or_create(&l).set(b);
                }
                None => {
                    self.slot_retained.remove(&l);
                }
            }
            match s.confirmed_lag_bytes {
                Some(b) => {
                    self.slot_confirmed_lag.get_or_create(&l).set(b);
                }
                None => {
                    self.slot_confirmed_lag.remove(&l);
                }
            }
        }
        *had = now;
    }

    /// The slot `slot` of `namespace/name` was found missing after it had
    /// been created.
    pub fn slot_lost(&self, namespace: &str, name: &str, slot: &str) {
        let r = resource(namespace, name);
        self.slots_lost.get_or_create(&slot_labels(&r, slot)).inc();
        self.lost_of
            .lock()
            .expect("lock")
            .entry(r)
            .or_default()
            .insert(slot.into());
    }

    /// The resource `namespace/name` is gone: its series go too.
    pub fn forget(&self, namespace: &str, name: &str) {
        let r = resource(namespace, name);
        self.replicas.remove(&r);
        self.ready_replicas.remove(&r);
        let slots = self.slots_of.lock().expect("lock").remove(&r);
        for s in slots.unwrap_or_default() {
            self.remove_slot(&slot_labels(&r, &s));
        }
        let lost = self.lost_of.lock().expect("lock").remove(&r);
        for s in lost.unwrap_or_default() {
            self.slots_lost.remove(&slot_labels(&r, &s));
        }
    }

    fn remove_slot(&self, l: &SlotLabels) {
        self.slot_active.remove(l);
        self.slot_retained.remove(l);
        self.slot_confirmed_lag.remove(l);
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
    fn slot_series_follow_the_slots_and_go_with_the_resource() {
        let m = Metrics::default();
        let slot = |name: &str, active, retained| SlotHealth {
            name: name.into(),
            active,
            retained_wal_bytes: retained,
            confirmed_lag_bytes: Some(7),
        };
        m.replicas("ns", "chat", 1, 2);
        m.slots(
            "ns",
            "chat",
            &[slot("s_0", true, Some(100)), slot("s_1", false, Some(4096))],
        );
        m.slot_lost("ns", "chat", "s_1");
        let text = m.render();
        let l = |s: &str| format!("{{namespace=\"ns\",realtimeserver=\"chat\",slot=\"{s}\"}}");
        assert_eq!(
            sample(&text, &format!("realtime_operator_slot_active{}", l("s_0"))).as_deref(),
            Some("1"),
            "{text}"
        );
        assert_eq!(
            sample(&text, &format!("realtime_operator_slot_active{}", l("s_1"))).as_deref(),
            Some("0"),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                &format!("realtime_operator_slot_retained_wal_bytes{}", l("s_1"))
            )
            .as_deref(),
            Some("4096"),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                &format!("realtime_operator_slot_confirmed_lag_bytes{}", l("s_0"))
            )
            .as_deref(),
            Some("7"),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                &format!("realtime_operator_slots_lost_total{}", l("s_1"))
            )
            .as_deref(),
            Some("1"),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                &format!("realtime_operator_slots_lost_total{}", l("s_0"))
            )
            .as_deref(),
            Some("0"),
            "a slot's loss counter starts at 0: {text}"
        );
        assert_eq!(
            sample(
                &text,
                "realtime_operator_ready_replicas{namespace=\"ns\",realtimeserver=\"chat\"}"
            )
            .as_deref(),
            Some("1"),
            "{text}"
        );
        // Scaled to one: slot 1's gauges go.
        m.slots("ns", "chat", &[slot("s_0", true, Some(100))]);
        let text = m.render();
        assert!(
            !text.contains(&format!("realtime_operator_slot_active{}", l("s_1"))),
            "{text}"
        );
        // Deleted: everything of the resource goes.
        m.forget("ns", "chat");
        let text = m.render();
        assert!(!text.contains("realtimeserver=\"chat\""), "{text}");
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
        // Every reason is there from 0: the first failure is an increase.
        assert_eq!(
            sample(
                &text,
                "realtime_operator_reconcile_failures_total{reason=\"kubernetes\"}"
            )
            .as_deref(),
            Some("0"),
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

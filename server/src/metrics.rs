//! The server's one store of metrics, served at `/metrics` in the
//! Prometheus text format (0.0.4) through `prometheus-client`.
//!
//! One process-wide [`METRICS`]: every part of the server bumps its own
//! counters without passing handles around. Each counter and gauge is an
//! atomic (no lock on the hot path), and so is the lag histogram, which
//! encodes through the library's histogram encoder. The two values that
//! live elsewhere (open sockets in the hub, the stream's state) are read
//! from their owners at each scrape. Must not decide what is counted: the
//! parts that count do.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::hub::Hub;
use crate::replication::stream::StreamStatus;

/// The media type of [`Metrics::render`]'s text.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the commit-to-send latency histogram.
const LAG_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// Why the server dropped and recreated its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotRecreation {
    /// `MAX_REPLICATION_LAG_MB` was exceeded.
    Lag = 0,
    /// PostgreSQL invalidated the slot (`wal_status = lost`).
    Invalidated = 1,
    /// The WAL the slot needs was removed (SQLSTATE 58P01).
    WalRemoved = 2,
}

impl SlotRecreation {
    pub const ALL: [SlotRecreation; 3] = [Self::Lag, Self::Invalidated, Self::WalRemoved];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lag => "lag",
            Self::Invalidated => "invalidated",
            Self::WalRemoved => "wal_removed",
        }
    }
}

impl EncodeLabelValue for SlotRecreation {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

/// The labels of `realtime_slot_recreations_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SlotLabels {
    reason: SlotRecreation,
}

/// The labels of `realtime_limit_reached_total`: the variable that names
/// the limit (`MAX_PENDING_CONNECTIONS`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

/// The process's metrics. Counters are monotonic tallies, each independent.
pub struct Metrics {
    registry: Registry,
    /// Read from the hub at each scrape.
    connections: Gauge,
    /// Read from the queues' count at each scrape.
    queued_bytes: Gauge,
    /// Read from the state charges at each scrape.
    held_bytes: Gauge,
    pub connections_accepted: Counter,
    pub connections_refused: Counter,
    pub auth_failures: Counter,
    pub channels: Gauge,
    pub changes_received: Counter,
    pub frames_queued: Counter,
    pub transactions: Counter,
    pub duplicate_changes_skipped: Counter,
    pub messages_sent: Counter,
    pub bytes_sent: Counter,
    pub slow_consumer_closes: Counter,
    pub bad_frames: Counter,
    /// Binary broadcasts a member could not be sent (vsn 1.0.0, or a name
    /// over 255 bytes).
    pub binary_broadcasts_skipped: Counter,
    /// Row level security checks run inside PostgreSQL (statements).
    pub rls_check_statements: Counter,
    /// Row images those statements checked.
    pub rls_images_checked: Counter,
    /// (change, group) pairs withheld because their check raised an error.
    pub rls_check_errors: Counter,
    /// (change, group) pairs withheld because their check timed out (or
    /// the table's lane was full).
    pub rls_check_timeouts: Counter,
    /// (change, group) pairs withheld because the change's image lacks a
    /// column the policies read, or the group's access was not computed yet.
    pub rls_undecidable: Counter,
    /// Snapshots of the published tables loaded (joins are checked
    /// against the snapshot).
    pub catalog_snapshot_loads: Counter,
    /// Joins the snapshot would have refused, checked against the catalog.
    pub catalog_live_lookups: Counter,
    pub accept_errors: Counter,
    /// Requests refused because a limit was reached, by the limit's variable.
    limits_reached: Family<LimitLabels, Counter>,
    /// Read from the stream's status at each scrape.
    replication_connected: Gauge,
    pub replication_sessions: Counter,
    pub replication_failures: Counter,
    pub lag_bytes: Gauge<u64, AtomicU64>,
    /// The counters of `realtime_slot_recreations_total`, one per reason,
    /// shared with the registry's family (no lookup per increment).
    slot_recreations: [Counter; 3],
    replication_lag: LagHistogram,
    /// Read from the cluster's bus status at each scrape.
    cluster: ClusterMetrics,
}

/// The cluster bus's state and tallies, copied from its `BusStatus` (which
/// the bus keeps as plain atomics) at each scrape.
struct ClusterMetrics {
    up: Gauge,
    lagging: Gauge,
    lag_seconds: Gauge<f64, AtomicU64>,
    nodes: Gauge,
    published: Counter,
    received: Counter,
    refused: Counter,
    failed: Counter,
    reconnects: Counter,
}

/// The process's metrics, registered on first use.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        // The library ends each help text with a period.
        let mut gauge = |name: &str, help: &str| {
            let g: Gauge = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let connections = gauge("realtime_connections", "Open WebSocket connections");
        let queued_bytes = gauge(
            "realtime_queued_bytes",
            "Bytes queued to sockets, a frame counted once per queue that holds it",
        );
        let held_bytes = gauge(
            "realtime_held_bytes",
            "Estimated bytes of state clients made the server keep (channels, bindings, presences); with realtime_queued_bytes, what MEMORY_BUDGET_MB bounds",
        );
        let channels = gauge("realtime_channels", "Joined channels over all sockets");
        let replication_connected = gauge(
            "realtime_replication_connected",
            "1 while the replication stream is live",
        );
        let lag_bytes = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "realtime_replication_lag_bytes",
            "WAL between the database's current position and the last position the server confirmed",
            lag_bytes.clone(),
        );
        // Counters are registered without `_total`: the library adds it.
        let mut counter = |name: &str, help: &str| {
            let c: Counter = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let connections_accepted = counter(
            "realtime_connections_accepted",
            "WebSocket upgrades accepted",
        );
        let connections_refused = counter(
            "realtime_connections_refused",
            "WebSocket upgrades refused because MAX_CONNECTIONS was reached",
        );
        let auth_failures = counter(
            "realtime_auth_failures",
            "Tokens refused: at upgrade (HTTP 403), on join and on access_token",
        );
        let changes_received = counter(
            "realtime_changes_received",
            "Row changes received from the replication stream and dispatched",
        );
        let frames_queued = counter(
            "realtime_frames_queued",
            "Frames of row changes queued to sockets (one per socket a change reaches)",
        );
        let transactions = counter(
            "realtime_transactions",
            "Transactions received from the replication stream",
        );
        let duplicate_changes_skipped = counter(
            "realtime_duplicate_changes_skipped",
            "Changes resent by PostgreSQL after a reconnect and not delivered twice",
        );
        let messages_sent = counter(
            "realtime_messages_sent",
            "WebSocket frames (text and binary) written to clients",
        );
        let bytes_sent = counter(
            "realtime_bytes_sent",
            "Payload bytes of the WebSocket frames (text and binary) written to clients",
        );
        let slow_consumer_closes = counter(
            "realtime_slow_consumer_closes",
            "Sockets closed with 1013 because their send queue was full",
        );
        let bad_frames = counter(
            "realtime_bad_frames",
            "Inbound frames refused: malformed, binary, too large",
        );
        let binary_broadcasts_skipped = counter(
            "realtime_binary_broadcasts_skipped",
            "Broadcasts with a binary payload not sent to a member that cannot read binary frames (vsn 1.0.0)",
        );
        let rls_check_statements = counter(
            "realtime_rls_check_statements",
            "Row level security check statements run inside PostgreSQL (one per group and batch of changes)",
        );
        let rls_images_checked = counter(
            "realtime_rls_images_checked",
            "Row images checked against row level security policies inside PostgreSQL",
        );
        let rls_check_errors = counter(
            "realtime_rls_check_errors",
            "Changes withheld from a group of subscribers because checking its policies raised an error",
        );
        let rls_check_timeouts = counter(
            "realtime_rls_check_timeouts",
            "Changes withheld from a group of subscribers because checking its policies timed out",
        );
        let rls_undecidable = counter(
            "realtime_rls_undecidable",
            "Changes withheld from a group because their row image lacks what the policies read, or the group's access to the table was not computed yet",
        );
        let catalog_snapshot_loads = counter(
            "realtime_catalog_snapshot_loads",
            "Snapshots of the published tables' columns loaded: at start, and after a change to a publication or a published table",
        );
        let catalog_live_lookups = counter(
            "realtime_catalog_live_lookups",
            "postgres_changes bindings the snapshot of the published tables would refuse, checked against the catalog itself",
        );
        let accept_errors = counter(
            "realtime_accept_errors",
            "Errors accepting a TCP connection (such as the open-file limit), each followed by a back-off",
        );
        let replication_sessions = counter(
            "realtime_replication_sessions",
            "Replication sessions started (the first, then one per reconnect)",
        );
        let replication_failures = counter(
            "realtime_replication_failures",
            "Replication sessions that ended in an error (each is followed by a reconnect)",
        );
        let family = Family::<SlotLabels, Counter>::default();
        // Every reason is created now, so each is exposed from the start
        // (at 0) and an increment needs no lookup.
        let slot_recreations =
            SlotRecreation::ALL.map(|reason| family.get_or_create(&SlotLabels { reason }).clone());
        registry.register(
            "realtime_slot_recreations",
            "Replication slots dropped and recreated, by reason",
            family,
        );
        let limits_reached = Family::<LimitLabels, Counter>::default();
        registry.register(
            "realtime_limit_reached",
            "Requests refused because a limit was reached, by the variable that sets it",
            limits_reached.clone(),
        );
        let replication_lag = LagHistogram::default();
        registry.register(
            "realtime_replication_lag_seconds",
            "From a transaction's commit to its changes being queued to the sockets",
            replication_lag.clone(),
        );
        let cluster = ClusterMetrics::register(&mut registry);
        Metrics {
            cluster,
            registry,
            connections,
            queued_bytes,
            held_bytes,
            connections_accepted,
            connections_refused,
            auth_failures,
            channels,
            changes_received,
            frames_queued,
            transactions,
            duplicate_changes_skipped,
            messages_sent,
            bytes_sent,
            slow_consumer_closes,
            bad_frames,
            binary_broadcasts_skipped,
            rls_check_statements,
            rls_images_checked,
            rls_check_errors,
            rls_check_timeouts,
            rls_undecidable,
            catalog_snapshot_loads,
            catalog_live_lookups,
            accept_errors,
            limits_reached,
            replication_connected,
            replication_sessions,
            replication_failures,
            lag_bytes,
            slot_recreations,
            replication_lag,
        }
    }

    pub fn slot_recreated(&self, why: SlotRecreation) {
        self.slot_recreations[why as usize].inc();
    }

    /// Counts one refusal because the limit `limit` (its variable's name)
    /// was reached.
    pub fn limit_reached(&self, limit: &'static str) {
        self.limits_reached
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    /// Records how long after its commit a change was handed to the sockets.
    pub fn observe_lag(&self, micros: u64) {
        self.replication_lag.observe(micros);
    }

    /// The Prometheus text exposition of every metric ([`CONTENT_TYPE`]).
    pub fn render(&self, hub: &Hub, stream: &StreamStatus) -> String {
        self.connections.set(hub.socket_count() as i64);
        self.queued_bytes.set(crate::hub::queued_bytes() as i64);
        self.held_bytes
            .set(crate::limits::HELD_BYTES.load(std::sync::atomic::Ordering::Relaxed) as i64);
        self.replication_connected.set(stream.is_live() as i64);
        self.cluster.read(&hub.cluster().status);
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }
}

impl ClusterMetrics {
    fn register(registry: &mut Registry) -> ClusterMetrics {
        let mut gauge = |name: &str, help: &str| {
            let g: Gauge = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let up = gauge(
            "realtime_cluster_bus_up",
            "1 while the cluster bus (LISTEN/NOTIFY on the database) is connected",
        );
        let lagging = gauge(
            "realtime_cluster_bus_lagging",
            "1 while this server's own heartbeat takes over half CLUSTER_NODE_TIMEOUT_MS to come back",
        );
        let nodes = gauge(
            "realtime_cluster_nodes",
            "Other servers of this cluster heard from within CLUSTER_NODE_TIMEOUT_MS",
        );
        let lag_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "realtime_cluster_bus_lag_seconds",
            "How long this server's last heartbeat took to come back over the bus (or has been out)",
            lag_seconds.clone(),
        );
        let mut counter = |name: &str, help: &str| {
            let c: Counter = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        ClusterMetrics {
            up,
            lagging,
            lag_seconds,
            nodes,
            published: counter(
                "realtime_cluster_messages_published",
                "Messages (broadcasts, presence deltas and states, heartbeats) sent on the cluster bus",
            ),
            received: counter(
                "realtime_cluster_messages_received",
                "Messages received from the other servers of the cluster",
            ),
            refused: counter(
                "realtime_cluster_broadcasts_refused",
                "Broadcasts refused for being over CLUSTER_MAX_MESSAGE_BYTES",
            ),
            failed: counter(
                "realtime_cluster_bus_failures",
                "Sends that failed and messages that could not be read on the cluster bus",
            ),
            reconnects: counter(
                "realtime_cluster_bus_reconnects",
                "Times the cluster bus reconnected after losing its connection",
            ),
        }
    }

    fn read(&self, s: &crate::cluster::BusStatus) {
        self.up.set(s.is_up() as i64);
        self.lagging.set(s.is_lagging() as i64);
        self.lag_seconds.set(s.lag_ms() as f64 / 1000.0);
        self.nodes.set(s.nodes.load(Ordering::Relaxed) as i64);
        for (c, v) in [
            (&self.published, &s.published),
            (&self.received, &s.received),
            (&self.refused, &s.refused),
            (&self.failed, &s.failed),
            (&self.reconnects, &s.reconnects),
        ] {
            c.inner()
                .store(v.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

/// Counts one open channel for as long as it lives.
#[derive(Debug)]
pub struct ChannelGauge(());

impl ChannelGauge {
    pub fn open() -> Self {
        METRICS.channels.inc();
        ChannelGauge(())
    }
}

impl Drop for ChannelGauge {
    fn drop(&mut self) {
        METRICS.channels.dec();
    }
}

/// The commit-to-queued latency histogram, on atomics: the library's
/// `Histogram` takes a lock per observation, and this is observed for
/// every batch of changes the stream hands to the sockets.
#[derive(Debug, Clone, Default)]
struct LagHistogram(Arc<LagCounts>);

#[derive(Debug, Default)]
struct LagCounts {
    /// Per bucket of [`LAG_BUCKETS`], not cumulative; the last is over
    /// every bound (`+Inf` only).
    buckets: [AtomicU64; LAG_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl LagHistogram {
    fn observe(&self, micros: u64) {
        let seconds = micros as f64 / 1e6;
        let i = LAG_BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(LAG_BUCKETS.len());
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0.count.fetch_add(1, Ordering::Relaxed);
        self.0.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

impl TypedMetric for LagHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LagHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        // (upper bound, count in that bucket alone).
        let buckets: Vec<(f64, u64)> = LAG_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.0.buckets.iter().map(get))
            .collect();
        let sum = get(&self.0.sum_micros) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, get(&self.0.count), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metrics store of its own, so that other tests' counts do not
    /// show.
    fn render(m: &Metrics) -> String {
        m.render(&Hub::new(8), &StreamStatus::default())
    }

    #[test]
    fn the_histogram_is_cumulative_and_the_text_parses_line_by_line() {
        let m = Metrics::new();
        m.observe_lag(500); // 0.5 ms
        m.observe_lag(20_000); // 20 ms
        m.observe_lag(60_000_000); // over every bound
        m.slot_recreated(SlotRecreation::Invalidated);
        let text = render(&m);
        assert!(text.contains("realtime_replication_lag_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("realtime_replication_lag_seconds_bucket{le=\"0.025\"} 2\n"));
        assert!(text.contains("realtime_replication_lag_seconds_bucket{le=\"1\"} 2\n"));
        assert!(text.contains("realtime_replication_lag_seconds_bucket{le=\"30\"} 2\n"));
        assert!(text.contains("realtime_replication_lag_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("realtime_replication_lag_seconds_count 3\n"));
        assert!(text.contains("realtime_replication_lag_seconds_sum 60.0205\n"));
        assert!(text.contains("realtime_slot_recreations_total{reason=\"invalidated\"} 1\n"));
        assert!(text.contains("realtime_replication_connected 0\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("name value");
            value.parse::<f64>().expect(line);
        }
    }

    /// The series the README lists, with their types: a dashboard or an
    /// alert built on them keeps working.
    #[test]
    fn every_series_keeps_its_name_type_and_help() {
        let m = Metrics::new();
        let text = render(&m);
        let families = [
            ("realtime_connections", "gauge", "realtime_connections 0"),
            ("realtime_channels", "gauge", "realtime_channels 0"),
            (
                "realtime_changes_received",
                "counter",
                "realtime_changes_received_total 0",
            ),
            (
                "realtime_transactions",
                "counter",
                "realtime_transactions_total 0",
            ),
            (
                "realtime_messages_sent",
                "counter",
                "realtime_messages_sent_total 0",
            ),
            (
                "realtime_bytes_sent",
                "counter",
                "realtime_bytes_sent_total 0",
            ),
            (
                "realtime_slow_consumer_closes",
                "counter",
                "realtime_slow_consumer_closes_total 0",
            ),
            (
                "realtime_auth_failures",
                "counter",
                "realtime_auth_failures_total 0",
            ),
            (
                "realtime_connections_accepted",
                "counter",
                "realtime_connections_accepted_total 0",
            ),
            (
                "realtime_connections_refused",
                "counter",
                "realtime_connections_refused_total 0",
            ),
            (
                "realtime_bad_frames",
                "counter",
                "realtime_bad_frames_total 0",
            ),
            (
                "realtime_binary_broadcasts_skipped",
                "counter",
                "realtime_binary_broadcasts_skipped_total 0",
            ),
            (
                "realtime_replication_connected",
                "gauge",
                "realtime_replication_connected 0",
            ),
            (
                "realtime_replication_sessions",
                "counter",
                "realtime_replication_sessions_total 0",
            ),
            (
                "realtime_replication_failures",
                "counter",
                "realtime_replication_failures_total 0",
            ),
            (
                "realtime_replication_lag_bytes",
                "gauge",
                "realtime_replication_lag_bytes 0",
            ),
            (
                "realtime_replication_lag_seconds",
                "histogram",
                "realtime_replication_lag_seconds_count 0",
            ),
            (
                "realtime_slot_recreations",
                "counter",
                "realtime_slot_recreations_total{reason=\"wal_removed\"} 0",
            ),
            (
                "realtime_duplicate_changes_skipped",
                "counter",
                "realtime_duplicate_changes_skipped_total 0",
            ),
            (
                "realtime_frames_queued",
                "counter",
                "realtime_frames_queued_total 0",
            ),
            (
                "realtime_catalog_snapshot_loads",
                "counter",
                "realtime_catalog_snapshot_loads_total 0",
            ),
            (
                "realtime_catalog_live_lookups",
                "counter",
                "realtime_catalog_live_lookups_total 0",
            ),
            (
                "realtime_cluster_bus_up",
                "gauge",
                "realtime_cluster_bus_up 0",
            ),
            (
                "realtime_cluster_bus_lagging",
                "gauge",
                "realtime_cluster_bus_lagging 0",
            ),
            (
                "realtime_cluster_bus_lag_seconds",
                "gauge",
                "realtime_cluster_bus_lag_seconds 0.0",
            ),
            (
                "realtime_cluster_nodes",
                "gauge",
                "realtime_cluster_nodes 0",
            ),
            (
                "realtime_cluster_messages_published",
                "counter",
                "realtime_cluster_messages_published_total 0",
            ),
            (
                "realtime_cluster_messages_received",
                "counter",
                "realtime_cluster_messages_received_total 0",
            ),
            (
                "realtime_cluster_broadcasts_refused",
                "counter",
                "realtime_cluster_broadcasts_refused_total 0",
            ),
            (
                "realtime_cluster_bus_failures",
                "counter",
                "realtime_cluster_bus_failures_total 0",
            ),
            (
                "realtime_cluster_bus_reconnects",
                "counter",
                "realtime_cluster_bus_reconnects_total 0",
            ),
        ];
        let mut wrong = Vec::new();
        for (family, kind, sample) in families {
            // The text format names a counter's family with its `_total`.
            let name = match kind {
                "counter" => format!("{family}_total"),
                _ => family.to_string(),
            };
            let lines = [
                format!("# TYPE {name} {kind}\n"),
                format!("# HELP {name} "),
                format!("\n{sample}\n"),
            ];
            for line in lines {
                if !text.contains(&line) {
                    wrong.push(format!("{line:?}"));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "missing {}\nin:\n{text}",
            wrong.join(", ")
        );
        assert!(
            !text.contains(".."),
            "a help text ends in one period:\n{text}"
        );
    }

    #[test]
    fn scrape_time_values_come_from_their_owners() {
        let m = Metrics::new();
        let hub = Hub::new(8);
        let _a = hub.register();
        let _b = hub.register();
        let text = m.render(&hub, &StreamStatus::default());
        assert!(text.contains("\nrealtime_connections 2\n"), "{text}");
    }
}

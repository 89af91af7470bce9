//! Counters and gauges served at `/metrics` in the Prometheus text format.
//!
//! One process-wide set of atomics ([`METRICS`]): every part of the server
//! bumps its own counters without passing handles around, and a scrape reads
//! them without locks. The few values that live elsewhere (open sockets, the
//! stream's state) are read from the hub and the stream status when rendered.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::hub::Hub;
use crate::replication::stream::StreamStatus;

/// Upper bounds (seconds) of the commit-to-send latency histogram.
const LAG_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// Why the server dropped and recreated its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// The process's counters. All `Relaxed`: each is an independent tally.
pub struct Metrics {
    pub connections_accepted: AtomicU64,
    pub connections_refused: AtomicU64,
    pub auth_failures: AtomicU64,
    pub channels: AtomicI64,
    pub messages_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bad_frames: AtomicU64,
    pub replication_sessions: AtomicU64,
    pub replication_failures: AtomicU64,
    pub transactions: AtomicU64,
    pub duplicate_changes_skipped: AtomicU64,
    pub lag_bytes: AtomicU64,
    pub slot_recreations: [AtomicU64; 3],
    lag_buckets: [AtomicU64; LAG_BUCKETS.len()],
    lag_count: AtomicU64,
    lag_sum_micros: AtomicU64,
}

pub static METRICS: Metrics = Metrics::new();

impl Metrics {
    const fn new() -> Self {
        Metrics {
            connections_accepted: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            channels: AtomicI64::new(0),
            messages_sent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            bad_frames: AtomicU64::new(0),
            replication_sessions: AtomicU64::new(0),
            replication_failures: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            duplicate_changes_skipped: AtomicU64::new(0),
            lag_bytes: AtomicU64::new(0),
            slot_recreations: [const { AtomicU64::new(0) }; 3],
            lag_buckets: [const { AtomicU64::new(0) }; LAG_BUCKETS.len()],
            lag_count: AtomicU64::new(0),
            lag_sum_micros: AtomicU64::new(0),
        }
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn slot_recreated(&self, why: SlotRecreation) {
        Self::inc(&self.slot_recreations[why as usize]);
    }

    /// Records how long after its commit a change was handed to the sockets.
    pub fn observe_lag(&self, micros: u64) {
        let seconds = micros as f64 / 1e6;
        if let Some(i) = LAG_BUCKETS.iter().position(|&b| seconds <= b) {
            self.lag_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.lag_count.fetch_add(1, Ordering::Relaxed);
        self.lag_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, hub: &Hub, stream: &StreamStatus) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(4096);
        let mut one = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        one(
            "realtime_connections",
            "gauge",
            "Open WebSocket connections.",
            hub.socket_count().to_string(),
        );
        one(
            "realtime_connections_accepted_total",
            "counter",
            "WebSocket upgrades accepted.",
            get(&self.connections_accepted).to_string(),
        );
        one(
            "realtime_connections_refused_total",
            "counter",
            "WebSocket upgrades refused because MAX_CONNECTIONS was reached.",
            get(&self.connections_refused).to_string(),
        );
        one(
            "realtime_auth_failures_total",
            "counter",
            "Tokens refused: at upgrade (HTTP 403), on join and on access_token.",
            get(&self.auth_failures).to_string(),
        );
        one(
            "realtime_channels",
            "gauge",
            "Joined channels over all sockets.",
            self.channels.load(Ordering::Relaxed).max(0).to_string(),
        );
        one(
            "realtime_changes_received_total",
            "counter",
            "Row changes received from the replication stream and dispatched.",
            get(&hub.stats.changes).to_string(),
        );
        one(
            "realtime_transactions_total",
            "counter",
            "Transactions received from the replication stream.",
            get(&self.transactions).to_string(),
        );
        one(
            "realtime_duplicate_changes_skipped_total",
            "counter",
            "Changes resent by PostgreSQL after a reconnect and not delivered twice.",
            get(&self.duplicate_changes_skipped).to_string(),
        );
        one(
            "realtime_messages_sent_total",
            "counter",
            "WebSocket text frames written to clients.",
            get(&self.messages_sent).to_string(),
        );
        one(
            "realtime_bytes_sent_total",
            "counter",
            "Payload bytes of the WebSocket text frames written to clients.",
            get(&self.bytes_sent).to_string(),
        );
        one(
            "realtime_slow_consumer_closes_total",
            "counter",
            "Sockets closed with 1013 because their send queue was full.",
            get(&hub.stats.slow_consumer_closes).to_string(),
        );
        one(
            "realtime_bad_frames_total",
            "counter",
            "Inbound frames refused: malformed, binary, too large.",
            get(&self.bad_frames).to_string(),
        );
        one(
            "realtime_replication_connected",
            "gauge",
            "1 while the replication stream is live.",
            (stream.is_live() as u8).to_string(),
        );
        one(
            "realtime_replication_sessions_total",
            "counter",
            "Replication sessions started (the first, then one per reconnect).",
            get(&self.replication_sessions).to_string(),
        );
        one(
            "realtime_replication_failures_total",
            "counter",
            "Replication sessions that ended in an error (each is followed by a reconnect).",
            get(&self.replication_failures).to_string(),
        );
        one(
            "realtime_replication_lag_bytes",
            "gauge",
            "WAL between the database's current position and the last position the server confirmed.",
            get(&self.lag_bytes).to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP realtime_slot_recreations_total Replication slots dropped and recreated, by reason.\n\
             # TYPE realtime_slot_recreations_total counter"
        );
        for why in SlotRecreation::ALL {
            let _ = writeln!(
                out,
                "realtime_slot_recreations_total{{reason=\"{}\"}} {}",
                why.as_str(),
                get(&self.slot_recreations[why as usize])
            );
        }
        let _ = writeln!(
            out,
            "# HELP realtime_replication_lag_seconds From a transaction's commit to its changes \
             being queued to the sockets.\n# TYPE realtime_replication_lag_seconds histogram"
        );
        let mut cumulative = 0;
        for (bound, count) in LAG_BUCKETS.iter().zip(&self.lag_buckets) {
            cumulative += get(count);
            let _ = writeln!(
                out,
                "realtime_replication_lag_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = get(&self.lag_count);
        let _ = writeln!(
            out,
            "realtime_replication_lag_seconds_bucket{{le=\"+Inf\"}} {count}\n\
             realtime_replication_lag_seconds_sum {}\n\
             realtime_replication_lag_seconds_count {count}",
            get(&self.lag_sum_micros) as f64 / 1e6
        );
        out
    }
}

/// Counts one open channel for as long as it lives.
#[derive(Debug)]
pub struct ChannelGauge(());

impl ChannelGauge {
    pub fn open() -> Self {
        METRICS.channels.fetch_add(1, Ordering::Relaxed);
        ChannelGauge(())
    }
}

impl Drop for ChannelGauge {
    fn drop(&mut self) {
        METRICS.channels.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative_and_the_text_parses_line_by_line() {
        let m = Metrics::new();
        m.observe_lag(500); // 0.5 ms
        m.observe_lag(20_000); // 20 ms
        m.observe_lag(60_000_000); // over every bound
        m.slot_recreated(SlotRecreation::Invalidated);
        let text = m.render(&Hub::new(8), &StreamStatus::default());
        assert!(text.contains("realtime_replication_lag_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("realtime_replication_lag_seconds_bucket{le=\"0.025\"} 2\n"));
        assert!(text.contains("realtime_replication_lag_seconds_bucket{le=\"30\"} 2\n"));
        assert!(text.contains("realtime_replication_lag_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("realtime_replication_lag_seconds_count 3\n"));
        assert!(text.contains("realtime_slot_recreations_total{reason=\"invalidated\"} 1\n"));
        assert!(text.contains("realtime_replication_connected 0\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("name value");
            value.parse::<f64>().expect(line);
        }
    }
}

//! The replication session: one connection to PostgreSQL that streams
//! `pgoutput` from a slot and hands every change to the hub in commit order.
//!
//! Owns the connection's life: connect (password/SCRAM, optional TLS), check
//! the publications, load the type catalog, create the slot when missing
//! (durable with `SLOT_NAME`, temporary otherwise), start streaming, turn
//! decoded messages into [`Change`]s, confirm progress, and reconnect with
//! exponential backoff and jitter when anything fails. Everything runs on the
//! one replication session (`replication=database` accepts plain SQL before
//! `START_REPLICATION`), so a temporary slot lives exactly as long as the
//! session that reads it.
//!
//! Progress: the confirmed LSN moves to a transaction's end only after the
//! hub handed all of its changes to the socket queues: at its Commit
//! message (or, when the frames of the messages read with it are still
//! batched, once they are queued, see [`crate::hub::Routing`]), or, when
//! some of its changes wait in a row level security lane, once none of them
//! (nor any earlier change) is left there; and to a keepalive's position only
//! between transactions with no change waiting. pgwire-replication answers keepalive
//! requests and sends standby status updates on a timer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use pgwire_replication::{
    FeedbackObserver, Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent,
    TlsConfig,
};
use realtime_contract::sql::{quote_ident, quote_literal};
use tokio_util::sync::CancellationToken;

use crate::change::{self, Cell, Change, ChangeKind, ColumnInfo, Row, TableInfo};
use crate::config::{Config, DbSsl, SlotConfig};
use crate::hub::{Hub, Routing};
use crate::metrics::{SlotRecreation, METRICS};
use crate::published::PublishedTables;
use crate::replication::catalog::{TypeCatalog, TypeRow};
use crate::replication::pgoutput::{
    self, Message, OldTuple, OldTupleKind, Relation, Tuple, TupleValue,
};

/// Session settings that make the text forms predictable: timestamps in UTC
/// with ISO dates, floats with full precision.
const SESSION_OPTIONS: &str =
    "-c TimeZone=UTC -c DateStyle=ISO,MDY -c IntervalStyle=postgres -c extra_float_digits=3";

/// How soon confirmed progress reaches PostgreSQL (one small message, so the
/// slot releases WAL promptly and a restart resends little).
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// While committed transactions wait for their changes' checks, how often
/// the session looks whether they can be confirmed.
const CONFIRM_POLL: Duration = Duration::from_millis(20);

/// How long the session sleeps in a read with nothing arriving before it
/// sends a status update anyway.
const IDLE_WAKEUP: Duration = Duration::from_secs(10);

/// A session that streamed this long resets the reconnect backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// Whether the replication stream is live (`/readyz`): the slot exists and
/// is streaming (or, with a durable slot, holds what is committed from now
/// on), so a change committed from now on reaches the hub. Channels that
/// wait for it (`replication_ready`, `postgres_changes_options.wait`)
/// watch it.
#[derive(Debug)]
pub struct StreamStatus {
    live: tokio::sync::watch::Sender<bool>,
}

impl Default for StreamStatus {
    fn default() -> Self {
        StreamStatus {
            live: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl StreamStatus {
    pub fn is_live(&self) -> bool {
        *self.live.borrow()
    }

    /// A receiver that sees every change of [`StreamStatus::is_live`].
    pub fn watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.live.subscribe()
    }

    fn set_live(&self, live: bool) {
        self.live.send_replace(live);
    }
}

/// Why a replication session ended.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("replication connection to {target}: {source}")]
    Connection {
        target: String,
        #[source]
        source: PgWireError,
    },
    #[error(
        "publication(s) {missing:?} do not exist in database {db:?}: create them, e.g. \
         CREATE PUBLICATION {example} FOR ALL TABLES"
    )]
    MissingPublications {
        missing: Vec<String>,
        db: String,
        example: String,
    },
    #[error("slot {slot:?} uses output plugin {plugin:?}, not pgoutput: drop it or choose another SLOT_NAME")]
    WrongPlugin { slot: String, plugin: String },
    #[error("decoding the replication stream: {0}")]
    Decode(#[from] pgoutput::DecodeError),
    #[error("the stream sent {kind} for relation {id} before describing it")]
    UnknownRelation { kind: &'static str, id: u32 },
    #[error("the replication stream ended")]
    Ended,
    #[error(
        "replication lag {lag_mb} MB exceeds MAX_REPLICATION_LAG_MB={max_mb}: the slot will be \
         dropped and recreated"
    )]
    LagExceeded { lag_mb: u64, max_mb: u64 },
}

impl ReplicationError {
    /// PostgreSQL removed WAL the slot still needed (SQLSTATE 58P01).
    pub fn wal_removed(&self) -> bool {
        matches!(self, ReplicationError::Connection { source: PgWireError::Server(m), .. } if m.contains("58P01"))
    }
}

/// Tells the stream to stop, and hears when it has stopped dispatching.
#[derive(Debug, Clone, Default)]
pub struct StreamControl {
    /// Cancelled by the server on shutdown.
    pub stop: CancellationToken,
    /// Cancelled by the stream once it dispatches nothing more.
    pub halted: CancellationToken,
    /// Told of every Relation message (a published table's columns).
    pub published: Option<Arc<PublishedTables>>,
}

/// What survives from one session to the next within the process.
#[derive(Debug, Default)]
struct Carry {
    /// Delivered changes, so a reconnect does not deliver them twice.
    delivered: Delivered,
    /// The slot must be dropped and recreated at the next connect, and why.
    recreate: Option<SlotRecreation>,
    /// The first session of a process waits `RESUME_DELAY_MS` before
    /// streaming from a durable slot; reconnects do not (their sockets stayed).
    started_once: bool,
}

/// How far the changes handed to the hub go, in commit order.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Delivered {
    /// Commit LSN of the last transaction handed over whole.
    pub through: Lsn,
    /// The transaction being handed over: its commit LSN and how many of its
    /// changes were handed over.
    pub partial: Option<(Lsn, u64)>,
}

impl Delivered {
    /// How many leading changes of the transaction committing at `lsn` were
    /// already delivered (`u64::MAX`: all of them).
    pub fn already(&self, lsn: Lsn) -> u64 {
        match self.partial {
            _ if lsn <= self.through => u64::MAX,
            Some((p, n)) if p == lsn => n,
            _ => 0,
        }
    }
}

/// Streams until `control.stop`: reconnects after every failure with
/// exponential backoff (`DB_RECONNECT_BACKOFF_MIN` .. `_MAX`) and jitter.
pub async fn run(
    config: Arc<Config>,
    hub: Arc<Hub>,
    status: Arc<StreamStatus>,
    control: StreamControl,
) {
    let mut backoff = config.reconnect_backoff_min;
    let mut carry = Carry::default();
    loop {
        let started = Instant::now();
        METRICS.replication_sessions.inc();
        let result = session(&config, &hub, &status, &control, &mut carry).await;
        status.set_live(false);
        if control.stop.is_cancelled() {
            break;
        }
        METRICS.replication_failures.inc();
        match result {
            Ok(()) => tracing::warn!("replication stream ended; reconnecting"),
            Err(e) => {
                if e.wal_removed() {
                    tracing::error!(
                        error = %e,
                        "the WAL this slot needs was removed (SQLSTATE 58P01): the slot will be \
                         dropped and recreated, and changes committed in between are lost"
                    );
                    carry.recreate = Some(SlotRecreation::WalRemoved);
                } else {
                    tracing::error!(error = %e, "replication failed; reconnecting");
                }
                if let ReplicationError::LagExceeded { .. } = e {
                    carry.recreate = Some(SlotRecreation::Lag);
                }
            }
        }
        if started.elapsed() >= HEALTHY_SESSION {
            backoff = config.reconnect_backoff_min;
        }
        let wait = jitter(backoff);
        tracing::info!(
            wait_ms = wait.as_millis() as u64,
            "waiting before reconnecting"
        );
        tokio::select! {
            _ = control.stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        backoff = (backoff * 2).min(config.reconnect_backoff_max);
    }
    control.halted.cancel();
}

/// A wait between half and all of `d`, so many servers do not reconnect in
/// lockstep.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let frac = 0.5 + (nanos % 1000) as f64 / 2000.0;
    d.mul_f64(frac)
}

/// The replication session's settings (`DB_*`, `PUBLICATIONS`) for `slot`:
/// what [`run`] connects with, and what `realtime-server check` tries.
pub fn replication_config(config: &Config, slot: &str) -> ReplicationConfig {
    let db = &config.db;
    let tls = match db.ssl {
        DbSsl::Disable => TlsConfig::disabled(),
        DbSsl::Require => TlsConfig::require(),
        DbSsl::VerifyFull => TlsConfig::verify_full(None),
    };
    ReplicationConfig::new(
        db.host.clone(),
        db.user.clone(),
        db.password.expose().to_string(),
        db.name.clone(),
        slot.to_string(),
        config.publications.clone(),
    )
    .with_port(db.port)
    .with_tls(tls)
    .with_options(SESSION_OPTIONS)
    .with_application_name("realtime-server")
    .with_status_interval(STATUS_INTERVAL)
    .with_wakeup_interval(IDLE_WAKEUP)
    // An observer makes `feedback_pending_since` report whether the last
    // confirmed position has reached PostgreSQL (waited for at shutdown).
    .with_feedback_observer(FeedbackObserver::new(|_| {}))
}

fn slot_name(config: &Config) -> (String, bool) {
    match &config.slot {
        SlotConfig::Durable(name) => (name.as_str().to_string(), false),
        SlotConfig::Temporary => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|t| t.subsec_nanos())
                .unwrap_or(0);
            (
                format!("realtime_tmp_{}_{}", std::process::id(), nanos),
                true,
            )
        }
    }
}

/// Whether a durable slot holds changes to replay at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backlog {
    /// Nothing for our publications between the confirmed position and now.
    None,
    /// At least one change for our publications.
    Changes,
    /// Could not tell (the check failed, or the unconfirmed WAL is over
    /// [`BACKLOG_SCAN_BYTES`]): treated as a backlog.
    Unknown,
}

impl Backlog {
    fn as_str(self) -> &'static str {
        match self {
            Backlog::None => "none",
            Backlog::Changes => "changes",
            Backlog::Unknown => "unknown",
        }
    }
}

/// The most unconfirmed WAL the start-up check decodes to find a change;
/// past it, the slot is taken to hold some (a scan of this much takes well
/// under a second).
const BACKLOG_SCAN_BYTES: u64 = 64 * 1024 * 1024;

/// How long after the last new socket the resume wait ends: clients that
/// lost their server together retry on the same schedule, so they come back
/// within a moment of each other, and rejoin their channels at once.
const CLIENTS_BACK_QUIET: Duration = Duration::from_millis(1000);

/// Peeks (without consuming) at the slot's unconfirmed changes: whether one
/// is an INSERT, UPDATE, DELETE or TRUNCATE of our publications.
async fn slot_backlog(
    client: &mut ReplicationClient,
    slot: &str,
    publications: &[String],
    confirmed: &str,
    unconfirmed_bytes: u64,
) -> Backlog {
    if unconfirmed_bytes == 0 {
        return Backlog::None;
    }
    if unconfirmed_bytes > BACKLOG_SCAN_BYTES {
        return Backlog::Unknown;
    }
    let names: Vec<String> = publications.iter().map(|p| quote_ident(p)).collect();
    // pgoutput's message types: 'I' 73, 'U' 85, 'D' 68, 'T' 84. Before
    // PostgreSQL 15 it also sends BEGIN/COMMIT of transactions that touch
    // no published table; those do not count.
    let sql = format!(
        "SELECT count(*) FROM pg_catalog.pg_logical_slot_peek_binary_changes(\
         {}, NULL, NULL, 'proto_version', '1', 'publication_names', {}) \
         WHERE pg_catalog.get_byte(data, 0) IN (73, 85, 68, 84)",
        quote_literal(slot),
        quote_literal(&names.join(","))
    );
    match client.simple_query(&sql).await {
        Ok(rows) => match rows.first().map(|r| text(r, 0)) {
            Some(n) if n == "0" => Backlog::None,
            Some(_) => Backlog::Changes,
            None => Backlog::Unknown,
        },
        Err(e) => {
            tracing::warn!(error = %e, slot = %slot, from = %confirmed, "could not peek at the slot's backlog; assuming there is one");
            Backlog::Unknown
        }
    }
}

/// Waits until clients are back (a socket connected, and neither the
/// sockets nor the channels joined changed for [`CLIENTS_BACK_QUIET`]: a
/// client that connected is back once its joins are answered) or `max` has
/// passed; says which.
async fn clients_back(hub: &Hub, max: Duration) -> &'static str {
    let deadline = tokio::time::Instant::now() + max;
    let count = || (hub.socket_count(), METRICS.channels.get());
    let mut last = count();
    let mut changed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return "RESUME_DELAY_MS passed";
        }
        let current = count();
        if current != last {
            last = current;
            changed = now;
        } else if current.0 > 0 && now.duration_since(changed) >= CLIENTS_BACK_QUIET {
            return "clients are back";
        }
    }
}

fn text(row: &[Option<Bytes>], i: usize) -> String {
    row.get(i)
        .and_then(|v| v.as_ref())
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

async fn session(
    config: &Config,
    hub: &Arc<Hub>,
    status: &StreamStatus,
    control: &StreamControl,
    carry: &mut Carry,
) -> Result<(), ReplicationError> {
    let db = &config.db;
    let target = format!("{}:{}/{} as {}", db.host, db.port, db.name, db.user);
    let conn_err = |source| ReplicationError::Connection {
        target: target.clone(),
        source,
    };
    let (slot, temporary) = slot_name(config);
    let rcfg = replication_config(config, &slot);

    tracing::info!(%target, slot = %slot, temporary, "connecting for replication");
    let mut client = ReplicationClient::connect_gated(rcfg)
        .await
        .map_err(conn_err)?;

    // The publications must exist: otherwise pgoutput fails later, per
    // transaction, with a less helpful message.
    let names: Vec<String> = config
        .publications
        .iter()
        .map(|p| quote_literal(p))
        .collect();
    let found = client
        .simple_query(&format!(
            "SELECT pubname FROM pg_catalog.pg_publication WHERE pubname IN ({})",
            names.join(",")
        ))
        .await
        .map_err(conn_err)?;
    let found: Vec<String> = found.iter().map(|r| text(r, 0)).collect();
    let missing: Vec<String> = config
        .publications
        .iter()
        .filter(|p| !found.contains(p))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(ReplicationError::MissingPublications {
            example: quote_ident(&missing[0]),
            missing,
            db: db.name.clone(),
        });
    }

    let rows = client
        .simple_query(TypeCatalog::LOAD_SQL)
        .await
        .map_err(conn_err)?;
    let mut catalog = TypeCatalog::new(rows.iter().map(|r| TypeRow {
        oid: text(r, 0).parse().unwrap_or(0),
        name: text(r, 1),
        typtype: text(r, 2).chars().next().unwrap_or('b'),
        base: text(r, 3).parse().unwrap_or(0),
        elem: text(r, 4).parse().unwrap_or(0),
    }));

    let max_lag = config.max_replication_lag_mb.map(|mb| mb * 1024 * 1024);
    // A durable slot that already existed: where its unconfirmed WAL begins
    // and how many bytes of it there are.
    let mut unconfirmed: Option<(String, u64)> = None;
    if temporary {
        client
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput"
            ))
            .await
            .map_err(conn_err)?;
    } else {
        // `to_jsonb` reads wal_status where it exists (PostgreSQL 13+).
        let existing = client
            .simple_query(&format!(
                "SELECT plugin, to_jsonb(s)->>'wal_status', \
                 pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn)::bigint, \
                 pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, \
                 confirmed_flush_lsn::text \
                 FROM pg_catalog.pg_replication_slots s WHERE slot_name = {}",
                quote_literal(&slot)
            ))
            .await
            .map_err(conn_err)?;
        let mut create = true;
        if let Some(row) = existing.first() {
            if text(row, 0) != "pgoutput" {
                return Err(ReplicationError::WrongPlugin {
                    slot,
                    plugin: text(row, 0),
                });
            }
            let retained: u64 = text(row, 2).parse().unwrap_or(0);
            let why = if text(row, 1) == "lost" {
                Some(SlotRecreation::Invalidated)
            } else if let Some(why) = carry.recreate {
                Some(why)
            } else if max_lag.is_some_and(|max| retained > max) {
                Some(SlotRecreation::Lag)
            } else {
                None
            };
            match why {
                None => {
                    create = false;
                    unconfirmed = Some((text(row, 4), text(row, 3).parse().unwrap_or(u64::MAX)));
                    tracing::info!(slot = %slot, retained_wal_bytes = retained, "resuming from the durable slot");
                }
                Some(why) => {
                    tracing::error!(
                        slot = %slot,
                        reason = why.as_str(),
                        retained_wal_mb = retained / (1024 * 1024),
                        max_replication_lag_mb = ?config.max_replication_lag_mb,
                        "dropping and recreating the replication slot: {}; changes committed \
                         before now that were not yet delivered are skipped",
                        match why {
                            SlotRecreation::Invalidated => "PostgreSQL invalidated it (wal_status \
                                lost: it retained more than max_slot_wal_keep_size)",
                            SlotRecreation::WalRemoved => "the WAL it needs was removed",
                            SlotRecreation::Lag => "it retains more WAL than MAX_REPLICATION_LAG_MB",
                        }
                    );
                    client
                        .simple_query(&format!("DROP_REPLICATION_SLOT {slot}"))
                        .await
                        .map_err(conn_err)?;
                    METRICS.slot_recreated(why);
                }
            }
        }
        if create {
            // A failover slot where PostgreSQL has them (17+), as the
            // operator creates them.
            let version: i32 = client
                .simple_query("SHOW server_version_num")
                .await
                .map_err(conn_err)?
                .first()
                .map(|r| text(r, 0))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            client
                .simple_query(&realtime_contract::slots::create_slot_command(
                    &slot, version,
                ))
                .await
                .map_err(conn_err)?;
            tracing::info!(
                slot = %slot,
                failover = version >= realtime_contract::slots::FAILOVER_SLOTS_SINCE,
                "created durable slot"
            );
        }
        carry.recreate = None;
    }

    // After a restart, give reconnecting clients time to rejoin before the
    // backlog in the slot is delivered, but only when there is a backlog: a
    // new slot, or one holding no change for our publications, streams at
    // once. The stream is ready meanwhile, so Kubernetes routes clients here.
    if !temporary && !carry.started_once && !config.resume_delay.is_zero() {
        let backlog = match &unconfirmed {
            None => Backlog::None,
            Some((from, bytes)) => {
                slot_backlog(&mut client, &slot, &config.publications, from, *bytes).await
            }
        };
        match backlog {
            Backlog::None => tracing::info!(
                slot = %slot,
                "the slot holds no change to replay: streaming at once (no RESUME_DELAY_MS wait)"
            ),
            Backlog::Changes | Backlog::Unknown => {
                status.set_live(true);
                tracing::info!(
                    delay_ms = config.resume_delay.as_millis() as u64,
                    backlog = backlog.as_str(),
                    "the slot holds changes to replay: waiting up to RESUME_DELAY_MS for \
                     clients to rejoin (less once they are back)"
                );
                tokio::select! {
                    _ = control.stop.cancelled() => return Ok(()),
                    why = clients_back(hub, config.resume_delay) => tracing::info!(
                        sockets = hub.socket_count(),
                        waited_because = why,
                        "streaming the backlog"
                    ),
                }
            }
        }
    }
    carry.started_once = true;

    client.start().await.map_err(conn_err)?;
    client.wait_started().await.map_err(conn_err)?;
    status.set_live(true);
    tracing::info!(slot = %slot, publications = ?config.publications, "streaming");

    let mut decoder = ChangeBuilder::new(config.max_record_bytes);
    // The transaction being received: its commit LSN, how many of its
    // changes were seen, how many of those were delivered before.
    let mut tx = (Lsn::ZERO, 0u64, 0u64);
    let mut wal_end_seen = Lsn::ZERO;
    let mut applied = Lsn::ZERO;
    // Committed transactions whose changes still wait in a lane: (the
    // position of their last change, their end LSN), in commit order.
    let inflight = hub.authorizer().map(|a| a.lanes.inflight.clone());
    let mut waiting: std::collections::VecDeque<(u64, Lsn)> = std::collections::VecDeque::new();
    let settled = |seq: u64| {
        inflight
            .as_ref()
            .is_none_or(|i| i.earliest().is_none_or(|e| e > seq))
    };
    // The position to confirm once the routed changes' frames are queued:
    // a change counts as handed over only when its frames are in the
    // sockets' queues.
    let mut unconfirmed: Option<Lsn> = None;
    let confirm = |client: &mut ReplicationClient,
                   batching: bool,
                   unconfirmed: &mut Option<Lsn>,
                   lsn: Lsn| {
        if batching {
            *unconfirmed = Some(unconfirmed.map_or(lsn, |u| u.max(lsn)));
        } else {
            client.update_applied_lsn(lsn);
        }
    };
    loop {
        let event = tokio::select! {
            biased;
            _ = control.stop.cancelled() => {
                control.halted.cancel();
                finish(&mut client, applied).await;
                return Ok(());
            }
            event = client.recv() => event.map_err(conn_err)?,
            _ = tokio::time::sleep(CONFIRM_POLL), if !waiting.is_empty() => {
                while let Some(&(seq, end)) = waiting.front() {
                    if !settled(seq) {
                        break;
                    }
                    waiting.pop_front();
                    applied = applied.max(end);
                    client.update_applied_lsn(end);
                }
                continue;
            }
        };
        // The messages of one read arrive together: route them all through
        // one `Routing` (see `hub::Routing`), taking the next message while
        // one is ready without waiting and the batch is not full; its drop
        // queues every socket's frames at once, however this block ends
        // (an error too: those changes then count as delivered, and a new
        // session skips them). No await in here: the routing holds the
        // hub's index.
        {
            let mut routing: Option<Routing> = None;
            let mut next = Some(event);
            while let Some(event) = next.take() {
                let Some(event) = event else {
                    return Err(ReplicationError::Ended);
                };
                match event {
                    ReplicationEvent::Begin {
                        final_lsn,
                        commit_time_micros,
                        ..
                    } => {
                        decoder.begin(commit_time_micros);
                        tx = (final_lsn, 0, carry.delivered.already(final_lsn));
                        METRICS.transactions.inc();
                    }
                    ReplicationEvent::XLogData { data, wal_end, .. } => {
                        wal_end_seen = wal_end_seen.max(wal_end);
                        let (lsn, seen, skip) = &mut tx;
                        let mut handed = 0u64;
                        let message = pgoutput::decode(data)?;
                        if let (Message::Relation(rel), Some(published)) =
                            (&message, &control.published)
                        {
                            published.relation(rel);
                        }
                        decoder.message(message, &mut catalog, |change| {
                            *seen += 1;
                            if *seen <= *skip {
                                METRICS.duplicate_changes_skipped.inc();
                                return;
                            }
                            routing
                                .get_or_insert_with(|| hub.routing())
                                .dispatch(&change);
                            handed += 1;
                        })?;
                        if handed > 0 {
                            carry.delivered.partial = Some((*lsn, *seen));
                            METRICS.observe_lag(decoder.lag_micros());
                        }
                    }
                    ReplicationEvent::Commit { lsn, end_lsn, .. } => {
                        decoder.in_transaction = false;
                        carry.delivered = Delivered {
                            through: carry.delivered.through.max(lsn),
                            partial: None,
                        };
                        let last = hub.last_seq();
                        if waiting.is_empty() && settled(last) {
                            applied = applied.max(end_lsn);
                            confirm(&mut client, routing.is_some(), &mut unconfirmed, end_lsn);
                        } else {
                            waiting.push_back((last, end_lsn));
                        }
                        check_lag(wal_end_seen.max(end_lsn), applied, max_lag)?;
                    }
                    ReplicationEvent::KeepAlive { wal_end, .. } => {
                        wal_end_seen = wal_end_seen.max(wal_end);
                        // Between transactions everything before wal_end that concerns
                        // the publications has been handed over.
                        if !decoder.in_transaction
                            && wal_end > Lsn::ZERO
                            && waiting.is_empty()
                            && settled(hub.last_seq())
                        {
                            applied = applied.max(wal_end);
                            confirm(&mut client, routing.is_some(), &mut unconfirmed, wal_end);
                        }
                        check_lag(wal_end_seen, applied, max_lag)?;
                    }
                    ReplicationEvent::Message { .. } => {}
                    ReplicationEvent::StoppedAt { .. } => return Ok(()),
                }
                next = match &routing {
                    Some(r) if !r.is_full() => {
                        client.recv().now_or_never().transpose().map_err(conn_err)?
                    }
                    _ => None,
                };
            }
        }
        if let Some(lsn) = unconfirmed.take() {
            client.update_applied_lsn(lsn);
        }
    }
}

/// Publishes the unconfirmed WAL and fails the session past
/// `MAX_REPLICATION_LAG_MB`.
fn check_lag(wal_end: Lsn, applied: Lsn, max: Option<u64>) -> Result<(), ReplicationError> {
    let lag = wal_end.as_u64().saturating_sub(applied.as_u64());
    METRICS.lag_bytes.set(lag);
    match max {
        Some(max) if applied > Lsn::ZERO && lag > max => Err(ReplicationError::LagExceeded {
            lag_mb: lag / (1024 * 1024),
            max_mb: max / (1024 * 1024),
        }),
        _ => Ok(()),
    }
}

/// Ends a session on shutdown: lets the last confirmed position reach
/// PostgreSQL (one status interval at most), then closes the stream cleanly.
async fn finish(client: &mut ReplicationClient, applied: Lsn) {
    let deadline = Instant::now() + STATUS_INTERVAL * 2;
    while client.feedback_pending_since().is_some() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match tokio::time::timeout(Duration::from_secs(2), client.shutdown()).await {
        Ok(Ok(())) => tracing::info!(confirmed_lsn = %applied, "replication stream closed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "closing the replication stream"),
        Err(_) => tracing::warn!("the replication stream did not close within 2 s"),
    }
}

/// Values this long or shorter stay in a record cut down to
/// `MAX_RECORD_BYTES` (Supabase Realtime's rule).
const SMALL_VALUE_BYTES: usize = 64;

/// Turns decoded messages into changes: keeps the relation cache and the
/// current transaction's commit time, and cuts records over
/// `MAX_RECORD_BYTES` down.
pub struct ChangeBuilder {
    relations: HashMap<u32, Arc<TableInfo>>,
    commit_timestamp: Arc<str>,
    commit_time_micros: i64,
    max_record_bytes: usize,
    pub in_transaction: bool,
}

impl Default for ChangeBuilder {
    fn default() -> Self {
        Self::new(crate::config::DEFAULT_MAX_RECORD_BYTES)
    }
}

impl ChangeBuilder {
    pub fn new(max_record_bytes: usize) -> Self {
        ChangeBuilder {
            relations: HashMap::new(),
            commit_timestamp: Arc::from(""),
            commit_time_micros: 0,
            max_record_bytes,
            in_transaction: false,
        }
    }

    pub fn begin(&mut self, commit_time_micros: i64) {
        self.commit_timestamp = change::commit_timestamp(commit_time_micros).into();
        self.commit_time_micros = commit_time_micros;
        self.in_transaction = true;
    }

    /// Microseconds from the current transaction's commit until now.
    pub fn lag_micros(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let commit = self.commit_time_micros + change::PG_EPOCH_UNIX_SECS * 1_000_000;
        (now - commit).max(0) as u64
    }

    /// Handles one message; calls `emit` for each row change it carries.
    pub fn message(
        &mut self,
        msg: Message,
        catalog: &mut TypeCatalog,
        mut emit: impl FnMut(Change),
    ) -> Result<(), ReplicationError> {
        match msg {
            Message::Begin { commit_time, .. } => self.begin(commit_time),
            Message::Commit { .. } => self.in_transaction = false,
            Message::Relation(rel) => {
                let table = table_info(rel, catalog);
                self.relations.insert(table.id, Arc::new(table));
            }
            Message::Type { oid, name, .. } => catalog.learn(oid, &name),
            Message::Insert { relation_id, new } => {
                let table = self.table(relation_id, "Insert")?;
                emit(self.change(ChangeKind::Insert, table, Some(row(&new)), None));
            }
            Message::Update {
                relation_id,
                old,
                new,
            } => {
                let table = self.table(relation_id, "Update")?;
                let mut record = row(&new);
                let old_record = match &old {
                    None => vec![Cell::Absent; table.columns.len()],
                    Some(old) => old_row(&table, old),
                };
                let mut errors = Vec::new();
                fill_unchanged_toast(&table, &mut record, old.as_ref(), &mut errors);
                let mut change =
                    self.change(ChangeKind::Update, table, Some(record), Some(old_record));
                change.errors = errors;
                emit(change);
            }
            Message::Delete { relation_id, old } => {
                let table = self.table(relation_id, "Delete")?;
                let old_record = old_row(&table, &old);
                emit(self.change(ChangeKind::Delete, table, None, Some(old_record)));
            }
            Message::Truncate { relation_ids, .. } => {
                for id in relation_ids {
                    let table = self.table(id, "Truncate")?;
                    emit(self.change(ChangeKind::Truncate, table, None, None));
                }
            }
            Message::Origin { .. } | Message::Message { .. } => {}
        }
        Ok(())
    }

    fn table(&self, id: u32, kind: &'static str) -> Result<Arc<TableInfo>, ReplicationError> {
        self.relations
            .get(&id)
            .cloned()
            .ok_or(ReplicationError::UnknownRelation { kind, id })
    }

    fn change(
        &self,
        kind: ChangeKind,
        table: Arc<TableInfo>,
        record: Option<Row>,
        old_record: Option<Row>,
    ) -> Change {
        let mut change = Change {
            kind,
            table,
            commit_timestamp: self.commit_timestamp.clone(),
            record,
            old_record,
            errors: Vec::new(),
            unlimited: None,
        };
        limit_record(&mut change, self.max_record_bytes);
        change
    }
}

/// A change whose row images hold more than `max` bytes of values loses its
/// values over 64 bytes, and says so in `errors`, so a huge row never
/// reaches every subscriber whole.
fn limit_record(change: &mut Change, max: usize) {
    let size = |row: &Option<Row>| -> usize {
        row.iter()
            .flatten()
            .map(|c| match c {
                Cell::Text(b) => b.len(),
                _ => 0,
            })
            .sum()
    };
    let total = size(&change.record) + size(&change.old_record);
    if total <= max {
        return;
    }
    // Cells share their bytes: keeping the whole rows costs no copy.
    change.unlimited = Some(std::sync::Arc::new((
        change.record.clone(),
        change.old_record.clone(),
    )));
    let mut dropped: Vec<&str> = Vec::new();
    for row in [&mut change.record, &mut change.old_record]
        .into_iter()
        .flatten()
    {
        for (i, cell) in row.iter_mut().enumerate() {
            if matches!(cell, Cell::Text(b) if b.len() > SMALL_VALUE_BYTES) {
                *cell = Cell::Absent;
                let name = change.table.columns[i].name.as_str();
                if !dropped.contains(&name) {
                    dropped.push(name);
                }
            }
        }
    }
    change.errors.push(format!(
        "Error 413: Payload Too Large: the row is {total} bytes, over MAX_RECORD_BYTES={max}; \
         left out the values over {SMALL_VALUE_BYTES} bytes of: {}",
        dropped.join(", ")
    ));
}

fn table_info(rel: Relation, catalog: &mut TypeCatalog) -> TableInfo {
    let columns = rel
        .columns
        .into_iter()
        .map(|c| {
            let t = catalog.get(c.type_oid);
            ColumnInfo {
                name: c.name,
                type_name: t.name.clone(),
                kind: t.kind.clone(),
                type_oid: c.type_oid,
                type_modifier: c.type_modifier,
                is_key: c.is_key,
            }
        })
        .collect();
    TableInfo::new(
        rel.id,
        rel.namespace,
        rel.name,
        rel.replica_identity,
        columns,
    )
}

fn cell(v: &TupleValue) -> Cell {
    match v {
        TupleValue::Null => Cell::Null,
        TupleValue::UnchangedToast => Cell::UnchangedToast,
        TupleValue::Text(b) | TupleValue::Binary(b) => Cell::Text(b.clone()),
    }
}

fn row(t: &Tuple) -> Row {
    t.0.iter().map(cell).collect()
}

/// The old row as the replica identity gives it: key columns only for a
/// key tuple, every column for a full one.
fn old_row(table: &TableInfo, old: &OldTuple) -> Row {
    match old.kind {
        OldTupleKind::Full => row(&old.tuple),
        OldTupleKind::Key => table
            .columns
            .iter()
            .zip(old.tuple.0.iter())
            .map(|(c, v)| if c.is_key { cell(v) } else { Cell::Absent })
            .collect(),
    }
}

/// Replaces unchanged TOAST markers in the new row with the old row's value
/// where it has one; names the others in `errors`.
fn fill_unchanged_toast(
    table: &TableInfo,
    record: &mut Row,
    old: Option<&OldTuple>,
    errors: &mut Vec<String>,
) {
    for (i, value) in record.iter_mut().enumerate() {
        if *value != Cell::UnchangedToast {
            continue;
        }
        match old.and_then(|o| o.tuple.0.get(i)) {
            Some(TupleValue::Text(b)) | Some(TupleValue::Binary(b)) => {
                *value = Cell::Text(b.clone())
            }
            Some(TupleValue::Null) => *value = Cell::Null,
            _ => errors.push(format!(
                "{}: column {:?} was not changed and PostgreSQL did not send its stored (TOASTed) \
                 value; set REPLICA IDENTITY FULL on {}.{} to receive it",
                change::UNCHANGED_TOAST,
                table.columns[i].name,
                table.schema,
                table.name
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replayed_transaction_is_skipped_whole_or_up_to_where_it_stopped() {
        let mut d = Delivered::default();
        assert_eq!(d.already(Lsn(100)), 0, "nothing delivered yet");
        d.through = Lsn(100);
        assert_eq!(d.already(Lsn(100)), u64::MAX, "delivered whole");
        assert_eq!(d.already(Lsn(50)), u64::MAX, "older: delivered whole");
        assert_eq!(d.already(Lsn(200)), 0, "newer: not delivered");
        d.partial = Some((Lsn(200), 7));
        assert_eq!(d.already(Lsn(200)), 7, "the first 7 changes were delivered");
        assert_eq!(d.already(Lsn(300)), 0);
    }
}

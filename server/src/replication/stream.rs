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
//! Progress: the confirmed LSN moves to a transaction's end only after
//! [`Hub::dispatch`] handed all of its changes to the socket queues (dispatch
//! never waits, so this is at its Commit message), and to a keepalive's
//! position only between transactions. pgwire-replication answers keepalive
//! requests and sends standby status updates on a timer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pgwire_replication::{
    Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig,
};

use crate::change::{self, Cell, Change, ChangeKind, ColumnInfo, Row, TableInfo};
use crate::config::{Config, DbSsl, SlotConfig};
use crate::hub::Hub;
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

/// How long the session sleeps in a read with nothing arriving before it
/// sends a status update anyway.
const IDLE_WAKEUP: Duration = Duration::from_secs(10);

/// A session that streamed this long resets the reconnect backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// Whether the replication stream is live (`/readyz`).
#[derive(Debug, Default)]
pub struct StreamStatus {
    live: AtomicBool,
}

impl StreamStatus {
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }
    fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Relaxed);
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
}

/// Streams forever: reconnects after every failure with exponential backoff
/// (`DB_RECONNECT_BACKOFF_MIN` .. `_MAX`) and jitter.
pub async fn run(config: Arc<Config>, hub: Arc<Hub>, status: Arc<StreamStatus>) {
    let mut backoff = config.reconnect_backoff_min;
    loop {
        let started = Instant::now();
        let result = session(&config, &hub, &status).await;
        status.set_live(false);
        match result {
            Ok(()) => tracing::warn!("replication stream ended; reconnecting"),
            Err(e) => tracing::error!(error = %e, "replication failed; reconnecting"),
        }
        if started.elapsed() >= HEALTHY_SESSION {
            backoff = config.reconnect_backoff_min;
        }
        let wait = jitter(backoff);
        tracing::info!(
            wait_ms = wait.as_millis() as u64,
            "waiting before reconnecting"
        );
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(config.reconnect_backoff_max);
    }
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

/// A SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn text(row: &[Option<Bytes>], i: usize) -> String {
    row.get(i)
        .and_then(|v| v.as_ref())
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

async fn session(
    config: &Config,
    hub: &Hub,
    status: &StreamStatus,
) -> Result<(), ReplicationError> {
    let db = &config.db;
    let target = format!("{}:{}/{} as {}", db.host, db.port, db.name, db.user);
    let conn_err = |source| ReplicationError::Connection {
        target: target.clone(),
        source,
    };
    let (slot, temporary) = slot_name(config);
    let tls = match db.ssl {
        DbSsl::Disable => TlsConfig::disabled(),
        DbSsl::Require => TlsConfig::require(),
        DbSsl::VerifyFull => TlsConfig::verify_full(None),
    };
    let rcfg = ReplicationConfig::new(
        db.host.clone(),
        db.user.clone(),
        db.password.expose().to_string(),
        db.name.clone(),
        slot.clone(),
        config.publications.clone(),
    )
    .with_port(db.port)
    .with_tls(tls)
    .with_options(SESSION_OPTIONS)
    .with_application_name("realtime-server")
    .with_status_interval(STATUS_INTERVAL)
    .with_wakeup_interval(IDLE_WAKEUP);

    tracing::info!(%target, slot = %slot, temporary, "connecting for replication");
    let mut client = ReplicationClient::connect_gated(rcfg)
        .await
        .map_err(conn_err)?;

    // The publications must exist: otherwise pgoutput fails later, per
    // transaction, with a less helpful message.
    let names: Vec<String> = config.publications.iter().map(|p| literal(p)).collect();
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
            example: format!("\"{}\"", missing[0].replace('"', "\"\"")),
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

    if temporary {
        client
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput"
            ))
            .await
            .map_err(conn_err)?;
    } else {
        let existing = client
            .simple_query(&format!(
                "SELECT plugin FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
                literal(&slot)
            ))
            .await
            .map_err(conn_err)?;
        match existing.first() {
            Some(row) if text(row, 0) != "pgoutput" => {
                return Err(ReplicationError::WrongPlugin {
                    slot,
                    plugin: text(row, 0),
                })
            }
            Some(_) => tracing::info!(slot = %slot, "resuming from the durable slot"),
            None => {
                client
                    .simple_query(&format!("CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput"))
                    .await
                    .map_err(conn_err)?;
                tracing::info!(slot = %slot, "created durable slot");
            }
        }
    }

    client.start().await.map_err(conn_err)?;
    client.wait_started().await.map_err(conn_err)?;
    status.set_live(true);
    tracing::info!(slot = %slot, publications = ?config.publications, "streaming");

    let mut decoder = ChangeBuilder::default();
    loop {
        let event = match client.recv().await.map_err(conn_err)? {
            Some(event) => event,
            None => return Err(ReplicationError::Ended),
        };
        match event {
            ReplicationEvent::Begin {
                commit_time_micros, ..
            } => decoder.begin(commit_time_micros),
            ReplicationEvent::XLogData { data, .. } => {
                decoder.message(pgoutput::decode(data)?, &mut catalog, |change| {
                    hub.dispatch(&change)
                })?;
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                decoder.in_transaction = false;
                client.update_applied_lsn(end_lsn);
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                // Between transactions everything before wal_end that concerns
                // the publications has been handed over.
                if !decoder.in_transaction && wal_end > Lsn::ZERO {
                    client.update_applied_lsn(wal_end);
                }
            }
            ReplicationEvent::Message { .. } => {}
            ReplicationEvent::StoppedAt { .. } => return Ok(()),
        }
    }
}

/// Turns decoded messages into changes: keeps the relation cache and the
/// current transaction's commit time.
#[derive(Default)]
pub struct ChangeBuilder {
    relations: HashMap<u32, Arc<TableInfo>>,
    commit_timestamp: Arc<str>,
    pub in_transaction: bool,
}

impl ChangeBuilder {
    pub fn begin(&mut self, commit_time_micros: i64) {
        self.commit_timestamp = change::commit_timestamp(commit_time_micros).into();
        self.in_transaction = true;
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
        Change {
            kind,
            table,
            commit_timestamp: self.commit_timestamp.clone(),
            record,
            old_record,
            errors: Vec::new(),
        }
    }
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

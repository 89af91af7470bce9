//! The database side of the steps connect, publication and slots, and of the
//! cleanup: every SQL statement the operator runs lives in this module.
//! Identifiers are always quoted with [`ident`]; values go as parameters, or
//! through [`literal`] where SQL wants a literal (`COMMENT`). Nothing here
//! knows about Kubernetes.

use std::time::Duration;

use realtime_contract::config::DbSsl;
use realtime_contract::sql::{quote_ident as ident, quote_literal as literal};
use tokio_postgres::{Client, NoTls};

use super::validate::{PublicationTarget, QualifiedTable};

/// How long a connection attempt may take before the database counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The text of a database error, with PostgreSQL's message when there is one.
pub fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => d.message().to_string(),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

fn table(t: &QualifiedTable) -> String {
    format!("{}.{}", ident(&t.schema), ident(&t.table))
}

/// Where to connect.
#[derive(Clone)]
pub struct ConnParams {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    pub password: String,
    pub ssl_mode: crate::crd::SslMode,
}

impl ConnParams {
    /// The resource's database, with the password read from its Secret.
    pub fn from_spec(db: &crate::crd::DatabaseSpec, password: String) -> ConnParams {
        ConnParams {
            host: db.host.clone(),
            port: db.port,
            dbname: db.name.clone(),
            user: db.user.clone(),
            ssl_mode: db.ssl_mode,
            password,
        }
    }
}

/// Connects (with TLS as `ssl_mode` says) and drives the connection on a task.
pub async fn connect(p: &ConnParams) -> Result<Client, tokio_postgres::Error> {
    use crate::crd::SslMode;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&p.host)
        .port(p.port)
        .dbname(&p.dbname)
        .user(&p.user)
        .password(&p.password)
        .application_name("realtime-operator")
        .connect_timeout(CONNECT_TIMEOUT);
    let client = match p.ssl_mode {
        SslMode::Disable => {
            cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
            spawn(cfg.connect(NoTls).await?)
        }
        SslMode::Require | SslMode::VerifyFull => {
            // The servers' own TLS connector, so both sides mean the same by
            // each mode.
            let mode = match p.ssl_mode {
                SslMode::Require => DbSsl::Require,
                _ => DbSsl::VerifyFull,
            };
            let tls =
                realtime_contract::tls::connector(mode).expect("a TLS mode gives a connector");
            cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
            spawn(cfg.connect(tls).await?)
        }
    };
    Ok(client)
}

fn spawn<C>((client, conn): (Client, C)) -> Client
where
    C: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "database connection ended");
        }
    });
    client
}

/// `SHOW wal_level`.
pub async fn wal_level(c: &Client) -> Result<String, tokio_postgres::Error> {
    Ok(c.query_one("SHOW wal_level", &[]).await?.get(0))
}

/// `max_slot_wal_keep_size` (PostgreSQL 13+): `None` when unlimited (`-1`) or unknown.
pub async fn max_slot_wal_keep_size(c: &Client) -> Result<Option<String>, tokio_postgres::Error> {
    let row = c
        .query_opt(
            "SELECT setting FROM pg_settings WHERE name = 'max_slot_wal_keep_size'",
            &[],
        )
        .await?;
    Ok(row.map(|r| r.get::<_, String>(0)).filter(|s| s != "-1"))
}

/// A publication as it is in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub all_tables: bool,
    /// Its comment: the ownership mark when the operator manages it.
    pub comment: Option<String>,
    /// Sorted.
    pub tables: Vec<QualifiedTable>,
}

impl Publication {
    pub fn target(&self) -> PublicationTarget {
        if self.all_tables {
            PublicationTarget::AllTables
        } else {
            PublicationTarget::Tables(self.tables.clone())
        }
    }
}

pub async fn publication(
    c: &Client,
    name: &str,
) -> Result<Option<Publication>, tokio_postgres::Error> {
    let Some(row) = c
        .query_opt(
            "SELECT puballtables, obj_description(oid, 'pg_publication') \
             FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await?
    else {
        return Ok(None);
    };
    let rows = c
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables \
             WHERE pubname = $1 ORDER BY 1, 2",
            &[&name],
        )
        .await?;
    Ok(Some(Publication {
        all_tables: row.get(0),
        comment: row.get(1),
        tables: rows
            .iter()
            .map(|r| QualifiedTable {
                schema: r.get(0),
                table: r.get(1),
            })
            .collect(),
    }))
}

fn target_sql(target: &PublicationTarget) -> String {
    match target {
        PublicationTarget::AllTables => "FOR ALL TABLES".into(),
        PublicationTarget::Tables(ts) => format!(
            "FOR TABLE {}",
            ts.iter().map(table).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// `CREATE PUBLICATION` with the ownership `mark` as its comment, in one transaction.
pub async fn create_publication(
    c: &mut Client,
    name: &str,
    target: &PublicationTarget,
    mark: &str,
) -> Result<(), tokio_postgres::Error> {
    let tx = c.transaction().await?;
    tx.batch_execute(&format!(
        "CREATE PUBLICATION {} {}; COMMENT ON PUBLICATION {} IS {}",
        ident(name),
        target_sql(target),
        ident(name),
        literal(mark)
    ))
    .await?;
    tx.commit().await
}

/// Makes the publication publish `target`: `ALTER PUBLICATION ... SET TABLE`, or,
/// when switching to or from all tables (which ALTER cannot), drop and create
/// again in one transaction.
pub async fn set_publication_target(
    c: &mut Client,
    name: &str,
    current: &PublicationTarget,
    target: &PublicationTarget,
    mark: &str,
) -> Result<(), tokio_postgres::Error> {
    match (current, target) {
        (PublicationTarget::Tables(_), PublicationTarget::Tables(_)) => {
            c.batch_execute(&format!(
                "ALTER PUBLICATION {} SET TABLE {}",
                ident(name),
                target_sql(target).trim_start_matches("FOR TABLE ")
            ))
            .await
        }
        _ => {
            let tx = c.transaction().await?;
            tx.batch_execute(&format!(
                "DROP PUBLICATION {n}; CREATE PUBLICATION {n} {t}; COMMENT ON PUBLICATION {n} IS {m}",
                n = ident(name),
                t = target_sql(target),
                m = literal(mark)
            ))
            .await?;
            tx.commit().await
        }
    }
}

/// Records that the operator manages the publication (adoption).
pub async fn mark_publication(
    c: &Client,
    name: &str,
    mark: &str,
) -> Result<(), tokio_postgres::Error> {
    c.batch_execute(&format!(
        "COMMENT ON PUBLICATION {} IS {}",
        ident(name),
        literal(mark)
    ))
    .await
}

pub async fn drop_publication(c: &Client, name: &str) -> Result<(), tokio_postgres::Error> {
    c.batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", ident(name)))
        .await
}

/// The table's replica identity (`d`efault, `n`othing, `f`ull, `i`ndex), `None`
/// when the table does not exist.
pub async fn replica_identity(
    c: &Client,
    t: &QualifiedTable,
) -> Result<Option<char>, tokio_postgres::Error> {
    let row = c
        .query_opt(
            "SELECT c.relreplident::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&t.schema, &t.table],
        )
        .await?;
    Ok(row.and_then(|r| r.get::<_, String>(0).chars().next()))
}

pub async fn set_replica_identity_full(
    c: &Client,
    t: &QualifiedTable,
) -> Result<(), tokio_postgres::Error> {
    c.batch_execute(&format!("ALTER TABLE {} REPLICA IDENTITY FULL", table(t)))
        .await
}

/// A logical replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    pub active: bool,
    pub active_pid: Option<i32>,
    pub retained_wal_bytes: Option<i64>,
    /// WAL written since the position its consumer last confirmed.
    pub confirmed_lag_bytes: Option<i64>,
    pub confirmed_flush_lsn: Option<String>,
}

/// Every logical slot, sorted by name.
pub async fn slots(c: &Client) -> Result<Vec<Slot>, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT slot_name::text, active, active_pid, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, \
             confirmed_flush_lsn::text, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_type = 'logical' ORDER BY 1",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Slot {
            name: r.get(0),
            active: r.get(1),
            active_pid: r.get(2),
            retained_wal_bytes: r.get(3),
            confirmed_flush_lsn: r.get(4),
            confirmed_lag_bytes: r.get(5),
        })
        .collect())
}

/// `server_version_num`, e.g. 150004 for 15.4.
pub async fn server_version_num(c: &Client) -> Result<i32, tokio_postgres::Error> {
    let v: String = c.query_one("SHOW server_version_num", &[]).await?.get(0);
    Ok(v.trim().parse().unwrap_or(0))
}

pub use realtime_contract::slots::{create_slot_sql, FAILOVER_SLOTS_SINCE};

/// A durable `pgoutput` slot (a failover slot where the server has them:
/// [`create_slot_sql`]).
pub async fn create_slot(
    c: &Client,
    name: &str,
    version: i32,
) -> Result<(), tokio_postgres::Error> {
    c.execute(create_slot_sql(version), &[&name])
        .await
        .map(drop)
}

pub async fn drop_slot(c: &Client, name: &str) -> Result<(), tokio_postgres::Error> {
    c.execute("SELECT pg_drop_replication_slot($1)", &[&name])
        .await
        .map(drop)
}

/// Ends the walsender streaming from a slot (on deletion, so the slot can go).
pub async fn terminate_backend(c: &Client, pid: i32) -> Result<(), tokio_postgres::Error> {
    c.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .map(drop)
}

/// Applies the server's authorization setup (`spec.auth.setupAuthorization`):
/// the SQL shipped in the contract crate, in one transaction, idempotent.
pub async fn setup_authorization(
    client: &Client,
    server_user: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&realtime_contract::authorization::setup_transaction(
            server_user,
        ))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_quoted_part_by_part() {
        let t = QualifiedTable::parse("Odd Schema.t\"x").unwrap();
        assert_eq!(table(&t), r#""Odd Schema"."t""x""#);
    }
}

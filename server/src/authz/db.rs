//! The SQL connections authorization runs on, and running a statement as a
//! token's role with its claims.
//!
//! Owns a small pool of plain connections (tokio-postgres), each used by one
//! caller at a time (a role switch is a transaction, so a connection cannot
//! interleave two), each with its prepared statements. [`Db::as_group`] runs
//! one read-only transaction: `BEGIN`, the settings PostgREST sets
//! (`role`, `request.jwt.claims`, `request.jwt.claim.sub` and the other
//! per-claim settings, `realtime.topic` for private channels, a statement
//! timeout), the statement, `ROLLBACK`, sent back to back (one round trip).
//! Must not touch the replication session.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Semaphore};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use crate::config::DbConfig;

/// Who a statement runs as: a database role, the token's claims (a JSON
/// object's text), and for private channels the channel's topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    pub role: String,
    pub claims: String,
    pub topic: Option<String>,
}

/// The settings of one transaction, in one statement. The per-claim legacy
/// settings (`request.jwt.claim.<name>`) are set for claims whose name is a
/// plain identifier (a setting's name cannot hold other characters).
const SET_PRINCIPAL: &str = "SELECT \
    pg_catalog.set_config('role', $1, true), \
    pg_catalog.set_config('request.jwt.claims', $2, true), \
    pg_catalog.set_config('request.jwt.claim.sub', coalesce($2::json->>'sub', ''), true), \
    pg_catalog.set_config('request.jwt.claim.role', coalesce($2::json->>'role', ''), true), \
    pg_catalog.set_config('realtime.topic', $3, true), \
    pg_catalog.set_config('statement_timeout', $4, true), \
    (SELECT pg_catalog.count(pg_catalog.set_config('request.jwt.claim.' || key, value, true)) \
     FROM pg_catalog.json_each_text($2::json) WHERE key ~ '^[A-Za-z_][A-Za-z0-9_]*$' \
     AND key NOT IN ('sub', 'role'))";

/// A failed statement: what PostgreSQL said (message, detail, hint), or why
/// the connection failed. Never holds the claims.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    /// PostgreSQL answered with an error (SQLSTATE, message).
    #[error("{message}")]
    Sql { code: String, message: String },
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Connection(String),
}

impl DbError {
    fn from_pg(e: tokio_postgres::Error) -> DbError {
        match e.as_db_error() {
            Some(db) => {
                let mut message = db.message().to_string();
                if let Some(detail) = db.detail() {
                    message.push_str(&format!(" ({detail})"));
                }
                if let Some(hint) = db.hint() {
                    message.push_str(&format!("; hint: {hint}"));
                }
                DbError::Sql {
                    code: db.code().code().to_string(),
                    message,
                }
            }
            None => DbError::Connection(e.to_string()),
        }
    }

    /// SQLSTATE 57014: the statement timeout cancelled it.
    pub fn is_timeout(&self) -> bool {
        matches!(self, DbError::Timeout(_))
            || matches!(self, DbError::Sql { code, .. } if code == "57014")
    }
}

/// One connection and the statements prepared on it.
pub struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
    /// The pool's generation the statements were prepared in.
    generation: u64,
}

impl Conn {
    /// The statement for `sql`, prepared on this connection once.
    pub async fn statement(&mut self, sql: &str) -> Result<Statement, DbError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await.map_err(DbError::from_pg)?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// A checked-out connection; returned to the pool on drop unless broken.
pub struct Lease {
    conn: Option<Conn>,
    pool: Arc<Idle>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl std::ops::Deref for Lease {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("leased connection")
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("leased connection")
    }
}

impl Lease {
    /// Drops the connection instead of returning it (its state is unknown:
    /// a timeout in the middle of a transaction).
    pub fn discard(mut self) {
        self.conn = None;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if !conn.client.is_closed() {
                self.pool
                    .conns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(conn);
            }
        }
    }
}

struct Idle {
    conns: std::sync::Mutex<Vec<Conn>>,
    /// Bumped when policies changed: connections check it to drop their
    /// prepared statements.
    generation: std::sync::atomic::AtomicU64,
}

/// The pool.
pub struct Db {
    db: DbConfig,
    idle: Arc<Idle>,
    permits: Arc<Semaphore>,
    /// Of the connection; the statement timeout of checks is set per
    /// transaction.
    pub search_path: Mutex<Option<String>>,
}

impl Db {
    pub fn new(db: DbConfig, size: usize) -> Db {
        Db {
            db,
            idle: Arc::new(Idle {
                conns: std::sync::Mutex::new(Vec::new()),
                generation: std::sync::atomic::AtomicU64::new(0),
            }),
            permits: Arc::new(Semaphore::new(size.max(1))),
            search_path: Mutex::new(None),
        }
    }

    /// The server's database user (the role tokens' roles are switched from).
    pub fn user(&self) -> &str {
        &self.db.user
    }

    /// A connection for the caller alone, waiting for one to be free.
    pub async fn lease(&self) -> Result<Lease, DbError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| DbError::Connection("the pool is closed".into()))?;
        let reused = self
            .idle
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let mut conn = match reused {
            Some(c) if !c.client.is_closed() => c,
            _ => self.connect().await?,
        };
        let generation = self
            .idle
            .generation
            .load(std::sync::atomic::Ordering::SeqCst);
        if conn.generation != generation {
            conn.statements.clear();
            conn.generation = generation;
        }
        Ok(Lease {
            conn: Some(conn),
            pool: self.idle.clone(),
            _permit: permit,
        })
    }

    /// Drops every prepared statement (their SQL embeds policies that
    /// changed), on every connection, before its next use.
    pub fn forget_statements(&self) {
        self.idle
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    async fn connect(&self) -> Result<Conn, DbError> {
        let db = &self.db;
        let mut pg = tokio_postgres::Config::new();
        pg.host(&db.host)
            .port(db.port)
            .dbname(&db.name)
            .user(&db.user)
            .password(db.password.expose())
            .application_name("realtime-server authorization")
            .connect_timeout(Duration::from_secs(10));
        let failed = |e: tokio_postgres::Error| {
            DbError::Connection(format!(
                "connecting to {}:{}/{} as {} for authorization checks failed: {e}",
                db.host, db.port, db.name, db.user
            ))
        };
        let client = crate::pg::connect(pg, db.ssl, "authorization")
            .await
            .map_err(failed)?;
        // The search path, fixed: `$user` would mean another schema once the
        // role is switched, and policies are printed (pg_get_expr) and parsed
        // back under this path.
        let path: String = client
            .query_one(
                "SELECT coalesce(pg_catalog.string_agg(pg_catalog.quote_ident(s), ', '), '') \
                 FROM pg_catalog.unnest(pg_catalog.current_schemas(false)) AS s",
                &[],
            )
            .await
            .map_err(DbError::from_pg)?
            .get(0);
        client
            .execute(
                "SELECT pg_catalog.set_config('search_path', $1, false)",
                &[&path],
            )
            .await
            .map_err(DbError::from_pg)?;
        *self.search_path.lock().await = Some(path);
        Ok(Conn {
            client,
            statements: HashMap::new(),
            generation: self
                .idle
                .generation
                .load(std::sync::atomic::Ordering::SeqCst),
        })
    }

    /// Runs `sql` with `params` in a read-only transaction as `who`, with a
    /// statement timeout; returns its rows. A timeout drops the connection
    /// (it may still be inside the transaction).
    pub async fn as_group(
        &self,
        who: &Principal,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        timeout: Duration,
    ) -> Result<Vec<Row>, DbError> {
        let mut lease = self.lease().await?;
        let result = tokio::time::timeout(
            timeout + Duration::from_secs(1),
            run_as(&mut lease, who, sql, params, timeout),
        )
        .await;
        match result {
            Ok(r) => r,
            Err(_) => {
                lease.discard();
                Err(DbError::Timeout(timeout))
            }
        }
    }
}

/// `BEGIN READ ONLY`, the settings, the statement, `ROLLBACK`, pipelined.
pub async fn run_as(
    conn: &mut Conn,
    who: &Principal,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    timeout: Duration,
) -> Result<Vec<Row>, DbError> {
    let set = conn.statement(SET_PRINCIPAL).await?;
    let stmt = conn.statement(sql).await?;
    let timeout_ms = timeout.as_millis().max(1).to_string();
    let topic = who.topic.clone().unwrap_or_default();
    let client = &conn.client;
    let begin = client.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY");
    let set_params: [&(dyn ToSql + Sync); 4] = [&who.role, &who.claims, &topic, &timeout_ms];
    let settings = client.query(&set, &set_params);
    let rows = client.query(&stmt, params);
    let end = client.batch_execute("ROLLBACK");
    let (begun, set, rows, ended) = futures::join!(begin, settings, rows, end);
    begun.map_err(DbError::from_pg)?;
    set.map_err(DbError::from_pg)?;
    let rows = rows.map_err(DbError::from_pg)?;
    ended.map_err(DbError::from_pg)?;
    Ok(rows)
}

//! `realtime-server check`: connects with the server's configuration and
//! reports every prerequisite of `serve`, each as one line that is `ok` or
//! `missing` with the SQL (or setting) that fixes it.
//!
//! Owns only the looking: it reuses the replication session's settings
//! ([`replication_config`]), the authorization pool ([`Db`]) and its role
//! switch ([`can_switch_to`]), and changes nothing in the database (no slot
//! is created, no grant is given).

use std::fmt;
use std::time::Duration;

use pgwire_replication::ReplicationClient;
use realtime_contract::sql::{quote_ident, quote_literal};

use crate::authz::authorizer::{can_switch_to, grant_role_sql};
use crate::authz::db::{Db, DbError};
use crate::config::{Config, SlotConfig};
use crate::replication::stream::replication_config;

/// How long one connection attempt or one role switch may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The slot name the replication connection is opened with: only a name,
/// the check never creates or starts a slot.
const PROBE_SLOT: &str = "realtime_check";

/// What one prerequisite came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Missing,
    /// Not looked at: an earlier prerequisite (the connection) is missing.
    Skipped,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Missing => "missing",
            Status::Skipped => "skipped",
        }
    }
}

/// One prerequisite: what it is, whether it is met, and what to do when it
/// is not (SQL to run, a setting, or a command).
#[derive(Debug, Clone)]
pub struct Finding {
    pub status: Status,
    pub what: String,
    pub fix: Option<String>,
    /// A missing optional prerequisite does not fail the check.
    pub optional: bool,
}

impl Finding {
    fn ok(what: impl Into<String>) -> Finding {
        Finding {
            status: Status::Ok,
            what: what.into(),
            fix: None,
            optional: false,
        }
    }

    fn missing(what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            status: Status::Missing,
            what: what.into(),
            fix: Some(fix.into()),
            optional: false,
        }
    }

    fn skipped(what: impl Into<String>) -> Finding {
        Finding {
            status: Status::Skipped,
            what: what.into(),
            fix: Some("needs the database connection".into()),
            optional: false,
        }
    }

    fn optional(mut self) -> Finding {
        self.optional = true;
        self
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<8} {}", self.status.as_str(), self.what)?;
        if let Some(fix) = &self.fix {
            write!(f, ": {fix}")?;
        }
        Ok(())
    }
}

/// Every prerequisite, in the order the server needs them.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    /// 0 when every required prerequisite is met, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        let failed = self
            .findings
            .iter()
            .any(|f| f.status != Status::Ok && !f.optional);
        i32::from(failed)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(f, "{finding}")?;
        }
        Ok(())
    }
}

/// Looks at every prerequisite of serving with `config`.
pub async fn run(config: &Config) -> Report {
    let db = &config.db;
    let user = quote_ident(&db.user);
    let target = format!("{}:{}/{} as {}", db.host, db.port, db.name, db.user);
    let mut report = Report::default();
    let mut push = |f: Finding| report.findings.push(f);

    // Two connections: the catalog queries hold one while a role switch
    // takes the other.
    let pool = Db::new(db.clone(), 2);
    let lease = match tokio::time::timeout(TIMEOUT, pool.lease()).await {
        Ok(Ok(lease)) => {
            push(Finding::ok(format!("connection to {target}")));
            Some(lease)
        }
        Ok(Err(e)) => {
            push(Finding::missing(
                format!("connection to {target}"),
                format!("{e} (check DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD, DB_SSL)"),
            ));
            None
        }
        Err(_) => {
            push(Finding::missing(
                format!("connection to {target}"),
                format!("no answer within {TIMEOUT:?} (check DB_HOST, DB_PORT)"),
            ));
            None
        }
    };
    push(replication_connection(config, &target).await);

    let Some(lease) = lease else {
        push(Finding::skipped("wal_level = logical"));
        push(Finding::skipped(format!("role {user} has REPLICATION")));
        for p in &config.publications {
            push(Finding::skipped(format!("publication {}", quote_ident(p))));
        }
        push(Finding::skipped("replication slot"));
        if config.secure_channels {
            push(Finding::skipped("authorization roles and helpers"));
        }
        return report;
    };
    let client = lease.client();

    match client.query_one("SHOW wal_level", &[]).await {
        Ok(row) => {
            let level: String = row.get(0);
            push(if level == "logical" {
                Finding::ok("wal_level = logical")
            } else {
                Finding::missing(
                    format!("wal_level = logical (it is {level})"),
                    "run ALTER SYSTEM SET wal_level = logical; as a superuser, then restart \
                     PostgreSQL",
                )
            });
        }
        Err(e) => push(failed_query("wal_level = logical", "SHOW wal_level", e)),
    }

    let what = format!("role {user} has REPLICATION (or is a superuser)");
    match client
        .query_one(
            "SELECT rolreplication OR rolsuper FROM pg_catalog.pg_roles \
             WHERE rolname = current_user",
            &[],
        )
        .await
    {
        Ok(row) if row.get::<_, bool>(0) => push(Finding::ok(what)),
        Ok(_) => push(Finding::missing(
            what,
            format!("run ALTER ROLE {user} REPLICATION; as a superuser"),
        )),
        Err(e) => push(failed_query(&what, "pg_roles", e)),
    }

    match client
        .query(
            "SELECT pubname FROM pg_catalog.pg_publication WHERE pubname = ANY($1)",
            &[&config.publications],
        )
        .await
    {
        Ok(rows) => {
            let found: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            for p in &config.publications {
                let what = format!("publication {} (PUBLICATIONS)", quote_ident(p));
                push(if found.contains(p) {
                    Finding::ok(what)
                } else {
                    Finding::missing(
                        what,
                        format!(
                            "run CREATE PUBLICATION {} FOR ALL TABLES; (or FOR TABLE and the \
                             tables to stream)",
                            quote_ident(p)
                        ),
                    )
                });
            }
        }
        Err(e) => push(failed_query(
            "publications (PUBLICATIONS)",
            "pg_publication",
            e,
        )),
    }

    push(slot(client, config).await);

    if config.secure_channels {
        for role in [config.anon_role.as_str(), "authenticated"] {
            push(role_switch(&pool, client, role, &db.user).await);
        }
        let setup = "run `realtime-server setup-authorization` (or apply the SQL of \
                     `realtime-server setup-authorization --print` as an administrator)";
        let what = "function auth.uid() (policies written for Supabase use it)";
        match exists(
            client,
            "SELECT pg_catalog.to_regprocedure('auth.uid()') IS NOT NULL",
        )
        .await
        {
            Ok(true) => push(Finding::ok(what)),
            Ok(false) => push(Finding::missing(what, setup)),
            Err(e) => push(failed_query(what, "to_regprocedure", e)),
        }
        let what = "table realtime.messages (optional: only private channels need it)";
        match exists(
            client,
            "SELECT pg_catalog.to_regclass('realtime.messages') IS NOT NULL",
        )
        .await
        {
            Ok(true) => push(Finding::ok(what)),
            Ok(false) => push(Finding::missing(what, setup).optional()),
            Err(e) => push(failed_query(what, "to_regclass", e).optional()),
        }
    }
    report
}

/// Opens the replication session as `serve` does (`replication=database`)
/// and asks IDENTIFY_SYSTEM, which only a replication session answers.
async fn replication_connection(config: &Config, target: &str) -> Finding {
    let what = format!("replication connection to {target}");
    let attempt = async {
        let mut client =
            ReplicationClient::connect_gated(replication_config(config, PROBE_SLOT)).await?;
        let system = client.identify_system().await;
        client.abort();
        system
    };
    match tokio::time::timeout(TIMEOUT, attempt).await {
        Ok(Ok(_)) => Finding::ok(what),
        Ok(Err(e)) => Finding::missing(
            what,
            format!(
                "{e} (the role needs REPLICATION, and pg_hba.conf must allow it to connect to \
                 database {:?})",
                config.db.name
            ),
        ),
        Err(_) => Finding::missing(what, format!("no answer within {TIMEOUT:?}")),
    }
}

/// The durable slot exists with pgoutput, or a slot can be created
/// (`max_replication_slots` has room).
async fn slot(client: &tokio_postgres::Client, config: &Config) -> Finding {
    let name = match &config.slot {
        SlotConfig::Durable(name) => Some(name.as_str()),
        SlotConfig::Temporary => None,
    };
    if let Some(name) = name {
        let what = format!("replication slot {name:?} (SLOT_NAME)");
        match client
            .query_opt(
                "SELECT plugin FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                &[&name],
            )
            .await
        {
            Ok(Some(row)) => {
                let plugin: Option<String> = row.get(0);
                return match plugin.as_deref() {
                    Some("pgoutput") => Finding::ok(format!("{what} exists (pgoutput)")),
                    other => Finding::missing(
                        format!("{what} uses pgoutput (it uses {})", other.unwrap_or("none")),
                        format!(
                            "choose another SLOT_NAME, or drop it: SELECT \
                             pg_catalog.pg_drop_replication_slot({});",
                            quote_literal(name)
                        ),
                    ),
                };
            }
            Ok(None) => {}
            Err(e) => return failed_query(&what, "pg_replication_slots", e),
        }
    }
    let what = match name {
        Some(name) => format!("replication slot {name:?} (SLOT_NAME) can be created"),
        None => "a temporary replication slot can be created".to_string(),
    };
    match client
        .query_one(
            "SELECT pg_catalog.current_setting('max_replication_slots')::int, \
             (SELECT pg_catalog.count(*)::int FROM pg_catalog.pg_replication_slots)",
            &[],
        )
        .await
    {
        Ok(row) => {
            let (max, used): (i32, i32) = (row.get(0), row.get(1));
            if used < max {
                Finding::ok(format!(
                    "{what} (max_replication_slots = {max}, {used} in use)"
                ))
            } else {
                Finding::missing(
                    format!("{what} (max_replication_slots = {max}, all in use)"),
                    format!(
                        "drop a slot no longer used (SELECT pg_catalog.pg_drop_replication_slot(\
                         '<name>');), or run ALTER SYSTEM SET max_replication_slots = {}; as a \
                         superuser and restart PostgreSQL",
                        max + 1
                    ),
                )
            }
        }
        Err(e) => failed_query(&what, "max_replication_slots", e),
    }
}

/// The server's user may switch to `role` (tokens name it), as checks do.
async fn role_switch(
    pool: &Db,
    client: &tokio_postgres::Client,
    role: &str,
    user: &str,
) -> Finding {
    let what = format!(
        "role {} granted to {} (the server checks as it)",
        quote_ident(role),
        quote_ident(user)
    );
    match can_switch_to(pool, role, TIMEOUT).await {
        Ok(()) => Finding::ok(what),
        Err(DbError::Sql { .. }) => {
            let role_exists = client
                .query_one(
                    "SELECT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = $1)",
                    &[&role],
                )
                .await
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(true);
            let create = if role_exists {
                String::new()
            } else {
                format!("CREATE ROLE {} NOLOGIN; ", quote_ident(role))
            };
            Finding::missing(
                what,
                format!(
                    "run {create}{} as an administrator",
                    grant_role_sql(role, user)
                ),
            )
        }
        Err(e) => Finding::missing(what, format!("the check failed: {e}")),
    }
}

async fn exists(client: &tokio_postgres::Client, sql: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(client.query_one(sql, &[]).await?.get(0))
}

fn failed_query(what: &str, query: &str, e: tokio_postgres::Error) -> Finding {
    Finding::missing(what, format!("could not read {query}: {e}"))
}

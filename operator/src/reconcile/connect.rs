//! Step 3, connect: reaches the resource's database with the password read
//! from its Secret and checks that it can serve logical replication
//! (`wal_level`); warns once, in an Event, when slots may retain WAL without
//! limit. Sets `DatabaseReady`.

use kube::ResourceExt;
use tokio_postgres::error::SqlState;

use super::conditions::{Wanted, DATABASE_READY};
use super::database::{self as db, db_message, ConnParams};
use super::driver::Failure;
use super::reason::Reason;
use super::status::old_condition;
use super::{Context, Error};
use crate::crd::RealtimeServer;

/// A connection to a resource's database that can serve logical replication.
pub struct Database {
    pub client: tokio_postgres::Client,
    /// `user@host:port/dbname`, for messages.
    pub target: String,
}

impl Database {
    /// `DatabaseReady` True.
    pub fn condition(&self) -> Wanted {
        Wanted::ok(
            DATABASE_READY,
            Reason::Connected,
            format!("connected to {}; wal_level=logical", self.target),
        )
    }
}

/// Why the database cannot serve the resource.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connection failed: `reason` says how, `hint` what to check.
    #[error("cannot connect to {target}: {}; {hint}", db_message(.source))]
    Refused {
        reason: Reason,
        target: String,
        hint: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "{target} has wal_level={level}; logical replication needs wal_level=logical: run ALTER \
         SYSTEM SET wal_level = logical; as a superuser, then restart PostgreSQL"
    )]
    WalLevel { target: String, level: String },
    /// A query on a connected database failed.
    #[error(transparent)]
    Query(Error),
}

/// A refused connection is retried with backoff; a `wal_level` to change is
/// looked at again every minute; a failed query is retried without a word in
/// status.
impl From<ConnectError> for Failure {
    fn from(e: ConnectError) -> Failure {
        let message = e.to_string();
        match e {
            ConnectError::Refused {
                reason,
                target,
                source,
                ..
            } => Failure::told(reason, message)
                .retried(Error::db(format!("connecting to {target}"))(source)),
            ConnectError::WalLevel { .. } => Failure::told(Reason::WalLevelNotLogical, message),
            ConnectError::Query(e) => Failure::Untold(e),
        }
    }
}

/// The reason for a failed connection, from its SQLSTATE.
fn refused(e: &tokio_postgres::Error) -> Reason {
    match e.code() {
        Some(c) if *c == SqlState::INVALID_PASSWORD => Reason::AuthenticationFailed,
        Some(c) if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            Reason::AuthenticationFailed
        }
        Some(c) if *c == SqlState::INVALID_CATALOG_NAME => Reason::DatabaseNotFound,
        _ => Reason::ConnectionFailed,
    }
}

/// Connects to `obj`'s database with `password` and checks it.
pub async fn connect(
    obj: &RealtimeServer,
    ctx: &Context,
    password: String,
) -> Result<Database, ConnectError> {
    let params = ConnParams::from_spec(&obj.spec.database, password);
    let target = format!(
        "{}@{}:{}/{}",
        params.user, params.host, params.port, params.dbname
    );
    let client = match db::connect(&params).await {
        Ok(c) => c,
        Err(source) => {
            let reason = refused(&source);
            let ns = obj.namespace().unwrap_or_default();
            let pw = &obj.spec.database.password_secret_ref;
            let hint = match reason {
                Reason::AuthenticationFailed => format!(
                    "check the password in Secret {ns}/{} key {:?}",
                    pw.name, pw.key
                ),
                Reason::DatabaseNotFound => "check spec.database.name".to_string(),
                _ => "check spec.database.host and port, and that the database accepts \
                      connections from the operator"
                    .to_string(),
            };
            return Err(ConnectError::Refused {
                reason,
                target,
                hint,
                source,
            });
        }
    };
    let level = db::wal_level(&client)
        .await
        .map_err(|e| ConnectError::Query(Error::db("SHOW wal_level")(e)))?;
    if level != "logical" {
        return Err(ConnectError::WalLevel { target, level });
    }
    // Said once, when the database becomes ready, not at every resync.
    let was_ready = old_condition(obj, DATABASE_READY).is_some_and(|c| c.status == "True");
    if !was_ready {
        let keep = db::max_slot_wal_keep_size(&client)
            .await
            .map_err(|e| ConnectError::Query(Error::db("reading max_slot_wal_keep_size")(e)))?;
        if keep.is_none() {
            ctx.event(
                obj,
                Reason::UnlimitedWalRetention,
                format!(
                    "max_slot_wal_keep_size is unlimited on {target}: a replication slot whose \
                     server is down retains WAL until the disk fills; set it (e.g. ALTER SYSTEM \
                     SET max_slot_wal_keep_size = '10GB') and reload"
                ),
            )
            .await;
        }
    }
    Ok(Database { client, target })
}

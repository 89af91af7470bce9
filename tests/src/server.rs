//! The real `realtime-server` binary for a test: `realtime-harness`'s
//! [`realtime_harness::ServerProcess`], with what a test wants of it (the
//! environment for a throwaway PostgreSQL, debug logs, a panic naming the
//! cause and showing the log when it does not start), and the [`Stack`] most
//! end-to-end tests start from.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::time::Duration;

pub use realtime_harness::net::{http_get, http_post};

use crate::TempPostgres;

/// How long a server may take to stream once started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after a signal.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where cargo put the server binary (`REALTIME_SERVER_BIN` overrides).
pub fn server_bin() -> PathBuf {
    realtime_harness::server::server_bin().unwrap_or_else(|e| panic!("{e}"))
}

/// Where cargo put the workspace binary `name` (tests/run builds every
/// binary); the variable `override_var` points elsewhere.
pub fn workspace_bin(name: &str, override_var: &str) -> PathBuf {
    realtime_harness::server::workspace_bin(name, override_var).unwrap_or_else(|e| panic!("{e}"))
}

/// A port free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    realtime_harness::net::free_port().expect("a free port on 127.0.0.1")
}

/// A running server process, stopped on drop (its log printed if the test
/// is failing).
pub struct ServerProcess(realtime_harness::ServerProcess);

impl ServerProcess {
    /// The environment that points a server at `pg` with `publications`,
    /// channels not secured, debug logs.
    pub fn env_for(pg: &TempPostgres, publications: &[&str]) -> BTreeMap<String, String> {
        let mut env = pg.server_env(publications).expect("free port");
        env.insert("RUST_LOG".into(), "info,realtime_server=debug".into());
        env
    }

    /// Starts the server with `env` and waits until it is ready.
    pub fn start(env: BTreeMap<String, String>) -> ServerProcess {
        let mut s = Self::spawn(env);
        s.wait_ready(READY_TIMEOUT);
        s
    }

    /// Starts the server with `env` without waiting.
    pub fn spawn(env: BTreeMap<String, String>) -> ServerProcess {
        ServerProcess(realtime_harness::ServerProcess::spawn(env).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Waits until `/readyz` says the replication stream is live.
    pub fn wait_ready(&mut self, timeout: Duration) {
        if let Err(e) = self.0.wait_for("/readyz", timeout) {
            panic!("realtime-server not ready: {e}");
        }
    }

    /// Sends `signal` (e.g. "KILL", "TERM") and waits for the exit status.
    pub fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        self.0
            .stop(signal, EXIT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The harness's server: ports, URLs, GETs, the log.
impl Deref for ServerProcess {
    type Target = realtime_harness::ServerProcess;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for ServerProcess {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// A throwaway PostgreSQL with a schema and a publication `realtime_test`,
/// and the server streaming it: what most end-to-end tests start from.
pub struct Stack {
    pub db: tokio_postgres::Client,
    pub server: ServerProcess,
    pub pg: TempPostgres,
}

impl Stack {
    /// Applies `schema_sql`, then `publication_sql` (which creates
    /// `realtime_test`), and starts a server on it.
    pub async fn start(schema_sql: &str, publication_sql: &str) -> Stack {
        Stack::start_with(schema_sql, publication_sql, &[]).await
    }

    /// A table `items (id int PRIMARY KEY, body text)` published (FOR ALL
    /// TABLES), and the server on it with `extra_env` added to its
    /// environment: the adversarial and limit tests' stage.
    pub async fn items(extra_env: &[(&str, &str)]) -> Stack {
        Stack::start_with(
            "CREATE TABLE items (id int PRIMARY KEY, body text);",
            "CREATE PUBLICATION realtime_test FOR ALL TABLES;",
            extra_env,
        )
        .await
    }

    /// [`Stack::start`] with `extra_env` added to the server's environment
    /// (limits, timeouts).
    pub async fn start_with(
        schema_sql: &str,
        publication_sql: &str,
        extra_env: &[(&str, &str)],
    ) -> Stack {
        let (pg, db) = TempPostgres::with_schema(schema_sql)
            .await
            .expect("PostgreSQL with the schema");
        db.batch_execute(publication_sql)
            .await
            .expect("publication");
        let mut env = ServerProcess::env_for(&pg, &["realtime_test"]);
        for (k, v) in extra_env {
            env.insert(k.to_string(), v.to_string());
        }
        let server = tokio::task::spawn_blocking(move || ServerProcess::start(env))
            .await
            .expect("server task");
        Stack { db, server, pg }
    }
}

//! The real `realtime-server` binary as a child process, for end-to-end tests.
//!
//! Owns starting the binary with an environment (by default: a throwaway
//! PostgreSQL's connection, a free port, channels not secured), waiting until
//! `/readyz` says the replication stream is live, and killing it on drop. Its
//! log goes to a file whose tail is shown when something fails.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TempPostgres;

/// Where cargo put the server binary: beside the test executable's `deps/`.
/// `REALTIME_SERVER_BIN` overrides.
pub fn server_bin() -> PathBuf {
    workspace_bin("realtime-server", "REALTIME_SERVER_BIN")
}

/// Where cargo put the workspace binary `name`: beside the test executable's
/// `deps/` (tests/run builds every binary first). The variable `override_var`
/// points elsewhere.
pub fn workspace_bin(name: &str, override_var: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(override_var) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current test executable");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} does not exist: build it with `cargo build -p {name}` (tests/run builds every binary)",
        bin.display()
    );
    bin
}

pub fn free_port() -> u16 {
    realtime_server::dev::postgres::free_port().expect("free port")
}

/// A running server process.
pub struct ServerProcess {
    child: Option<Child>,
    pub port: u16,
    pub env: BTreeMap<String, String>,
    log: tempfile::NamedTempFile,
}

impl ServerProcess {
    /// The environment that points a server at `pg` with `publications`.
    pub fn env_for(pg: &TempPostgres, publications: &[&str]) -> BTreeMap<String, String> {
        let mut env = pg.server_env(publications).expect("free port");
        env.insert("RUST_LOG".into(), "info,realtime_server=debug".into());
        env
    }

    /// Starts the server with `env` and waits until it is ready.
    pub fn start(env: BTreeMap<String, String>) -> ServerProcess {
        let s = Self::spawn(env);
        s.wait_ready(Duration::from_secs(30));
        s
    }

    /// Starts the server with `env` without waiting.
    pub fn spawn(env: BTreeMap<String, String>) -> ServerProcess {
        let port: u16 = env
            .get("PORT")
            .and_then(|p| p.parse().ok())
            .expect("PORT in env");
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = Command::new(server_bin())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(log.reopen().expect("log"))
            .stderr(log.reopen().expect("log"))
            .spawn()
            .expect("spawn realtime-server");
        ServerProcess {
            child: Some(child),
            port,
            env,
            log,
        }
    }

    pub fn ws_url(&self, vsn: &str) -> String {
        format!("ws://127.0.0.1:{}/socket/websocket?vsn={vsn}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(self.log.path()).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    /// GET `path` on the server: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path)
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((200, _)) = self.get("/readyz") {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "realtime-server not ready after {timeout:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` (e.g. "KILL", "TERM") and waits for the exit status.
    pub fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status();
        child.wait().expect("wait for realtime-server")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- realtime-server log ---\n{}", self.log());
        }
    }
}

pub use realtime_server::dev::probe::http_get;

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
        let pg = tokio::task::spawn_blocking(TempPostgres::start)
            .await
            .expect("start task")
            .expect("start PostgreSQL");
        let db = pg.connect().await.expect("connect");
        db.batch_execute(schema_sql).await.expect("schema");
        db.batch_execute(publication_sql)
            .await
            .expect("publication");
        let env = ServerProcess::env_for(&pg, &["realtime_test"]);
        let server = tokio::task::spawn_blocking(move || ServerProcess::start(env))
            .await
            .expect("server task");
        Stack { db, server, pg }
    }
}

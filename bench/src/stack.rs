//! The parts a scenario runs against: a throwaway PostgreSQL
//! ([`TempPostgres`]) and the release `realtime-server` as a child process.
//!
//! Owns finding (or building) the server binary, starting it with an
//! environment, waiting until it serves, and gating its replication
//! connection in `pg_hba.conf` so that a scenario can connect its
//! subscribers before the stream starts.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
pub use realtime_server::dev::postgres::TempPostgres;
use realtime_server::dev::probe::http_get;

/// The server binary: `REALTIME_SERVER_BIN`, else the `realtime-server`
/// beside this executable. Under `cargo run` it is (re)built first with the
/// same profile, so one command always measures the current code.
pub fn server_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("REALTIME_SERVER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let dir = exe.parent().context("executable directory")?;
    let bin = dir.join("realtime-server");
    if let Some(cargo) = std::env::var_os("CARGO") {
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "realtime-server"]);
        if release {
            cmd.arg("--release");
        }
        println!("building the server: {cmd:?}");
        let status = cmd.status().context("running cargo build")?;
        if !status.success() {
            bail!("cargo build -p realtime-server failed");
        }
    }
    if !bin.exists() {
        bail!(
            "{} does not exist: run `cargo build --release -p realtime-server`, or run the \
             benchmark with `cargo run --release -p realtime-bench -- ...`, or set REALTIME_SERVER_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// A PostgreSQL client program (`pg_recvlogical`, `pgbench`): beside the
/// cluster's `initdb`, else in `pg_config --bindir`, else on PATH.
pub fn pg_tool(pg: &TempPostgres, name: &str) -> PathBuf {
    let beside = pg.bindir().join(name);
    if beside.is_file() {
        return beside;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join(name).is_file() {
            return dir.join(name);
        }
    }
    PathBuf::from(name)
}

/// Starts a throwaway PostgreSQL and runs `sql` on it.
pub async fn postgres(sql: &str) -> anyhow::Result<(TempPostgres, tokio_postgres::Client)> {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await?
        .context("starting a throwaway PostgreSQL")?;
    let db = pg.connect().await.context("connecting to PostgreSQL")?;
    db.batch_execute(sql).await.context("creating the schema")?;
    Ok((pg, db))
}

/// Refuses (`closed`) or allows replication connections from loopback, and
/// reloads PostgreSQL's configuration.
pub async fn gate_replication(
    pg: &TempPostgres,
    db: &tokio_postgres::Client,
    closed: bool,
) -> anyhow::Result<()> {
    const LINE: &str = "host replication all 127.0.0.1/32 reject # realtime-bench gate\n";
    let path = pg.data_dir().join("pg_hba.conf");
    let current = std::fs::read_to_string(&path).context("reading pg_hba.conf")?;
    let without = current.replace(LINE, "");
    let next = if closed {
        format!("{LINE}{without}")
    } else {
        without
    };
    // Written in place: the file keeps its owner (postgres when run as root).
    std::fs::write(&path, next).context("writing pg_hba.conf")?;
    db.batch_execute("SELECT pg_reload_conf()").await?;
    if closed {
        // The postmaster rereads pg_hba.conf on SIGHUP, asynchronously. When
        // opening, the caller's clock is running: the server retries anyway.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

/// A running server process, killed on drop.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    log: tempfile::NamedTempFile,
}

impl Server {
    /// The environment for a server on `pg` serving `publication`, channels
    /// not secured, logging only warnings.
    pub fn env(pg: &TempPostgres, publication: &str) -> BTreeMap<String, String> {
        let mut env = pg
            .server_env(&[publication])
            .expect("a free port on 127.0.0.1");
        env.insert("RUST_LOG".into(), "warn".into());
        // A durable slot's first session otherwise waits RESUME_DELAY_MS
        // (5 s) for clients to rejoin before it streams: a pause for
        // restarts, which would be timed here as ingest.
        env.insert("RESUME_DELAY_MS".into(), "0".into());
        env
    }

    pub fn spawn(env: BTreeMap<String, String>) -> anyhow::Result<Server> {
        let port: u16 = env["PORT"].parse()?;
        let log = tempfile::NamedTempFile::new()?;
        let child = Command::new(server_bin()?)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(log.reopen()?)
            .stderr(log.reopen()?)
            .spawn()
            .context("starting realtime-server")?;
        Ok(Server {
            child: Some(child),
            port,
            log,
        })
    }

    /// Starts the server and waits until the replication stream is live.
    pub async fn start(env: BTreeMap<String, String>) -> anyhow::Result<Server> {
        let s = Self::spawn(env)?;
        s.wait_for("/readyz", Duration::from_secs(30)).await?;
        Ok(s)
    }

    /// Waits until `path` answers 200.
    pub async fn wait_for(&self, path: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let port = self.port;
            let p = path.to_string();
            let got =
                tokio::task::spawn_blocking(move || http_get(port, &p).map(|(status, _)| status))
                    .await?;
            if got == Some(200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "realtime-server: {path} not 200 after {timeout:?}; its log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(self.log.path()).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    /// Log lines at WARN or above (a slow-consumer close shows up here).
    pub fn warnings(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Wall-clock microseconds since the epoch: the clock PostgreSQL's
/// `clock_timestamp()` reads, so a row's stamp and a receive time compare.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// SQL for the microsecond wall-clock stamp written into a row just before
/// its commit.
pub const STAMP_SQL: &str = "(extract(epoch from clock_timestamp()) * 1000000)::bigint";

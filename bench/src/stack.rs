//! The parts a scenario runs against, from `realtime-harness`: a throwaway
//! PostgreSQL ([`TempPostgres::with_schema`]) and the release
//! `realtime-server` as a child process ([`ServerProcess`]).
//!
//! Owns what the benchmarks add to them: building the server binary before
//! any timing, the server's environment for a benchmark, and gating its
//! connections by role in `pg_hba.conf` so that a scenario can connect its
//! subscribers before the stream starts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use realtime_harness::server::SERVER_BIN_ENV;
pub use realtime_harness::{ServerProcess, TempPostgres};

/// How long the server may take to serve once started.
const SERVER_START: Duration = Duration::from_secs(30);

/// The server binary: `REALTIME_SERVER_BIN`, else the `realtime-server`
/// beside this executable. Under `cargo run` it is (re)built first with the
/// same profile, so one command always measures the current code.
pub fn server_bin() -> anyhow::Result<PathBuf> {
    if std::env::var_os(SERVER_BIN_ENV).is_none() {
        if let Some(cargo) = std::env::var_os("CARGO") {
            let exe = std::env::current_exe().context("locating this executable")?;
            let release = exe
                .parent()
                .and_then(|dir| dir.file_name())
                .is_some_and(|n| n == "release");
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
    }
    realtime_harness::server::server_bin().context(
        "no server binary; or run the benchmark with `cargo run --release -p realtime-bench -- ...`",
    )
}

/// The role a gated server connects as (see [`gate_server`]).
pub const GATED_ROLE: &str = "realtime_bench_server";

/// Refuses (`closed`) or allows new connections of [`GATED_ROLE`] from
/// loopback, and reloads PostgreSQL's configuration. A server started with
/// `DB_USER` = [`GATED_ROLE`] (see [`gated_server_env`]) cannot start
/// streaming while it is closed.
///
/// By role, not by pg_hba's `replication` keyword: that keyword matches
/// physical replication only, so a logical replication connection passed
/// it and the server sometimes streamed before its subscriber joined.
pub async fn gate_server(
    pg: &TempPostgres,
    db: &tokio_postgres::Client,
    closed: bool,
) -> anyhow::Result<()> {
    db.batch_execute(&format!(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{GATED_ROLE}') THEN
             CREATE ROLE {GATED_ROLE} LOGIN SUPERUSER REPLICATION;
           END IF;
         END $$"
    ))
    .await?;
    let line = format!("host all {GATED_ROLE} 127.0.0.1/32 reject # realtime-bench gate\n");
    let path = pg.data_dir().join("pg_hba.conf");
    let current = std::fs::read_to_string(&path).context("reading pg_hba.conf")?;
    let without = current.replace(&line, "");
    let next = if closed {
        format!("{line}{without}")
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

/// The environment for a server on `pg` serving `publication`, channels
/// not secured, logging only warnings.
pub fn server_env(pg: &TempPostgres, publication: &str) -> BTreeMap<String, String> {
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

/// [`server_env`] for a server that connects as [`GATED_ROLE`].
pub fn gated_server_env(pg: &TempPostgres, publication: &str) -> BTreeMap<String, String> {
    let mut env = server_env(pg, publication);
    env.insert("DB_USER".into(), GATED_ROLE.into());
    env
}

/// Starts the server and waits until the replication stream is live.
pub async fn start_server(env: BTreeMap<String, String>) -> anyhow::Result<ServerProcess> {
    let mut server = ServerProcess::spawn(env)?;
    wait_for(&mut server, "/readyz").await?;
    Ok(server)
}

/// Waits until `path` answers 200 (blocking this worker only: the runtime
/// is multi-threaded).
pub async fn wait_for(server: &mut ServerProcess, path: &str) -> anyhow::Result<()> {
    tokio::task::block_in_place(|| server.wait_for(path, SERVER_START))?;
    Ok(())
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

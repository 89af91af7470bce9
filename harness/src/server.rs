//! The `realtime-server` binary as a child process, for the end-to-end tests
//! and the benchmarks.
//!
//! Owns: finding the binary the build made, starting it with exactly an
//! environment (the server reads nothing else), waiting until it serves, and
//! what a harness reads of it (HTTP endpoints, its log). It does not know
//! what the variables mean: [`crate::TempPostgres::server_env`] writes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use crate::process::{command_with_env, LoggedProcess, ProcessError};

/// The variable that points the harnesses at another server binary.
pub const SERVER_BIN_ENV: &str = "REALTIME_SERVER_BIN";

/// The workspace binary `name`: `$override_var`, else beside the running
/// executable (a binary in `target/<profile>/`), else one directory up (a
/// test in `target/<profile>/deps/`).
pub fn workspace_bin(name: &str, override_var: &str) -> Result<PathBuf, ProcessError> {
    if let Some(p) = std::env::var_os(override_var).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|source| ProcessError::Io {
        what: name.to_string(),
        step: "locating the running executable".into(),
        source,
    })?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let candidates = [dir.join(name), dir.parent().unwrap_or(dir).join(name)];
    match candidates.iter().find(|p| p.is_file()) {
        Some(bin) => Ok(bin.clone()),
        None => Err(ProcessError::MissingBinary {
            // Where cargo puts it: a test runs from `deps/`, one level down.
            path: if dir.ends_with("deps") {
                candidates[1].clone()
            } else {
                candidates[0].clone()
            },
            hint: format!(
                "build it with `cargo build -p {name}` (tests/run builds every binary), or set \
                 {override_var}"
            ),
        }),
    }
}

/// `realtime-server`: `$REALTIME_SERVER_BIN`, else the one this build made.
pub fn server_bin() -> Result<PathBuf, ProcessError> {
    workspace_bin("realtime-server", SERVER_BIN_ENV)
}

/// A running server, stopped on drop.
#[derive(Debug)]
pub struct ServerProcess {
    process: LoggedProcess,
    /// Where it serves HTTP and WebSocket, on 127.0.0.1 (its `PORT`).
    pub port: u16,
    /// The environment it was started with.
    pub env: BTreeMap<String, String>,
}

impl ServerProcess {
    /// Starts [`server_bin`] with exactly `env` (plus `PATH`), without
    /// waiting. `env` must hold `PORT`.
    pub fn spawn(env: BTreeMap<String, String>) -> Result<ServerProcess, ProcessError> {
        let port = env
            .get("PORT")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| ProcessError::Io {
                what: "realtime-server".into(),
                step: format!("reading PORT from its environment {env:?}"),
                source: std::io::Error::other("no PORT, or not a port number"),
            })?;
        let process =
            LoggedProcess::spawn(command_with_env(server_bin()?, &env), "realtime-server")?;
        Ok(ServerProcess { process, port, env })
    }

    /// Waits until GET `path` answers 200 (`/healthz`: it serves; `/readyz`:
    /// its replication stream is live).
    pub fn wait_for(&mut self, path: &str, timeout: Duration) -> Result<String, ProcessError> {
        self.process.wait_http_ok(self.port, path, timeout)
    }

    /// The WebSocket URL of protocol version `vsn` ("1.0.0", "2.0.0").
    pub fn ws_url(&self, vsn: &str) -> String {
        format!("ws://127.0.0.1:{}/socket/websocket?vsn={vsn}", self.port)
    }

    /// GET `path` on the server: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        crate::net::http_get(self.port, path)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Log lines at WARN or above (a slow-consumer close shows up here).
    pub fn warnings(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .map(str::to_string)
            .collect()
    }

    /// Sends `signal` ("TERM", "KILL") and waits up to `timeout` for the exit.
    pub fn stop(&mut self, signal: &str, timeout: Duration) -> Result<ExitStatus, ProcessError> {
        self.process.stop(signal, timeout)
    }
}

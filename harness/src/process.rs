//! A program run as a child process with its output in a log file: the one
//! wrapper the harnesses start programs with (the server, the operator,
//! `realtime-server dev`, etcd, kube-apiserver).
//!
//! Owns: spawning with stdin closed and stdout and stderr appended to one log
//! file, reading that log, waiting until the program is ready (or has died,
//! which ends the wait at once with its log), signals, and stopping it on
//! drop, also when a test panics, whose output then shows the log.
//!
//! Programs whose output is read as data (a pipe) are not its business.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How often [`LoggedProcess::wait_for`] looks again.
const POLL: Duration = Duration::from_millis(20);

/// Why a child process did not do what was expected of it. Each error names
/// the program and, where it ran, carries its log.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("starting {what} ({program}): {source}")]
    Spawn {
        what: String,
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {step}: {source}")]
    Io {
        what: String,
        step: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} exited ({status}) while waiting for {waiting_for}; its log:\n{log}")]
    Exited {
        what: String,
        status: ExitStatus,
        waiting_for: String,
        log: String,
    },
    #[error("{what}: no {waiting_for} after {waited:?}; its log:\n{log}")]
    Timeout {
        what: String,
        waiting_for: String,
        waited: Duration,
        log: String,
    },
    #[error("{path} does not exist: {hint}")]
    MissingBinary { path: PathBuf, hint: String },
}

/// Where the output goes: a temporary file, or a file the caller keeps.
enum Log {
    Temp(tempfile::NamedTempFile),
    At(PathBuf),
}

impl Log {
    fn path(&self) -> &Path {
        match self {
            Log::Temp(f) => f.path(),
            Log::At(p) => p,
        }
    }
}

/// A running child process. Dropping it stops the process (see
/// [`LoggedProcess::stop_on_drop_with`]) and, when the thread is panicking,
/// prints its log.
pub struct LoggedProcess {
    child: Option<Child>,
    log: Log,
    what: String,
    /// On drop: the signal to send first and how long to wait for the exit
    /// before SIGKILL. `None`: SIGKILL at once.
    graceful: Option<(&'static str, Duration)>,
    log_on_panic: bool,
}

impl std::fmt::Debug for LoggedProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoggedProcess")
            .field("what", &self.what)
            .field("pid", &self.child.as_ref().map(Child::id))
            .field("log", &self.log.path())
            .finish()
    }
}

/// `program` with exactly `env` plus this process's `PATH`: what a container
/// or a pod would see, not the test runner's environment.
pub fn command_with_env(program: impl AsRef<OsStr>, env: &BTreeMap<String, String>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env);
    cmd
}

impl LoggedProcess {
    /// Spawns `cmd` (`what` names it in errors and logs) with its output in
    /// a new temporary file, removed on drop.
    pub fn spawn(cmd: Command, what: &str) -> Result<LoggedProcess, ProcessError> {
        let log = tempfile::NamedTempFile::new().map_err(|source| ProcessError::Io {
            what: what.to_string(),
            step: "creating a temporary log file".into(),
            source,
        })?;
        Self::spawn_into(cmd, what, Log::Temp(log))
    }

    /// Spawns `cmd` with its output in `log`, created or truncated, which
    /// stays after the process (a directory the caller removes).
    pub fn spawn_logging_to(
        cmd: Command,
        what: &str,
        log: &Path,
    ) -> Result<LoggedProcess, ProcessError> {
        File::create(log).map_err(|source| ProcessError::Io {
            what: what.to_string(),
            step: format!("creating {}", log.display()),
            source,
        })?;
        Self::spawn_into(cmd, what, Log::At(log.to_path_buf()))
    }

    fn spawn_into(mut cmd: Command, what: &str, log: Log) -> Result<LoggedProcess, ProcessError> {
        let io_err = |step: String| {
            let what = what.to_string();
            move |source| ProcessError::Io { what, step, source }
        };
        let path = log.path().to_path_buf();
        let out = File::options()
            .append(true)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        let err = out
            .try_clone()
            .map_err(io_err(format!("opening {}", path.display())))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                what: what.to_string(),
                program: Path::new(cmd.get_program()).display().to_string(),
                source,
            })?;
        Ok(LoggedProcess {
            child: Some(child),
            log,
            what: what.to_string(),
            graceful: None,
            log_on_panic: true,
        })
    }

    /// On drop, send `signal` (e.g. "INT", "TERM") and wait up to `grace`
    /// for the exit before SIGKILL: for a program that must clean up after
    /// itself, as `realtime-server dev` removes its PostgreSQL.
    pub fn stop_on_drop_with(mut self, signal: &'static str, grace: Duration) -> Self {
        self.graceful = Some((signal, grace));
        self
    }

    /// Do not print the log when dropped by a panicking test (for programs
    /// whose log is long and reported otherwise).
    pub fn quiet_on_panic(mut self) -> Self {
        self.log_on_panic = false;
        self
    }

    /// What this process is, as given at spawn.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// The OS process id. Panics once the process was stopped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the process is running").id()
    }

    /// The exit status if it has exited, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Everything it wrote so far (invalid UTF-8 replaced).
    pub fn log(&self) -> String {
        let mut bytes = Vec::new();
        let _ = File::open(self.log.path()).and_then(|mut f| f.read_to_end(&mut bytes));
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// Polls `ready` until it gives `Some`; fails at once when the process
    /// exits first, or after `timeout`, with the log. `waiting_for` says
    /// what in those errors ("/readyz to answer 200").
    pub fn wait_for<T>(
        &mut self,
        waiting_for: &str,
        timeout: Duration,
        mut ready: impl FnMut(&Self) -> Option<T>,
    ) -> Result<T, ProcessError> {
        let started = Instant::now();
        loop {
            if let Some(v) = ready(self) {
                return Ok(v);
            }
            if let Some(status) = self.exited() {
                return Err(ProcessError::Exited {
                    what: self.what.clone(),
                    status,
                    waiting_for: waiting_for.to_string(),
                    log: self.log(),
                });
            }
            if started.elapsed() > timeout {
                return Err(ProcessError::Timeout {
                    what: self.what.clone(),
                    waiting_for: waiting_for.to_string(),
                    waited: started.elapsed(),
                    log: self.log(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until GET `path` on 127.0.0.1:`port` answers 200; its body.
    pub fn wait_http_ok(
        &mut self,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> Result<String, ProcessError> {
        self.wait_for(
            &format!("200 from {path}"),
            timeout,
            |_| match crate::net::http_get(port, path) {
                Some((200, body)) => Some(body),
                _ => None,
            },
        )
    }

    /// Sends `signal` (a name `kill` knows: "TERM", "INT", "KILL", "STOP").
    pub fn signal(&self, signal: &str) -> Result<(), ProcessError> {
        let pid = self.pid();
        let io_err = |source| ProcessError::Io {
            what: self.what.clone(),
            step: format!("kill -{signal} {pid}"),
            source,
        };
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .map_err(io_err)?;
        if status.success() {
            Ok(())
        } else {
            Err(io_err(io::Error::other(format!(
                "kill exited with {status}"
            ))))
        }
    }

    /// Sends `signal` and waits up to `timeout` for the exit. Past it the
    /// process is killed and the error carries its log. The process is
    /// stopped either way.
    pub fn stop(&mut self, signal: &str, timeout: Duration) -> Result<ExitStatus, ProcessError> {
        self.signal(signal)?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                self.child = None;
                return Ok(status);
            }
            if started.elapsed() > timeout {
                let log = self.log();
                self.kill();
                return Err(ProcessError::Timeout {
                    what: self.what.clone(),
                    waiting_for: format!("exit after SIG{signal} (killed)"),
                    waited: started.elapsed(),
                    log,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILL and reap, if still running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LoggedProcess {
    fn drop(&mut self) {
        if let Some((signal, grace)) = self.graceful {
            if self.child.is_some() {
                let _ = self.stop(signal, grace);
            }
        }
        self.kill();
        if self.log_on_panic && std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.what, self.log());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        cmd
    }

    #[test]
    fn output_goes_to_the_log_and_readiness_is_polled() {
        let mut p = LoggedProcess::spawn(sh("echo out; echo err >&2; sleep 30"), "sh").unwrap();
        let seen = p
            .wait_for("both lines", Duration::from_secs(10), |p| {
                let log = p.log();
                (log.contains("out") && log.contains("err")).then_some(log)
            })
            .unwrap();
        assert!(seen.contains("out\n") && seen.contains("err\n"), "{seen}");
        assert!(p.exited().is_none());
    }

    #[test]
    fn a_process_that_dies_ends_the_wait_with_its_log() {
        let mut p = LoggedProcess::spawn(sh("echo dying; exit 3"), "sh").unwrap();
        match p.wait_for("never", Duration::from_secs(30), |_| None::<()>) {
            Err(ProcessError::Exited { status, log, .. }) => {
                assert_eq!(status.code(), Some(3));
                assert!(log.contains("dying"), "{log}");
            }
            other => panic!("expected Exited, got {other:?}"),
        }
    }

    #[test]
    fn a_wait_times_out_naming_what_it_waited_for() {
        let mut p = LoggedProcess::spawn(sh("sleep 30"), "sleeper").unwrap();
        let e = p
            .wait_for("a miracle", Duration::from_millis(100), |_| None::<()>)
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("sleeper") && text.contains("a miracle"),
            "{text}"
        );
    }

    #[test]
    fn stop_sends_the_signal_and_reports_the_exit() {
        let mut p = LoggedProcess::spawn(
            sh("trap 'echo bye; exit 7' TERM; echo ready; while :; do sleep 0.05; done"),
            "sh",
        )
        .unwrap();
        p.wait_for("ready", Duration::from_secs(10), |p| {
            p.log().contains("ready").then_some(())
        })
        .unwrap();
        let status = p.stop("TERM", Duration::from_secs(10)).unwrap();
        assert_eq!(status.code(), Some(7));
        assert!(p.log().contains("bye"));
    }

    #[test]
    fn drop_kills_the_process() {
        let p = LoggedProcess::spawn(sh("sleep 30"), "sh").unwrap();
        let pid = p.pid();
        drop(p);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still exists after drop"
        );
    }

    #[test]
    fn a_missing_program_is_named() {
        let e = LoggedProcess::spawn(Command::new("/nonexistent/prog"), "prog").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/prog"), "{e}");
    }

    #[test]
    fn the_command_sees_only_the_given_environment_and_path() {
        let env = BTreeMap::from([("ONLY".to_string(), "this".to_string())]);
        let mut cmd = command_with_env("sh", &env);
        cmd.arg("-c").arg("env");
        let mut p = LoggedProcess::spawn(cmd, "env").unwrap();
        p.wait_for("the exit", Duration::from_secs(10), |_| None::<()>)
            .unwrap_err();
        let mut names: Vec<String> = p
            .log()
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_string()))
            .filter(|k| !["PWD", "OLDPWD", "SHLVL", "_"].contains(&k.as_str()))
            .collect();
        names.sort();
        assert_eq!(names, ["ONLY", "PATH"].map(String::from).to_vec());
    }
}

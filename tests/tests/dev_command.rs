//! `realtime-server dev`, the quick start, as a user runs it: the real binary
//! with no database set up by hand.
//!
//! - It starts, serves the page, the demo API and a live stream, and on SIGINT
//!   exits 0 leaving no PostgreSQL process and no temporary directory behind.
//! - Its page works in a real browser: tests/browser/dev-page.mjs drives
//!   Debian's headless Chromium with playwright-core (SQL insert seen on the
//!   page; update and delete through the page's form agree with the database)
//!   and saves screenshots in tests/artifacts/.
//!
//! Needs PostgreSQL, Node 20+, `chromium` and `npm ci` in tests/browser:
//! tests/setup.sh installs them all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use realtime_harness::net::{free_port, http_get, port_is_free};
use realtime_harness::process::command_with_env;
use realtime_harness::LoggedProcess;
use realtime_tests::server::server_bin;

/// From the spawn to a live stream: builds a cluster, so allow for a busy machine.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// From SIGINT to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// The whole browser script.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(180);

/// A running `realtime-server dev`, its output in a file. Dropped, it gets
/// SIGINT first, so that even a failed test removes its cluster.
struct Dev {
    process: LoggedProcess,
    port: u16,
}

impl Dev {
    /// Starts `realtime-server dev` on a free port and waits until it printed
    /// its banner and `/readyz` answers 200.
    fn start() -> Dev {
        let port = free_port().expect("free port");
        let env = BTreeMap::from([
            ("PORT".to_string(), port.to_string()),
            ("RUST_LOG".into(), "info".into()),
            ("NO_COLOR".into(), "1".into()),
        ]);
        let mut cmd = command_with_env(server_bin(), &env);
        cmd.arg("dev");
        let process = LoggedProcess::spawn(cmd, "realtime-server dev")
            .expect("spawn realtime-server dev")
            .stop_on_drop_with("INT", EXIT_TIMEOUT);
        let mut dev = Dev { process, port };
        dev.process
            .wait_for("its banner and 200 from /readyz", READY_TIMEOUT, |p| {
                (value(&p.log(), "files:").is_some()
                    && matches!(http_get(port, "/readyz"), Some((200, _))))
                .then_some(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
        dev
    }

    /// Everything it printed so far.
    fn log(&self) -> String {
        self.process.log()
    }

    fn database_url(&self) -> String {
        value(&self.log(), "database:").expect("a `database:` line")
    }

    fn temp_dir(&self) -> PathBuf {
        PathBuf::from(value(&self.log(), "files:").expect("a `files:` line"))
    }

    /// Sends SIGINT, as Ctrl-C does, and waits for the exit.
    fn interrupt(&mut self) -> ExitStatus {
        self.process
            .stop("INT", EXIT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The first word after `key` on a banner line (`database:`, `files:`).
fn value(log: &str, key: &str) -> Option<String> {
    log.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix(key)?;
        rest.split_whitespace().next().map(str::to_string)
    })
}

/// Processes whose command line mentions `needle` (e.g. a postmaster's `-D`).
fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

fn db_port(url: &str) -> u16 {
    // postgres://user@host:port/db
    url.rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

#[test]
fn dev_starts_serves_and_leaves_nothing_behind_on_sigint() {
    let mut dev = Dev::start();
    let dir = dev.temp_dir();
    let url = dev.database_url();
    let dir_str = dir.to_str().expect("utf-8 temp dir").to_string();
    assert!(
        dir.join("data").is_dir(),
        "{} holds the cluster's data",
        dir.display()
    );
    let running = processes_mentioning(&dir_str);
    assert!(
        !running.is_empty(),
        "PostgreSQL runs with its data in {dir_str} (found no such process)"
    );

    let (status, page) = http_get(dev.port, "/").expect("GET /");
    assert_eq!(status, 200);
    assert!(page.contains("<title>realtime"), "the page is served at /");
    let (status, info) = http_get(dev.port, "/dev/info").expect("GET /dev/info");
    assert_eq!(status, 200, "{info}");
    assert!(info.contains("\"dev\":true"), "{info}");
    let (status, rows) = http_get(dev.port, "/dev/rows").expect("GET /dev/rows");
    assert_eq!(status, 200, "{rows}");
    assert!(
        rows.contains("Run realtime-server dev"),
        "the demo rows: {rows}"
    );
    let banner = dev.log();
    assert!(
        banner.contains(&format!("http://127.0.0.1:{}/", dev.port)) && banner.contains(" -c \""),
        "the banner shows the page's URL and a psql line:\n{banner}"
    );

    let status = dev.interrupt();
    assert_eq!(
        status.code(),
        Some(0),
        "exit code after SIGINT; output:\n{}",
        dev.log()
    );
    assert!(
        !dir.exists(),
        "{} is left behind after SIGINT",
        dir.display()
    );
    let left = processes_mentioning(&dir_str);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(
        port_is_free(db_port(&url), Duration::from_secs(10)),
        "PostgreSQL's port {} is still taken",
        db_port(&url)
    );
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

#[tokio::test]
async fn dev_page_shows_changes_and_its_form_changes_the_database_in_chromium() {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.is_file(),
        "{} is missing: run tests/setup.sh (it installs Debian's `chromium`), or set CHROMIUM",
        chromium.display()
    );
    let browser = browser_dir();
    assert!(
        browser
            .join("node_modules")
            .join("playwright-core")
            .is_dir(),
        "{}/node_modules is missing: run `npm ci --no-audit --no-fund` in {} (tests/setup.sh does)",
        browser.display(),
        browser.display()
    );

    let mut dev = tokio::task::spawn_blocking(Dev::start).await.unwrap();
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts");
    let child = tokio::process::Command::new("node")
        .arg("dev-page.mjs")
        .current_dir(&browser)
        .env("REALTIME_URL", format!("http://127.0.0.1:{}/", dev.port))
        .env("DATABASE_URL", dev.database_url())
        .env("ARTIFACTS_DIR", &artifacts)
        .env("CHROMIUM", &chromium)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn `node` (install Node 20+; tests/setup.sh does)");
    let output = match tokio::time::timeout(BROWSER_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.expect("wait for node"),
        Err(_) => panic!("dev-page.mjs did not finish within {BROWSER_TIMEOUT:?} (killed)"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("PASS"),
        "tests/browser/dev-page.mjs failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
    assert!(
        artifacts.join("dev-page.png").is_file(),
        "no screenshot in {}",
        artifacts.display()
    );
    eprintln!("{stdout}");

    let status = tokio::task::spawn_blocking(move || {
        let status = dev.interrupt();
        (status, dev)
    })
    .await
    .unwrap();
    assert_eq!(status.0.code(), Some(0), "exit code after SIGINT");
}

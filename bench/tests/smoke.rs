//! Every benchmark scenario still runs: each one with `--smoke` (tiny sizes)
//! against the server binary of this build, asserting only that it finishes
//! and prints its figures and ratios. No timing is asserted: numbers belong
//! in BENCHMARKS.md, not in a test.

use std::path::PathBuf;
use std::process::Command;

/// The server binary beside this test's `deps/` (`REALTIME_SERVER_BIN`
/// overrides), as the end-to-end tests find it.
fn server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("REALTIME_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current test executable");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = dir.join("realtime-server");
    assert!(
        bin.exists(),
        "{} does not exist: build it with `cargo build -p realtime-server` (cargo nextest run \
         --workspace builds it)",
        bin.display()
    );
    bin
}

fn smoke(scenario: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_realtime-bench"))
        .args([scenario, "--smoke"])
        .env("REALTIME_SERVER_BIN", server_bin())
        .env_remove("CARGO")
        .output()
        .expect("run realtime-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "realtime-bench {scenario} --smoke failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let prefix = format!("ratio {scenario}.");
    assert!(
        stdout.lines().any(|l| l.starts_with(&prefix)),
        "realtime-bench {scenario} printed no `{prefix}` line:\n{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("figure ")),
        "realtime-bench {scenario} printed no figure:\n{stdout}"
    );
}

#[test]
fn ingest_runs() {
    smoke("ingest");
}

#[test]
fn latency_runs() {
    smoke("latency");
}

#[test]
fn fanout_runs() {
    smoke("fanout");
}

#[test]
fn connections_runs() {
    smoke("connections");
}

#[test]
fn filters_runs() {
    smoke("filters");
}

#[test]
fn dbcost_runs() {
    smoke("dbcost");
}

//! Every benchmark scenario still runs: each one with `--smoke` (tiny sizes)
//! against the server binary of this build, asserting only that it finishes
//! and prints its figures and ratios. No timing is asserted: numbers belong
//! in BENCHMARKS.md, not in a test.

use std::process::Command;

fn smoke(scenario: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_realtime-bench"))
        .args([scenario, "--smoke"])
        .env(
            "REALTIME_SERVER_BIN",
            realtime_harness::server::server_bin().unwrap_or_else(|e| panic!("{e}")),
        )
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

#[test]
fn cluster_runs() {
    smoke("cluster");
}

#[test]
fn rls_runs() {
    smoke("rls");
}

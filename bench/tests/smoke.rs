//! Every benchmark scenario still runs: each one with `--smoke` (tiny sizes)
//! against the server binary of this build, asserting only that it finishes
//! and prints its figures and ratios. No timing is asserted: numbers belong
//! in BENCHMARKS.md, not in a test.

use std::path::Path;
use std::process::Command;

/// Runs `realtime-bench <scenario> --smoke <extra>` and returns its stdout.
fn smoke_with(scenario: &str, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_realtime-bench"))
        .args([scenario, "--smoke"])
        .args(extra)
        .env(
            "REALTIME_SERVER_BIN",
            realtime_harness::server::server_bin().unwrap_or_else(|e| panic!("{e}")),
        )
        .env_remove("CARGO")
        .output()
        .expect("run realtime-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "realtime-bench {scenario} --smoke {extra:?} failed ({}):\n{stdout}\n{stderr}",
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
    stdout
}

fn smoke(scenario: &str) {
    smoke_with(scenario, &[]);
}

/// The SVG chart `name` in `dir`, announced on stdout, with its title and
/// series names in it.
fn assert_chart(dir: &Path, name: &str, stdout: &str, holds: &[&str]) {
    let path = dir.join(format!("{name}.svg"));
    assert!(
        stdout.contains(&format!("chart {}", path.display())),
        "no `chart {}` line:\n{stdout}",
        path.display()
    );
    let svg = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}\n{stdout}", path.display()));
    assert!(
        svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "{} is not an SVG document:\n{svg}",
        path.display()
    );
    for text in holds {
        assert!(
            svg.contains(&format!(">{text}<")) || svg.contains(&format!("\n{text}\n")),
            "{} has no text {text:?}:\n{svg}",
            path.display()
        );
    }
}

#[test]
fn ingest_runs() {
    smoke("ingest");
}

#[test]
fn latency_runs_and_charts() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = smoke_with("latency", &["--charts", dir.path().to_str().unwrap()]);
    assert_chart(dir.path(), "latency", &stdout, &["server", "percentile"]);
}

#[test]
fn fanout_runs_per_size_and_charts() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = smoke_with(
        "fanout",
        &[
            "--sockets",
            "20,40",
            "--charts",
            dir.path().to_str().unwrap(),
        ],
    );
    for sockets in [20, 40] {
        let title = format!("== fan-out: {sockets} realtime-js 1.x sockets on one topic");
        assert!(stdout.contains(&title), "no `{title}`:\n{stdout}");
    }
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("ratio fanout.server_vs_floor_cpu "))
            .count(),
        2,
        "one CPU ratio per size:\n{stdout}"
    );
    assert_chart(
        dir.path(),
        "fanout",
        &stdout,
        &["server", "floor", "sockets on the topic"],
    );
}

#[test]
fn fanout_runs_with_realtime_js_2_channels() {
    let stdout = smoke_with("fanout", &["--client", "v2"]);
    let title = "realtime-js 2.x sockets, one postgres_changes binding each";
    assert!(stdout.contains(title), "no `{title}`:\n{stdout}");
    assert!(
        stdout.contains("ratio fanout.server_vs_floor_cpu "),
        "{stdout}"
    );
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

#[test]
fn storm_runs_and_charts() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = smoke_with("storm", &["--charts", dir.path().to_str().unwrap()]);
    for line in [
        "figure storm.rejoin_after_start = ",
        "figure storm.lost_changes = ",
        "figure storm.duplicate_changes = ",
        "ratio storm.rejoin_vs_broadcast_join = ",
    ] {
        assert!(stdout.contains(line), "no `{line}`:\n{stdout}");
    }
    // Every socket came back after the kill.
    let rejoined = stdout
        .lines()
        .find(|l| l.contains("sockets rejoined;"))
        .unwrap_or_else(|| panic!("no rejoin count:\n{stdout}"));
    assert!(
        rejoined
            .trim_start()
            .starts_with("50 of 50 sockets rejoined"),
        "{rejoined}\n{stdout}"
    );
    assert_chart(
        dir.path(),
        "storm",
        &stdout,
        &[
            "sockets joined",
            "seconds",
            "rejoin after the restart (postgres_changes)",
        ],
    );
}

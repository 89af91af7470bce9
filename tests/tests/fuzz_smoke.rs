//! The cargo-fuzz targets of `fuzz/` (`frame`, `binary_frame`, `filter`:
//! the parsers that take client input), each run for a bounded time over a
//! copy of its seed corpus (`fuzz/corpus/<target>/`). A panic, a failed
//! assertion of the target, a timeout or running out of memory
//! fails the test, which prints the input that caused it.
//!
//! The corpus the run grows and any crash input stay in a temporary
//! directory, never in the source tree (a failing run keeps its directory
//! and names it). `FUZZ_SMOKE_SECONDS` sets the time per target (20 s).
//!
//! The targets are built by `cargo fuzz build` (cargo-fuzz, installed by
//! tests/setup.sh). tests/run builds them before the suite starts, so the
//! build here is a no-op there; run alone, this test builds them itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use realtime_tests::chart::repo_root;

/// The time each target is fuzzed, unless `FUZZ_SMOKE_SECONDS` says.
const DEFAULT_SECONDS: u64 = 20;

/// A single input that takes longer than this is a failure (a parser that
/// is slow on some input is a way to stop the server).
const INPUT_TIMEOUT: Duration = Duration::from_secs(10);

fn seconds() -> u64 {
    match std::env::var("FUZZ_SMOKE_SECONDS") {
        Ok(s) if !s.is_empty() => s
            .parse()
            .unwrap_or_else(|_| panic!("FUZZ_SMOKE_SECONDS={s:?}: not a number of seconds")),
        _ => DEFAULT_SECONDS,
    }
}

fn fuzz_dir() -> PathBuf {
    repo_root().join("fuzz")
}

/// The host's target triple (`rustc -vV`): cargo-fuzz builds for it.
fn host_triple() -> String {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap_or_else(|| panic!("rustc -vV names no host:\n{text}"))
        .to_string()
}

/// How tests/run builds the targets (the same flags, or this test's build
/// would redo it): optimized, with debug assertions, coverage instrumented,
/// no sanitizer (the server has no unsafe code; what the targets look for is
/// a panic or a failed assertion), 16 codegen units (half the cold build
/// time of one).
const FUZZ_BUILD_FLAGS: [&str; 4] = ["--sanitizer", "none", "--codegen-units", "16"];

/// Builds the target as tests/run does and returns its binary.
fn build(target: &str) -> PathBuf {
    let version = Command::new("cargo").args(["fuzz", "--version"]).output();
    assert!(
        matches!(&version, Ok(out) if out.status.success()),
        "cargo-fuzz is not installed: run tests/setup.sh (cargo install --locked cargo-fuzz)"
    );
    let triple = host_triple();
    let target_dir = fuzz_dir().join("target");
    let mut cargo = Command::new("cargo");
    // Without what cargo sets for this test (CARGO_MANIFEST_DIR, CARGO_PKG_*,
    // ...): build scripts watch some of them (ring's reruns when
    // CARGO_MANIFEST_DIR changes), and the build must be the one tests/run
    // made, not a rebuild of the dependencies.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_") && name != "CARGO_HOME" {
            cargo.env_remove(&*name);
        }
    }
    let out = cargo
        .args(["fuzz", "build", target, "--target", &triple])
        .args(FUZZ_BUILD_FLAGS)
        .arg("--fuzz-dir")
        .arg(fuzz_dir())
        .arg("--target-dir")
        .arg(&target_dir)
        // cargo-fuzz passes rustc the nightly-only flags of its
        // instrumentation (sancov); the machines have the
        // stable toolchain only, which accepts them with this.
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(repo_root())
        .output()
        .expect("run cargo fuzz build");
    assert!(
        out.status.success(),
        "cargo fuzz build {target} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let binary = target_dir.join(&triple).join("release").join(target);
    assert!(
        binary.is_file(),
        "cargo fuzz build {target} made no {}",
        binary.display()
    );
    binary
}

/// Copies the seeds of `target` into `dir`; returns how many.
fn copy_seeds(target: &str, dir: &Path) -> usize {
    let seeds = fuzz_dir().join("corpus").join(target);
    std::fs::create_dir_all(dir).unwrap();
    let mut n = 0;
    for entry in std::fs::read_dir(&seeds)
        .unwrap_or_else(|e| panic!("the seed corpus {}: {e}", seeds.display()))
    {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        n += 1;
    }
    n
}

/// An input as text a person can read, and as the exact bytes.
fn show_input(bytes: &[u8]) -> String {
    format!(
        "{} bytes\n  as text: {:?}\n  bytes: {:?}",
        bytes.len(),
        String::from_utf8_lossy(bytes),
        bytes
    )
}

/// Runs the target over a copy of its seeds for the smoke time; panics with
/// the crashing input and the fuzzer's report if it finds anything.
fn smoke(target: &str) {
    let binary = build(target);
    let work = tempfile::Builder::new()
        .prefix(&format!("fuzz-{target}-"))
        .tempdir()
        .unwrap();
    let corpus = work.path().join("corpus");
    let artifacts = work.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let seeds = copy_seeds(target, &corpus);
    assert!(
        seeds >= 5,
        "{target}: only {seeds} seeds in fuzz/corpus/{target}"
    );

    let secs = seconds();
    let out = Command::new(&binary)
        .arg(&corpus)
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-timeout={}", INPUT_TIMEOUT.as_secs()))
        // libFuzzer wants the separator at the end of the prefix.
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        // The panic's message, without a backtrace that would push it out
        // of the report's tail: the input reproduces it.
        .env("RUST_BACKTRACE", "0")
        .current_dir(work.path())
        .output()
        .expect("run the fuzz target");
    let report = String::from_utf8_lossy(&out.stderr);

    let mut found: Vec<PathBuf> = std::fs::read_dir(&artifacts)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    found.sort();
    if !out.status.success() || !found.is_empty() {
        let inputs: Vec<String> = found
            .iter()
            .map(|p| {
                let bytes = std::fs::read(p).unwrap();
                format!("{}: {}", p.display(), show_input(&bytes))
            })
            .collect();
        let lines: Vec<&str> = report.lines().collect();
        let tail = &lines[lines.len().saturating_sub(60)..];
        let kept = work.keep();
        panic!(
            "fuzz target {target} failed ({}) after at most {secs} s.\n\
             Input(s) that caused it (reproduce with `RUSTC_BOOTSTRAP=1 cargo fuzz run {target} FILE`):\n{}\n\
             The run's directory is kept: {}\n\
             The fuzzer's report (last lines):\n{}",
            out.status,
            if inputs.is_empty() {
                "  none written".to_string()
            } else {
                inputs.join("\n")
            },
            kept.display(),
            tail.join("\n"),
        );
    }

    // It ran: libFuzzer read the seeds and executed inputs beyond them.
    let runs: u64 = report
        .lines()
        .find_map(|l| l.strip_prefix("Done ")?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| {
            panic!("{target}: no \"Done N runs\" in the fuzzer's report:\n{report}")
        });
    assert!(
        runs > seeds as u64,
        "{target}: only {runs} runs in {secs} s over {seeds} seeds:\n{report}"
    );
    assert!(
        report.contains("INITED"),
        "{target}: the fuzzer did not load its corpus:\n{report}"
    );
    eprintln!("{target}: {runs} inputs in {secs} s, no failure");
}

#[test]
fn the_text_frame_decoder_survives_fuzzing_from_real_client_frames() {
    smoke("frame");
}

#[test]
fn the_binary_frame_decoder_survives_fuzzing_from_real_broadcast_pushes() {
    smoke("binary_frame");
}

#[test]
fn the_filter_parser_survives_fuzzing_from_real_filters() {
    smoke("filter");
}

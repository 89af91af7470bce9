//! The real `@supabase/realtime-js` 1.x client (tests/js, pinned in its
//! package.json) against the real server binary and a real PostgreSQL: runs
//! `node --test tests/js/realtime-js-v1.test.mjs` and expects it to pass.
//!
//! Needs Node (tested with 20) and `npm ci` in tests/js; tests/setup.sh sets up both.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use realtime_tests::server::ServerProcess;
use realtime_tests::TempPostgres;

/// How long the whole Node test file may take.
const NODE_TIMEOUT: Duration = Duration::from_secs(120);

/// The table the Node test subscribes to, with a column of each kind that
/// realtime-js converts, and the whole old row on UPDATE and DELETE.
const SCHEMA: &str = "
    CREATE TABLE profiles (
        id bigint PRIMARY KEY,
        name text,
        score numeric,
        active bool,
        tags text[],
        meta jsonb,
        created_at timestamptz
    );
    ALTER TABLE profiles REPLICA IDENTITY FULL;
    CREATE PUBLICATION realtime_test FOR ALL TABLES;
";

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

#[tokio::test]
async fn realtime_js_v1_receives_changes_through_its_own_api() {
    let js = js_dir();
    assert!(
        js.join("node_modules")
            .join("@supabase")
            .join("realtime-js")
            .is_dir(),
        "{}/node_modules is missing: run `npm ci --no-audit --no-fund` in {} (tests/setup.sh does)",
        js.display(),
        js.display()
    );

    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .expect("start PostgreSQL");
    let db = pg.connect().await.expect("connect");
    db.batch_execute(SCHEMA).await.expect("schema");
    let env = ServerProcess::env_for(&pg, &["realtime_test"]);
    let server = tokio::task::spawn_blocking(move || ServerProcess::start(env))
        .await
        .unwrap();

    let child = tokio::process::Command::new("node")
        .arg("--test")
        .arg("--test-reporter=tap")
        .arg("realtime-js-v1.test.mjs")
        .current_dir(&js)
        .env(
            "REALTIME_URL",
            format!("ws://127.0.0.1:{}/socket", server.port),
        )
        .env("DATABASE_URL", pg.url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn `node` (install Node; tests/setup.sh does)");
    let output = match tokio::time::timeout(NODE_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.expect("wait for node"),
        Err(_) => panic!("node --test did not finish within {NODE_TIMEOUT:?} (killed)"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "node --test realtime-js-v1.test.mjs failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
    // Four tests ran and passed (a file that ran nothing also exits 0).
    assert!(
        stdout.contains("# pass 4") && stdout.contains("# fail 0"),
        "unexpected node --test summary:\n{stdout}\n{stderr}"
    );
    drop(server);
}

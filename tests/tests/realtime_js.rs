//! The real `@supabase/realtime-js` clients (tests/js, pinned in its
//! package.json) against the real server binary and a real PostgreSQL: runs
//! `node --test` on each test file there and expects it to pass.
//!
//! - 1.x: `realtime-js-v1.test.mjs` (legacy topics).
//! - 2.x: `realtime-js-v2.test.mjs`, once for 2.8.4 and once for the newest
//!   2.x (with the `ws` transport and vsn 2.0.0): postgres_changes with every
//!   filter operator, typed values, Broadcast and Presence.
//! - Filters: `realtime-js-filters.test.mjs` (the newest 2.x's filter
//!   builder and 2.8.4's strings: every operator, negation, quoting and
//!   `select`, held to PostgreSQL's answer).
//! - 2.x with secured channels: `realtime-js-secured.test.mjs` (tokens at
//!   connect and join, a forged token, a token expiring under a channel).
//! - 2.x told when its bindings are live: `realtime-js-live.test.mjs`, with
//!   the server's slot held back at start (`system` messages,
//!   `replication_ready`, `postgres_changes_options.wait`; a write made at
//!   once always arrives).
//!
//! Needs Node (tested with 20) and `npm ci` in tests/js; tests/setup.sh sets up both.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use realtime_tests::server::ServerProcess;
use realtime_tests::TempPostgres;

/// How long the whole Node test file may take.
const NODE_TIMEOUT: Duration = Duration::from_secs(120);

/// The table the 1.x test subscribes to, with a column of each kind that
/// realtime-js converts, and the whole old row on UPDATE and DELETE.
const SCHEMA_V1: &str = "
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

/// The 2.x test's tables, one set per client version (`tag`), all with the
/// whole old row on UPDATE and DELETE.
fn v2_tables(tag: &str) -> String {
    format!(
        "
        CREATE TABLE messages_{tag} (id bigint PRIMARY KEY, room int, body text);
        ALTER TABLE messages_{tag} REPLICA IDENTITY FULL;
        CREATE TABLE typed_{tag} (
            id bigint PRIMARY KEY,
            i4 int,
            i8 bigint,
            num numeric,
            f8 float8,
            flag bool,
            off bool,
            doc jsonb,
            tags text[],
            nums int[],
            ts timestamptz,
            label text,
            nothing text
        );
        ALTER TABLE typed_{tag} REPLICA IDENTITY FULL;
        "
    )
}

/// The 2.x schema: both versions' tables in the publication, and a table
/// that no publication names (a binding on it must be refused).
fn schema_v2() -> String {
    let tags = ["2_8", "2_latest"];
    let mut sql: String = tags.iter().map(|t| v2_tables(t)).collect();
    sql.push_str("CREATE TABLE unpublished (id bigint PRIMARY KEY);\n");
    let tables: Vec<String> = tags
        .iter()
        .flat_map(|t| [format!("messages_{t}"), format!("typed_{t}")])
        .collect();
    sql.push_str(&format!(
        "CREATE PUBLICATION realtime_test FOR TABLE {};\n",
        tables.join(", ")
    ));
    sql
}

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// Starts PostgreSQL with `schema` and the server streaming the
/// `realtime_test` publication, runs `node --test` on `file` in tests/js, and
/// expects it to pass exactly `passes` tests.
async fn run_node_test(file: &str, schema: &str, packages: &[&str], passes: usize) {
    run_node_test_with(file, schema, packages, passes, None).await
}

/// [`run_node_test`], with channels secured by `jwt_secret` when given (the
/// Node test gets it as `JWT_SECRET` to sign its tokens).
async fn run_node_test_with(
    file: &str,
    schema: &str,
    packages: &[&str],
    passes: usize,
    jwt_secret: Option<&str>,
) {
    let js = js_dir();
    for package in packages {
        assert!(
            js.join("node_modules").join(package).is_dir(),
            "{}/node_modules/{package} is missing: run `npm ci --no-audit --no-fund` in {} (tests/setup.sh does)",
            js.display(),
            js.display()
        );
    }

    let (pg, _db) = TempPostgres::with_schema(schema)
        .await
        .expect("PostgreSQL with the schema");
    let mut env = ServerProcess::env_for(&pg, &["realtime_test"]);
    if let Some(secret) = jwt_secret {
        env.insert("SECURE_CHANNELS".into(), "true".into());
        env.insert("JWT_SECRET".into(), secret.into());
    }
    let server = tokio::task::spawn_blocking(move || ServerProcess::start(env))
        .await
        .unwrap();
    let node_env = [("JWT_SECRET", jwt_secret.unwrap_or_default())];
    run_node(file, &server, &pg, &node_env, passes).await;
    drop(server);
}

/// Runs `node --test` on `file` in tests/js against `server` and `pg`
/// (`REALTIME_URL`, `DATABASE_URL`, and `env`), and expects it to pass
/// exactly `passes` tests.
async fn run_node(
    file: &str,
    server: &ServerProcess,
    pg: &TempPostgres,
    env: &[(&str, &str)],
    passes: usize,
) {
    let js = js_dir();
    let child = tokio::process::Command::new("node")
        .arg("--test")
        .arg("--test-reporter=tap")
        .arg(file)
        .current_dir(&js)
        .env(
            "REALTIME_URL",
            format!("ws://127.0.0.1:{}/socket", server.port),
        )
        .env("DATABASE_URL", pg.url())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn `node` (install Node; tests/setup.sh does)");
    // Read both pipes while waiting, so a run that hangs still shows what it
    // printed.
    let mut child = child;
    let read = |pipe: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut p, &mut buf).await;
            }
            buf
        })
    };
    let out = read(child.stdout.take().map(|p| Box::new(p) as _));
    let err = read(child.stderr.take().map(|p| Box::new(p) as _));
    let status = tokio::time::timeout(NODE_TIMEOUT, child.wait()).await;
    if status.is_err() {
        let _ = child.kill().await;
    }
    let output = std::process::Output {
        status: child.wait().await.expect("wait for node"),
        stdout: out.await.unwrap(),
        stderr: err.await.unwrap(),
    };
    if status.is_err() {
        panic!(
            "node --test {file} did not finish within {NODE_TIMEOUT:?} (killed):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "node --test {file} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
    // Every test ran and passed (a file that ran nothing also exits 0).
    assert!(
        stdout.contains(&format!("# pass {passes}\n")) && stdout.contains("# fail 0"),
        "unexpected node --test summary for {file} (want {passes} passed):\n{stdout}\n{stderr}"
    );
}

#[tokio::test]
async fn realtime_js_v1_receives_changes_through_its_own_api() {
    run_node_test(
        "realtime-js-v1.test.mjs",
        SCHEMA_V1,
        &["@supabase/realtime-js"],
        4,
    )
    .await;
}

#[tokio::test]
async fn realtime_js_v2_changes_broadcast_and_presence_through_its_own_api() {
    // Per version: changes, typed values, refused bindings, broadcast,
    // broadcast over HTTP (JSON, and binary with the newest), the routes
    // under /realtime/v1, presence; the newest also broadcasts once more
    // over vsn 1.0.0, broadcasts bytes, and joins with presence disabled.
    run_node_test(
        "realtime-js-v2.test.mjs",
        &schema_v2(),
        &["realtime-js-2-8", "realtime-js-2-latest", "ws"],
        7 + 10,
    )
    .await;
}

/// The `application_name` of the session that holds the server's slot back.
const BLOCKER_APP: &str = "realtime_test_blocker";

#[tokio::test]
async fn realtime_js_v2_is_told_when_its_bindings_are_live_and_misses_no_write_made_then() {
    let js = js_dir();
    assert!(
        js.join("node_modules/realtime-js-2-latest").is_dir(),
        "run `npm ci` in {} (tests/setup.sh does)",
        js.display()
    );
    let (pg, _db) = TempPostgres::with_schema(
        "CREATE TABLE live_rows (id bigint PRIMARY KEY, tag text);
         CREATE PUBLICATION realtime_test FOR ALL TABLES;",
    )
    .await
    .expect("PostgreSQL with the schema");
    // A transaction with an xid, open: PostgreSQL creates a logical slot
    // only once every transaction running then has ended, so the server's
    // stream cannot be live until the Node test ends this session.
    let (blocker, connection) = tokio_postgres::connect(
        &format!("{} application_name={BLOCKER_APP}", pg.connection_string()),
        tokio_postgres::NoTls,
    )
    .await
    .expect("the blocking session");
    tokio::spawn(connection);
    blocker
        .batch_execute("BEGIN; SELECT txid_current();")
        .await
        .unwrap();

    let mut env = ServerProcess::env_for(&pg, &["realtime_test"]);
    env.insert("POSTGRES_CHANGES_WAIT_MAX_MS".into(), "60000".into());
    let server = tokio::task::spawn_blocking(move || {
        let mut server = ServerProcess::spawn(env);
        server
            .wait_for("/healthz", Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("realtime-server did not listen: {e}"));
        server
    })
    .await
    .unwrap();
    let (status, body) = server.get("/readyz").expect("GET /readyz");
    assert_eq!(status, 503, "the blocker holds the stream back: {body}");

    run_node(
        "realtime-js-live.test.mjs",
        &server,
        &pg,
        &[("BLOCKER_APP", BLOCKER_APP)],
        3,
    )
    .await;
    drop(blocker);
}

#[tokio::test]
async fn realtime_js_filters_and_select_through_the_clients_own_api() {
    // 2.119.1: filters from `postgresChangesFilter()` and raw strings held
    // to PostgreSQL's answer, `select`, a refused filter; 2.8.4: the same
    // grammar as strings.
    run_node_test(
        "realtime-js-filters.test.mjs",
        "CREATE TABLE tasks (id bigint PRIMARY KEY, title text, status text,
           priority int, done bool, due timestamptz, secret text);
         ALTER TABLE tasks REPLICA IDENTITY FULL;
         CREATE PUBLICATION realtime_test FOR TABLE tasks;",
        &["realtime-js-2-latest", "realtime-js-2-8", "ws", "pg"],
        3 + 1,
    )
    .await;
}

#[tokio::test]
async fn realtime_js_v2_passes_its_token_and_sees_expiry_when_channels_are_secured() {
    // Per version: token at connect and join, a forged token, expiry.
    run_node_test_with(
        "realtime-js-secured.test.mjs",
        // The tokens' role, which may read the table (no row level
        // security: every row).
        "CREATE ROLE anon NOLOGIN;
         CREATE ROLE authenticated NOLOGIN;
         CREATE TABLE secured_items (id bigint PRIMARY KEY);
         GRANT SELECT ON secured_items TO authenticated;
         CREATE PUBLICATION realtime_test FOR ALL TABLES;",
        &["realtime-js-2-8", "realtime-js-2-latest", "ws"],
        2 * 3,
        Some("a-secret-of-at-least-32-characters-long"),
    )
    .await;
}

#[tokio::test]
async fn realtime_js_v2_users_each_receive_their_own_rows_under_row_level_security() {
    // Per version: two users on an owner-policy table, a table never granted.
    run_node_test_with(
        "realtime-js-rls.test.mjs",
        "CREATE ROLE anon NOLOGIN;
         CREATE ROLE authenticated NOLOGIN;
         CREATE SCHEMA auth;
         GRANT USAGE ON SCHEMA auth TO authenticated;
         CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
           select (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')::uuid
         $$;
         CREATE TABLE rls_notes (id bigint PRIMARY KEY, owner uuid, body text);
         ALTER TABLE rls_notes REPLICA IDENTITY FULL;
         ALTER TABLE rls_notes ENABLE ROW LEVEL SECURITY;
         CREATE POLICY own ON rls_notes FOR SELECT TO authenticated USING (owner = auth.uid());
         GRANT SELECT ON rls_notes TO authenticated;
         CREATE TABLE rls_secrets (id bigint PRIMARY KEY);
         CREATE PUBLICATION realtime_test FOR ALL TABLES;",
        &["realtime-js-2-8", "realtime-js-2-latest", "ws"],
        2 * 2,
        Some("a-secret-of-at-least-32-characters-long"),
    )
    .await;
}

/// The example between the markers in `file`, trimmed.
fn example(text: &str) -> String {
    let start = text
        .find("// README example start\n")
        .expect("start marker")
        + "// README example start\n".len();
    let end = text.find("// README example end").expect("end marker");
    text[start..end].trim().to_string()
}

#[tokio::test]
async fn the_readme_realtime_js_2_example_runs_as_written() {
    let script = std::fs::read_to_string(js_dir().join("readme-example.mjs")).unwrap();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let code = example(&script);
    assert!(
        readme.contains(&code),
        "README.md must show tests/js/readme-example.mjs's example verbatim:\n{code}"
    );
    assert!(
        js_dir().join("node_modules").exists(),
        "tests/js/node_modules is missing: run `npm ci --no-audit --no-fund` in tests/js (tests/setup.sh does)"
    );

    let (pg, db) = TempPostgres::with_schema(
        "CREATE TABLE messages (id bigint PRIMARY KEY, room_id int, body text, pinned bool);
         CREATE PUBLICATION realtime_test FOR ALL TABLES;",
    )
    .await
    .expect("PostgreSQL with the schema");
    let env = ServerProcess::env_for(&pg, &["realtime_test"]);
    let server = tokio::task::spawn_blocking(move || ServerProcess::start(env))
        .await
        .unwrap();

    let mut node = tokio::process::Command::new("node")
        .arg("readme-example.mjs")
        .current_dir(js_dir())
        .env(
            "REALTIME_URL",
            format!("ws://127.0.0.1:{}/socket", server.port),
        )
        .env("TOKEN", "not-checked-when-channels-are-not-secured")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run node");
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let mut inserted = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("{line}"));
        if v["kind"] == "presence" && !inserted && v["value"]["alice"].is_array() {
            // Subscribed, broadcast and tracked: now a row for room 1 and one
            // for room 2 (filtered out).
            db.batch_execute(
                "INSERT INTO messages VALUES (1, 2, 'elsewhere', false);
                 INSERT INTO messages VALUES (2, 1, 'hello', true);",
            )
            .await
            .unwrap();
            inserted = true;
        }
        seen.push(v);
    }
    let status = node.wait().await.unwrap();
    let kinds: Vec<&str> = seen.iter().filter_map(|v| v["kind"].as_str()).collect();
    assert!(status.success(), "example exited {status}; saw {seen:?}");
    assert!(kinds.contains(&"status"), "{seen:?}");
    let broadcast = seen
        .iter()
        .find(|v| v["kind"] == "broadcast")
        .expect("own broadcast (self)");
    assert_eq!(broadcast["value"], serde_json::json!({"x": 1}));
    let presence = seen
        .iter()
        .find(|v| v["kind"] == "presence" && v["value"]["alice"].is_array())
        .expect("presence sync with alice");
    assert_eq!(
        presence["value"]["alice"][0]["online_at"],
        "2024-01-01T00:00:00Z"
    );
    let inserts: Vec<&serde_json::Value> = seen.iter().filter(|v| v["kind"] == "INSERT").collect();
    assert_eq!(inserts.len(), 1, "only room 1 passes the filter: {seen:?}");
    assert_eq!(
        inserts[0]["value"],
        serde_json::json!({"id": 2, "room_id": 1, "body": "hello", "pinned": true})
    );
}

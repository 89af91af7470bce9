//! The server process as an operator sees it: configuration errors at start,
//! health and readiness, a durable slot's confirmed position, and a clean
//! shutdown on SIGTERM.

use std::time::{Duration, Instant};

use realtime_tests::server::{server_bin, ServerProcess};
use realtime_tests::ws::{PhxClient, WsEnd};
use realtime_tests::TempPostgres;
use serde_json::json;

async fn pg_with_publication() -> (TempPostgres, tokio_postgres::Client) {
    let (pg, db) = TempPostgres::with_schema(
        "CREATE TABLE items (id int PRIMARY KEY);
         CREATE PUBLICATION realtime_test FOR ALL TABLES;",
    )
    .await
    .expect("PostgreSQL with the schema");
    (pg, db)
}

#[test]
fn a_bad_configuration_stops_the_server_with_every_problem_named() {
    let out = std::process::Command::new(server_bin())
        .env_clear()
        .env("DB_PORT", "abc")
        .env("PUBLICATIONS", "not json")
        .env("DB_PASSWORD", "hunter2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DB_PORT=abc"), "{err}");
    assert!(err.contains("PUBLICATIONS"), "{err}");
    assert!(
        err.contains("JWT_SECRET"),
        "secure channels need a secret: {err}"
    );
    assert!(!err.contains("hunter2"), "secrets never appear: {err}");
}

#[tokio::test]
async fn health_readiness_and_a_missing_publication() {
    let (pg, _db) = pg_with_publication().await;
    let mut env = ServerProcess::env_for(&pg, &["no_such_publication"]);
    env.insert("DB_RECONNECT_BACKOFF_MIN".into(), "100".into());
    env.insert("DB_RECONNECT_BACKOFF_MAX".into(), "200".into());
    let server = tokio::task::spawn_blocking(move || ServerProcess::spawn(env))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if server.log().contains("no_such_publication") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no log line names the publication:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.get("/healthz").map(|r| r.0), Some(200));
    let (status, body) = server.get("/readyz").unwrap();
    assert_eq!(status, 503, "not ready without a live stream: {body}");
    assert!(
        server.log().contains("CREATE PUBLICATION"),
        "the log says what to run"
    );
}

#[tokio::test]
async fn a_durable_slot_is_created_and_confirmed_past_delivered_changes() {
    let (pg, db) = pg_with_publication().await;
    let mut env = ServerProcess::env_for(&pg, &["realtime_test"]);
    env.insert("SLOT_NAME".into(), "realtime_durable".into());
    let server = tokio::task::spawn_blocking(move || ServerProcess::start(env))
        .await
        .unwrap();
    let mut c = PhxClient::connect(&server.ws_url("1.0.0")).await.unwrap();
    c.join("realtime:public:items", json!({})).await;
    db.batch_execute("INSERT INTO items VALUES (1)")
        .await
        .unwrap();
    let lsn: String = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(c.next_event().await.event, "INSERT");

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let row = db
            .query_one(
                "SELECT temporary, confirmed_flush_lsn >= $1::text::pg_lsn
                 FROM pg_replication_slots WHERE slot_name = 'realtime_durable'",
                &[&lsn],
            )
            .await
            .expect("the durable slot exists");
        let (temporary, confirmed): (bool, bool) = (row.get(0), row.get(1));
        assert!(!temporary);
        if confirmed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "confirmed_flush_lsn never passed {lsn}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_cleanly() {
    let (pg, _db) = pg_with_publication().await;
    let env = ServerProcess::env_for(&pg, &["realtime_test"]);
    let mut server = tokio::task::spawn_blocking(move || ServerProcess::start(env))
        .await
        .unwrap();
    let mut c = PhxClient::connect(&server.ws_url("2.0.0")).await.unwrap();
    c.join("realtime:public:items", json!({})).await;

    let pid = server.pid();
    let waiter = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let status = server.signal_and_wait("TERM");
        (status, started.elapsed())
    });
    match c.next_within(Duration::from_secs(10)).await {
        Err(WsEnd::Closed(Some((code, reason)))) => {
            assert_eq!(code, 1001, "going away: {reason}");
        }
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    let (status, took) = waiter.await.unwrap();
    assert!(status.success(), "exit status {status} (pid {pid})");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
}

#[tokio::test]
async fn scram_password_authentication_and_a_refused_password() {
    let (pg, db) = pg_with_publication().await;
    db.batch_execute(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE rt LOGIN REPLICATION PASSWORD 'correct horse';
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO rt;",
    )
    .await
    .unwrap();
    // Require SCRAM for this user, for SQL and for replication; everyone else
    // keeps trust.
    let hba = pg.data_dir().join("pg_hba.conf");
    let rest = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "host all rt 127.0.0.1/32 scram-sha-256\nhost replication rt 127.0.0.1/32 scram-sha-256\n{rest}"
        ),
    )
    .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").await.unwrap();

    let mut env = ServerProcess::env_for(&pg, &["realtime_test"]);
    env.insert("DB_USER".into(), "rt".into());
    env.insert("DB_PASSWORD".into(), "wrong".into());
    let refused = tokio::task::spawn_blocking(move || ServerProcess::spawn(env))
        .await
        .unwrap();

    let mut env = ServerProcess::env_for(&pg, &["realtime_test"]);
    env.insert("DB_USER".into(), "rt".into());
    env.insert("DB_PASSWORD".into(), "correct horse".into());
    let server = tokio::task::spawn_blocking(move || ServerProcess::start(env))
        .await
        .unwrap();
    let mut c = PhxClient::connect(&server.ws_url("1.0.0")).await.unwrap();
    c.join("realtime:public:items", json!({})).await;
    db.batch_execute("INSERT INTO items VALUES (42)")
        .await
        .unwrap();
    let m = c.next_event().await;
    assert_eq!(m.payload["record"]["id"], "42");

    let deadline = Instant::now() + Duration::from_secs(20);
    while !refused.log().contains("password authentication failed") {
        assert!(
            Instant::now() < deadline,
            "no log line about the refused password:\n{}",
            refused.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(refused.get("/readyz").map(|r| r.0), Some(503));
    assert!(
        !refused.log().contains("wrong"),
        "the password never appears in the log"
    );
}

#[tokio::test]
async fn db_ssl_require_encrypts_every_database_connection() {
    let (pg, db) = pg_with_publication().await;
    // A self-signed certificate; PostgreSQL enables TLS on reload.
    let dir = pg.dir();
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-x509",
            "-days",
            "1",
            "-nodes",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-out")
        .arg(dir.join("server.crt"))
        .arg("-keyout")
        .arg(dir.join("server.key"))
        .output()
        .expect("openssl");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .unwrap()
        .stdout
        == b"0\n";
    for f in ["server.crt", "server.key"] {
        if root {
            std::process::Command::new("chown")
                .arg("postgres")
                .arg(dir.join(f))
                .status()
                .unwrap();
        }
    }
    std::process::Command::new("chmod")
        .arg("600")
        .arg(dir.join("server.key"))
        .status()
        .unwrap();
    // The server's role may only connect over TLS.
    let hba = pg.data_dir().join("pg_hba.conf");
    let rest = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("hostnossl all rt 127.0.0.1/32 reject\nhostnossl replication rt 127.0.0.1/32 reject\n{rest}"),
    )
    .unwrap();
    // One statement per call: ALTER SYSTEM refuses a transaction block.
    for sql in [
        "ALTER SYSTEM SET ssl = on".to_string(),
        format!(
            "ALTER SYSTEM SET ssl_cert_file = '{}'",
            dir.join("server.crt").display()
        ),
        format!(
            "ALTER SYSTEM SET ssl_key_file = '{}'",
            dir.join("server.key").display()
        ),
        "CREATE ROLE rt LOGIN REPLICATION".to_string(),
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO rt".to_string(),
    ] {
        db.batch_execute(&sql).await.expect(&sql);
    }
    db.batch_execute("SELECT pg_reload_conf()").await.unwrap();

    let mut env = ServerProcess::env_for(&pg, &["realtime_test"]);
    env.insert("DB_USER".into(), "rt".into());
    env.insert("DB_SSL".into(), "require".into());
    let server = tokio::task::spawn_blocking(move || ServerProcess::start(env))
        .await
        .unwrap();
    // A postgres_changes binding needs the catalog connection too.
    let mut c = PhxClient::connect(&server.ws_url("2.0.0")).await.unwrap();
    let r = c
        .push(
            "realtime:items",
            "phx_join",
            json!({"config": {"postgres_changes": [{"event": "*", "schema": "public", "table": "items", "filter": "id=gt.1"}]}}),
            Some("1"),
        )
        .await;
    c.expect_reply(&r).await;
    let system = c.next().await.unwrap();
    assert_eq!(system.payload["status"], "ok", "{system:?}");
    db.batch_execute("INSERT INTO items VALUES (5)")
        .await
        .unwrap();
    loop {
        let m = c.next().await.unwrap();
        if m.event == "postgres_changes" {
            assert_eq!(m.payload["data"]["record"]["id"], 5);
            break;
        }
    }
    let rows = db
        .query(
            "SELECT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.usename = 'rt' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let seen: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        seen,
        vec![
            ("realtime-server".to_string(), true),
            ("realtime-server catalog".to_string(), true),
            ("realtime-server cluster bus".to_string(), true),
        ]
    );
}

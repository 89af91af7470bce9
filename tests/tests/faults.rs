//! Faults made on purpose: the server killed with SIGKILL, PostgreSQL
//! restarted (fast and immediate) during a stream of numbered inserts, a slot
//! that retains too much WAL, a slot PostgreSQL invalidated, and a shutdown
//! that must confirm what it delivered. Every committed number must reach the
//! client, in commit order; duplicates only where the README says.

use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use realtime_tests::server::ServerProcess;
use realtime_tests::ws::{PhxClient, WsEnd};
use realtime_tests::TempPostgres;
use serde_json::json;

const TOPIC: &str = "realtime:public:numbers";

async fn pg_with_numbers() -> (Arc<TempPostgres>, tokio_postgres::Client) {
    let (pg, db) = TempPostgres::with_schema(
        "CREATE TABLE numbers (n int PRIMARY KEY, pad text);
         CREATE PUBLICATION realtime_faults FOR TABLE numbers;",
    )
    .await
    .expect("PostgreSQL with the schema");
    (Arc::new(pg), db)
}

fn server_env(pg: &TempPostgres, slot: &str) -> std::collections::BTreeMap<String, String> {
    let mut env = ServerProcess::env_for(pg, &["realtime_faults"]);
    env.insert("SLOT_NAME".into(), slot.into());
    env.insert("DB_RECONNECT_BACKOFF_MIN".into(), "50".into());
    env.insert("DB_RECONNECT_BACKOFF_MAX".into(), "500".into());
    env
}

async fn start(env: std::collections::BTreeMap<String, String>) -> ServerProcess {
    tokio::task::spawn_blocking(move || ServerProcess::start(env))
        .await
        .unwrap()
}

/// Inserts 1..=total, one transaction each, reconnecting whenever the
/// database goes away (an insert whose commit is unknown is retried; the
/// primary key makes a second commit impossible). Returns when all are in.
fn spawn_writer(
    pg: Arc<TempPostgres>,
    total: u32,
    written: Arc<AtomicU32>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 1;
        while n <= total {
            let db = match pg.connect().await {
                Ok(db) => db,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            while n <= total {
                let r = db
                    .execute(
                        "INSERT INTO numbers VALUES ($1, 'x') ON CONFLICT DO NOTHING",
                        &[&(n as i32)],
                    )
                    .await;
                if r.is_err() {
                    break;
                }
                written.store(n, Ordering::SeqCst);
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    })
}

/// What the reading client saw.
#[derive(Default)]
struct Seen {
    numbers: Vec<u32>,
    /// Sockets opened (1 = it never had to reconnect).
    connections: u32,
    /// Index into `numbers` where each reconnect happened.
    reconnect_at: Vec<usize>,
}

/// Reads INSERTs of `numbers` until it has seen `total`, reconnecting and
/// rejoining (every 100 ms, like a client library) whenever the socket ends.
fn spawn_reader(
    url: String,
    total: u32,
    seen: Arc<Mutex<Seen>>,
    joined: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(120);
        'connect: loop {
            assert!(Instant::now() < deadline, "the reader never saw {total}");
            let Ok(mut c) = PhxClient::connect(&url).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let join_ref = c.push(TOPIC, "phx_join", json!({}), None).await;
            let mut heartbeat = Instant::now();
            {
                let mut s = seen.lock().unwrap();
                s.connections += 1;
                let at = s.numbers.len();
                s.reconnect_at.push(at);
            }
            loop {
                if heartbeat.elapsed() > Duration::from_secs(15) {
                    c.push("phoenix", "heartbeat", json!({}), None).await;
                    heartbeat = Instant::now();
                }
                match c.next_within(Duration::from_secs(30)).await {
                    Ok(m) if m.event == "phx_reply" && m.msg_ref == json!(join_ref) => {
                        assert_eq!(m.payload["status"], "ok", "{m:?}");
                        joined.store(true, Ordering::SeqCst);
                    }
                    Ok(m) if m.event == "INSERT" => {
                        let n = m.payload["record"]["n"]
                            .as_str()
                            .expect("n")
                            .parse()
                            .unwrap();
                        let mut s = seen.lock().unwrap();
                        s.numbers.push(n);
                        if n == total {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(WsEnd::Timeout) => panic!("no change for 30 s"),
                    Err(_) => continue 'connect,
                }
            }
        }
    })
}

/// A client subscribed to `numbers` (joined), then a writer inserting
/// 1..=total.
struct Stream {
    seen: Arc<Mutex<Seen>>,
    reader: tokio::task::JoinHandle<()>,
    written: Arc<AtomicU32>,
    writer: tokio::task::JoinHandle<()>,
}

async fn numbered_stream(pg: &Arc<TempPostgres>, url: String, total: u32) -> Stream {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let joined = Arc::new(AtomicBool::new(false));
    let reader = spawn_reader(url, total, seen.clone(), joined.clone());
    wait_until("the client joined", Duration::from_secs(20), || {
        joined.load(Ordering::SeqCst)
    })
    .await;
    let written = Arc::new(AtomicU32::new(0));
    let writer = spawn_writer(pg.clone(), total, written.clone());
    Stream {
        seen,
        reader,
        written,
        writer,
    }
}

/// Every number 1..=total, first occurrences in order; returns the
/// duplicates (numbers seen more than once).
fn check_all_in_order(numbers: &[u32], total: u32) -> Vec<u32> {
    let mut first = Vec::new();
    let mut dup = Vec::new();
    let mut max = 0;
    for &n in numbers {
        if n <= max {
            dup.push(n);
        } else {
            first.push(n);
            max = n;
        }
    }
    let expected: Vec<u32> = (1..=total).collect();
    if first != expected {
        let missing: Vec<u32> = expected
            .iter()
            .filter(|n| !first.contains(n))
            .copied()
            .collect();
        panic!("numbers lost or out of order: missing {missing:?}");
    }
    dup
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn metric(server: &ServerProcess, line_prefix: &str) -> f64 {
    let (status, body) = server.get("/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{line_prefix} not in /metrics:\n{body}"))
}

#[tokio::test]
async fn sigkill_during_a_stream_loses_no_committed_change() {
    const TOTAL: u32 = 2000;
    let (pg, _db) = pg_with_numbers().await;
    let mut env = server_env(&pg, "faults_kill");
    env.insert("RESUME_DELAY_MS".into(), "3000".into());
    let mut server = start(env.clone()).await;

    let Stream {
        seen,
        reader,
        written,
        writer,
    } = numbered_stream(&pg, server.ws_url("1.0.0"), TOTAL).await;

    wait_until("300 numbers arrived", Duration::from_secs(60), || {
        seen.lock().unwrap().numbers.len() >= 300
    })
    .await;
    let status = server.signal_and_wait("KILL");
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL");
    let at_kill = written.load(Ordering::SeqCst);
    // Inserts go on while no server runs.
    wait_until(
        "100 more numbers were committed",
        Duration::from_secs(30),
        || written.load(Ordering::SeqCst) >= at_kill + 100,
    )
    .await;
    let restarted = tokio::task::spawn_blocking(move || ServerProcess::spawn(env))
        .await
        .unwrap();

    tokio::time::timeout(Duration::from_secs(90), reader)
        .await
        .expect("reader finished")
        .unwrap();
    writer.await.unwrap();
    let seen = seen.lock().unwrap();
    assert!(
        seen.connections >= 2,
        "the client reconnected after the kill"
    );
    let before_kill = seen.numbers[..seen.reconnect_at[1]]
        .iter()
        .max()
        .copied()
        .unwrap_or(0);
    let dup = check_all_in_order(&seen.numbers, TOTAL);
    // At-least-once from the slot: only changes delivered before the kill and
    // not yet confirmed can come again.
    assert!(
        dup.iter().all(|&n| n <= before_kill),
        "only numbers delivered before the kill ({before_kill}) may come twice; got {dup:?}"
    );
    assert!(
        restarted.log().contains("resuming from the durable slot"),
        "{}",
        restarted.log()
    );
}

#[tokio::test]
async fn a_cut_connection_and_postgres_restarts_lose_nothing_and_keep_sockets_open() {
    const TOTAL: u32 = 2500;
    let (pg, _db) = pg_with_numbers().await;
    let mut server = start(server_env(&pg, "faults_pg_restart")).await;

    let Stream {
        seen,
        reader,
        written: _,
        writer,
    } = numbered_stream(&pg, server.ws_url("2.0.0"), TOTAL).await;

    // First the replication connection is cut (its walsender terminated).
    wait_until("numbers arrived", Duration::from_secs(60), || {
        seen.lock().unwrap().numbers.len() >= 200
    })
    .await;
    let admin = pg.connect().await.unwrap();
    let cut = admin
        .execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = 'faults_pg_restart'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(cut, 1, "the walsender was terminated");
    drop(admin);
    // Then PostgreSQL is stopped and started again, fast and immediate.
    for (mode, after) in [("fast", 600), ("immediate", 1300)] {
        wait_until("numbers arrived", Duration::from_secs(60), || {
            seen.lock().unwrap().numbers.len() >= after
        })
        .await;
        let p = pg.clone();
        tokio::task::spawn_blocking(move || p.stop(mode))
            .await
            .unwrap()
            .expect("stop PostgreSQL");
        // While the database is down the server says it is not ready.
        let port = server.port;
        let not_ready = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Some((503, _)) = realtime_tests::server::http_get(port, "/readyz") {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        })
        .await
        .unwrap();
        assert!(
            not_ready,
            "/readyz stayed 200 with PostgreSQL stopped ({mode})"
        );
        let p = pg.clone();
        tokio::task::spawn_blocking(move || p.restart())
            .await
            .unwrap()
            .expect("restart PostgreSQL");
    }

    tokio::time::timeout(Duration::from_secs(90), reader)
        .await
        .expect("reader finished")
        .unwrap();
    writer.await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.connections, 1,
        "the socket stayed open through both restarts"
    );
    let dup = check_all_in_order(&seen.numbers, TOTAL);
    assert!(
        dup.is_empty(),
        "a reconnect to the database redelivered {dup:?}"
    );
    server.wait_ready(Duration::from_secs(10));
    assert!(metric(&server, "realtime_replication_failures_total") >= 3.0);
    assert!(metric(&server, "realtime_changes_received_total") >= TOTAL as f64);
    assert!(metric(&server, "realtime_messages_sent_total") >= TOTAL as f64);
}

/// Stops the server cleanly, writes WAL while it is down, and starts it again.
async fn restart_after(
    server: &mut ServerProcess,
    env: std::collections::BTreeMap<String, String>,
    while_down: impl std::future::Future<Output = ()>,
) -> ServerProcess {
    assert!(server.signal_and_wait("TERM").success());
    while_down.await;
    start(env).await
}

/// The first INSERT a fresh client sees after `marker` is inserted.
async fn first_change_after_marker(
    server: &ServerProcess,
    db: &tokio_postgres::Client,
    marker: i32,
) -> i64 {
    let mut c = PhxClient::connect(&server.ws_url("1.0.0")).await.unwrap();
    c.join(TOPIC, json!({})).await;
    db.execute("INSERT INTO numbers VALUES ($1, 'marker')", &[&marker])
        .await
        .unwrap();
    let m = c.next_event().await;
    m.payload["record"]["n"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_slot_past_max_replication_lag_is_recreated_loudly() {
    let (pg, db) = pg_with_numbers().await;
    let mut env = server_env(&pg, "faults_lag");
    env.insert("MAX_REPLICATION_LAG_MB".into(), "1".into());
    env.insert("RESUME_DELAY_MS".into(), "0".into());
    let mut server = start(env.clone()).await;
    let server = restart_after(&mut server, env, async {
        // About 4 MB of WAL for the slot to hold while no server reads it.
        db.batch_execute(
            "INSERT INTO numbers SELECT g, repeat('x', 200) FROM generate_series(1, 15000) g",
        )
        .await
        .unwrap();
    })
    .await;
    let log = server.log();
    assert!(
        log.contains("dropping and recreating the replication slot: it retains more WAL than MAX_REPLICATION_LAG_MB"),
        "{log}"
    );
    assert_eq!(
        metric(&server, "realtime_slot_recreations_total{reason=\"lag\"}"),
        1.0
    );
    // What the dropped slot held is skipped (documented); new changes flow.
    assert_eq!(
        first_change_after_marker(&server, &db, 1_000_000).await,
        1_000_000
    );
}

#[tokio::test]
async fn an_invalidated_slot_is_recreated_loudly() {
    let (pg, db) = pg_with_numbers().await;
    db.batch_execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        .await
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let mut env = server_env(&pg, "faults_lost");
    env.insert("RESUME_DELAY_MS".into(), "0".into());
    let mut server = start(env.clone()).await;
    let server = restart_after(&mut server, env, async {
        // Push WAL past max_slot_wal_keep_size until a checkpoint invalidates
        // the slot.
        for round in 0.. {
            let lost: Option<String> = db
                .query_one("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'faults_lost'", &[])
                .await
                .unwrap()
                .get(0);
            if lost.as_deref() == Some("lost") {
                break;
            }
            assert!(round < 20, "the slot was never invalidated (wal_status {lost:?})");
            db.batch_execute(&format!(
                "INSERT INTO numbers SELECT g, 'x' FROM generate_series({0} * 1000 + 1, {0} * 1000 + 1000) g;
                 SELECT pg_switch_wal();
                 CHECKPOINT;",
                round + 1
            ))
            .await
            .unwrap();
        }
    })
    .await;
    let log = server.log();
    assert!(log.contains("PostgreSQL invalidated it"), "{log}");
    assert_eq!(
        metric(
            &server,
            "realtime_slot_recreations_total{reason=\"invalidated\"}"
        ),
        1.0
    );
    assert_eq!(
        first_change_after_marker(&server, &db, 1_000_000).await,
        1_000_000
    );
}

#[tokio::test]
async fn sigterm_confirms_what_was_delivered_before_exiting() {
    let (pg, db) = pg_with_numbers().await;
    let mut env = server_env(&pg, "faults_term");
    env.insert("RESUME_DELAY_MS".into(), "0".into());
    let mut server = start(env).await;
    let mut c = PhxClient::connect(&server.ws_url("1.0.0")).await.unwrap();
    c.join(TOPIC, json!({})).await;
    db.execute("INSERT INTO numbers VALUES (1, 'x')", &[])
        .await
        .unwrap();
    let lsn: String = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(c.next_event().await.event, "INSERT");
    assert_eq!(metric(&server, "realtime_connections"), 1.0);
    assert_eq!(metric(&server, "realtime_channels"), 1.0);
    // At once, before the periodic status update would have told PostgreSQL.
    assert!(server.signal_and_wait("TERM").success());
    match c.next_within(Duration::from_secs(5)).await {
        Err(WsEnd::Closed(Some((1001, _)))) => {}
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    let confirmed: bool = db
        .query_one(
            "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = 'faults_term'",
            &[&lsn],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        confirmed,
        "the slot's confirmed position did not reach the delivered change"
    );
}

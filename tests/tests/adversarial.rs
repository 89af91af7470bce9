//! An attacker with a valid connection sends the worst input it may; a
//! well-behaved client on the same server keeps being served: `/healthz`
//! answers and a join plus an INSERT round trip completes within a second,
//! and the attacker gets the documented answer. One test per class of
//! attack. Real PostgreSQL, the real server binary, real WebSockets, all on
//! loopback.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use realtime_tests::server::{http_get, ServerProcess};
use realtime_tests::ws::{Msg, PhxClient};
use realtime_tests::TempPostgres;
use serde_json::{json, Value};

/// The bound a well-behaved client's requests must meet while an attack
/// runs: a liveness bound (the server is not frozen), far above the few
/// milliseconds these take on an idle server.
const SERVED_WITHIN: Duration = Duration::from_secs(1);

struct Env {
    db: tokio_postgres::Client,
    server: ServerProcess,
    _pg: TempPostgres,
}

/// PostgreSQL with a published table `items (id, body)` and the server on it.
async fn start(extra_env: &[(&str, &str)]) -> Env {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .expect("start task")
        .expect("start PostgreSQL");
    let db = pg.connect().await.expect("connect");
    db.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, body text);
         CREATE PUBLICATION realtime_test FOR ALL TABLES;",
    )
    .await
    .expect("schema");
    let mut env = ServerProcess::env_for(&pg, &["realtime_test"]);
    for (k, v) in extra_env {
        env.insert(k.to_string(), v.to_string());
    }
    let server = tokio::task::spawn_blocking(move || ServerProcess::start(env))
        .await
        .expect("server task");
    Env {
        db,
        server,
        _pg: pg,
    }
}

/// Polls `/healthz` from a thread of its own until stopped; the slowest
/// answer (or `None` if one failed).
struct HealthWatch {
    stop: Arc<AtomicBool>,
    worst_ms: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<bool>>,
}

impl HealthWatch {
    fn start(port: u16) -> HealthWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let worst_ms = Arc::new(AtomicU64::new(0));
        let (s, w) = (stop.clone(), worst_ms.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                if http_get(port, "/healthz").map(|(code, _)| code) != Some(200) {
                    return false;
                }
                w.fetch_max(t.elapsed().as_millis() as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
            true
        });
        HealthWatch {
            stop,
            worst_ms,
            thread: Some(thread),
        }
    }

    /// Stops polling; asserts every answer came, each within the bound.
    fn assert_served(mut self, during: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let all_ok = self.thread.take().unwrap().join().expect("health thread");
        assert!(all_ok, "during {during}: /healthz did not answer 200");
        let worst = Duration::from_millis(self.worst_ms.load(Ordering::Relaxed));
        assert!(
            worst < SERVED_WITHIN,
            "during {during}: /healthz took {worst:?} (bound {SERVED_WITHIN:?})"
        );
    }
}

impl Env {
    /// A new, well-behaved 2.x client joins and receives an INSERT of row
    /// `id`, the whole round trip within [`SERVED_WITHIN`].
    async fn round_trip(&self, id: i32, during: &str) {
        let t = Instant::now();
        let mut c = PhxClient::connect(&self.server.ws_url("2.0.0"))
            .await
            .unwrap_or_else(|e| panic!("during {during}: connect: {e}"));
        let topic = format!("realtime:good-{id}");
        let reply = c
            .join(
                &topic,
                json!({"config": {"postgres_changes": [
                    {"event": "INSERT", "schema": "public", "table": "items",
                     "filter": format!("id=eq.{id}")}]}}),
            )
            .await;
        assert_eq!(reply.payload["status"], "ok", "during {during}: join");
        let system = c.next().await.expect("system message");
        assert_eq!(
            system.payload["status"], "ok",
            "during {during}: {system:?}"
        );
        self.db
            .execute("INSERT INTO items (id, body) VALUES ($1, 'good')", &[&id])
            .await
            .expect("insert");
        let m = next_named(&mut c, "postgres_changes").await;
        assert_eq!(m.payload["data"]["record"]["id"], id, "during {during}");
        let took = t.elapsed();
        assert!(
            took < SERVED_WITHIN,
            "during {during}: join + INSERT round trip took {took:?} (bound {SERVED_WITHIN:?})"
        );
    }
}

/// The next frame with event `event`, skipping others (`presence_state`,
/// replies).
async fn next_named(c: &mut PhxClient, event: &str) -> Msg {
    loop {
        let m = c
            .next()
            .await
            .unwrap_or_else(|e| panic!("waiting for {event}: {e:?}"));
        if m.event == event {
            return m;
        }
    }
}

fn binding(filter: &str) -> Value {
    json!({"event": "*", "schema": "public", "table": "items", "filter": filter})
}

/// Class 1: work under a shared lock that grows with what the client sent.
/// An `in` list of 300,000 values (one value repeated) is refused before
/// anything is parsed, naming the limit, and the refusal does not echo the
/// list; a list at the limit of one repeated value is one value to the hub
/// (a change carries `ids: [1]`), and joining and leaving two such channels
/// leaves the server serving everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_values_are_bounded_and_counted_once() {
    let env = start(&[]).await;
    let health = HealthWatch::start(env.server.port);
    let mut attacker = PhxClient::connect(&env.server.ws_url("2.0.0"))
        .await
        .expect("connect");

    let huge = format!("id=in.({})", vec!["7"; 300_000].join(","));
    let reply = attacker
        .join(
            "realtime:a0",
            json!({"config": {"postgres_changes": [binding(&huge)]}}),
        )
        .await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    let system = next_named(&mut attacker, "system").await;
    assert_eq!(system.payload["status"], "error", "{system:?}");
    let message = system.payload["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("an in list takes at most 100 values") && message.len() < 1000,
        "the refusal names the limit and does not echo the list: {} bytes: {:.200}",
        message.len(),
        message
    );

    let repeated = format!("id=in.({})", vec!["7"; 100].join(","));
    for topic in ["realtime:a1", "realtime:a2"] {
        let reply = attacker
            .join(
                topic,
                json!({"config": {"postgres_changes": [binding(&repeated)]}}),
            )
            .await;
        assert_eq!(reply.payload["status"], "ok", "{reply:?}");
        let system = next_named(&mut attacker, "system").await;
        assert_eq!(system.payload["status"], "ok", "{system:?}");
    }
    env.round_trip(1, "joins with repeated values").await;

    // Row 7 reaches each channel once, with the one binding's id.
    env.db
        .execute("INSERT INTO items (id, body) VALUES (7, 'x')", &[])
        .await
        .expect("insert");
    let mut seen = Vec::new();
    for _ in 0..2 {
        let m = next_named(&mut attacker, "postgres_changes").await;
        assert_eq!(m.payload["ids"], json!([1]), "{m:?}");
        seen.push(m.topic);
    }
    seen.sort();
    assert_eq!(seen, ["realtime:a1", "realtime:a2"]);

    for topic in ["realtime:a1", "realtime:a2"] {
        let r = attacker.push(topic, "phx_leave", json!({}), None).await;
        let reply = attacker.expect_reply(&r).await;
        assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    }
    env.round_trip(2, "leaves of repeated values").await;
    health.assert_served("the filter attack");
}

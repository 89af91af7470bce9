//! Many servers, one service: two and three real server processes on one
//! real PostgreSQL, with realtime-js 2.x clients spread over them
//! (`tests/js/cluster.test.mjs`: broadcast over sockets and HTTP crossing
//! servers in order, presence state/diffs/leaves crossing servers, an
//! oversized broadcast answered, and SIGKILL of one server making its
//! clients' presences leave within the bound), and PostgreSQL restarted
//! under the bus (Rust clients: the cluster recovers by itself).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use realtime_tests::server::ServerProcess;
use realtime_tests::ws::PhxClient;
use realtime_tests::TempPostgres;
use serde_json::json;

/// Messages over this are refused by the cluster in these tests (above one
/// NOTIFY, so the test also sends one that travels in pieces).
const MAX_MESSAGE_BYTES: usize = 20_000;
/// The default node timeout plus one heartbeat, and a second of slack for a
/// loaded machine: the documented bound for a dead server's presences.
const LEAVE_BOUND_MS: u64 = 5_000 + 1_000 + 1_000;

async fn pg() -> TempPostgres {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .expect("start PostgreSQL");
    let db = pg.connect().await.unwrap();
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION realtime_cluster_test FOR TABLE t;",
    )
    .await
    .unwrap();
    pg
}

fn env(pg: &TempPostgres) -> BTreeMap<String, String> {
    let mut env = ServerProcess::env_for(pg, &["realtime_cluster_test"]);
    env.insert(
        "CLUSTER_MAX_MESSAGE_BYTES".into(),
        MAX_MESSAGE_BYTES.to_string(),
    );
    // The tests send bursts of 200 broadcasts from one socket: above the
    // default per-socket rate, which is not what they test.
    env.insert("MAX_EVENTS_PER_SECOND".into(), "10000".into());
    env.insert("DB_RECONNECT_BACKOFF_MIN".into(), "50".into());
    env.insert("DB_RECONNECT_BACKOFF_MAX".into(), "500".into());
    env
}

async fn servers(pg: &TempPostgres, n: usize) -> Vec<ServerProcess> {
    let mut out = Vec::new();
    for _ in 0..n {
        let e = env(pg);
        out.push(
            tokio::task::spawn_blocking(move || ServerProcess::start(e))
                .await
                .unwrap(),
        );
    }
    // Every server sees the others (the metric counts the other nodes).
    let deadline = Instant::now() + Duration::from_secs(15);
    for s in &out {
        loop {
            let body = s.get("/metrics").map(|(_, b)| b).unwrap_or_default();
            if body.contains(&format!("realtime_cluster_nodes {}", n - 1)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the servers never saw each other:\n{body}\n{}",
                s.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    out
}

async fn run_cluster_js(n: usize) {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("js");
    assert!(
        js.join("node_modules/realtime-js-2-latest").is_dir(),
        "run `npm ci` in {} (tests/setup.sh does)",
        js.display()
    );
    let pg = pg().await;
    let servers = servers(&pg, n).await;
    let urls: Vec<String> = servers
        .iter()
        .map(|s| s.ws_url("2.0.0").replace("/websocket?vsn=2.0.0", ""))
        .collect();
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("node")
            .args([
                "--test",
                // A realtime-js client of the killed server keeps a reconnect
                // timer alive after disconnect(): the results are in the TAP.
                "--test-force-exit",
                "--test-reporter=tap",
                "cluster.test.mjs",
            ])
            .current_dir(&js)
            .env("REALTIME_URLS", urls.join(","))
            .env("KILL_PID", servers[n - 1].pid().to_string())
            .env("LEAVE_BOUND_MS", LEAVE_BOUND_MS.to_string())
            .env("MAX_MESSAGE_BYTES", MAX_MESSAGE_BYTES.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("node --test cluster.test.mjs finished within 120 s")
    .expect("spawn `node` (tests/setup.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs: Vec<String> = servers.iter().map(|s| s.log()).collect();
    assert!(
        out.status.success() && stdout.contains("# pass 5\n") && stdout.contains("# fail 0"),
        "node --test cluster.test.mjs on {n} servers ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- server logs ---\n{}",
        out.status,
        logs.join("\n-----\n")
    );
    // What the bound was measured at, for the log of the run.
    for line in stdout.lines().filter(|l| l.contains("left after")) {
        eprintln!("{line}");
    }
}

#[tokio::test]
async fn realtime_js_clients_on_two_servers_share_broadcast_and_presence() {
    run_cluster_js(2).await;
}

#[tokio::test]
async fn realtime_js_clients_on_three_servers_share_broadcast_and_presence() {
    run_cluster_js(3).await;
}

/// Joins `topic` on a 2.x socket with presence key `key`.
async fn member(server: &ServerProcess, topic: &str, key: &str) -> PhxClient {
    let mut c = PhxClient::connect(&server.ws_url("2.0.0")).await.unwrap();
    let config =
        json!({"config": {"broadcast": {"self": false, "ack": true}, "presence": {"key": key}}});
    let reply = c.join(topic, config).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    c
}

/// Reads frames until a `presence_diff`/`presence_state` shows `key`
/// joined (or, `joined: false`, left); heartbeats meanwhile.
async fn await_presence(c: &mut PhxClient, topic: &str, key: &str, joined: bool, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{key} never {}",
            if joined { "joined" } else { "left" }
        );
        let Ok(m) = c.next_within(left.min(Duration::from_secs(1))).await else {
            c.push("phoenix", "heartbeat", json!({}), None).await;
            continue;
        };
        let hit = match m.event.as_str() {
            "presence_diff" if joined => m.payload["joins"].get(key).is_some(),
            "presence_diff" => m.payload["leaves"].get(key).is_some(),
            "presence_state" if joined => m.payload.get(key).is_some(),
            _ => false,
        };
        if m.topic == topic && hit {
            return;
        }
    }
}

#[tokio::test]
async fn postgres_restarted_under_the_bus_and_the_cluster_recovers() {
    let pg = pg().await;
    let servers = servers(&pg, 2).await;
    let topic = "realtime:restart";
    let mut a = member(&servers[0], topic, "alice").await;
    let mut b = member(&servers[1], topic, "bob").await;
    let r = a
        .push(
            topic,
            "presence",
            json!({"type": "presence", "event": "track", "payload": {"u": "a"}}),
            Some("1"),
        )
        .await;
    a.expect_reply(&r).await;
    await_presence(&mut b, topic, "alice", true, Duration::from_secs(5)).await;

    pg.stop("fast").unwrap();
    // Down: the bus says so in /metrics, a broadcast with ack is answered
    // with an error instead of a silent loss, and the log says why.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !servers[0]
        .get("/metrics")
        .is_some_and(|(_, m)| m.contains("realtime_cluster_bus_up 0"))
    {
        assert!(Instant::now() < deadline, "the bus never reported down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = a
        .push(
            topic,
            "broadcast",
            json!({"type": "broadcast", "event": "e", "payload": {"during": true}}),
            Some("1"),
        )
        .await;
    let reply = a.expect_reply(&r).await;
    assert_eq!(reply.payload["status"], "error", "{reply:?}");
    assert!(
        reply.payload["response"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("cluster bus is down"),
        "{reply:?}"
    );
    assert!(
        servers[0].log().contains("cluster bus down"),
        "{}",
        servers[0].log()
    );

    // Bob tracks while the database is down; it must cross once it is back.
    let r = b
        .push(
            topic,
            "presence",
            json!({"type": "presence", "event": "track", "payload": {"u": "b"}}),
            Some("1"),
        )
        .await;
    b.expect_reply(&r).await;
    pg.restart().unwrap();
    await_presence(&mut a, topic, "bob", true, Duration::from_secs(15)).await;
    for s in &servers {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !s
            .get("/metrics")
            .is_some_and(|(_, m)| m.contains("realtime_cluster_bus_up 1"))
        {
            assert!(
                Instant::now() < deadline,
                "the bus never came back:\n{}",
                s.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(s.log().contains("cluster bus reconnected"), "{}", s.log());
    }
    let r = a
        .push(
            topic,
            "broadcast",
            json!({"type": "broadcast", "event": "e", "payload": {"after": true}}),
            Some("1"),
        )
        .await;
    assert_eq!(a.expect_reply(&r).await.payload["status"], "ok");
    loop {
        let m = b
            .next_within(Duration::from_secs(5))
            .await
            .expect("the broadcast after the restart");
        if m.event == "broadcast" {
            assert_eq!(
                m.payload["payload"],
                json!({"after": true}),
                "nothing sent while down arrives late"
            );
            break;
        }
    }
}

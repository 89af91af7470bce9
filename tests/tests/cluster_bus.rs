//! The cluster bus in-process: several `Cluster`s (each one server's
//! membership) on one real PostgreSQL, their deliveries recorded. Broadcasts
//! cross in order, large ones in pieces, too-large ones are refused with a
//! reason; presence converges, a silent node's presences leave after the
//! node timeout, a goodbye makes them leave at once; PostgreSQL restarted
//! under the bus and the cluster recovers by itself.
//!
//! The same behaviours through real server processes and realtime-js are in
//! `cluster.rs`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use realtime_server::cluster::bus::{self, BusConnect};
use realtime_server::cluster::{BusError, Cluster, ClusterSettings, Deliver, Meta, TopicKey};
use realtime_server::config::DbSsl;
use realtime_tests::TempPostgres;
use tokio_util::sync::CancellationToken;

/// What a server's local members received: (topic, private, event,
/// payload); binary broadcasts as (topic, private, the user's event, bytes).
#[derive(Default)]
#[allow(clippy::type_complexity)]
struct Recorder(
    Mutex<Vec<(String, bool, String, serde_json::Value)>>,
    Mutex<Vec<(String, bool, String, Vec<u8>)>>,
);

impl Deliver for Recorder {
    fn relay(&self, topic: &TopicKey, event: &str, payload: &str) {
        let v = serde_json::from_str(payload).expect("payloads are JSON");
        self.0
            .lock()
            .unwrap()
            .push((topic.topic.to_string(), topic.private, event.into(), v));
    }

    fn relay_binary(&self, topic: &TopicKey, event: &str, data: &[u8]) {
        self.1.lock().unwrap().push((
            topic.topic.to_string(),
            topic.private,
            event.into(),
            data.to_vec(),
        ));
    }
}

impl Recorder {
    fn events(&self, event: &str) -> Vec<(String, bool, serde_json::Value)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, e, _)| e == event)
            .map(|(t, p, _, v)| (t.clone(), *p, v.clone()))
            .collect()
    }
}

struct Node {
    cluster: Arc<Cluster>,
    seen: Arc<Recorder>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn settings(name: &str) -> ClusterSettings {
    ClusterSettings {
        name: name.into(),
        heartbeat: Duration::from_millis(200),
        node_timeout: Duration::from_millis(1500),
        max_message_bytes: 64 * 1024,
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
    }
}

fn node(pg: &TempPostgres, settings: ClusterSettings) -> Node {
    let seen = Arc::new(Recorder::default());
    let cluster = Cluster::new(settings, seen.clone());
    let pg_config: tokio_postgres::Config = pg.connection_string().parse().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(bus::run(
        cluster.clone(),
        BusConnect {
            pg: pg_config,
            ssl: DbSsl::Disable,
        },
        stop.clone(),
    ));
    Node {
        cluster,
        seen,
        stop,
        task,
    }
}

async fn until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

async fn pg() -> Arc<TempPostgres> {
    Arc::new(
        tokio::task::spawn_blocking(TempPostgres::start)
            .await
            .unwrap()
            .expect("start PostgreSQL"),
    )
}

async fn all_up(nodes: &[&Node]) {
    until(
        "every bus is up and sees the others",
        Duration::from_secs(10),
        || {
            nodes.iter().all(|n| {
                n.cluster.status.is_up()
                    && n.cluster
                        .status
                        .nodes
                        .load(std::sync::atomic::Ordering::Relaxed)
                        == nodes.len() as u64 - 1
            })
        },
    )
    .await;
}

fn meta(user: &str) -> Meta {
    let mut m = Meta::new();
    m.insert("user".into(), user.into());
    m
}

#[tokio::test]
async fn binary_broadcasts_cross_servers_byte_for_byte_in_order_with_the_json_ones() {
    let pg = pg().await;
    let (a, b) = (node(&pg, settings("bin")), node(&pg, settings("bin")));
    all_up(&[&a, &b]).await;
    let room = TopicKey::new("room", false);
    // Every byte value (NUL included, which a NOTIFY payload cannot hold),
    // a small one and one over the NOTIFY limit, between JSON broadcasts.
    let small: Vec<u8> = (0..=255u8).collect();
    let large: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let json = |i: u32| serde_json::json!({"type": "broadcast", "event": "n", "payload": {"i": i}});
    let mut sent = vec![a
        .cluster
        .publish(&room, "broadcast", &json(0).to_string())
        .unwrap()];
    sent.push(a.cluster.publish_binary(&room, "blob", &small).unwrap());
    sent.push(
        a.cluster
            .publish(&room, "broadcast", &json(1).to_string())
            .unwrap(),
    );
    sent.push(a.cluster.publish_binary(&room, "é blob", &large).unwrap());
    sent.push(a.cluster.publish_binary(&room, "empty", &[]).unwrap());
    for s in sent {
        s.wait().await.expect("handed to the cluster");
    }
    until(
        "the binary broadcasts arrived",
        Duration::from_secs(10),
        || b.seen.1.lock().unwrap().len() >= 3 && b.seen.events("broadcast").len() >= 2,
    )
    .await;
    let binary = b.seen.1.lock().unwrap().clone();
    assert_eq!(
        binary,
        vec![
            ("room".to_string(), false, "blob".to_string(), small),
            ("room".to_string(), false, "é blob".to_string(), large),
            ("room".to_string(), false, "empty".to_string(), vec![]),
        ]
    );
    let jsons: Vec<_> = b
        .seen
        .events("broadcast")
        .into_iter()
        .map(|e| e.2)
        .collect();
    assert_eq!(jsons, vec![json(0), json(1)]);

    // The limit is on the bytes.
    let err = a
        .cluster
        .publish_binary(&room, "blob", &vec![0; 64 * 1024 + 1])
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            BusError::TooLarge {
                bytes: 65537,
                max: 65536
            }
        ),
        "{err}"
    );
    a.stop.cancel();
    b.stop.cancel();
    let _ = tokio::join!(a.task, b.task);
}

#[tokio::test]
async fn broadcasts_cross_servers_once_in_order_and_large_ones_in_pieces() {
    let pg = pg().await;
    let (a, b, c) = (
        node(&pg, settings("t1")),
        node(&pg, settings("t1")),
        node(&pg, settings("t1")),
    );
    all_up(&[&a, &b, &c]).await;
    let room = TopicKey::new("room", false);
    // 500 messages from a, awaited only at the end: the bus batches them.
    let mut sent = Vec::new();
    for i in 0..500 {
        let payload = serde_json::json!({"type": "broadcast", "event": "n", "payload": {"i": i}});
        sent.push(
            a.cluster
                .publish(&room, "broadcast", &payload.to_string())
                .unwrap(),
        );
    }
    // One over the NOTIFY payload limit, with quotes, backslashes and
    // multi-byte text, so it travels in pieces.
    let big = format!("{}'\\\"{}", "é".repeat(9000), "x".repeat(9000));
    let payload =
        serde_json::json!({"type": "broadcast", "event": "big", "payload": {"text": big}});
    sent.push(
        a.cluster
            .publish(&room, "broadcast", &payload.to_string())
            .unwrap(),
    );
    for s in sent {
        s.wait().await.expect("handed to the cluster");
    }
    for n in [&b, &c] {
        until("501 broadcasts arrived", Duration::from_secs(10), || {
            n.seen.events("broadcast").len() >= 501
        })
        .await;
        let got = n.seen.events("broadcast");
        assert_eq!(got.len(), 501, "each once");
        for (i, (topic, private, v)) in got.iter().take(500).enumerate() {
            assert_eq!((topic.as_str(), *private), ("room", false));
            assert_eq!(v["payload"]["i"], i, "in the sender's order");
        }
        assert_eq!(got[500].2["payload"]["text"], big.as_str());
    }
    assert!(
        a.seen.events("broadcast").is_empty(),
        "the sender delivers its own locally, not from the bus"
    );

    // Over CLUSTER_MAX_MESSAGE_BYTES: refused with a reason, nothing sent.
    let huge = serde_json::json!({"payload": "x".repeat(70 * 1024)}).to_string();
    let err = a.cluster.publish(&room, "broadcast", &huge).err().unwrap();
    assert!(
        matches!(err, BusError::TooLarge { max: 65536, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("CLUSTER_MAX_MESSAGE_BYTES"),
        "{err}"
    );

    // A private topic of the same name is another topic.
    a.cluster
        .publish(&TopicKey::new("room", true), "broadcast", "{\"secret\":1}")
        .unwrap()
        .wait()
        .await
        .unwrap();
    until("the private one arrived", Duration::from_secs(5), || {
        b.seen.events("broadcast").len() == 502
    })
    .await;
    assert!(
        b.seen.events("broadcast")[501].1,
        "the private flag travels"
    );

    // Another cluster on the same database hears nothing of this one.
    let other = node(&pg, settings("t2"));
    until("the other cluster is up", Duration::from_secs(5), || {
        other.cluster.status.is_up()
    })
    .await;
    a.cluster
        .publish(&room, "broadcast", "{}")
        .unwrap()
        .wait()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(other.seen.events("broadcast").is_empty());
    assert_eq!(
        other
            .cluster
            .status
            .nodes
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn presence_converges_a_silent_node_leaves_after_the_timeout_and_a_goodbye_at_once() {
    let pg = pg().await;
    let (a, b) = (node(&pg, settings("p")), node(&pg, settings("p")));
    all_up(&[&a, &b]).await;
    let room = TopicKey::new("room", false);
    a.cluster
        .track(&room, 1, "alice".into(), meta("alice"), 1000)
        .expect("under the presence limit");
    b.cluster
        .track(&room, 1, "bob".into(), meta("bob"), 1000)
        .expect("under the presence limit");
    for n in [&a, &b] {
        until("both presences everywhere", Duration::from_secs(5), || {
            n.cluster.presence_count(&room) == 2
        })
        .await;
    }
    // A newcomer gets the full state of everyone.
    let c = node(&pg, settings("p"));
    until("the newcomer has the state", Duration::from_secs(5), || {
        c.cluster.presence_count(&room) == 2
    })
    .await;
    let state: serde_json::Value = serde_json::from_str(&c.cluster.presence_state(&room)).unwrap();
    assert_eq!(state["alice"]["metas"][0]["user"], "alice");
    assert_eq!(state["bob"]["metas"][0]["user"], "bob");

    // An untrack on b is a leave on a and c.
    b.cluster.untrack(&room, 1);
    for n in [&a, &c] {
        until("bob left", Duration::from_secs(5), || {
            n.cluster.presence_count(&room) == 1
        })
        .await;
        let diffs = n.seen.events("presence_diff");
        assert!(
            diffs
                .iter()
                .any(|(_, _, d)| d["leaves"]["bob"]["metas"][0]["user"] == "bob"),
            "{diffs:?}"
        );
    }
    b.cluster
        .track(&room, 2, "bob".into(), meta("bob again"), 1000)
        .expect("under the presence limit");
    until("bob is back on c", Duration::from_secs(5), || {
        c.cluster.presence_count(&room) == 2
    })
    .await;

    // b vanishes without a word (its task dies, its connection drops).
    b.task.abort();
    let gone = Instant::now();
    until(
        "b's presences left on a and c",
        Duration::from_secs(10),
        || a.cluster.presence_count(&room) == 1 && c.cluster.presence_count(&room) == 1,
    )
    .await;
    let took = gone.elapsed();
    // The bound: node_timeout (1.5 s) plus one heartbeat period.
    assert!(
        took >= Duration::from_millis(1200),
        "left too early: {took:?}"
    );
    assert!(
        took <= Duration::from_millis(1500 + 200 + 500),
        "left too late: {took:?}"
    );

    // c shuts down cleanly: its goodbye makes its presences leave at once.
    c.cluster
        .track(&room, 9, "carol".into(), meta("carol"), 1000)
        .expect("under the presence limit");
    until("carol on a", Duration::from_secs(5), || {
        a.cluster.presence_count(&room) == 2
    })
    .await;
    c.stop.cancel();
    let bye = Instant::now();
    until("carol left a", Duration::from_secs(5), || {
        a.cluster.presence_count(&room) == 1
    })
    .await;
    assert!(
        bye.elapsed() < Duration::from_millis(1000),
        "{:?}",
        bye.elapsed()
    );
}

#[tokio::test]
async fn postgres_restarted_under_the_bus_and_the_cluster_recovers() {
    let pg = pg().await;
    let (a, b) = (node(&pg, settings("r")), node(&pg, settings("r")));
    all_up(&[&a, &b]).await;
    let room = TopicKey::new("room", false);
    a.cluster
        .track(&room, 1, "alice".into(), meta("alice"), 1000)
        .expect("under the presence limit");
    until("alice on b", Duration::from_secs(5), || {
        b.cluster.presence_count(&room) == 1
    })
    .await;

    let restart = pg.clone();
    tokio::task::spawn_blocking(move || restart.stop("immediate"))
        .await
        .unwrap()
        .unwrap();
    until("both buses report down", Duration::from_secs(10), || {
        !a.cluster.status.is_up() && !b.cluster.status.is_up()
    })
    .await;
    // Down: a broadcast says so instead of pretending.
    assert_eq!(
        a.cluster.publish(&room, "broadcast", "{}").err(),
        Some(BusError::Down)
    );
    // Presence changed while the bus was down: bob tracked on b.
    b.cluster
        .track(&room, 1, "bob".into(), meta("bob"), 1000)
        .expect("under the presence limit");
    let restart = pg.clone();
    tokio::task::spawn_blocking(move || restart.restart())
        .await
        .unwrap()
        .unwrap();
    all_up(&[&a, &b]).await;
    for n in [&a, &b] {
        until("presence resynced", Duration::from_secs(10), || {
            n.cluster.presence_count(&room) == 2
        })
        .await;
    }
    a.cluster
        .publish(&room, "broadcast", "{\"after\":true}")
        .unwrap()
        .wait()
        .await
        .unwrap();
    until("a broadcast crosses again", Duration::from_secs(5), || {
        b.seen
            .events("broadcast")
            .iter()
            .any(|(_, _, v)| v["after"] == true)
    })
    .await;
    assert!(
        a.cluster
            .status
            .reconnects
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

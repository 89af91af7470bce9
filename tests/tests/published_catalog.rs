//! The snapshot of the published tables that `postgres_changes` joins are
//! checked against: many joins at once cost one catalog read, and every way
//! the catalog changes under a running server (a table published or
//! unpublished, a column added or retyped) is noticed, over real sockets and
//! a real PostgreSQL.

use std::time::{Duration, Instant};

use realtime_tests::server::{ServerProcess, Stack};
use realtime_tests::ws::{Msg, PhxClient};
use serde_json::{json, Value};

const SCHEMA: &str = "
    CREATE TABLE messages (id bigint PRIMARY KEY, room int, body text);
    CREATE TABLE later (id int PRIMARY KEY, v int);";

async fn stack(extra_env: &[(&str, &str)]) -> Stack {
    Stack::start_with(
        SCHEMA,
        "CREATE PUBLICATION realtime_test FOR TABLE messages",
        extra_env,
    )
    .await
}

/// Joins one binding; returns the client and the `system` push (status
/// "ok" or "error" with the reason).
async fn join(server: &ServerProcess, topic: &str, binding: Value) -> (PhxClient, Msg) {
    let c = PhxClient::connect(&server.ws_url("2.0.0")).await.unwrap();
    join_on(c, topic, binding).await
}

/// [`join`] on a connected client.
async fn join_on(mut c: PhxClient, topic: &str, binding: Value) -> (PhxClient, Msg) {
    let r = c
        .push(
            topic,
            "phx_join",
            json!({"config": {"postgres_changes": [binding]}}),
            Some("1"),
        )
        .await;
    c.expect_reply(&r).await;
    let system = c.next_named("system").await;
    (c, system)
}

fn status(system: &Msg) -> (&str, &str) {
    (
        system.payload["status"].as_str().unwrap_or("?"),
        system.payload["message"].as_str().unwrap_or(""),
    )
}

/// The value of a counter at `/metrics`.
fn counter(server: &ServerProcess, name: &str) -> u64 {
    let (_, text) = server.get("/metrics").expect("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

async fn next_change(c: &mut PhxClient) -> Msg {
    c.next_named("postgres_changes").await
}

#[tokio::test]
async fn three_hundred_joins_at_once_cost_one_catalog_read() {
    let env = stack(&[]).await;
    let mut clients = Vec::new();
    for _ in 0..300 {
        clients.push(
            PhxClient::connect(&env.server.ws_url("2.0.0"))
                .await
                .unwrap(),
        );
    }
    // Every socket joins at the same moment, each with its own filter.
    let joins = clients.into_iter().enumerate().map(|(i, c)| async move {
        let binding = json!({"event": "INSERT", "schema": "public", "table": "messages",
                             "filter": format!("id=eq.{i}")});
        let (c, system) = join_on(c, &format!("realtime:s{i}"), binding).await;
        assert_eq!(status(&system).0, "ok", "socket {i}: {system:?}");
        c
    });
    let mut clients = futures::future::join_all(joins).await;
    env.db
        .batch_execute("INSERT INTO messages (id, room, body) VALUES (7, 1, 'seven')")
        .await
        .unwrap();
    let m = next_change(&mut clients[7]).await;
    assert_eq!(m.payload["data"]["record"]["body"], "seven");
    // Socket 8's filter does not match: it gets no change.
    while let Ok(m) = clients[8].next_within(Duration::from_millis(300)).await {
        assert_ne!(m.event, "postgres_changes", "{m:?}");
    }
    // One read at start answered all 300 (the change's Relation message
    // told nothing new, so it was kept), and none needed the catalog itself.
    assert_eq!(
        counter(&env.server, "realtime_catalog_snapshot_loads_total"),
        1
    );
    assert_eq!(
        counter(&env.server, "realtime_catalog_live_lookups_total"),
        0
    );
}

#[tokio::test]
async fn a_table_published_and_a_column_added_after_start_are_joinable_at_once() {
    let env = stack(&[]).await;
    let later = json!({"event": "*", "schema": "public", "table": "later"});
    let (_, system) = join(&env.server, "realtime:before", later.clone()).await;
    assert_eq!(status(&system).0, "error", "{system:?}");
    assert!(
        status(&system)
            .1
            .contains("public.later is not in any publication"),
        "{system:?}"
    );

    env.db
        .batch_execute("ALTER PUBLICATION realtime_test ADD TABLE later")
        .await
        .unwrap();
    let (mut c, system) = join(&env.server, "realtime:after", later).await;
    assert_eq!(status(&system).0, "ok", "{system:?}");
    env.db
        .batch_execute("INSERT INTO later VALUES (1, 10)")
        .await
        .unwrap();
    assert_eq!(next_change(&mut c).await.payload["data"]["record"]["v"], 10);

    env.db
        .batch_execute("ALTER TABLE later ADD COLUMN w int")
        .await
        .unwrap();
    let (mut w, system) = join(
        &env.server,
        "realtime:w",
        json!({"event": "INSERT", "schema": "public", "table": "later", "filter": "w=eq.1"}),
    )
    .await;
    assert_eq!(status(&system).0, "ok", "{system:?}");
    env.db
        .batch_execute("INSERT INTO later VALUES (2, 20, 2); INSERT INTO later VALUES (3, 30, 1)")
        .await
        .unwrap();
    assert_eq!(next_change(&mut w).await.payload["data"]["record"]["id"], 3);
    assert!(counter(&env.server, "realtime_catalog_live_lookups_total") >= 2);
}

#[tokio::test]
async fn a_table_dropped_from_the_publication_is_refused_after_the_next_look() {
    let env = stack(&[("AUTHZ_REFRESH_MS", "200")]).await;
    let messages = json!({"event": "*", "schema": "public", "table": "messages"});
    let (_, system) = join(&env.server, "realtime:a", messages.clone()).await;
    assert_eq!(status(&system).0, "ok", "{system:?}");
    let loads = counter(&env.server, "realtime_catalog_snapshot_loads_total");

    env.db
        .batch_execute("ALTER PUBLICATION realtime_test DROP TABLE messages")
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let (_, system) = join(&env.server, "realtime:b", messages.clone()).await;
        match status(&system) {
            ("error", reason) => {
                assert!(reason.contains("is not in any publication"), "{system:?}");
                break;
            }
            _ if started.elapsed() > Duration::from_secs(10) => {
                panic!("still joinable 10 s after the table left the publication: {system:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(counter(&env.server, "realtime_catalog_snapshot_loads_total") > loads);
}

#[tokio::test]
async fn a_retyped_column_is_noticed_from_the_stream_alone() {
    // The fingerprint is read once an hour here: only the Relation message
    // of the table's next change can tell the server.
    let env = stack(&[("AUTHZ_REFRESH_MS", "3600000")]).await;
    let (mut c, system) = join(
        &env.server,
        "realtime:all",
        json!({"event": "INSERT", "schema": "public", "table": "messages"}),
    )
    .await;
    assert_eq!(status(&system).0, "ok", "{system:?}");
    // `body` is text now: `like` fits it.
    let like = json!({"event": "*", "schema": "public", "table": "messages",
                      "filter": "body=like.1%"});
    let (_, system) = join(&env.server, "realtime:like1", like.clone()).await;
    assert_eq!(status(&system).0, "ok", "{system:?}");

    env.db
        .batch_execute(
            "ALTER TABLE messages ALTER COLUMN body TYPE int USING 0;
             INSERT INTO messages (id, room, body) VALUES (1, 1, 5)",
        )
        .await
        .unwrap();
    // Once the change arrived, its Relation message was read before it.
    assert_eq!(
        next_change(&mut c).await.payload["data"]["record"]["body"],
        5
    );
    let (_, system) = join(&env.server, "realtime:like2", like).await;
    let (status, reason) = status(&system);
    assert_eq!(status, "error", "{system:?}");
    assert!(
        reason.contains("like compares text, and column \"body\" is a number"),
        "{system:?}"
    );
}

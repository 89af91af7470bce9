//! realtime-js 1.x's view of the server: legacy topics, the exact legacy
//! payload, both serializers, against a real PostgreSQL and the real binary.

use std::time::Duration;

use realtime_tests::server::{ServerProcess, Stack};
use realtime_tests::ws::{Msg, PhxClient};
use serde_json::{json, Value};

async fn setup(schema_sql: &str) -> Stack {
    Stack::start(
        schema_sql,
        "CREATE PUBLICATION realtime_test FOR ALL TABLES",
    )
    .await
}

async fn joined(server: &ServerProcess, vsn: &str, topics: &[&str]) -> PhxClient {
    let mut c = PhxClient::connect(&server.ws_url(vsn))
        .await
        .expect("connect websocket");
    for t in topics {
        let reply = c.join(t, json!({})).await;
        assert_eq!(
            reply.payload,
            json!({"status": "ok", "response": {}}),
            "join {t}"
        );
    }
    c
}

/// The payload without its commit timestamp, which is checked for form.
fn without_timestamp(m: &Msg) -> Value {
    let mut p = m.payload.clone();
    let ts = p
        .as_object_mut()
        .unwrap()
        .remove("commit_timestamp")
        .expect("commit_timestamp");
    let ts = ts.as_str().unwrap();
    assert!(
        ts.len() == 27 && ts.ends_with('Z') && &ts[10..11] == "T",
        "commit_timestamp {ts:?} is ISO-8601 UTC with microseconds"
    );
    p
}

const USERS: &str = "CREATE TABLE users (id bigint PRIMARY KEY, name text)";

fn users_columns() -> Value {
    json!([
        {"name": "id", "type": "int8", "flags": ["key"], "type_modifier": 4294967295u32},
        {"name": "name", "type": "text", "flags": [], "type_modifier": 4294967295u32}
    ])
}

#[tokio::test]
async fn every_kind_of_change_reaches_star_schema_and_table_topics() {
    let env = setup(USERS).await;
    let topics = ["realtime:*", "realtime:public", "realtime:public:users"];
    let mut c = joined(&env.server, "1.0.0", &topics).await;

    env.db
        .batch_execute(
            "INSERT INTO users VALUES (1, 'Jo');
             UPDATE users SET name = 'Jane' WHERE id = 1;
             DELETE FROM users WHERE id = 1;",
        )
        .await
        .unwrap();
    env.db.batch_execute("TRUNCATE users").await.unwrap();

    let expected = [
        json!({"type": "INSERT", "schema": "public", "table": "users", "columns": users_columns(),
               "record": {"id": "1", "name": "Jo"}, "errors": null}),
        json!({"type": "UPDATE", "schema": "public", "table": "users", "columns": users_columns(),
               "record": {"id": "1", "name": "Jane"}, "old_record": {}, "errors": null}),
        json!({"type": "DELETE", "schema": "public", "table": "users", "columns": users_columns(),
               "old_record": {"id": "1"}, "errors": null}),
        json!({"type": "TRUNCATE", "schema": "public", "table": "users"}),
    ];
    for want in &expected {
        let mut seen_topics = Vec::new();
        for _ in 0..topics.len() {
            let m = c.next_event().await;
            assert_eq!(m.event, want["type"].as_str().unwrap());
            assert_eq!(m.msg_ref, Value::Null, "pushes carry a null ref");
            assert_eq!(&without_timestamp(&m), want);
            seen_topics.push(m.topic);
        }
        seen_topics.sort();
        assert_eq!(seen_topics, topics, "one push per joined topic");
    }
    c.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_row_filter_topic_gets_only_its_rows_and_tables_stay_apart() {
    let env = setup(&format!(
        "{USERS}; CREATE TABLE orders (id int PRIMARY KEY, total numeric)"
    ))
    .await;
    let mut only_2 = joined(&env.server, "1.0.0", &["realtime:public:users:id=eq.2"]).await;
    let mut users = joined(&env.server, "2.0.0", &["realtime:public:users"]).await;
    let mut orders = joined(&env.server, "1.0.0", &["realtime:public:orders"]).await;

    env.db
        .batch_execute(
            "INSERT INTO users VALUES (1, 'a'), (2, 'b'), (3, 'c');
             INSERT INTO orders VALUES (10, 9.99);
             UPDATE users SET name = 'B' WHERE id = 2;
             DELETE FROM users WHERE id = 2;",
        )
        .await
        .unwrap();

    let m = only_2.next_event().await;
    assert_eq!(
        (m.event.as_str(), &m.payload["record"]),
        ("INSERT", &json!({"id": "2", "name": "b"}))
    );
    assert_eq!(m.topic, "realtime:public:users:id=eq.2");
    let m = only_2.next_event().await;
    assert_eq!(
        (m.event.as_str(), &m.payload["record"]["name"]),
        ("UPDATE", &json!("B"))
    );
    let m = only_2.next_event().await;
    assert_eq!(
        (m.event.as_str(), &m.payload["old_record"]),
        ("DELETE", &json!({"id": "2"}))
    );
    only_2.expect_silence(Duration::from_millis(300)).await;

    let mut user_events = Vec::new();
    for _ in 0..5 {
        let m = users.next_event().await;
        assert_eq!(m.payload["table"], "users");
        assert_eq!(m.join_ref, Value::Null);
        user_events.push(m.event);
    }
    assert_eq!(
        user_events,
        ["INSERT", "INSERT", "INSERT", "UPDATE", "DELETE"]
    );
    users.expect_silence(Duration::from_millis(300)).await;

    let m = orders.next_event().await;
    assert_eq!(m.payload["record"], json!({"id": "10", "total": "9.99"}));
    assert_eq!(m.payload["columns"][1]["type"], "numeric");
    orders.expect_silence(Duration::from_millis(300)).await;
}

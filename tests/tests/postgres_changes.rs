//! realtime-js 2.x's protocol: postgres_changes bindings with filters and
//! typed values, Broadcast and Presence, over real sockets and a real
//! PostgreSQL.

use std::time::Duration;

use realtime_tests::server::{http_post, ServerProcess, Stack};
use realtime_tests::ws::{Msg, PhxClient};
use serde_json::{json, Value};

async fn setup(schema_sql: &str) -> Stack {
    Stack::start(
        schema_sql,
        "CREATE PUBLICATION realtime_test FOR TABLE messages, typed",
    )
    .await
}

const SCHEMA: &str = "
    CREATE TABLE messages (id bigint PRIMARY KEY, room int, body text, at timestamptz);
    ALTER TABLE messages REPLICA IDENTITY FULL;
    CREATE TABLE typed (id int PRIMARY KEY, ok bool, n numeric, f float8, j jsonb, a int[], t text[], ts timestamptz);
    CREATE TABLE unpublished (id int PRIMARY KEY);";

fn config(bindings: Value) -> Value {
    json!({"config": {"broadcast": {"ack": false, "self": false}, "presence": {"key": ""},
                      "private": false, "postgres_changes": bindings}})
}

/// Joins with `bindings`; returns the client, the join reply and the system push.
async fn join(server: &ServerProcess, topic: &str, bindings: Value) -> (PhxClient, Msg, Msg) {
    let mut c = PhxClient::connect(&server.ws_url("2.0.0")).await.unwrap();
    let r = c.push(topic, "phx_join", config(bindings), Some("1")).await;
    let reply = c.expect_reply(&r).await;
    let system = c.next().await.expect("system push");
    assert_eq!(system.event, "system", "{system:?}");
    let state = c.next().await.expect("presence_state push");
    assert_eq!(state.event, "presence_state");
    (c, reply, system)
}

async fn next_change(c: &mut PhxClient) -> Msg {
    loop {
        let m = c.next().await.expect("a change");
        if m.event == "postgres_changes" {
            return m;
        }
    }
}

#[tokio::test]
async fn the_join_reply_echoes_bindings_with_ids_and_changes_carry_matching_ids() {
    let env = setup(SCHEMA).await;
    let bindings = json!([
        {"event": "*", "schema": "public", "table": "messages"},
        {"event": "INSERT", "schema": "public", "table": "messages", "filter": "room=eq.1"},
        {"event": "DELETE", "schema": "public"}
    ]);
    let (mut c, reply, system) = join(&env.server, "realtime:room-1", bindings).await;
    assert_eq!(
        reply.payload,
        json!({"status": "ok", "response": {"postgres_changes": [
            {"id": 1, "event": "*", "schema": "public", "table": "messages"},
            {"id": 2, "event": "INSERT", "schema": "public", "table": "messages", "filter": "room=eq.1"},
            {"id": 3, "event": "DELETE", "schema": "public"}
        ]}})
    );
    assert_eq!(reply.join_ref, json!("1"));
    assert_eq!(
        system.payload,
        json!({"extension": "postgres_changes", "status": "ok",
               "message": "Subscribed to PostgreSQL", "channel": "room-1"})
    );

    env.db
        .batch_execute(
            "INSERT INTO messages VALUES (1, 1, 'hi', '2021-02-16 23:47:47.5+00');
             INSERT INTO messages VALUES (2, 2, 'other room', NULL);
             UPDATE messages SET body = 'hey' WHERE id = 1;
             DELETE FROM messages WHERE id = 2;",
        )
        .await
        .unwrap();

    let m = next_change(&mut c).await;
    assert_eq!(m.payload["ids"], json!([1, 2]));
    assert_eq!(
        m.payload["data"],
        json!({"schema": "public", "table": "messages", "commit_timestamp": m.payload["data"]["commit_timestamp"],
               "type": "INSERT",
               "columns": [{"name": "id", "type": "int8"}, {"name": "room", "type": "int4"},
                           {"name": "body", "type": "text"}, {"name": "at", "type": "timestamptz"}],
               "record": {"id": 1, "room": 1, "body": "hi", "at": "2021-02-16T23:47:47.5Z"},
               "errors": null})
    );
    let m = next_change(&mut c).await;
    assert_eq!(
        m.payload["ids"],
        json!([1]),
        "room 2 does not pass room=eq.1"
    );
    let m = next_change(&mut c).await;
    assert_eq!(m.payload["ids"], json!([1]));
    assert_eq!(m.payload["data"]["type"], "UPDATE");
    assert_eq!(m.payload["data"]["old_record"]["body"], "hi");
    assert_eq!(m.payload["data"]["record"]["body"], "hey");
    let m = next_change(&mut c).await;
    assert_eq!(m.payload["ids"], json!([1, 3]));
    assert_eq!(m.payload["data"]["old_record"]["id"], 2);
    c.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn values_are_typed_as_json() {
    let env = setup(SCHEMA).await;
    let (mut c, _, _) = join(
        &env.server,
        "realtime:typed",
        json!([{"event": "INSERT", "schema": "public", "table": "typed"}]),
    )
    .await;
    env.db
        .batch_execute(
            "INSERT INTO typed VALUES (7, true, 12.50, 'NaN', '{\"k\": [1, \"x\"]}',
               '{1,NULL,3}', '{a,\"b,c\"}', '2021-01-01 00:00:00+00')",
        )
        .await
        .unwrap();
    let m = next_change(&mut c).await;
    assert_eq!(
        m.payload["data"]["record"],
        json!({"id": 7, "ok": true, "n": 12.5, "f": "NaN", "j": {"k": [1, "x"]},
               "a": [1, null, 3], "t": ["a", "b,c"], "ts": "2021-01-01T00:00:00Z"})
    );
}

#[tokio::test]
async fn every_filter_operator_selects_by_the_columns_type() {
    let env = setup(SCHEMA).await;
    let filters = [
        ("room=eq.10", vec![10]),
        ("room=neq.10", vec![9, 11]),
        ("room=lt.10", vec![9]),
        ("room=lte.10", vec![9, 10]),
        ("room=gt.9", vec![10, 11]),
        ("room=gte.10", vec![10, 11]),
        ("room=in.(9,11)", vec![9, 11]),
        ("body=eq.ten", vec![10]),
        ("at=gt.2021-01-01T00:00:00Z", vec![11]),
    ];
    let mut clients = Vec::new();
    for (f, _) in &filters {
        let (c, reply, system) = join(
            &env.server,
            &format!("realtime:f-{f}"),
            json!([{"event": "INSERT", "schema": "public", "table": "messages", "filter": f}]),
        )
        .await;
        assert_eq!(reply.payload["status"], "ok");
        assert_eq!(system.payload["status"], "ok", "{f}: {system:?}");
        clients.push(c);
    }
    env.db
        .batch_execute(
            "INSERT INTO messages VALUES (1, 9, 'nine', '2020-06-01 00:00:00+00');
             INSERT INTO messages VALUES (2, 10, 'ten', '2020-12-31 23:59:59+00');
             INSERT INTO messages VALUES (3, 11, 'eleven', '2021-01-01 00:00:01+00');",
        )
        .await
        .unwrap();
    for ((f, want), c) in filters.iter().zip(clients.iter_mut()) {
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let m = next_change(c).await;
            got.push(m.payload["data"]["record"]["room"].as_i64().unwrap());
        }
        assert_eq!(&got, want, "filter {f}");
        c.expect_silence(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn bad_bindings_get_a_system_error_with_the_reason() {
    let env = setup(SCHEMA).await;
    let cases = [
        (
            json!({"event": "*", "schema": "public", "table": "unpublished"}),
            "is not in any publication",
        ),
        (
            json!({"event": "*", "schema": "public", "table": "nope"}),
            "is not in any publication",
        ),
        (
            json!({"event": "*", "schema": "public", "table": "messages", "filter": "nope=eq.1"}),
            "no column \"nope\"",
        ),
        (
            json!({"event": "*", "schema": "public", "table": "messages", "filter": "room=eq.abc"}),
            "not a valid number",
        ),
        (
            json!({"event": "*", "schema": "public", "table": "messages", "filter": "room=like.1"}),
            "like compares text, and column \"room\" is a number",
        ),
        (
            json!({"event": "*", "schema": "public", "table": "messages", "filter": "room=zz.1"}),
            "unknown operator \"zz\"",
        ),
        (
            json!({"event": "TRUNCATE", "schema": "public", "table": "messages"}),
            "invalid event",
        ),
    ];
    for (binding, reason) in cases {
        let (_, reply, system) = join(&env.server, "realtime:bad", json!([binding])).await;
        assert_eq!(reply.payload["status"], "ok");
        assert_eq!(system.payload["status"], "error", "{binding}");
        let message = system.payload["message"].as_str().unwrap();
        assert!(message.contains(reason), "{binding}: {message}");
    }
}

#[tokio::test]
async fn broadcast_reaches_the_other_members_and_self_and_ack_when_asked() {
    let env = setup(SCHEMA).await;
    let topic = "realtime:chat";
    let mut a = PhxClient::connect(&env.server.ws_url("2.0.0"))
        .await
        .unwrap();
    let mut b = PhxClient::connect(&env.server.ws_url("1.0.0"))
        .await
        .unwrap();
    let cfg = |self_: bool, ack: bool| json!({"config": {"broadcast": {"self": self_, "ack": ack}, "presence": {"key": ""}, "postgres_changes": []}});
    let r = a.push(topic, "phx_join", cfg(true, true), Some("a1")).await;
    assert_eq!(a.expect_reply(&r).await.payload["status"], "ok");
    let r = b.push(topic, "phx_join", cfg(false, false), None).await;
    assert_eq!(b.expect_reply(&r).await.payload["status"], "ok");

    let msg = json!({"type": "broadcast", "event": "cursor", "payload": {"x": 1}});
    let r = a.push(topic, "broadcast", msg.clone(), Some("a1")).await;
    let mut got_ack = false;
    let mut got_self = false;
    for _ in 0..3 {
        let m = a.next().await.unwrap();
        match m.event.as_str() {
            "phx_reply" if m.msg_ref == json!(r) => got_ack = true,
            "broadcast" => {
                assert_eq!(m.payload, msg);
                got_self = true;
            }
            _ => {}
        }
        if got_ack && got_self {
            break;
        }
    }
    assert!(got_ack && got_self, "ack {got_ack}, self {got_self}");
    assert_eq!(b.next_event().await.event, "presence_state");
    let m = b.next_event().await;
    assert_eq!((m.event.as_str(), &m.payload), ("broadcast", &msg));

    // b has self off: its own broadcast reaches a only.
    b.push(topic, "broadcast", msg.clone(), None).await;
    b.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(a.next_event().await.payload, msg);

    // Over HTTP.
    let body = r#"{"messages":[{"topic":"chat","event":"note","payload":{"y":2}}]}"#;
    let (status, _) = http_post(env.server.port, "/api/broadcast", &[], body).expect("an answer");
    assert_eq!(status, 202);
    let m = b.next_event().await;
    assert_eq!(
        m.payload,
        json!({"type": "broadcast", "event": "note", "payload": {"y": 2}})
    );
}

#[tokio::test]
async fn presence_tracks_and_reports_joins_and_leaves_including_a_disconnect() {
    let env = setup(SCHEMA).await;
    let topic = "realtime:lobby";
    let cfg = |key: &str| json!({"config": {"broadcast": {}, "presence": {"key": key}, "postgres_changes": []}});
    let mut a = PhxClient::connect(&env.server.ws_url("2.0.0"))
        .await
        .unwrap();
    let r = a.push(topic, "phx_join", cfg("alice"), Some("1")).await;
    a.expect_reply(&r).await;
    let state = a.next().await.unwrap();
    assert_eq!(
        (state.event.as_str(), &state.payload),
        ("presence_state", &json!({}))
    );
    let r = a
        .push(
            topic,
            "presence",
            json!({"type": "presence", "event": "track", "payload": {"status": "online"}}),
            Some("1"),
        )
        .await;
    let mut diff = None;
    let mut replied = false;
    while diff.is_none() || !replied {
        let m = a.next().await.unwrap();
        if m.event == "phx_reply" && m.msg_ref == json!(r) {
            replied = true;
        } else if m.event == "presence_diff" {
            diff = Some(m.payload);
        }
    }
    let diff = diff.unwrap();
    assert_eq!(diff["joins"]["alice"]["metas"][0]["status"], "online");
    assert!(diff["joins"]["alice"]["metas"][0]["phx_ref"].is_string());
    assert_eq!(diff["leaves"], json!({}));

    let mut b = PhxClient::connect(&env.server.ws_url("2.0.0"))
        .await
        .unwrap();
    let r = b.push(topic, "phx_join", cfg("bob"), Some("1")).await;
    b.expect_reply(&r).await;
    let state = b.next().await.unwrap();
    assert_eq!(state.event, "presence_state");
    assert_eq!(state.payload["alice"]["metas"][0]["status"], "online");

    drop(a); // the socket goes away without leaving
    let m = b.next_event().await;
    assert_eq!(m.event, "presence_diff");
    assert_eq!(m.payload["leaves"]["alice"]["metas"][0]["status"], "online");
    assert_eq!(m.payload["joins"], json!({}));
}

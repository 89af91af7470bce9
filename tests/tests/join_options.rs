//! The join options of the newest realtime-js (2.119.1), on the wire:
//! `presence.enabled`, `broadcast.replay`, `broadcast.replication_ready`
//! and `postgres_changes_options.wait`, with the replication stream live
//! and held back (a transaction holding an xid keeps PostgreSQL from
//! creating the server's slot). What the client itself makes of them is in
//! `tests/js/realtime-js-live.test.mjs` and `realtime-js-v2.test.mjs`.

use std::time::{Duration, Instant};

use realtime_tests::server::{ServerProcess, Stack};
use realtime_tests::ws::{Msg, PhxClient, WsEnd};
use realtime_tests::TempPostgres;
use serde_json::{json, Value};

fn binding() -> Value {
    json!([{"event": "INSERT", "schema": "public", "table": "items"}])
}

/// Every frame until `until` (inclusive) matches; panics past 10 s.
async fn frames_until(c: &mut PhxClient, until: impl Fn(&Msg) -> bool) -> Vec<Msg> {
    let mut out = Vec::new();
    loop {
        let m = c
            .next()
            .await
            .unwrap_or_else(|e| panic!("after {out:?}: {e:?}"));
        let done = until(&m);
        out.push(m);
        if done {
            return out;
        }
    }
}

fn events(frames: &[Msg]) -> Vec<String> {
    frames
        .iter()
        .map(|m| match (m.event.as_str(), m.payload.get("extension")) {
            ("system", Some(ext)) => format!("system {}", ext.as_str().unwrap_or("?")),
            (e, _) => e.to_string(),
        })
        .collect()
}

#[tokio::test]
async fn with_the_stream_live_each_signal_follows_the_join_at_once() {
    let stack = Stack::items(&[]).await;
    let s = &stack.server;
    let mut c = PhxClient::connect(&s.ws_url("2.0.0")).await.unwrap();
    c.push(
        "realtime:ready",
        "phx_join",
        json!({"config": {"broadcast": {"replication_ready": true},
                          "postgres_changes": binding()}}),
        Some("1"),
    )
    .await;
    let frames = frames_until(&mut c, |m| {
        m.event == "system" && m.payload["extension"] == "system"
    })
    .await;
    assert_eq!(
        events(&frames),
        [
            "phx_reply",
            "system postgres_changes",
            "presence_state",
            "system system"
        ]
    );
    assert_eq!(
        frames[3].payload,
        json!({"extension": "system", "status": "ok",
               "message": "Replication connection established", "channel": "ready"})
    );

    // wait: the reply comes once the bindings are subscribed, then the
    // system message; a refused binding refuses the join.
    c.push(
        "realtime:wait",
        "phx_join",
        json!({"config": {"postgres_changes_options": {"wait": true},
                          "postgres_changes": binding()}}),
        Some("2"),
    )
    .await;
    let frames = frames_until(&mut c, |m| m.event == "presence_state").await;
    assert_eq!(
        events(&frames),
        ["phx_reply", "system postgres_changes", "presence_state"]
    );
    assert_eq!(frames[0].payload["status"], "ok");
    stack
        .db
        .batch_execute("INSERT INTO items VALUES (1, 'after the reply')")
        .await
        .unwrap();
    let change = loop {
        let m = c.next_event().await;
        if m.topic == "realtime:wait" {
            break m;
        }
    };
    assert_eq!(change.event, "postgres_changes");
    assert_eq!(change.payload["data"]["record"]["id"], 1);
    let reply = c
        .join(
            "realtime:refused",
            json!({"config": {"postgres_changes_options": {"wait": true},
                              "postgres_changes": [{"event": "*", "schema": "public", "table": "nosuch"}]}}),
        )
        .await;
    assert_eq!(reply.payload["status"], "error");
    let reason = reply.payload["response"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("public.nosuch is not in any publication"),
        "{reason}"
    );
}

#[tokio::test]
async fn presence_disabled_gets_no_presence_yet_its_track_is_seen() {
    let stack = Stack::items(&[]).await;
    let s = &stack.server;
    let mut quiet = PhxClient::connect(&s.ws_url("2.0.0")).await.unwrap();
    let mut watcher = PhxClient::connect(&s.ws_url("2.0.0")).await.unwrap();
    let reply = quiet
        .join(
            "realtime:p",
            json!({"config": {"presence": {"key": "quiet", "enabled": false}}}),
        )
        .await;
    assert_eq!(reply.payload["status"], "ok");
    watcher
        .join(
            "realtime:p",
            json!({"config": {"presence": {"key": "watcher", "enabled": true}}}),
        )
        .await;
    assert_eq!(watcher.next().await.unwrap().event, "presence_state");
    let r = quiet
        .push(
            "realtime:p",
            "presence",
            json!({"type": "presence", "event": "track", "payload": {"who": "quiet"}}),
            None,
        )
        .await;
    assert_eq!(quiet.expect_reply(&r).await.payload["status"], "ok");
    let diff = watcher.next().await.unwrap();
    assert_eq!(diff.event, "presence_diff");
    assert!(diff.payload["joins"]["quiet"].is_object(), "{diff:?}");
    let r = watcher
        .push(
            "realtime:p",
            "presence",
            json!({"type": "presence", "event": "track", "payload": {}}),
            None,
        )
        .await;
    watcher.expect_reply(&r).await;
    // Nothing of presence reached the quiet member (no state at join, no
    // diff of either track); a broadcast still does.
    watcher
        .push(
            "realtime:p",
            "broadcast",
            json!({"type": "broadcast", "event": "hi", "payload": {}}),
            None,
        )
        .await;
    let next = quiet.next().await.unwrap();
    assert_eq!(next.event, "broadcast", "{next:?}");
}

#[tokio::test]
async fn replay_of_a_public_channel_is_refused_as_supabase_does() {
    let stack = Stack::items(&[]).await;
    let mut c = PhxClient::connect(&stack.server.ws_url("2.0.0"))
        .await
        .unwrap();
    let reply = c
        .join(
            "realtime:r",
            json!({"config": {"broadcast": {"replay": {"since": 1, "limit": 10}}}}),
        )
        .await;
    assert_eq!(
        reply.payload,
        json!({"status": "error", "response": {"reason":
            "UnableToReplayMessages: Replay is not allowed for public channels (join with config.private: true)"}})
    );
}

#[tokio::test]
async fn while_the_stream_is_held_back_nothing_is_said_and_the_waits_end_with_their_reasons() {
    let (pg, _db) = TempPostgres::with_schema(
        "CREATE TABLE items (id int PRIMARY KEY, body text);
         CREATE PUBLICATION realtime_test FOR ALL TABLES;",
    )
    .await
    .unwrap();
    let blocker = pg.connect().await.unwrap();
    blocker
        .batch_execute("BEGIN; SELECT txid_current();")
        .await
        .unwrap();
    let mut env = ServerProcess::env_for(&pg, &["realtime_test"]);
    env.insert("REPLICATION_READY_TIMEOUT_MS".into(), "2000".into());
    env.insert("POSTGRES_CHANGES_WAIT_MAX_MS".into(), "1000".into());
    let server = tokio::task::spawn_blocking(move || {
        let mut s = ServerProcess::spawn(env);
        s.wait_for("/healthz", Duration::from_secs(30)).unwrap();
        s
    })
    .await
    .unwrap();
    assert_eq!(server.get("/readyz").unwrap().0, 503, "held back");

    let mut c = PhxClient::connect(&server.ws_url("2.0.0")).await.unwrap();
    let started = Instant::now();
    // A join with bindings: answered, but not told they are live.
    c.push(
        "realtime:plain",
        "phx_join",
        json!({"config": {"postgres_changes": binding()}}),
        Some("1"),
    )
    .await;
    // replication_ready: told nothing, then closed at its timeout.
    c.push(
        "realtime:ready",
        "phx_join",
        json!({"config": {"broadcast": {"replication_ready": true}}}),
        Some("2"),
    )
    .await;
    // wait, asking for a minute: held, refused at the server's maximum.
    let wait_ref = c
        .push(
            "realtime:wait",
            "phx_join",
            json!({"config": {"postgres_changes_options": {"wait": true, "timeout": 60000},
                              "postgres_changes": binding()}}),
            Some("3"),
        )
        .await;
    let mut seen = Vec::new();
    // The socket is served meanwhile: heartbeats are answered.
    let hb = c.push("phoenix", "heartbeat", json!({}), None).await;
    let mut heartbeat_at = None;
    while started.elapsed() < Duration::from_millis(2800) {
        match c.next_within(Duration::from_millis(100)).await {
            Ok(m) => {
                if m.topic == "phoenix" && m.msg_ref == json!(hb) {
                    heartbeat_at = Some(started.elapsed());
                }
                seen.push((started.elapsed(), m));
            }
            Err(WsEnd::Timeout) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    let heartbeat_at = heartbeat_at.expect("the heartbeat answered");
    assert!(
        heartbeat_at < Duration::from_millis(900),
        "{heartbeat_at:?}"
    );
    let on = |topic: &str| -> Vec<(Duration, Msg)> {
        seen.iter()
            .filter(|(_, m)| m.topic == topic)
            .cloned()
            .collect()
    };
    let plain = on("realtime:plain");
    assert_eq!(
        events(&plain.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>()),
        ["phx_reply", "presence_state"],
        "no 'Subscribed to PostgreSQL' while not live"
    );
    let ready = on("realtime:ready");
    assert_eq!(
        events(&ready.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>()),
        ["phx_reply", "presence_state", "system system", "phx_close"]
    );
    let (at, system) = &ready[2];
    assert!(*at >= Duration::from_millis(1900), "told at {at:?}");
    assert_eq!(
        system.payload,
        json!({"extension": "system", "status": "error",
               "message": "Replication connection was not established in time", "channel": "ready"})
    );
    let wait = on("realtime:wait");
    assert_eq!(
        events(&wait.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>()),
        ["presence_state", "phx_reply"],
        "the held reply, refused"
    );
    let (at, reply) = &wait[1];
    assert!(
        *at >= Duration::from_millis(900) && *at < Duration::from_millis(1900),
        "refused at {at:?}"
    );
    assert_eq!(reply.msg_ref, json!(wait_ref));
    assert_eq!(reply.payload["status"], "error");
    let reason = reply.payload["response"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(
            "PostgresChangesSubscribeTimeout: the replication stream was not live within 1000 ms"
        ),
        "{reason}"
    );

    // The stream may start: the plain channel is told, the others are gone.
    drop(blocker);
    let m = c.next_within(Duration::from_secs(20)).await.unwrap();
    assert_eq!(m.topic, "realtime:plain", "{m:?}");
    assert_eq!(
        m.payload,
        json!({"extension": "postgres_changes", "status": "ok",
               "message": "Subscribed to PostgreSQL", "channel": "plain"})
    );
    assert_eq!(server.get("/readyz").unwrap().0, 200);
    c.expect_silence(Duration::from_millis(500)).await;
}

//! Broadcasts with binary payloads, as realtime-js 2.1xx sends them on
//! `vsn=2.0.0` (a kind 3 binary frame, payload encoding 0) and reads them (a
//! kind 4 binary frame), through real sockets and real server processes:
//! relayed byte for byte to vsn 2.0.0 members, not to vsn 1.0.0 members
//! (which cannot read binary frames), across the cluster bus between two
//! servers, and from `POST /api/broadcast/<topic>/events/<event>` with an
//! `application/octet-stream` body. `persist` and oversized payloads are
//! refused with the reason. The same through realtime-js itself is in
//! `tests/js/realtime-js-v2.test.mjs`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use realtime_tests::server::{ServerProcess, Stack};
use realtime_tests::ws::{Msg, PhxClient, WsEnd};
use realtime_tests::TempPostgres;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const TOPIC: &str = "realtime:room";

/// A user broadcast push (kind 3) as realtime-js 2.119.1's serializer lays
/// it out: kind, the lengths of join_ref, ref, topic, event and metadata,
/// the payload encoding (0 binary, 1 JSON), the fields, the payload.
fn push_frame(
    join_ref: &str,
    msg_ref: &str,
    topic: &str,
    event: &str,
    meta: &str,
    encoding: u8,
    payload: &[u8],
) -> Message {
    let mut b = vec![
        3,
        join_ref.len() as u8,
        msg_ref.len() as u8,
        topic.len() as u8,
        event.len() as u8,
        meta.len() as u8,
        encoding,
    ];
    for f in [join_ref, msg_ref, topic, event, meta] {
        b.extend_from_slice(f.as_bytes());
    }
    b.extend_from_slice(payload);
    Message::binary(b)
}

/// The user broadcast (kind 4) realtime-js 2.119.1's `_decodeUserBroadcast`
/// reads: kind, the lengths of topic, event and metadata, the encoding,
/// the fields, the payload.
fn user_broadcast(topic: &str, event: &str, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![4, topic.len() as u8, event.len() as u8, 0, 0];
    b.extend_from_slice(topic.as_bytes());
    b.extend_from_slice(event.as_bytes());
    b.extend_from_slice(payload);
    b
}

/// Joins `topic` on `server` with `vsn`; returns once the join is answered
/// and its `presence_state` arrived.
async fn member(server: &ServerProcess, vsn: &str, config: Value) -> PhxClient {
    let mut c = PhxClient::connect(&server.ws_url(vsn)).await.unwrap();
    let reply = c.join(TOPIC, json!({ "config": config })).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    loop {
        let m = c.next().await.expect("presence_state");
        if m.event == "presence_state" {
            return c;
        }
    }
}

/// The next data frame: a binary frame's bytes, or a text frame parsed.
async fn next(c: &mut PhxClient, within: Duration) -> Result<Result<Vec<u8>, Msg>, WsEnd> {
    match c.next_data(within).await? {
        Message::Binary(b) => Ok(Ok(b.to_vec())),
        Message::Text(t) => Ok(Err(c.parse_text(t.as_str()))),
        other => unreachable!("next_data returns data frames: {other:?}"),
    }
}

async fn next_binary(c: &mut PhxClient) -> Vec<u8> {
    loop {
        match next(c, Duration::from_secs(10)).await {
            Ok(Ok(bytes)) => return bytes,
            Ok(Err(m)) if m.event == "phx_reply" => continue,
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }
}

async fn expect_reply(c: &mut PhxClient, r: &str) -> Msg {
    loop {
        match next(c, Duration::from_secs(10)).await {
            Ok(Err(m)) if m.event == "phx_reply" && m.msg_ref == json!(r) => return m,
            Ok(_) => continue,
            Err(e) => panic!("no reply to {r}: {e:?}"),
        }
    }
}

fn metric(server: &ServerProcess, name: &str) -> u64 {
    let (_, body) = server.get("/metrics").expect("GET /metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Every byte value, so nothing is taken for text on the way.
fn all_bytes() -> Vec<u8> {
    (0..=255u8).chain((0..=255u8).rev()).collect()
}

#[tokio::test]
async fn binary_payloads_reach_vsn2_members_byte_for_byte_and_not_vsn1_members() {
    let stack = Stack::items(&[("CLUSTER_MAX_MESSAGE_BYTES", "4096")]).await;
    let server = &stack.server;
    let mut a = member(
        server,
        "2.0.0",
        json!({"broadcast": {"self": true, "ack": true}}),
    )
    .await;
    let mut b = member(server, "2.0.0", json!({})).await;
    let mut old = member(server, "1.0.0", json!({})).await;

    let bytes = all_bytes();
    a.send_raw(push_frame("1", "2", TOPIC, "blob", "", 0, &bytes))
        .await;
    let want = user_broadcast(TOPIC, "blob", &bytes);
    assert_eq!(next_binary(&mut b).await, want, "B gets the kind 4 frame");
    // A asked for its own (self) and an ack.
    let mut acked = false;
    let mut own = None;
    while !(acked && own.is_some()) {
        match next(&mut a, Duration::from_secs(10))
            .await
            .expect("A's frames")
        {
            Ok(frame) => own = Some(frame),
            Err(m) if m.event == "phx_reply" => {
                assert_eq!(m.msg_ref, json!("2"));
                assert_eq!(m.payload["status"], "ok", "{m:?}");
                acked = true;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(own.unwrap(), want, "self: A gets its own");

    // A JSON broadcast after it: the vsn 1.0.0 member's next frame, so the
    // binary one never reached it.
    a.send_raw(push_frame("1", "3", TOPIC, "after", "", 1, br#"{"n":1}"#))
        .await;
    match next(&mut old, Duration::from_secs(10)).await {
        Ok(Err(m)) => {
            assert_eq!(m.event, "broadcast");
            assert_eq!(
                m.payload,
                json!({"type": "broadcast", "event": "after", "payload": {"n": 1}})
            );
        }
        other => panic!("the vsn 1.0.0 member's next frame: {other:?}"),
    }
    match next(&mut b, Duration::from_secs(10)).await {
        Ok(Err(m)) => assert_eq!(m.payload["event"], "after", "{m:?}"),
        other => panic!("B's next frame: {other:?}"),
    }
    assert_eq!(
        metric(server, "realtime_binary_broadcasts_skipped_total"),
        1,
        "the one skipped member is counted"
    );

    // persist: refused with the reason, nothing relayed.
    a.send_raw(push_frame(
        "1",
        "4",
        TOPIC,
        "blob",
        r#"{"persist":true}"#,
        0,
        b"keep me",
    ))
    .await;
    let reply = expect_reply(&mut a, "4").await;
    assert_eq!(reply.payload["status"], "error");
    let reason = reply.payload["response"]["reason"].as_str().unwrap();
    assert!(reason.contains("persist is not supported"), "{reason}");
    assert_eq!(reply.payload["response"]["error"], reason);
    // Over CLUSTER_MAX_MESSAGE_BYTES: refused, nothing relayed.
    a.send_raw(push_frame("1", "5", TOPIC, "blob", "", 0, &[7; 5000]))
        .await;
    let reply = expect_reply(&mut a, "5").await;
    assert_eq!(reply.payload["status"], "error");
    let reason = reply.payload["response"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("5000 bytes is over CLUSTER_MAX_MESSAGE_BYTES (4096)"),
        "{reason}"
    );
    match next(&mut b, Duration::from_millis(500)).await {
        Err(WsEnd::Timeout) => {}
        other => panic!("B got what was refused: {other:?}"),
    }
    // persist: false is no request to store.
    a.send_raw(push_frame(
        "1",
        "6",
        TOPIC,
        "blob",
        r#"{"persist":false}"#,
        0,
        b"ok",
    ))
    .await;
    assert_eq!(
        next_binary(&mut b).await,
        user_broadcast(TOPIC, "blob", b"ok")
    );
}

/// A POST of `body` with `headers` to `path` on `port`: the status and body.
fn post(port: u16, path: &str, headers: &[&str], body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap();
    (status, body)
}

#[tokio::test]
async fn binary_payloads_cross_the_cluster_and_come_from_the_octet_stream_route() {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .expect("start PostgreSQL");
    pg.connect()
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION realtime_test FOR TABLE t;",
        )
        .await
        .unwrap();
    let mut servers = Vec::new();
    for _ in 0..2 {
        let env = ServerProcess::env_for(&pg, &["realtime_test"]);
        servers.push(
            tokio::task::spawn_blocking(move || ServerProcess::start(env))
                .await
                .unwrap(),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for s in &servers {
        while !s
            .get("/metrics")
            .is_some_and(|(_, m)| m.contains("realtime_cluster_nodes 1"))
        {
            assert!(
                Instant::now() < deadline,
                "the servers never saw each other"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut on_first = member(&servers[0], "2.0.0", json!({})).await;
    let mut on_second = member(&servers[1], "2.0.0", json!({})).await;

    // From a socket on the first server to a member of the second: larger
    // than one NOTIFY, every byte value.
    let large: Vec<u8> = all_bytes().into_iter().cycle().take(30_000).collect();
    let mut sender = member(&servers[0], "2.0.0", json!({})).await;
    sender
        .send_raw(push_frame("1", "2", TOPIC, "blob", "", 0, &large))
        .await;
    let want = user_broadcast(TOPIC, "blob", &large);
    assert_eq!(next_binary(&mut on_second).await, want, "across servers");
    assert_eq!(next_binary(&mut on_first).await, want, "on its own server");

    // POST application/octet-stream to the second server (under
    // /realtime/v1 too): the bytes reach the first server's member.
    for path in [
        "/api/broadcast/room/events/upload",
        "/realtime/v1/api/broadcast/room/events/upload",
    ] {
        let port = servers[1].port;
        let (status, body) = tokio::task::spawn_blocking(move || {
            post(
                port,
                path,
                &["Content-Type: application/octet-stream"],
                &[0, 159, 146, 150, 255],
            )
        })
        .await
        .unwrap();
        assert_eq!(status, 202, "{path}: {body}");
        let want = user_broadcast(TOPIC, "upload", &[0, 159, 146, 150, 255]);
        assert_eq!(next_binary(&mut on_first).await, want, "{path}");
        assert_eq!(next_binary(&mut on_second).await, want, "{path}");
    }
}

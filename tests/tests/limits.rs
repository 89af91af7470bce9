//! Nothing lost, nothing let in: each kind of bad input gets its documented
//! answer (an error reply, or a close code and reason) and the server goes on
//! serving others; a client that stops reading is closed as a slow consumer
//! while the others receive every change, and the server's memory stays
//! within what its queues allow. Real PostgreSQL, the real server binary,
//! real WebSockets.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use realtime_tests::server::ServerProcess;
use realtime_tests::server::Stack;
use realtime_tests::ws::{PhxClient, WsEnd};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

const TOPIC: &str = "realtime:public:items";

/// The server on PostgreSQL with a published table `items (id, body)`
/// ([`Stack::items`]), with this file's helpers.
struct Env(Stack);

impl std::ops::Deref for Env {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.0
    }
}

/// PostgreSQL with a published table `items (id, body)` and the server on
/// it, with `limits` added to its environment.
async fn start(limits: &[(&str, &str)]) -> Env {
    Env(Stack::items(limits).await)
}

impl Env {
    /// A new, well-behaved client joins and receives a real INSERT of row `id`.
    async fn still_serves(&self, id: i32, after: &str) {
        let mut c = PhxClient::connect(&self.server.ws_url("1.0.0"))
            .await
            .unwrap_or_else(|e| panic!("after {after}: connect: {e}"));
        let reply = c.join(TOPIC, json!({})).await;
        assert_eq!(
            reply.payload,
            json!({"status": "ok", "response": {}}),
            "after {after}: join"
        );
        self.db
            .execute(
                "INSERT INTO items (id, body) VALUES ($1, 'still served')",
                &[&id],
            )
            .await
            .expect("insert");
        let m = c.next_event().await;
        assert_eq!(
            (m.event.as_str(), &m.payload["record"]),
            (
                "INSERT",
                &json!({"id": id.to_string(), "body": "still served"})
            ),
            "after {after}: a well-behaved client receives the insert"
        );
    }
}

/// The close code and reason that end `c`, failing on any frame before it.
async fn close_of(c: &mut PhxClient) -> (u16, String) {
    match c.next().await {
        Err(WsEnd::Closed(Some(close))) => close,
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// Pushes `event` and returns the payload of its reply, which must be the
/// next frame.
async fn answer(c: &mut PhxClient, topic: &str, event: &str, payload: Value) -> Value {
    let r = c
        .push(topic, event, payload, Some(&format!("{topic}-join")))
        .await;
    let m = c.next().await.expect("a reply");
    assert_eq!(
        (m.event.as_str(), &m.msg_ref),
        ("phx_reply", &json!(r)),
        "{event} on {topic} is answered at once"
    );
    m.payload
}

fn error(reason: &str) -> Value {
    json!({"status": "error", "response": {"reason": reason}})
}

fn ok() -> Value {
    json!({"status": "ok", "response": {}})
}

const MAX_FRAME_BYTES: usize = 4096;

#[tokio::test]
async fn bad_frames_are_closed_with_a_code_and_a_reason() {
    let env = start(&[("MAX_FRAME_BYTES", "4096")]).await;
    let too_big = json!({"topic": "phoenix", "event": "heartbeat", "ref": "1",
        "payload": {"pad": "x".repeat(MAX_FRAME_BYTES)}})
    .to_string();
    let mut binary_too_big = vec![3, 0, 0, 4, 1, 0, 1];
    binary_too_big.extend_from_slice(b"roome");
    binary_too_big.extend_from_slice(json!("x".repeat(MAX_FRAME_BYTES)).to_string().as_bytes());
    let frame_too_large = "frame too large: the limit is 4096 bytes";
    let cases: Vec<(&str, &str, Message, u16, &str)> = vec![
        (
            "text that is not JSON (v1)",
            "1.0.0",
            Message::text(r#"{"topic": "phoenix", "#),
            1007,
            "malformed frame: not JSON: EOF while parsing a value at line 1 column 21",
        ),
        (
            "text that is not JSON (v2)",
            "2.0.0",
            Message::text("heartbeat"),
            1007,
            "malformed frame: not JSON: expected value at line 1 column 1",
        ),
        (
            "a JSON array on v1",
            "1.0.0",
            Message::text(r#"[null,"1","phoenix","heartbeat",{}]"#),
            1007,
            "malformed frame: a JSON array is a vsn=2.0.0 frame; vsn=1.0.0 takes an object {topic, event, payload, ref}",
        ),
        (
            "a JSON number on v1",
            "1.0.0",
            Message::text("42"),
            1007,
            "malformed frame: invalid type: integer `42`, expected an object {topic, event, payload, ref} at line 1 column 2",
        ),
        (
            "a JSON object on v2",
            "2.0.0",
            Message::text(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#),
            1007,
            "malformed frame: invalid type: map, expected an array [join_ref, ref, topic, event, payload] at line 1 column 0",
        ),
        (
            "a short array on v2",
            "2.0.0",
            Message::text(r#"[null,"1","phoenix"]"#),
            1007,
            "malformed frame: invalid length 3, expected an array [join_ref, ref, topic, event, payload] at line 1 column 20",
        ),
        (
            "a join without a topic (v1)",
            "1.0.0",
            Message::text(r#"{"event":"phx_join","payload":{},"ref":"1"}"#),
            1007,
            "malformed frame: no topic",
        ),
        (
            "a join with an empty topic (v2)",
            "2.0.0",
            Message::text(r#"["1","1","","phx_join",{}]"#),
            1007,
            "malformed frame: no topic",
        ),
        (
            "a frame without an event",
            "1.0.0",
            Message::text(r#"{"topic":"realtime:*","payload":{},"ref":"1"}"#),
            1007,
            r#"malformed frame: no event (topic "realtime:*")"#,
        ),
        (
            "a binary frame on v1",
            "1.0.0",
            Message::binary(vec![3, 0, 0, 0, 0, 0, 1]),
            1003,
            "malformed frame: binary frame: binary frames need vsn=2.0.0",
        ),
        (
            "a binary frame of an unknown kind (v2)",
            "2.0.0",
            Message::binary(vec![9, 0, 0, 0, 0, 0, 1]),
            1003,
            "malformed frame: binary frame: kind 9 is not supported (only 3, a user broadcast push)",
        ),
        (
            "a binary frame cut short (v2)",
            "2.0.0",
            Message::binary(vec![3, 1, 1]),
            1003,
            "malformed frame: binary frame: shorter than its header",
        ),
        (
            "a text frame over MAX_FRAME_BYTES",
            "1.0.0",
            Message::text(too_big),
            1009,
            frame_too_large,
        ),
        (
            "a binary frame over MAX_FRAME_BYTES (v2)",
            "2.0.0",
            Message::binary(binary_too_big),
            1009,
            frame_too_large,
        ),
        (
            "a text frame that is not UTF-8",
            "1.0.0",
            Message::Frame(Frame::message(
                vec![b'"', 0xff, 0xfe, b'"'],
                OpCode::Data(Data::Text),
                true,
            )),
            1007,
            "malformed frame: a text frame that is not valid UTF-8",
        ),
        (
            "a frame with a reserved bit set (RFC 6455 violation)",
            "1.0.0",
            Message::Frame({
                let mut f = Frame::message("{}", OpCode::Data(Data::Text), true);
                f.header_mut().rsv1 = true;
                f
            }),
            1002,
            "protocol error: Reserved bits are non-zero",
        ),
    ];
    let mut wrong = Vec::new();
    for (i, (case, vsn, msg, code, reason)) in cases.into_iter().enumerate() {
        let mut c = PhxClient::connect(&env.server.ws_url(vsn))
            .await
            .expect("connect");
        c.send_raw(msg).await;
        let got = close_of(&mut c).await;
        if got != (code, reason.to_string()) {
            wrong.push(format!("{case}: got {got:?}, want {:?}", (code, reason)));
        }
        env.still_serves(i as i32 + 1, case).await;
    }
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn bad_requests_get_an_error_reply_and_the_socket_goes_on() {
    let env = start(&[("MAX_CHANNELS_PER_SOCKET", "3")]).await;
    let mut c = PhxClient::connect(&env.server.ws_url("2.0.0"))
        .await
        .expect("connect");

    assert_eq!(
        answer(&mut c, TOPIC, "shout", json!({})).await,
        error("unmatched topic"),
        "an unknown event on a topic the socket has not joined"
    );
    assert_eq!(
        answer(&mut c, "public:items", "phx_join", json!({})).await,
        error("unmatched topic"),
        "a join of a topic without realtime:"
    );
    assert_eq!(
        answer(&mut c, TOPIC, "phx_leave", json!({})).await,
        error("unmatched topic"),
        "a leave of a topic the socket has not joined"
    );
    assert_eq!(
        answer(
            &mut c,
            TOPIC,
            "phx_join",
            json!({"config": {"broadcast": {"self": "yes"}}})
        )
        .await,
        error(r#"invalid join payload: config.broadcast.self: expected true or false, got "yes""#),
        "a join config of the wrong shape"
    );
    assert_eq!(
        answer(
            &mut c,
            TOPIC,
            "phx_join",
            json!({"config": {"postgres_changes": [{"event": "*", "table": 5}]}})
        )
        .await,
        error("invalid join payload: config.postgres_changes[0]: table: expected a string, got 5"),
        "a binding of the wrong shape"
    );
    assert_eq!(answer(&mut c, TOPIC, "phx_join", json!({})).await, ok());
    assert_eq!(
        answer(&mut c, TOPIC, "shout", json!({})).await,
        error(r#"unknown event "shout" on topic "realtime:public:items""#),
        "an unknown event on a joined topic"
    );

    // MAX_CHANNELS_PER_SOCKET=3: two more channels fit, a fourth does not.
    for t in ["realtime:public", "realtime:*"] {
        assert_eq!(answer(&mut c, t, "phx_join", json!({})).await, ok(), "{t}");
    }
    let fourth = "realtime:public:items:id=eq.1";
    let too_many = error("too many channels on this socket (limit 3)");
    assert_eq!(
        answer(&mut c, fourth, "phx_join", json!({})).await,
        too_many
    );
    let v2_fourth = json!({"config": {"postgres_changes": [{"event": "*", "schema": "public"}]}});
    assert_eq!(
        answer(&mut c, "realtime:room", "phx_join", v2_fourth).await,
        too_many,
        "the limit holds for 2.x channels too"
    );
    assert_eq!(
        answer(&mut c, TOPIC, "phx_join", json!({})).await,
        ok(),
        "a second join of a joined topic replaces it and is not a new channel"
    );
    assert_eq!(
        answer(&mut c, "realtime:*", "phx_leave", json!({})).await,
        ok()
    );
    let close = c.next().await.expect("phx_close after the leave");
    assert_eq!(
        (close.topic.as_str(), close.event.as_str()),
        ("realtime:*", "phx_close")
    );
    assert_eq!(
        answer(&mut c, fourth, "phx_join", json!({})).await,
        ok(),
        "a leave frees a channel"
    );
    assert_eq!(
        answer(&mut c, "phoenix", "heartbeat", json!({})).await,
        ok()
    );

    // The socket that was refused all this still receives changes.
    env.db
        .execute("INSERT INTO items (id, body) VALUES (1, 'x')", &[])
        .await
        .expect("insert");
    let mut topics = Vec::new();
    for _ in 0..3 {
        let m = c.next_event().await;
        assert_eq!(m.payload["record"]["id"], json!("1"));
        topics.push(m.topic);
    }
    topics.sort();
    assert_eq!(topics, ["realtime:public", TOPIC, fourth]);
    env.still_serves(2, "error replies").await;
}

/// The next text frame of a raw client, as JSON.
async fn next_json<S>(rx: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(20), rx.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(t.as_str()).unwrap(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_flood_of_joins_and_leaves_is_answered_in_order() {
    const PAIRS: usize = 3000;
    const TOPICS: usize = 1000;
    // Far above the default rates: this test is about order, not rates.
    let env = start(&[
        ("MAX_CHANNELS_PER_SOCKET", "5"),
        ("MAX_EVENTS_PER_SECOND", "100000"),
        ("MAX_JOINS_PER_SECOND", "100000"),
    ])
    .await;
    let (ws, _) = tokio_tungstenite::connect_async(env.server.ws_url("2.0.0"))
        .await
        .expect("connect");
    let (mut tx, mut rx) = ws.split();
    let filtered = |i: usize| format!("{TOPIC}:id=eq.{i}");
    // As fast as the socket takes them, without waiting for answers.
    let sender = tokio::spawn(async move {
        for i in 0..PAIRS {
            let (j, l) = (format!("j{i}"), format!("l{i}"));
            let join = json!([j, j, TOPIC, "phx_join", {}]);
            let leave = json!([j, l, TOPIC, "phx_leave", {}]);
            tx.feed(Message::text(join.to_string())).await.unwrap();
            tx.feed(Message::text(leave.to_string())).await.unwrap();
        }
        for i in 0..TOPICS {
            let j = format!("t{i}");
            let join = json!([j, j, filtered(i), "phx_join", {}]);
            tx.feed(Message::text(join.to_string())).await.unwrap();
        }
        tx.flush().await.unwrap();
        tx
    });
    for i in 0..PAIRS {
        let j = format!("j{i}");
        assert_eq!(
            next_json(&mut rx).await,
            json!([j, j, TOPIC, "phx_reply", ok()])
        );
        let l = format!("l{i}");
        assert_eq!(
            next_json(&mut rx).await,
            json!([j, l, TOPIC, "phx_reply", ok()])
        );
        assert_eq!(
            next_json(&mut rx).await,
            json!([j, j, TOPIC, "phx_close", {}])
        );
    }
    for i in 0..TOPICS {
        let j = format!("t{i}");
        let want = if i < 5 {
            ok()
        } else {
            error("too many channels on this socket (limit 5)")
        };
        assert_eq!(
            next_json(&mut rx).await,
            json!([j, j, filtered(i), "phx_reply", want])
        );
    }
    let mut tx = sender.await.expect("sender");
    tx.send(Message::text(r#"[null,"hb","phoenix","heartbeat",{}]"#))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut rx).await,
        json!([null, "hb", "phoenix", "phx_reply", ok()]),
        "the flooding socket is still served"
    );
    env.still_serves(1, "a flood of joins").await;
}

/// A TCP connection with a small receive buffer, so that a client that stops
/// reading fills the server's side fast.
async fn small_buffer_connection(server: &ServerProcess) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .connect(([127, 0, 0, 1], server.port).into())
        .await
        .expect("connect")
}

/// A field of /proc/<pid>/status in KiB (VmRSS, VmHWM).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// How a socket that a client stopped reading ends: the frames it still
/// delivered, then the end (which must be the server's doing).
async fn drain_until_closed(c: &mut PhxClient) -> (usize, WsEnd) {
    let mut frames = 0;
    loop {
        match c.next_text(Duration::from_secs(20)).await {
            Ok(_) => frames += 1,
            Err(end) => return (frames, end),
        }
    }
}

fn closed_by_server(end: &WsEnd) -> bool {
    match end {
        // Closed while the client still read: the close frame got through.
        WsEnd::Closed(Some((code, reason))) => {
            *code == 1013 && reason == "slow consumer: the send queue is full; reconnect"
        }
        // Closed after CLOSE_GRACE: the connection was dropped.
        WsEnd::Closed(None) | WsEnd::Error(_) => true,
        WsEnd::Timeout => false,
    }
}

const QUEUE_DEPTH: usize = 1024;
const ROWS: i32 = 20_000;
const BODY_BYTES: usize = 8192;
const STUCK: usize = 3;

#[tokio::test]
async fn a_client_that_never_reads_is_closed_and_holds_up_no_one() {
    let env = start(&[
        ("SOCKET_QUEUE_DEPTH", &QUEUE_DEPTH.to_string()),
        ("RUST_LOG", "info"),
    ])
    .await;
    let url = env.server.ws_url("1.0.0");
    let mut normal = PhxClient::connect(&url).await.expect("connect");
    assert_eq!(normal.join(TOPIC, json!({})).await.payload, ok());
    let mut stuck = Vec::new();
    for _ in 0..STUCK {
        let tcp = small_buffer_connection(&env.server).await;
        let mut c = PhxClient::connect_over(&url, tcp).await.expect("connect");
        assert_eq!(c.join(TOPIC, json!({})).await.payload, ok());
        // From here on, nothing reads it.
        stuck.push(c);
    }
    let pid = env.server.pid();
    let peak_before_kib = status_kib(pid, "VmHWM");

    // 20,000 rows of 8 KiB each (about 170 MB of frames), in 10 transactions.
    let db = &env.db;
    let body_sql = format!("repeat(md5(g::text), {})", BODY_BYTES / 32);
    let insert = async move {
        for t in 0..10 {
            let (from, to) = (t * ROWS / 10 + 1, (t + 1) * ROWS / 10);
            db.batch_execute(&format!(
                "INSERT INTO items SELECT g, {body_sql} FROM generate_series({from}, {to}) g"
            ))
            .await
            .expect("insert");
        }
    };
    let receive = async {
        for id in 1..=ROWS {
            let text = normal
                .next_text(Duration::from_secs(30))
                .await
                .unwrap_or_else(|e| panic!("row {id}: {e:?}"));
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["event"], "INSERT", "{}", &text[..text.len().min(200)]);
            let record = &v["payload"]["record"];
            assert_eq!(record["id"], json!(id.to_string()), "rows arrive in order");
            assert_eq!(record["body"].as_str().map(str::len), Some(BODY_BYTES));
        }
    };
    tokio::join!(insert, receive);

    // Design bound: every socket's queue full of the largest frames, plus
    // 64 MiB for the rest (socket write buffers, replication buffers, the
    // allocator's slack). A queue that grew without bound would hold the
    // whole stream, about 170 MB.
    let frame_bytes = BODY_BYTES as u64 + 1024;
    let bound_kib =
        peak_before_kib + (STUCK as u64 + 1) * QUEUE_DEPTH as u64 * frame_bytes / 1024 + 64 * 1024;
    let peak_kib = status_kib(pid, "VmHWM");
    eprintln!(
        "server peak RSS: {peak_before_kib} KiB before the stream, {peak_kib} KiB after; bound {bound_kib} KiB"
    );
    assert!(
        peak_kib < bound_kib,
        "server peak RSS {peak_kib} KiB is over the bound {bound_kib} KiB"
    );

    for (i, c) in stuck.iter_mut().enumerate() {
        let (frames, end) = drain_until_closed(c).await;
        assert!(
            closed_by_server(&end),
            "stuck client {i} ended with {end:?} after {frames} frames"
        );
        assert!(
            frames < ROWS as usize,
            "stuck client {i} was not cut off: {frames} frames"
        );
    }
    let log = env.server.log();
    assert_eq!(
        log.matches("closing a slow consumer").count(),
        STUCK,
        "each stuck client is closed once, the normal one never"
    );
    env.still_serves(ROWS + 1, "clients that never read").await;
}

#[tokio::test]
async fn a_client_that_floods_without_reading_is_closed_as_a_slow_consumer() {
    const HEARTBEATS: usize = 200_000;
    let env = start(&[("SOCKET_QUEUE_DEPTH", &QUEUE_DEPTH.to_string())]).await;
    let url = env.server.ws_url("2.0.0");
    let tcp = small_buffer_connection(&env.server).await;
    let (ws, _) = tokio_tungstenite::client_async(&url, tcp)
        .await
        .expect("connect");
    let (mut tx, mut rx) = ws.split();
    // Sends until done or until the server drops the connection; reads nothing.
    let flood = tokio::spawn(async move {
        for i in 0..HEARTBEATS {
            let hb = json!([null, i.to_string(), "phoenix", "heartbeat", {}]);
            if tx.feed(Message::text(hb.to_string())).await.is_err() {
                return;
            }
        }
        let _ = tx.flush().await;
    });
    tokio::time::timeout(Duration::from_secs(60), flood)
        .await
        .expect("the server neither took the flood nor dropped the connection")
        .expect("flood task");
    // Only now read: the replies that were queued, in order, then the end.
    let mut replies = 0;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(20), rx.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(
                    v,
                    json!([null, replies.to_string(), "phoenix", "phx_reply", ok()])
                );
                replies += 1;
            }
            Ok(Some(Ok(Message::Close(Some(c))))) => {
                break WsEnd::Closed(Some((c.code.into(), c.reason.to_string())))
            }
            Ok(Some(Ok(Message::Close(None)))) | Ok(None) => break WsEnd::Closed(None),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => break WsEnd::Error(e.to_string()),
            Err(_) => break WsEnd::Timeout,
        }
    };
    assert!(
        closed_by_server(&end),
        "the flooding client ended with {end:?} after {replies} replies"
    );
    assert!(replies < HEARTBEATS, "the flood was cut off");
    assert!(env.server.log().contains("closing a slow consumer"));
    env.still_serves(1, "a flood from a client that does not read")
        .await;
}

/// Sends `request` (an HTTP/1.1 head) to the server and returns the whole
/// answer, head and body.
fn raw_http(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

/// A request to a socket path that is not a WebSocket handshake the server
/// can take gets a status and a body naming what is missing; a good one
/// still gets 101.
#[tokio::test]
async fn a_request_that_is_not_a_websocket_handshake_is_told_what_is_missing() {
    let env = start(&[]).await;
    let port = env.server.port;
    let head = |extra: &str| {
        format!(
            "GET /socket/websocket?vsn=1.0.0 HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n"
        )
    };
    let plain = raw_http(port, &head(""));
    assert!(plain.starts_with("HTTP/1.1 426 "), "{plain}");
    assert!(
        plain.contains("send `Connection: upgrade` and `Upgrade: websocket`"),
        "{plain}"
    );
    assert!(
        plain
            .to_ascii_lowercase()
            .contains("upgrade: websocket\r\n"),
        "{plain}"
    );

    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let old = raw_http(
        port,
        &head(&format!("{upgrade}Sec-WebSocket-Version: 8\r\n")),
    );
    assert!(old.starts_with("HTTP/1.1 426 "), "{old}");
    assert!(old.contains("this server speaks version 13"), "{old}");
    assert!(
        old.to_ascii_lowercase()
            .contains("sec-websocket-version: 13\r\n"),
        "{old}"
    );

    let no_key = raw_http(
        port,
        "GET /socket/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert!(no_key.starts_with("HTTP/1.1 400 "), "{no_key}");
    assert!(no_key.contains("missing Sec-WebSocket-Key"), "{no_key}");

    // The RFC 6455 example key, answered with the RFC's accept value.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    std::io::Write::write_all(
        &mut s,
        format!(
            "GET /socket/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\n{upgrade}Sec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .expect("write");
    let mut head = [0u8; 512];
    let n = std::io::Read::read(&mut s, &mut head).expect("read");
    let head = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{head}"
    );
    env.still_serves(1, "handshakes that were refused").await;
}

/// A frame much larger than a socket's read buffer (2 KiB), under
/// MAX_FRAME_BYTES (1 MiB), is read whole, and small ones after it.
#[tokio::test]
async fn a_frame_larger_than_the_read_buffer_is_read_whole() {
    let env = start(&[]).await;
    let mut c = PhxClient::connect(&env.server.ws_url("1.0.0"))
        .await
        .expect("connect");
    let big = json!({"pad": "é".repeat(300_000)});
    assert_eq!(answer(&mut c, "phoenix", "heartbeat", big).await, ok());
    assert_eq!(
        answer(&mut c, "phoenix", "heartbeat", json!({})).await,
        ok()
    );
    env.still_serves(1, "a large frame").await;
}

/// Past MAX_CONNECTIONS an upgrade is refused with 503 and a body that says
/// why; the refusal is counted at /metrics, the open sockets are unaffected,
/// and a socket that closes makes room for a new one.
#[tokio::test]
async fn past_max_connections_an_upgrade_gets_503_and_a_closed_socket_makes_room() {
    use tokio_tungstenite::tungstenite::Error;
    let env = start(&[("MAX_CONNECTIONS", "2")]).await;
    let url = env.server.ws_url("1.0.0");
    let mut a = PhxClient::connect(&url).await.expect("first socket");
    let mut b = PhxClient::connect(&url).await.expect("second socket");
    // Both are registered once they have been answered.
    for c in [&mut a, &mut b] {
        assert_eq!(answer(c, "phoenix", "heartbeat", json!({})).await, ok());
    }

    match PhxClient::connect(&url).await {
        Err(Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
            let body =
                String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).to_string();
            assert_eq!(body, "too many connections (limit 2): try another server");
        }
        Err(e) => panic!("expected a 503, got {e}"),
        Ok(_) => panic!("a third socket was accepted past MAX_CONNECTIONS=2"),
    }
    let (_, metrics) = env.server.get("/metrics").expect("/metrics");
    assert!(
        metrics.contains("realtime_connections_refused_total 1\n"),
        "{metrics}"
    );
    assert_eq!(
        answer(&mut b, "phoenix", "heartbeat", json!({})).await,
        ok(),
        "an open socket is unaffected by the refusal"
    );

    // One closes; a new socket is accepted once the server has let it go.
    drop(a);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        match PhxClient::connect(&url).await {
            Ok(c) => break c,
            Err(Error::Http(r)) if r.status().as_u16() == 503 => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the closed socket's place was not freed"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("reconnect: {e}"),
        }
    };
    assert_eq!(
        answer(&mut c, "phoenix", "heartbeat", json!({})).await,
        ok()
    );
}

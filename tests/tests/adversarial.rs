//! An attacker with a valid connection sends the worst input it may; a
//! well-behaved client on the same server keeps being served: `/healthz`
//! answers and a join plus an INSERT round trip completes within a second,
//! and the attacker gets the documented answer. One test per class of
//! attack. Real PostgreSQL, the real server binary, real WebSockets, all on
//! loopback.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use realtime_tests::server::http_get;
use realtime_tests::server::Stack;
use realtime_tests::ws::{Msg, PhxClient};
use serde_json::{json, Value};

/// The bound a well-behaved client's requests must meet while an attack
/// runs: a liveness bound (the server is not frozen), far above the few
/// milliseconds these take on an idle server.
const SERVED_WITHIN: Duration = Duration::from_secs(1);

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
/// it, with `extra_env` added to its environment.
async fn start(extra_env: &[(&str, &str)]) -> Env {
    Env(Stack::items(extra_env).await)
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
        let m = c.next_named("postgres_changes").await;
        assert_eq!(m.payload["data"]["record"]["id"], id, "during {during}");
        let took = t.elapsed();
        assert!(
            took < SERVED_WITHIN,
            "during {during}: join + INSERT round trip took {took:?} (bound {SERVED_WITHIN:?})"
        );
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
    let system = attacker.next_named("system").await;
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
        let system = attacker.next_named("system").await;
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
        let m = attacker.next_named("postgres_changes").await;
        assert_eq!(m.payload["ids"], json!([1]), "{m:?}");
        seen.push(m.topic);
    }
    seen.sort();
    assert_eq!(seen, ["realtime:a1", "realtime:a2"]);

    for topic in ["realtime:a1", "realtime:a2"] {
        let reply = attacker.request(topic, "phx_leave", json!({})).await;
        assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    }
    env.round_trip(2, "leaves of repeated values").await;
    health.assert_served("the filter attack");
}

/// Sends `request` (bytes, head and perhaps body) on a new connection and
/// reads the whole answer (until the server closes or 5 s pass).
fn raw_http(port: u16, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(request).expect("write");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code of a raw HTTP answer.
fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

/// Class 3: connections that never finish the handshake. A peer that sends
/// a request head one byte per second is closed once
/// `HEADER_READ_TIMEOUT_MS` has passed (so are a peer that sends nothing
/// and one that stops half way through an upgrade), while a well-behaved
/// client is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_head_is_dropped_after_the_header_timeout() {
    use std::io::{Read, Write};
    let env = start(&[("HEADER_READ_TIMEOUT_MS", "2000")]).await;
    let port = env.server.port;
    let health = HealthWatch::start(port);

    // The slowloris: one byte per second, never a whole head.
    let slowloris = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let t = Instant::now();
        let head = b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n";
        for b in head.iter().cycle() {
            if s.write_all(&[*b]).is_err() {
                return t.elapsed();
            }
            std::thread::sleep(Duration::from_secs(1));
            if t.elapsed() > Duration::from_secs(30) {
                panic!("a head sent one byte per second was held for 30 s");
            }
        }
        unreachable!()
    });
    // A silent peer and a half upgrade: closed too (EOF).
    let silent: Vec<_> = [&b""[..], b"GET /socket/websocket HTTP/1.1\r\nUpgrade: webs"]
        .into_iter()
        .map(|sent| {
            let sent = sent.to_vec();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                s.write_all(&sent).unwrap();
                let t = Instant::now();
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                t.elapsed()
            })
        })
        .collect();

    env.round_trip(3, "a slowloris").await;
    let held = tokio::task::spawn_blocking(move || slowloris.join().expect("slowloris"))
        .await
        .unwrap();
    assert!(
        held >= Duration::from_millis(1500) && held < Duration::from_secs(6),
        "the slow peer was closed after {held:?} (HEADER_READ_TIMEOUT_MS=2000)"
    );
    for t in silent {
        let held = t.join().expect("silent peer");
        assert!(
            held >= Duration::from_millis(1500) && held < Duration::from_secs(6),
            "a silent or half-open peer was closed after {held:?}"
        );
    }
    env.round_trip(4, "after the slowloris").await;
    health.assert_served("the slowloris");
}

/// Class 3: a flood of connections that are not WebSockets yet counts from
/// accept: past `MAX_PENDING_CONNECTIONS` a new connection gets an
/// immediate 503 naming the limit (and the refusal is counted), the held
/// ones are closed by the header timeout, and then everyone is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_count_against_max_pending_connections() {
    let env = start(&[
        ("MAX_PENDING_CONNECTIONS", "20"),
        ("HEADER_READ_TIMEOUT_MS", "2000"),
    ])
    .await;
    let port = env.server.port;
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        std::io::Write::write_all(&mut s, b"GET /socket/websocket HTTP/1.1\r\n").unwrap();
        held.push(s);
    }
    // The server has accepted them all once a later connection is refused.
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let answer = raw_http(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        if answer.starts_with("HTTP/1.1 503") {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "no refusal past the limit: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        refused.contains("too many connections in progress (MAX_PENDING_CONNECTIONS=20)"),
        "{refused}"
    );
    // The header timeout frees the slots: then a new client is served.
    let t = Instant::now();
    loop {
        if http_get(port, "/healthz").map(|(c, _)| c) == Some(200) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(6),
            "the held connections were not closed by the header timeout"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
    env.round_trip(5, "after a flood of half-open connections")
        .await;
    let (_, metrics) = env.server.get("/metrics").expect("/metrics");
    assert!(
        metrics.contains("realtime_limit_reached_total{limit=\"MAX_PENDING_CONNECTIONS\"}"),
        "{metrics}"
    );
}

/// Class 3: `MAX_CONNECTIONS` is exact under a burst: 60 upgrades at once
/// against a limit of 25 admit exactly 25 and refuse the others with 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_is_exact_under_a_burst() {
    use tokio_tungstenite::tungstenite::Error;
    let env = start(&[("MAX_CONNECTIONS", "25")]).await;
    let url = env.server.ws_url("2.0.0");
    for round in 0..3 {
        let attempts = (0..60).map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PhxClient::connect(&url).await })
        });
        let mut open = Vec::new();
        let mut refused = 0;
        for a in attempts.collect::<Vec<_>>() {
            match a.await.expect("task") {
                Ok(c) => open.push(c),
                Err(Error::Http(r)) if r.status().as_u16() == 503 => refused += 1,
                Err(e) => panic!("round {round}: unexpected {e}"),
            }
        }
        assert_eq!(
            open.len(),
            25,
            "round {round}: admitted past MAX_CONNECTIONS=25"
        );
        assert_eq!(refused, 35, "round {round}");
        drop(open);
        // The closed sockets make room again.
        let deadline = Instant::now() + Duration::from_secs(10);
        while env
            .server
            .get("/metrics")
            .is_some_and(|(_, m)| !m.contains("realtime_connections 0\n"))
        {
            assert!(
                Instant::now() < deadline,
                "round {round}: sockets not released"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A socket's slot is released just after it unregisters.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Class 5: every route answers a wrong method, a body too large, a body
/// without a length with its status and a plain reason (never Rust's debug
/// text), and cleartext HTTP/2 is not spoken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_answers_are_plain_and_name_the_problem() {
    let env = start(&[]).await;
    let port = env.server.port;
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(), 405, "allow: GET, HEAD"),
        (b"PUT /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(), 405, "allow: GET, HEAD"),
        (b"DELETE /readyz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 405, "method not allowed"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(), 405, "method not allowed"),
        (b"POST /socket/websocket HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec(), 405, "allow: GET"),
        (b"GET /api/broadcast HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 405, "allow: POST"),
        (
            b"POST /api/broadcast HTTP/1.1\r\nHost: x\r\nContent-Length: 52428800\r\n\r\n".to_vec(),
            413,
            "payload too large: the body is over MAX_FRAME_BYTES",
        ),
        (
            b"POST /api/broadcast/room/events/e HTTP/1.1\r\nHost: x\r\nContent-Length: 52428800\r\n\r\n".to_vec(),
            413,
            "payload too large",
        ),
        (
            b"POST /api/broadcast HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n".to_vec(),
            411,
            "length required",
        ),
        (
            b"POST /api/broadcast HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nnope!".to_vec(),
            400,
            "the body is not a broadcast request",
        ),
        (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 404, "not found"),
        (b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), 200, ""),
    ];
    for (request, status, says) in cases {
        let mut request = request;
        // Close after one answer so the read ends.
        if !request.windows(17).any(|w| w == b"Connection: close") {
            let at = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            request.splice(at..at, b"\r\nConnection: close".iter().copied());
        }
        let answer = raw_http(port, &request);
        let first =
            String::from_utf8_lossy(&request[..request.iter().position(|b| *b == b'\r').unwrap()])
                .into_owned();
        assert_eq!(status_of(&answer), status, "{first}: {answer}");
        assert!(
            answer.to_lowercase().contains(&says.to_lowercase()),
            "{first}: {answer}"
        );
        assert!(
            !answer.contains("Rejection") && !answer.contains("Some(") && !answer.contains("{ "),
            "{first}: Rust debug text in {answer}"
        );
    }

    // HTTP/2 with prior knowledge: no SETTINGS frame back, only an HTTP/1.x
    // refusal or a close.
    let answer = raw_http(
        port,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 "),
        "cleartext HTTP/2 was answered: {answer:?}"
    );
    health_and_round_trip(&env, 6, "bad HTTP requests").await;
}

async fn health_and_round_trip(env: &Env, id: i32, during: &str) {
    assert_eq!(
        http_get(env.server.port, "/healthz").map(|(c, _)| c),
        Some(200),
        "during {during}"
    );
    env.round_trip(id, during).await;
}

/// Resident memory of process `pid`, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// The reason of an error reply.
fn reason_of(reply: &Msg) -> String {
    assert_eq!(reply.payload["status"], "error", "{reply:?}");
    reply.payload["response"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Class 1: every size a client controls that the server keeps has a limit
/// that names itself: a topic, the bindings of a join, a presence key, a
/// presence meta and the presences of a topic. An attacker tracking
/// ~1 MB metas on 100 channels gets 100 refusals and the server keeps
/// nothing of them (RSS grows by less than the 100 frames it read, 64 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kept_size_has_a_named_limit() {
    // The rates are not the point here: 100 joins and tracks in a row.
    let env = start(&[
        ("MAX_PRESENCE_MEMBERS", "3"),
        ("MAX_EVENTS_PER_SECOND", "10000"),
        ("MAX_JOINS_PER_SECOND", "10000"),
        ("MAX_PRESENCE_EVENTS_PER_SECOND", "10000"),
    ])
    .await;
    let health = HealthWatch::start(env.server.port);
    let mut attacker = PhxClient::connect(&env.server.ws_url("2.0.0"))
        .await
        .expect("connect");

    let long_topic = format!("realtime:{}", "t".repeat(300));
    let reply = attacker.join(&long_topic, json!({"config": {}})).await;
    assert_eq!(
        reason_of(&reply),
        "topic too long: 309 bytes (MAX_TOPIC_BYTES=255)"
    );

    let bindings: Vec<Value> = (0..101).map(|i| binding(&format!("id=eq.{i}"))).collect();
    let reply = attacker
        .join(
            "realtime:many",
            json!({"config": {"postgres_changes": bindings}}),
        )
        .await;
    assert_eq!(
        reason_of(&reply),
        "too many postgres_changes bindings: 101 (MAX_BINDINGS_PER_JOIN=100)"
    );

    let reply = attacker
        .join(
            "realtime:key",
            json!({"config": {"presence": {"key": "k".repeat(256)}}}),
        )
        .await;
    assert_eq!(
        reason_of(&reply),
        "presence key too long: 256 bytes (MAX_PRESENCE_KEY_BYTES=255)"
    );

    // ~1 MB metas on 100 channels: each refused, nothing kept.
    let rss_before = rss_bytes(env.server.pid());
    let big = "m".repeat(1_000_000);
    for i in 0..100 {
        let topic = format!("realtime:meta-{i}");
        let reply = attacker.join(&topic, json!({"config": {}})).await;
        assert_eq!(reply.payload["status"], "ok", "{reply:?}");
        let reply = attacker
            .request(
                &topic,
                "presence",
                json!({"type": "presence", "event": "track", "payload": {"big": big}}),
            )
            .await;
        assert_eq!(
            reason_of(&reply),
            "presence meta too large: 1000010 bytes (MAX_PRESENCE_META_BYTES=4096)"
        );
    }
    let grown = rss_bytes(env.server.pid()).saturating_sub(rss_before);
    assert!(
        grown < 64 << 20,
        "RSS grew by {grown} bytes for 100 refused metas"
    );
    env.round_trip(7, "1 MB metas on 100 channels").await;

    // MAX_PRESENCE_MEMBERS=3: the fourth presence on a topic is refused.
    let mut members = Vec::new();
    for i in 0..4 {
        let mut c = PhxClient::connect(&env.server.ws_url("2.0.0"))
            .await
            .expect("connect");
        let reply = c.join("realtime:room", json!({"config": {}})).await;
        assert_eq!(reply.payload["status"], "ok", "{reply:?}");
        let reply = c
            .request(
                "realtime:room",
                "presence",
                json!({"type": "presence", "event": "track", "payload": {"n": i}}),
            )
            .await;
        if i < 3 {
            assert_eq!(reply.payload["status"], "ok", "{reply:?}");
        } else {
            assert_eq!(
                reason_of(&reply),
                "too many presences on this topic (MAX_PRESENCE_MEMBERS=3)"
            );
        }
        members.push(c);
    }
    let (_, metrics) = env.server.get("/metrics").expect("/metrics");
    for limit in [
        "MAX_TOPIC_BYTES",
        "MAX_BINDINGS_PER_JOIN",
        "MAX_PRESENCE_KEY_BYTES",
        "MAX_PRESENCE_META_BYTES",
        "MAX_PRESENCE_MEMBERS",
    ] {
        assert!(
            metrics.contains(&format!(
                "realtime_limit_reached_total{{limit=\"{limit}\"}}"
            )),
            "{limit} not counted: {metrics}"
        );
    }
    health.assert_served("oversized joins and tracks");
}

/// Class 6: rate limits per socket. An attacker sending 50 joins, 30
/// presence tracks and 300 broadcasts as fast as it can gets Supabase's
/// error strings past the limits (20 joins, and the defaults: 10 presence
/// events and 100 messages per second, in bursts of as many), each refusal
/// counted, while a well-behaved client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rates_over_the_limits_get_supabases_errors() {
    let env = start(&[("MAX_JOINS_PER_SECOND", "20")]).await;
    let health = HealthWatch::start(env.server.port);
    let mut attacker = PhxClient::connect(&env.server.ws_url("2.0.0"))
        .await
        .expect("connect");
    let reply = attacker.join("realtime:flood", json!({"config": {}})).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");

    /// Sends `n` pushes at once, then counts the error replies by reason.
    async fn flood(
        c: &mut PhxClient,
        n: usize,
        push: impl Fn(usize) -> (String, String, Value),
    ) -> Vec<String> {
        let mut refs = Vec::new();
        for i in 0..n {
            let (topic, event, payload) = push(i);
            refs.push(c.push(&topic, &event, payload, None).await);
        }
        let mut reasons = Vec::new();
        for r in refs {
            let reply = c.expect_reply(&r).await;
            if reply.payload["status"] == "error" {
                reasons.push(reason_of(&reply));
            }
        }
        reasons
    }

    // Joins: the first 19 (one was spent above) stand, then the rate.
    let refused = flood(&mut attacker, 50, |i| {
        (
            format!("realtime:j{}", i % 10),
            "phx_join".into(),
            json!({"config": {}}),
        )
    })
    .await;
    assert!(
        refused.len() >= 25
            && refused
                .iter()
                .all(|r| r == "ClientJoinRateLimitReached: Too many joins per second"),
        "{} refused: {:?}",
        refused.len(),
        refused.first()
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let refused = flood(&mut attacker, 30, |_| {
        (
            "realtime:flood".into(),
            "presence".into(),
            json!({"type": "presence", "event": "track", "payload": {"x": 1}}),
        )
    })
    .await;
    assert!(
        refused.len() >= 15
            && refused
                .iter()
                .all(|r| r
                    == "ClientPresenceRateLimitReached: Too many presence messages per second"),
        "{} refused: {:?}",
        refused.len(),
        refused.first()
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Broadcasts (acknowledged, so each gets a reply).
    let reply = attacker
        .join(
            "realtime:acked",
            json!({"config": {"broadcast": {"ack": true}}}),
        )
        .await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    let refused = flood(&mut attacker, 300, |i| {
        (
            "realtime:acked".into(),
            "broadcast".into(),
            json!({"type": "broadcast", "event": "e", "payload": {"i": i}}),
        )
    })
    .await;
    assert!(
        refused.len() >= 150
            && refused
                .iter()
                .all(|r| r == "MessagePerSecondRateLimitReached: Too many messages per second"),
        "{} refused: {:?}",
        refused.len(),
        refused.first()
    );

    env.round_trip(8, "a flood over the rates").await;
    let (_, metrics) = env.server.get("/metrics").expect("/metrics");
    for limit in [
        "MAX_JOINS_PER_SECOND",
        "MAX_PRESENCE_EVENTS_PER_SECOND",
        "MAX_EVENTS_PER_SECOND",
    ] {
        assert!(
            metrics.contains(&format!(
                "realtime_limit_reached_total{{limit=\"{limit}\"}}"
            )),
            "{limit} not counted: {metrics}"
        );
    }
    health.assert_served("a flood over the rates");
}

/// Class 2: memory bounded in bytes, not frames. A socket that never reads,
/// on a topic receiving 1 MB broadcasts (200 of them, 200 MB), is closed as
/// a slow consumer once `SOCKET_QUEUE_BYTES` (16 MiB) is queued for it, and
/// the server's RSS stays under the README's formula: starting RSS +
/// sockets × (`SOCKET_QUEUE_BYTES` + one frame) + 64 MiB (buffers,
/// allocator slack). Before, the queue took 16,384 frames, 200 MB here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_reads_holds_at_most_its_queue_bytes() {
    let env = start(&[("MAX_EVENTS_PER_SECOND", "10000")]).await;
    let pid = env.server.pid();
    let rss_start = rss_bytes(pid);
    let url = env.server.ws_url("2.0.0");

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket
        .connect(([127, 0, 0, 1], env.server.port).into())
        .await
        .expect("connect");
    let mut stuck = PhxClient::connect_over(&url, stream)
        .await
        .expect("upgrade");
    let reply = stuck.join("realtime:big", json!({"config": {}})).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    // From here on, `stuck` never reads.

    let mut sender = PhxClient::connect(&url).await.expect("connect");
    let reply = sender.join("realtime:big", json!({"config": {}})).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    let big = "b".repeat(1_000_000);
    let mut peak = 0;
    for i in 0..200 {
        sender
            .push(
                "realtime:big",
                "broadcast",
                json!({"type": "broadcast", "event": "e", "payload": {"i": i, "big": big}}),
                None,
            )
            .await;
        if i % 20 == 0 {
            peak = peak.max(rss_bytes(pid));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        peak = peak.max(rss_bytes(pid));
        let (_, metrics) = env.server.get("/metrics").expect("/metrics");
        if metrics.contains("realtime_slow_consumer_closes_total 1\n") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the socket that never reads was not closed: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bound = rss_start + 2 * (16 << 20) + 2 * (1 << 20) + (64 << 20);
    assert!(
        peak < bound,
        "peak RSS {} MiB over the bound {} MiB",
        peak >> 20,
        bound >> 20
    );
    env.round_trip(9, "1 MB broadcasts to a socket that never reads")
        .await;
    drop(stuck);
}

/// Class 2: what clients make the server keep counts in the memory budget,
/// beside what is queued. With `MEMORY_BUDGET_MB=1`, sockets tracking
/// 4 KB metas on 100 channels each put the server past its budget: then a
/// join, a broadcast (without ack), a track and an HTTP broadcast are each
/// refused with the budget's reason and counted, and `/metrics` shows the
/// kept bytes; once the attackers close, everything is given back and a
/// join, a broadcast and a round trip work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_state_counts_in_the_memory_budget_and_is_given_back() {
    let env = start(&[
        ("MEMORY_BUDGET_MB", "1"),
        ("MAX_EVENTS_PER_SECOND", "10000"),
        ("MAX_JOINS_PER_SECOND", "10000"),
        ("MAX_PRESENCE_EVENTS_PER_SECOND", "10000"),
    ])
    .await;
    let health = HealthWatch::start(env.server.port);
    let url = env.server.ws_url("2.0.0");
    let over = "the server is at its memory budget (MEMORY_BUDGET_MB=1): try again later";
    let held = || -> u64 {
        let (_, metrics) = env.server.get("/metrics").expect("/metrics");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("realtime_held_bytes "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no realtime_held_bytes: {metrics}"))
    };
    let idle = held();

    // A well-behaved member, joined before the attack.
    let mut good = PhxClient::connect(&url).await.expect("connect");
    let reply = good
        .join(
            "realtime:room",
            json!({"config": {"broadcast": {"self": true}}}),
        )
        .await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");

    // Attackers track 4 KB (the default MAX_PRESENCE_META_BYTES) on up to
    // 100 channels each until a join or a track is refused.
    let meta = json!({"blob": "m".repeat(4000)});
    let mut attackers = Vec::new();
    let mut sent = 0u64;
    'attack: for a in 0..10 {
        let mut c = PhxClient::connect(&url).await.expect("connect");
        for ch in 0..100 {
            let topic = format!("realtime:a{a}-{ch}");
            let reply = c.join(&topic, json!({"config": {}})).await;
            if reply.payload["status"] != "ok" {
                assert_eq!(reason_of(&reply), over);
                attackers.push(c);
                break 'attack;
            }
            let reply = c.request(&topic, "presence", track(&meta)).await;
            if reply.payload["status"] != "ok" {
                assert_eq!(reason_of(&reply), over);
                attackers.push(c);
                break 'attack;
            }
            sent += 4000;
        }
        attackers.push(c);
    }
    assert!(
        (1 << 20) / 2 < sent && sent < 4 << 20,
        "the budget took {sent} bytes of metas to reach"
    );
    let kept = held() - idle;
    assert!(
        kept > sent && kept > 1 << 20,
        "realtime_held_bytes grew by {kept} for {sent} bytes of metas"
    );

    // Past the budget: every kind of new work is refused, naming it.
    let reply = good.join("realtime:other", json!({"config": {}})).await;
    assert_eq!(reason_of(&reply), over, "a join");
    let reply = good.request("realtime:room", "broadcast", shout(1)).await;
    assert_eq!(reason_of(&reply), over, "a broadcast without ack");
    let track_n = track(&json!({"n": 1}));
    let reply = good.request("realtime:room", "presence", track_n).await;
    assert_eq!(reason_of(&reply), over, "a track");
    let body = json!({"messages": [{"topic": "room", "event": "e", "payload": {}}]}).to_string();
    let (status, answer) =
        realtime_tests::server::http_post(env.server.port, "/api/broadcast", &[], &body)
            .expect("an answer");
    assert_eq!(status, 503, "{answer}");
    assert!(answer.contains(over), "{answer}");
    let (_, metrics) = env.server.get("/metrics").expect("/metrics");
    assert!(
        metrics.contains("realtime_limit_reached_total{limit=\"MEMORY_BUDGET_MB\"}"),
        "{metrics}"
    );

    // The attackers leave: what they made the server keep is given back.
    drop(attackers);
    let deadline = Instant::now() + Duration::from_secs(10);
    while held() > idle + (64 << 10) {
        assert!(Instant::now() < deadline, "still kept: {} bytes", held());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    good.push("realtime:room", "broadcast", shout(2), None)
        .await;
    let m = good.next_named("broadcast").await;
    assert_eq!(m.payload["payload"]["n"], 2, "{m:?}");
    env.round_trip(11, "after the budget was given back").await;
    health.assert_served("state up to the memory budget");
}

/// A presence `track` of `meta`.
fn track(meta: &Value) -> Value {
    json!({"type": "presence", "event": "track", "payload": meta})
}

/// A broadcast numbered `n`.
fn shout(n: u32) -> Value {
    json!({"type": "broadcast", "event": "e", "payload": {"n": n}})
}

//! The HTTP broadcast routes as browsers and supabase-js call them: the
//! same routes under `/realtime/v1`, CORS (`CORS_ALLOWED_ORIGINS`: the
//! preflight, the headers on every answer, an origin not listed refused
//! before anything is sent), and each refusal naming its cause. A real
//! browser's view of the same is in `tests/browser/cors.mjs`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use realtime_tests::server::{free_port, ServerProcess, Stack};
use realtime_tests::ws::PhxClient;
use serde_json::json;

/// An answer: status, headers (names lowercase), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `method path` with `headers` and `body` over HTTP/1.1.
async fn request(
    server: &ServerProcess,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> Answer {
    let port = server.port;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let body = body.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body).unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines.next().unwrap().split_whitespace().nth(1).unwrap();
        Answer {
            status: status.parse().unwrap(),
            headers: lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect(),
            body: body.to_string(),
        }
    })
    .await
    .unwrap()
}

/// A vsn 1.0.0 member of `realtime:room` on `server`.
async fn member(server: &ServerProcess) -> PhxClient {
    let mut c = PhxClient::connect(&server.ws_url("1.0.0")).await.unwrap();
    let reply = c.join("realtime:room", json!({"config": {}})).await;
    assert_eq!(reply.payload["status"], "ok");
    assert_eq!(c.next().await.unwrap().event, "presence_state");
    c
}

const JSON: &str = "Content-Type: application/json";

#[tokio::test]
async fn by_default_any_origin_may_call_and_every_answer_says_so() {
    let stack = Stack::items(&[]).await;
    let s = &stack.server;
    let mut m = member(s).await;

    for path in [
        "/api/broadcast/room/events/ping",
        "/realtime/v1/api/broadcast/room/events/ping",
        "/api/broadcast",
        "/realtime/v1/api/broadcast",
    ] {
        let pre = request(
            s,
            "OPTIONS",
            path,
            &[
                "Origin: https://app.example.com",
                "Access-Control-Request-Method: POST",
                "Access-Control-Request-Headers: apikey, authorization, content-type, x-client-info",
            ],
            b"",
        )
        .await;
        assert_eq!(pre.status, 204, "{path}: {pre:?}");
        assert_eq!(
            pre.header("access-control-allow-origin"),
            Some("*"),
            "{path}"
        );
        assert_eq!(
            pre.header("access-control-allow-methods"),
            Some("POST, OPTIONS")
        );
        assert_eq!(
            pre.header("access-control-allow-headers"),
            Some("apikey, authorization, content-type, x-client-info")
        );
    }

    let ok = request(
        s,
        "POST",
        "/realtime/v1/api/broadcast/room/events/ping",
        &[JSON, "Origin: https://app.example.com"],
        br#"{"n":1}"#,
    )
    .await;
    assert_eq!(ok.status, 202, "{ok:?}");
    assert_eq!(ok.header("access-control-allow-origin"), Some("*"));
    let got = m.next_event().await;
    assert_eq!(
        got.payload,
        json!({"type": "broadcast", "event": "ping", "payload": {"n": 1}})
    );
    let batch = request(
        s,
        "POST",
        "/realtime/v1/api/broadcast",
        &[JSON],
        br#"{"messages":[{"topic":"room","event":"batch","payload":{"n":2}}]}"#,
    )
    .await;
    assert_eq!(batch.status, 202, "{batch:?}");
    assert_eq!(m.next_event().await.payload["event"], "batch");

    // A refusal carries the header too, so the browser's app can read why.
    let bad = request(
        s,
        "POST",
        "/api/broadcast/room/events/ping",
        &[JSON, "Origin: https://app.example.com"],
        b"not json",
    )
    .await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("the body is not JSON"), "{bad:?}");
    assert_eq!(bad.header("access-control-allow-origin"), Some("*"));
    // Other media types, persist, names a binary frame cannot carry.
    let text = request(
        s,
        "POST",
        "/api/broadcast/room/events/ping",
        &["Content-Type: text/plain"],
        b"hi",
    )
    .await;
    assert_eq!(text.status, 415);
    assert!(
        text.body
            .contains(r#"Content-Type \"text/plain\" is not supported: send application/json or application/octet-stream"#),
        "{text:?}"
    );
    let persist = request(
        s,
        "POST",
        "/api/broadcast/room/events/ping?private=true&persist=true",
        &[JSON],
        b"{}",
    )
    .await;
    assert_eq!(persist.status, 422);
    assert!(
        persist.body.contains("persist is not supported")
            && persist.body.contains("nothing was sent"),
        "{persist:?}"
    );
    let long = format!("/api/broadcast/{}/events/e", "r".repeat(250));
    let binary = request(
        s,
        "POST",
        &long,
        &["Content-Type: application/octet-stream"],
        &[1, 2],
    )
    .await;
    assert_eq!(binary.status, 400);
    assert!(
        binary
            .body
            .contains("topic (259 bytes, with the realtime: prefix)"),
        "{binary:?}"
    );
    m.expect_silence(Duration::from_millis(300)).await;

    // Only the broadcast routes speak CORS.
    let health = request(
        s,
        "GET",
        "/healthz",
        &["Origin: https://app.example.com"],
        b"",
    )
    .await;
    assert_eq!(health.status, 200);
    assert_eq!(health.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn only_the_listed_origins_may_call_and_another_is_refused_before_anything_is_sent() {
    let stack = Stack::items(&[(
        "CORS_ALLOWED_ORIGINS",
        "https://app.example.com, http://localhost:3000",
    )])
    .await;
    let s = &stack.server;
    let mut m = member(s).await;
    let path = "/realtime/v1/api/broadcast/room/events/ping";

    let pre = request(
        s,
        "OPTIONS",
        path,
        &[
            "Origin: http://localhost:3000",
            "Access-Control-Request-Method: POST",
        ],
        b"",
    )
    .await;
    assert_eq!(pre.status, 204, "{pre:?}");
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert_eq!(pre.header("vary"), Some("origin"));
    assert_eq!(
        pre.header("access-control-allow-headers"),
        Some("authorization, apikey, content-type, x-client-info"),
        "the headers the clients send, when the browser names none"
    );

    let listed = request(
        s,
        "POST",
        path,
        &[JSON, "Origin: https://app.example.com"],
        b"{}",
    )
    .await;
    assert_eq!(listed.status, 202, "{listed:?}");
    assert_eq!(
        listed.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(m.next_event().await.payload["event"], "ping");

    let pre = request(
        s,
        "OPTIONS",
        path,
        &[
            "Origin: https://evil.example.com",
            "Access-Control-Request-Method: POST",
        ],
        b"",
    )
    .await;
    assert_eq!(pre.status, 403);
    assert_eq!(pre.header("access-control-allow-origin"), None);
    let refused = request(
        s,
        "POST",
        path,
        &[JSON, "Origin: https://evil.example.com"],
        b"{}",
    )
    .await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_eq!(refused.header("access-control-allow-origin"), None);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&refused.body).unwrap()["error"],
        "origin \"https://evil.example.com\" may not call this server: it is not in CORS_ALLOWED_ORIGINS"
    );
    let batch = request(
        s,
        "POST",
        "/api/broadcast",
        &[JSON, "Origin: https://evil.example.com"],
        br#"{"messages":[{"topic":"room","event":"evil","payload":{}}]}"#,
    )
    .await;
    assert_eq!(batch.status, 403, "{batch:?}");
    m.expect_silence(Duration::from_millis(500)).await;

    // Without an Origin (a server, curl): no browser, no CORS.
    let server_side = request(s, "POST", path, &[JSON], b"{}").await;
    assert_eq!(server_side.status, 202, "{server_side:?}");
    assert_eq!(m.next_event().await.payload["event"], "ping");
}

#[tokio::test]
async fn in_chromium_a_listed_origin_broadcasts_and_another_is_blocked() {
    let chromium = std::env::var_os("CHROMIUM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    assert!(
        chromium.is_file(),
        "{} is missing: run tests/setup.sh (it installs Debian's `chromium`), or set CHROMIUM",
        chromium.display()
    );
    let browser = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        browser.join("node_modules/playwright-core").is_dir(),
        "run `npm ci` in {} (tests/setup.sh does)",
        browser.display()
    );
    let (allowed, other) = (free_port(), free_port());
    let origin = format!("http://127.0.0.1:{allowed}");
    let stack = Stack::items(&[("CORS_ALLOWED_ORIGINS", &origin)]).await;
    let child = tokio::process::Command::new("node")
        .arg("cors.mjs")
        .current_dir(&browser)
        .env(
            "SERVER_URL",
            format!("http://127.0.0.1:{}", stack.server.port),
        )
        .env("ALLOWED_PORT", allowed.to_string())
        .env("OTHER_PORT", other.to_string())
        .env("CHROMIUM", &chromium)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn `node` (tests/setup.sh installs it)");
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("cors.mjs finished within 120 s")
        .expect("wait for node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("PASS"),
        "tests/browser/cors.mjs failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
    eprintln!("{stdout}");
}

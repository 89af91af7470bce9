//! Secured channels: who gets a socket and a channel, and what a client reads
//! when its token is refused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use realtime_tests::server::ServerProcess;
use realtime_tests::ws::{PhxClient, WsEnd};
use realtime_tests::TempPostgres;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

const SECRET: &str = "a-test-secret-of-reasonable-length";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: Value, secret: &str) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn good() -> String {
    token(
        json!({"role": "authenticated", "exp": now() + 3600}),
        SECRET,
    )
}

/// The HTTP status of a refused upgrade, or 101.
async fn upgrade_status(url: &str, header: Option<&str>) -> u16 {
    let mut req = url.into_client_request().unwrap();
    if let Some(h) = header {
        req.headers_mut().insert("x-api-key", h.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => 101,
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

async fn secured() -> (TempPostgres, tokio_postgres::Client, ServerProcess) {
    let (pg, db) = TempPostgres::with_schema(
        // Secured channels act as the token's role: it must exist and may
        // read the table.
        "CREATE ROLE anon NOLOGIN;
         CREATE ROLE authenticated NOLOGIN;
         CREATE TABLE items (id int PRIMARY KEY);
         GRANT SELECT ON items TO authenticated;
         CREATE PUBLICATION realtime_test FOR ALL TABLES;",
    )
    .await
    .expect("PostgreSQL with the schema");
    let mut env = ServerProcess::env_for(&pg, &["realtime_test"]);
    env.insert("SECURE_CHANNELS".into(), "true".into());
    env.insert("JWT_SECRET".into(), SECRET.into());
    // Expiry is tested to the second.
    env.insert("JWT_LEEWAY".into(), "0".into());
    env.insert(
        "JWT_CLAIM_VALIDATORS".into(),
        r#"{"role":"authenticated"}"#.into(),
    );
    let server = tokio::task::spawn_blocking(move || ServerProcess::start(env))
        .await
        .unwrap();
    (pg, db, server)
}

#[tokio::test]
async fn the_upgrade_needs_a_valid_token() {
    let (_pg, _db, server) = secured().await;
    let base = server.ws_url("1.0.0");
    let expired = token(json!({"role": "authenticated", "exp": now() - 10}), SECRET);
    let forged = token(json!({"role": "authenticated"}), "another-secret");
    let anon = token(json!({"role": "anon", "exp": now() + 3600}), SECRET);
    assert_eq!(upgrade_status(&base, None).await, 403, "no token");
    assert_eq!(
        upgrade_status(&format!("{base}&apikey={forged}"), None).await,
        403,
        "bad signature"
    );
    assert_eq!(
        upgrade_status(&format!("{base}&apikey={expired}"), None).await,
        403,
        "expired"
    );
    assert_eq!(
        upgrade_status(&format!("{base}&apikey={anon}"), None).await,
        403,
        "claim mismatch"
    );
    assert_eq!(
        upgrade_status(&format!("{base}&apikey={}", good()), None).await,
        101
    );
    assert_eq!(
        upgrade_status(&format!("{base}&token={}", good()), None).await,
        101
    );
    assert_eq!(
        upgrade_status(&base, Some(&good())).await,
        101,
        "x-api-key header"
    );
    let log = server.log();
    assert!(
        !log.contains(SECRET) && !log.contains(&good()),
        "no secret or token in the log"
    );
}

#[tokio::test]
async fn join_and_access_token_tokens_are_checked() {
    let (_pg, db, server) = secured().await;
    let url = format!("{}&apikey={}", server.ws_url("1.0.0"), good());
    let mut c = PhxClient::connect(&url).await.unwrap();

    let expired = token(json!({"role": "authenticated", "exp": now() - 10}), SECRET);
    let reply = c
        .join("realtime:public:items", json!({"user_token": expired}))
        .await;
    assert_eq!(reply.payload["status"], "error");
    assert!(reply.payload["response"]["reason"]
        .as_str()
        .unwrap()
        .contains("expired"));

    let reply = c
        .join("realtime:public:items", json!({"access_token": good()}))
        .await;
    assert_eq!(reply.payload["status"], "ok");

    // A fresh valid token and realtime-js 1.7's null token keep the channel.
    c.push(
        "realtime:public:items",
        "access_token",
        json!({"access_token": good()}),
        None,
    )
    .await;
    c.push(
        "realtime:public:items",
        "access_token",
        json!({"access_token": null}),
        None,
    )
    .await;
    db.batch_execute("INSERT INTO items VALUES (1)")
        .await
        .unwrap();
    assert_eq!(c.next_event().await.payload["record"]["id"], "1");

    // A token that does not verify closes the channel with a readable error.
    let forged = token(json!({"role": "authenticated"}), "another-secret");
    c.push(
        "realtime:public:items",
        "access_token",
        json!({"access_token": forged}),
        None,
    )
    .await;
    let m = c.next().await.unwrap();
    assert_eq!(m.event, "system");
    assert_eq!(m.payload["status"], "error");
    assert!(
        m.payload["message"].as_str().unwrap().contains("signature"),
        "{m:?}"
    );
    assert_eq!(c.next().await.unwrap().event, "phx_close");
    db.batch_execute("INSERT INTO items VALUES (2)")
        .await
        .unwrap();
    match c.next_within(Duration::from_millis(500)).await {
        Err(WsEnd::Timeout) => {}
        other => panic!("the closed channel still receives: {other:?}"),
    }
}

#[tokio::test]
async fn a_channel_is_closed_when_its_token_expires_unless_refreshed() {
    let (_pg, db, server) = secured().await;
    let url = format!("{}&apikey={}", server.ws_url("1.0.0"), good());
    let short = || token(json!({"role": "authenticated", "exp": now() + 2}), SECRET);

    // Joined with a token that expires in 2 s, never refreshed.
    let mut c = PhxClient::connect(&url).await.unwrap();
    let reply = c
        .join("realtime:public:items", json!({"user_token": short()}))
        .await;
    assert_eq!(reply.payload["status"], "ok");
    let m = c.next_within(Duration::from_secs(6)).await.unwrap();
    assert_eq!(m.event, "system", "{m:?}");
    assert_eq!(m.payload["status"], "error");
    assert_eq!(m.payload["message"], "access token has expired");
    assert_eq!(c.next().await.unwrap().event, "phx_close");

    // Joined the same way, then refreshed with a long-lived token: it stays.
    let mut d = PhxClient::connect(&url).await.unwrap();
    let reply = d
        .join("realtime:public:items", json!({"user_token": short()}))
        .await;
    assert_eq!(reply.payload["status"], "ok");
    d.push(
        "realtime:public:items",
        "access_token",
        json!({"access_token": good()}),
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    db.batch_execute("INSERT INTO items VALUES (10)")
        .await
        .unwrap();
    let m = d.next().await.unwrap();
    assert_eq!(m.event, "INSERT", "the refreshed channel stayed: {m:?}");
}

#[tokio::test]
async fn the_sockets_own_token_sent_again_with_a_join_is_still_held_to_its_expiry() {
    let (_pg, _db, server) = secured().await;
    // The socket connects with a token that expires in 2 s, and joins
    // with that same token (as realtime-js 2.x does with every join).
    let short = token(json!({"role": "authenticated", "exp": now() + 2}), SECRET);
    let url = format!("{}&apikey={short}", server.ws_url("1.0.0"));
    let mut c = PhxClient::connect(&url).await.unwrap();
    let reply = c
        .join("realtime:public:items", json!({"user_token": short}))
        .await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    // Once it has expired, the same token is refused on a new join,
    // although it verified on this socket before.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let reply = c.join("realtime:other", json!({"user_token": short})).await;
    assert_eq!(reply.payload["status"], "error", "{reply:?}");
    assert!(
        reply.payload["response"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{reply:?}"
    );
}

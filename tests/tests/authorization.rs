//! Who sees what, end to end: the real server binary with SECURE_CHANNELS,
//! a real PostgreSQL with real roles, grants and row level security
//! policies, and Phoenix clients with users' tokens. Each test names the
//! rule it proves; the README's Security section states them.

use std::time::Duration;

use jsonwebtoken::{encode, EncodingKey, Header};
use realtime_tests::server::{free_port, http_post, ServerProcess};
use realtime_tests::ws::{Msg, PhxClient, WsEnd};
use realtime_tests::TempPostgres;
use serde_json::{json, Value};

const SECRET: &str = "a-test-secret-of-reasonable-length";
const ALICE: &str = "11111111-1111-1111-1111-111111111111";
const BOB: &str = "22222222-2222-2222-2222-222222222222";

/// Roles as Supabase has them, Supabase's `auth.uid()`, and the tables the
/// tests use.
const SCHEMA: &str = r#"
    CREATE ROLE anon NOLOGIN;
    CREATE ROLE authenticated NOLOGIN;
    CREATE ROLE service_role NOLOGIN BYPASSRLS;
    CREATE SCHEMA auth;
    GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
    CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
      select coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
      )::uuid
    $$;

    CREATE TABLE notes (id bigint PRIMARY KEY, owner uuid, body text);
    ALTER TABLE notes REPLICA IDENTITY FULL;
    ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
    CREATE POLICY own ON notes FOR ALL TO authenticated USING (owner = auth.uid());
    GRANT SELECT ON notes TO authenticated, service_role;

    -- The same rule, written so it cannot be reduced: checked row by row.
    CREATE TABLE docs (id bigint PRIMARY KEY, owner uuid, body text);
    ALTER TABLE docs REPLICA IDENTITY FULL;
    ALTER TABLE docs ENABLE ROW LEVEL SECURITY;
    CREATE POLICY own ON docs FOR SELECT TO authenticated
      USING (owner::text = (select auth.uid())::text AND body IS DISTINCT FROM 'slow'
             OR (body = 'slow' AND pg_sleep(0.3) IS NOT NULL AND owner = auth.uid()));
    GRANT SELECT ON docs TO authenticated;

    CREATE TABLE board (id bigint PRIMARY KEY, body text);
    ALTER TABLE board ENABLE ROW LEVEL SECURITY;
    CREATE POLICY everyone ON board FOR SELECT TO authenticated USING (true);
    GRANT SELECT ON board TO authenticated;

    CREATE TABLE secrets (id bigint PRIMARY KEY, body text);

    CREATE TABLE fragile (id bigint PRIMARY KEY, owner uuid);
    ALTER TABLE fragile ENABLE ROW LEVEL SECURITY;
    -- Raises for Bob's token only (his uuid is not 36 characters long
    -- after the replace), evaluated per row for everyone.
    CREATE POLICY mine ON fragile FOR SELECT TO authenticated
      USING (owner = auth.uid() AND 1 / (length(replace(auth.uid()::text, '2', '')) - 4) >= 0);
    GRANT SELECT ON fragile TO authenticated;

    CREATE TABLE revocable (id bigint PRIMARY KEY);
    GRANT SELECT ON revocable TO authenticated;

    CREATE PUBLICATION realtime_test FOR ALL TABLES;
"#;

fn token(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn user(sub: &str) -> String {
    token(json!({"role": "authenticated", "sub": sub, "exp": realtime_tests::jwt::now() + 3600}))
}

struct Secured {
    _pg: TempPostgres,
    db: tokio_postgres::Client,
    server: ServerProcess,
    /// The server's environment (for the setup command).
    env: std::collections::BTreeMap<String, String>,
}

async fn secured(extra: &[(&str, &str)]) -> Secured {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .expect("start PostgreSQL");
    let db = pg.connect().await.unwrap();
    db.batch_execute(SCHEMA).await.expect("schema");
    let mut env = ServerProcess::env_for(&pg, &["realtime_test"]);
    env.insert("SECURE_CHANNELS".into(), "true".into());
    env.insert("JWT_SECRET".into(), SECRET.into());
    env.insert("AUTHZ_REFRESH_MS".into(), "300".into());
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    let server_env = env.clone();
    let server = tokio::task::spawn_blocking(move || ServerProcess::start(server_env))
        .await
        .unwrap();
    Secured {
        _pg: pg,
        db,
        server,
        env,
    }
}

/// A 2.x client of `token` joined to `topic` with `bindings`: the join
/// reply and the `system` push about the bindings.
async fn join(s: &Secured, token: &str, topic: &str, bindings: Value) -> (PhxClient, Msg, Msg) {
    let bindings_sent = bindings.clone();
    let url = format!("{}&apikey={token}", s.server.ws_url("2.0.0"));
    let mut c = PhxClient::connect(&url).await.unwrap();
    let reply = c
        .join(
            topic,
            json!({"access_token": token, "config": {"broadcast": {"self": false},
                "presence": {"key": ""}, "private": false, "postgres_changes": bindings}}),
        )
        .await;
    // Bindings are answered with a `system` push; a channel without any
    // gets its `presence_state` last.
    let last = if bindings_sent.as_array().is_some_and(|b| b.is_empty()) {
        "presence_state"
    } else {
        "system"
    };
    let system = loop {
        let m = c.next().await.expect("system push");
        if m.event == last {
            break m;
        }
    };
    (c, reply, system)
}

fn on(table: &str) -> Value {
    json!([{"event": "*", "schema": "public", "table": table}])
}

/// The postgres_changes data received within `wait`.
async fn changes(c: &mut PhxClient, wait: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        match c.next_within(wait).await {
            Ok(m) if m.event == "postgres_changes" => out.push(m.payload["data"].clone()),
            Ok(_) => {}
            Err(WsEnd::Timeout) => return out,
            Err(e) => panic!("socket ended: {e:?}"),
        }
    }
}

fn summary(data: &[Value]) -> Vec<(String, Value, Value)> {
    data.iter()
        .map(|d| {
            (
                d["type"].as_str().unwrap_or_default().to_string(),
                d["record"]["id"].clone(),
                d["old_record"]["id"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn two_users_each_receive_exactly_their_own_rows() {
    let s = secured(&[]).await;
    for table in ["notes", "docs"] {
        let (mut alice, reply, system) = join(&s, &user(ALICE), "realtime:mine", on(table)).await;
        assert_eq!(reply.payload["status"], "ok");
        assert_eq!(system.payload["status"], "ok", "{system:?}");
        let (mut bob, _, system) = join(&s, &user(BOB), "realtime:mine", on(table)).await;
        assert_eq!(system.payload["status"], "ok", "{system:?}");
        s.db.batch_execute(&format!(
            "INSERT INTO {table} VALUES (1, '{ALICE}', 'a'), (2, '{BOB}', 'b');
                 UPDATE {table} SET body = 'a2' WHERE id = 1;
                 UPDATE {table} SET body = 'b2' WHERE id = 2;
                 DELETE FROM {table} WHERE id = 2;
                 DELETE FROM {table} WHERE id = 1;"
        ))
        .await
        .unwrap();
        let a = changes(&mut alice, Duration::from_secs(2)).await;
        let b = changes(&mut bob, Duration::from_secs(1)).await;
        assert_eq!(
            summary(&a),
            vec![
                ("INSERT".into(), json!(1), Value::Null),
                ("UPDATE".into(), json!(1), json!(1)),
                ("DELETE".into(), Value::Null, json!(1)),
            ],
            "{table}: alice got {a:#?}"
        );
        assert_eq!(
            summary(&b),
            vec![
                ("INSERT".into(), json!(2), Value::Null),
                ("UPDATE".into(), json!(2), json!(2)),
                ("DELETE".into(), Value::Null, json!(2)),
            ],
            "{table}: bob got {b:#?}"
        );
    }
}

/// The race a check of the current row (Supabase's) loses: Bob's row gets a
/// secret, then is given to Alice, and the first change is checked after
/// the second committed (each check sleeps 0.3 s). Alice must not see the
/// secret; Bob sees his own change.
#[tokio::test]
async fn a_row_given_away_never_shows_its_earlier_values_to_its_new_owner() {
    let s = secured(&[]).await;
    for table in ["notes", "docs"] {
        let (mut alice, _, _) = join(&s, &user(ALICE), "realtime:race", on(table)).await;
        let (mut bob, _, _) = join(&s, &user(BOB), "realtime:race", on(table)).await;
        // Each statement its own transaction, committed back to back.
        for statement in [
            format!("INSERT INTO {table} VALUES (7, '{BOB}', 'hello')"),
            format!("UPDATE {table} SET body = 'slow' WHERE id = 7"),
            format!("UPDATE {table} SET body = 'bob''s secret' WHERE id = 7"),
            format!("UPDATE {table} SET owner = '{ALICE}', body = 'yours now' WHERE id = 7"),
        ] {
            s.db.batch_execute(&statement).await.unwrap();
        }
        let a = changes(&mut alice, Duration::from_secs(3)).await;
        let b = changes(&mut bob, Duration::from_secs(1)).await;
        let text = serde_json::to_string(&a).unwrap();
        assert!(!text.contains("secret"), "{table}: alice saw {a:#?}");
        assert!(
            !text.contains("hello") && !text.contains("slow"),
            "{table}: {a:#?}"
        );
        assert_eq!(a.len(), 1, "{table}: {a:#?}");
        assert_eq!(a[0]["record"]["body"], "yours now");
        assert_eq!(a[0]["old_record"], json!({}), "old values withheld");
        let bodies: Vec<&str> = b
            .iter()
            .map(|d| d["record"]["body"].as_str().unwrap())
            .collect();
        assert_eq!(bodies, vec!["hello", "slow", "bob's secret"], "{table}");
        s.db.batch_execute(&format!("DELETE FROM {table}"))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_table_without_a_grant_is_refused_at_join_and_delivers_nothing() {
    let s = secured(&[]).await;
    let (mut c, reply, system) = join(&s, &user(ALICE), "realtime:x", on("secrets")).await;
    assert_eq!(reply.payload["status"], "ok");
    assert_eq!(system.payload["status"], "error");
    let message = system.payload["message"].as_str().unwrap();
    assert!(
        message.contains("public.secrets") && message.contains("may not SELECT"),
        "{message}"
    );
    s.db.batch_execute("INSERT INTO secrets VALUES (1, 'classified')")
        .await
        .unwrap();
    assert!(changes(&mut c, Duration::from_secs(1)).await.is_empty());
    // A 1.x topic on it: refused at join.
    let url = format!("{}&apikey={}", s.server.ws_url("1.0.0"), user(ALICE));
    let mut v1 = PhxClient::connect(&url).await.unwrap();
    let reply = v1
        .join(
            "realtime:public:secrets",
            json!({"user_token": user(ALICE)}),
        )
        .await;
    assert_eq!(reply.payload["status"], "error", "{reply:?}");
}

#[tokio::test]
async fn a_shared_table_reaches_both_and_service_role_sees_all() {
    let s = secured(&[]).await;
    let (mut alice, _, _) = join(&s, &user(ALICE), "realtime:b", on("board")).await;
    let (mut bob, _, _) = join(&s, &user(BOB), "realtime:b", on("board")).await;
    let service = token(json!({"role": "service_role"}));
    let (mut admin, _, system) = join(&s, &service, "realtime:n", on("notes")).await;
    assert_eq!(system.payload["status"], "ok", "{system:?}");
    s.db.batch_execute(&format!(
        "INSERT INTO board VALUES (1, 'hi'); INSERT INTO notes VALUES (9, '{ALICE}', 'x')"
    ))
    .await
    .unwrap();
    assert_eq!(changes(&mut alice, Duration::from_secs(2)).await.len(), 1);
    assert_eq!(changes(&mut bob, Duration::from_secs(1)).await.len(), 1);
    assert_eq!(changes(&mut admin, Duration::from_secs(1)).await.len(), 1);
}

#[tokio::test]
async fn a_policy_that_raises_affects_only_its_group() {
    let s = secured(&[]).await;
    let (mut alice, _, _) = join(&s, &user(ALICE), "realtime:f", on("fragile")).await;
    let (mut bob, _, _) = join(&s, &user(BOB), "realtime:f", on("fragile")).await;
    s.db.batch_execute(&format!(
        "INSERT INTO fragile VALUES (1, '{ALICE}'), (2, '{BOB}'), (3, '{ALICE}')"
    ))
    .await
    .unwrap();
    let a = changes(&mut alice, Duration::from_secs(2)).await;
    assert_eq!(
        a.iter()
            .map(|d| d["record"]["id"].clone())
            .collect::<Vec<_>>(),
        vec![json!(1), json!(3)]
    );
    assert!(changes(&mut bob, Duration::from_secs(1)).await.is_empty());
    let log = s.server.log();
    assert!(
        log.contains("checking row level security failed") && log.contains("fragile"),
        "the failure is logged naming the table: {log}"
    );
    let (_, metrics) = s.server.get("/metrics").unwrap();
    assert!(
        metrics.contains("realtime_rls_check_errors_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_revoked_grant_and_a_new_policy_take_effect_on_joined_channels() {
    let s = secured(&[]).await;
    let (mut c, _, system) = join(&s, &user(ALICE), "realtime:r", on("revocable")).await;
    assert_eq!(system.payload["status"], "ok");
    s.db.batch_execute("INSERT INTO revocable VALUES (1)")
        .await
        .unwrap();
    assert_eq!(changes(&mut c, Duration::from_secs(2)).await.len(), 1);
    s.db.batch_execute("REVOKE SELECT ON revocable FROM authenticated")
        .await
        .unwrap();
    // Within the refresh interval (300 ms here) plus the re-check.
    let m = loop {
        let m = c
            .next_within(Duration::from_secs(5))
            .await
            .expect("a system error");
        if m.event == "system" {
            break m;
        }
    };
    assert_eq!(m.payload["status"], "error", "{m:?}");
    assert!(
        m.payload["message"].as_str().unwrap().contains("revocable"),
        "{m:?}"
    );
    s.db.batch_execute("INSERT INTO revocable VALUES (2)")
        .await
        .unwrap();
    assert!(changes(&mut c, Duration::from_secs(1)).await.is_empty());

    // A policy added while joined: from then on, only her rows.
    let (mut b, _, _) = join(&s, &user(ALICE), "realtime:b2", on("board")).await;
    s.db.batch_execute(
        "ALTER TABLE board ADD COLUMN owner uuid;
             DROP POLICY everyone ON board;
             CREATE POLICY mine ON board FOR SELECT USING (owner = auth.uid());",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.db.batch_execute(&format!(
        "INSERT INTO board VALUES (10, 'theirs', '{BOB}'), (11, 'hers', '{ALICE}')"
    ))
    .await
    .unwrap();
    let got = changes(&mut b, Duration::from_secs(2)).await;
    assert_eq!(
        got.iter()
            .map(|d| d["record"]["id"].clone())
            .collect::<Vec<_>>(),
        vec![json!(11)],
        "{got:#?}"
    );
}

#[tokio::test]
async fn after_a_token_expires_nothing_it_sent_is_relayed() {
    let s = secured(&[("JWT_LEEWAY", "0")]).await;
    let short = token(json!({"role": "authenticated", "sub": ALICE,
        "exp": realtime_tests::jwt::now() + 2}));
    let (mut sender, _, _) = join(&s, &short, "realtime:room", json!([])).await;
    let (mut listener, _, _) = join(&s, &user(BOB), "realtime:room", json!([])).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The join with the socket's (expired) token, and broadcasts back to back.
    let r = sender
        .push("realtime:other", "phx_join", json!({"config": {}}), None)
        .await;
    let reply = sender.expect_reply(&r).await;
    assert_eq!(reply.payload["status"], "error", "{reply:?}");
    for i in 0..50 {
        sender
            .push(
                "realtime:room",
                "broadcast",
                json!({"type": "broadcast", "event": "e", "payload": {"i": i}}),
                None,
            )
            .await;
    }
    match listener.next_within(Duration::from_secs(1)).await {
        Err(WsEnd::Timeout) => {}
        Ok(m) if m.event == "presence_diff" => {}
        other => panic!("a broadcast after expiry was relayed: {other:?}"),
    }
}

#[tokio::test]
async fn tokens_with_exp_null_or_nbf_in_the_future_are_refused() {
    let s = secured(&[]).await;
    for (claims, why) in [
        (json!({"role": "authenticated", "exp": null}), "exp"),
        (
            json!({"role": "authenticated", "nbf": realtime_tests::jwt::now() + 3600}),
            "not valid yet",
        ),
        (json!({"role": "authenticated", "nbf": "soon"}), "nbf"),
    ] {
        let url = format!(
            "{}&apikey={}",
            s.server.ws_url("2.0.0"),
            token(claims.clone())
        );
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 403, "{claims}");
                let body =
                    String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).to_string();
                assert!(body.contains(why), "{claims}: {body}");
            }
            other => panic!("{claims}: {other:?}"),
        }
    }
}

/// Runs `realtime-server setup-authorization` against the test database.
fn setup_authorization(s: &Secured) {
    let out = std::process::Command::new(realtime_tests::server::server_bin())
        .arg("setup-authorization")
        .envs(s.env.iter())
        .output()
        .expect("run setup-authorization");
    assert!(
        out.status.success(),
        "setup-authorization: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 2.x client of `token` joined to the private channel `topic`: the
/// join reply.
async fn join_private(s: &Secured, token: &str, topic: &str) -> (PhxClient, Msg) {
    join_private_on(&s.server, token, topic).await
}

/// [`join_private`] on the server `server`.
async fn join_private_on(server: &ServerProcess, token: &str, topic: &str) -> (PhxClient, Msg) {
    let url = format!("{}&apikey={token}", server.ws_url("2.0.0"));
    let mut c = PhxClient::connect(&url).await.unwrap();
    let reply = c
        .join(
            topic,
            json!({"access_token": token, "config": {"broadcast": {"self": false, "ack": true},
                "presence": {"key": ""}, "private": true}}),
        )
        .await;
    (c, reply)
}

/// The events (other than replies) `c` receives within `wait`.
async fn events(c: &mut PhxClient, wait: Duration) -> Vec<Msg> {
    let mut out = Vec::new();
    loop {
        match c.next_within(wait).await {
            Ok(m) if m.event == "phx_reply" => {}
            Ok(m) => out.push(m),
            Err(WsEnd::Timeout) => return out,
            Err(e) => panic!("socket ended: {e:?}"),
        }
    }
}

/// Policies as Supabase's documentation writes them: Alice may read and
/// write `room`; Bob may read its broadcasts only (no presence, no write);
/// nobody may join `vault`.
const CHANNEL_POLICIES: &str = r#"
    CREATE POLICY alice_reads ON realtime.messages FOR SELECT TO authenticated
      USING (realtime.topic() = 'room' AND auth.uid() = '11111111-1111-1111-1111-111111111111');
    CREATE POLICY bob_reads_broadcast ON realtime.messages FOR SELECT TO authenticated
      USING (realtime.topic() = 'room' AND realtime.messages.extension = 'broadcast'
             AND auth.uid() = '22222222-2222-2222-2222-222222222222');
    CREATE POLICY alice_writes ON realtime.messages FOR INSERT TO authenticated
      WITH CHECK (realtime.topic() = 'room' AND auth.uid() = '11111111-1111-1111-1111-111111111111');
"#;

#[tokio::test]
async fn a_private_channel_before_its_setup_is_refused_with_the_command_to_run() {
    let s = secured(&[]).await;
    let (_c, reply) = join_private(&s, &user(ALICE), "realtime:room").await;
    assert_eq!(reply.payload["status"], "error", "{reply:?}");
    let reason = reply.payload["response"]["reason"].as_str().unwrap();
    assert!(reason.contains("setup-authorization"), "{reason}");
}

/// Alice broadcasts "hi" and tracks her presence on `realtime:room`, each
/// acknowledged.
async fn alice_says_hi_and_tracks(alice: &mut PhxClient) {
    let hi = json!({"type": "broadcast", "event": "hi", "payload": {"from": "alice"}});
    let reply = alice.request("realtime:room", "broadcast", hi).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    let track = json!({"type": "presence", "event": "track", "payload": {"name": "alice"}});
    let reply = alice.request("realtime:room", "presence", track).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
}

/// What `c` receives within `wait` is Alice's broadcast and nothing else
/// (none of her presence).
async fn only_alices_broadcast(c: &mut PhxClient, wait: Duration) {
    let got: Vec<String> = events(c, wait)
        .await
        .iter()
        .map(|m| format!("{}:{}", m.event, m.payload))
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("broadcast:") && got[0].contains("alice"),
        "{got:?}"
    );
}

#[tokio::test]
async fn private_channels_read_and_write_as_realtime_messages_policies_say() {
    let s = secured(&[]).await;
    setup_authorization(&s);
    s.db.batch_execute(CHANNEL_POLICIES).await.unwrap();

    // Nobody may read `vault`: the join is refused.
    let (_v, reply) = join_private(&s, &user(ALICE), "realtime:vault").await;
    assert_eq!(reply.payload["status"], "error", "{reply:?}");
    assert!(
        reply.payload["response"]["reason"]
            .as_str()
            .unwrap()
            .contains("Unauthorized"),
        "{reply:?}"
    );

    let (mut alice, reply) = join_private(&s, &user(ALICE), "realtime:room").await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    let (mut bob, reply) = join_private(&s, &user(BOB), "realtime:room").await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    // A public channel of the same name shares nothing with the private one.
    let (mut public, _, _) = join(&s, &user(BOB), "realtime:room", json!([])).await;
    events(&mut alice, Duration::from_millis(300)).await;
    events(&mut bob, Duration::from_millis(300)).await;
    events(&mut public, Duration::from_millis(300)).await;

    // Alice writes: Bob (broadcast read) receives; the public topic does not.
    // Alice tracks her presence: Bob (no presence read) sees nothing of it.
    alice_says_hi_and_tracks(&mut alice).await;
    only_alices_broadcast(&mut bob, Duration::from_secs(1)).await;
    assert!(
        events(&mut public, Duration::from_millis(500))
            .await
            .is_empty(),
        "the public topic shares nothing"
    );

    // Bob may not write: neither broadcast nor presence.
    let r = bob
        .push(
            "realtime:room",
            "broadcast",
            json!({"type": "broadcast", "event": "hi", "payload": {"from": "bob"}}),
            None,
        )
        .await;
    let reply = bob.expect_reply(&r).await;
    assert_eq!(reply.payload["status"], "error", "{reply:?}");
    let r = bob
        .push(
            "realtime:room",
            "presence",
            json!({"type": "presence", "event": "track", "payload": {"name": "bob"}}),
            None,
        )
        .await;
    assert_eq!(bob.expect_reply(&r).await.payload["status"], "error");
    // Neither reached Alice; the public channel's broadcast does not either.
    let r = public
        .push(
            "realtime:room",
            "broadcast",
            json!({"type": "broadcast", "event": "hi", "payload": {"from": "public"}}),
            None,
        )
        .await;
    let _ = r;
    let got = events(&mut alice, Duration::from_secs(1)).await;
    assert!(
        got.iter().all(|m| m.event == "presence_diff"),
        "alice got {got:?}"
    );
}

/// Rights are enforced by the server that delivers: a private channel's
/// broadcasts and presences cross to another server of the cluster and
/// reach there only the members whose token may read them; an HTTP
/// broadcast to a private topic needs a token that may write it.
#[tokio::test]
async fn private_channels_keep_their_rights_across_servers_and_over_http() {
    let s = secured(&[]).await;
    setup_authorization(&s);
    s.db.batch_execute(CHANNEL_POLICIES).await.unwrap();
    // A second server on the same database: one cluster.
    let mut env_b = s.env.clone();
    env_b.insert("PORT".into(), free_port().to_string());
    let server_b = tokio::task::spawn_blocking(move || ServerProcess::start(env_b))
        .await
        .unwrap();

    let (mut alice, reply) = join_private(&s, &user(ALICE), "realtime:room").await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    let (mut bob, reply) = join_private_on(&server_b, &user(BOB), "realtime:room").await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    events(&mut alice, Duration::from_millis(300)).await;
    events(&mut bob, Duration::from_millis(300)).await;

    // Alice, on A, broadcasts and tracks: Bob, on B, gets the broadcast
    // (he may read broadcasts) and nothing of her presence.
    alice_says_hi_and_tracks(&mut alice).await;
    only_alices_broadcast(&mut bob, Duration::from_secs(2)).await;
    // A member that joins on B after Alice tracked gets an empty
    // presence_state when it may not read presence.
    let (mut bob2, reply) = join_private_on(&server_b, &user(BOB), "realtime:room").await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    let state = loop {
        let m = bob2.next().await.expect("presence_state");
        if m.event == "presence_state" {
            break m;
        }
    };
    assert_eq!(state.payload, json!({}), "{state:?}");

    // Over HTTP: Bob may not write the private topic (403, nothing sent);
    // Alice may, and Bob on the other server receives it.
    let body = |from: &str, private: bool| {
        json!({"messages": [{"topic": "room", "event": "hi", "private": private,
            "payload": {"from": from}}]})
        .to_string()
    };
    let bearer = |t: String| format!("Authorization: Bearer {t}");
    let port = s.server.port;
    let (b_auth, a_auth) = (bearer(user(BOB)), bearer(user(ALICE)));
    let (bob_body, alice_body) = (body("bob-http", true), body("alice-http", true));
    let (refused, accepted) = tokio::task::spawn_blocking(move || {
        (
            http_post(port, "/api/broadcast", &[&b_auth], &bob_body).expect("an answer"),
            http_post(port, "/api/broadcast", &[&a_auth], &alice_body).expect("an answer"),
        )
    })
    .await
    .unwrap();
    assert_eq!(refused.0, 403, "{refused:?}");
    assert!(
        refused.1.contains("permissions to write") && refused.1.contains("room"),
        "{refused:?}"
    );
    assert_eq!(accepted.0, 202, "{accepted:?}");
    let got: Vec<String> = events(&mut bob, Duration::from_secs(2))
        .await
        .iter()
        .map(|m| m.payload.to_string())
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("alice-http"), "{got:?}");
    // Alice did not get Bob's refused message either.
    let got = events(&mut alice, Duration::from_millis(500)).await;
    assert!(
        got.iter()
            .all(|m| !m.payload.to_string().contains("bob-http")),
        "{got:?}"
    );
}

#[tokio::test]
async fn private_only_refuses_public_channels() {
    let s = secured(&[("PRIVATE_ONLY", "true")]).await;
    let url = format!("{}&apikey={}", s.server.ws_url("2.0.0"), user(ALICE));
    let mut c = PhxClient::connect(&url).await.unwrap();
    let reply = c
        .join("realtime:room", json!({"config": {"private": false}}))
        .await;
    assert_eq!(reply.payload["status"], "error", "{reply:?}");
    assert!(
        reply.payload["response"]["reason"]
            .as_str()
            .unwrap()
            .contains("PrivateOnly"),
        "{reply:?}"
    );
}

#[tokio::test]
async fn tokens_signed_with_rsa_ec_and_ed25519_keys_act_as_their_users() {
    use jsonwebtoken::Algorithm;
    use realtime_tests::jwt::{jwks, SigningKey};
    let rsa = SigningKey::generate("rsa-1", Algorithm::RS256);
    let ec = SigningKey::generate("ec-1", Algorithm::ES256);
    let ed = SigningKey::generate("ed-1", Algorithm::EdDSA);
    let set = jwks(&[&rsa, &ec, &ed]);
    let s = secured(&[("JWT_JWKS", set.as_str())]).await;
    let claims = |sub: &str| json!({"role": "authenticated", "sub": sub, "exp": realtime_tests::jwt::now() + 3600});
    let (mut a, _, system) = join(&s, &rsa.sign(&claims(ALICE)), "realtime:k", on("notes")).await;
    assert_eq!(system.payload["status"], "ok", "{system:?}");
    let (mut b, _, system) = join(&s, &ec.sign(&claims(BOB)), "realtime:k", on("notes")).await;
    assert_eq!(system.payload["status"], "ok", "{system:?}");
    let (mut e, _, system) = join(&s, &ed.sign(&claims(BOB)), "realtime:k2", on("notes")).await;
    assert_eq!(system.payload["status"], "ok", "{system:?}");
    s.db.batch_execute(&format!(
        "INSERT INTO notes VALUES (21, '{ALICE}', 'a'), (22, '{BOB}', 'b')"
    ))
    .await
    .unwrap();
    let ids = |d: Vec<Value>| {
        d.iter()
            .map(|d| d["record"]["id"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(changes(&mut a, Duration::from_secs(2)).await),
        vec![json!(21)]
    );
    assert_eq!(
        ids(changes(&mut b, Duration::from_secs(1)).await),
        vec![json!(22)]
    );
    assert_eq!(
        ids(changes(&mut e, Duration::from_secs(1)).await),
        vec![json!(22)]
    );

    // Algorithm confusion: HS256 "signed" with the RSA public key's bytes
    // (the JWK as text, as a confused verifier would use it) is refused.
    let forged = realtime_tests::jwt::hmac_token(
        &json!({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}),
        &claims(ALICE),
        rsa.jwk(true).to_string().as_bytes(),
    );
    let none = format!(
        "{}.{}.",
        realtime_tests::jwt::base64url(br#"{"alg":"none","typ":"JWT"}"#),
        realtime_tests::jwt::base64url(claims(ALICE).to_string().as_bytes())
    );
    for bad in [forged, none] {
        let url = format!("{}&apikey={bad}", s.server.ws_url("2.0.0"));
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 403)
            }
            other => panic!("a forged token was accepted: {other:?}"),
        }
    }
}

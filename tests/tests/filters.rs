//! The filter grammar of `postgres_changes` bindings end to end: a real
//! PostgreSQL, the real server binary, real WebSockets. Which rows each
//! filter lets through is asked of PostgreSQL itself (the same condition in
//! SQL over the same rows), so every operator, its negation and NULL are
//! held to PostgreSQL's own answer; then the `select` column list, the
//! refusals and the limits.

use std::time::{Duration, Instant};

use realtime_tests::server::{ServerProcess, Stack};
use realtime_tests::ws::{Msg, PhxClient};
use serde_json::{json, Value};

const SCHEMA: &str = "
    CREATE TABLE items (id bigint PRIMARY KEY, room int, body text, done bool, at timestamptz, note text);
    ALTER TABLE items REPLICA IDENTITY FULL;
    CREATE TABLE keyed (id bigint PRIMARY KEY, note text);";

async fn setup(extra_env: &[(&str, &str)]) -> Stack {
    Stack::start_with(
        SCHEMA,
        "CREATE PUBLICATION realtime_test FOR TABLE items, keyed",
        extra_env,
    )
    .await
}

fn binding(table: &str, filter: &str) -> Value {
    json!({"event": "*", "schema": "public", "table": table, "filter": filter})
}

/// Joins `topic` with `bindings`; returns the client, the join reply and
/// the `system` push (the `presence_state` push after it is read too).
async fn join(server: &ServerProcess, topic: &str, bindings: Value) -> (PhxClient, Msg, Msg) {
    let mut c = PhxClient::connect(&server.ws_url("2.0.0")).await.unwrap();
    let reply = c
        .join(topic, json!({"config": {"postgres_changes": bindings}}))
        .await;
    let system = c.next_named("system").await;
    let state = c.next().await.expect("presence_state push");
    assert_eq!(state.event, "presence_state");
    (c, reply, system)
}

/// The rows every filter below is held to: numbers, text with the
/// grammar's own characters, booleans, timestamps, and NULL in each column.
const ROWS: &str = "
    INSERT INTO items VALUES (1, 9, 'nine', true, '2020-06-01 00:00:00+00', 'x');
    INSERT INTO items VALUES (2, 10, 'ten', false, '2020-12-31 23:59:59+00', NULL);
    INSERT INTO items VALUES (3, 11, 'eleven', NULL, '2021-01-01 00:00:01+00', 'x');
    INSERT INTO items VALUES (4, NULL, NULL, true, NULL, NULL);
    INSERT INTO items VALUES (5, 10, 'a,b', NULL, '2021-06-01 12:00:00+02', 'y');
    INSERT INTO items VALUES (6, 12, 'Ten%', false, NULL, 'NULL');
    INSERT INTO items VALUES (7, 10, E'one\\ntwo (2)', true, '2021-01-01 00:00:00+00', '');";

/// Each filter with the same condition in SQL.
const CASES: &[(&str, &str)] = &[
    ("room=eq.10", "room = 10"),
    ("room=not.eq.10", "NOT (room = 10)"),
    ("room=neq.10", "room <> 10"),
    ("room=lt.10", "room < 10"),
    ("room=not.lt.10", "NOT (room < 10)"),
    ("room=lte.10", "room <= 10"),
    ("room=gt.10", "room > 10"),
    ("room=gte.10", "room >= 10"),
    ("room=in.(9,11)", "room = ANY('{9,11}'::int[])"),
    ("room=not.in.(9,11)", "NOT (room = ANY('{9,11}'::int[]))"),
    ("room=in.(9,null)", "room = ANY('{9,NULL}'::int[])"),
    (
        "room=not.in.(9,NULL)",
        "NOT (room = ANY('{9,NULL}'::int[]))",
    ),
    ("room=isdistinct.10", "room IS DISTINCT FROM 10"),
    ("room=not.isdistinct.10", "room IS NOT DISTINCT FROM 10"),
    ("room=is.null", "room IS NULL"),
    ("room=not.is.null", "room IS NOT NULL"),
    ("done=is.true", "done IS TRUE"),
    ("done=not.is.true", "done IS NOT TRUE"),
    ("done=is.false", "done IS FALSE"),
    ("done=is.unknown", "done IS UNKNOWN"),
    ("done=eq.true", "done = true"),
    ("body=eq.\"a,b\"", "body = 'a,b'"),
    (
        "body=in.(\"a,b\",ten)",
        "body = ANY('{\"a,b\",ten}'::text[])",
    ),
    ("body=lt.nine", "body < 'nine' COLLATE \"C\""),
    ("body=like.%e%", "body LIKE '%e%'"),
    ("body=like.*e*", "body LIKE '%e%'"),
    ("body=not.like.%e%", "NOT (body LIKE '%e%')"),
    ("body=like.t_n", "body LIKE 't_n'"),
    ("body=like.\"Ten\\\\%\"", "body LIKE 'Ten\\%'"),
    ("body=ilike.T%", "body ILIKE 'T%'"),
    ("body=match.^e", "body ~ '^e'"),
    ("body=match.one.two", "body ~ 'one.two'"),
    ("body=imatch.^T", "body ~* '^T'"),
    ("body=not.imatch.^T", "NOT (body ~* '^T')"),
    ("body=match.\"\\\\(2\\\\)$\"", "body ~ '\\(2\\)$'"),
    ("note=eq.", "note = ''"),
    ("note=in.(x,\"NULL\")", "note = ANY('{x,\"NULL\"}'::text[])"),
    ("at=gt.2021-01-01T00:00:00Z", "at > '2021-01-01T00:00:00Z'"),
    (
        "at=lte.2021-06-01T10:00:00Z",
        "at <= '2021-06-01T10:00:00Z'",
    ),
    (
        "room=gte.9,room=lt.11,body=not.is.null",
        "room >= 9 AND room < 11 AND body IS NOT NULL",
    ),
    ("room=eq.10,body=like.%e%", "room = 10 AND body LIKE '%e%'"),
    (
        "room=in.(9,10,11),done=not.is.false,note=isdistinct.y",
        "room = ANY('{9,10,11}'::int[]) AND done IS NOT FALSE AND note IS DISTINCT FROM 'y'",
    ),
];

/// Every operator, negated and not, on rows with NULLs: each channel
/// receives exactly the rows PostgreSQL says pass the same condition, in
/// commit order.
#[tokio::test]
async fn every_operator_and_its_negation_select_rows_as_postgresql_does() {
    let env = setup(&[]).await;
    let mut clients = Vec::new();
    for (i, (filter, _)) in CASES.iter().enumerate() {
        let (c, reply, system) = join(
            &env.server,
            &format!("realtime:f{i}"),
            json!([binding("items", filter)]),
        )
        .await;
        assert_eq!(reply.payload["status"], "ok", "{filter}: {reply:?}");
        assert_eq!(system.payload["status"], "ok", "{filter}: {system:?}");
        clients.push(c);
    }
    env.db.batch_execute(ROWS).await.unwrap();
    for ((filter, sql), c) in CASES.iter().zip(clients.iter_mut()) {
        let want: Vec<i64> = env
            .db
            .query(
                &format!("SELECT id FROM items WHERE {sql} ORDER BY id"),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let m = c.next_named("postgres_changes").await;
            got.push(m.payload["data"]["record"]["id"].as_i64().unwrap());
        }
        assert_eq!(got, want, "filter {filter} (SQL: {sql})");
        c.expect_silence(Duration::from_millis(200)).await;
    }
}

/// A DELETE is filtered on its old row; a column a key-only old row does
/// not carry is unknown, and a condition on it passes nothing, negated or
/// not (not even `is.null`).
#[tokio::test]
async fn a_column_the_old_row_does_not_carry_passes_no_condition() {
    let env = setup(&[]).await;
    let mut by_key = Vec::new();
    for (i, filter) in [
        "id=eq.1",
        "note=is.null",
        "note=not.is.null",
        "id=gt.0,note=eq.a",
    ]
    .iter()
    .enumerate()
    {
        let (c, _, system) = join(
            &env.server,
            &format!("realtime:k{i}"),
            json!([{"event": "DELETE", "schema": "public", "table": "keyed", "filter": filter}]),
        )
        .await;
        assert_eq!(system.payload["status"], "ok", "{filter}: {system:?}");
        by_key.push(c);
    }
    env.db
        .batch_execute(
            "INSERT INTO keyed VALUES (1, 'a'), (2, NULL);
             DELETE FROM keyed WHERE id = 2; DELETE FROM keyed WHERE id = 1;",
        )
        .await
        .unwrap();
    let m = by_key[0].next_named("postgres_changes").await;
    assert_eq!(m.payload["data"]["old_record"], json!({"id": 1}));
    for c in &mut by_key {
        c.expect_silence(Duration::from_millis(300)).await;
    }
}

/// `select` trims `record`, `old_record` and `columns` to the listed
/// columns and the primary key; a binding of the same channel without it
/// gets whole rows in its own frame.
#[tokio::test]
async fn select_trims_what_the_subscriber_receives() {
    let env = setup(&[]).await;
    let (mut c, reply, system) = join(
        &env.server,
        "realtime:sel",
        json!([
            {"event": "*", "schema": "public", "table": "items", "select": ["body", "done"]},
            {"event": "INSERT", "schema": "public", "table": "items", "filter": "room=eq.1"},
        ]),
    )
    .await;
    assert_eq!(system.payload["status"], "ok", "{system:?}");
    assert_eq!(
        reply.payload["response"]["postgres_changes"][0]["select"],
        json!(["body", "done"]),
        "the join reply echoes the binding as sent"
    );
    env.db
        .batch_execute(
            "INSERT INTO items (id, room, body, done, note) VALUES (1, 1, 'hi', true, 'secret');
             UPDATE items SET body = 'bye' WHERE id = 1;",
        )
        .await
        .unwrap();
    let mut frames = [
        c.next_named("postgres_changes").await,
        c.next_named("postgres_changes").await,
    ];
    frames.sort_by_key(|m| m.payload["ids"].to_string());
    assert_eq!(frames[0].payload["ids"], json!([1]));
    let data = &frames[0].payload["data"];
    assert_eq!(data["record"], json!({"id": 1, "body": "hi", "done": true}));
    assert_eq!(
        data["columns"],
        json!([{"name": "id", "type": "int8"}, {"name": "body", "type": "text"},
               {"name": "done", "type": "bool"}])
    );
    assert_eq!(frames[1].payload["ids"], json!([2]));
    assert_eq!(frames[1].payload["data"]["record"]["note"], "secret");

    let update = c.next_named("postgres_changes").await;
    assert_eq!(update.payload["ids"], json!([1]));
    assert_eq!(
        update.payload["data"]["record"],
        json!({"id": 1, "body": "bye", "done": true})
    );
    assert_eq!(
        update.payload["data"]["old_record"],
        json!({"id": 1, "body": "hi", "done": true})
    );
    c.expect_silence(Duration::from_millis(300)).await;

    for (select, reason) in [
        (json!("body"), "select must be a list of column names"),
        (
            json!(["body", "nope"]),
            "select: the table has no column \"nope\"",
        ),
    ] {
        let (_, _, system) = join(
            &env.server,
            "realtime:bad-select",
            json!([{"event": "*", "schema": "public", "table": "items", "select": select}]),
        )
        .await;
        assert_eq!(system.payload["status"], "error");
        assert!(
            system.payload["message"].as_str().unwrap().contains(reason),
            "{system:?}"
        );
    }
    let (_, _, system) = join(
        &env.server,
        "realtime:bad-select",
        json!([{"event": "*", "schema": "public", "select": ["id"]}]),
    )
    .await;
    assert!(
        system.payload["message"]
            .as_str()
            .unwrap()
            .contains("select needs a table"),
        "{system:?}"
    );
}

/// A bad filter is refused at join with a `system` error naming the
/// condition that is wrong and why; nothing of the channel is subscribed.
#[tokio::test]
async fn a_bad_filter_is_refused_naming_the_part_that_is_wrong() {
    let env = setup(&[("MAX_FILTER_CONDITIONS", "3")]).await;
    let cases = [
        (
            "id=eq.1,body=zz.x",
            "invalid filter \"id=eq.1,body=zz.x\": unknown operator \"zz\" in \"body=zz.x\": use eq, ",
        ),
        (
            "room=like.1%",
            "invalid filter \"room=like.1%\": like compares text, and column \"room\" is a number",
        ),
        (
            "id=gt.0,body=is.true",
            "is.true needs a boolean column, and column \"body\" is a text in \"body=is.true\"",
        ),
        ("body=match.(a", "invalid regular expression \"(a\": unclosed group"),
        ("room=in.(1,\"2)", "no closing \""),
        ("room=in.(1,x)", "\"x\" is not a valid number value in the in list"),
        ("id=eq.1,,id=eq.2", "an empty condition"),
        (
            "id=gt.0,id=gt.1,id=gt.2,id=gt.3",
            "a filter takes at most 3 conditions (MAX_FILTER_CONDITIONS)",
        ),
    ];
    for (filter, reason) in cases {
        let (mut c, reply, system) = join(
            &env.server,
            "realtime:bad",
            json!([binding("items", "room=eq.10"), binding("items", filter)]),
        )
        .await;
        assert_eq!(reply.payload["status"], "ok");
        assert_eq!(system.payload["status"], "error", "{filter}: {system:?}");
        let message = system.payload["message"].as_str().unwrap();
        assert!(message.contains(reason), "{filter}: {message}");
        env.db
            .execute(
                "INSERT INTO items (id, room) VALUES ((SELECT coalesce(max(id), 0) + 1 FROM items), 10)",
                &[],
            )
            .await
            .unwrap();
        c.expect_silence(Duration::from_millis(200)).await;
    }
    let (_, metrics) = env.server.get("/metrics").expect("/metrics");
    assert!(
        metrics.contains("realtime_limit_reached_total{limit=\"MAX_FILTER_CONDITIONS\"} 1"),
        "{metrics}"
    );
    // At the limit: three conditions stand.
    let (_, _, system) = join(
        &env.server,
        "realtime:three",
        json!([binding("items", "id=gt.0,id=gt.1,id=gt.2")]),
    )
    .await;
    assert_eq!(system.payload["status"], "ok", "{system:?}");
}

/// Patterns built to make a backtracking matcher take exponential or
/// quadratic time, at the longest length allowed, against a 64 KiB value:
/// the change still reaches a well-behaved client within a second.
#[tokio::test]
async fn worst_case_patterns_cost_time_linear_in_the_value() {
    let env = setup(&[]).await;
    let long = |unit: &str, n: usize| unit.repeat(n);
    let patterns = [
        format!("body=like.{}b", long("%a", 255)),
        format!("body=like.%{}b%", long("a", 500)),
        format!("body=like.%{}%", long("_a", 250)),
        format!("body=ilike.{}B", long("%A", 255)),
        "body=match.^(a+)+$".to_string(),
        "body=match.^(a|aa)*c$".to_string(),
        format!("body=imatch.{}b", long("a?", 200)),
        "body=match.(a*)*(b|c)".to_string(),
    ];
    let mut attackers = Vec::new();
    for (i, p) in patterns.iter().enumerate() {
        let (c, _, system) = join(
            &env.server,
            &format!("realtime:slow{i}"),
            json!([binding("items", p)]),
        )
        .await;
        assert_eq!(system.payload["status"], "ok", "{system:?}");
        attackers.push(c);
    }
    let (mut good, _, system) = join(
        &env.server,
        "realtime:good",
        json!([binding("items", "id=eq.2")]),
    )
    .await;
    assert_eq!(system.payload["status"], "ok");
    let t = Instant::now();
    env.db
        .batch_execute(&format!(
            "INSERT INTO items (id, body) VALUES (1, '{}');
             INSERT INTO items (id, body) VALUES (2, 'after');",
            "a".repeat(64 * 1024)
        ))
        .await
        .unwrap();
    let m = good.next_named("postgres_changes").await;
    assert_eq!(m.payload["data"]["record"]["id"], 2);
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the change after the attacker's row took {took:?}"
    );
    // And they were evaluated, not skipped: `(a+)+$` matches the row.
    let m = attackers[4].next_named("postgres_changes").await;
    assert_eq!(m.payload["data"]["record"]["id"], 1);
}

//! What values look like in the legacy payload, how the replica identity and
//! TOAST shape `old_record`, schema changes while streaming, commit order and
//! a very large transaction — all against a real PostgreSQL and the binary.

use std::time::Duration;

use realtime_tests::server::{ServerProcess, Stack};
use realtime_tests::ws::PhxClient;
use serde_json::{json, Value};

async fn setup(schema_sql: &str) -> Stack {
    Stack::start(
        schema_sql,
        "CREATE PUBLICATION realtime_test FOR ALL TABLES",
    )
    .await
}

async fn subscribe(server: &ServerProcess, topic: &str) -> PhxClient {
    let mut c = PhxClient::connect(&server.ws_url("1.0.0")).await.unwrap();
    let reply = c.join(topic, json!({})).await;
    assert_eq!(reply.payload["status"], "ok");
    c
}

#[tokio::test]
async fn every_common_type_arrives_in_its_documented_text_form() {
    let env = setup(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
         CREATE TABLE t (
           id int PRIMARY KEY, i2 int2, i8 int8, num numeric(10,2), f4 float4, f8 float8,
           b bool, txt text, vc varchar(10), u uuid, j json, jb jsonb, ia int4[], ta text[],
           ts timestamp, tstz timestamptz, d date, by bytea, m mood, p posint, n text)",
    )
    .await;
    let mut c = subscribe(&env.server, "realtime:public:t").await;
    env.db
        .batch_execute(
            "INSERT INTO t VALUES (1, 2, 9007199254740993, 1.5, 1.5, 2.25, true, 'héllo \"wörld\" 😀',
               'short', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": 1,  \"b\":[1]}', '{\"b\":[1], \"a\":1}',
               '{1,2,3}', '{a,\"b c\",NULL}', '2021-02-16 23:47:47.518844',
               '2021-02-17 05:17:47.518844+05:30', '2021-02-16', '\\x0102ff', 'happy', 5, NULL)",
        )
        .await
        .unwrap();
    let m = c.next_event().await;
    assert_eq!(
        m.payload["record"],
        json!({
            "id": "1", "i2": "2", "i8": "9007199254740993", "num": "1.50", "f4": "1.5", "f8": "2.25",
            "b": "t", "txt": "héllo \"wörld\" 😀", "vc": "short",
            "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "j": "{\"a\": 1,  \"b\":[1]}", "jb": "{\"a\": 1, \"b\": [1]}",
            "ia": "{1,2,3}", "ta": "{a,\"b c\",NULL}",
            "ts": "2021-02-16T23:47:47.518844Z", "tstz": "2021-02-16T23:47:47.518844Z",
            "d": "2021-02-16", "by": "\\x0102ff", "m": "happy", "p": "5", "n": null
        })
    );
    let types: Vec<(String, String, u64)> = m.payload["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["type"].as_str().unwrap().to_string(),
                c["type_modifier"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(&str, &str, u64)> = vec![
        ("id", "int4", 4294967295),
        ("i2", "int2", 4294967295),
        ("i8", "int8", 4294967295),
        ("num", "numeric", (10 << 16 | 2) + 4),
        ("f4", "float4", 4294967295),
        ("f8", "float8", 4294967295),
        ("b", "bool", 4294967295),
        ("txt", "text", 4294967295),
        ("vc", "varchar", 14),
        ("u", "uuid", 4294967295),
        ("j", "json", 4294967295),
        ("jb", "jsonb", 4294967295),
        ("ia", "_int4", 4294967295),
        ("ta", "_text", 4294967295),
        ("ts", "timestamp", 4294967295),
        ("tstz", "timestamptz", 4294967295),
        ("d", "date", 4294967295),
        ("by", "bytea", 4294967295),
        ("m", "mood", 4294967295),
        ("p", "posint", 4294967295),
        ("n", "text", 4294967295),
    ];
    let want: Vec<(String, String, u64)> = want
        .into_iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c))
        .collect();
    assert_eq!(types, want);
    assert_eq!(m.payload["columns"][0]["flags"], json!(["key"]));
}

#[tokio::test]
async fn types_created_after_start_get_their_names_and_a_megabyte_value_arrives_whole() {
    let env = setup("CREATE TABLE early (id int PRIMARY KEY)").await;
    env.db
        .batch_execute(
            "CREATE TYPE color AS ENUM ('red', 'green');
             CREATE TABLE late (id int PRIMARY KEY, c color, cs color[], big text)",
        )
        .await
        .unwrap();
    let mut c = subscribe(&env.server, "realtime:public:late").await;
    // Just under 1 MiB of UTF-8: the default MAX_RECORD_BYTES lets it through whole.
    let big: String = "ü".repeat(512 * 1024 - 16);
    env.db
        .execute(
            "INSERT INTO late VALUES (1, 'green', '{red,green}', $1)",
            &[&big],
        )
        .await
        .unwrap();
    let m = c.next_event().await;
    assert_eq!(m.payload["columns"][1]["type"], "color");
    assert_eq!(m.payload["columns"][2]["type"], "_color");
    assert_eq!(m.payload["record"]["c"], "green");
    assert_eq!(m.payload["record"]["cs"], "{red,green}");
    assert_eq!(
        m.payload["record"]["big"].as_str().unwrap().len(),
        big.len()
    );
    assert!(m.payload["record"]["big"] == json!(big));
}

#[tokio::test]
async fn old_record_follows_the_replica_identity() {
    let env = setup(
        "CREATE TABLE d (id int PRIMARY KEY, name text);
         CREATE TABLE f (id int PRIMARY KEY, name text);
         ALTER TABLE f REPLICA IDENTITY FULL;
         INSERT INTO d VALUES (1, 'a'), (2, 'b');
         INSERT INTO f VALUES (1, 'a'), (2, 'b');",
    )
    .await;
    let mut cd = subscribe(&env.server, "realtime:public:d").await;
    let mut cf = subscribe(&env.server, "realtime:public:f").await;
    for t in ["d", "f"] {
        env.db
            .batch_execute(&format!(
                "UPDATE {t} SET name = 'x' WHERE id = 1;
                 UPDATE {t} SET id = 3 WHERE id = 2;
                 DELETE FROM {t} WHERE id = 1;"
            ))
            .await
            .unwrap();
    }
    let mut got_d = Vec::new();
    for _ in 0..3 {
        let m = cd.next_event().await;
        got_d.push((m.event, m.payload["old_record"].clone()));
    }
    assert_eq!(
        got_d,
        vec![
            ("UPDATE".to_string(), json!({})),
            ("UPDATE".to_string(), json!({"id": "2"})),
            ("DELETE".to_string(), json!({"id": "1"})),
        ],
        "default identity: the key, only when it changed"
    );
    let mut got_f = Vec::new();
    for _ in 0..3 {
        let m = cf.next_event().await;
        got_f.push((m.event, m.payload["old_record"].clone()));
    }
    assert_eq!(
        got_f,
        vec![
            ("UPDATE".to_string(), json!({"id": "1", "name": "a"})),
            ("UPDATE".to_string(), json!({"id": "2", "name": "b"})),
            ("DELETE".to_string(), json!({"id": "1", "name": "x"})),
        ],
        "REPLICA IDENTITY FULL: the whole old row"
    );
}

#[tokio::test]
async fn an_update_that_leaves_a_toasted_value_alone_never_drops_it() {
    let env = setup(
        "CREATE TABLE plain (id int PRIMARY KEY, big text, n int);
         CREATE TABLE full_id (id int PRIMARY KEY, big text, n int);
         ALTER TABLE full_id REPLICA IDENTITY FULL;",
    )
    .await;
    let mut c = subscribe(&env.server, "realtime:public").await;
    // Random text does not compress, so it is stored out of line (TOAST).
    for t in ["plain", "full_id"] {
        env.db
            .batch_execute(&format!(
                "INSERT INTO {t} SELECT 1, string_agg(md5(random()::text), ''), 0
                 FROM generate_series(1, 3000)"
            ))
            .await
            .unwrap();
    }
    for t in ["plain", "full_id"] {
        let m = c.next_event().await;
        assert_eq!(
            (m.event.as_str(), m.payload["table"].as_str()),
            ("INSERT", Some(t))
        );
        assert_eq!(
            m.payload["record"]["big"].as_str().unwrap().len(),
            3000 * 32
        );
    }
    env.db
        .batch_execute(
            "UPDATE plain SET n = 1 WHERE id = 1;
             UPDATE full_id SET n = 1 WHERE id = 1;",
        )
        .await
        .unwrap();
    let big_full: String = env
        .db
        .query_one("SELECT big FROM full_id", &[])
        .await
        .unwrap()
        .get(0);

    let m = c.next_event().await;
    assert_eq!(m.payload["table"], "plain");
    assert_eq!(m.payload["record"]["n"], "1");
    assert_eq!(m.payload["record"]["big"], "unchanged_toast");
    let errors = m.payload["errors"]
        .as_array()
        .expect("errors name the column");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].as_str().unwrap().contains("\"big\""),
        "{errors:?}"
    );

    let m = c.next_event().await;
    assert_eq!(m.payload["table"], "full_id");
    assert_eq!(
        m.payload["record"]["big"],
        json!(big_full),
        "filled from the old row"
    );
    assert_eq!(m.payload["errors"], Value::Null);
}

#[tokio::test]
async fn a_column_added_while_streaming_appears_in_the_next_change() {
    let env = setup("CREATE TABLE items (id int PRIMARY KEY)").await;
    let mut c = subscribe(&env.server, "realtime:public:items").await;
    env.db
        .batch_execute("INSERT INTO items VALUES (1)")
        .await
        .unwrap();
    let m = c.next_event().await;
    assert_eq!(m.payload["record"], json!({"id": "1"}));

    env.db
        .batch_execute(
            "ALTER TABLE items ADD COLUMN label text DEFAULT 'new';
             INSERT INTO items VALUES (2);",
        )
        .await
        .unwrap();
    let m = c.next_event().await;
    assert_eq!(m.payload["record"], json!({"id": "2", "label": "new"}));
    assert_eq!(m.payload["columns"][1]["name"], "label");
}

#[tokio::test]
async fn changes_of_one_transaction_across_tables_arrive_in_commit_order() {
    let env = setup(
        "CREATE TABLE a (id int PRIMARY KEY);
         CREATE TABLE b (id int PRIMARY KEY);",
    )
    .await;
    let mut c = subscribe(&env.server, "realtime:*").await;
    env.db
        .batch_execute(
            "BEGIN;
             INSERT INTO a VALUES (1); INSERT INTO b VALUES (1);
             INSERT INTO a VALUES (2); UPDATE b SET id = 2;
             COMMIT;
             INSERT INTO b VALUES (3);",
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        let m = c.next_event().await;
        seen.push(format!(
            "{} {} {}",
            m.event,
            m.payload["table"].as_str().unwrap(),
            m.payload["record"]["id"].as_str().unwrap()
        ));
    }
    assert_eq!(
        seen,
        [
            "INSERT a 1",
            "INSERT b 1",
            "INSERT a 2",
            "UPDATE b 2",
            "INSERT b 3"
        ]
    );
}

#[tokio::test]
async fn serializers_heartbeat_leave_and_errors() {
    let env = setup("CREATE TABLE items (id int PRIMARY KEY)").await;
    for vsn in ["1.0.0", "2.0.0"] {
        let mut c = PhxClient::connect(&env.server.ws_url(vsn)).await.unwrap();
        let m = c.request("phoenix", "heartbeat", json!({})).await;
        assert_eq!(m.topic, "phoenix");
        assert_eq!(m.payload, json!({"status": "ok", "response": {}}));

        let r = c
            .push("room:lobby", "phx_join", json!({}), Some("j1"))
            .await;
        let m = c.expect_reply(&r).await;
        assert_eq!(
            m.payload,
            json!({"status": "error", "response": {"reason": "unmatched topic"}})
        );

        let r = c
            .push("realtime:public:items", "phx_join", json!({}), Some("j2"))
            .await;
        let m = c.expect_reply(&r).await;
        assert_eq!(m.payload["status"], "ok");
        if vsn == "2.0.0" {
            assert_eq!(m.join_ref, json!("j2"), "v2 replies carry the join_ref");
        }
        // A duplicate join replaces the first: changes arrive once.
        let r = c
            .push("realtime:public:items", "phx_join", json!({}), Some("j3"))
            .await;
        assert_eq!(c.expect_reply(&r).await.payload["status"], "ok");
        env.db
            .batch_execute("INSERT INTO items VALUES (DEFAULT)")
            .await
            .ok();
        env.db
            .batch_execute("INSERT INTO items SELECT coalesce(max(id), 0) + 1 FROM items")
            .await
            .unwrap();
        let m = c.next_event().await;
        assert_eq!(m.event, "INSERT");
        c.expect_silence(Duration::from_millis(300)).await;

        let r = c
            .push("realtime:public:items", "phx_leave", json!({}), Some("j3"))
            .await;
        let m = c.expect_reply(&r).await;
        assert_eq!(m.payload["status"], "ok");
        let m = c.next().await.unwrap();
        assert_eq!(
            (m.topic.as_str(), m.event.as_str()),
            ("realtime:public:items", "phx_close")
        );
        assert_eq!(m.payload, json!({}));

        // After leaving, nothing more arrives.
        env.db
            .batch_execute("INSERT INTO items SELECT max(id) + 1 FROM items")
            .await
            .unwrap();
        c.expect_silence(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_million_row_transaction_reaches_a_subscriber_completely() {
    let env = setup("CREATE TABLE bulk (id int PRIMARY KEY, v text)").await;
    let mut c = subscribe(&env.server, "realtime:public:bulk").await;
    const ROWS: i64 = 1_000_000;
    let db = env.db;
    let insert = tokio::spawn(async move {
        db.batch_execute(&format!(
            "INSERT INTO bulk SELECT g, 'row ' || g FROM generate_series(1, {ROWS}) g"
        ))
        .await
        .unwrap();
        db
    });
    // Each frame is checked for its row id without parsing the whole JSON,
    // so the client keeps up like a real one would.
    // A client that sends nothing for 60 s is closed, so this one sends
    // heartbeats while it reads, like phoenix.js does.
    let mut last_heartbeat = std::time::Instant::now();
    let mut next_id = 1i64;
    while next_id <= ROWS {
        if last_heartbeat.elapsed() > Duration::from_secs(20) {
            c.push("phoenix", "heartbeat", json!({}), None).await;
            last_heartbeat = std::time::Instant::now();
        }
        let text = c
            .next_text(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("after {} rows: {e:?}", next_id - 1));
        if text.contains("\"phx_reply\"") {
            continue;
        }
        let want = format!("\"record\":{{\"id\":\"{next_id}\",\"v\":\"row {next_id}\"}}");
        assert!(
            text.contains(&want) && text.contains("\"event\":\"INSERT\""),
            "row {next_id} in order, none missing: got {text}"
        );
        next_id += 1;
    }
    insert.await.unwrap();
}

#[tokio::test]
async fn a_row_over_max_record_bytes_arrives_without_its_large_values() {
    let (pg, db) = realtime_tests::TempPostgres::with_schema(
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
         ALTER TABLE docs REPLICA IDENTITY FULL;
         CREATE PUBLICATION realtime_test FOR ALL TABLES;",
    )
    .await
    .expect("PostgreSQL with the schema");
    let mut env = ServerProcess::env_for(&pg, &["realtime_test"]);
    env.insert("MAX_RECORD_BYTES".into(), "4096".into());
    let server = tokio::task::spawn_blocking(move || ServerProcess::start(env))
        .await
        .unwrap();
    let mut c = subscribe(&server, "realtime:public:docs").await;
    db.batch_execute(
        "INSERT INTO docs VALUES (1, 'small', repeat('b', 5000));
         INSERT INTO docs VALUES (2, 'small', repeat('b', 100));
         UPDATE docs SET title = 'renamed' WHERE id = 1;",
    )
    .await
    .unwrap();

    let big = c.next_event().await.payload;
    assert_eq!(big["record"], json!({"id": "1", "title": "small"}));
    let errors = big["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = errors[0].as_str().unwrap();
    assert!(e.starts_with("Error 413: Payload Too Large"), "{e}");
    assert!(
        e.contains("MAX_RECORD_BYTES=4096") && e.contains("body"),
        "{e}"
    );

    let small = c.next_event().await.payload;
    assert_eq!(small["record"]["body"], "b".repeat(100));
    assert_eq!(small["errors"], Value::Null);

    // The old row counts too: both images lose the large value.
    let update = c.next_event().await.payload;
    assert_eq!(update["record"], json!({"id": "1", "title": "renamed"}));
    assert_eq!(update["old_record"], json!({"id": "1", "title": "small"}));
}

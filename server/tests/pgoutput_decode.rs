//! Decodes what a real PostgreSQL's `pgoutput` writes (protocol version 1),
//! read through `pg_logical_slot_get_binary_changes`, and checks every value.

use bytes::Bytes;
use realtime_harness::TempPostgres;
use realtime_server::replication::pgoutput::{
    decode, Message, OldTuple, OldTupleKind, Relation, ReplicaIdentity, Tuple, TupleValue,
    TRUNCATE_CASCADE, TRUNCATE_RESTART_IDENTITY,
};

const OPTIONS: &str = "'proto_version', '1', 'publication_names', 'pub', 'messages', 'true'";

fn t(s: &str) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn tuple(values: Vec<TupleValue>) -> Tuple {
    Tuple(values)
}

async fn changes(client: &tokio_postgres::Client, sql: &str) -> Vec<Message> {
    let rows = client.query(sql, &[]).await.expect("read slot changes");
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            let data: Vec<u8> = row.get(0);
            decode(Bytes::from(data.clone()))
                .unwrap_or_else(|e| panic!("row {i} ({data:02x?}) did not decode: {e}"))
        })
        .collect()
}

#[tokio::test]
async fn decodes_every_change_a_real_server_sends() {
    let (_pg, client) = TempPostgres::with_schema(
        "CREATE TYPE mood AS ENUM ('happy', 'sad');
         CREATE TABLE items (id int PRIMARY KEY, name varchar(64), big text);
         ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
         CREATE TABLE full_items (id int PRIMARY KEY, name text, feeling mood);
         ALTER TABLE full_items REPLICA IDENTITY FULL;
         CREATE PUBLICATION pub FOR TABLE items, full_items;
         SELECT pg_replication_origin_create('node_a');",
    )
    .await
    .expect("PostgreSQL with the schema");
    client
        .batch_execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
        .await
        .expect("slot");
    let oid = |expr: &'static str| {
        let client = &client;
        async move {
            let row = client
                .query_one(&format!("SELECT {expr}::oid"), &[])
                .await
                .expect("oid");
            row.get::<_, u32>(0)
        }
    };
    let items = oid("'items'::regclass").await;
    let full_items = oid("'full_items'::regclass").await;
    let mood = oid("'mood'::regtype").await;

    // One transaction per statement.
    for sql in [
        "INSERT INTO items (id, name) VALUES (1, 'one'), (2, 'two')",
        "INSERT INTO full_items VALUES (1, 'a', 'happy')",
        "UPDATE items SET name = 'uno' WHERE id = 1",
        "UPDATE items SET id = 20 WHERE id = 2",
        "UPDATE full_items SET name = 'b', feeling = 'sad' WHERE id = 1",
        "DELETE FROM items WHERE id = 20",
        "DELETE FROM full_items WHERE id = 1",
        // 3200 * 32 hex digits = 100 kB, stored out of line (STORAGE EXTERNAL:
        // no compression).
        "INSERT INTO items VALUES (3, 'toast', \
         (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 3200)))",
    ] {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let big: String = client
        .query_one("SELECT big FROM items WHERE id = 3", &[])
        .await
        .expect("read big")
        .get(0);
    assert_eq!(big.len(), 102_400);
    let toasted: i32 = client
        .query_one("SELECT pg_column_size(big) FROM items WHERE id = 3", &[])
        .await
        .expect("column size")
        .get(0);
    assert!(
        toasted >= 102_400,
        "big value was compressed to {toasted} bytes"
    );
    for sql in [
        "UPDATE items SET name = 'toast2' WHERE id = 3",
        "SELECT pg_logical_emit_message(true, 'p', 'hi')",
        "SELECT pg_logical_emit_message(false, 'q', 'bye')",
        "TRUNCATE items, full_items RESTART IDENTITY CASCADE",
        "ALTER TABLE items ADD COLUMN extra int",
        "INSERT INTO items (id, name, extra) VALUES (4, 'four', 44)",
        // A transaction replayed through a replication origin.
        "SELECT pg_replication_origin_session_setup('node_a')",
        "BEGIN",
        "SELECT pg_replication_origin_xact_setup('0/ABCDEF', now())",
        "INSERT INTO items (id, name) VALUES (5, 'from origin')",
        "COMMIT",
        "SELECT pg_replication_origin_session_reset()",
    ] {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    // First a peek in binary format: the same changes, values in send format.
    let binary = changes(
        &client,
        &format!(
            "SELECT data FROM pg_logical_slot_peek_binary_changes('s', NULL, NULL, {OPTIONS}, \
             'binary', 'true')"
        ),
    )
    .await;
    let first_insert = binary
        .iter()
        .find(|m| matches!(m, Message::Insert { .. }))
        .expect("an insert");
    assert_eq!(
        first_insert,
        &Message::Insert {
            relation_id: items,
            new: tuple(vec![
                TupleValue::Binary(Bytes::from_static(&[0, 0, 0, 1])),
                TupleValue::Binary(Bytes::from_static(b"one")),
                TupleValue::Null,
            ]),
        }
    );

    let messages = changes(
        &client,
        &format!("SELECT data FROM pg_logical_slot_get_binary_changes('s', NULL, NULL, {OPTIONS})"),
    )
    .await;
    assert_eq!(
        messages.len(),
        binary.len(),
        "text and binary runs differ in length"
    );

    // Transactions: Begin ... Commit with matching LSNs and times; only the
    // non-transactional logical message comes outside one.
    let mut open: Option<(u64, i64)> = None;
    let mut transactions = 0;
    for m in &messages {
        match m {
            Message::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                assert!(open.is_none(), "nested Begin: {m:?}");
                assert!(*final_lsn > 0 && *commit_time > 0 && *xid > 0, "{m:?}");
                open = Some((*final_lsn, *commit_time));
            }
            Message::Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time,
            } => {
                let (final_lsn, begin_time) = open.take().expect("Commit without Begin");
                assert_eq!(*flags, 0);
                assert_eq!(*commit_lsn, final_lsn);
                assert_eq!(*commit_time, begin_time);
                assert!(end_lsn > commit_lsn);
                transactions += 1;
            }
            Message::Message {
                transactional: false,
                ..
            } => assert!(
                open.is_none(),
                "non-transactional message inside a transaction"
            ),
            _ => assert!(open.is_some(), "{m:?} outside a transaction"),
        }
    }
    assert!(open.is_none(), "last transaction not committed");
    // 13 transactions change published tables or emit a transactional message;
    // the ALTER TABLE and the origin setup calls send nothing.
    assert_eq!(transactions, 13);

    // Relations and types, in the order they came.
    let relations: Vec<&Relation> = messages
        .iter()
        .filter_map(|m| match m {
            Message::Relation(r) => Some(r),
            _ => None,
        })
        .collect();
    let items_rel = relations
        .iter()
        .find(|r| r.id == items)
        .expect("items relation");
    assert_eq!(
        (items_rel.namespace.as_str(), items_rel.name.as_str()),
        ("public", "items")
    );
    assert_eq!(items_rel.replica_identity, ReplicaIdentity::Default);
    let cols: Vec<(&str, bool, u32, i32)> = items_rel
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.is_key, c.type_oid, c.type_modifier))
        .collect();
    assert_eq!(
        cols,
        [
            ("id", true, 23, -1),
            ("name", false, 1043, 64 + 4),
            ("big", false, 25, -1)
        ]
    );
    let full_rel = relations
        .iter()
        .find(|r| r.id == full_items)
        .expect("full_items relation");
    assert_eq!(full_rel.name, "full_items");
    assert_eq!(full_rel.replica_identity, ReplicaIdentity::Full);
    let cols: Vec<(&str, bool, u32)> = full_rel
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.is_key, c.type_oid))
        .collect();
    assert_eq!(
        cols,
        [
            ("id", true, 23),
            ("name", true, 25),
            ("feeling", true, mood)
        ]
    );
    let type_at = messages
        .iter()
        .position(|m| {
            *m == Message::Type {
                oid: mood,
                namespace: "public".into(),
                name: "mood".into(),
            }
        })
        .expect("a Type message for mood");
    let full_rel_at = messages
        .iter()
        .position(|m| matches!(m, Message::Relation(r) if r.id == full_items))
        .expect("full_items relation");
    assert!(
        type_at < full_rel_at,
        "Type must precede the Relation using it"
    );
    let last_items = relations
        .iter()
        .rev()
        .find(|r| r.id == items)
        .expect("items relation");
    let names: Vec<&str> = last_items.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "name", "big", "extra"]);
    assert_eq!(last_items.columns[3].type_oid, 23);
    assert!(!last_items.columns[3].is_key);

    // The changes themselves, in order; logical message LSNs checked and blanked.
    let mut changes: Vec<Message> = messages
        .iter()
        .filter(|m| {
            !matches!(
                m,
                Message::Begin { .. }
                    | Message::Commit { .. }
                    | Message::Relation(_)
                    | Message::Type { .. }
            )
        })
        .cloned()
        .collect();
    for m in &mut changes {
        match m {
            Message::Message { lsn, .. } => {
                assert!(*lsn > 0);
                *lsn = 0;
            }
            Message::Truncate { relation_ids, .. } => relation_ids.sort_unstable(),
            _ => {}
        }
    }
    let mut truncated = vec![items, full_items];
    truncated.sort_unstable();
    let key = |values| {
        Some(OldTuple {
            kind: OldTupleKind::Key,
            tuple: tuple(values),
        })
    };
    let full = |values| OldTuple {
        kind: OldTupleKind::Full,
        tuple: tuple(values),
    };
    use TupleValue::{Null, UnchangedToast};
    let expected = vec![
        Message::Insert {
            relation_id: items,
            new: tuple(vec![t("1"), t("one"), Null]),
        },
        Message::Insert {
            relation_id: items,
            new: tuple(vec![t("2"), t("two"), Null]),
        },
        Message::Insert {
            relation_id: full_items,
            new: tuple(vec![t("1"), t("a"), t("happy")]),
        },
        Message::Update {
            relation_id: items,
            old: None,
            new: tuple(vec![t("1"), t("uno"), Null]),
        },
        Message::Update {
            relation_id: items,
            old: key(vec![t("2"), Null, Null]),
            new: tuple(vec![t("20"), t("two"), Null]),
        },
        Message::Update {
            relation_id: full_items,
            old: Some(full(vec![t("1"), t("a"), t("happy")])),
            new: tuple(vec![t("1"), t("b"), t("sad")]),
        },
        Message::Delete {
            relation_id: items,
            old: key(vec![t("20"), Null, Null]).unwrap(),
        },
        Message::Delete {
            relation_id: full_items,
            old: full(vec![t("1"), t("b"), t("sad")]),
        },
        Message::Insert {
            relation_id: items,
            new: tuple(vec![t("3"), t("toast"), t(&big)]),
        },
        Message::Update {
            relation_id: items,
            old: None,
            new: tuple(vec![t("3"), t("toast2"), UnchangedToast]),
        },
        Message::Message {
            transactional: true,
            lsn: 0,
            prefix: "p".into(),
            content: Bytes::from_static(b"hi"),
        },
        Message::Message {
            transactional: false,
            lsn: 0,
            prefix: "q".into(),
            content: Bytes::from_static(b"bye"),
        },
        Message::Truncate {
            options: TRUNCATE_CASCADE | TRUNCATE_RESTART_IDENTITY,
            relation_ids: truncated,
        },
        Message::Insert {
            relation_id: items,
            new: tuple(vec![t("4"), t("four"), Null, t("44")]),
        },
        Message::Origin {
            commit_lsn: 0xABCDEF,
            name: "node_a".into(),
        },
        Message::Insert {
            relation_id: items,
            new: tuple(vec![t("5"), t("from origin"), Null, Null]),
        },
    ];
    assert_eq!(changes.len(), expected.len(), "changes: {changes:#?}");
    for (i, (got, want)) in changes.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "change {i}");
    }

    // The Origin message comes right after its transaction's Begin.
    let origin_at = messages
        .iter()
        .position(|m| matches!(m, Message::Origin { .. }))
        .expect("origin");
    assert!(matches!(messages[origin_at - 1], Message::Begin { .. }));
}

//! The throwaway PostgreSQL harness gives a cluster ready for logical
//! replication, isolated from every other test, and leaves nothing behind.

use std::time::Duration;

use realtime_harness::net::port_is_free;
use realtime_harness::TempPostgres;

#[tokio::test]
async fn cluster_has_logical_replication() {
    let pg = TempPostgres::start().expect("start PostgreSQL");
    let client = pg.connect().await.expect("connect");

    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(wal_level, "logical");

    let slots: String = client
        .query_one("SHOW max_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        slots.parse::<u32>().unwrap() >= 10,
        "max_replication_slots = {slots}"
    );
}

#[tokio::test]
async fn pgoutput_slot_sees_an_insert() {
    let pg = TempPostgres::start().expect("start PostgreSQL");
    let client = pg.connect().await.expect("connect");
    // One statement per round trip: a slot cannot be created in a transaction
    // that has written, and a multi-statement string is one transaction.
    for sql in [
        "CREATE TABLE items (id int PRIMARY KEY, name text)",
        "CREATE PUBLICATION pub FOR TABLE items",
        "SELECT pg_create_logical_replication_slot('harness_slot', 'pgoutput')",
        "INSERT INTO items VALUES (1, 'first')",
    ] {
        client.batch_execute(sql).await.expect(sql);
    }

    let rows = client
        .query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes(
                 'harness_slot', NULL, NULL, 'proto_version', '1', 'publication_names', 'pub')",
            &[],
        )
        .await
        .expect("peek changes");
    let kinds: Vec<u8> = rows.iter().map(|r| r.get::<_, Vec<u8>>(0)[0]).collect();
    // Begin, Relation, Insert, Commit.
    assert_eq!(
        kinds,
        vec![b'B', b'R', b'I', b'C'],
        "pgoutput message kinds"
    );
    let insert = rows[2].get::<_, Vec<u8>>(0);
    let text = String::from_utf8_lossy(&insert);
    assert!(text.contains("first"), "insert carries the row: {text:?}");
}

#[tokio::test]
async fn two_clusters_run_side_by_side_and_drop_frees_the_port() {
    let (a, b) = tokio::task::spawn_blocking(|| {
        (
            TempPostgres::start().expect("start a"),
            TempPostgres::start().expect("start b"),
        )
    })
    .await
    .unwrap();
    assert_ne!(a.port(), b.port());

    let ca = a.connect().await.expect("connect a");
    let cb = b.connect().await.expect("connect b");
    ca.batch_execute("CREATE TABLE only_in_a (x int)")
        .await
        .unwrap();
    let in_b: i64 = cb
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_b, 0, "the clusters are separate");

    let port = a.port();
    let dir = a.dir().to_path_buf();
    drop(ca);
    drop(a);
    assert!(
        port_is_free(port, Duration::from_secs(10)),
        "port {port} still taken after drop"
    );
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
    // The other cluster is untouched.
    let one: i32 = cb.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn a_stopped_cluster_restarts_with_its_data() {
    let pg = TempPostgres::start().expect("start PostgreSQL");
    {
        let c = pg.connect().await.unwrap();
        c.batch_execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
            .await
            .unwrap();
    }
    pg.stop("immediate").expect("stop");
    pg.restart().expect("restart");
    let c = pg.connect().await.unwrap();
    let x: i32 = c.query_one("SELECT x FROM kept", &[]).await.unwrap().get(0);
    assert_eq!(x, 7);
}

#[tokio::test]
async fn with_schema_applies_it() {
    let (_pg, db) = TempPostgres::with_schema(
        "CREATE TABLE items (id int PRIMARY KEY);
         INSERT INTO items VALUES (1), (2);",
    )
    .await
    .expect("PostgreSQL with the schema");
    let n: i64 = db
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

#[tokio::test]
async fn client_programs_reach_the_cluster_as_this_user() {
    let (pg, _db) = TempPostgres::with_schema("CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
        .await
        .expect("PostgreSQL with the schema");
    let out = pg
        .client_command("psql")
        .args(["-At", "-c", "SELECT x FROM t"])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
}

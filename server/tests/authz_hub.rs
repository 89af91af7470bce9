//! The hub with the authorization service over a real PostgreSQL: each
//! group receives exactly the changes its policies let it see, decided on
//! each change's own row (a row given away does not reveal what it held
//! before), owner policies by index, other policies by checks in order.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use realtime_harness::TempPostgres;
use realtime_server::authz::authorizer::{Authorizer, AuthzSettings};
use realtime_server::change::{Cell, Change, ChangeKind, ColumnInfo, Row, TableInfo};
use realtime_server::config::{DbConfig, DbSsl, Secret};
use realtime_server::hub::{Binding, Hub, Outbound, Registration, Subscriber};
use realtime_server::phoenix::frame::Vsn;
use realtime_server::replication::catalog::TypeKind;
use realtime_server::replication::pgoutput::ReplicaIdentity;
use serde_json::{json, Value};

const ALICE: &str = "11111111-1111-1111-1111-111111111111";
const BOB: &str = "22222222-2222-2222-2222-222222222222";

const SCHEMA: &str = "
    CREATE ROLE authenticated NOLOGIN;
    CREATE TABLE notes (id bigint PRIMARY KEY, owner uuid, body text);
    ALTER TABLE notes REPLICA IDENTITY FULL;
    ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
    CREATE POLICY own ON notes FOR SELECT TO authenticated
      USING (owner = (current_setting('request.jwt.claims', true)::json->>'sub')::uuid);
    GRANT SELECT ON notes TO authenticated;
    -- The same rule, written so that it cannot be reduced: checked per row.
    CREATE TABLE docs (id bigint PRIMARY KEY, owner uuid, body text);
    ALTER TABLE docs REPLICA IDENTITY FULL;
    ALTER TABLE docs ENABLE ROW LEVEL SECURITY;
    CREATE POLICY own ON docs FOR SELECT TO authenticated
      USING (owner::text || '' = current_setting('request.jwt.claims', true)::json->>'sub'
             AND 10 / length(body) >= 0);
    GRANT SELECT ON docs TO authenticated;
";

struct Fixture {
    _pg: TempPostgres,
    client: tokio_postgres::Client,
    authz: Arc<Authorizer>,
    hub: Arc<Hub>,
}

async fn fixture() -> Fixture {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .expect("start PostgreSQL");
    let client = pg.connect().await.expect("connect");
    client.batch_execute(SCHEMA).await.expect("schema");
    let authz = Authorizer::new(
        DbConfig {
            host: pg.host().to_string(),
            port: pg.port(),
            name: pg.dbname().to_string(),
            user: pg.user().to_string(),
            password: Secret::new(""),
            ssl: DbSsl::Disable,
        },
        AuthzSettings {
            default_role: "anon".into(),
            check_timeout: Duration::from_secs(5),
            refresh_interval: Duration::from_secs(2),
            pool_size: 2,
        },
    );
    let hub = Arc::new(Hub::new(1024).with_authorizer(Some(authz.clone())));
    Fixture {
        _pg: pg,
        client,
        authz,
        hub,
    }
}

impl Fixture {
    async fn table(&self, name: &str) -> Arc<TableInfo> {
        let oid: u32 = self
            .client
            .query_one("SELECT $1::text::regclass::oid", &[&name])
            .await
            .unwrap()
            .get(0);
        let col = |n: &str, key: bool| ColumnInfo {
            name: n.into(),
            type_name: if key { "int8" } else { "text" }.into(),
            kind: if key {
                TypeKind::Integer
            } else {
                TypeKind::Text
            },
            type_oid: if key { 20 } else { 25 },
            type_modifier: -1,
            is_key: key,
        };
        Arc::new(TableInfo::new(
            oid,
            "public".into(),
            name.into(),
            ReplicaIdentity::Full,
            vec![col("id", true), col("owner", false), col("body", false)],
        ))
    }

    /// A socket subscribed to `table` as `sub`.
    async fn subscribe(&self, table: &TableInfo, sub: &str) -> Registration {
        let reg = self.hub.register();
        let claims = json!({"role": "authenticated", "sub": sub});
        let group = self.authz.group(claims.as_object().unwrap(), None);
        let access = self.authz.access(table.id, &group).await.unwrap();
        self.hub.add_bindings(vec![Binding {
            socket: reg.id,
            topic: "realtime:notes".into(),
            vsn: Vsn::V2,
            id: 1,
            schema: "public".into(),
            table: Some(table.name.clone()),
            event: None,
            filter: None,
            select: None,
            subscriber: Some(Subscriber {
                group,
                table: Some(table.id),
                access: Some(access),
            }),
        }]);
        reg
    }

    /// Waits until no change waits in a lane.
    async fn settle(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.authz.lanes.inflight.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "lanes did not drain"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn row(id: i64, owner: &str, body: &str) -> Row {
    let t = |s: &str| Cell::Text(Bytes::copy_from_slice(s.as_bytes()));
    vec![t(&id.to_string()), t(owner), t(body)]
}

fn change(table: &Arc<TableInfo>, kind: ChangeKind, new: Option<Row>, old: Option<Row>) -> Change {
    Change {
        kind,
        table: table.clone(),
        commit_timestamp: "2024-01-01T00:00:00.000000Z".into(),
        record: new,
        old_record: old,
        errors: vec![],
        unlimited: None,
    }
}

/// The `data` of every postgres_changes frame queued for `reg`.
fn received(reg: &mut Registration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Ok(item) = reg.rx.try_recv() {
        if let Outbound::Frame(f) = item {
            let v: Value = serde_json::from_str(f.as_str()).unwrap();
            out.push(v[4]["data"].clone());
        }
    }
    out
}

async fn each_user_sees_their_own_rows_and_never_a_previous_owners_values(table_name: &str) {
    let f = fixture().await;
    let table = f.table(table_name).await;
    let mut alice = f.subscribe(&table, ALICE).await;
    let mut bob = f.subscribe(&table, BOB).await;
    let t = &table;
    for c in [
        change(t, ChangeKind::Insert, Some(row(1, ALICE, "a1")), None),
        change(t, ChangeKind::Insert, Some(row(2, BOB, "b2")), None),
        // Bob writes a secret into his row, then gives the row to Alice.
        change(
            t,
            ChangeKind::Update,
            Some(row(2, BOB, "bob's secret")),
            Some(row(2, BOB, "b2")),
        ),
        change(
            t,
            ChangeKind::Update,
            Some(row(2, ALICE, "now alice's")),
            Some(row(2, BOB, "bob's secret")),
        ),
        change(t, ChangeKind::Delete, None, Some(row(1, ALICE, "a1"))),
        change(
            t,
            ChangeKind::Delete,
            None,
            Some(row(2, ALICE, "now alice's")),
        ),
    ] {
        f.hub.dispatch(&c);
    }
    f.settle().await;
    let a = received(&mut alice);
    let b = received(&mut bob);
    let summary = |v: &Vec<Value>| -> Vec<(String, Value, Value)> {
        v.iter()
            .map(|d| {
                (
                    d["type"].as_str().unwrap().to_string(),
                    d["record"]["body"].clone(),
                    d["old_record"]["body"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(
        summary(&a),
        vec![
            ("INSERT".into(), json!("a1"), Value::Null),
            // The row given to Alice: its new values, not the old ones.
            ("UPDATE".into(), json!("now alice's"), Value::Null),
            ("DELETE".into(), Value::Null, json!("a1")),
            ("DELETE".into(), Value::Null, json!("now alice's")),
        ],
        "{table_name}: alice got {a:#?}"
    );
    assert_eq!(a[1]["old_record"], json!({}), "{table_name}");
    assert!(
        !serde_json::to_string(&a).unwrap().contains("secret"),
        "{table_name}: alice never sees bob's secret: {a:#?}"
    );
    assert_eq!(
        summary(&b),
        vec![
            ("INSERT".into(), json!("b2"), Value::Null),
            ("UPDATE".into(), json!("bob's secret"), json!("b2")),
        ],
        "{table_name}: bob got {b:#?}"
    );
}

#[tokio::test]
async fn owner_policy_by_index() {
    each_user_sees_their_own_rows_and_never_a_previous_owners_values("notes").await;
}

#[tokio::test]
async fn owner_policy_checked_per_row() {
    each_user_sees_their_own_rows_and_never_a_previous_owners_values("docs").await;
}

#[tokio::test]
async fn checked_and_unchecked_subscribers_of_a_table_keep_commit_order() {
    let f = fixture().await;
    let table = f.table("docs").await;
    let mut alice = f.subscribe(&table, ALICE).await;
    // A body of length 0 divides by zero: that change fails its check and
    // is withheld; the changes after it still arrive, in order.
    for (i, body) in ["one", "two", "", "four", "five"].iter().enumerate() {
        f.hub.dispatch(&change(
            &table,
            ChangeKind::Insert,
            Some(row(i as i64 + 1, ALICE, body)),
            None,
        ));
    }
    f.settle().await;
    let ids: Vec<Value> = received(&mut alice)
        .iter()
        .map(|d| d["record"]["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(1), json!(2), json!(4), json!(5)]);
    assert_eq!(
        f.authz
            .lanes
            .stats
            .errors
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(f.hub.last_seq() >= 5);
}

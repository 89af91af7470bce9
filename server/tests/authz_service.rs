//! The authorization service against a real PostgreSQL: the shipped setup
//! SQL, private channels' rights from `realtime.messages` policies, the
//! check lanes (order, a failing policy, a slow one), and catalog changes
//! taking effect.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use realtime_harness::TempPostgres;
use realtime_server::authz::authorizer::{Authorizer, AuthzSettings, ChannelError, ChannelRights};
use realtime_server::authz::lanes::{GroupCheck, Item};
use realtime_server::authz::plan::{Access, Command};
use realtime_server::authz::setup;
use realtime_server::config::{DbConfig, DbSsl, Secret};
use serde_json::{json, Map, Value};

const ALICE: &str = "11111111-1111-1111-1111-111111111111";
const BOB: &str = "22222222-2222-2222-2222-222222222222";

struct Fixture {
    _pg: TempPostgres,
    authz: Arc<Authorizer>,
    client: tokio_postgres::Client,
}

async fn fixture(timeout: Duration) -> Fixture {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .expect("start PostgreSQL");
    let client = pg.connect().await.expect("connect");
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
            check_timeout: timeout,
            refresh_interval: Duration::from_millis(200),
            pool_size: 3,
        },
    );
    Fixture {
        _pg: pg,
        authz,
        client,
    }
}

fn claims(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("claims must be an object"),
    }
}

#[tokio::test]
async fn the_setup_is_idempotent_and_private_channels_follow_realtime_messages_policies() {
    let f = fixture(Duration::from_secs(5)).await;
    let alice = claims(json!({"role": "authenticated", "sub": ALICE}));
    let group = f.authz.group(&alice, Some("room-1"));
    assert_eq!(
        f.authz.channel_rights(&group, Command::Select).await,
        Err(ChannelError::NotSetUp)
    );
    setup::apply(&f.client, "postgres").await.expect("setup");
    setup::apply(&f.client, "postgres")
        .await
        .expect("setup again");
    // RLS on realtime.messages and no policy: nobody reads or writes.
    assert_eq!(
        f.authz.channel_rights(&group, Command::Select).await,
        Ok(ChannelRights::default())
    );
    // Supabase's documented policies: members of a room read broadcasts and
    // presence; only the room's owner may send broadcasts.
    f.client
        .batch_execute(&format!(
            "CREATE TABLE public.rooms (topic text, user_id uuid, owner bool);
             GRANT SELECT ON public.rooms TO authenticated;
             INSERT INTO public.rooms VALUES ('room-1', '{ALICE}', true), ('room-1', '{BOB}', false);
             CREATE POLICY members_read ON realtime.messages FOR SELECT TO authenticated
               USING (EXISTS (SELECT FROM public.rooms r WHERE r.user_id = (select auth.uid())
                      AND r.topic = (select realtime.topic())));
             CREATE POLICY owner_sends ON realtime.messages FOR INSERT TO authenticated
               WITH CHECK (realtime.messages.extension = 'broadcast' AND EXISTS (SELECT FROM public.rooms r
                 WHERE r.user_id = (select auth.uid()) AND r.topic = realtime.topic() AND r.owner));
             CREATE POLICY anyone_tracks ON realtime.messages FOR INSERT TO authenticated
               WITH CHECK (realtime.messages.extension = 'presence');"
        ))
        .await
        .unwrap();
    f.authz.refresh().await;
    let both = ChannelRights {
        broadcast: true,
        presence: true,
    };
    let presence_only = ChannelRights {
        broadcast: false,
        presence: true,
    };
    assert_eq!(
        f.authz.channel_rights(&group, Command::Select).await,
        Ok(both)
    );
    assert_eq!(
        f.authz.channel_rights(&group, Command::Insert).await,
        Ok(both)
    );
    let bob = f.authz.group(
        &claims(json!({"role": "authenticated", "sub": BOB})),
        Some("room-1"),
    );
    assert_eq!(
        f.authz.channel_rights(&bob, Command::Select).await,
        Ok(both)
    );
    assert_eq!(
        f.authz.channel_rights(&bob, Command::Insert).await,
        Ok(presence_only)
    );
    // Another room, and anon: nothing to read.
    let elsewhere = f.authz.group(&alice, Some("room-2"));
    assert_eq!(
        f.authz.channel_rights(&elsewhere, Command::Select).await,
        Ok(ChannelRights::default())
    );
    let anon = f
        .authz
        .group(&claims(json!({"role": "anon"})), Some("room-1"));
    assert_eq!(
        f.authz.channel_rights(&anon, Command::Select).await,
        Ok(ChannelRights::default())
    );
    // service_role bypasses row level security.
    let service = f
        .authz
        .group(&claims(json!({"role": "service_role"})), Some("room-1"));
    assert_eq!(
        f.authz.channel_rights(&service, Command::Insert).await,
        Ok(both)
    );
}

#[tokio::test]
async fn equal_claims_are_one_group_and_a_missing_role_is_the_default_role() {
    let f = fixture(Duration::from_secs(5)).await;
    let a = f
        .authz
        .group(&claims(json!({"sub": "x", "role": "authenticated"})), None);
    let b = f
        .authz
        .group(&claims(json!({"role": "authenticated", "sub": "x"})), None);
    let c = f
        .authz
        .group(&claims(json!({"role": "authenticated", "sub": "y"})), None);
    let d = f.authz.group(&claims(json!({"sub": "x"})), None);
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(d.principal.role, "anon");
    assert_eq!(f.authz.group_count(), 3);
    drop((a, b, c, d));
    assert_eq!(f.authz.group_count(), 0);
}

/// The lanes deliver each table's changes in order, withhold from one group
/// only what its failing policy could not decide, and time out slow checks.
#[tokio::test]
async fn lanes_keep_order_and_isolate_a_failing_or_slow_policy() {
    let f = fixture(Duration::from_millis(700)).await;
    f.client
        .batch_execute(
            "CREATE ROLE authenticated NOLOGIN;
             CREATE TABLE items (id bigint PRIMARY KEY, owner text, d int);
             ALTER TABLE items ENABLE ROW LEVEL SECURITY;
             CREATE POLICY mine ON items FOR SELECT
               USING (owner = current_setting('request.jwt.claims', true)::json->>'sub' AND 10 / d > 0
                      AND CASE WHEN d = 7 AND current_setting('request.jwt.claims', true)::json->>'sub' = 'alice'
                          THEN pg_sleep(2) IS NOT NULL ELSE true END);
             GRANT SELECT ON items TO authenticated;",
        )
        .await
        .unwrap();
    let oid: u32 = f
        .client
        .query_one("SELECT 'items'::regclass::oid", &[])
        .await
        .unwrap()
        .get(0);
    let alice = f.authz.group(
        &claims(json!({"role": "authenticated", "sub": "alice"})),
        None,
    );
    let bob = f.authz.group(
        &claims(json!({"role": "authenticated", "sub": "bob"})),
        None,
    );
    let access = f.authz.access(oid, &alice).await.unwrap();
    assert_eq!(access.access, Access::Check);
    let plan = access.plan.unwrap();

    type Seen = Vec<(u64, Vec<bool>)>;
    let delivered: Arc<Mutex<Seen>> = Arc::default();
    let submit = |seq: u64, rows: Vec<Value>| {
        let checks = [&alice, &bob]
            .into_iter()
            .map(|g| GroupCheck {
                principal: g.principal.clone(),
                plan: plan.clone(),
                images: rows.iter().map(|r| r.to_string()).collect(),
            })
            .collect();
        let delivered = delivered.clone();
        f.authz.lanes.submit(
            oid,
            Item {
                seq,
                checks,
                deliver: Box::new(move |results| {
                    // One image per check: [alice, bob].
                    let seen = results.iter().map(|r| r[0]).collect();
                    delivered.lock().unwrap().push((seq, seen));
                }),
            },
        );
    };
    // 1: alice's. 2: divides by zero (withheld from both, others go on).
    // 3: bob's. 4: sleeps past the timeout, in alice's group only: the
    // changes checked with it (up to a batch) are withheld from alice's
    // group; bob's group is not held up.
    submit(1, vec![json!({"id": 1, "owner": "alice", "d": 1})]);
    submit(2, vec![json!({"id": 2, "owner": "alice", "d": 0})]);
    submit(3, vec![json!({"id": 3, "owner": "bob", "d": 1})]);
    assert!(f.authz.lanes.busy(oid));
    let inflight = f.authz.lanes.inflight.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !inflight.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        *delivered.lock().unwrap(),
        vec![
            (1, vec![true, false]),
            (2, vec![false, false]),
            (3, vec![false, true])
        ]
    );
    let stats = &f.authz.lanes.stats;
    // Change 2 failed for both groups (PostgreSQL evaluated the division for
    // bob's too, as it would in bob's own SELECT), each retried alone.
    assert_eq!(stats.errors.load(std::sync::atomic::Ordering::Relaxed), 2);

    submit(4, vec![json!({"id": 4, "owner": "alice", "d": 7})]);
    submit(5, vec![json!({"id": 5, "owner": "bob", "d": 1})]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !inflight.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = delivered.lock().unwrap().clone();
    assert_eq!(got[3], (4, vec![false, false]), "timed out for alice");
    assert_eq!(got[4], (5, vec![false, true]), "bob's change after it");
    assert!(stats.timeouts.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    assert!(!f.authz.lanes.busy(oid));
}

#[tokio::test]
async fn catalog_changes_are_seen_within_the_refresh_interval() {
    let f = fixture(Duration::from_secs(5)).await;
    f.client
        .batch_execute(
            "CREATE ROLE authenticated NOLOGIN;
             CREATE TABLE notes (id bigint PRIMARY KEY, owner text);
             GRANT SELECT ON notes TO authenticated;",
        )
        .await
        .unwrap();
    let oid: u32 = f
        .client
        .query_one("SELECT 'notes'::regclass::oid", &[])
        .await
        .unwrap()
        .get(0);
    let alice = f.authz.group(
        &claims(json!({"role": "authenticated", "sub": "alice"})),
        None,
    );
    assert_eq!(
        f.authz.access(oid, &alice).await.unwrap().access,
        Access::Match(vec![])
    );
    let mut generation = f.authz.generation();
    tokio::spawn(f.authz.clone().watch_catalog());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Row level security turned on, with an owner policy.
    f.client
        .batch_execute(
            "ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
             CREATE POLICY mine ON notes FOR SELECT
               USING (owner = (current_setting('request.jwt.claims', true)::json->>'sub'));",
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(3), generation.changed())
        .await
        .expect("the change is seen")
        .unwrap();
    assert_eq!(
        f.authz.cached_access(oid, &alice).unwrap().access,
        Access::Match(vec![("owner".into(), "alice".into())])
    );
    // The grant revoked.
    f.client
        .batch_execute("REVOKE SELECT ON notes FROM authenticated")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(3), generation.changed())
        .await
        .expect("the revoke is seen")
        .unwrap();
    assert!(matches!(
        f.authz.cached_access(oid, &alice).unwrap().access,
        Access::Denied(_)
    ));
}

//! Policies read from a real PostgreSQL's catalog, reduced per role and per
//! group, and row images checked inside it: the decisions PostgreSQL itself
//! would make for `SELECT` and `INSERT` under each role and claims.

use std::time::Duration;

use realtime_harness::TempPostgres;
use realtime_server::authz::db::{Db, DbError, Principal};
use realtime_server::authz::plan::{self, Access, Command, PlanError, RolePlan, Shape};
use realtime_server::config::{DbConfig, DbSsl, Secret};
use serde_json::json;

const ALICE: &str = "11111111-1111-1111-1111-111111111111";
const BOB: &str = "22222222-2222-2222-2222-222222222222";
const TIMEOUT: Duration = Duration::from_secs(5);

/// Supabase's roles and `auth` helpers (text bodies, as Supabase writes
/// them), and tables with the usual kinds of policy.
const SCHEMA: &str = r#"
    CREATE ROLE anon NOLOGIN;
    CREATE ROLE authenticated NOLOGIN;
    CREATE ROLE service_role NOLOGIN BYPASSRLS;
    CREATE ROLE outsider NOLOGIN;
    CREATE SCHEMA auth;
    GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
    CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
      select coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
      )::uuid
    $$;
    CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $$
      select coalesce(nullif(current_setting('request.jwt.claim', true), ''),
                      nullif(current_setting('request.jwt.claims', true), ''))::jsonb
    $$;
    CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $$
      select coalesce(nullif(current_setting('request.jwt.claim.role', true), ''),
                      (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'))::text
    $$;
    CREATE FUNCTION public.is_member(t int) RETURNS bool LANGUAGE plpgsql STABLE AS $$
      BEGIN RETURN EXISTS (SELECT 1 FROM public.members m WHERE m.team = t AND m.user_id = auth.uid()); END
    $$;

    CREATE TABLE members (team int, user_id uuid);
    GRANT SELECT ON members TO authenticated;

    -- The owner pattern, three ways.
    CREATE TABLE notes (id bigint PRIMARY KEY, owner uuid, body text);
    ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
    CREATE POLICY own ON notes FOR SELECT TO authenticated USING (owner = auth.uid());
    GRANT SELECT, INSERT ON notes TO anon, authenticated;

    CREATE TABLE wrapped (id bigint PRIMARY KEY, owner uuid);
    ALTER TABLE wrapped ENABLE ROW LEVEL SECURITY;
    CREATE POLICY own ON wrapped FOR ALL USING ((select auth.uid()) = owner);
    GRANT SELECT ON wrapped TO authenticated;

    CREATE TABLE by_text (id bigint PRIMARY KEY, owner text);
    ALTER TABLE by_text ENABLE ROW LEVEL SECURITY;
    CREATE POLICY own ON by_text FOR SELECT USING (owner = (auth.jwt() ->> 'sub'));
    GRANT SELECT ON by_text TO authenticated;

    -- Depends on other rows: checked per row.
    CREATE TABLE team_docs (id bigint PRIMARY KEY, team int, title text);
    ALTER TABLE team_docs ENABLE ROW LEVEL SECURITY;
    CREATE POLICY members_read ON team_docs FOR SELECT TO authenticated
      USING (team IN (SELECT m.team FROM members m WHERE m.user_id = auth.uid()));
    CREATE POLICY published ON team_docs FOR SELECT USING (public.is_member(team) AND title IS NOT NULL);
    CREATE POLICY hide_drafts ON team_docs AS RESTRICTIVE FOR SELECT USING (title NOT LIKE 'draft%');
    GRANT SELECT ON team_docs TO authenticated, anon;

    -- Claims only, and a restrictive owner.
    CREATE TABLE board (id bigint PRIMARY KEY, tenant text, body text);
    ALTER TABLE board ENABLE ROW LEVEL SECURITY;
    CREATE POLICY signed_in ON board FOR SELECT USING (auth.role() = 'authenticated');
    CREATE POLICY tenant ON board AS RESTRICTIVE FOR SELECT USING (tenant = (auth.jwt() ->> 'tenant'));
    GRANT SELECT ON board TO anon, authenticated;

    -- RLS on, no policy: nothing. RLS off: everything. FORCE for the owner.
    CREATE TABLE sealed (id bigint PRIMARY KEY);
    ALTER TABLE sealed ENABLE ROW LEVEL SECURITY;
    GRANT SELECT ON sealed TO authenticated;
    CREATE TABLE open (id bigint PRIMARY KEY);
    GRANT SELECT ON open TO authenticated;
    CREATE TABLE ungranted (id bigint PRIMARY KEY);
    CREATE SCHEMA hidden;
    CREATE TABLE hidden.t (id bigint PRIMARY KEY);
    GRANT SELECT ON hidden.t TO authenticated;

    -- A policy that raises for some rows.
    CREATE TABLE fragile (id bigint PRIMARY KEY, d int);
    ALTER TABLE fragile ENABLE ROW LEVEL SECURITY;
    CREATE POLICY divide ON fragile FOR SELECT USING (10 / d > 1);
    GRANT SELECT ON fragile TO authenticated;

    -- INSERT uses WITH CHECK, else USING.
    CREATE TABLE inbox (id bigint, topic text);
    ALTER TABLE inbox ENABLE ROW LEVEL SECURITY;
    CREATE POLICY read_any ON inbox FOR SELECT USING (true);
    CREATE POLICY write_own ON inbox FOR INSERT WITH CHECK (topic = 'room:' || (auth.jwt() ->> 'sub'));
    GRANT SELECT, INSERT ON inbox TO authenticated;
"#;

struct Fixture {
    _pg: TempPostgres,
    db: Db,
    client: tokio_postgres::Client,
}

async fn fixture() -> Fixture {
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .unwrap()
        .expect("start PostgreSQL");
    let client = pg.connect().await.expect("connect");
    client.batch_execute(SCHEMA).await.expect("schema");
    let db = Db::new(
        DbConfig {
            host: pg.host().to_string(),
            port: pg.port(),
            name: pg.dbname().to_string(),
            user: pg.user().to_string(),
            password: Secret::new(""),
            ssl: DbSsl::Disable,
        },
        2,
    );
    Fixture {
        _pg: pg,
        db,
        client,
    }
}

impl Fixture {
    async fn oid(&self, table: &str) -> u32 {
        self.client
            .query_one("SELECT $1::text::regclass::oid", &[&table])
            .await
            .unwrap()
            .get(0)
    }

    async fn plan(&self, table: &str, role: &str, command: Command) -> RolePlan {
        plan::load(&self.db, self.oid(table).await, role, command)
            .await
            .unwrap_or_else(|e| panic!("plan of {table} for {role}: {e}"))
    }

    async fn policies(&self, table: &str, role: &str) -> std::sync::Arc<plan::PolicyPlan> {
        match self.plan(table, role, Command::Select).await {
            RolePlan::Policies(p) => p,
            other => panic!("{table} for {role}: {other:?}"),
        }
    }

    /// The 1-based positions of the images the policies let `who` see.
    async fn check(
        &self,
        plan: &plan::PolicyPlan,
        who: &Principal,
        images: &[serde_json::Value],
    ) -> Result<Vec<i32>, DbError> {
        let images: Vec<String> = images.iter().map(|i| i.to_string()).collect();
        let rows = self
            .db
            .as_group(who, plan.check_sql.as_ref().unwrap(), &[&images], TIMEOUT)
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

fn user(sub: &str) -> Principal {
    Principal {
        role: "authenticated".into(),
        claims: json!({"sub": sub, "role": "authenticated"}).to_string(),
        topic: None,
    }
}

fn anon() -> Principal {
    Principal {
        role: "anon".into(),
        claims: json!({"role": "anon"}).to_string(),
        topic: None,
    }
}

#[tokio::test]
async fn the_owner_pattern_reduces_to_one_value_per_user() {
    let f = fixture().await;
    for table in ["notes", "wrapped", "by_text"] {
        let p = f.policies(table, "authenticated").await;
        assert!(
            matches!(p.permissive.as_slice(), [plan::Part { shape: Shape::Owner { column, .. }, .. }] if column == "owner"),
            "{table}: {p:?}"
        );
        assert_eq!(
            p.access_for(&f.db, &user(ALICE), TIMEOUT).await.unwrap(),
            Access::Match(vec![("owner".into(), ALICE.into())]),
            "{table}"
        );
        assert_eq!(
            p.access_for(&f.db, &user(BOB), TIMEOUT).await.unwrap(),
            Access::Match(vec![("owner".into(), BOB.into())]),
            "{table}"
        );
        // The reduction agrees with the check PostgreSQL makes.
        let rows = [
            json!({"id": 1, "owner": ALICE}),
            json!({"id": 2, "owner": BOB}),
        ];
        assert_eq!(f.check(&p, &user(ALICE), &rows).await.unwrap(), vec![1]);
        assert_eq!(f.check(&p, &user(BOB), &rows).await.unwrap(), vec![2]);
    }
    // `notes`' policy is for `authenticated`: anon has no permissive policy.
    let p = f.policies("notes", "anon").await;
    assert!(p.permissive.is_empty() && p.check_sql.is_none());
    assert_eq!(
        p.access_for(&f.db, &anon(), TIMEOUT).await.unwrap(),
        Access::Nothing
    );
    // A token without `sub`: auth.uid() is NULL, nothing matches.
    let p = f.policies("wrapped", "authenticated").await;
    let no_sub = Principal {
        claims: json!({"role": "authenticated"}).to_string(),
        ..user(ALICE)
    };
    assert_eq!(
        p.access_for(&f.db, &no_sub, TIMEOUT).await.unwrap(),
        Access::Nothing
    );
}

#[tokio::test]
async fn policies_that_read_other_rows_are_checked_per_row_exactly() {
    let f = fixture().await;
    f.client
        .batch_execute(&format!(
            "INSERT INTO members VALUES (1, '{ALICE}'), (2, '{BOB}')"
        ))
        .await
        .unwrap();
    let p = f.policies("team_docs", "authenticated").await;
    assert_eq!(p.names, vec!["hide_drafts", "members_read", "published"]);
    assert!(p.permissive.iter().all(|x| matches!(x.shape, Shape::Row)));
    assert_eq!(
        p.access_for(&f.db, &user(ALICE), TIMEOUT).await.unwrap(),
        Access::Check
    );
    let rows = [
        json!({"id": 1, "team": 1, "title": "plan"}),
        json!({"id": 2, "team": 2, "title": "plan"}),
        json!({"id": 3, "team": 1, "title": "draft plan"}),
        json!({"id": 4, "team": 1, "title": null}),
    ];
    // Row 4: the restrictive policy is NULL for a NULL title, so it hides it.
    assert_eq!(f.check(&p, &user(ALICE), &rows).await.unwrap(), vec![1]);
    assert_eq!(f.check(&p, &user(BOB), &rows).await.unwrap(), vec![2]);
    let read: Vec<String> = p.reads.clone().unwrap().into_iter().collect();
    assert_eq!(read, vec!["team", "title"]);
    // Membership is read when the row is checked: Bob joins team 1.
    f.client
        .batch_execute(&format!("INSERT INTO members VALUES (1, '{BOB}')"))
        .await
        .unwrap();
    assert_eq!(f.check(&p, &user(BOB), &rows).await.unwrap(), vec![1, 2]);
    // anon has only `published`, whose PL/pgSQL function reads `members`,
    // which anon may not read: the check fails as anon's SELECT would.
    let p = f.policies("team_docs", "anon").await;
    let err = f.check(&p, &anon(), &rows).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("permission denied for table members"),
        "{err}"
    );
}

#[tokio::test]
async fn claims_only_and_restrictive_owner_policies_reduce_per_group() {
    let f = fixture().await;
    let p = f.policies("board", "authenticated").await;
    assert!(matches!(p.permissive[0].shape, Shape::Claims { .. }));
    assert!(matches!(p.restrictive[0].shape, Shape::Owner { .. }));
    let acme = Principal {
        claims: json!({"sub": ALICE, "role": "authenticated", "tenant": "acme"}).to_string(),
        ..user(ALICE)
    };
    assert_eq!(
        p.access_for(&f.db, &acme, TIMEOUT).await.unwrap(),
        Access::Match(vec![("tenant".into(), "acme".into())])
    );
    let rows = [
        json!({"id": 1, "tenant": "acme"}),
        json!({"id": 2, "tenant": "other"}),
    ];
    assert_eq!(f.check(&p, &acme, &rows).await.unwrap(), vec![1]);
    // No tenant claim: the restrictive policy is NULL, nothing passes.
    assert_eq!(
        p.access_for(&f.db, &user(ALICE), TIMEOUT).await.unwrap(),
        Access::Nothing
    );
    // anon: auth.role() is 'anon', the only permissive policy is false.
    let p = f.policies("board", "anon").await;
    let anon_acme = Principal {
        claims: json!({"role": "anon", "tenant": "acme"}).to_string(),
        ..anon()
    };
    assert_eq!(
        p.access_for(&f.db, &anon_acme, TIMEOUT).await.unwrap(),
        Access::Nothing
    );
    assert_eq!(
        f.check(&p, &anon_acme, &rows).await.unwrap(),
        Vec::<i32>::new()
    );
}

#[tokio::test]
async fn privileges_and_bypass_come_before_policies() {
    let f = fixture().await;
    assert!(matches!(
        f.plan("open", "authenticated", Command::Select).await,
        RolePlan::All
    ));
    assert!(matches!(
        f.plan("notes", "service_role", Command::Select).await,
        RolePlan::Denied(_)
    ));
    f.client
        .batch_execute("GRANT SELECT ON notes TO service_role")
        .await
        .unwrap();
    assert!(matches!(
        f.plan("notes", "service_role", Command::Select).await,
        RolePlan::All
    ));
    match f.plan("ungranted", "authenticated", Command::Select).await {
        RolePlan::Denied(why) => assert_eq!(
            why,
            "role \"authenticated\" may not SELECT \"public\".\"ungranted\""
        ),
        other => panic!("{other:?}"),
    }
    match f.plan("hidden.t", "authenticated", Command::Select).await {
        RolePlan::Denied(why) => assert!(why.contains("no USAGE on schema \"hidden\""), "{why}"),
        other => panic!("{other:?}"),
    }
    // The owner (the server's superuser here) bypasses, unless forced; a
    // superuser always bypasses.
    assert!(matches!(
        f.plan("sealed", "postgres", Command::Select).await,
        RolePlan::All
    ));
    let p = f.policies("sealed", "authenticated").await;
    assert_eq!(
        p.access_for(&f.db, &user(ALICE), TIMEOUT).await.unwrap(),
        Access::Nothing
    );
    f.client
        .batch_execute(
            "CREATE ROLE table_owner NOLOGIN; ALTER TABLE sealed OWNER TO table_owner; \
             GRANT table_owner TO authenticated",
        )
        .await
        .unwrap();
    assert!(matches!(
        f.plan("sealed", "authenticated", Command::Select).await,
        RolePlan::All
    ));
    f.client
        .batch_execute("ALTER TABLE sealed FORCE ROW LEVEL SECURITY")
        .await
        .unwrap();
    assert!(matches!(
        f.plan("sealed", "authenticated", Command::Select).await,
        RolePlan::Policies(_)
    ));
    let oid = f.oid("open").await;
    assert_eq!(
        plan::load(&f.db, oid, "nobody", Command::Select)
            .await
            .unwrap_err(),
        PlanError::NoRole("nobody".into())
    );
}

#[tokio::test]
async fn a_policy_that_raises_fails_the_check_and_names_the_error() {
    let f = fixture().await;
    let p = f.policies("fragile", "authenticated").await;
    let ok = [json!({"id": 1, "d": 2}), json!({"id": 2, "d": 20})];
    assert_eq!(f.check(&p, &user(ALICE), &ok).await.unwrap(), vec![1]);
    let bad = [json!({"id": 1, "d": 2}), json!({"id": 2, "d": 0})];
    match f.check(&p, &user(ALICE), &bad).await {
        Err(DbError::Sql { code, message }) => {
            assert_eq!(code, "22012");
            assert!(message.contains("division by zero"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // The connection is usable after the failed transaction.
    assert_eq!(f.check(&p, &user(ALICE), &ok).await.unwrap(), vec![1]);
    // A role the server cannot switch to fails with PostgreSQL's reason.
    f.client
        .batch_execute("CREATE ROLE limited LOGIN; GRANT SELECT ON open TO limited")
        .await
        .unwrap();
    let err =
        f.db.as_group(
            &Principal {
                role: "nobody".into(),
                ..user(ALICE)
            },
            "SELECT 1",
            &[],
            TIMEOUT,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("role \"nobody\" does not exist"),
        "{err}"
    );
}

#[tokio::test]
async fn inserts_are_checked_with_the_with_check_expression() {
    let f = fixture().await;
    let p = match f.plan("inbox", "authenticated", Command::Insert).await {
        RolePlan::Policies(p) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(p.names, vec!["write_own"]);
    let rows = [
        json!({"id": 1, "topic": format!("room:{ALICE}")}),
        json!({"id": 2, "topic": format!("room:{BOB}")}),
    ];
    assert_eq!(f.check(&p, &user(ALICE), &rows).await.unwrap(), vec![1]);
    let read = f.policies("inbox", "authenticated").await;
    assert_eq!(
        read.access_for(&f.db, &user(ALICE), TIMEOUT).await.unwrap(),
        Access::Match(vec![])
    );
}

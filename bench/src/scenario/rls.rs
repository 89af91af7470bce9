//! Authorization (scenario 8): many signed-in users, each subscribed to a
//! table whose row level security policy is the owner pattern
//! (`owner = auth.uid()`), at a steady rate of one-row transactions.
//! Measured in one run against two references:
//!
//! - the same server with channels not secured, each socket filtering
//!   `owner=eq.<its user>`: the same frames to the same sockets, with no
//!   authorization at all;
//! - checking every subscriber separately inside PostgreSQL (one statement
//!   per subscriber per change, as the trigger-era servers did): how many
//!   changes per second that sustains on this database.
//!
//! Figures: p50/p99 commit-to-client latency of both servers, PostgreSQL's
//! and the server's CPU, and the check statements the server ran per
//! change (from its `/metrics`).

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Join};
use crate::load::{self, Phase, Samples};
use crate::opts::Opts;
use crate::report::{self, Target};
use crate::stack::{self, ServerProcess, TempPostgres, STAMP_SQL};
use crate::sys::{CpuMeter, Who};

const SCHEMA: &str = "
    CREATE TABLE notes (id bigint PRIMARY KEY, owner uuid NOT NULL, sent_us bigint NOT NULL,
                        body text);
    CREATE PUBLICATION bench FOR TABLE notes;";

/// What a Supabase project has: the table readable by `authenticated`,
/// each user seeing their own rows.
const POLICY: &str = "
    GRANT SELECT ON notes TO authenticated;
    ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
    CREATE POLICY own ON notes FOR SELECT TO authenticated USING (owner = auth.uid());";

const SECRET: &str = "a-benchmark-secret-of-reasonable-length";

/// p99 with authorization within this factor of p99 without.
const P99_FACTOR_TARGET: f64 = 2.0;

pub async fn run(opts: &Opts) -> anyhow::Result<()> {
    let sockets = opts.size(opts.sockets, 10_000, 20);
    let users = opts.size(opts.users, 1_000, 4).clamp(1, sockets);
    let rate = opts.size(opts.rate, 1_000, 100);
    let secs = opts.size(opts.seconds, 10, 2);
    let peer_changes = opts.size(opts.peer_changes, 20, 2);
    let (pg, db) = TempPostgres::with_schema(SCHEMA).await?;
    let setup = realtime_contract::authorization::setup_transaction(pg.user());
    db.batch_execute(&setup)
        .await
        .context("the authorization setup")?;
    db.batch_execute(POLICY).await?;
    let user_id = |u: usize| format!("00000000-0000-4000-8000-{u:012}");
    let token = |u: usize| {
        encode(
            &Header::default(),
            &json!({"role": "authenticated", "sub": user_id(u),
                "exp": stack::now_us() / 1_000_000 + 24 * 3600}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("HS256 signs")
    };
    report::section(&format!(
        "rls: {sockets} sockets of {users} users, owner policy, {rate} changes/s, {secs} s per server"
    ));

    // Each row belongs to one user: it reaches that user's sockets only.
    let sql = |i: u64| {
        format!(
            "INSERT INTO notes VALUES ({i}, '{}', {STAMP_SQL}, 'a short body')",
            user_id(i as usize % users)
        )
    };
    let writers = load::writers(&pg, 4).await?;
    let mut row = 0u64;
    let mut results = Vec::new();
    for secured in [true, false] {
        let mut env = stack::server_env(&pg, "bench");
        env.insert("MAX_CONNECTIONS".into(), (sockets + 100).to_string());
        env.insert("SECURE_CHANNELS".into(), secured.to_string());
        if secured {
            env.insert("JWT_SECRET".into(), SECRET.into());
        }
        let server = stack::start_server(env).await?;
        let t = Instant::now();
        let ws = client::connect_many(server.port, sockets, 0, |i| {
            let u = i % users;
            if secured {
                Join::AsUser {
                    table: "notes".into(),
                    filter: String::new(),
                    token: token(u),
                }
            } else {
                Join::PostgresChanges {
                    table: "notes".into(),
                    filter: format!("owner=eq.{}", user_id(u)),
                }
            }
        })
        .await?;
        let label = if secured {
            "secured (RLS decides)"
        } else {
            "not secured (owner=eq filter)"
        };
        report::note(&format!(
            "{label}: {sockets} sockets joined in {:.2} s",
            t.elapsed().as_secs_f64()
        ));
        let phase = Phase::default();
        let stop = CancellationToken::new();
        let readers = load::spawn_readers(ws, true, &phase, &stop);
        // Warm-up, not recorded.
        row += load::write_at_rate(&writers, rate, Duration::from_secs(1), row, sql).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = checks(&server)?;
        phase.set(1);
        let meter = CpuMeter::start(vec![
            ("server", Who::Pid(server.pid())),
            ("postgres", Who::Postgres(pg.data_dir())),
            ("load generator", Who::LoadGenerator),
        ]);
        let n =
            load::write_at_rate(&writers, rate, Duration::from_secs(secs as u64), row, sql).await?;
        row += n;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (wall, cpu) = meter.stop();
        phase.set(0);
        let after = checks(&server)?;
        stop.cancel();
        let mut all = Vec::new();
        for r in readers {
            all.push(r.await?);
        }
        let mut samples = Samples::merge(all, 1);
        let expected = n as usize * sockets / users;
        report::note(&format!(
            "{label}: {n} rows committed; {} of {expected} frames received",
            samples.len()
        ));
        let p = report::percentiles(&mut samples);
        results.push((secured, p, n, after.0 - before.0, after.1 - before.1));
        let name = if secured {
            "rls.secured"
        } else {
            "rls.not_secured"
        };
        report::cpu(name, wall, &cpu);
        report::server_warnings(&server.warnings());
        drop(server);
    }

    let (Some(&(_, Some(s), n, statements, images)), Some(&(_, Some(r), _, _, _))) =
        (results.first(), results.get(1))
    else {
        report::note("no samples");
        return Ok(());
    };
    for (i, q) in ["p50", "p99", "p99.9", "max"].iter().enumerate() {
        report::figure(&format!("rls.secured.{q}"), s[i], "ms");
        report::figure(&format!("rls.not_secured.{q}"), r[i], "ms");
    }
    report::figure(
        "rls.secured.check_statements_per_change",
        statements / n.max(1) as f64,
        "statements",
    );
    report::figure(
        "rls.secured.row_images_checked_per_change",
        images / n.max(1) as f64,
        "images",
    );
    report::ratio(
        "rls.p99_secured_vs_not_secured",
        s[1],
        r[1],
        "p99 with RLS deciding / p99 without authorization",
        Some(Target::AtMost(P99_FACTOR_TARGET)),
    );

    // The peer's method: every subscriber checked by its own statement.
    let peer = per_subscriber_checks(&pg, sockets, users, peer_changes, &user_id).await?;
    report::figure(
        "rls.per_subscriber.statements_per_change",
        sockets as f64,
        "statements",
    );
    report::figure(
        "rls.per_subscriber.changes_per_s",
        peer.changes_per_s,
        "changes/s",
    );
    report::ratio(
        "rls.per_subscriber_vs_rate",
        peer.changes_per_s,
        rate as f64,
        "changes/s checking each subscriber separately / the rate the server kept up with",
        None,
    );
    report::cpu("rls.per_subscriber", peer.wall, &peer.cpu);
    Ok(())
}

/// The server's check statements and row images checked so far.
fn checks(server: &ServerProcess) -> anyhow::Result<(f64, f64)> {
    let (status, text) = realtime_harness::net::http_get(server.port, "/metrics")
        .context("the server's /metrics did not answer")?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((
        value("realtime_rls_check_statements_total"),
        value("realtime_rls_images_checked_total"),
    ))
}

struct Peer {
    changes_per_s: f64,
    wall: Duration,
    cpu: Vec<(&'static str, crate::sys::CpuDelta)>,
}

/// Checks `changes` rows for each of `sockets` subscribers, one statement
/// each (its role and claims set, then the row selected under RLS), over
/// four connections.
async fn per_subscriber_checks(
    pg: &TempPostgres,
    sockets: usize,
    users: usize,
    changes: usize,
    user_id: &dyn Fn(usize) -> String,
) -> anyhow::Result<Peer> {
    let conns = load::writers(pg, 4).await?;
    let meter = CpuMeter::start(vec![
        ("postgres", Who::Postgres(pg.data_dir())),
        ("load generator", Who::LoadGenerator),
    ]);
    let start = Instant::now();
    let mut checks = futures::stream::FuturesUnordered::new();
    let mut visible = 0usize;
    for change in 0..changes {
        for sub in 0..sockets {
            let client = &conns[(change * sockets + sub) % conns.len()];
            let claims = json!({"role": "authenticated", "sub": user_id(sub % users)});
            let q = format!(
                "BEGIN; SET LOCAL ROLE authenticated; \
                 SELECT set_config('request.jwt.claims', '{claims}', true); \
                 SELECT id FROM notes WHERE id = {change}; COMMIT;"
            );
            checks.push(async move { client.simple_query(&q).await });
            if checks.len() >= 64 {
                if let Some(r) = checks.next().await {
                    visible += rows(r?);
                }
            }
        }
    }
    while let Some(r) = checks.next().await {
        visible += rows(r?);
    }
    let elapsed = start.elapsed();
    let (wall, cpu) = meter.stop();
    report::note(&format!(
        "per subscriber: {changes} changes x {sockets} subscribers = {} statements in {:.2} s; \
         {visible} visible",
        changes * sockets,
        elapsed.as_secs_f64()
    ));
    Ok(Peer {
        changes_per_s: changes as f64 / elapsed.as_secs_f64(),
        wall,
        cpu,
    })
}

/// Rows of `notes` the check returned (not the `set_config` row).
fn rows(messages: Vec<tokio_postgres::SimpleQueryMessage>) -> usize {
    messages
        .iter()
        .filter(|m| {
            matches!(m, tokio_postgres::SimpleQueryMessage::Row(r)
                if r.columns().first().is_some_and(|c| c.name() == "id"))
        })
        .count()
}

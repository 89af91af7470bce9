//! Database cost (scenario 6): the database's CPU per 1,000 committed
//! transactions at a fixed rate (`pgbench -R`, one-row INSERTs into a
//! published table), on one throwaway PostgreSQL, with
//!
//! - no consumer (measured first and last: the drift between the two says
//!   how far a small difference can be trusted),
//! - the server streaming every row to one subscribed socket,
//! - `pg_recvlogical` with pgoutput on the same publication into
//!   `/dev/null`: the walsender's decoding, the floor any logical consumer
//!   pays; and again with the replication options the server uses (logical
//!   messages on, a status update a second), to tell what those options
//!   cost from what the server does,
//! - a row trigger calling `pg_notify` and one LISTEN client.
//!
//! At a fixed rate the database has CPU to spare, so a consumer's cost shows
//! as the CPU it adds, not as TPS lost on a machine pgbench already fills.
//! "The database" is the postmaster, every backend (reaped or live) and the
//! walsenders; the consumers' own backends are also measured apart. Each
//! case starts after a `CHECKPOINT`, and autovacuum is off on the table, so
//! that neither lands in one case at random.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Join};
use crate::opts::Opts;
use crate::report::{self, Target};
use crate::stack::{self, TempPostgres};
use crate::sys::{CpuDelta, CpuMeter, Who};

const SCHEMA: &str = "
    CREATE TABLE dbc (id bigserial PRIMARY KEY, v int, body text)
        WITH (autovacuum_enabled = false);
    CREATE PUBLICATION bench FOR TABLE dbc;
    CREATE FUNCTION dbc_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_notify('dbc', row_to_json(NEW)::text); RETURN NEW; END $$;";

const SCRIPT: &str = "INSERT INTO dbc (v, body) VALUES (1, 'a short body');\n";

/// The slot `pg_recvlogical` reads.
const RECV_SLOT: &str = "dbcost_recv";

/// What the server's replication session asks for beyond pg_recvlogical's
/// defaults: `messages 'true'` (pgwire-replication's START_REPLICATION) and
/// a status update each second (the server's STATUS_INTERVAL).
const SERVER_OPTIONS: &[&str] = &["-o", "messages=true", "-s", "1"];

/// How long a consumer may take to catch up after pgbench ends, and a
/// process to appear or go.
const SETTLE: Duration = Duration::from_secs(10);

/// Targets: the server adds at most this much of what `pg_recvlogical`
/// adds; and less than trigger + NOTIFY.
const VS_RECVLOGICAL: f64 = 1.1;

pub async fn run(opts: &Opts) -> anyhow::Result<()> {
    let rate = opts.size(opts.rate, 500, 100);
    let secs = opts.size(opts.seconds, 20, 2);
    let clients = opts.size(opts.clients, 4, 2);
    let (pg, db) = TempPostgres::with_schema(SCHEMA).await?;
    let script = tempfile::NamedTempFile::new()?;
    std::fs::write(script.path(), SCRIPT)?;
    // pgbench may run as another user (postgres) than this process.
    std::fs::set_permissions(
        script.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    let bench = Pgbench {
        pg: &pg,
        script: script.path(),
        rate,
        clients,
    };
    report::section(&format!(
        "database cost: pgbench -R {rate} ({clients} clients), one-row INSERTs, {secs} s per case"
    ));

    // Warm-up, not recorded: the table's first pages, the catalog caches.
    bench.run(secs.div_ceil(4)).await?;
    let none_before = measure(&bench, &db, secs, Vec::new(), Drain::default()).await?;

    // The server on a temporary slot, one socket subscribed.
    let server = stack::start_server(stack::server_env(&pg, "bench")).await?;
    let mut ws = client::connect_joined(
        server.port,
        client::source_addr(0),
        &Join::Legacy("realtime:public:dbc".into()),
    )
    .await?;
    let received = Arc::new(AtomicU64::new(0));
    let counter = {
        let received = received.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if matches!(&m, Message::Text(t) if t.as_str().contains("\"INSERT\"")) {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let mut parts = vec![("server", Who::Pid(server.pid()))];
    parts.extend(backends(&db, "realtime-server").await?);
    let with_server = measure(
        &bench,
        &db,
        secs,
        parts,
        Drain {
            walsender: true,
            delivered: Some(received),
        },
    )
    .await?;
    counter.abort();
    report::server_warnings(&server.warnings());
    drop(server);
    // Its temporary slot goes with its replication connection.
    until(
        &db,
        "SELECT count(*) = 0 FROM pg_replication_slots",
        "the server's slot to go",
    )
    .await?;

    // pg_recvlogical: pgoutput, the same publication, into /dev/null; then
    // with the options the server starts replication with (logical
    // messages on, a status update every second), which tells an option's
    // cost from the server's.
    let with_recv = recvlogical(&bench, &db, secs, &[]).await?;
    let with_recv_opts = recvlogical(&bench, &db, secs, SERVER_OPTIONS).await?;

    // Trigger + NOTIFY with a LISTEN client.
    db.batch_execute(
        "CREATE TRIGGER dbc_notify AFTER INSERT ON dbc FOR EACH ROW EXECUTE FUNCTION dbc_notify()",
    )
    .await?;
    let notified = Arc::new(AtomicU64::new(0));
    let (listener, listening) = listen(&pg, "dbc", notified.clone()).await?;
    let listen_pid: i32 = listening
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    let with_notify = measure(
        &bench,
        &db,
        secs,
        vec![("LISTEN backend", Who::Pid(listen_pid as u32))],
        Drain {
            walsender: false,
            delivered: Some(notified),
        },
    )
    .await?;
    listener.abort();
    drop(listening);
    db.batch_execute("DROP TRIGGER dbc_notify ON dbc").await?;

    let none_after = measure(&bench, &db, secs, Vec::new(), Drain::default()).await?;

    // Figures.
    let base = (none_before.per_1000("postgres") + none_after.per_1000("postgres")) / 2.0;
    let cases = [
        ("no_consumer.before", &none_before),
        ("server", &with_server),
        ("pg_recvlogical", &with_recv),
        ("pg_recvlogical_server_options", &with_recv_opts),
        ("trigger_notify", &with_notify),
        ("no_consumer.after", &none_after),
    ];
    for (name, case) in cases {
        report::figure(&format!("dbcost.{name}.tps"), case.tps, "tps");
        report::figure(
            &format!("dbcost.{name}.postgres_cpu_per_1000_txns"),
            case.per_1000("postgres"),
            "ms",
        );
    }
    report::figure("dbcost.no_consumer.postgres_cpu_per_1000_txns", base, "ms");
    let added = |c: &Case| c.per_1000("postgres") - base;
    for (name, case) in [
        ("server", &with_server),
        ("pg_recvlogical", &with_recv),
        ("pg_recvlogical_server_options", &with_recv_opts),
        ("trigger_notify", &with_notify),
    ] {
        report::figure(
            &format!("dbcost.{name}.added_per_1000_txns"),
            added(case),
            "ms",
        );
    }
    for (name, case) in [
        ("server", &with_server),
        ("pg_recvlogical", &with_recv),
        ("pg_recvlogical_server_options", &with_recv_opts),
    ] {
        report::figure(
            &format!("dbcost.{name}.walsender_per_1000_txns"),
            case.per_1000("walsender"),
            "ms",
        );
    }
    report::figure(
        "dbcost.server.query_backends_per_1000_txns",
        with_server.per_1000("its other backends"),
        "ms",
    );
    report::figure(
        "dbcost.trigger_notify.listen_backend_per_1000_txns",
        with_notify.per_1000("LISTEN backend"),
        "ms",
    );
    report::note(&format!(
        "no consumer before/after: {:.1} / {:.1} ms per 1,000 transactions (drift {:.1} ms)",
        none_before.per_1000("postgres"),
        none_after.per_1000("postgres"),
        (none_after.per_1000("postgres") - none_before.per_1000("postgres")).abs()
    ));
    for (name, case) in cases {
        report::note(&format!(
            "{name}: {} transactions committed{}{}",
            case.committed,
            case.delivered
                .map(|d| format!(", {d} delivered to the consumer"))
                .unwrap_or_default(),
            if case.caught_up {
                ""
            } else {
                "; the consumer had NOT caught up 10 s after pgbench ended"
            }
        ));
    }
    report::ratio(
        "dbcost.server_vs_pg_recvlogical",
        added(&with_server),
        added(&with_recv),
        "database CPU the server adds / what pg_recvlogical adds, per transaction",
        Some(Target::AtMost(VS_RECVLOGICAL)),
    );
    report::ratio(
        "dbcost.server_vs_trigger_notify",
        added(&with_server),
        added(&with_notify),
        "database CPU the server adds / what trigger+NOTIFY adds, per transaction",
        Some(Target::Below(1.0)),
    );
    report::ratio(
        "dbcost.pg_recvlogical_vs_trigger_notify",
        added(&with_recv),
        added(&with_notify),
        "database CPU pg_recvlogical adds / what trigger+NOTIFY adds: the floor against the target",
        None,
    );
    report::ratio(
        "dbcost.walsender.server_vs_pg_recvlogical",
        with_server.per_1000("walsender"),
        with_recv.per_1000("walsender"),
        "the server's walsender CPU / pg_recvlogical's walsender CPU, per transaction",
        None,
    );
    report::ratio(
        "dbcost.walsender.server_options_vs_pg_recvlogical",
        with_recv_opts.per_1000("walsender"),
        with_recv.per_1000("walsender"),
        "walsender CPU of pg_recvlogical with the server's options / with its defaults",
        None,
    );
    report::ratio(
        "dbcost.total.server_vs_no_consumer",
        with_server.per_1000("postgres"),
        base,
        "database CPU per transaction with the server / with no consumer",
        None,
    );
    report::ratio(
        "dbcost.total.pg_recvlogical_vs_no_consumer",
        with_recv.per_1000("postgres"),
        base,
        "database CPU per transaction with pg_recvlogical / with no consumer",
        None,
    );
    report::ratio(
        "dbcost.total.trigger_notify_vs_no_consumer",
        with_notify.per_1000("postgres"),
        base,
        "database CPU per transaction with trigger+NOTIFY / with no consumer",
        None,
    );
    for (name, case) in cases {
        report::cpu(&format!("dbcost.{name}"), case.wall, &case.cpu);
    }
    Ok(())
}

/// pgbench at a fixed rate with the one-row INSERT script.
struct Pgbench<'a> {
    pg: &'a TempPostgres,
    script: &'a std::path::Path,
    rate: usize,
    clients: usize,
}

impl Pgbench<'_> {
    /// Runs `secs` seconds; returns (tps, committed transactions).
    async fn run(&self, secs: usize) -> anyhow::Result<(f64, u64)> {
        let mut cmd = self.pg.client_command("pgbench");
        cmd.args(["-n", "-c", &self.clients.to_string(), "-j", "2"])
            .args(["-R", &self.rate.to_string()])
            .args(["-T", &secs.to_string(), "-f"])
            .arg(self.script)
            .arg("postgres");
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await?
            .context("running pgbench")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "pgbench -R {} failed ({}): {}\n{text}",
                self.rate,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let tps = text
            .lines()
            .find(|l| l.starts_with("tps = "))
            .and_then(|l| l["tps = ".len()..].split_whitespace().next()?.parse().ok())
            .with_context(|| format!("pgbench printed no `tps = `:\n{text}"))?;
        let committed = text
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed:"))
            .and_then(|n| n.split_whitespace().next()?.split('/').next()?.parse().ok())
            .with_context(|| format!("pgbench printed no transaction count:\n{text}"))?;
        Ok((tps, committed))
    }
}

/// What "done" means after pgbench ends: every walsender has sent the WAL
/// written so far, and `delivered` (a count from zero) reached the number
/// committed.
#[derive(Default)]
struct Drain {
    walsender: bool,
    delivered: Option<Arc<AtomicU64>>,
}

struct Case {
    tps: f64,
    committed: u64,
    wall: Duration,
    cpu: Vec<(&'static str, CpuDelta)>,
    delivered: Option<u64>,
    caught_up: bool,
}

impl Case {
    /// CPU milliseconds of `part` per 1,000 committed transactions (0 when
    /// the part was not measured).
    fn per_1000(&self, part: &str) -> f64 {
        let s = self
            .cpu
            .iter()
            .find(|(name, _)| *name == part)
            .map_or(0.0, |(_, d)| d.seconds);
        s * 1e6 / self.committed.max(1) as f64
    }
}

/// One case: the CPU of PostgreSQL (and `parts`) from the start of pgbench
/// until its backends are gone and the consumer has caught up.
async fn measure(
    bench: &Pgbench<'_>,
    db: &tokio_postgres::Client,
    secs: usize,
    parts: Vec<(&'static str, Who)>,
    drain: Drain,
) -> anyhow::Result<Case> {
    let delivered_before = drain.delivered.as_ref().map(|d| d.load(Ordering::Relaxed));
    let mut who = vec![
        ("postgres", Who::Postgres(bench.pg.data_dir())),
        ("pgbench", Who::ReapedChildren),
    ];
    who.extend(parts);
    who.push(("load generator", Who::LoadGenerator));
    // Not inside a case: a timed checkpoint, or autovacuum (off on the
    // table), would land in one case at random.
    db.batch_execute("CHECKPOINT").await?;
    let meter = CpuMeter::start(who);
    let (tps, committed) = bench.run(secs).await?;
    // pgbench's backends, reaped by the postmaster, count in its children's CPU.
    until(
        db,
        "SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = 'pgbench'",
        "pgbench's backends to exit",
    )
    .await?;
    let flushed: String = db
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .await?
        .get(0);
    let deadline = Instant::now() + SETTLE;
    let mut caught_up = false;
    let mut delivered = None;
    while Instant::now() < deadline {
        let sent = !drain.walsender
            || db
                .query_one(
                    &format!(
                        "SELECT count(*) > 0 AND bool_and(sent_lsn >= '{flushed}'::pg_lsn) \
                         FROM pg_stat_replication"
                    ),
                    &[],
                )
                .await?
                .get::<_, Option<bool>>(0)
                .unwrap_or(false);
        delivered = drain
            .delivered
            .as_ref()
            .zip(delivered_before)
            .map(|(d, before)| d.load(Ordering::Relaxed) - before);
        if sent && delivered.is_none_or(|d| d >= committed) {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The postmaster reaps an exited backend on SIGCHLD: give it a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (wall, cpu) = meter.stop();
    Ok(Case {
        tps,
        committed,
        wall,
        cpu,
        delivered,
        caught_up,
    })
}

/// The backends of connections whose application_name starts with `app`:
/// its walsender, and the others summed.
async fn backends(
    db: &tokio_postgres::Client,
    app: &str,
) -> anyhow::Result<Vec<(&'static str, Who)>> {
    let rows = db
        .query(
            "SELECT pid, backend_type = 'walsender' FROM pg_stat_activity \
             WHERE starts_with(application_name, $1)",
            &[&app],
        )
        .await?;
    let (mut walsenders, mut others) = (Vec::new(), Vec::new());
    for r in rows {
        let pid = r.get::<_, i32>(0) as u32;
        if r.get::<_, bool>(1) {
            walsenders.push(pid);
        } else {
            others.push(pid);
        }
    }
    if walsenders.len() != 1 {
        bail!(
            "expected one walsender for {app}, found {} (pids {walsenders:?})",
            walsenders.len()
        );
    }
    Ok(vec![
        ("walsender", Who::Pids(walsenders)),
        ("its other backends", Who::Pids(others)),
    ])
}

/// Polls `sql` (one boolean) until it is true, for at most [`SETTLE`].
async fn until(db: &tokio_postgres::Client, sql: &str, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let row = db
            .query_opt(sql, &[])
            .await
            .with_context(|| format!("waiting for {what}: {sql}"))?;
        if row.and_then(|r| r.get::<_, Option<bool>>(0)) == Some(true) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("waited {SETTLE:?} for {what} ({sql})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One case with `pg_recvlogical` (pgoutput, the publication, into
/// `/dev/null`, `extra` arguments) on a slot of its own.
async fn recvlogical(
    bench: &Pgbench<'_>,
    db: &tokio_postgres::Client,
    secs: usize,
    extra: &[&str],
) -> anyhow::Result<Case> {
    db.execute(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&RECV_SLOT],
    )
    .await?;
    let mut recv = tokio::process::Command::from(bench.pg.client_command("pg_recvlogical"))
        .args([
            "-d",
            "postgres",
            "--slot",
            RECV_SLOT,
            "--start",
            "--no-loop",
        ])
        .args(["-f", "/dev/null"])
        .args(["-o", "proto_version=1", "-o", "publication_names=bench"])
        .args(extra)
        .kill_on_drop(true)
        .spawn()
        .context("starting pg_recvlogical")?;
    until(
        db,
        "SELECT count(*) = 1 FROM pg_stat_replication \
         WHERE application_name = 'pg_recvlogical' AND state = 'streaming'",
        "pg_recvlogical to stream",
    )
    .await?;
    let mut parts = vec![("pg_recvlogical", Who::Pid(recv.id().unwrap_or(0)))];
    parts.extend(backends(db, "pg_recvlogical").await?);
    let case = measure(
        bench,
        db,
        secs,
        parts,
        Drain {
            walsender: true,
            delivered: None,
        },
    )
    .await?;
    recv.kill().await.context("stopping pg_recvlogical")?;
    until(
        db,
        &format!("SELECT NOT active FROM pg_replication_slots WHERE slot_name = '{RECV_SLOT}'"),
        "pg_recvlogical's slot to be released",
    )
    .await?;
    db.execute("SELECT pg_drop_replication_slot($1)", &[&RECV_SLOT])
        .await?;
    Ok(case)
}

/// A LISTEN client on `channel` counting notifications.
async fn listen(
    pg: &TempPostgres,
    channel: &str,
    count: Arc<AtomicU64>,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, tokio_postgres::Client)> {
    let (client, mut connection) =
        tokio_postgres::connect(&pg.connection_string(), tokio_postgres::NoTls).await?;
    let task = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(_) = m {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    client.batch_execute(&format!("LISTEN {channel}")).await?;
    // The connection lives as long as its client.
    Ok((task, client))
}

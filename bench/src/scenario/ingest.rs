//! Ingest (scenario 1): rows/s that the server decodes and delivers to one subscriber,
//! against `pg_recvlogical` reading the same WAL from its own slot into
//! `/dev/null`, for one large transaction and for many one-row transactions.
//!
//! Both slots exist before the workload is written, so both consumers read
//! the same WAL after the fact: the figure is consumption speed, not how fast
//! the workload was written. The server's replication connection is refused
//! in `pg_hba.conf` until its subscriber has joined; the clock starts when it
//! is allowed in, and stops when the subscriber has every row.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Join};
use crate::opts::Opts;
use crate::report::{self, Target};
use crate::stack::{self, ServerProcess, TempPostgres};
use crate::sys::{CpuMeter, Who};

const SCHEMA: &str = "
    CREATE TABLE ingest (id bigint, v int, body text);
    CREATE PUBLICATION bench FOR TABLE ingest;";

pub async fn run(opts: &Opts) -> anyhow::Result<()> {
    let big = opts.size(opts.rows, 1_000_000, 2_000);
    let txns = opts.size(opts.txns, 100_000, 200);
    let (pg, db) = TempPostgres::with_schema(SCHEMA).await?;
    case(
        &pg,
        &db,
        "ingest.one_big_txn",
        &format!("one {big}-row transaction"),
        big,
        &format!(
            "INSERT INTO ingest SELECT g, g % 100, 'row number ' || g \
             FROM generate_series(1, {big}) g"
        ),
    )
    .await?;
    case(
        &pg,
        &db,
        "ingest.single_row_txns",
        &format!("{txns} one-row transactions"),
        txns,
        &format!(
            "DO $$ BEGIN FOR i IN 1..{txns} LOOP \
               INSERT INTO ingest VALUES (i, i % 100, 'row number ' || i); COMMIT; \
             END LOOP; END $$"
        ),
    )
    .await?;
    Ok(())
}

async fn case(
    pg: &TempPostgres,
    db: &tokio_postgres::Client,
    name: &str,
    title: &str,
    rows: usize,
    workload: &str,
) -> anyhow::Result<()> {
    report::section(&format!("ingest: {title}"));
    // The previous case's server is gone; its walsender may linger a moment.
    db.batch_execute(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
         WHERE active_pid IS NOT NULL",
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // One statement each: a slot cannot be created in a transaction that wrote.
    for sql in [
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots",
        "TRUNCATE ingest",
        "SELECT pg_create_logical_replication_slot('bench_server', 'pgoutput')",
        "SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput')",
    ] {
        db.batch_execute(sql).await?;
    }
    let t = Instant::now();
    db.batch_execute(workload).await.context("the workload")?;
    let end_lsn: String = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    report::note(&format!(
        "workload written in {:.2} s (not measured); WAL up to {end_lsn}",
        t.elapsed().as_secs_f64()
    ));

    // Reference: pg_recvlogical, same plugin and publication, into /dev/null.
    let meter = CpuMeter::start(vec![
        ("pg_recvlogical", Who::ReapedChildren),
        ("postgres", Who::Postgres(pg.data_dir())),
    ]);
    let mut recv = pg.client_command("pg_recvlogical");
    let lsn = end_lsn.clone();
    let status = tokio::task::spawn_blocking(move || {
        recv.args(["-d", "postgres", "--slot", "bench_recv", "--start"])
            .args(["--endpos", &lsn, "--no-loop", "-f", "/dev/null"])
            .args(["-o", "proto_version=1", "-o", "publication_names=bench"])
            .status()
    })
    .await??;
    if !status.success() {
        bail!("pg_recvlogical failed: {status}");
    }
    let (ref_wall, ref_cpu) = meter.stop();
    let ref_rate = rows as f64 / ref_wall.as_secs_f64();

    // The server, on its own slot, with its replication connection held back
    // until the subscriber has joined.
    stack::gate_server(pg, db, true).await?;
    let mut env = stack::gated_server_env(pg, "bench");
    env.insert("SLOT_NAME".into(), "bench_server".into());
    env.insert("DB_RECONNECT_BACKOFF_MIN".into(), "5".into());
    env.insert("DB_RECONNECT_BACKOFF_MAX".into(), "10".into());
    // One subscriber that may fall behind the decoder: never close it.
    env.insert("SOCKET_QUEUE_DEPTH".into(), (rows + 1000).to_string());
    env.insert("RUST_LOG".into(), "off".into());
    let mut server = ServerProcess::spawn(env)?;
    stack::wait_for(&mut server, "/healthz").await?;
    let mut ws = client::connect_joined(
        server.port,
        client::source_addr(0),
        &Join::Legacy("realtime:public:ingest".into()),
    )
    .await?;
    let meter = CpuMeter::start(vec![
        ("server", Who::Pid(server.pid())),
        ("postgres", Who::Postgres(pg.data_dir())),
        ("load generator", Who::LoadGenerator),
    ]);
    stack::gate_server(pg, db, false).await?;
    let mut got = 0usize;
    while got < rows {
        let msg = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .context("no change for 120 s")?
            .context("the server closed the socket")??;
        if let Message::Text(t) = msg {
            if t.as_str().contains("\"event\":\"INSERT\"") {
                got += 1;
            }
        }
    }
    let (wall, cpu) = meter.stop();
    let rate = rows as f64 / wall.as_secs_f64();
    drop(ws);
    drop(server);

    report::figure(&format!("{name}.server"), rate, "rows/s");
    report::figure(&format!("{name}.pg_recvlogical"), ref_rate, "rows/s");
    report::ratio(
        &format!("{name}.server_vs_pg_recvlogical"),
        rate,
        ref_rate,
        "server rows/s delivered to a WebSocket / pg_recvlogical rows/s to /dev/null",
        Some(Target::AtLeast(0.9)),
    );
    report::cpu(&format!("{name}.server"), wall, &cpu);
    report::cpu(&format!("{name}.pg_recvlogical"), ref_wall, &ref_cpu);
    let server_cpu = cpu[0].1.seconds;
    report::figure(
        &format!("{name}.server_cpu_per_million_rows"),
        server_cpu / (rows as f64 / 1e6),
        "CPU s",
    );
    Ok(())
}

//! Database cost (scenario 6): pgbench TPS of a write workload (one-row INSERTs into a
//! published table) with no consumer, with the server streaming it to one
//! subscriber, and with the trigger-plus-NOTIFY alternative (a row trigger
//! calling `pg_notify` and a LISTEN client), side by side in one run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Join};
use crate::opts::Opts;
use crate::report::{self, Target};
use crate::stack::{self, TempPostgres};
use crate::sys::{CpuMeter, Who};

const SCHEMA: &str = "
    CREATE TABLE dbc (id bigserial PRIMARY KEY, v int, body text);
    CREATE PUBLICATION bench FOR TABLE dbc;
    CREATE FUNCTION dbc_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_notify('dbc', row_to_json(NEW)::text); RETURN NEW; END $$;";

const SCRIPT: &str = "INSERT INTO dbc (v, body) VALUES (1, 'a short body');\n";

pub async fn run(opts: &Opts) -> anyhow::Result<()> {
    let secs = opts.size(opts.seconds, 15, 1);
    let clients = opts.size(opts.clients, 4, 2);
    let (pg, db) = TempPostgres::with_schema(SCHEMA).await?;
    let script = tempfile::NamedTempFile::new()?;
    std::fs::write(script.path(), SCRIPT)?;
    // pgbench may run as another user (postgres) than this process.
    std::fs::set_permissions(
        script.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    report::section(&format!(
        "database cost: pgbench, {clients} clients, one-row INSERTs, {secs} s per case"
    ));

    // No consumer.
    let (base, base_cpu) = pgbench(&pg, script.path(), clients, secs, &[]).await?;

    // The server streaming every row to one subscriber.
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
                if matches!(m, Message::Text(_)) {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let (with_server, server_cpu) = pgbench(
        &pg,
        script.path(),
        clients,
        secs,
        &[("server", server.pid())],
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server_got = received.load(Ordering::Relaxed);
    counter.abort();
    drop(server);

    // Trigger + NOTIFY with a LISTEN client.
    db.batch_execute(
        "CREATE TRIGGER dbc_notify AFTER INSERT ON dbc FOR EACH ROW EXECUTE FUNCTION dbc_notify()",
    )
    .await?;
    let notified = Arc::new(AtomicU64::new(0));
    let (listener, listening) = listen(&pg, "dbc", notified.clone()).await?;
    let (with_notify, notify_cpu) = pgbench(&pg, script.path(), clients, secs, &[]).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let notify_got = notified.load(Ordering::Relaxed);
    listener.abort();
    drop(listening);
    db.batch_execute("DROP TRIGGER dbc_notify ON dbc").await?;

    report::figure("dbcost.no_consumer.tps", base.tps, "tps");
    report::figure("dbcost.with_server.tps", with_server.tps, "tps");
    report::figure("dbcost.trigger_notify.tps", with_notify.tps, "tps");
    report::note(&format!(
        "delivered: server {server_got} of {} rows to its subscriber; NOTIFY {notify_got} of {} to LISTEN",
        with_server.transactions, with_notify.transactions
    ));
    report::ratio(
        "dbcost.with_server_vs_no_consumer",
        with_server.tps,
        base.tps,
        "TPS with the server streaming / TPS with no consumer",
        Some(Target::AtLeast(0.9)),
    );
    report::ratio(
        "dbcost.trigger_notify_vs_no_consumer",
        with_notify.tps,
        base.tps,
        "TPS with trigger+NOTIFY / TPS with no consumer",
        None,
    );
    report::ratio(
        "dbcost.with_server_vs_trigger_notify",
        with_server.tps,
        with_notify.tps,
        "TPS with the server / TPS with trigger+NOTIFY",
        None,
    );
    let wall = Duration::from_secs(secs as u64);
    report::cpu("dbcost.no_consumer", wall, &base_cpu);
    report::cpu("dbcost.with_server", wall, &server_cpu);
    report::cpu("dbcost.trigger_notify", wall, &notify_cpu);
    Ok(())
}

struct Bench {
    tps: f64,
    transactions: u64,
}

/// Runs pgbench with `script`; CPU of postgres, pgbench and `extra` pids.
async fn pgbench(
    pg: &TempPostgres,
    script: &std::path::Path,
    clients: usize,
    secs: usize,
    extra: &[(&'static str, u32)],
) -> anyhow::Result<(Bench, Vec<(&'static str, crate::sys::CpuDelta)>)> {
    let mut who = vec![
        ("postgres", Who::Postgres(pg.data_dir())),
        ("pgbench", Who::ReapedChildren),
        ("load generator (subscriber or LISTEN)", Who::LoadGenerator),
    ];
    for (name, pid) in extra {
        who.push((name, Who::Pid(*pid)));
    }
    let meter = CpuMeter::start(who);
    let mut cmd = pg.client_command("pgbench");
    cmd.args(["-n", "-c", &clients.to_string(), "-j", "2"])
        .args(["-T", &secs.to_string(), "-f"])
        .arg(script)
        .arg("postgres");
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let (_, cpu) = meter.stop();
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next()?.parse().ok())
        .context("pgbench printed no `tps = `")?;
    let transactions = text
        .lines()
        .find(|l| l.starts_with("number of transactions actually processed:"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    Ok((Bench { tps, transactions }, cpu))
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

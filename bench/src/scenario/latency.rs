//! Latency (scenario 2): commit-to-client p50/p99/p99.9 at a steady rate of one-row
//! transactions with many subscribed sockets (realtime-js 1.x, one table
//! topic), against the same rows as delivered by the database itself to
//! `pg_recvlogical` in the same run.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::client::{self, Join};
use crate::load::{self, Phase, Reference, Samples};
use crate::opts::Opts;
use crate::report;
use crate::stack::{self, TempPostgres, STAMP_SQL};
use crate::sys::{CpuMeter, Who};

const SCHEMA: &str = "
    CREATE TABLE lat (id bigint PRIMARY KEY, sent_us bigint NOT NULL, body text);
    CREATE PUBLICATION bench FOR TABLE lat;";

/// Target for p99 on loopback.
const P99_TARGET_MS: f64 = 10.0;

pub async fn run(opts: &Opts) -> anyhow::Result<()> {
    let sockets = opts.size(opts.sockets, 1_000, 20);
    let rates = opts.list(&opts.rates, &[1_000, 5_000], &[100, 300]);
    let secs = opts.size(opts.seconds, 10, 1);
    let (pg, db) = TempPostgres::with_schema(SCHEMA).await?;
    let phase = Phase::default();
    let reference = Reference::start(&pg, &db, "bench_ref", &phase).await?;
    let server = stack::start_server(stack::server_env(&pg, "bench")).await?;
    let t = std::time::Instant::now();
    let ws = client::connect_many(server.port, sockets, 0, |_| {
        Join::Legacy("realtime:public:lat".into())
    })
    .await?;
    report::note(&format!(
        "{sockets} sockets joined realtime:public:lat in {:.2} s",
        t.elapsed().as_secs_f64()
    ));
    let stop = CancellationToken::new();
    let readers = load::spawn_readers(ws, false, &phase, &stop);
    let writers = load::writers(&pg, 4).await?;
    let sql = |i: u64| format!("INSERT INTO lat VALUES ({i}, {STAMP_SQL}, 'a short body')");

    let mut row = 0u64;
    let mut cpu_lines = Vec::new();
    for (p, &rate) in rates.iter().enumerate() {
        // Warm-up, not recorded.
        row += load::write_at_rate(&writers, rate, Duration::from_secs(1), row, sql).await?;
        phase.set(p + 1);
        let meter = CpuMeter::start(vec![
            ("server", Who::Pid(server.pid())),
            ("postgres", Who::Postgres(pg.data_dir())),
            ("pg_recvlogical", Who::Pid(reference.pid())),
            ("load generator", Who::LoadGenerator),
        ]);
        let n =
            load::write_at_rate(&writers, rate, Duration::from_secs(secs as u64), row, sql).await?;
        row += n;
        // Let what was committed arrive before the phase ends.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (wall, cpu) = meter.stop();
        phase.set(0);
        cpu_lines.push((rate, n, wall, cpu));
    }
    stop.cancel();
    let mut all = Vec::new();
    for r in readers {
        all.push(r.await?);
    }

    for (p, (rate, n, wall, cpu)) in cpu_lines.into_iter().enumerate() {
        let name = format!("latency.{rate}_per_s");
        report::section(&format!(
            "latency: {rate} changes/s, {sockets} subscribed sockets (realtime-js 1.x topic)"
        ));
        let mut server_s = Samples::merge(all.iter().cloned(), p + 1);
        let mut ref_s = reference.samples(p + 1);
        let expected = n as usize * sockets;
        report::note(&format!(
            "{n} rows committed; {} of {expected} frames received by the sockets, {} rows by pg_recvlogical",
            server_s.len(),
            ref_s.len()
        ));
        let (Some(s), Some(r)) = (
            report::percentiles(&mut server_s),
            report::percentiles(&mut ref_s),
        ) else {
            report::note("no samples");
            continue;
        };
        for (i, q) in ["p50", "p99", "p99.9", "max"].iter().enumerate() {
            report::figure(&format!("{name}.server.{q}"), s[i], "ms");
        }
        for (i, q) in ["p50", "p99", "p99.9"].iter().enumerate() {
            report::figure(&format!("{name}.pg_recvlogical.{q}"), r[i], "ms");
        }
        report::figure(&format!("{name}.server_added.p50"), s[0] - r[0], "ms");
        report::figure(&format!("{name}.server_added.p99"), s[1] - r[1], "ms");
        report::figure(
            &format!("{name}.frames_per_s"),
            server_s.len() as f64 / wall.as_secs_f64(),
            "frames/s",
        );
        report::ratio(
            &format!("{name}.p99_vs_target"),
            s[1],
            P99_TARGET_MS,
            "server p99 / 10 ms",
            Some(report::Target::AtMost(1.0)),
        );
        report::ratio(
            &format!("{name}.p99_vs_pg_recvlogical"),
            s[1],
            r[1],
            "server p99 / pg_recvlogical p99",
            None,
        );
        report::cpu(&name, wall, &cpu);
    }
    let warnings = server.warnings();
    report::server_warnings(&warnings);
    reference.stop().await;
    Ok(())
}

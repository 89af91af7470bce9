//! Filters (scenario 5): sockets each with its own `id=eq.N` postgres_changes binding
//! (realtime-js 2.x) at a steady rate, every change matching exactly one
//! socket: latency and server CPU with many sockets against a few, in the
//! same run on the same server. The subscription index should make them
//! about the same. A third run gives the many sockets two conditions each,
//! `id=eq.N,body=like.*short*`: the hub indexes such a filter by its `eq`
//! and checks the pattern only on the one binding it finds, so it should
//! cost about what `id=eq.N` alone does.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::client::{self, Join};
use crate::load::{self, Phase, Samples};
use crate::opts::Opts;
use crate::report::{self, Target};
use crate::stack::{self, TempPostgres, STAMP_SQL};
use crate::sys::{self, CpuDelta, CpuMeter, Who};

const SCHEMA: &str = "
    CREATE TABLE filt (id bigint NOT NULL, sent_us bigint NOT NULL, body text);
    CREATE PUBLICATION bench FOR TABLE filt;";

struct Result {
    sockets: usize,
    /// The filter of socket 1 (socket N has N).
    filter: String,
    samples: Vec<u64>,
    rows: u64,
    wall: Duration,
    cpu: Vec<(&'static str, CpuDelta)>,
}

pub async fn run(opts: &Opts) -> anyhow::Result<()> {
    let few = opts.size(opts.few, 10, 5);
    let many = opts.size(opts.sockets, 10_000, 100);
    let rate = opts.size(opts.rate, 1_000, 200);
    let secs = opts.size(opts.seconds, 10, 1);
    let nofile = sys::raise_nofile_limit();
    let many = sys::cap_sockets(many, nofile);
    sys::warn_about_limits(many, client::PER_SOURCE, nofile);
    let (pg, _db) = TempPostgres::with_schema(SCHEMA).await?;
    let server = stack::start_server(stack::server_env(&pg, "bench")).await?;
    let writers = load::writers(&pg, 4).await?;
    let mut results = Vec::new();
    let eq = |i: usize| format!("id=eq.{}", i + 1);
    let two = |i: usize| format!("id=eq.{},body=like.*short*", i + 1);
    let runs: [(usize, &dyn Fn(usize) -> String); 3] = [(few, &eq), (many, &eq), (many, &two)];
    for (n, filter) in runs {
        let t = std::time::Instant::now();
        let ws = client::connect_many(server.port, n, 0, |i| Join::PostgresChanges {
            table: "filt".into(),
            filter: filter(i),
        })
        .await?;
        report::note(&format!(
            "{n} sockets joined with their own {} binding in {:.2} s",
            filter(0),
            t.elapsed().as_secs_f64()
        ));
        let phase = Phase::default();
        let stop = CancellationToken::new();
        let readers = load::spawn_readers(ws, true, &phase, &stop);
        let sql = move |i: u64| {
            format!(
                "INSERT INTO filt VALUES ({}, {STAMP_SQL}, 'a short body')",
                i % n as u64 + 1
            )
        };
        load::write_at_rate(&writers, rate, Duration::from_secs(1), 0, sql).await?;
        phase.set(1);
        let meter = CpuMeter::start(vec![
            ("server", Who::Pid(server.pid())),
            ("postgres", Who::Postgres(pg.data_dir())),
            ("load generator", Who::LoadGenerator),
        ]);
        let rows =
            load::write_at_rate(&writers, rate, Duration::from_secs(secs as u64), 0, sql).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (wall, cpu) = meter.stop();
        phase.set(0);
        stop.cancel();
        let mut all = Vec::new();
        for r in readers {
            all.push(r.await?);
        }
        results.push(Result {
            sockets: n,
            filter: filter(0),
            samples: Samples::merge(all, 1),
            rows,
            wall,
            cpu,
        });
    }

    report::section(&format!(
        "filters: {rate} changes/s, each to one of N sockets by its own id=eq.N binding \
         (then id=eq.N,body=like.*short*)"
    ));
    let mut p99 = Vec::new();
    let mut server_cpu = Vec::new();
    for r in &mut results {
        let name = match r.filter.contains(',') {
            false => format!("filters.{}_sockets", r.sockets),
            true => format!("filters.{}_sockets_two_conditions", r.sockets),
        };
        report::note(&format!(
            "{} sockets ({}): {} rows committed, {} frames received",
            r.sockets,
            r.filter,
            r.rows,
            r.samples.len()
        ));
        let Some(q) = report::percentiles(&mut r.samples) else {
            report::note("no samples");
            p99.push(f64::NAN);
            server_cpu.push(f64::NAN);
            continue;
        };
        report::figure(&format!("{name}.p50"), q[0], "ms");
        report::figure(&format!("{name}.p99"), q[1], "ms");
        report::figure(&format!("{name}.p99.9"), q[2], "ms");
        let cores = r.cpu[0].1.seconds / r.wall.as_secs_f64();
        report::figure(&format!("{name}.server_cpu"), 100.0 * cores, "% of a core");
        report::cpu(&name, r.wall, &r.cpu);
        p99.push(q[1]);
        server_cpu.push(cores);
    }
    report::ratio(
        "filters.p99_many_vs_few",
        p99[1],
        p99[0],
        &format!("p99 with {many} sockets / with {few}"),
        Some(Target::AtMost(2.0)),
    );
    report::ratio(
        "filters.server_cpu_many_vs_few",
        server_cpu[1],
        server_cpu[0],
        &format!("server CPU with {many} sockets / with {few}"),
        Some(Target::AtMost(2.0)),
    );
    report::ratio(
        "filters.p99_two_conditions_vs_one",
        p99[2],
        p99[1],
        &format!("p99 with {many} sockets: id=eq.N,body=like.*short* / id=eq.N"),
        Some(Target::AtMost(2.0)),
    );
    report::ratio(
        "filters.server_cpu_two_conditions_vs_one",
        server_cpu[2],
        server_cpu[1],
        &format!("server CPU with {many} sockets: two conditions / one"),
        Some(Target::AtMost(2.0)),
    );
    Ok(())
}

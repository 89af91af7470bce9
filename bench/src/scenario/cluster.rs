//! Cluster (scenario 7): Broadcast and Presence across servers.
//!
//! Part 1, the bus candidates on the same PostgreSQL, one after the other:
//! `pg_notify` read by a `LISTEN`ing connection, and `pg_logical_emit_message`
//! (non-transactional and transactional) decoded from a pgoutput replication
//! stream with `messages`. Latency p50/p99 at a steady rate, WAL bytes per
//! message, and the latency while a bulk load is decoded in the same stream.
//!
//! Part 2, the servers: two servers on one PostgreSQL, one sender socket on
//! server A, receivers on A (same server) and on B (across servers), all on
//! one topic: every message reaches both groups, so the two latencies come
//! from the same messages in one run. Then database CPU per 1,000
//! cross-server broadcasts/s, and presence convergence: 1,000 members, half
//! on each server, tracked and then disconnected, timed until an observer on
//! each server has seen every join and every leave.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Join, Ws};
use crate::load::{self, Phase, Samples};
use crate::opts::Opts;
use crate::report;
use crate::stack::{self, now_us, ServerProcess as Server, TempPostgres};
use crate::sys::{CpuMeter, Who};

const SCHEMA: &str = "
    CREATE TABLE bulk (id bigint PRIMARY KEY, body text);
    CREATE PUBLICATION bench FOR TABLE bulk;";

/// `--part bus` or `--part servers` runs one half; both by default.
pub async fn run(opts: &Opts) -> anyhow::Result<()> {
    let part = opts.part.as_deref().unwrap_or("all");
    if part != "servers" {
        bus_candidates(opts).await?;
    }
    if part != "bus" {
        servers(opts).await?;
    }
    Ok(())
}

/// Which bus carries a stamped message.
#[derive(Clone, Copy, Debug)]
enum Candidate {
    Notify,
    Message { transactional: bool },
}

impl Candidate {
    fn name(self) -> &'static str {
        match self {
            Candidate::Notify => "notify",
            Candidate::Message {
                transactional: false,
            } => "logical_message",
            Candidate::Message {
                transactional: true,
            } => "logical_message_tx",
        }
    }

    fn sql(self, stamp: u64) -> String {
        match self {
            Candidate::Notify => format!("SELECT pg_notify('bench_bus', '{{\"sent_us\":{stamp}}}')"),
            Candidate::Message { transactional } => format!(
                "SELECT pg_logical_emit_message({transactional}, 'bench_bus', '{{\"sent_us\":{stamp}}}')"
            ),
        }
    }
}

/// A receiver of one candidate: latency samples per phase.
struct Receiver {
    samples: Arc<std::sync::Mutex<Samples>>,
    received: Arc<AtomicU64>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn receiver(pg: &TempPostgres, c: Candidate, phase: &Phase) -> anyhow::Result<Receiver> {
    let samples = Arc::new(std::sync::Mutex::new(Samples::default()));
    let received = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let (s, r, st, ph) = (
        samples.clone(),
        received.clone(),
        stop.clone(),
        phase.clone(),
    );
    let record = move |payload: &[u8]| {
        if let Some(sent) = client::sent_us(&String::from_utf8_lossy(payload)) {
            s.lock().unwrap().add_at(&ph, now_us().saturating_sub(sent));
            r.fetch_add(1, Ordering::Relaxed);
        }
    };
    let task = match c {
        Candidate::Notify => {
            let config: tokio_postgres::Config = pg.connection_string().parse()?;
            let (client, mut conn) = config.connect(tokio_postgres::NoTls).await?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            tokio::spawn(async move {
                let mut m = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
                while let Some(Ok(msg)) = m.next().await {
                    if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                        let _ = tx.send(n.payload().to_string());
                    }
                }
            });
            client.batch_execute("LISTEN bench_bus").await?;
            tokio::spawn(async move {
                let _client = client;
                loop {
                    tokio::select! {
                        _ = st.cancelled() => break,
                        p = rx.recv() => match p {
                            Some(p) => record(p.as_bytes()),
                            None => break,
                        }
                    }
                }
            })
        }
        Candidate::Message { .. } => {
            use pgwire_replication::{ReplicationClient, ReplicationConfig, ReplicationEvent};
            let slot = format!("bench_bus_{}", c.name());
            let db = pg.connect().await?;
            db.batch_execute(&format!(
                "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
            ))
            .await?;
            let cfg = ReplicationConfig::new(
                pg.host().to_string(),
                pg.user().to_string(),
                "unused-with-trust-auth".to_string(),
                pg.dbname().to_string(),
                slot,
                vec!["bench".to_string()],
            )
            .with_port(pg.port());
            let mut client = ReplicationClient::connect(cfg).await?;
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = st.cancelled() => break,
                        e = client.recv() => match e {
                            Ok(Some(ReplicationEvent::Message { content, .. })) => record(&content),
                            Ok(Some(ReplicationEvent::Commit { end_lsn, .. })) => client.update_applied_lsn(end_lsn),
                            Ok(Some(_)) => {}
                            _ => break,
                        }
                    }
                }
            })
        }
    };
    Ok(Receiver {
        samples,
        received,
        stop,
        task,
    })
}

impl Samples {
    fn add_at(&mut self, phase: &Phase, us: u64) {
        let p = phase.current();
        if p == 0 {
            return;
        }
        if self.per_phase.len() <= p {
            self.per_phase.resize(p + 1, Vec::new());
        }
        self.per_phase[p].push(us);
    }
}

async fn wal_lsn(db: &tokio_postgres::Client) -> anyhow::Result<String> {
    Ok(db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0))
}

async fn wal_bytes(db: &tokio_postgres::Client, from: &str) -> anyhow::Result<f64> {
    let row = db
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::float8",
            &[&from],
        )
        .await?;
    Ok(row.get(0))
}

/// Sends one stamped message every `1/rate` s for `d`, one per transaction.
async fn send_at_rate(
    db: &tokio_postgres::Client,
    c: Candidate,
    rate: usize,
    d: Duration,
) -> anyhow::Result<u64> {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < d {
        let due = start + Duration::from_secs_f64(n as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        db.batch_execute(&c.sql(now_us())).await?;
        n += 1;
    }
    Ok(n)
}

async fn bus_candidates(opts: &Opts) -> anyhow::Result<()> {
    let rate = opts.size(opts.bus_rate, 500, 50);
    let secs = opts.size(opts.seconds, 5, 1);
    let bulk_rows = opts.size(opts.bulk_rows, 500_000, 5_000);
    let (pg, db) = TempPostgres::with_schema(SCHEMA).await?;
    let sender = pg.connect().await?;
    report::section(&format!(
        "cluster bus candidates: {rate} messages/s for {secs} s, one per transaction; then during a {bulk_rows}-row bulk load"
    ));
    for c in [
        Candidate::Notify,
        Candidate::Message {
            transactional: false,
        },
        Candidate::Message {
            transactional: true,
        },
    ] {
        let phase = Phase::default();
        let r = receiver(&pg, c, &phase).await?;
        // Warm-up.
        send_at_rate(&sender, c, rate, Duration::from_millis(500)).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let from = wal_lsn(&db).await?;
        phase.set(1);
        let meter = CpuMeter::start(vec![("postgres", Who::Postgres(pg.data_dir()))]);
        let n = send_at_rate(&sender, c, rate, Duration::from_secs(secs as u64)).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (wall, cpu) = meter.stop();
        let wal = wal_bytes(&db, &from).await?;
        // The same rate while a bulk load commits in the same database: a
        // replication stream decodes the load before what follows it.
        phase.set(2);
        let loader = pg.connect().await?;
        let rows = bulk_rows;
        let load = tokio::spawn(async move {
            loader
                .batch_execute(&format!(
                    "INSERT INTO bulk SELECT g, repeat('x', 100) FROM generate_series(1, {rows}) g; \
                     DELETE FROM bulk"
                ))
                .await
        });
        let n2 = send_at_rate(&sender, c, rate, Duration::from_secs(secs as u64)).await?;
        load.await??;
        // Let the stream catch up before the phase ends.
        let deadline = Instant::now() + Duration::from_secs(60);
        while r.received.load(Ordering::Relaxed) < (n + n2) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        phase.set(0);
        r.stop.cancel();
        let _ = r.task.await;
        let name = format!("cluster.bus.{}", c.name());
        let samples = r.samples.lock().unwrap().clone();
        let mut steady = Samples::merge([samples.clone()], 1);
        let mut loaded = Samples::merge([samples], 2);
        report::note(&format!(
            "{}: {} of {n} received steady, {} of {n2} during the bulk load",
            c.name(),
            steady.len(),
            loaded.len()
        ));
        if let Some(p) = report::percentiles(&mut steady) {
            report::figure(&format!("{name}.p50"), p[0], "ms");
            report::figure(&format!("{name}.p99"), p[1], "ms");
        }
        if let Some(p) = report::percentiles(&mut loaded) {
            report::figure(&format!("{name}.during_bulk_load.p50"), p[0], "ms");
            report::figure(&format!("{name}.during_bulk_load.p99"), p[1], "ms");
            report::figure(&format!("{name}.during_bulk_load.max"), p[3], "ms");
        }
        report::figure(
            &format!("{name}.wal_bytes_per_message"),
            wal / n.max(1) as f64,
            "B",
        );
        report::cpu(&name, wall, &cpu);
    }
    Ok(())
}

/// A v2 broadcast frame stamped with the send time.
fn broadcast_frame(r: u64) -> Message {
    Message::text(format!(
        "[\"1\",\"{r}\",\"realtime:room\",\"broadcast\",{{\"type\":\"broadcast\",\"event\":\"m\",\"payload\":{{\"sent_us\":{}}}}}]",
        now_us()
    ))
}

async fn servers(opts: &Opts) -> anyhow::Result<()> {
    let receivers = opts.size(opts.receivers, 100, 5);
    let rates = opts.list(&opts.rates, &[1_000, 5_000], &[100]);
    let secs = opts.size(opts.seconds, 5, 1);
    let members = opts.size(opts.members, 1_000, 20);
    let (pg, _db) = TempPostgres::with_schema(SCHEMA).await?;
    // One sender socket at thousands of broadcasts/s and 1,000 presences
    // on one topic: the per-socket and per-topic limits are not measured.
    let env = || {
        let mut env = stack::server_env(&pg, "bench");
        env.insert("MAX_EVENTS_PER_SECOND".into(), "1000000".into());
        env.insert("MAX_PRESENCE_MEMBERS".into(), "100000".into());
        env
    };
    let a = stack::start_server(env()).await?;
    let b = stack::start_server(env()).await?;
    // Both buses up and each server seeing the other.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let local = client::connect_many(a.port, receivers, 0, |_| {
        Join::Channel("realtime:room".into())
    })
    .await?;
    let across = client::connect_many(b.port, receivers, receivers, |_| {
        Join::Channel("realtime:room".into())
    })
    .await?;
    let mut sender = client::connect_joined(
        a.port,
        client::source_addr(0),
        &Join::Channel("realtime:room".into()),
    )
    .await?;
    let phase = Phase::default();
    let stop = CancellationToken::new();
    let local_r = load::spawn_readers(local, true, &phase, &stop);
    let across_r = load::spawn_readers(across, true, &phase, &stop);
    // Drain the sender's own socket (replies) so it never backs up.
    let mut results = Vec::new();
    let mut r = 0u64;
    for (p, &rate) in rates.iter().enumerate() {
        for _ in 0..rate / 2 {
            r += 1;
            sender.send(broadcast_frame(r)).await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        phase.set(p + 1);
        let meter = CpuMeter::start(vec![
            ("server A", Who::Pid(a.pid())),
            ("server B", Who::Pid(b.pid())),
            ("postgres", Who::Postgres(pg.data_dir())),
        ]);
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(secs as u64) {
            let due = start + Duration::from_secs_f64(n as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
            r += 1;
            n += 1;
            sender.send(broadcast_frame(r)).await?;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (wall, cpu) = meter.stop();
        phase.set(0);
        results.push((rate, n, wall, cpu));
    }
    stop.cancel();
    drop(sender);
    let mut local_s = Vec::new();
    for h in local_r {
        local_s.push(h.await?);
    }
    let mut across_s = Vec::new();
    for h in across_r {
        across_s.push(h.await?);
    }
    for (p, (rate, n, wall, cpu)) in results.into_iter().enumerate() {
        let name = format!("cluster.broadcast.{rate}_per_s");
        report::section(&format!(
            "cluster broadcast: {rate} msg/s from one socket on server A to {receivers} sockets on A and {receivers} on B"
        ));
        let mut same = Samples::merge(local_s.iter().cloned(), p + 1);
        let mut cross = Samples::merge(across_s.iter().cloned(), p + 1);
        report::note(&format!(
            "{n} sent; {} of {} frames received on A, {} of {} on B",
            same.len(),
            n as usize * receivers,
            cross.len(),
            n as usize * receivers
        ));
        let w = wall.as_secs_f64();
        report::figure(
            &format!("{name}.same_server.frames_per_s"),
            same.len() as f64 / w,
            "frames/s",
        );
        report::figure(
            &format!("{name}.across.frames_per_s"),
            cross.len() as f64 / w,
            "frames/s",
        );
        if let (Some(s), Some(c)) = (
            report::percentiles(&mut same),
            report::percentiles(&mut cross),
        ) {
            report::figure(&format!("{name}.same_server.p50"), s[0], "ms");
            report::figure(&format!("{name}.same_server.p99"), s[1], "ms");
            report::figure(&format!("{name}.across.p50"), c[0], "ms");
            report::figure(&format!("{name}.across.p99"), c[1], "ms");
            report::ratio(
                &format!("{name}.across_vs_same_p99"),
                c[1],
                s[1],
                "p99 across / p99 same server",
                None,
            );
        }
        let pg_cpu = cpu
            .iter()
            .find(|(w, _)| *w == "postgres")
            .map(|(_, d)| d.seconds)
            .unwrap_or(0.0);
        report::figure(
            &format!("{name}.postgres_cores_per_1000_per_s"),
            pg_cpu / w / (rate as f64 / 1000.0),
            "cores",
        );
        report::cpu(&name, wall, &cpu);
    }

    presence(&a, &b, members).await?;
    let mut warnings = a.warnings();
    warnings.extend(b.warnings());
    report::server_warnings(&warnings);
    Ok(())
}

/// Counts presence joins and leaves seen by an observer socket.
fn observe(
    mut ws: Ws,
    joins: Arc<AtomicU64>,
    leaves: Arc<AtomicU64>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let count = |v: &Value| -> u64 {
            v.as_object()
                .map(|o| {
                    o.values()
                        .map(|e| e["metas"].as_array().map_or(0, |m| m.len()) as u64)
                        .sum()
                })
                .unwrap_or(0)
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                m = ws.next() => {
                    let Some(Ok(Message::Text(t))) = m else { break };
                    let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else { continue };
                    match v[3].as_str() {
                        Some("presence_diff") => {
                            joins.fetch_add(count(&v[4]["joins"]), Ordering::Relaxed);
                            leaves.fetch_add(count(&v[4]["leaves"]), Ordering::Relaxed);
                        }
                        Some("presence_state") => {
                            joins.fetch_add(count(&v[4]), Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            }
        }
    })
}

async fn presence(a: &Server, b: &Server, members: usize) -> anyhow::Result<()> {
    report::section(&format!(
        "cluster presence: {members} members, half on each server, tracked then disconnected"
    ));
    let topic = "realtime:lobby";
    let stop = CancellationToken::new();
    let mut counters = Vec::new();
    for (i, s) in [a, b].iter().enumerate() {
        let ws = client::connect_joined(
            s.port,
            client::source_addr(2 * members + i),
            &Join::Channel(topic.into()),
        )
        .await?;
        let (j, l) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        observe(ws, j.clone(), l.clone(), stop.clone());
        counters.push((j, l));
    }
    let half = members / 2;
    let mut sockets =
        client::connect_many(a.port, half, 0, |_| Join::Channel(topic.into())).await?;
    sockets.extend(
        client::connect_many(b.port, members - half, half, |_| {
            Join::Channel(topic.into())
        })
        .await?,
    );
    let start = Instant::now();
    for (i, ws) in sockets.iter_mut().enumerate() {
        let frame = json!(["1", "2", topic, "presence", {"type": "presence", "event": "track", "payload": {"member": i}}]);
        ws.send(Message::text(frame.to_string())).await?;
    }
    let converged = |which: fn(&(Arc<AtomicU64>, Arc<AtomicU64>)) -> u64| {
        counters.iter().all(|c| which(c) >= members as u64)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !converged(|c| c.0.load(Ordering::Relaxed)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let joined = start.elapsed();
    let start = Instant::now();
    drop(sockets);
    while !converged(|c| c.1.load(Ordering::Relaxed)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let left = start.elapsed();
    report::note(&format!(
        "observers saw joins {:?} and leaves {:?}",
        counters
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed))
            .collect::<Vec<_>>(),
        counters
            .iter()
            .map(|c| c.1.load(Ordering::Relaxed))
            .collect::<Vec<_>>()
    ));
    report::figure(
        "cluster.presence.join_convergence",
        joined.as_secs_f64() * 1000.0,
        "ms",
    );
    report::figure(
        "cluster.presence.leave_convergence",
        left.as_secs_f64() * 1000.0,
        "ms",
    );
    stop.cancel();
    Ok(())
}

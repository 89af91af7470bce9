//! Storm (scenario 9): the server killed (SIGKILL) and started again on the
//! same port under many realtime-js 2.x sockets, each with one
//! `postgres_changes` binding, while a writer commits numbered rows.
//!
//! Every socket reconnects and rejoins at once when its socket closes (as
//! realtime-js does, without its backoff), retrying until the new server
//! answers. Measured: the time from the new server's start (and from its
//! first accepted connection) to the last socket's join reply, the joined
//! sockets over time, join failures, and per socket the changes it never
//! received, received twice or out of order. The server streams from a
//! durable slot with its default `RESUME_DELAY_MS`: the pause it takes
//! after a restart so that clients rejoin before the backlog is streamed.
//!
//! The same-run reference: the same sockets connecting and joining a
//! broadcast-only channel (no `postgres_changes` binding) on the same
//! server: this machine's WebSocket + join floor.
//!
//! Channels are secured, each socket signed in as its own user (role
//! `authenticated`, a distinct `sub`), as clients of a Supabase project
//! are: a join then also verifies the token and finds the user's
//! authorization group. The table has no row level security and is granted
//! to `authenticated`, so no check statement runs per change.
//!
//! Each row has `k = seq % sockets` and socket `i` filters `k=eq.i`: every
//! change goes to exactly one socket, so what each socket should have
//! received is known without recording anything at the writer.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::stream::FuturesOrdered;
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::chart::{self, Series};
use crate::client::{self, Ws};
use crate::load::HEARTBEAT;
use crate::opts::Opts;
use crate::report::{self, Target};
use crate::stack::{self, ServerProcess, TempPostgres};
use crate::sys::{self, CpuMeter, Who};

const SCHEMA: &str = "
    CREATE TABLE storm (seq bigint PRIMARY KEY, k int NOT NULL);
    CREATE PUBLICATION bench FOR TABLE storm;";

/// After the authorization setup (which creates the role): the signed-in
/// users may read the table.
const GRANT: &str = "GRANT SELECT ON storm TO authenticated;";

const SECRET: &str = "a-benchmark-secret-of-reasonable-length";

/// The server's durable slot: what a restart resumes from.
const SLOT: &str = "bench_storm";

/// Target: every socket rejoined within this after the new server started.
const TARGET_S: f64 = 2.0;

/// Connections being opened and joined at once by the load generator: the
/// server's listen backlog (128, what `ss -ltn` shows), so that the load
/// generator alone cannot fill the accept queue: a SYN dropped there is
/// retried after 1 s, and that is not what is measured (the kernel's count
/// of such drops is printed). The broadcast reference is opened the same
/// way.
const IN_FLIGHT: usize = 128;

/// Pause between connection attempts while no server listens.
const RETRY: Duration = Duration::from_millis(50);

/// A join with no reply within this is given up and sent again
/// (realtime-js's `DEFAULT_TIMEOUT`).
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long no server runs between the kill and the start of the next.
const DOWNTIME: Duration = Duration::from_secs(1);

/// How often the joined sockets are counted for the chart.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// Longest wait for every socket to join (or rejoin).
const JOIN_ALL_WITHIN: Duration = Duration::from_secs(120);

/// Delivery has drained once nothing arrived for this long...
const DRAIN_QUIET: Duration = Duration::from_secs(1);
/// ...or at the latest after this.
const DRAIN_AT_MOST: Duration = Duration::from_secs(15);

pub async fn run(opts: &Opts) -> anyhow::Result<()> {
    let nofile = sys::raise_nofile_limit();
    let sockets = sys::cap_sockets(opts.size(opts.sockets, 10_000, 50), nofile);
    let rate = opts.size(opts.rate, 200, 100);
    sys::warn_about_limits(sockets, client::PER_SOURCE, nofile);
    // Writing before the kill and after the last rejoin.
    let steady = Duration::from_millis(if opts.smoke { 500 } else { 2_000 });
    report::section(&format!(
        "storm: {sockets} realtime-js 2.x sockets (one postgres_changes binding each) \
         rejoining after kill -9 of the server, {rate} changes/s throughout"
    ));

    let (pg, db) = TempPostgres::with_schema(SCHEMA).await?;
    let setup = realtime_contract::authorization::setup_transaction(pg.user());
    db.batch_execute(&setup)
        .await
        .context("the authorization setup")?;
    db.batch_execute(GRANT).await?;
    let mut env = stack::server_env(&pg, "bench");
    // The pause for rejoining clients is the point here (stack::server_env
    // turns it off for the other scenarios).
    env.remove("RESUME_DELAY_MS");
    env.insert("SLOT_NAME".into(), SLOT.into());
    env.insert("SECURE_CHANNELS".into(), "true".into());
    env.insert("JWT_SECRET".into(), SECRET.into());
    // The replication stream says how long it waited after the restart.
    env.insert(
        "RUST_LOG".into(),
        "warn,realtime_server::replication::stream=info".into(),
    );
    let mut server = stack::start_server(env.clone()).await?;
    let port = server.port;
    let exp = stack::now_us() / 1_000_000 + 24 * 3600;
    let tokens: Vec<String> = (0..sockets)
        .map(|i| {
            encode(
                &Header::default(),
                &json!({"role": "authenticated", "sub": user_id(i), "exp": exp}),
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .expect("HS256 signs")
        })
        .collect();

    // The reference: the same sockets joining a broadcast-only channel.
    let reference = Crowd::start(port, sockets, 0, |i| Member::broadcast(&tokens[i]));
    let joined = reference.all_joined(sockets, JOIN_ALL_WITHIN).await;
    let reference = reference.finish().await;
    joined.with_context(|| {
        format!(
            "the broadcast reference: {}",
            reference.failures_between(reference.epoch, Instant::now())
        )
    })?;
    let broadcast = reference.last_first_join();
    report::note(&format!(
        "reference: {sockets} sockets joined a broadcast-only channel in {:.2} s",
        broadcast.as_secs_f64()
    ));

    // Phase 1: the same sockets join with one postgres_changes binding each,
    // from other source addresses (the reference's closed sockets wait in
    // TIME_WAIT on theirs).
    let offset = sockets.div_ceil(client::PER_SOURCE) * client::PER_SOURCE;
    let crowd = Crowd::start(port, sockets, offset, |i| Member::changes(i, &tokens[i]));
    crowd
        .all_joined(sockets, JOIN_ALL_WITHIN)
        .await
        .with_context(|| {
            format!(
                "the first join: {}",
                crowd.failures_between(crowd.epoch, Instant::now())
            )
        })?;
    crowd
        .all_subscribed(sockets, JOIN_ALL_WITHIN)
        .await
        .context("waiting for every socket's \"Subscribed to PostgreSQL\"")?;

    // Phase 2: the writer runs throughout; the server is killed under it.
    let committed = Arc::new(AtomicU64::new(0));
    let stop_writer = CancellationToken::new();
    let writer = tokio::spawn(write_until(
        pg.connect().await?,
        rate,
        sockets,
        committed.clone(),
        stop_writer.clone(),
    ));
    tokio::time::sleep(steady).await;
    let at_kill = committed.load(Ordering::SeqCst);
    crowd.next_round();
    let killed = Instant::now();
    tokio::task::block_in_place(|| server.stop("KILL", Duration::from_secs(10)))
        .context("kill -9 of the server")?;
    let old_warnings = server.warnings();
    tokio::time::sleep(DOWNTIME).await;
    let at_start = committed.load(Ordering::SeqCst);
    let started = Instant::now();
    let server = tokio::task::block_in_place(|| ServerProcess::spawn(env.clone()))
        .context("starting the server again on the same port")?;
    let overflows = sys::listen_overflows();
    let meter = CpuMeter::start(vec![
        ("server", Who::Pid(server.pid())),
        ("postgres", Who::Postgres(pg.data_dir())),
        ("load generator", Who::LoadGenerator),
    ]);
    let ready = tokio::task::spawn_blocking(move || first_ready(port, JOIN_ALL_WITHIN));
    let rejoined = crowd.all_joined(sockets, JOIN_ALL_WITHIN).await;
    let (wall, cpu) = meter.stop();
    let overflows = sys::listen_overflows() - overflows;
    let at_rejoined = committed.load(Ordering::SeqCst);
    if let Err(e) = &rejoined {
        report::note(&format!("the rejoin: {e:#}"));
    }
    tokio::time::sleep(steady).await;
    stop_writer.cancel();
    let total = writer.await?.context("the writer")?;
    crowd.drained().await;
    let ready = ready.await?;
    let crowd = crowd.finish().await;
    let first_join = crowd.last_first_join();
    report::note(&format!(
        "{sockets} sockets joined with a postgres_changes binding in {:.2} s",
        first_join.as_secs_f64()
    ));

    // What the new server did with its backlog.
    let log = server.log();
    if let Some(line) = log
        .lines()
        .find(|l| l.contains("streaming the backlog") || l.contains("no change to replay"))
    {
        report::note(&format!("restarted server: {}", line.trim()));
    }

    // Timings from the logs.
    let ref_curve = crowd_curve(&reference, reference.epoch, None);
    let first_curve = crowd_curve(&crowd, crowd.epoch, Some(killed));
    // From just before the kill (negative: before the new server started).
    let storm_from = signed_secs(killed, started) - 0.25;
    let storm_curve = crowd_curve(&crowd, started, None)
        .into_iter()
        .filter(|(t, _)| *t >= storm_from)
        .collect::<Vec<_>>();
    let firsts = |pick: fn(&SocketLog) -> &Vec<Instant>| -> Vec<Option<Instant>> {
        crowd
            .logs
            .iter()
            .map(|l| pick(l).iter().copied().find(|t| *t >= started))
            .collect()
    };
    let rejoins = firsts(|l| &l.joins);
    let first_accept = firsts(|l| &l.handshakes).into_iter().flatten().min();
    let last = |all: &[Option<Instant>]| -> Option<Duration> {
        all.iter()
            .copied()
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .max()
            .map(|t| t - started)
    };
    let rejoin_all = last(&rejoins);
    let subscribed_all = last(&firsts(|l| &l.subscribed));
    let mut rejoin_us: Vec<u64> = rejoins
        .iter()
        .flatten()
        .map(|t| (*t - started).as_micros() as u64)
        .collect();
    let rejoin_p = report::percentiles(&mut rejoin_us);
    let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
    let after_accept = match (rejoin_all, first_accept) {
        (Some(all), Some(accept)) => Some(all.saturating_sub(accept - started)),
        _ => None,
    };

    // Deliveries from the logs.
    let bounds = [at_kill, at_start, at_rejoined, total];
    let tally = Tally::count(&crowd.logs, total, &bounds);

    report::note(&format!(
        "{} of {sockets} sockets rejoined; {total} rows committed ({at_kill} before the kill, \
         {} while no server ran, {} until the last rejoin, {} after)",
        rejoins.iter().flatten().count(),
        at_start - at_kill,
        at_rejoined - at_start,
        total - at_rejoined
    ));
    report::note(&format!(
        "lost by when committed: {} before the kill, {} while no server ran, {} during the \
         rejoin, {} after; {} sockets missed at least one",
        tally.lost_by_period[0],
        tally.lost_by_period[1],
        tally.lost_by_period[2],
        tally.lost_by_period[3],
        tally.sockets_with_losses
    ));
    if tally.misrouted > 0 {
        report::note(&format!(
            "WARNING: {} changes reached a socket whose filter does not match them",
            tally.misrouted
        ));
    }
    let refused = crowd.refused;
    report::note(&format!(
        "{refused} connection attempts refused while no server listened (retried every {} ms)",
        RETRY.as_millis()
    ));
    report::note(&format!(
        "{overflows} connections dropped by a full accept queue during the rejoin (on this \
         machine: every listener counts)"
    ));
    report::note(&format!(
        "failures, first join: {}",
        crowd.failures_between(crowd.epoch, killed)
    ));
    // A connection the dying server's kernel had accepted but the server
    // never did is reset when its listener closes.
    report::note(&format!(
        "failures, from the kill to the new server's start: {}",
        crowd.failures_between(killed, started)
    ));
    report::note(&format!(
        "failures, rejoin: {}",
        crowd.failures_between(started, Instant::now())
    ));
    let storm_failures = crowd.failure_count(started, Instant::now());

    report::figure("storm.broadcast_join_all", broadcast.as_secs_f64(), "s");
    report::figure("storm.first_join_all", first_join.as_secs_f64(), "s");
    report::figure(
        "storm.ready_after_start",
        secs(ready.map(|t| t - started)),
        "s",
    );
    report::figure(
        "storm.first_accept_after_start",
        secs(first_accept.map(|t| t - started)),
        "s",
    );
    if let Some(p) = rejoin_p {
        report::figure("storm.rejoin_after_start.p50", p[0] / 1000.0, "s");
        report::figure("storm.rejoin_after_start.p99", p[1] / 1000.0, "s");
    }
    report::figure("storm.rejoin_after_start", secs(rejoin_all), "s");
    report::figure("storm.rejoin_after_first_accept", secs(after_accept), "s");
    report::figure("storm.subscribed_after_start", secs(subscribed_all), "s");
    report::figure(
        "storm.rejoins_per_s",
        sockets as f64 / secs(after_accept),
        "joins/s",
    );
    report::figure("storm.join_failures", storm_failures as f64, "failures");
    report::figure("storm.changes_committed", total as f64, "changes");
    report::figure("storm.lost_changes", tally.lost as f64, "changes");
    report::figure(
        "storm.duplicate_changes",
        tally.duplicates as f64,
        "changes",
    );
    report::figure(
        "storm.out_of_order_changes",
        tally.out_of_order as f64,
        "changes",
    );
    report::ratio(
        "storm.rejoin_vs_target",
        secs(rejoin_all),
        TARGET_S,
        "last rejoin after the new server started / 2 s",
        Some(Target::Below(1.0)),
    );
    report::ratio(
        "storm.rejoin_vs_broadcast_join",
        secs(after_accept),
        broadcast.as_secs_f64(),
        "rejoin with postgres_changes from the first accepted connection / the same sockets \
         joining a broadcast-only channel",
        None,
    );
    report::ratio(
        "storm.lost_vs_committed",
        tally.lost as f64,
        total as f64,
        "changes a subscribed socket never received / changes committed",
        Some(Target::AtMost(0.0)),
    );
    report::cpu("storm.rejoin", wall, &cpu);

    chart::time_series(
        opts.charts.as_deref(),
        "storm",
        &format!("storm: {sockets} sockets rejoining after kill -9 of the server"),
        "sockets joined",
        vec![
            Series::new("rejoin after the restart (postgres_changes)", storm_curve),
            Series::new("first join (postgres_changes)", first_curve),
            Series::new("first join (broadcast only: reference)", ref_curve),
        ],
    )?;
    let mut warnings = old_warnings;
    warnings.extend(server.warnings());
    report::server_warnings(&warnings);
    Ok(())
}

fn user_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// Commits one-row transactions at `rate` per second until `stop`, row
/// `seq` with `k = seq % sockets`, pipelined on one connection so that they
/// commit in `seq` order. `committed` holds how many have committed;
/// returns the total once every write in flight has committed.
async fn write_until(
    db: tokio_postgres::Client,
    rate: usize,
    sockets: usize,
    committed: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<u64> {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0u64;
    let mut in_flight = FuturesOrdered::new();
    let db = &db;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                let due = (rate as f64 * start.elapsed().as_secs_f64()) as u64;
                while sent < due {
                    let seq = sent;
                    let q = format!("INSERT INTO storm VALUES ({seq}, {})", seq % sockets as u64);
                    in_flight.push_back(async move {
                        db.batch_execute(&q)
                            .await
                            .with_context(|| format!("committing row {seq}"))
                            .map(|_| seq)
                    });
                    sent += 1;
                }
            }
            Some(r) = in_flight.next(), if !in_flight.is_empty() => {
                committed.store(r? + 1, Ordering::SeqCst);
            }
        }
    }
    while let Some(r) = in_flight.next().await {
        committed.store(r? + 1, Ordering::SeqCst);
    }
    Ok(sent)
}

/// When GET /readyz on `port` first answered 200 (polled every 10 ms).
fn first_ready(port: u16, within: Duration) -> Option<Instant> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some((200, _)) = realtime_harness::net::http_get(port, "/readyz") {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// `(seconds since `zero`, sockets joined)` of a crowd's samples, up to
/// `until`.
fn crowd_curve(crowd: &Finished, zero: Instant, until: Option<Instant>) -> Vec<(f64, f64)> {
    crowd
        .samples
        .iter()
        .filter(|(t, _)| until.is_none_or(|u| *t <= u))
        .map(|(t, n)| (signed_secs(*t, zero), *n as f64))
        .collect()
}

fn signed_secs(t: Instant, zero: Instant) -> f64 {
    if t >= zero {
        (t - zero).as_secs_f64()
    } else {
        -(zero - t).as_secs_f64()
    }
}

/// What one socket joins: where it connects and its join's topic and
/// payload.
struct Member {
    path: String,
    topic: &'static str,
    payload: Value,
}

impl Member {
    /// realtime-js 2.x signed in, one `postgres_changes` binding whose
    /// filter matches the rows of socket `i`.
    fn changes(i: usize, token: &str) -> Member {
        let binding = json!({"event": "*", "schema": "public", "table": "storm",
            "filter": format!("k=eq.{i}")});
        Member::v2(token, "realtime:storm", vec![binding])
    }

    /// realtime-js 2.x signed in, a channel for broadcast only.
    fn broadcast(token: &str) -> Member {
        Member::v2(token, "realtime:storm-reference", Vec::new())
    }

    fn v2(token: &str, topic: &'static str, bindings: Vec<Value>) -> Member {
        Member {
            path: format!("/socket/websocket?vsn=2.0.0&apikey={token}"),
            topic,
            payload: json!({"config": {"broadcast": {"ack": false, "self": false},
                "presence": {"key": ""}, "private": false, "postgres_changes": bindings},
                "access_token": token}),
        }
    }

    fn join(&self, r: u64) -> Message {
        let r = r.to_string();
        Message::text(json!([r, r, self.topic, "phx_join", self.payload]).to_string())
    }
}

/// A connection or join attempt that failed while a server ran.
struct Failure {
    at: Instant,
    what: &'static str,
    reason: String,
}

/// What one socket saw, for counting once the run is over.
#[derive(Default)]
struct SocketLog {
    /// `seq` of every change received, in order of arrival.
    seqs: Vec<u64>,
    /// When each WebSocket handshake succeeded.
    handshakes: Vec<Instant>,
    /// When each join was acknowledged (`phx_reply` ok).
    joins: Vec<Instant>,
    /// When each "Subscribed to PostgreSQL" arrived.
    subscribed: Vec<Instant>,
}

/// Sockets of one kind, each on its own task, and what they share: the
/// live counts the scenario waits on and samples.
struct Crowd {
    epoch: Instant,
    port: u16,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
    /// Sockets joined right now.
    joined: AtomicUsize,
    /// Sockets that joined since the round began (a restart is a round).
    round: AtomicUsize,
    round_joins: AtomicUsize,
    subscribed: AtomicUsize,
    /// Changes received, duplicates included.
    received: AtomicU64,
    refused: AtomicU64,
    failures: Mutex<Vec<Failure>>,
}

/// When the joined sockets were counted, and how many there were.
type Sample = (Instant, usize);

/// A crowd's tasks: one per socket and the sampler of the joined count.
struct Running {
    crowd: Arc<Crowd>,
    tasks: Vec<JoinHandle<SocketLog>>,
    sampler: JoinHandle<Vec<Sample>>,
}

impl std::ops::Deref for Running {
    type Target = Crowd;
    fn deref(&self) -> &Crowd {
        &self.crowd
    }
}

/// A crowd after its sockets were closed.
struct Finished {
    epoch: Instant,
    logs: Vec<SocketLog>,
    samples: Vec<Sample>,
    refused: u64,
    failures: Vec<Failure>,
}

impl Crowd {
    /// Starts `n` sockets, socket `i` from the `offset + i`th source
    /// address, joining what `member(i)` says.
    fn start(port: u16, n: usize, offset: usize, member: impl Fn(usize) -> Member) -> Running {
        let crowd = Arc::new(Crowd {
            epoch: Instant::now(),
            port,
            permits: Arc::new(Semaphore::new(IN_FLIGHT)),
            stop: CancellationToken::new(),
            joined: AtomicUsize::new(0),
            round: AtomicUsize::new(0),
            round_joins: AtomicUsize::new(0),
            subscribed: AtomicUsize::new(0),
            received: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failures: Mutex::new(Vec::new()),
        });
        let sampler = {
            let crowd = crowd.clone();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                loop {
                    tokio::select! {
                        _ = crowd.stop.cancelled() => break,
                        _ = tick.tick() => {
                            // Not the sockets closing at the end.
                            if crowd.stop.is_cancelled() {
                                break;
                            }
                            samples.push((Instant::now(), crowd.joined.load(Ordering::Relaxed)));
                        }
                    }
                }
                samples
            })
        };
        let tasks = (0..n)
            .map(|i| {
                tokio::spawn(socket(
                    crowd.clone(),
                    client::source_addr(offset + i),
                    member(i),
                ))
            })
            .collect();
        Running {
            crowd,
            tasks,
            sampler,
        }
    }

    /// Waits until `n` sockets joined in this round (a restart begins one).
    async fn all_joined(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        self.wait_for(&self.round_joins, n, within)
            .await
            .context("sockets joined")
    }

    async fn all_subscribed(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        self.wait_for(&self.subscribed, n, within)
            .await
            .context("sockets subscribed")
    }

    async fn wait_for(
        &self,
        count: &AtomicUsize,
        n: usize,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let now = count.load(Ordering::SeqCst);
            if now >= n {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {now} of {n} within {} s",
                within.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A restart: joins count anew.
    fn next_round(&self) {
        self.round.fetch_add(1, Ordering::SeqCst);
        self.round_joins.store(0, Ordering::SeqCst);
    }

    /// Waits until no change arrived for [`DRAIN_QUIET`] (at most
    /// [`DRAIN_AT_MOST`]).
    async fn drained(&self) {
        let deadline = Instant::now() + DRAIN_AT_MOST;
        let mut last = self.received.load(Ordering::SeqCst);
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline && quiet_since.elapsed() < DRAIN_QUIET {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.received.load(Ordering::SeqCst);
            if now != last {
                last = now;
                quiet_since = Instant::now();
            }
        }
    }

    fn failures_between(&self, from: Instant, to: Instant) -> String {
        describe_failures(&self.failures.lock().unwrap(), from, to)
    }

    fn failed(&self, what: &'static str, reason: String) {
        self.failures.lock().unwrap().push(Failure {
            at: Instant::now(),
            what,
            reason,
        });
    }
}

impl Running {
    /// Closes every socket and returns what each saw.
    async fn finish(self) -> Finished {
        self.crowd.stop.cancel();
        let mut logs = Vec::with_capacity(self.tasks.len());
        for t in self.tasks {
            logs.push(t.await.unwrap_or_default());
        }
        let samples = self.sampler.await.unwrap_or_default();
        let crowd = &self.crowd;
        Finished {
            epoch: crowd.epoch,
            logs,
            samples,
            refused: crowd.refused.load(Ordering::SeqCst),
            failures: std::mem::take(&mut *crowd.failures.lock().unwrap()),
        }
    }
}

impl Finished {
    fn failures_between(&self, from: Instant, to: Instant) -> String {
        describe_failures(&self.failures, from, to)
    }

    fn failure_count(&self, from: Instant, to: Instant) -> usize {
        failure_count(&self.failures, from, to)
    }

    /// From the crowd's start to the last socket's first join.
    fn last_first_join(&self) -> Duration {
        self.logs
            .iter()
            .filter_map(|l| l.joins.first())
            .max()
            .map_or(Duration::ZERO, |t| *t - self.epoch)
    }
}

fn failure_count(all: &[Failure], from: Instant, to: Instant) -> usize {
    all.iter().filter(|f| f.at >= from && f.at <= to).count()
}

/// "none", or the count by kind and the first reason.
fn describe_failures(all: &[Failure], from: Instant, to: Instant) -> String {
    let within: Vec<&Failure> = all.iter().filter(|f| f.at >= from && f.at <= to).collect();
    let Some(first) = within.first() else {
        return "none".into();
    };
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    for f in &within {
        match kinds.iter_mut().find(|(k, _)| *k == f.what) {
            Some((_, n)) => *n += 1,
            None => kinds.push((f.what, 1)),
        }
    }
    let counts: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    format!(
        "{}; the first: {}: {}",
        counts.join(", "),
        first.what,
        first.reason
    )
}

/// The joined-or-not answer to one join.
enum Reply {
    Ok,
    Refused(String),
    Timeout,
    Closed,
}

/// One socket: connect, join, read; on any close connect and join again at
/// once, until the crowd stops. A refused or unanswered join is sent again
/// on the same socket after realtime-js's rejoin delays (1, 2, 5, then
/// every 10 s).
async fn socket(crowd: Arc<Crowd>, src: Ipv4Addr, member: Member) -> SocketLog {
    let mut log = SocketLog::default();
    let mut r = 0u64;
    let mut counted_round = None;
    'connect: while !crowd.stop.is_cancelled() {
        let mut permit = Some(tokio::select! {
            _ = crowd.stop.cancelled() => break,
            p = crowd.permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        });
        let mut ws = match client::connect(crowd.port, &member.path, src).await {
            Ok(ws) => ws,
            Err(e) => {
                if refused(&e) {
                    crowd.refused.fetch_add(1, Ordering::Relaxed);
                } else {
                    crowd.failed("connection failures", format!("{e:#}"));
                }
                // Holding the permit: a bounded number of sockets retry.
                tokio::select! {
                    _ = crowd.stop.cancelled() => break,
                    _ = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        log.handshakes.push(Instant::now());
        let mut attempts = 0;
        loop {
            r += 1;
            if ws.send(member.join(r)).await.is_err() {
                continue 'connect;
            }
            match reply(&mut ws, r, &crowd, &mut log).await {
                Reply::Ok => break,
                Reply::Closed => continue 'connect,
                Reply::Refused(reason) => crowd.failed("join errors", reason),
                Reply::Timeout => crowd.failed(
                    "join timeouts",
                    format!("no reply within {} s", JOIN_TIMEOUT.as_secs()),
                ),
            }
            // Waiting to rejoin is not a join in flight.
            permit = None;
            attempts += 1;
            let delay = [1, 2, 5].get(attempts - 1).copied().unwrap_or(10);
            tokio::select! {
                _ = crowd.stop.cancelled() => break 'connect,
                _ = tokio::time::sleep(Duration::from_secs(delay)) => {}
            }
        }
        drop(permit);
        log.joins.push(Instant::now());
        crowd.joined.fetch_add(1, Ordering::SeqCst);
        let round = crowd.round.load(Ordering::SeqCst);
        if counted_round != Some(round) {
            counted_round = Some(round);
            crowd.round_joins.fetch_add(1, Ordering::SeqCst);
        }
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        let mut h = 0;
        let stopping = loop {
            tokio::select! {
                _ = crowd.stop.cancelled() => break true,
                _ = beat.tick() => {
                    h += 1;
                    if ws.send(client::heartbeat(true, h)).await.is_err() {
                        break false;
                    }
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        note(t.as_str(), &crowd, &mut log);
                    }
                    Some(Ok(_)) => {}
                    _ => break false,
                },
            }
        };
        crowd.joined.fetch_sub(1, Ordering::SeqCst);
        if stopping {
            break;
        }
    }
    log
}

/// Reads frames until the reply to join `r`, noting changes meanwhile.
async fn reply(ws: &mut Ws, r: u64, crowd: &Crowd, log: &mut SocketLog) -> Reply {
    let r = r.to_string();
    let deadline = tokio::time::sleep(JOIN_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        let msg = tokio::select! {
            _ = crowd.stop.cancelled() => return Reply::Closed,
            _ = &mut deadline => return Reply::Timeout,
            msg = ws.next() => msg,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            _ => return Reply::Closed,
        };
        if note(text.as_str(), crowd, log) {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        if v[3] == "phx_reply" && v[1] == r.as_str() {
            return if v[4]["status"] == "ok" {
                Reply::Ok
            } else {
                Reply::Refused(v[4]["response"].to_string())
            };
        }
    }
}

/// Notes a change (its `seq`) or the "Subscribed to PostgreSQL" push;
/// whether the frame was one of them.
fn note(text: &str, crowd: &Crowd, log: &mut SocketLog) -> bool {
    if let Some(seq) = seq_of(text) {
        log.seqs.push(seq);
        crowd.received.fetch_add(1, Ordering::Relaxed);
        true
    } else if text.contains("Subscribed to PostgreSQL") {
        log.subscribed.push(Instant::now());
        crowd.subscribed.fetch_add(1, Ordering::Relaxed);
        true
    } else {
        false
    }
}

/// The number after `"seq":` in a change frame (quoted or not).
fn seq_of(text: &str) -> Option<u64> {
    client::number_after(text, "\"seq\":")
}

/// Whether a connection attempt failed because nothing listened.
fn refused(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

/// Per socket, the changes it should have received against those it did.
#[derive(Debug, Default, PartialEq)]
struct Tally {
    /// Committed with the socket's `k`, never received.
    lost: usize,
    /// `lost` by when the row was committed: the periods end at each of
    /// the `bounds` given to [`Tally::count`].
    lost_by_period: [usize; 4],
    sockets_with_losses: usize,
    /// Receipts of a change already received.
    duplicates: usize,
    /// First receipts of a change after a later one.
    out_of_order: usize,
    /// Changes received by a socket whose filter does not match them.
    misrouted: usize,
}

impl Tally {
    /// `logs[i]` is socket `i`'s; rows `0..total` were committed, row `seq`
    /// for socket `seq % logs.len()`; `bounds` are the row counts committed
    /// at the end of each period (the last is `total`).
    fn count(logs: &[SocketLog], total: u64, bounds: &[u64; 4]) -> Tally {
        let n = logs.len() as u64;
        let mut t = Tally::default();
        for (i, log) in logs.iter().enumerate() {
            let i = i as u64;
            let mut seen = HashSet::with_capacity(log.seqs.len());
            let mut max = None;
            for &s in &log.seqs {
                if s % n != i || s >= total {
                    t.misrouted += 1;
                } else if !seen.insert(s) {
                    t.duplicates += 1;
                } else {
                    if max.is_some_and(|m| s < m) {
                        t.out_of_order += 1;
                    }
                    max = max.max(Some(s));
                }
            }
            let mut lost_here = 0;
            for s in (i..total).step_by(n as usize) {
                if !seen.contains(&s) {
                    lost_here += 1;
                    let period = bounds.iter().position(|&b| s < b).unwrap_or(3);
                    t.lost_by_period[period] += 1;
                }
            }
            t.lost += lost_here;
            t.sockets_with_losses += usize::from(lost_here > 0);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_is_read_quoted_or_not() {
        assert_eq!(
            seq_of(
                r#"[null,null,"realtime:storm","postgres_changes",{"data":{"record":{"k":3,"seq":1203}}}]"#
            ),
            Some(1203)
        );
        assert_eq!(seq_of(r#"{"record":{"seq":"17","k":"1"}}"#), Some(17));
        assert_eq!(
            seq_of(r#"{"columns":[{"name":"seq","type":"int8"}]}"#),
            None
        );
    }

    fn log(seqs: &[u64]) -> SocketLog {
        SocketLog {
            seqs: seqs.to_vec(),
            ..SocketLog::default()
        }
    }

    #[test]
    fn the_tally_counts_lost_duplicate_out_of_order_and_misrouted_changes() {
        // Two sockets, rows 0..10: socket 0 gets the even ones, 1 the odd.
        let logs = [
            // 2 twice (a redelivery), 6 before 4, 8 never, 3 is not its own.
            log(&[0, 2, 2, 6, 4, 3]),
            log(&[1, 3, 5, 7, 9]),
        ];
        let t = Tally::count(&logs, 10, &[4, 6, 8, 10]);
        assert_eq!(
            t,
            Tally {
                lost: 1,
                lost_by_period: [0, 0, 0, 1],
                sockets_with_losses: 1,
                duplicates: 1,
                out_of_order: 1,
                misrouted: 1,
            }
        );
        let none = Tally::count(&[log(&[]), log(&[])], 4, &[1, 2, 3, 4]);
        assert_eq!(none.lost, 4);
        assert_eq!(none.lost_by_period, [1, 1, 1, 1]);
        assert_eq!(none.sockets_with_losses, 2);
    }

    #[test]
    fn failures_are_described_by_kind_with_the_first_reason() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let all = [
            Failure {
                at: at(10),
                what: "join errors",
                reason: "too many".into(),
            },
            Failure {
                at: at(20),
                what: "join timeouts",
                reason: "no reply".into(),
            },
            Failure {
                at: at(30),
                what: "join errors",
                reason: "again".into(),
            },
        ];
        assert_eq!(
            describe_failures(&all, t0, at(100)),
            "2 join errors, 1 join timeouts; the first: join errors: too many"
        );
        assert!(describe_failures(&all, at(25), at(100)).starts_with("1 join errors; the first"));
        assert_eq!(describe_failures(&all, at(40), at(100)), "none");
        assert_eq!(failure_count(&all, at(15), at(30)), 2);
    }
}

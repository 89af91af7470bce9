//! Pieces the latency scenarios share: a writer that commits rows at a steady
//! rate, each stamped with the wall clock just before its commit; sockets
//! that record commit-to-receive latency; and the database's own delivery of
//! the same rows (`pg_recvlogical` with `test_decoding` on a second slot) as
//! the reference.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncBufReadExt;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Ws};
use crate::stack::{now_us, TempPostgres};

/// Heartbeat period of the load generator's sockets (realtime-js: 25 s), so
/// that the server's 60 s idle timeout never closes them.
pub const HEARTBEAT: Duration = Duration::from_secs(25);

/// Which measured phase is running: 0 = none (warm-up, drain), else the
/// phase's number. Samples are filed under the phase current at receipt.
#[derive(Clone, Default)]
pub struct Phase(Arc<AtomicUsize>);

impl Phase {
    pub fn set(&self, p: usize) {
        self.0.store(p, Ordering::SeqCst);
    }
    fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
    pub fn current(&self) -> usize {
        self.get()
    }
}

/// Latency samples in microseconds, per phase.
#[derive(Default, Clone)]
pub struct Samples {
    pub per_phase: Vec<Vec<u64>>,
}

impl Samples {
    fn add(&mut self, phase: usize, us: u64) {
        if phase == 0 {
            return;
        }
        if self.per_phase.len() <= phase {
            self.per_phase.resize(phase + 1, Vec::new());
        }
        self.per_phase[phase].push(us);
    }

    pub fn merge(all: impl IntoIterator<Item = Samples>, phase: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for s in all {
            if let Some(v) = s.per_phase.get(phase) {
                out.extend_from_slice(v);
            }
        }
        out
    }
}

/// One task per socket: records the latency of every change frame, sends a
/// heartbeat every [`HEARTBEAT`] (first one at a spread offset), ends on
/// `stop` or when the server closes the socket.
pub fn spawn_readers(
    sockets: Vec<Ws>,
    v2: bool,
    phase: &Phase,
    stop: &CancellationToken,
) -> Vec<JoinHandle<Samples>> {
    let n = sockets.len().max(1);
    sockets
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            let phase = phase.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut samples = Samples::default();
                let offset = HEARTBEAT.mul_f64(i as f64 / n as f64);
                let mut beat =
                    tokio::time::interval_at(tokio::time::Instant::now() + offset, HEARTBEAT);
                let mut r = 0u64;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = beat.tick() => {
                            r += 1;
                            if ws.send(client::heartbeat(v2, r)).await.is_err() { break; }
                        }
                        msg = ws.next() => {
                            let Some(Ok(msg)) = msg else { break };
                            if let Message::Text(t) = msg {
                                if let Some(sent) = client::sent_us(t.as_str()) {
                                    samples.add(phase.get(), now_us().saturating_sub(sent));
                                }
                            }
                        }
                    }
                }
                samples
            })
        })
        .collect()
}

/// The database's own delivery: `pg_recvlogical` with `test_decoding` on
/// slot `slot` (created here), its text output read line by line.
pub struct Reference {
    child: tokio::process::Child,
    samples: Arc<Mutex<Samples>>,
    reader: JoinHandle<()>,
}

impl Reference {
    pub async fn start(
        pg: &TempPostgres,
        db: &tokio_postgres::Client,
        slot: &str,
        phase: &Phase,
    ) -> anyhow::Result<Reference> {
        let mut child = tokio::process::Command::from(recvlogical(pg, db, slot).await?)
            .kill_on_drop(true)
            .spawn()
            .context("starting pg_recvlogical")?;
        let stdout = child.stdout.take().expect("piped");
        let samples = Arc::new(Mutex::new(Samples::default()));
        let reader = {
            let samples = samples.clone();
            let phase = phase.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(sent) = crate::floor::test_decoding_stamp(&line) {
                        let lat = now_us().saturating_sub(sent);
                        samples.lock().unwrap().add(phase.get(), lat);
                    }
                }
            })
        };
        Ok(Reference {
            child,
            samples,
            reader,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub fn samples(&self, phase: usize) -> Vec<u64> {
        Samples::merge([self.samples.lock().unwrap().clone()], phase)
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        self.reader.abort();
    }
}

/// `pg_recvlogical` streaming slot `slot` (created here, `test_decoding`)
/// to its stdout, piped.
pub async fn recvlogical(
    pg: &TempPostgres,
    db: &tokio_postgres::Client,
    slot: &str,
) -> anyhow::Result<std::process::Command> {
    db.execute(
        "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
        &[&slot],
    )
    .await
    .with_context(|| format!("creating the slot {slot}"))?;
    let mut cmd = pg.client_command("pg_recvlogical");
    cmd.args(["-d", "postgres", "--slot", slot, "--start", "--no-loop"])
        .args(["-f", "-"])
        .args(["-o", "include-xids=0", "-o", "skip-empty-xacts=1"])
        .stdout(std::process::Stdio::piped());
    Ok(cmd)
}

/// Commits `rate` one-row transactions per second for `duration`, spread
/// evenly (a tick each millisecond), pipelined over `writers` connections.
/// `sql` takes the row number; it must stamp `sent_us` with
/// [`crate::stack::STAMP_SQL`]. Returns how many rows were committed.
pub async fn write_at_rate(
    writers: &[tokio_postgres::Client],
    rate: usize,
    duration: Duration,
    first_row: u64,
    sql: impl Fn(u64) -> String,
) -> anyhow::Result<u64> {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0u64;
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let elapsed = start.elapsed();
                if elapsed >= duration {
                    break;
                }
                let due = (rate as f64 * elapsed.as_secs_f64()) as u64;
                while sent < due {
                    let client = &writers[sent as usize % writers.len()];
                    let q = sql(first_row + sent);
                    in_flight.push(async move { client.batch_execute(&q).await });
                    sent += 1;
                }
            }
            Some(r) = in_flight.next(), if !in_flight.is_empty() => {
                r.context("a write")?;
            }
        }
    }
    while let Some(r) = in_flight.next().await {
        r.context("a write")?;
    }
    Ok(sent)
}

/// `n` plain connections for writers.
pub async fn writers(pg: &TempPostgres, n: usize) -> anyhow::Result<Vec<tokio_postgres::Client>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(pg.connect().await?);
    }
    Ok(out)
}

//! Connections (scenario 4): many idle sockets, each joined to a channel and sending
//! heartbeats; the server's resident memory per socket and the time to open
//! them all, against a bare tokio-tungstenite server holding the same number
//! of sockets (the floor process) in the same run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Join, Ws};
use crate::floor::Floor;
use crate::opts::Opts;
use crate::report::{self, Target};
use crate::stack::{self, TempPostgres};
use crate::sys::{self, CpuMeter, Who};

const SCHEMA: &str = "
    CREATE TABLE conn (id bigint PRIMARY KEY);
    CREATE PUBLICATION bench FOR TABLE conn;";

/// Target: resident memory per idle joined socket.
const TARGET_KIB: f64 = 10.0;

pub async fn run(opts: &Opts) -> anyhow::Result<()> {
    let sockets = opts.size(opts.sockets, 50_000, 300);
    let hold = Duration::from_secs(opts.size(opts.hold, 30, 2) as u64);
    let heartbeat = Duration::from_secs(opts.size(opts.heartbeat, 25, 1) as u64);
    let nofile = sys::raise_nofile_limit();
    let sockets = sys::cap_sockets(sockets, nofile);
    sys::warn_about_limits(sockets, client::PER_SOURCE, nofile);
    report::section(&format!(
        "connections: {sockets} idle sockets joined to realtime:public:conn, heartbeat every {}s",
        heartbeat.as_secs()
    ));
    let (pg, _db) = TempPostgres::with_schema(SCHEMA).await?;
    let server = stack::start_server(stack::server_env(&pg, "bench")).await?;
    // One socket first, so that lazily built state is not counted per socket.
    let warm = client::connect_many(server.port, 1, 0, |_| {
        Join::Legacy("realtime:public:conn".into())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = sys::rss_bytes(server.pid());
    let start = Instant::now();
    let ws = client::connect_many(server.port, sockets, 1, |_| {
        Join::Legacy("realtime:public:conn".into())
    })
    .await?;
    let connect_time = start.elapsed();
    let stop = CancellationToken::new();
    let replies = Arc::new(AtomicU64::new(0));
    let tasks = hold_idle(ws, heartbeat, &stop, &replies);
    let meter = CpuMeter::start(vec![
        ("server", Who::Pid(server.pid())),
        ("load generator", Who::LoadGenerator),
    ]);
    tokio::time::sleep(hold).await;
    let (wall, cpu) = meter.stop();
    let rss_after = sys::rss_bytes(server.pid());
    let beats = replies.load(Ordering::Relaxed);
    stop.cancel();
    let mut alive = 0;
    for t in tasks {
        alive += t.await? as usize;
    }
    drop(warm);
    let per_socket = (rss_after.saturating_sub(rss_before)) as f64 / sockets as f64 / 1024.0;
    let warnings = server.warnings();
    drop(server);

    // Reference: a bare tokio-tungstenite server holding as many sockets.
    let mut floor = Floor::spawn(sockets + 1, None)?;
    let floor_warm = client::connect_many(floor.port, 1, 0, |_| Join::None).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let floor_before = sys::rss_bytes(floor.pid());
    let floor_ws = client::connect_many(floor.port, sockets, 1, |_| Join::None).await?;
    floor.wait_ready()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let floor_after = sys::rss_bytes(floor.pid());
    let floor_per_socket =
        (floor_after.saturating_sub(floor_before)) as f64 / sockets as f64 / 1024.0;
    drop(floor_ws);
    drop(floor_warm);
    drop(floor);

    report::note(&format!(
        "{alive} of {sockets} sockets still open after {}s; {beats} heartbeat replies",
        hold.as_secs()
    ));
    report::figure("connections.connect_all", connect_time.as_secs_f64(), "s");
    report::figure(
        "connections.connects_per_s",
        sockets as f64 / connect_time.as_secs_f64(),
        "sockets/s",
    );
    report::figure(
        "connections.server_rss",
        rss_after as f64 / 1024.0 / 1024.0,
        "MiB",
    );
    report::figure("connections.server_rss_per_socket", per_socket, "KiB");
    report::figure(
        "connections.bare_tungstenite_rss_per_socket",
        floor_per_socket,
        "KiB",
    );
    report::ratio(
        "connections.rss_per_socket_vs_target",
        per_socket,
        TARGET_KIB,
        "server KiB per socket / 10 KiB",
        Some(Target::AtMost(1.0)),
    );
    report::ratio(
        "connections.rss_per_socket_vs_bare_tungstenite",
        per_socket,
        floor_per_socket,
        "server KiB per joined socket / bare tokio-tungstenite KiB per socket",
        None,
    );
    report::cpu("connections.idle_hold", wall, &cpu);
    report::server_warnings(&warnings);
    Ok(())
}

/// Keeps every socket open, sending a heartbeat each `period` (the first at a
/// spread offset) and counting the replies; each task ends with whether its
/// socket was still open.
fn hold_idle(
    sockets: Vec<Ws>,
    period: Duration,
    stop: &CancellationToken,
    replies: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<bool>> {
    let n = sockets.len().max(1);
    sockets
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            let stop = stop.clone();
            let replies = replies.clone();
            tokio::spawn(async move {
                let offset = period.mul_f64(i as f64 / n as f64);
                let mut beat =
                    tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                let mut r = 0;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return true,
                        _ = beat.tick() => {
                            r += 1;
                            if ws.send(client::heartbeat(false, r)).await.is_err() { return false; }
                        }
                        msg = ws.next() => match msg {
                            Some(Ok(Message::Text(t))) if t.as_str().contains("phx_reply") => {
                                replies.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(Ok(_)) => {}
                            _ => return false,
                        }
                    }
                }
            })
        })
        .collect()
}

//! Fan-out (scenario 3): many sockets on one topic; messages/s delivered and the
//! server's CPU per million messages, against the floor measured in the same
//! run: the same frames (captured from the server) pushed to the same number
//! of sockets by a minimal tokio-tungstenite broadcaster ([`crate::floor`]).

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::chart::{self, Axis, Panel, Scale, Series};
use crate::client::{self, Join, Ws};
use crate::floor::Floor;
use crate::opts::{ClientKind, Opts};
use crate::report::{self, Target};
use crate::stack::{self, TempPostgres};
use crate::sys::{self, CpuMeter, Who};

const SCHEMA: &str = "
    CREATE TABLE fan (id bigint PRIMARY KEY, sent_us bigint, body text);
    CREATE PUBLICATION bench FOR TABLE fan;";

/// One size's figures, for the chart.
struct Point {
    sockets: usize,
    server_cpu_per_million: f64,
    floor_cpu_per_million: f64,
    server_rate: f64,
    floor_rate: f64,
}

/// Runs once per `--sockets` size (each with its own database and server),
/// then charts CPU per message and delivery rate against the size.
pub async fn run(opts: &Opts) -> anyhow::Result<()> {
    let sizes = opts.list(&opts.socket_sizes, &[10_000], &[50]);
    let changes = opts.size(opts.changes, 500, 20);
    let client = opts.client.unwrap_or_default();
    let mut points = Vec::new();
    for sockets in sizes {
        points.push(run_one(sockets, changes, client).await?);
    }
    chart(opts, changes, &points)
}

fn chart(opts: &Opts, changes: usize, points: &[Point]) -> anyhow::Result<()> {
    let sockets = Axis::new("sockets on the topic", Scale::Linear);
    let line = |name: &str, y: fn(&Point) -> f64| {
        Series::new(
            name,
            points.iter().map(|p| (p.sockets as f64, y(p))).collect(),
        )
    };
    let panels = [
        Panel {
            title: "server CPU per message vs the floor".into(),
            x: sockets.clone(),
            y: Axis::new("CPU seconds per million messages", Scale::Linear),
            series: vec![
                line("server", |p| p.server_cpu_per_million),
                line("floor", |p| p.floor_cpu_per_million),
            ],
        },
        Panel {
            title: "delivery rate".into(),
            x: sockets,
            y: Axis::new("messages per second", Scale::Linear),
            series: vec![
                line("server", |p| p.server_rate),
                line("floor", |p| p.floor_rate),
            ],
        },
    ];
    chart::write(
        opts.charts.as_deref(),
        "fanout",
        &format!("fan-out: {changes} changes to every socket on one topic"),
        &panels,
    )?;
    Ok(())
}

async fn run_one(sockets: usize, changes: usize, kind: ClientKind) -> anyhow::Result<Point> {
    let nofile = sys::raise_nofile_limit();
    let sockets = sys::cap_sockets(sockets, nofile);
    sys::warn_about_limits(sockets, client::PER_SOURCE, nofile);
    let what = match kind {
        ClientKind::V1 => "realtime-js 1.x sockets on one topic",
        ClientKind::V2 => "realtime-js 2.x sockets, one postgres_changes binding each",
    };
    report::section(&format!(
        "fan-out: {sockets} {what}, {changes} one-row transactions"
    ));
    let (pg, db) = TempPostgres::with_schema(SCHEMA).await?;
    let server = stack::start_server(stack::server_env(&pg, "bench")).await?;
    let ws = client::connect_many(server.port, sockets, 0, |_| match kind {
        ClientKind::V1 => Join::Legacy("realtime:public:fan".into()),
        ClientKind::V2 => Join::PostgresChanges {
            table: "fan".into(),
            filter: String::new(),
        },
    })
    .await?;
    let readers = spawn_counters(ws, changes, true);
    let meter = CpuMeter::start(vec![
        ("server", Who::Pid(server.pid())),
        ("postgres", Who::Postgres(pg.data_dir())),
        ("load generator", Who::LoadGenerator),
    ]);
    db.batch_execute(&format!(
        "DO $$ BEGIN FOR i IN 1..{changes} LOOP \
           INSERT INTO fan VALUES (i, 0, 'a short body'); COMMIT; \
         END LOOP; END $$"
    ))
    .await?;
    let (frames, wall) = collect(readers).await?;
    let (_, cpu) = meter.stop();
    let delivered = (sockets * changes) as f64;
    let server_rate = delivered / wall.as_secs_f64();
    let server_cpu = cpu[0].1.seconds;
    report::cpu("fanout.server", wall, &cpu);
    let server_peak = sys::peak_rss_bytes(server.pid());
    let warnings = server.warnings();
    drop(server);

    // The floor: the same frames, the same sockets, nothing else.
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), frames.join("\n"))?;
    let mut floor = Floor::spawn(sockets, Some(file.path()))?;
    let ws = client::connect_many(floor.port, sockets, 0, |_| Join::None).await?;
    floor.wait_ready()?;
    let readers = spawn_counters(ws, changes, false);
    let meter = CpuMeter::start(vec![
        ("floor", Who::Pid(floor.pid())),
        ("load generator", Who::LoadGenerator),
    ]);
    floor.go()?;
    let (_, floor_wall) = collect(readers).await?;
    let (_, floor_cpu) = meter.stop();
    let floor_rate = delivered / floor_wall.as_secs_f64();
    report::cpu("fanout.floor", floor_wall, &floor_cpu);
    let floor_peak = sys::peak_rss_bytes(floor.pid());
    drop(floor);

    report::figure("fanout.server.messages_per_s", server_rate, "msg/s");
    report::figure("fanout.floor.messages_per_s", floor_rate, "msg/s");
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    report::figure("fanout.server.peak_rss", mib(server_peak), "MiB");
    report::figure("fanout.floor.peak_rss", mib(floor_peak), "MiB");
    let per_million = |cpu: f64| cpu / (delivered / 1e6);
    report::figure(
        "fanout.server.cpu_per_million_messages",
        per_million(server_cpu),
        "CPU s",
    );
    report::figure(
        "fanout.floor.cpu_per_million_messages",
        per_million(floor_cpu[0].1.seconds),
        "CPU s",
    );
    report::ratio(
        "fanout.floor_vs_server_rate",
        floor_rate,
        server_rate,
        "floor msg/s / server msg/s (how much slower the server is)",
        Some(Target::AtMost(1.5)),
    );
    report::ratio(
        "fanout.server_vs_floor_cpu",
        per_million(server_cpu),
        per_million(floor_cpu[0].1.seconds),
        "server CPU per message / floor CPU per message",
        Some(Target::AtMost(1.5)),
    );
    report::server_warnings(&warnings);
    Ok(Point {
        sockets,
        server_cpu_per_million: per_million(server_cpu),
        floor_cpu_per_million: per_million(floor_cpu[0].1.seconds),
        server_rate,
        floor_rate,
    })
}

/// Per socket: the frames kept, when the first and the last arrived.
type Counter = tokio::task::JoinHandle<anyhow::Result<(Vec<String>, Instant, Instant)>>;

/// One task per socket: counts `changes` text frames and notes when the first
/// and the last came; the first socket keeps the frames (the floor replays
/// them).
fn spawn_counters(sockets: Vec<Ws>, changes: usize, keep_first: bool) -> Vec<Counter> {
    sockets
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            tokio::spawn(async move {
                let keep = keep_first && i == 0;
                let mut frames = Vec::new();
                let mut n = 0;
                let mut first = None;
                while n < changes {
                    let msg = tokio::time::timeout(Duration::from_secs(120), ws.next())
                        .await
                        .context("no frame for 120 s")?
                        .context("socket closed")??;
                    // A change (a v1 frame's event, a v2 frame's `type`),
                    // not a reply or a `system` message.
                    let change = match msg {
                        Message::Text(t) if t.as_str().contains("\"INSERT\"") => Some(t),
                        _ => None,
                    };
                    if let Some(t) = change {
                        first.get_or_insert_with(Instant::now);
                        n += 1;
                        if keep {
                            frames.push(t.as_str().to_string());
                        }
                    }
                }
                let last = Instant::now();
                Ok((frames, first.unwrap_or(last), last))
            })
        })
        .collect()
}

/// The kept frames and the span from the first frame any socket got to the
/// last frame of the last socket: the delivery, without the time PostgreSQL
/// took to commit the first change (the floor has no database).
async fn collect(readers: Vec<Counter>) -> anyhow::Result<(Vec<String>, Duration)> {
    let mut span: Option<(Instant, Instant)> = None;
    let mut kept = Vec::new();
    for r in readers {
        let (frames, first, last) = r.await??;
        if !frames.is_empty() {
            kept = frames;
        }
        span = Some(match span {
            None => (first, last),
            Some((a, b)) => (a.min(first), b.max(last)),
        });
    }
    let (a, b) = span.context("no sockets")?;
    Ok((kept, b.duration_since(a)))
}

//! Latency (scenario 2): commit-to-client p50/p99/p99.9 at a steady rate of one-row
//! transactions with many subscribed sockets (realtime-js 1.x, one table
//! topic), against two references taken in the same run: the fan-out floor
//! fed from the same replication stream (`pg_recvlogical` piped into
//! `realtime-bench floor --follow`, which broadcasts the server's own frame
//! for each change to as many sockets, read by the same reader code), and
//! the rows as the database delivers them to `pg_recvlogical` alone.
//!
//! The defaults are Supabase's published workload (64 changes/s to 500
//! clients) and ten times that.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use anyhow::Context;
use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::chart;
use crate::client::{self, Join};
use crate::floor::{Floor, STAMP_HOLE};
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
    let sockets = opts.size(opts.sockets, 500, 20);
    let rates = opts.list(&opts.rates, &[64, 640], &[50, 100]);
    let secs = opts.size(opts.seconds, 10, 1);
    let (pg, db) = TempPostgres::with_schema(SCHEMA).await?;
    let phase = Phase::default();
    let reference = Reference::start(&pg, &db, "bench_ref", &phase).await?;
    let server = stack::start_server(stack::server_env(&pg, "bench")).await?;
    let writers = load::writers(&pg, 4).await?;
    let sql = |i: u64| format!("INSERT INTO lat VALUES ({i}, {STAMP_SQL}, 'a short body')");
    let mut row = 0u64;

    // The server's frame for one row, which the floor sends for each.
    let template = {
        let mut probe = client::connect_many(server.port, 1, 0, |_| {
            Join::Legacy("realtime:public:lat".into())
        })
        .await?;
        writers[0].batch_execute(&sql(row)).await?;
        row += 1;
        let frame = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(msg) = probe[0].next().await {
                if let Message::Text(t) = msg? {
                    if client::sent_us(t.as_str()).is_some() {
                        return Ok(t.to_string());
                    }
                }
            }
            anyhow::bail!("the probe socket closed before its row arrived")
        })
        .await
        .context("the probe socket's row did not arrive within 10 s")??;
        stamp_hole(&frame).with_context(|| format!("no sent_us in the frame {frame}"))?
    };
    let template_file = tempfile::NamedTempFile::new()?;
    std::fs::write(template_file.path(), &template)?;
    let mut feed = load::recvlogical(&pg, &db, "bench_floor")
        .await?
        .spawn()
        .context("starting pg_recvlogical for the floor")?;
    let floor_feed = feed.stdout.take().context("piped")?;
    let feed_pid = feed.id();
    let _feed = KillOnDrop(feed);
    let mut floor = Floor::follow(sockets, template_file.path(), floor_feed)?;

    let t = std::time::Instant::now();
    let ws = client::connect_many(server.port, sockets, 0, |_| {
        Join::Legacy("realtime:public:lat".into())
    })
    .await?;
    report::note(&format!(
        "{sockets} sockets joined realtime:public:lat in {:.2} s",
        t.elapsed().as_secs_f64()
    ));
    let floor_ws = client::connect_many(floor.port, sockets, sockets, |_| Join::None).await?;
    floor.wait_ready()?;
    let stop = CancellationToken::new();
    let readers = load::spawn_readers(ws, false, &phase, &stop);
    let floor_readers = load::spawn_readers(floor_ws, false, &phase, &stop);

    let mut cpu_lines = Vec::new();
    for (p, &rate) in rates.iter().enumerate() {
        // Warm-up, not recorded.
        row += load::write_at_rate(&writers, rate, Duration::from_secs(1), row, sql).await?;
        phase.set(p + 1);
        let meter = CpuMeter::start(vec![
            ("server", Who::Pid(server.pid())),
            ("postgres", Who::Postgres(pg.data_dir())),
            ("pg_recvlogical", Who::Pid(reference.pid())),
            ("floor", Who::Pid(floor.pid())),
            ("floor's pg_recvlogical", Who::Pid(feed_pid)),
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
    let mut floor_all = Vec::new();
    for r in floor_readers {
        floor_all.push(r.await?);
    }

    let mut panels = Vec::new();
    for (p, (rate, n, wall, cpu)) in cpu_lines.into_iter().enumerate() {
        let name = format!("latency.{rate}_per_s");
        report::section(&format!(
            "latency: {rate} changes/s, {sockets} subscribed sockets (realtime-js 1.x topic)"
        ));
        let mut server_s = Samples::merge(all.iter().cloned(), p + 1);
        let mut floor_s = Samples::merge(floor_all.iter().cloned(), p + 1);
        let mut ref_s = reference.samples(p + 1);
        let expected = n as usize * sockets;
        report::note(&format!(
            "{n} rows committed; of {expected} frames, {} received from the server and {} from \
             the floor; {} rows by pg_recvlogical",
            server_s.len(),
            floor_s.len(),
            ref_s.len()
        ));
        let (Some(s), Some(f), Some(r)) = (
            report::percentiles(&mut server_s),
            report::percentiles(&mut floor_s),
            report::percentiles(&mut ref_s),
        ) else {
            report::note("no samples");
            continue;
        };
        panels.push(chart::latency_panel(
            &format!("{rate} changes/s"),
            &[
                ("server", &server_s),
                ("floor (same stream, same frames)", &floor_s),
                ("pg_recvlogical (rows, no sockets)", &ref_s),
            ],
        ));
        for (i, q) in ["p50", "p99", "p99.9", "max"].iter().enumerate() {
            report::figure(&format!("{name}.server.{q}"), s[i], "ms");
        }
        for (i, q) in ["p50", "p99", "p99.9", "max"].iter().enumerate() {
            report::figure(&format!("{name}.floor.{q}"), f[i], "ms");
        }
        for (i, q) in ["p50", "p99", "p99.9"].iter().enumerate() {
            report::figure(&format!("{name}.pg_recvlogical.{q}"), r[i], "ms");
        }
        report::figure(&format!("{name}.server_added.p50"), s[0] - f[0], "ms");
        report::figure(&format!("{name}.server_added.p99"), s[1] - f[1], "ms");
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
            &format!("{name}.p99_vs_floor"),
            s[1],
            f[1],
            "server p99 / floor p99 (same stream, same frames, same moments)",
            Some(report::Target::AtMost(1.5)),
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
    if !panels.is_empty() {
        chart::write(
            opts.charts.as_deref(),
            "latency",
            &format!("latency: commit to client, {sockets} sockets on one topic"),
            &panels,
        )?;
    }
    let warnings = server.warnings();
    report::server_warnings(&warnings);
    reference.stop().await;
    Ok(())
}

/// The frame with its `sent_us` value replaced by [`STAMP_HOLE`] (quotes
/// kept: a bigint may come as a string).
fn stamp_hole(frame: &str) -> Option<String> {
    const KEY: &str = "\"sent_us\":";
    let at = frame.find(KEY)? + KEY.len();
    let quoted = frame[at..].starts_with('"');
    let digits = at + usize::from(quoted);
    let end = frame[digits..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(frame.len(), |e| digits + e);
    Some(format!("{}{STAMP_HOLE}{}", &frame[..digits], &frame[end..]))
}

/// Kills the floor's `pg_recvlogical` when the scenario ends (its end of
/// stdin then ends the floor).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_hole_replaces_the_digits_quoted_or_not() {
        assert_eq!(
            stamp_hole(r#"{"record":{"id":1,"sent_us":1700000000000001,"b":"x"}}"#).unwrap(),
            format!(r#"{{"record":{{"id":1,"sent_us":{STAMP_HOLE},"b":"x"}}}}"#)
        );
        assert_eq!(
            stamp_hole(r#"{"sent_us":"17"}"#).unwrap(),
            format!(r#"{{"sent_us":"{STAMP_HOLE}"}}"#)
        );
        assert_eq!(stamp_hole("{}"), None);
    }
}

//! The fan-out floor: the least a tokio WebSocket server can do to push the
//! same frames to the same sockets. Pre-encoded text frames (shared bytes, no
//! JSON, no routing) go through a broadcast channel to one writer task per
//! socket, which batches them into one flush like the server's writer.
//!
//! Runs as its own process (`realtime-bench floor`) so that its CPU and
//! memory are measured apart from the load generator's. Protocol on stdio:
//! prints `port P`, then `ready` once `--sockets` handshakes completed;
//! a line `go` on stdin broadcasts every frame of `--frames` (one per line);
//! end of stdin exits.
//!
//! With `--follow`, stdin is instead `pg_recvlogical`'s `test_decoding`
//! output, and each change stamped with `sent_us` is broadcast as it
//! arrives: `--frames` holds one template frame whose [`STAMP_HOLE`] takes
//! the change's stamp. This is the latency floor: the same replication
//! stream, the same frames at the same moments, the same kind of sockets,
//! and nothing a server does besides (no routing, no JSON, no queue
//! accounting).

use std::sync::Arc;

use anyhow::Context;
use futures::SinkExt;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, Barrier};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::opts::Opts;

/// Frames written before one flush, as in the server's socket writer.
const WRITE_BATCH: usize = 256;

pub async fn run(opts: &Opts) -> anyhow::Result<()> {
    let sockets = opts.size(opts.sockets, 1, 1);
    let frames: Vec<Utf8Bytes> = match opts.frames.as_deref() {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {path}"))?
            .lines()
            .map(|l| Utf8Bytes::from(l.to_string()))
            .collect(),
        None => Vec::new(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("port {}", listener.local_addr()?.port());
    // Following, the frames are not known ahead: room for a few seconds of
    // them, so that a socket that falls behind is not cut off (a lagging
    // receiver ends its writer).
    let capacity = if opts.follow { 1 << 16 } else { frames.len() };
    let (tx, _) = broadcast::channel::<Utf8Bytes>(capacity.max(16));
    let all_connected = Arc::new(Barrier::new(sockets + 1));
    {
        let tx = tx.clone();
        let all_connected = all_connected.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let rx = tx.subscribe();
                let all_connected = all_connected.clone();
                tokio::spawn(async move {
                    let ws = tokio_tungstenite::accept_async(stream).await;
                    all_connected.wait().await;
                    if let Ok(ws) = ws {
                        write_loop(ws, rx).await;
                    }
                });
            }
        });
    }
    all_connected.wait().await;
    println!("ready");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    if opts.follow {
        let template = frames
            .first()
            .context("--follow needs a template frame in --frames")?;
        let (head, tail) = template
            .as_str()
            .split_once(STAMP_HOLE)
            .with_context(|| format!("the template frame has no {STAMP_HOLE}"))?;
        while let Some(line) = lines.next_line().await? {
            if let Some(sent) = test_decoding_stamp(&line) {
                let frame = format!("{head}{sent}{tail}");
                let _ = tx.send(Utf8Bytes::from(frame));
            }
        }
        return Ok(());
    }
    while let Some(line) = lines.next_line().await? {
        if line.trim() == "go" {
            for f in &frames {
                let _ = tx.send(f.clone());
            }
        }
    }
    Ok(())
}

/// Where a `--follow` template frame takes each change's stamp (the
/// digits of its `sent_us`).
pub const STAMP_HOLE: &str = "@SENT_US@";

/// The `sent_us` of a `test_decoding` line (`... sent_us[bigint]:N ...`).
pub fn test_decoding_stamp(line: &str) -> Option<u64> {
    const KEY: &str = "sent_us[bigint]:";
    let rest = &line[line.find(KEY)? + KEY.len()..];
    let end = rest.find(' ').unwrap_or(rest.len());
    rest[..end].parse().ok()
}

async fn write_loop(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    mut rx: broadcast::Receiver<Utf8Bytes>,
) {
    while let Ok(first) = rx.recv().await {
        if ws.feed(Message::Text(first)).await.is_err() {
            return;
        }
        let mut n = 1;
        while n < WRITE_BATCH {
            match rx.try_recv() {
                Ok(f) => {
                    if ws.feed(Message::Text(f)).await.is_err() {
                        return;
                    }
                    n += 1;
                }
                Err(_) => break,
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

/// A running floor process.
pub struct Floor {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    pub port: u16,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl Floor {
    /// Starts `realtime-bench floor` for `sockets` sockets and `frames`.
    pub fn spawn(sockets: usize, frames: Option<&std::path::Path>) -> anyhow::Result<Floor> {
        Self::start(sockets, frames, None)
    }

    /// Starts the floor in `--follow` mode: it broadcasts `template` (with
    /// [`STAMP_HOLE`]) for each stamped change `feed` (a `pg_recvlogical`
    /// with `test_decoding`, its stdout piped) prints.
    pub fn follow(
        sockets: usize,
        template: &std::path::Path,
        feed: std::process::ChildStdout,
    ) -> anyhow::Result<Floor> {
        Self::start(sockets, Some(template), Some(feed))
    }

    fn start(
        sockets: usize,
        frames: Option<&std::path::Path>,
        feed: Option<std::process::ChildStdout>,
    ) -> anyhow::Result<Floor> {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.arg("floor").arg("--sockets").arg(sockets.to_string());
        if let Some(f) = frames {
            cmd.arg("--frames").arg(f);
        }
        let stdin = match feed {
            Some(feed) => {
                cmd.arg("--follow");
                std::process::Stdio::from(feed)
            }
            None => std::process::Stdio::piped(),
        };
        let mut child = cmd
            .stdin(stdin)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting the floor process")?;
        let stdin = child.stdin.take();
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        let first = lines.next().context("floor printed nothing")??;
        let port = first
            .strip_prefix("port ")
            .context("floor's first line is its port")?
            .parse()?;
        Ok(Floor {
            child,
            stdin,
            port,
            lines,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Blocks until every socket is connected.
    pub fn wait_ready(&mut self) -> anyhow::Result<()> {
        let line = self.lines.next().context("floor ended before ready")??;
        anyhow::ensure!(line == "ready", "floor said {line:?}");
        Ok(())
    }

    pub fn go(&mut self) -> anyhow::Result<()> {
        use std::io::Write;
        let stdin = self.stdin.as_mut().context("floor stdin")?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        Ok(())
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

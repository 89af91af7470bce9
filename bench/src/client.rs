//! The load generator's WebSocket clients: many sockets opened from several
//! loopback source addresses, joined to Phoenix channels, each reading its
//! frames on its own task.
//!
//! Kept cheap on purpose (the load generator shares the cores with the
//! server): a frame is looked at as text, never parsed as JSON after the join.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Sockets per loopback source address: below the default ephemeral port
/// range (32768-60999, 28,232 ports) with room for other processes.
pub const PER_SOURCE: usize = 20_000;

/// Handshakes in flight at once: below the listen backlog (somaxconn).
const CONNECT_CONCURRENCY: usize = 256;

/// The source address of the `i`th socket: 127.0.0.1, then .2, ...
pub fn source_addr(i: usize) -> Ipv4Addr {
    let n = (i / PER_SOURCE) as u8 + 1;
    Ipv4Addr::new(127, 0, 0, n)
}

/// Small buffers: the load generator holds up to 50,000 sockets.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
}

/// Opens a WebSocket to `url` on 127.0.0.1:`port` from `src`.
pub async fn connect(port: u16, path: &str, src: Ipv4Addr) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    // Choose the port at connect time, per destination: the previous run's
    // sockets linger in TIME_WAIT for a minute and would otherwise hold
    // their ports against a bind to port 0.
    {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and a c_int option value of the right size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &on as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    socket
        .bind(SocketAddr::from((src, 0)))
        .with_context(|| format!("binding {src}:0"))?;
    let stream = socket
        .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .with_context(|| format!("connecting {src} -> 127.0.0.1:{port}"))?;
    stream.set_nodelay(true)?;
    let url = format!("ws://127.0.0.1:{port}{path}");
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config()))
        .await
        .context("WebSocket handshake")?;
    Ok(ws)
}

/// What a socket joins after connecting.
#[derive(Debug, Clone)]
pub enum Join {
    /// Nothing (the fan-out floor speaks no Phoenix).
    None,
    /// realtime-js 1.x: `vsn=1.0.0`, a legacy topic such as `realtime:public:t`.
    Legacy(String),
    /// realtime-js 2.x: `vsn=2.0.0`, a channel with one postgres_changes
    /// binding (`filter` may be empty).
    PostgresChanges { table: String, filter: String },
    /// realtime-js 2.x: a channel on `topic` for broadcast and presence only.
    Channel(String),
    /// realtime-js 2.x signed in: [`Join::PostgresChanges`] with `token`
    /// on the socket (`apikey`) and the join (`access_token`).
    AsUser {
        table: String,
        filter: String,
        token: String,
    },
}

impl Join {
    fn path(&self) -> String {
        match self {
            Join::None => "/".into(),
            Join::Legacy(_) => "/socket/websocket?vsn=1.0.0".into(),
            Join::PostgresChanges { .. } | Join::Channel(_) => "/socket/websocket?vsn=2.0.0".into(),
            Join::AsUser { token, .. } => format!("/socket/websocket?vsn=2.0.0&apikey={token}"),
        }
    }

    /// Whether it speaks the 2.x serializer.
    fn v2(&self) -> bool {
        matches!(
            self,
            Join::PostgresChanges { .. } | Join::Channel(_) | Join::AsUser { .. }
        )
    }
}

/// Connects and joins; returns once the join was acknowledged (and, for
/// 2.x, the subscription confirmed).
pub async fn connect_joined(port: u16, src: Ipv4Addr, join: &Join) -> anyhow::Result<Ws> {
    let mut ws = connect(port, &join.path(), src).await?;
    match join {
        Join::None => {}
        Join::Legacy(topic) => {
            let frame = json!({"topic": topic, "event": "phx_join", "payload": {}, "ref": "1"});
            ws.send(Message::text(frame.to_string())).await?;
            wait_for(&mut ws, |v| {
                v["event"] == "phx_reply" && v["ref"] == "1" && v["payload"]["status"] == "ok"
            })
            .await?;
        }
        Join::PostgresChanges { table, filter } | Join::AsUser { table, filter, .. } => {
            let mut binding = json!({"event": "*", "schema": "public", "table": table});
            if !filter.is_empty() {
                binding["filter"] = json!(filter);
            }
            let mut payload = json!({"config": {"broadcast": {"ack": false, "self": false},
                "presence": {"key": ""}, "private": false, "postgres_changes": [binding]}});
            if let Join::AsUser { token, .. } = join {
                payload["access_token"] = json!(token);
            }
            let frame = json!(["1", "1", "realtime:bench", "phx_join", payload]);
            ws.send(Message::text(frame.to_string())).await?;
            wait_for(&mut ws, |v| {
                v[3] == "system" && v[4]["extension"] == "postgres_changes"
            })
            .await?;
        }
        Join::Channel(topic) => {
            let payload = json!({"config": {"broadcast": {"ack": false, "self": false},
                "presence": {"key": ""}, "private": false, "postgres_changes": []}});
            let frame = json!(["1", "1", topic, "phx_join", payload]);
            ws.send(Message::text(frame.to_string())).await?;
            wait_for(&mut ws, |v| {
                v[3] == "phx_reply" && v[1] == "1" && v[4]["status"] == "ok"
            })
            .await?;
        }
    }
    Ok(ws)
}

/// Reads frames until one satisfies `done`; fails on an error reply.
async fn wait_for(ws: &mut Ws, done: impl Fn(&Value) -> bool) -> anyhow::Result<()> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .context("no join reply within 60 s")?
            .context("socket closed before the join reply")??;
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(t.as_str())?;
        if done(&v) {
            return Ok(());
        }
        let status = if v.is_array() {
            &v[4]["status"]
        } else {
            &v["payload"]["status"]
        };
        if status == "error" {
            bail!("join refused: {t}");
        }
    }
}

/// Opens `n` joined sockets, `join(i)` choosing what socket `i` joins,
/// spread over source addresses; returns them in order once all are joined.
/// Sockets joined early send heartbeats while the others connect, so a slow
/// run of joins never lets the server's idle timeout close them.
pub async fn connect_many(
    port: u16,
    n: usize,
    offset: usize,
    join: impl Fn(usize) -> Join,
) -> anyhow::Result<Vec<Ws>> {
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let handover = tokio_util::sync::CancellationToken::new();
    let (joined_tx, mut joined_rx) = tokio::sync::mpsc::channel::<anyhow::Error>(1);
    let joined = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let all_joined = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permits = permits.clone();
        let j = join(i);
        let handover = handover.clone();
        let joined_tx = joined_tx.clone();
        let joined = joined.clone();
        let all_joined = all_joined.clone();
        tasks.push(tokio::spawn(async move {
            let permit = permits.acquire_owned().await.ok()?;
            let v2 = j.v2();
            let mut ws = match connect_joined(port, source_addr(offset + i), &j).await {
                Ok(ws) => ws,
                Err(e) => {
                    let _ = joined_tx.send(e.context(format!("socket {i}"))).await;
                    return None;
                }
            };
            drop(permit);
            if joined.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == n {
                all_joined.notify_one();
            }
            let mut r = 0;
            loop {
                tokio::select! {
                    _ = handover.cancelled() => return Some(ws),
                    _ = tokio::time::sleep(crate::load::HEARTBEAT) => {
                        r += 1;
                        if !matches!(j, Join::None) {
                            let _ = ws.send(heartbeat(v2, r)).await;
                        }
                    }
                }
            }
        }));
    }
    drop(joined_tx);
    if n > 0 {
        tokio::select! {
            _ = all_joined.notified() => {}
            Some(e) = joined_rx.recv() => {
                handover.cancel();
                return Err(e);
            }
        }
    }
    handover.cancel();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await?.context("a socket failed")?);
    }
    Ok(out)
}

/// A heartbeat frame in the socket's serializer.
pub fn heartbeat(v2: bool, r: u64) -> Message {
    if v2 {
        Message::text(format!("[null,\"h{r}\",\"phoenix\",\"heartbeat\",{{}}]"))
    } else {
        Message::text(format!(
            "{{\"topic\":\"phoenix\",\"event\":\"heartbeat\",\"payload\":{{}},\"ref\":\"h{r}\"}}"
        ))
    }
}

/// The number after `"sent_us":` in a frame (a string in 1.x payloads, a
/// number in 2.x ones).
pub fn sent_us(text: &str) -> Option<u64> {
    number_after(text, "\"sent_us\":")
}

/// The whole number after `key` (such as `"seq":`) in a frame's text,
/// quoted or not: read without parsing the JSON (the readers' hot path).
pub fn number_after(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let rest = text[at..].trim_start_matches('"');
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_us_is_read_from_both_payload_forms() {
        assert_eq!(
            sent_us(r#"{"record":{"id":"1","sent_us":"1700000000000001"}}"#),
            Some(1_700_000_000_000_001)
        );
        assert_eq!(
            sent_us(r#"{"columns":[{"name":"sent_us","type":"int8"}],"record":{"sent_us":42}}"#),
            Some(42)
        );
        assert_eq!(sent_us("{}"), None);
    }

    #[test]
    fn sockets_spread_over_source_addresses() {
        assert_eq!(source_addr(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_addr(PER_SOURCE), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(2 * PER_SOURCE + 5), Ipv4Addr::new(127, 0, 0, 3));
    }
}

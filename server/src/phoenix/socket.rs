//! One WebSocket connection speaking Phoenix Channels.
//!
//! Owns a socket's life: registering with the hub, the channel state machine
//! (heartbeat, join, leave, duplicate join, `access_token`), the idle timeout,
//! and the writer that drains the socket's queue into the WebSocket, batching
//! frames into one flush. Replies go through the same queue as changes, so a
//! client sees them in the order they were produced.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use serde_json::Value;

use crate::auth::JwtVerifier;
use crate::change::ChangeKind;
use crate::filter::Filter;
use crate::hub::{Binding, Hub, LegacyTopic, Outbound, SocketId, CLOSE_SLOW_CONSUMER};
use crate::metrics::{ChannelGauge, Metrics, METRICS};
use crate::phoenix::frame::{self, Frame, Inbound, Vsn};
use crate::published::PublishedTables;

/// A socket that sends nothing, not even a heartbeat, for this long is closed
/// (phoenix.js heartbeats every 30 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub use crate::hub::CLOSE_GOING_AWAY;

/// Frames written before one flush: amortizes the syscall without delaying
/// the first frame of a burst.
const WRITE_BATCH: usize = 256;

/// Settings a socket needs from the server's configuration.
#[derive(Debug, Clone)]
pub struct SocketLimits {
    pub max_channels: usize,
    pub max_frame_bytes: usize,
}

/// What every socket shares.
pub struct SocketContext {
    pub hub: Arc<Hub>,
    /// `Some` when channels are secured: join and `access_token` tokens are
    /// checked with it.
    pub verifier: Option<JwtVerifier>,
    pub published: Arc<PublishedTables>,
    pub limits: SocketLimits,
}

/// What a joined channel subscribes to.
enum ChannelKind {
    /// realtime-js 1.x: the topic selects the rows.
    Legacy(LegacyTopic),
    /// realtime-js 2.x: `config` with postgres_changes, broadcast, presence.
    V2 {
        topic: Arc<str>,
        ack: bool,
        presence_key: String,
    },
}

/// A joined channel.
struct Channel {
    join_ref: Option<Box<RawValue>>,
    kind: ChannelKind,
    /// When the token the channel was joined (or last refreshed) with
    /// expires, in seconds since the Unix epoch: then it is closed.
    expires_at: Option<u64>,
    /// Counts the channel at `/metrics` while it is joined.
    _open: ChannelGauge,
}

struct Session {
    id: SocketId,
    vsn: Vsn,
    hub: Arc<Hub>,
    published: Arc<PublishedTables>,
    verifier: Option<JwtVerifier>,
    tx: mpsc::Sender<Outbound>,
    channels: HashMap<String, Channel>,
    limits: SocketLimits,
    next_presence: u64,
    /// `exp` of the token the socket connected with.
    socket_exp: Option<u64>,
}

/// A WebSocket on the connection hyper upgraded.
pub type WebSocket =
    tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

type Sink = futures::stream::SplitSink<WebSocket, Message>;

/// Serves one upgraded WebSocket until either side closes it.
/// `socket_exp` is the `exp` of the token checked at the upgrade.
pub async fn serve(ws: WebSocket, vsn: Vsn, ctx: Arc<SocketContext>, socket_exp: Option<u64>) {
    let hub = ctx.hub.clone();
    let limits = ctx.limits.clone();
    let reg = hub.register();
    let (sink, mut stream) = ws.split();
    let cancel = reg.cancel.clone();
    let shutdown = reg.shutdown.clone();
    let writer = tokio::spawn(write_loop(
        sink,
        reg.rx,
        reg.cancel.clone(),
        reg.shutdown.clone(),
        reg.writer_guard,
    ));
    let mut session = Session {
        id: reg.id,
        vsn,
        hub: hub.clone(),
        published: ctx.published.clone(),
        verifier: ctx.verifier.clone(),
        tx: reg.tx,
        channels: HashMap::new(),
        limits,
        next_presence: 0,
        socket_exp,
    };
    tracing::debug!(socket = session.id, ?vsn, "socket connected");

    loop {
        let expiry = session.next_expiry();
        let next = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = shutdown.cancelled() => break,
            _ = sleep_until_unix(expiry.unwrap_or(u64::MAX)), if expiry.is_some() => {
                session.expire_channels().await;
                continue;
            }
            next = tokio::time::timeout(IDLE_TIMEOUT, stream.next()) => next,
        };
        let msg = match next {
            Err(_) => {
                session
                    .close(1000, "idle timeout: nothing received for 60 s")
                    .await;
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                session.close_after_read_error(&e).await;
                break;
            }
            Ok(Some(Ok(msg))) => msg,
        };
        if msg.len() > session.limits.max_frame_bytes {
            session.close_frame_too_large().await;
            break;
        }
        let decoded = match &msg {
            Message::Text(text) => Inbound::decode(vsn, text),
            Message::Binary(bytes) => Inbound::decode_binary(vsn, bytes),
            Message::Close(_) => break,
            // tungstenite answers pings itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        match decoded {
            // Boxed: handling a join may query the catalog, a future of
            // several KiB. Inline, every socket's task would carry that much
            // for its whole life (heaptrack: 7 KiB of a socket's 16); boxed,
            // it costs an allocation per message a client sends.
            Ok(inbound) => Box::pin(session.handle(inbound)).await,
            Err(e) => {
                Metrics::inc(&METRICS.bad_frames);
                tracing::info!(socket = session.id, error = %e, "closing a socket that sent a malformed frame");
                let code = if msg.is_binary() { 1003 } else { 1007 };
                session.close(code, &e.to_string()).await;
                break;
            }
        }
    }

    let mut legacy = Vec::new();
    for (_, channel) in session.channels.drain() {
        match channel.kind {
            ChannelKind::Legacy(t) => legacy.push(t),
            ChannelKind::V2 { topic, .. } => hub.leave_channel(session.id, &topic),
        }
    }
    hub.unregister(session.id, legacy);
    tracing::debug!(socket = session.id, "socket disconnected");
    drop(session);
    // The writer ends when every sender is gone (the hub's was dropped by
    // unregister), after flushing what is queued.
    let _ = writer.await;
}

impl Session {
    async fn send(&self, frame: Frame) {
        self.enqueue(Outbound::Frame(frame));
    }

    async fn close(&self, code: u16, reason: &str) {
        self.enqueue(Outbound::Close(code, truncate_reason(reason)));
    }

    /// Queues without waiting: a client that sends requests faster than it
    /// reads their answers fills its own queue and is closed as a slow
    /// consumer, as when changes fill it, instead of stalling this loop.
    fn enqueue(&self, item: Outbound) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(item) {
            self.hub.close_slow_consumer(self.id);
        }
    }

    async fn close_frame_too_large(&self) {
        Metrics::inc(&METRICS.bad_frames);
        let limit = self.limits.max_frame_bytes;
        tracing::info!(
            socket = self.id,
            limit,
            "closing a socket that sent a frame over the limit"
        );
        self.close(
            1009,
            &format!("frame too large: the limit is {limit} bytes"),
        )
        .await;
    }

    /// The WebSocket layer refused what the client sent: a frame over the
    /// size limit (1009), a text frame that is not UTF-8 (1007), or a frame
    /// that breaks RFC 6455 (1002). A connection that failed gets nothing.
    async fn close_after_read_error(&self, e: &tungstenite::Error) {
        let (code, reason) = match e {
            tungstenite::Error::Capacity(_) => return self.close_frame_too_large().await,
            tungstenite::Error::Utf8(_) => (
                1007,
                "malformed frame: a text frame that is not valid UTF-8".to_string(),
            ),
            tungstenite::Error::Protocol(p) => (1002, format!("protocol error: {p}")),
            // The connection itself failed: nobody to tell.
            _ => {
                tracing::debug!(socket = self.id, error = %e, "socket read failed");
                return;
            }
        };
        Metrics::inc(&METRICS.bad_frames);
        tracing::info!(socket = self.id, %reason, "closing a socket that broke the WebSocket protocol");
        self.close(code, &reason).await;
    }

    async fn reply(&self, m: &Inbound, join_ref: Option<&RawValue>, ok: bool, response: &str) {
        let payload = frame::reply_payload(ok, response);
        self.send(frame::encode(
            self.vsn,
            join_ref,
            m.msg_ref.as_deref(),
            &m.topic,
            "phx_reply",
            &payload,
        ))
        .await;
    }

    async fn handle(&mut self, m: Inbound) {
        match (m.topic.as_str(), m.event.as_str()) {
            ("phoenix", "heartbeat") => self.reply(&m, None, true, "{}").await,
            (_, "phx_join") => self.join(m).await,
            (_, "phx_leave") => self.leave(m).await,
            (topic, "broadcast") if self.is_v2(topic) => self.broadcast(m).await,
            (topic, "presence") if self.is_v2(topic) => self.presence(m).await,
            (topic, "access_token") if self.channels.contains_key(topic) => {
                self.refresh_token(m).await
            }
            (topic, event) => {
                let reason = if self.channels.contains_key(topic) {
                    format!("unknown event {event:?} on topic {topic:?}")
                } else {
                    "unmatched topic".to_string()
                };
                let join_ref = m.join_ref.clone();
                self.reply(&m, join_ref.as_deref(), false, &frame::reason(&reason))
                    .await;
            }
        }
    }

    fn is_v2(&self, topic: &str) -> bool {
        matches!(
            self.channels.get(topic).map(|c| &c.kind),
            Some(ChannelKind::V2 { .. })
        )
    }

    async fn reply_error(&self, m: &Inbound, reason: &str) {
        let join_ref = m.join_ref.clone();
        self.reply(
            &m.clone(),
            join_ref.as_deref(),
            false,
            &frame::reason(reason),
        )
        .await;
    }

    /// Ends a joined channel's subscriptions.
    fn drop_channel(&self, channel: &Channel) {
        match &channel.kind {
            ChannelKind::Legacy(t) => self.hub.unsubscribe_legacy(self.id, t),
            ChannelKind::V2 { topic, .. } => self.hub.leave_channel(self.id, topic),
        }
    }

    /// When channels are secured, a token in the payload (`access_token`,
    /// or older clients' `user_token`) must verify. `None` (or null, which
    /// realtime-js 1.7 sends) means the socket's own token stands.
    /// On success, when the token that now stands expires.
    fn check_token(&self, payload: &Value) -> Result<Option<u64>, String> {
        let Some(verifier) = &self.verifier else {
            return Ok(None);
        };
        let token = payload["access_token"]
            .as_str()
            .or_else(|| payload["user_token"].as_str());
        match token {
            Some(t) => verifier.verify(t).map(|c| c.exp).map_err(|e| {
                Metrics::inc(&METRICS.auth_failures);
                e.to_string()
            }),
            None => Ok(self.socket_exp),
        }
    }

    /// The earliest expiry among the joined channels.
    fn next_expiry(&self) -> Option<u64> {
        self.channels.values().filter_map(|c| c.expires_at).min()
    }

    /// Closes every channel whose token has expired, each with a `system`
    /// error the client can read, as a refused token does.
    async fn expire_channels(&mut self) {
        let now = unix_now();
        let expired: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, c)| c.expires_at.is_some_and(|e| e <= now))
            .map(|(t, _)| t.clone())
            .collect();
        for topic in expired {
            if let Some(channel) = self.channels.remove(&topic) {
                tracing::info!(socket = self.id, %topic, "closing a channel: its token expired");
                self.close_channel(&topic, channel, "access token has expired")
                    .await;
            }
        }
    }

    /// Ends a channel the server refuses to keep: a `system` error naming
    /// the reason, then `phx_close`.
    async fn close_channel(&mut self, topic: &str, channel: Channel, reason: &str) {
        self.drop_channel(&channel);
        let join_ref = channel.join_ref.as_deref();
        let short = topic.strip_prefix("realtime:").unwrap_or(topic);
        let system = serde_json::json!({"extension": "system", "status": "error",
            "message": reason, "channel": short});
        self.push(join_ref, topic, "system", &system.to_string())
            .await;
        self.push_close(join_ref, topic).await;
    }

    /// An `access_token` push replaces the channel's token; one that does
    /// not verify closes the channel with a `system` error the client can
    /// read. The clients expect no reply.
    async fn refresh_token(&mut self, m: Inbound) {
        let reason = match self.check_token(&m.payload) {
            Ok(exp) => {
                // A new token moves the channel's expiry; a null one (as
                // realtime-js 1.7 sends) leaves it.
                let new_token =
                    m.payload["access_token"].is_string() || m.payload["user_token"].is_string();
                if let (true, Some(channel)) = (new_token, self.channels.get_mut(&m.topic)) {
                    channel.expires_at = exp;
                }
                return;
            }
            Err(reason) => reason,
        };
        let Some(channel) = self.channels.remove(&m.topic) else {
            return;
        };
        tracing::info!(socket = self.id, topic = %m.topic, %reason, "closing a channel: its new token was refused");
        self.close_channel(&m.topic, channel, &reason).await;
    }

    async fn join(&mut self, m: Inbound) {
        if !m.topic.starts_with("realtime:") {
            return self.reply_error(&m, "unmatched topic").await;
        }
        let expires_at = match self.check_token(&m.payload) {
            Ok(exp) => exp,
            Err(reason) => return self.reply_error(&m, &reason).await,
        };
        if !self.channels.contains_key(&m.topic) && self.channels.len() >= self.limits.max_channels
        {
            let reason = format!(
                "too many channels on this socket (limit {})",
                self.limits.max_channels
            );
            return self.reply_error(&m, &reason).await;
        }
        match m.payload.get("config").filter(|c| c.is_object()).cloned() {
            None => self.join_legacy(m, expires_at).await,
            Some(config) => self.join_v2(m, &config, expires_at).await,
        }
    }

    async fn join_legacy(&mut self, m: Inbound, expires_at: Option<u64>) {
        let join_ref = m.join_ref.clone();
        let key = match LegacyTopic::parse(&m.topic) {
            Ok(key) => key,
            Err(reason) => return self.reply_error(&m, &reason).await,
        };
        // A second join of the same topic replaces the first.
        if let Some(old) = self.channels.remove(&m.topic) {
            self.drop_channel(&old);
        }
        // The reply is queued before the subscription starts, so it precedes
        // every change the channel receives.
        self.reply(&m, join_ref.as_deref(), true, "{}").await;
        self.hub.subscribe_legacy(self.id, self.vsn, &key, &m.topic);
        self.channels.insert(
            m.topic.clone(),
            Channel {
                join_ref,
                kind: ChannelKind::Legacy(key),
                expires_at,
                _open: ChannelGauge::open(),
            },
        );
    }

    async fn join_v2(&mut self, m: Inbound, config: &Value, expires_at: Option<u64>) {
        let join_ref = m.join_ref.clone();
        let topic: Arc<str> = m.topic.as_str().into();
        let self_broadcast = config["broadcast"]["self"].as_bool().unwrap_or(false);
        let ack = config["broadcast"]["ack"].as_bool().unwrap_or(false);
        let presence_key = match config["presence"]["key"].as_str() {
            Some(k) if !k.is_empty() => k.to_string(),
            _ => {
                self.next_presence += 1;
                format!("{}-{}", self.id, self.next_presence)
            }
        };
        let requested: Vec<Value> = match &config["postgres_changes"] {
            Value::Array(items) => items.clone(),
            _ => Vec::new(),
        };

        // Resolve every binding before answering: the reply echoes them with
        // their ids; an invalid one makes the `system` push an error.
        let mut bindings = Vec::new();
        let mut echo = Vec::new();
        let mut error: Option<String> = None;
        for (i, req) in requested.iter().enumerate() {
            let id = i as u32 + 1;
            let mut e = req.as_object().cloned().unwrap_or_default();
            e.insert("id".into(), Value::from(id));
            echo.push(Value::Object(e));
            match self.binding(req, id, &topic).await {
                Ok(b) => bindings.push(b),
                Err(reason) => {
                    error.get_or_insert(reason);
                }
            }
        }

        if let Some(old) = self.channels.remove(&m.topic) {
            self.drop_channel(&old);
        }
        let response = serde_json::json!({ "postgres_changes": echo }).to_string();
        self.reply(&m, join_ref.as_deref(), true, &response).await;
        if error.is_none() {
            self.hub.add_bindings(bindings);
        }
        let state = self
            .hub
            .join_channel(self.id, &topic, self.vsn, self_broadcast);
        self.channels.insert(
            m.topic.clone(),
            Channel {
                join_ref: join_ref.clone(),
                kind: ChannelKind::V2 {
                    topic: topic.clone(),
                    ack,
                    presence_key,
                },
                expires_at,
                _open: ChannelGauge::open(),
            },
        );
        if !requested.is_empty() {
            let channel = m.topic.strip_prefix("realtime:").unwrap_or(&m.topic);
            let system = match &error {
                None => serde_json::json!({"extension": "postgres_changes", "status": "ok",
                    "message": "Subscribed to PostgreSQL", "channel": channel}),
                Some(reason) => {
                    tracing::info!(socket = self.id, topic = %m.topic, %reason, "refused postgres_changes bindings");
                    serde_json::json!({"extension": "postgres_changes", "status": "error",
                        "message": reason, "channel": channel})
                }
            };
            self.push(join_ref.as_deref(), &m.topic, "system", &system.to_string())
                .await;
        }
        self.push(join_ref.as_deref(), &m.topic, "presence_state", &state)
            .await;
    }

    /// One `postgres_changes` binding, checked against the published tables.
    async fn binding(&self, req: &Value, id: u32, topic: &Arc<str>) -> Result<Binding, String> {
        let event = match req["event"]
            .as_str()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            Some("*") => None,
            Some("INSERT") => Some(ChangeKind::Insert),
            Some("UPDATE") => Some(ChangeKind::Update),
            Some("DELETE") => Some(ChangeKind::Delete),
            other => {
                return Err(format!(
                    "invalid event {:?}: use INSERT, UPDATE, DELETE or *",
                    other.unwrap_or("")
                ))
            }
        };
        let schema = req["schema"].as_str().unwrap_or("public").to_string();
        let table = req["table"]
            .as_str()
            .filter(|t| !t.is_empty() && *t != "*")
            .map(str::to_string);
        let tables = self.published.lookup(&schema, table.as_deref()).await?;
        let Some(first) = tables.first() else {
            return Err(match &table {
                Some(t) => format!(
                    "{schema}.{t} is not in any publication this server streams: add it, e.g. \
                     ALTER PUBLICATION <name> ADD TABLE {schema}.{t}"
                ),
                None => format!(
                    "schema {schema:?} has no table in the publications this server streams"
                ),
            });
        };
        let filter = match req["filter"].as_str().filter(|f| !f.is_empty()) {
            None => None,
            Some(text) => {
                if table.is_none() {
                    return Err(format!("filter {text:?} needs a table"));
                }
                Some(Filter::parse(text, |c| first.column(c)).map_err(|e| e.0)?)
            }
        };
        Ok(Binding {
            socket: self.id,
            topic: topic.clone(),
            vsn: self.vsn,
            id,
            schema,
            table,
            event,
            filter,
        })
    }

    /// `phx_close` for a channel that ended; Phoenix sends it with the
    /// channel's join_ref as both refs.
    async fn push_close(&self, join_ref: Option<&RawValue>, topic: &str) {
        self.send(frame::encode(
            self.vsn,
            join_ref,
            join_ref,
            topic,
            "phx_close",
            "{}",
        ))
        .await;
    }

    /// A push from the server on a channel (`ref` null).
    async fn push(&self, join_ref: Option<&RawValue>, topic: &str, event: &str, payload: &str) {
        self.send(frame::encode(
            self.vsn, join_ref, None, topic, event, payload,
        ))
        .await;
    }

    async fn broadcast(&self, m: Inbound) {
        let Some(Channel {
            kind: ChannelKind::V2 { topic, ack, .. },
            join_ref,
            ..
        }) = self.channels.get(&m.topic)
        else {
            return;
        };
        self.hub
            .relay(topic, Some(self.id), "broadcast", &m.payload.to_string());
        if *ack {
            self.reply(&m, join_ref.as_deref(), true, "{}").await;
        }
    }

    async fn presence(&self, m: Inbound) {
        let Some(Channel {
            kind:
                ChannelKind::V2 {
                    topic,
                    presence_key,
                    ..
                },
            join_ref,
            ..
        }) = self.channels.get(&m.topic)
        else {
            return;
        };
        match m.payload["event"].as_str() {
            Some("track") => {
                let meta = m.payload["payload"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                self.hub.track(self.id, topic, presence_key.clone(), meta);
            }
            Some("untrack") => self.hub.untrack(self.id, topic),
            other => {
                let reason = format!("unknown presence event {other:?}: use track or untrack");
                return self
                    .reply(&m, join_ref.as_deref(), false, &frame::reason(&reason))
                    .await;
            }
        }
        self.reply(&m, join_ref.as_deref(), true, "{}").await;
    }

    async fn leave(&mut self, m: Inbound) {
        let Some(channel) = self.channels.remove(&m.topic) else {
            return self.reply_error(&m, "unmatched topic").await;
        };
        self.drop_channel(&channel);
        let join_ref = channel.join_ref.as_deref();
        self.reply(&m, join_ref, true, "{}").await;
        self.push_close(join_ref, &m.topic).await;
    }
}

/// Queues one text frame on the sink and counts it; false when the socket
/// is gone.
async fn feed(sink: &mut Sink, frame: Frame) -> bool {
    let len = frame.len() as u64;
    if sink.feed(Message::Text(frame)).await.is_err() {
        return false;
    }
    Metrics::inc(&METRICS.messages_sent);
    METRICS
        .bytes_sent
        .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
    true
}

fn close_message(code: u16, reason: impl Into<tungstenite::Utf8Bytes>) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Sleeps until `at` (seconds since the Unix epoch); a token is valid up to
/// and excluding its `exp` second.
async fn sleep_until_unix(at: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let wait = Duration::from_secs(at).saturating_sub(now);
    tokio::time::sleep(wait).await;
}

/// A close reason must fit a control frame (123 bytes).
fn truncate_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

/// How long a shutdown lets a writer send what is queued for its socket.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// How long a writer that is closing its socket waits for the client to take
/// the close frame. A client that stopped reading never does: past this its
/// connection is dropped, and with it the frames queued for it.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How a writer's draining of its queue ended.
enum Ending {
    /// The session or the hub asked for this close frame.
    Close(Message),
    /// Every sender is gone: the session ended.
    QueueEnded,
    /// The connection failed.
    Broken,
}

async fn write_loop(
    mut sink: Sink,
    mut rx: mpsc::Receiver<Outbound>,
    cancel: tokio_util::sync::CancellationToken,
    shutdown: tokio_util::sync::CancellationToken,
    _guard: crate::hub::WriterGuard,
) {
    // On shutdown the hub queues a 1001 close behind the frames already
    // queued, so they go out first; a writer still stuck after SHUTDOWN_DRAIN
    // (a client that does not read) is closed anyway.
    let stuck = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_DRAIN).await;
    };
    // The hub's cancel interrupts a write that is blocked on a client that
    // does not read, so a slow consumer is closed at once.
    let ending = tokio::select! {
        biased;
        _ = cancel.cancelled() => Ending::Close(
            if shutdown.is_cancelled() {
                close_message(CLOSE_GOING_AWAY, "server shutting down")
            } else {
                let reason = "slow consumer: the send queue is full; reconnect";
                close_message(CLOSE_SLOW_CONSUMER, reason)
            },
        ),
        _ = stuck => Ending::Close(close_message(CLOSE_GOING_AWAY, "server shutting down")),
        ending = drain(&mut sink, &mut rx) => ending,
    };
    let finished = match ending {
        Ending::Close(close) => tokio::time::timeout(CLOSE_GRACE, sink.send(close)).await,
        Ending::QueueEnded => tokio::time::timeout(CLOSE_GRACE, sink.close()).await,
        Ending::Broken => return,
    };
    if finished.is_err() {
        tracing::info!(
            "dropped a connection whose client did not take its close frame within {CLOSE_GRACE:?}"
        );
    }
}

/// Writes queued frames, batching up to [`WRITE_BATCH`] per flush, until a
/// close is queued or the queue ends.
async fn drain(sink: &mut Sink, rx: &mut mpsc::Receiver<Outbound>) -> Ending {
    loop {
        let Some(mut item) = rx.recv().await else {
            return Ending::QueueEnded;
        };
        let mut n = 0;
        loop {
            match item {
                Outbound::Frame(frame) => {
                    if !feed(sink, frame).await {
                        return Ending::Broken;
                    }
                }
                Outbound::Close(code, reason) => {
                    return Ending::Close(close_message(code, reason));
                }
            }
            n += 1;
            if n >= WRITE_BATCH {
                break;
            }
            match rx.try_recv() {
                Ok(next) => item = next,
                Err(_) => break,
            }
        }
        if sink.flush().await.is_err() {
            return Ending::Broken;
        }
    }
}

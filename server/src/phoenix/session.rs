//! One WebSocket connection's session: the read loop.
//!
//! Owns a socket's life: registering with the hub and starting its writer,
//! reading and decoding what the client sends, the idle timeout, closing
//! the channels whose token expired, closing the socket on input it cannot
//! read (with a code from `close`), and unregistering at the end. Owns the
//! socket's queue too: whatever a channel feature sends goes through the
//! helpers here, so a client sees replies and changes in the order they
//! were produced.
//!
//! Must not handle an event itself (`channel` routes each message to its
//! feature) nor write to the WebSocket (`writer` does).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::auth::{Claims, JwtVerifier};
use crate::authz::authorizer::Authorizer;
use crate::hub::QueueTx;
use crate::hub::{Hub, Outbound, SocketId};
use crate::limits::{MemoryBudget, Rate, SharedRate};
use crate::metrics::METRICS;
use crate::phoenix::channel::{Channel, Waiting};
use crate::phoenix::close;
use crate::phoenix::frame::{self, Frame, Inbound, Vsn};
use crate::phoenix::writer;
use crate::published::PublishedTables;
use crate::replication::stream::StreamStatus;

/// A socket that sends nothing, not even a heartbeat, for this long is closed
/// (phoenix.js heartbeats every 30 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings a socket needs from the server's configuration.
#[derive(Debug, Clone)]
pub struct SocketLimits {
    pub max_channels: usize,
    pub max_frame_bytes: usize,
    /// `PRIVATE_ONLY`: public channels are refused.
    pub private_only: bool,
    /// `MAX_FILTER_VALUES`, `MAX_FILTER_CONDITIONS`, `MAX_BINDINGS_PER_JOIN`,
    /// `MAX_TOPIC_BYTES`, `MAX_PRESENCE_KEY_BYTES`, `MAX_PRESENCE_META_BYTES`:
    /// see [`crate::config`].
    pub max_filter_values: usize,
    pub max_filter_conditions: usize,
    pub max_bindings_per_join: usize,
    pub max_topic_bytes: usize,
    pub max_presence_key_bytes: usize,
    pub max_presence_meta_bytes: usize,
    /// `MAX_EVENTS_PER_SECOND`, `MAX_JOINS_PER_SECOND`,
    /// `MAX_PRESENCE_EVENTS_PER_SECOND`: per socket.
    pub max_events_per_second: u32,
    pub max_joins_per_second: u32,
    pub max_presence_events_per_second: u32,
    /// `REPLICATION_READY_TIMEOUT_MS`, `POSTGRES_CHANGES_WAIT_MAX_MS`.
    pub replication_ready_timeout: Duration,
    pub postgres_changes_wait_max: Duration,
}

/// A socket's own rates, each a token bucket (see [`Rate`]).
#[derive(Debug)]
pub(in crate::phoenix) struct SocketRates {
    pub(in crate::phoenix) events: Rate,
    pub(in crate::phoenix) joins: Rate,
    pub(in crate::phoenix) presence: Rate,
}

impl SocketRates {
    fn of(limits: &SocketLimits) -> SocketRates {
        SocketRates {
            events: Rate::per_second(limits.max_events_per_second),
            joins: Rate::per_second(limits.max_joins_per_second),
            presence: Rate::per_second(limits.max_presence_events_per_second),
        }
    }
}

impl SocketLimits {
    /// The limits of `config`.
    pub fn of(config: &crate::config::Config) -> SocketLimits {
        SocketLimits {
            max_channels: config.max_channels_per_socket,
            max_frame_bytes: config.max_frame_bytes,
            private_only: config.private_only,
            max_filter_values: config.max_filter_values,
            max_filter_conditions: config.max_filter_conditions,
            max_bindings_per_join: config.max_bindings_per_join,
            max_topic_bytes: config.max_topic_bytes,
            max_presence_key_bytes: config.max_presence_key_bytes,
            max_presence_meta_bytes: config.max_presence_meta_bytes,
            max_events_per_second: config.max_events_per_second,
            max_joins_per_second: config.max_joins_per_second,
            max_presence_events_per_second: config.max_presence_events_per_second,
            replication_ready_timeout: config.replication_ready_timeout,
            postgres_changes_wait_max: config.postgres_changes_wait_max,
        }
    }
}

/// What every socket shares.
pub struct SocketContext {
    pub hub: Arc<Hub>,
    /// `Some` when channels are secured: join and `access_token` tokens are
    /// checked with it.
    pub verifier: Option<JwtVerifier>,
    pub published: Arc<PublishedTables>,
    pub limits: SocketLimits,
    /// `MAX_CATALOG_LOOKUPS_PER_SECOND`, over every socket.
    pub catalog_lookups: Arc<SharedRate>,
    /// `MEMORY_BUDGET_MB`: past it, joins are refused.
    pub memory_budget: MemoryBudget,
    /// Whether the replication stream is live: channels waiting for their
    /// bindings to be live watch it.
    pub stream: Arc<StreamStatus>,
}

/// A WebSocket on the connection hyper upgraded.
pub type WebSocket =
    tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// The state of one socket, shared by the channel features (each adds its
/// own `impl Session` in `channel/`).
pub(in crate::phoenix) struct Session {
    pub(in crate::phoenix) id: SocketId,
    pub(in crate::phoenix) vsn: Vsn,
    pub(in crate::phoenix) hub: Arc<Hub>,
    pub(in crate::phoenix) published: Arc<PublishedTables>,
    pub(in crate::phoenix) verifier: Option<JwtVerifier>,
    /// When channels are secured: who may see what (the hub's).
    pub(in crate::phoenix) authz: Option<Arc<Authorizer>>,
    /// The joined channels by topic.
    pub(in crate::phoenix) channels: HashMap<String, Channel>,
    pub(in crate::phoenix) limits: SocketLimits,
    pub(in crate::phoenix) rates: SocketRates,
    pub(in crate::phoenix) catalog_lookups: Arc<SharedRate>,
    pub(in crate::phoenix) memory_budget: MemoryBudget,
    /// Presence keys made up for channels that named none.
    pub(in crate::phoenix) next_presence: u64,
    /// The claims of the token the socket connected with (channels
    /// secured): a join without a token of its own acts with them.
    pub(in crate::phoenix) socket_claims: Option<Arc<Claims>>,
    /// [`crate::auth::token_fingerprint`] of that token: a join sending the
    /// same token again acts with those claims without verifying it twice.
    pub(in crate::phoenix) socket_token: Option<u64>,
    pub(in crate::phoenix) stream: Arc<StreamStatus>,
    /// What channels wait for, in the order it was asked: the replication
    /// stream to be live, or their deadline (see `channel::ready`).
    pub(in crate::phoenix) waiting: Vec<Waiting>,
    /// Into the socket's own queue, behind the changes the hub queued.
    tx: QueueTx,
}

/// Serves one upgraded WebSocket until either side closes it.
/// `socket_claims` are the claims of the token checked at the upgrade, with
/// the token's fingerprint.
pub async fn serve(
    ws: WebSocket,
    vsn: Vsn,
    ctx: Arc<SocketContext>,
    socket_claims: Option<(Claims, Option<u64>)>,
) {
    let reg = ctx.hub.register();
    let (sink, mut stream) = ws.split();
    let cancel = reg.cancel.clone();
    let shutdown = reg.shutdown.clone();
    let writer = tokio::spawn(writer::write_loop(
        sink,
        reg.rx,
        reg.cancel,
        reg.shutdown,
        reg.writer_guard,
    ));
    let mut session = Session {
        id: reg.id,
        vsn,
        hub: ctx.hub.clone(),
        published: ctx.published.clone(),
        verifier: ctx.verifier.clone(),
        authz: ctx.hub.authorizer().cloned(),
        channels: HashMap::new(),
        limits: ctx.limits.clone(),
        rates: SocketRates::of(&ctx.limits),
        catalog_lookups: ctx.catalog_lookups.clone(),
        memory_budget: ctx.memory_budget,
        next_presence: 0,
        socket_token: socket_claims.as_ref().and_then(|(_, t)| *t),
        socket_claims: socket_claims.map(|(c, _)| Arc::new(c)),
        stream: ctx.stream.clone(),
        waiting: Vec::new(),
        tx: reg.tx,
    };
    tracing::debug!(socket = session.id, ?vsn, "socket connected");

    loop {
        let expiry = session.next_expiry();
        let live = session.live_watch();
        let deadline = session.next_wait_deadline();
        let next = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = shutdown.cancelled() => break,
            _ = sleep_until_unix(expiry.unwrap_or(u64::MAX)), if expiry.is_some() => {
                session.expire_channels();
                continue;
            }
            _ = until_live(live.clone()), if live.is_some() => {
                session.stream_live();
                continue;
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)),
                if deadline.is_some() => {
                session.waits_expired();
                continue;
            }
            next = tokio::time::timeout(IDLE_TIMEOUT, stream.next()) => next,
        };
        let msg = match next {
            Err(_) => {
                session.close(close::NORMAL, "idle timeout: nothing received for 60 s");
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                session.close_after_read_error(&e);
                break;
            }
            Ok(Some(Ok(msg))) => msg,
        };
        if msg.len() > session.limits.max_frame_bytes {
            session.close_frame_too_large();
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
            // Handled at once, except a join that looks its bindings up in
            // the catalog: only that remainder waits, boxed, so that its
            // future (several KiB) is not carried inline by every socket's
            // task for its whole life, and no other message allocates one.
            Ok(inbound) => {
                if let Some(lookup) = session.handle(inbound) {
                    lookup.await;
                }
            }
            Err(e) => {
                METRICS.bad_frames.inc();
                tracing::info!(socket = session.id, error = %e, "closing a socket that sent a malformed frame");
                let code = if msg.is_binary() {
                    close::UNSUPPORTED_DATA
                } else {
                    close::INVALID_PAYLOAD
                };
                session.close(code, &e.to_string());
                break;
            }
        }
    }

    let id = session.id;
    session.leave_all();
    tracing::debug!(socket = id, "socket disconnected");
    // The writer ends when every sender is gone (the hub's was dropped when
    // the socket unregistered, the session's with it), after flushing what
    // is queued.
    let _ = writer.await;
}

/// Sending: every reply, push and close goes into the socket's queue.
impl Session {
    pub(in crate::phoenix) fn send(&self, frame: Frame) {
        self.enqueue(Outbound::Frame(frame));
    }

    /// Asks the writer to close the socket with `code` after what is queued.
    pub(in crate::phoenix) fn close(&self, code: u16, reason: &str) {
        self.enqueue(Outbound::Close(code, close::truncate_reason(reason)));
    }

    /// Queues without waiting: a client that sends requests faster than it
    /// reads their answers fills its own queue and is closed as a slow
    /// consumer, as when changes fill it, instead of stalling the read loop.
    fn enqueue(&self, item: Outbound) {
        if !self.enqueue_only(item) {
            self.hub.close_slow_consumer(self.id);
        }
    }

    /// Queues without waiting and without touching the hub (which may be
    /// locked by the caller); false when the queue is full, and the caller
    /// closes the socket as a slow consumer once the hub is free.
    pub(in crate::phoenix) fn enqueue_only(&self, item: Outbound) -> bool {
        !matches!(
            self.tx.try_send(item),
            Err(mpsc::error::TrySendError::Full(_))
        )
    }

    /// A `phx_reply` to `m`, `ok` or error, with `response` (JSON text).
    pub(in crate::phoenix) fn reply(
        &self,
        m: &Inbound,
        join_ref: Option<&RawValue>,
        ok: bool,
        response: &str,
    ) {
        let payload = frame::reply_payload(ok, response);
        self.send(frame::encode(
            self.vsn,
            join_ref,
            m.msg_ref.as_deref(),
            &m.topic,
            "phx_reply",
            &payload,
        ));
    }

    /// An error reply to `m` with `{"reason": reason}`.
    pub(in crate::phoenix) fn reply_error(&self, m: &Inbound, reason: &str) {
        self.reply(m, m.join_ref.as_deref(), false, &frame::reason(reason));
    }

    /// A push from the server on a channel (`ref` null).
    pub(in crate::phoenix) fn push(
        &self,
        join_ref: Option<&RawValue>,
        topic: &str,
        event: &str,
        payload: &str,
    ) {
        self.send(frame::encode(
            self.vsn, join_ref, None, topic, event, payload,
        ));
    }

    /// `phx_close` for a channel that ended; Phoenix sends it with the
    /// channel's join_ref as both refs.
    pub(in crate::phoenix) fn push_close(&self, join_ref: Option<&RawValue>, topic: &str) {
        self.send(frame::encode(
            self.vsn,
            join_ref,
            join_ref,
            topic,
            "phx_close",
            "{}",
        ));
    }
}

/// Closing on input the server cannot read.
impl Session {
    fn close_frame_too_large(&self) {
        METRICS.bad_frames.inc();
        let limit = self.limits.max_frame_bytes;
        tracing::info!(
            socket = self.id,
            limit,
            "closing a socket that sent a frame over the limit"
        );
        self.close(
            close::MESSAGE_TOO_BIG,
            &format!("frame too large: the limit is {limit} bytes"),
        );
    }

    /// The WebSocket layer refused what the client sent: a frame over the
    /// size limit (1009), a text frame that is not UTF-8 (1007), or a frame
    /// that breaks RFC 6455 (1002). A connection that failed gets nothing.
    fn close_after_read_error(&self, e: &tungstenite::Error) {
        let (code, reason) = match e {
            tungstenite::Error::Capacity(_) => return self.close_frame_too_large(),
            tungstenite::Error::Utf8(_) => (
                close::INVALID_PAYLOAD,
                "malformed frame: a text frame that is not valid UTF-8".to_string(),
            ),
            tungstenite::Error::Protocol(p) => {
                (close::PROTOCOL_ERROR, format!("protocol error: {p}"))
            }
            // The connection itself failed: nobody to tell.
            _ => {
                tracing::debug!(socket = self.id, error = %e, "socket read failed");
                return;
            }
        };
        METRICS.bad_frames.inc();
        tracing::info!(socket = self.id, %reason, "closing a socket that broke the WebSocket protocol");
        self.close(code, &reason);
    }
}

/// Token expiry: a channel lives no longer than the token it stands on.
impl Session {
    /// The earliest expiry among the joined channels.
    fn next_expiry(&self) -> Option<u64> {
        self.channels.values().filter_map(|c| c.expires_at).min()
    }

    /// Closes every channel whose token has expired, each with a `system`
    /// error the client can read, as a refused token does.
    fn expire_channels(&mut self) {
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
                self.close_channel(&topic, channel, "access token has expired");
            }
        }
    }
}

/// Resolves once the replication stream is live (never, without a watch).
async fn until_live(live: Option<tokio::sync::watch::Receiver<bool>>) {
    if let Some(mut live) = live {
        if live.wait_for(|l| *l).await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

pub(in crate::phoenix) fn unix_now() -> u64 {
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

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
use warp::ws::{Message, WebSocket};

use crate::hub::{Hub, LegacyTopic, Outbound, SocketId, CLOSE_SLOW_CONSUMER};
use crate::phoenix::frame::{self, Inbound, Vsn};

/// A socket that sends nothing, not even a heartbeat, for this long is closed
/// (phoenix.js heartbeats every 30 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Frames written before one flush: amortizes the syscall without delaying
/// the first frame of a burst.
const WRITE_BATCH: usize = 256;

/// Settings a socket needs from the server's configuration.
#[derive(Debug, Clone)]
pub struct SocketLimits {
    pub max_channels: usize,
    pub max_frame_bytes: usize,
}

/// A joined channel.
struct Channel {
    join_ref: Option<Box<RawValue>>,
    topic: LegacyTopic,
}

struct Session {
    id: SocketId,
    vsn: Vsn,
    hub: Arc<Hub>,
    tx: mpsc::Sender<Outbound>,
    channels: HashMap<String, Channel>,
    limits: SocketLimits,
}

/// Serves one upgraded WebSocket until either side closes it.
pub async fn serve(ws: WebSocket, vsn: Vsn, hub: Arc<Hub>, limits: SocketLimits) {
    let reg = hub.register();
    let (sink, mut stream) = ws.split();
    let cancel = reg.cancel.clone();
    let writer = tokio::spawn(write_loop(sink, reg.rx, reg.cancel.clone()));
    let mut session = Session {
        id: reg.id,
        vsn,
        hub: hub.clone(),
        tx: reg.tx,
        channels: HashMap::new(),
        limits,
    };
    tracing::debug!(socket = session.id, ?vsn, "socket connected");

    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => break,
            next = tokio::time::timeout(IDLE_TIMEOUT, stream.next()) => next,
        };
        let msg = match next {
            Err(_) => {
                session
                    .close(1000, "idle timeout: nothing received for 60 s")
                    .await;
                break;
            }
            Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(msg))) => msg,
        };
        if msg.is_close() {
            break;
        }
        if msg.is_ping() || msg.is_pong() {
            continue;
        }
        let Ok(text) = msg.to_str() else {
            session
                .close(1003, "binary frames are not supported: send JSON text")
                .await;
            break;
        };
        if text.len() > session.limits.max_frame_bytes {
            session.close(1009, "frame too large").await;
            break;
        }
        match Inbound::decode(vsn, text) {
            Ok(inbound) => session.handle(inbound).await,
            Err(e) => {
                tracing::info!(socket = session.id, error = %e, "closing a socket that sent a malformed frame");
                session.close(1007, &e.to_string()).await;
                break;
            }
        }
    }

    let topics: Vec<LegacyTopic> = session.channels.drain().map(|(_, c)| c.topic).collect();
    hub.unregister(session.id, topics);
    tracing::debug!(socket = session.id, "socket disconnected");
    drop(session);
    // The writer ends when every sender is gone (the hub's was dropped by
    // unregister), after flushing what is queued.
    let _ = writer.await;
}

impl Session {
    async fn send(&self, frame: Arc<str>) {
        let _ = self.tx.send(Outbound::Frame(frame)).await;
    }

    async fn close(&self, code: u16, reason: &str) {
        let _ = self
            .tx
            .send(Outbound::Close(code, truncate_reason(reason)))
            .await;
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
            (topic, "access_token") if self.channels.contains_key(topic) => {
                // realtime-js 1.7 sends one (with a null token) after each
                // heartbeat. Channels are not secured per token yet: accepted
                // quietly, as the clients expect no reply.
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

    async fn join(&mut self, m: Inbound) {
        let join_ref = m.join_ref.clone();
        let key = match LegacyTopic::parse(&m.topic) {
            Ok(key) => key,
            Err(reason) => {
                return self
                    .reply(&m, join_ref.as_deref(), false, &frame::reason(&reason))
                    .await
            }
        };
        // A second join of the same topic replaces the first.
        if let Some(old) = self.channels.remove(&m.topic) {
            self.hub.unsubscribe_legacy(self.id, &old.topic);
        } else if self.channels.len() >= self.limits.max_channels {
            let reason = format!(
                "too many channels on this socket (limit {})",
                self.limits.max_channels
            );
            return self
                .reply(&m, join_ref.as_deref(), false, &frame::reason(&reason))
                .await;
        }
        // The reply is queued before the subscription starts, so it precedes
        // every change the channel receives.
        self.reply(&m, join_ref.as_deref(), true, "{}").await;
        self.hub.subscribe_legacy(self.id, self.vsn, &key, &m.topic);
        self.channels.insert(
            m.topic.clone(),
            Channel {
                join_ref,
                topic: key,
            },
        );
    }

    async fn leave(&mut self, m: Inbound) {
        let Some(channel) = self.channels.remove(&m.topic) else {
            let join_ref = m.join_ref.clone();
            return self
                .reply(
                    &m,
                    join_ref.as_deref(),
                    false,
                    &frame::reason("unmatched topic"),
                )
                .await;
        };
        self.hub.unsubscribe_legacy(self.id, &channel.topic);
        let join_ref = channel.join_ref.as_deref();
        self.reply(&m, join_ref, true, "{}").await;
        self.send(frame::encode(
            self.vsn,
            join_ref,
            join_ref,
            &m.topic,
            "phx_close",
            "{}",
        ))
        .await;
    }
}

/// A close reason must fit a control frame (123 bytes).
fn truncate_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

async fn write_loop(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                let reason = "slow consumer: the send queue is full; reconnect";
                let _ = sink.send(Message::close_with(CLOSE_SLOW_CONSUMER, reason)).await;
                return;
            }
            item = rx.recv() => item,
        };
        let Some(mut item) = first else {
            let _ = sink.close().await;
            return;
        };
        let mut n = 0;
        loop {
            match item {
                Outbound::Frame(text) => {
                    if sink.feed(Message::text(&*text)).await.is_err() {
                        return;
                    }
                }
                Outbound::Close(code, reason) => {
                    let _ = sink.send(Message::close_with(code, reason)).await;
                    return;
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
            return;
        }
    }
}

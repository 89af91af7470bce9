//! Telling a 2.x channel when its `postgres_changes` bindings are live.
//!
//! A binding is live once the hub has it and the replication stream is
//! live (the slot exists and streams, see [`StreamStatus`]): from then on a
//! change committed later reaches the channel. A client that writes right
//! after being told so never misses its own write (supabase-js#1599). Three
//! signals, each sent only then:
//!
//! - the `system` push `{"extension": "postgres_changes", "status": "ok",
//!   "message": "Subscribed to PostgreSQL"}` after a join with bindings;
//! - with `config.broadcast.replication_ready`, the `system` push
//!   `{"extension": "system", "status": "ok", "message": "Replication
//!   connection established"}`; when the stream is not live within
//!   `REPLICATION_READY_TIMEOUT_MS`, an error push instead and the channel
//!   is closed (as Supabase Realtime does);
//! - with `config.postgres_changes_options.wait` (the newest realtime-js's
//!   `subscribe()` option), the join's reply itself: held until the bindings
//!   are live, refused with `PostgresChangesSubscribeTimeout` past its
//!   timeout (the client's, at most `POSTGRES_CHANGES_WAIT_MAX_MS`).
//!
//! When the stream is live at the join, each is sent at once; otherwise the
//! session keeps a [`Waiting`] entry and calls [`Session::stream_live`] when
//! the stream turns live, [`Session::waits_expired`] at the earliest
//! deadline. Must not resolve or match bindings (`postgres_changes`, the
//! hub) nor answer the rest of the join (`join`).
//!
//! [`StreamStatus`]: crate::replication::stream::StreamStatus

use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::hub::{Binding, Outbound};
use crate::phoenix::frame::{self, Inbound};
use crate::phoenix::session::Session;

/// What realtime-js asks to wait when `postgres_changes_options.timeout` is
/// not given (its `DEFAULT_POSTGRES_CHANGES_WAIT_TIMEOUT`, "mirrors the
/// Realtime server's own default").
pub(super) const DEFAULT_WAIT: std::time::Duration = std::time::Duration::from_millis(15_000);

/// The reason a held join gets when its bindings were not live in time:
/// Supabase Realtime's code first.
const WAIT_TIMEOUT: &str = "PostgresChangesSubscribeTimeout";

/// Something a channel waits for the replication stream to send.
pub(in crate::phoenix) enum Waiting {
    /// "Subscribed to PostgreSQL": the bindings are in the hub.
    Subscribed {
        topic: String,
        join_ref: Option<Box<RawValue>>,
    },
    /// `broadcast.replication_ready`.
    ReplicationReady {
        topic: String,
        join_ref: Option<Box<RawValue>>,
        deadline: Instant,
    },
    /// `postgres_changes_options.wait`: the join's reply (`reply`, JSON
    /// text), held with the bindings it subscribes.
    Join {
        join: Inbound,
        bindings: Vec<Binding>,
        reply: String,
        /// How long it waits, from the join.
        wait: std::time::Duration,
        deadline: Instant,
    },
}

impl Waiting {
    fn topic(&self) -> &str {
        match self {
            Waiting::Subscribed { topic, .. } | Waiting::ReplicationReady { topic, .. } => topic,
            Waiting::Join { join, .. } => &join.topic,
        }
    }

    fn join_ref(&self) -> Option<&RawValue> {
        match self {
            Waiting::Subscribed { join_ref, .. } | Waiting::ReplicationReady { join_ref, .. } => {
                join_ref.as_deref()
            }
            Waiting::Join { join, .. } => join.join_ref.as_deref(),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self {
            Waiting::Subscribed { .. } => None,
            Waiting::ReplicationReady { deadline, .. } | Waiting::Join { deadline, .. } => {
                Some(*deadline)
            }
        }
    }
}

impl Session {
    /// Pushes "Subscribed to PostgreSQL" for bindings the hub has now, or
    /// once the stream is live.
    pub(super) fn push_subscribed_when_live(&mut self, topic: &str, join_ref: Option<&RawValue>) {
        if self.stream.is_live() {
            self.push_bindings_status(join_ref, topic, None);
        } else {
            self.waiting.push(Waiting::Subscribed {
                topic: topic.to_string(),
                join_ref: join_ref.map(RawValue::to_owned),
            });
        }
    }

    /// `broadcast.replication_ready`: the `system` push now, or once the
    /// stream is live (an error and the channel closed past the timeout).
    pub(super) fn push_ready_when_live(&mut self, topic: &str, join_ref: Option<&RawValue>) {
        if self.stream.is_live() {
            self.push_ready(join_ref, topic);
        } else {
            self.waiting.push(Waiting::ReplicationReady {
                topic: topic.to_string(),
                join_ref: join_ref.map(RawValue::to_owned),
                deadline: Instant::now() + self.limits.replication_ready_timeout,
            });
        }
    }

    /// `postgres_changes_options.wait`: subscribes `bindings` and answers
    /// the join with `reply` now when the stream is live, else once it is
    /// (refused past `wait`, clamped to `POSTGRES_CHANGES_WAIT_MAX_MS`).
    pub(super) fn reply_when_live(
        &mut self,
        join: Inbound,
        bindings: Vec<Binding>,
        reply: String,
        wait: std::time::Duration,
    ) {
        if self.stream.is_live() {
            self.subscribe_and_reply(&join, bindings, &reply);
        } else {
            let wait = wait.min(self.limits.postgres_changes_wait_max);
            self.waiting.push(Waiting::Join {
                join,
                bindings,
                reply,
                wait,
                deadline: Instant::now() + wait,
            });
        }
    }

    /// Drops what the channel of `topic` was waiting for (it left, or a
    /// new join replaces it).
    pub(super) fn forget_waits(&mut self, topic: &str) {
        self.waiting.retain(|w| w.topic() != topic);
    }

    /// A receiver to wait on while something waits for a stream that is not
    /// live; `None` otherwise.
    pub(in crate::phoenix) fn live_watch(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        (!self.waiting.is_empty() && !self.stream.is_live()).then(|| self.stream.watch())
    }

    /// The earliest deadline of what waits.
    pub(in crate::phoenix) fn next_wait_deadline(&self) -> Option<Instant> {
        self.waiting.iter().filter_map(Waiting::deadline).min()
    }

    /// The stream is live: everything waiting is sent, in the order it was
    /// asked for, to the channels still joined as they were.
    pub(in crate::phoenix) fn stream_live(&mut self) {
        if !self.stream.is_live() {
            return;
        }
        for w in std::mem::take(&mut self.waiting) {
            if !self.still_joined(&w) {
                continue;
            }
            match w {
                Waiting::Subscribed { topic, join_ref } => {
                    self.push_bindings_status(join_ref.as_deref(), &topic, None)
                }
                Waiting::ReplicationReady {
                    topic, join_ref, ..
                } => self.push_ready(join_ref.as_deref(), &topic),
                Waiting::Join {
                    join,
                    bindings,
                    reply,
                    ..
                } => self.subscribe_and_reply(&join, bindings, &reply),
            }
        }
    }

    /// Past a deadline: a held join is refused (the channel it made is
    /// removed), a channel waiting for `replication_ready` is told and
    /// closed.
    pub(in crate::phoenix) fn waits_expired(&mut self) {
        let now = Instant::now();
        let (expired, kept): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| w.deadline().is_some_and(|d| d <= now));
        self.waiting = kept;
        for w in expired {
            if !self.still_joined(&w) {
                continue;
            }
            match w {
                Waiting::Subscribed { .. } => {}
                Waiting::ReplicationReady { topic, .. } => {
                    if let Some(channel) = self.channels.remove(&topic) {
                        tracing::info!(socket = self.id, %topic, "closing a channel: the replication stream was not live in time");
                        self.close_channel(
                            &topic,
                            channel,
                            "Replication connection was not established in time",
                        );
                    }
                }
                Waiting::Join { join, wait, .. } => {
                    tracing::info!(socket = self.id, topic = %join.topic, "refused a join: its postgres_changes bindings were not live in time");
                    if let Some(channel) = self.channels.remove(&join.topic) {
                        self.unsubscribe(&channel);
                    }
                    self.forget_waits(&join.topic);
                    self.reply_error(
                        &join,
                        &format!(
                            "{WAIT_TIMEOUT}: the replication stream was not live within {} ms \
                             (postgres_changes_options.timeout, at most \
                             POSTGRES_CHANGES_WAIT_MAX_MS={}): nothing was subscribed",
                            wait.as_millis(),
                            self.limits.postgres_changes_wait_max.as_millis()
                        ),
                    );
                }
            }
        }
    }

    /// Whether the channel `w` waits for is still the one joined then.
    fn still_joined(&self, w: &Waiting) -> bool {
        self.channels.get(w.topic()).is_some_and(|c| {
            c.join_ref.as_deref().map(RawValue::get) == w.join_ref().map(RawValue::get)
        })
    }

    /// Subscribes `bindings` and queues the join's reply while the hub's
    /// index is locked: no change reaches the bindings before the reply
    /// (the client learns their ids from it), and the reply is queued only
    /// once they are subscribed (a write after it is never missed). Then
    /// "Subscribed to PostgreSQL".
    fn subscribe_and_reply(&mut self, join: &Inbound, bindings: Vec<Binding>, reply: &str) {
        let payload = frame::reply_payload(true, reply);
        let reply = frame::encode(
            self.vsn,
            join.join_ref.as_deref(),
            join.msg_ref.as_deref(),
            &join.topic,
            "phx_reply",
            &payload,
        );
        let queued = self
            .hub
            .add_bindings_then(bindings, || self.enqueue_only(Outbound::Frame(reply)));
        if !queued {
            self.hub.close_slow_consumer(self.id);
            return;
        }
        self.push_bindings_status(join.join_ref.as_deref(), &join.topic, None);
    }

    /// "Replication connection established", Supabase Realtime's words.
    fn push_ready(&self, join_ref: Option<&RawValue>, topic: &str) {
        let channel = topic.strip_prefix("realtime:").unwrap_or(topic);
        let system = serde_json::json!({"extension": "system", "status": "ok",
            "message": "Replication connection established", "channel": channel});
        self.push(join_ref, topic, "system", &system.to_string());
    }
}

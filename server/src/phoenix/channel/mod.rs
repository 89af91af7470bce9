//! The channels of a socket: what a joined channel is, which feature
//! handles each client message, and how a channel ends.
//!
//! Owns the routing table ([`Session::handle`]) and the end of channels (a
//! leave, a channel the server closes, every channel when the socket goes
//! away). Each feature lives in its own file:
//!
//! | event | file |
//! | --- | --- |
//! | `phx_join` (1.x topics and 2.x config) | `join.rs` |
//! | the `postgres_changes` bindings of a 2.x join | `postgres_changes.rs` |
//! | `broadcast` | `broadcast.rs` |
//! | `presence` (track, untrack) | `presence.rs` |
//! | `access_token`, and the token of a join | `access_token.rs` |
//! | telling a channel its bindings are live (`replication_ready`, `postgres_changes_options.wait`) | `ready.rs` |
//! | `phx_leave`, `heartbeat`, anything else | here |
//!
//! Must not read the socket or parse frames (`session`, `frame`), nor keep
//! subscriptions itself: the hub does.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::value::RawValue;

use crate::auth::Claims;
use crate::authz::authorizer::ChannelRights;
use crate::cluster::TopicKey;
use crate::config::var;
use crate::hub::LegacyTopic;
use crate::limits::Held;
use crate::metrics::{ChannelGauge, METRICS};
use crate::phoenix::close::quoted;
use crate::phoenix::frame::Inbound;
use crate::phoenix::session::Session;

mod access_token;
mod broadcast;
mod join;
mod postgres_changes;
mod presence;
mod ready;

pub(in crate::phoenix) use ready::Waiting;

/// The reasons given over a rate limit: Supabase Realtime's, code first, so
/// clients that handle them (back off, retry later) keep working.
pub(in crate::phoenix) mod rate {
    pub const EVENTS: &str = "MessagePerSecondRateLimitReached: Too many messages per second";
    pub const JOINS: &str = "ClientJoinRateLimitReached: Too many joins per second";
    pub const PRESENCE: &str =
        "ClientPresenceRateLimitReached: Too many presence messages per second";
    pub const CATALOG: &str =
        "DatabaseConnectionRateLimitReached: Too many database lookups per second";
}

/// What a joined channel subscribes to.
pub(in crate::phoenix) enum ChannelKind {
    /// realtime-js 1.x: the topic selects the rows.
    Legacy(LegacyTopic),
    /// realtime-js 2.x: `config` with postgres_changes, broadcast, presence.
    V2 {
        /// The topic and whether it is private: a private and a public
        /// channel of one name share nothing.
        topic: TopicKey,
        /// Broadcasts get a `phx_reply` ok.
        ack: bool,
        presence_key: String,
    },
}

/// A joined channel.
pub(in crate::phoenix) struct Channel {
    join_ref: Option<Box<RawValue>>,
    kind: ChannelKind,
    /// When the token the channel was joined (or last refreshed) with
    /// expires, in seconds since the Unix epoch: then it is closed.
    pub(in crate::phoenix) expires_at: Option<u64>,
    /// The claims it was joined with (channels secured): its
    /// subscriptions and rights were decided for them.
    pub(in crate::phoenix) claims: Option<Arc<Claims>>,
    /// A private channel's rights (read, write), from `realtime.messages`.
    pub(in crate::phoenix) private: Option<(ChannelRights, ChannelRights)>,
    /// Counts the channel at `/metrics` while it is joined.
    _open: ChannelGauge,
    /// What the channel makes the server keep (its entries, topic copies,
    /// bindings), charged against `MEMORY_BUDGET_MB` while it is joined.
    pub(in crate::phoenix) held: Held,
    /// The socket's presence on the channel, charged while it is tracked.
    pub(in crate::phoenix) presence_held: Held,
}

/// What a joined channel costs beside its topic and bindings: its entries
/// in the session, the hub's members and the metrics (measured order of
/// magnitude, rounded up).
pub(in crate::phoenix) const CHANNEL_BYTES: usize = 512;

/// What a tracked presence costs beside its key and meta as JSON: the
/// tracker's entry and its `phx_ref`.
pub(in crate::phoenix) const PRESENCE_BYTES: usize = 256;

/// What a `postgres_changes` binding costs per byte of its request as sent
/// (the parsed filter, the index's keys and the echo), rounded up.
pub(in crate::phoenix) const BINDING_BYTES_PER_BYTE: usize = 4;

impl Channel {
    fn new(join_ref: Option<Box<RawValue>>, kind: ChannelKind, expires_at: Option<u64>) -> Self {
        Channel {
            join_ref,
            kind,
            expires_at,
            claims: None,
            private: None,
            _open: ChannelGauge::open(),
            held: Held::new(CHANNEL_BYTES),
            presence_held: Held::default(),
        }
    }
}

impl Session {
    /// Routes one client message to the feature that handles it. Returns
    /// the part that must wait, if any: only a 2.x join with bindings,
    /// which looks them up in the catalog.
    pub(in crate::phoenix) fn handle(&mut self, m: Inbound) -> Option<BoxFuture<'_, ()>> {
        // Every message but a heartbeat counts against the socket's rate;
        // over it, the message is answered with Supabase's error and
        // dropped.
        let heartbeat = m.topic == "phoenix" && m.event == "heartbeat";
        if !heartbeat && !self.rates.events.take() {
            METRICS.limit_reached(var::MAX_EVENTS_PER_SECOND);
            self.reply_error(&m, rate::EVENTS);
            return None;
        }
        match (m.topic.as_str(), m.event.as_str()) {
            ("phoenix", "heartbeat") => self.reply(&m, None, true, "{}"),
            (_, "phx_join") => return self.join(m),
            (_, "phx_leave") => self.leave(m),
            // A token's validity is checked for every frame that needs it:
            // after it expired, nothing the channel sends is relayed.
            (topic, "broadcast" | "presence") if self.expired(topic) => self.expire(&m.topic),
            (topic, "broadcast") if self.is_v2(topic) => return self.broadcast(m),
            (topic, "presence") if self.is_v2(topic) => self.presence(m),
            (topic, "access_token") if self.channels.contains_key(topic) => {
                return self.refresh_token(m)
            }
            (topic, event) => {
                let reason = if self.channels.contains_key(topic) {
                    format!("unknown event {} on topic {}", quoted(event), quoted(topic))
                } else {
                    "unmatched topic".to_string()
                };
                self.reply_error(&m, &reason);
            }
        }
        None
    }

    /// Whether the token `topic` stands on has expired.
    fn expired(&self, topic: &str) -> bool {
        self.channels
            .get(topic)
            .and_then(|c| c.expires_at)
            .is_some_and(|e| e <= crate::phoenix::session::unix_now())
    }

    /// Closes a channel whose token expired.
    fn expire(&mut self, topic: &str) {
        if let Some(channel) = self.channels.remove(topic) {
            tracing::info!(socket = self.id, %topic, "closing a channel: its token expired");
            self.close_channel(topic, channel, "access token has expired");
        }
    }

    fn is_v2(&self, topic: &str) -> bool {
        matches!(
            self.channels.get(topic).map(|c| &c.kind),
            Some(ChannelKind::V2 { .. })
        )
    }

    /// `phx_leave`: an ok reply, then `phx_close`.
    fn leave(&mut self, m: Inbound) {
        let Some(channel) = self.channels.remove(&m.topic) else {
            return self.reply_error(&m, "unmatched topic");
        };
        self.forget_waits(&m.topic);
        self.unsubscribe(&channel);
        let join_ref = channel.join_ref.as_deref();
        self.reply(&m, join_ref, true, "{}");
        self.push_close(join_ref, &m.topic);
    }

    /// Ends a joined channel's subscriptions.
    fn unsubscribe(&self, channel: &Channel) {
        match &channel.kind {
            ChannelKind::Legacy(t) => self.hub.unsubscribe_legacy(self.id, t),
            ChannelKind::V2 { topic, .. } => self.hub.leave_channel(self.id, topic),
        }
    }

    /// Ends a channel the server refuses to keep (its token expired or was
    /// refused): a `system` error naming the reason, then `phx_close`.
    pub(in crate::phoenix) fn close_channel(
        &mut self,
        topic: &str,
        channel: Channel,
        reason: &str,
    ) {
        self.forget_waits(topic);
        self.unsubscribe(&channel);
        let join_ref = channel.join_ref.as_deref();
        let short = topic.strip_prefix("realtime:").unwrap_or(topic);
        let system = serde_json::json!({"extension": "system", "status": "error",
            "message": reason, "channel": short});
        self.push(join_ref, topic, "system", &system.to_string());
        self.push_close(join_ref, topic);
    }

    /// The socket went away: ends every channel (telling the other members
    /// of a 2.x channel that its presence left) and unregisters the socket.
    pub(in crate::phoenix) fn leave_all(mut self) {
        let mut legacy = Vec::new();
        for (_, channel) in self.channels.drain() {
            match channel.kind {
                ChannelKind::Legacy(t) => legacy.push(t),
                ChannelKind::V2 { topic, .. } => self.hub.leave_channel(self.id, &topic),
            }
        }
        self.hub.unregister(self.id, legacy);
    }
}

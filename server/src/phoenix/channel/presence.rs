//! `presence`: who is on a 2.x channel.
//!
//! Owns the key a socket's presence is tracked under (the join's
//! `presence.key`, or one made up per channel) and the `track` and
//! `untrack` pushes (on a private channel, `track` needs a token that may
//! write presence, per `realtime.messages`). Must not keep presences or build their payloads: the
//! hub's presence index does, and tells every member with `presence_diff`.
//! The `presence_state` a join receives is sent by `join`.

use super::{Channel, ChannelKind};
use crate::config::var;
use crate::metrics::METRICS;
use crate::phoenix::frame::{self, Inbound};
use crate::phoenix::payloads::{self, PresenceConfig, PresencePush};
use crate::phoenix::session::Session;

impl Session {
    /// The key this socket's presence on a channel joined with `config` is
    /// tracked under: the client's, or `{socket}-{n}` when it names none.
    pub(super) fn presence_key(&mut self, config: &PresenceConfig) -> String {
        match &config.key {
            Some(k) if !k.is_empty() => k.clone(),
            _ => {
                self.next_presence += 1;
                format!("{}-{}", self.id, self.next_presence)
            }
        }
    }

    /// `{"event": "track", "payload": META}` or `{"event": "untrack"}`;
    /// replied to with ok, or an error naming what is wrong.
    pub(super) fn presence(&mut self, m: Inbound) {
        if !self.rates.presence.take() {
            METRICS.limit_reached(var::MAX_PRESENCE_EVENTS_PER_SECOND);
            let join_ref = self.channels.get(&m.topic).and_then(|c| c.join_ref.clone());
            return self.reply(
                &m,
                join_ref.as_deref(),
                false,
                &frame::reason(super::rate::PRESENCE),
            );
        }
        let Some(Channel {
            kind:
                ChannelKind::V2 {
                    topic,
                    presence_key,
                    ..
                },
            join_ref,
            private,
            ..
        }) = self.channels.get(&m.topic)
        else {
            return;
        };
        let push: PresencePush = match payloads::parse("presence", &m.payload) {
            Ok(push) => push,
            Err(e) => {
                return self.reply(
                    &m,
                    join_ref.as_deref(),
                    false,
                    &frame::reason(&e.to_string()),
                )
            }
        };
        let charge = match push.event.as_deref() {
            Some("track") if private.is_some_and(|(_, write)| !write.presence) => {
                let short = m.topic.strip_prefix("realtime:").unwrap_or(&m.topic);
                let reason = format!(
                    "Unauthorized: You do not have permissions to track presence on this \
                     Channel topic: {short}"
                );
                return self.reply(&m, join_ref.as_deref(), false, &frame::reason(&reason));
            }
            Some("track") if self.memory_budget.exceeded() => {
                METRICS.limit_reached(var::MEMORY_BUDGET_MB);
                let reason = self.memory_budget.reason();
                return self.reply(&m, join_ref.as_deref(), false, &frame::reason(&reason));
            }
            Some("track") => {
                let size = serde_json::to_string(&push.payload).map_or(0, |s| s.len());
                let limit = self.limits.max_presence_meta_bytes;
                if size > limit {
                    METRICS.limit_reached(var::MAX_PRESENCE_META_BYTES);
                    let reason = format!(
                        "presence meta too large: {size} bytes (MAX_PRESENCE_META_BYTES={limit})"
                    );
                    return self.reply(&m, join_ref.as_deref(), false, &frame::reason(&reason));
                }
                if let Err(limit) =
                    self.hub
                        .track(self.id, topic, presence_key.clone(), push.payload)
                {
                    METRICS.limit_reached(var::MAX_PRESENCE_MEMBERS);
                    let reason =
                        format!("too many presences on this topic (MAX_PRESENCE_MEMBERS={limit})");
                    return self.reply(&m, join_ref.as_deref(), false, &frame::reason(&reason));
                }
                size + presence_key.len() + super::PRESENCE_BYTES
            }
            Some("untrack") => {
                self.hub.untrack(self.id, topic);
                0
            }
            other => {
                let reason = format!(
                    "unknown presence event {}: use track or untrack",
                    crate::phoenix::close::quoted(other.unwrap_or("null"))
                );
                return self.reply(&m, join_ref.as_deref(), false, &frame::reason(&reason));
            }
        };
        let join_ref = join_ref.clone();
        if let Some(channel) = self.channels.get_mut(&m.topic) {
            channel.presence_held.set(charge);
        }
        self.reply(&m, join_ref.as_deref(), true, "{}");
    }
}

//! `presence`: who is on a 2.x channel.
//!
//! Owns the key a socket's presence is tracked under (the join's
//! `presence.key`, or one made up per channel) and the `track` and
//! `untrack` pushes (on a private channel, `track` needs a token that may
//! write presence, per `realtime.messages`). Must not keep presences or build their payloads: the
//! hub's presence index does, and tells every member with `presence_diff`.
//! The `presence_state` a join receives is sent by `join`.

use super::{Channel, ChannelKind};
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
    pub(super) fn presence(&self, m: Inbound) {
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
        match push.event.as_deref() {
            Some("track") if private.is_some_and(|(_, write)| !write.presence) => {
                let short = m.topic.strip_prefix("realtime:").unwrap_or(&m.topic);
                let reason = format!(
                    "Unauthorized: You do not have permissions to track presence on this \
                     Channel topic: {short}"
                );
                return self.reply(&m, join_ref.as_deref(), false, &frame::reason(&reason));
            }
            Some("track") => {
                self.hub
                    .track(self.id, topic, presence_key.clone(), push.payload);
            }
            Some("untrack") => self.hub.untrack(self.id, topic),
            other => {
                let reason = format!("unknown presence event {other:?}: use track or untrack");
                return self.reply(&m, join_ref.as_deref(), false, &frame::reason(&reason));
            }
        }
        self.reply(&m, join_ref.as_deref(), true, "{}");
    }
}

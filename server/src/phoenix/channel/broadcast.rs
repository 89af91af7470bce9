//! `broadcast`: a 2.x client's message to the other members of its channel.
//!
//! Owns relaying the payload, as sent, to every member of the topic (the
//! sender too when it joined with `broadcast.self`), and the `phx_reply` ok
//! when it joined with `broadcast.ack`. Must not read the payload: the
//! server relays it unread. The hub keeps the members; `/api/broadcast`
//! (in `http`) relays over HTTP through the same hub call.

use super::{Channel, ChannelKind};
use crate::phoenix::frame::Inbound;
use crate::phoenix::session::Session;

impl Session {
    pub(super) fn broadcast(&self, m: Inbound) {
        let Some(Channel {
            kind: ChannelKind::V2 { topic, ack, .. },
            join_ref,
            ..
        }) = self.channels.get(&m.topic)
        else {
            return;
        };
        self.hub
            .relay(topic, Some(self.id), "broadcast", m.payload.get());
        if *ack {
            self.reply(&m, join_ref.as_deref(), true, "{}");
        }
    }
}

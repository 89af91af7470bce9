//! `broadcast`: a 2.x client's message to the other members of its channel,
//! on every server of the cluster.
//!
//! Owns relaying the payload, as sent, to every member of the topic (the
//! sender too when it joined with `broadcast.self`), and the `phx_reply`
//! when it joined with `broadcast.ack`: ok once the cluster's bus has the
//! message, an error naming the reason otherwise. A broadcast over
//! `CLUSTER_MAX_MESSAGE_BYTES`, or sent while the server is past
//! `MEMORY_BUDGET_MB`, reaches nobody and is always answered with an
//! error, ack or not. On a private channel, only a token that may write
//! broadcasts (`realtime.messages`) is relayed; the others get an error
//! reply. Must not read the payload: the server relays it unread. The hub
//! keeps the members and hands the message to the cluster; `/api/broadcast`
//! (in `http`) goes through the same hub call.

use futures::future::BoxFuture;

use super::{Channel, ChannelKind};
use crate::cluster::BusError;
use crate::phoenix::frame::{self, Inbound};
use crate::phoenix::session::Session;

impl Session {
    /// Relays at once; with `ack`, returns the wait for the bus, after which
    /// the reply is sent.
    pub(super) fn broadcast(&self, m: Inbound) -> Option<BoxFuture<'_, ()>> {
        let Some(Channel {
            kind: ChannelKind::V2 { topic, ack, .. },
            join_ref,
            private,
            ..
        }) = self.channels.get(&m.topic)
        else {
            return None;
        };
        if private.is_some_and(|(_, write)| !write.broadcast) {
            let short = m.topic.strip_prefix("realtime:").unwrap_or(&m.topic);
            let reason = format!(
                "Unauthorized: You do not have permissions to write to this Channel topic: {short}"
            );
            self.reply(&m, join_ref.as_deref(), false, &frame::reason(&reason));
            return None;
        }
        let join_ref = join_ref.as_deref();
        match self.hub.broadcast(topic, Some(self.id), m.payload.get()) {
            Err(e @ (BusError::TooLarge { .. } | BusError::OverBudget { .. })) => {
                tracing::info!(socket = self.id, topic = %m.topic, error = %e, "broadcast refused");
                self.reply(&m, join_ref, false, &frame::reason(&e.to_string()));
                None
            }
            Err(e) if *ack => {
                self.reply(&m, join_ref, false, &frame::reason(&e.to_string()));
                None
            }
            // Without ack, nobody waits: the bus's state is in its log
            // lines and metrics.
            Err(_) => None,
            Ok(_) if !*ack => None,
            Ok(sent) => Some(Box::pin(async move {
                let join_ref = self.channels.get(&m.topic).and_then(|c| c.join_ref.clone());
                match sent.wait().await {
                    Ok(()) => self.reply(&m, join_ref.as_deref(), true, "{}"),
                    Err(e) => self.reply(
                        &m,
                        join_ref.as_deref(),
                        false,
                        &frame::reason(&e.to_string()),
                    ),
                }
            })),
        }
    }
}

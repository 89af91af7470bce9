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
//! reply. A binary payload (the newest realtime-js's binary frame with
//! encoding 0) is relayed as bytes: a binary frame to members on vsn 2.0.0;
//! members on vsn 1.0.0 cannot read one and do not get it. A broadcast
//! asking to be stored (`persist` in a binary frame's metadata) is refused
//! with an error reply, ack or not: this server stores no broadcast. Must
//! not read the payload: the server relays it unread. The hub keeps the
//! members and hands the message to the cluster; `/api/broadcast` (in
//! `http`) goes through the same hub calls.

use futures::future::BoxFuture;

use super::{Channel, ChannelKind};
use crate::cluster::BusError;
use crate::phoenix::frame::{self, Inbound};
use crate::phoenix::session::Session;

use crate::phoenix::NO_PERSIST;

/// Whether a binary frame's metadata asks for the broadcast to be stored:
/// `persist` true, or a `{ttl}`.
fn wants_persist(meta: Option<&serde_json::value::RawValue>) -> bool {
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(default)]
        persist: serde_json::Value,
    }
    meta.and_then(|m| serde_json::from_str::<Meta>(m.get()).ok())
        .is_some_and(|m| {
            !matches!(
                m.persist,
                serde_json::Value::Null | serde_json::Value::Bool(false)
            )
        })
}

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
        if wants_persist(m.meta.as_deref()) {
            self.reply(&m, join_ref, false, &persist_refused());
            return None;
        }
        let sent = match &m.binary {
            Some(b) => self
                .hub
                .broadcast_binary(topic, Some(self.id), &b.event, &b.data),
            None => self.hub.broadcast(topic, Some(self.id), m.payload.get()),
        };
        match sent {
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

/// The error reply to a broadcast asking to be stored: the reason, and as
/// `error` too (realtime-js 2.1xx hands that to the app for `persist`).
fn persist_refused() -> String {
    serde_json::json!({"reason": NO_PERSIST, "error": NO_PERSIST}).to_string()
}

//! `phx_join`: a socket joins a channel.
//!
//! Owns the checks every join passes (a `realtime:` topic, the token, the
//! channel limit, a payload of the right shape), the 1.x join (the topic
//! says which rows) and the 2.x join (`config`: its reply, `system` and
//! `presence_state` pushes, in that order). A second join of a joined topic
//! replaces the first. Must not resolve bindings (`postgres_changes`), check
//! tokens (`access_token`) or track presences (`presence`): it calls them.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::postgres_changes::Resolved;
use super::{Channel, ChannelKind};
use crate::cluster::TopicKey;
use crate::config::var;
use crate::hub::LegacyTopic;
use crate::metrics::METRICS;
use crate::phoenix::frame::Inbound;
use crate::phoenix::payloads::{self, JoinConfig, JoinPayload};
use crate::phoenix::session::Session;

impl Session {
    /// Handles `phx_join`; a 2.x join with bindings returns its remainder,
    /// which waits on the catalog.
    pub(super) fn join(&mut self, m: Inbound) -> Option<BoxFuture<'_, ()>> {
        if !m.topic.starts_with("realtime:") {
            self.reply_error(&m, "unmatched topic");
            return None;
        }
        if self.memory_budget.exceeded() {
            METRICS.limit_reached(var::MEMORY_BUDGET_MB);
            let reason = self.memory_budget.reason();
            self.reply_error(&m, &reason);
            return None;
        }
        if !self.rates.joins.take() {
            METRICS.limit_reached(var::MAX_JOINS_PER_SECOND);
            self.reply_error(&m, super::rate::JOINS);
            return None;
        }
        if m.topic.len() > self.limits.max_topic_bytes {
            METRICS.limit_reached(var::MAX_TOPIC_BYTES);
            let reason = format!(
                "topic too long: {} bytes (MAX_TOPIC_BYTES={})",
                m.topic.len(),
                self.limits.max_topic_bytes
            );
            self.reply_error(&m, &reason);
            return None;
        }
        let payload: JoinPayload = match payloads::parse("join", &m.payload) {
            Ok(p) => p,
            Err(e) => {
                self.reply_error(&m, &e.to_string());
                return None;
            }
        };
        let expires_at = match self.check_token(payload.token()) {
            Ok(exp) => exp,
            Err(reason) => {
                self.reply_error(&m, &reason);
                return None;
            }
        };
        if let Some(reason) = payload.config.as_ref().and_then(|c| self.oversized(c)) {
            self.reply_error(&m, &reason);
            return None;
        }
        if !self.channels.contains_key(&m.topic) && self.channels.len() >= self.limits.max_channels
        {
            METRICS.limit_reached(var::MAX_CHANNELS_PER_SOCKET);
            let reason = format!(
                "too many channels on this socket (limit {})",
                self.limits.max_channels
            );
            self.reply_error(&m, &reason);
            return None;
        }
        match payload.config {
            None => {
                self.join_legacy(m, expires_at);
                None
            }
            Some(config) if config.postgres_changes.is_empty() => {
                self.join_v2(m, config, expires_at, Resolved::default());
                None
            }
            Some(config) => Some(Box::pin(async move {
                let topic: Arc<str> = m.topic.as_str().into();
                let resolved = self
                    .resolve_bindings(&config.postgres_changes, &topic)
                    .await;
                self.join_v2(m, config, expires_at, resolved);
            })),
        }
    }

    /// Why a 2.x join's config is over a limit, naming it; `None` when it
    /// is within them all. Checked before anything is looked up or kept.
    fn oversized(&self, config: &JoinConfig) -> Option<String> {
        let limits = &self.limits;
        if config.postgres_changes.len() > limits.max_bindings_per_join {
            METRICS.limit_reached(var::MAX_BINDINGS_PER_JOIN);
            return Some(format!(
                "too many postgres_changes bindings: {} (MAX_BINDINGS_PER_JOIN={})",
                config.postgres_changes.len(),
                limits.max_bindings_per_join
            ));
        }
        let key = config.presence.key.as_deref().unwrap_or_default();
        if key.len() > limits.max_presence_key_bytes {
            METRICS.limit_reached(var::MAX_PRESENCE_KEY_BYTES);
            return Some(format!(
                "presence key too long: {} bytes (MAX_PRESENCE_KEY_BYTES={})",
                key.len(),
                limits.max_presence_key_bytes
            ));
        }
        None
    }

    fn join_legacy(&mut self, m: Inbound, expires_at: Option<u64>) {
        let key = match LegacyTopic::parse(&m.topic) {
            Ok(key) => key,
            Err(reason) => return self.reply_error(&m, &reason),
        };
        let join_ref = m.join_ref.clone();
        if let Some(old) = self.channels.remove(&m.topic) {
            self.unsubscribe(&old);
        }
        // The reply is queued before the subscription starts, so it precedes
        // every change the channel receives.
        self.reply(&m, join_ref.as_deref(), true, "{}");
        self.hub.subscribe_legacy(self.id, self.vsn, &key, &m.topic);
        self.channels.insert(
            m.topic,
            Channel::new(join_ref, ChannelKind::Legacy(key), expires_at),
        );
    }

    /// The reply echoes the bindings with their ids; then the `system` push
    /// says whether they all stand, and `presence_state` lists who is
    /// tracked.
    fn join_v2(
        &mut self,
        m: Inbound,
        config: JoinConfig,
        expires_at: Option<u64>,
        resolved: Resolved,
    ) {
        let join_ref = m.join_ref.clone();
        let topic = TopicKey::new(&m.topic, config.private);
        let presence_key = self.presence_key(&config.presence);
        if let Some(old) = self.channels.remove(&m.topic) {
            self.unsubscribe(&old);
        }
        self.reply(&m, join_ref.as_deref(), true, &resolved.reply());
        let status = self.subscribe_bindings(resolved);
        let state =
            self.hub
                .join_channel(self.id, &topic, self.vsn, config.broadcast.self_broadcast);
        self.channels.insert(
            m.topic.clone(),
            Channel::new(
                join_ref.clone(),
                ChannelKind::V2 {
                    topic,
                    ack: config.broadcast.ack,
                    presence_key,
                },
                expires_at,
            ),
        );
        if !config.postgres_changes.is_empty() {
            self.push_bindings_status(join_ref.as_deref(), &m.topic, status);
        }
        self.push(join_ref.as_deref(), &m.topic, "presence_state", &state);
    }
}

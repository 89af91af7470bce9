//! `phx_join`: a socket joins a channel.
//!
//! Owns the checks every join passes (a `realtime:` topic, the token, the
//! channel limit, a payload of the right shape, `PRIVATE_ONLY`), the 1.x
//! join (the topic says which rows) and the 2.x join (`config`: its reply,
//! `system` and `presence_state` pushes, in that order, and the flags of
//! the newest clients: `presence.enabled`, `broadcast.replay`,
//! `broadcast.replication_ready`, `postgres_changes_options`; when the
//! bindings are live is `ready`'s). A second join of a
//! joined topic replaces the first. When channels are secured, a join acts
//! as its token's role and claims: every subscription carries its group
//! (see `authz`), a table the role may not read is refused, and a private
//! channel's rights come from `realtime.messages`. Must not resolve
//! bindings (`postgres_changes`), check tokens (`access_token`) or track
//! presences (`presence`): it calls them.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use super::postgres_changes::Resolved;
use super::{ready, Channel, ChannelKind};
use crate::auth::Claims;
use crate::authz::authorizer::{ChannelError, ChannelRights};
use crate::authz::plan::{Access, Command};
use crate::cluster::TopicKey;
use crate::config::var;
use crate::hub::{LegacyTopic, Subscriber};
use crate::metrics::METRICS;
use crate::phoenix::frame::Inbound;
use crate::phoenix::payloads::{self, JoinConfig, JoinPayload};
use crate::phoenix::session::Session;

/// Supabase's answer to a join asking to replay a public channel's broadcasts.
const REPLAY_PUBLIC: &str =
    "UnableToReplayMessages: Replay is not allowed for public channels (join with config.private: true)";

/// Supabase's answer to a public join when only private channels are allowed.
const PRIVATE_ONLY: &str =
    "PrivateOnly: this server accepts private channels only (join with config.private: true)";

impl Session {
    /// Handles `phx_join`; a join that waits (on the catalog, on the
    /// policies, on a JWKS) returns its remainder.
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
        let private = payload.config.as_ref().is_some_and(|c| c.private);
        if self.limits.private_only && !private {
            self.reply_error(&m, PRIVATE_ONLY);
            return None;
        }
        if self.verifier.is_some() {
            return Some(Box::pin(self.join_secured(m, payload)));
        }
        if private {
            self.reply_error(
                &m,
                "private channels need SECURE_CHANNELS=true: their rights come from the \
                 token's role and claims",
            );
            return None;
        }
        match payload.config {
            None => {
                self.join_legacy(m, None, None);
                None
            }
            Some(config) if config.postgres_changes.is_empty() => {
                self.join_v2(m, config, None, Resolved::default(), None);
                None
            }
            Some(config) => Some(Box::pin(async move {
                let topic: Arc<str> = m.topic.as_str().into();
                let resolved = self
                    .resolve_bindings(&config.postgres_changes, &topic, None)
                    .await;
                self.join_v2(m, config, None, resolved, None);
            })),
        }
    }

    /// A join when channels are secured: the token (the join's, else the
    /// socket's) must be valid now, and decides everything the channel gets.
    async fn join_secured(&mut self, m: Inbound, payload: JoinPayload) {
        let claims = match self.check_token(payload.token()).await {
            Ok(Some(c)) => c,
            Ok(None) => return self.reply_error(&m, "access token is missing"),
            Err(reason) => return self.reply_error(&m, &reason),
        };
        match payload.config {
            None => {
                let subscriber = match self.legacy_subscriber(&m.topic, &claims).await {
                    Ok(s) => s,
                    Err(reason) => return self.reply_error(&m, &reason),
                };
                self.join_legacy(m, Some(claims), subscriber);
            }
            Some(config) => {
                let rights = if config.private {
                    match self.private_rights(&m.topic, &claims).await {
                        Ok(r) => Some(r),
                        Err(reason) => return self.reply_error(&m, &reason),
                    }
                } else {
                    None
                };
                let topic: Arc<str> = m.topic.as_str().into();
                let resolved = if config.postgres_changes.is_empty() {
                    Resolved::default()
                } else {
                    self.resolve_bindings(&config.postgres_changes, &topic, Some(&claims))
                        .await
                };
                self.join_v2(m, config, Some(claims), resolved, rights);
            }
        }
    }

    /// What a private channel's token may do on it: read (join, receive)
    /// and write (send broadcasts, track presence), per extension. A token
    /// that may read neither broadcast nor presence is refused.
    async fn private_rights(
        &self,
        topic: &str,
        claims: &Claims,
    ) -> Result<(ChannelRights, ChannelRights), String> {
        let Some(authz) = &self.authz else {
            return Err("private channels need SECURE_CHANNELS=true".into());
        };
        let short = topic.strip_prefix("realtime:").unwrap_or(topic);
        let group = authz.group(&claims.raw, Some(short));
        let failed = |e: ChannelError| match e {
            ChannelError::NotSetUp => ChannelError::NotSetUp.to_string(),
            ChannelError::Failed(why) => {
                format!("Unauthorized: checking the policies of realtime.messages failed: {why}")
            }
        };
        let read = authz
            .channel_rights(&group, Command::Select)
            .await
            .map_err(failed)?;
        if !read.broadcast && !read.presence {
            return Err(format!(
                "Unauthorized: You do not have permissions to read from this Channel topic: {short}"
            ));
        }
        let write = authz
            .channel_rights(&group, Command::Insert)
            .await
            .map_err(failed)?;
        Ok((read, write))
    }

    /// Who a 1.x subscription acts as: its group, and for one table what
    /// the group may see of it (a table the role may not read is refused).
    async fn legacy_subscriber(
        &self,
        topic: &str,
        claims: &Claims,
    ) -> Result<Option<Subscriber>, String> {
        let Some(authz) = &self.authz else {
            return Ok(None);
        };
        let key = LegacyTopic::parse(topic)?;
        let group = authz.group(&claims.raw, None);
        let (schema, table) = match &key {
            LegacyTopic::All => (None, None),
            LegacyTopic::Schema(s) => (Some(s.as_str()), None),
            LegacyTopic::Table(s, t) => (Some(s.as_str()), Some(t.as_str())),
            LegacyTopic::Row { schema, table, .. } => (Some(schema.as_str()), Some(table.as_str())),
        };
        let Some(table) = table else {
            // Every table of a schema (or of every schema): each change's
            // table is looked up for the group; a schema's tables are
            // looked up now, so their first changes are not withheld.
            if let Some(schema) = schema {
                if let Ok(tables) = self.published.lookup(schema, None).await {
                    for t in tables {
                        let _ = authz.access(t.oid, &group).await;
                    }
                }
            }
            return Ok(Some(Subscriber {
                group,
                table: None,
                access: None,
            }));
        };
        let schema = schema.unwrap_or("public");
        let mut tables = self.published.lookup(schema, Some(table)).await?;
        if tables.is_empty() {
            // The snapshot may be stale (a table published a moment ago).
            if !self.catalog_lookups.take() {
                METRICS.limit_reached(var::MAX_CATALOG_LOOKUPS_PER_SECOND);
                return Err(super::rate::CATALOG.to_string());
            }
            tables = self.published.lookup_live(schema, Some(table)).await?;
        }
        let Some(t) = tables.first() else {
            return Err(format!(
                "{schema}.{table} is not in any publication this server streams"
            ));
        };
        let access = authz
            .access(t.oid, &group)
            .await
            .map_err(|e| format!("checking access to {schema}.{table} failed: {e}"))?;
        if let Access::Denied(reason) = &access.access {
            return Err(format!("{schema}.{table}: {reason}"));
        }
        Ok(Some(Subscriber {
            group,
            table: Some(t.oid),
            access: Some(access),
        }))
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

    fn join_legacy(
        &mut self,
        m: Inbound,
        claims: Option<Arc<Claims>>,
        subscriber: Option<Subscriber>,
    ) {
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
        self.hub
            .subscribe_legacy(self.id, self.vsn, &key, &m.topic, subscriber);
        let expires_at = claims.as_ref().and_then(|c| c.expires_at);
        let mut channel = Channel::new(join_ref, ChannelKind::Legacy(key), expires_at);
        channel.held.add(3 * m.topic.len());
        channel.claims = claims;
        self.channels.insert(m.topic, channel);
    }

    /// The reply echoes the bindings with their ids; then the `system` push
    /// says whether they all stand (once they are live: `ready`), and
    /// `presence_state` lists who is tracked (for a member that receives
    /// presence: `presence.enabled` not false, and on a private channel a
    /// token that may read presence). With `postgres_changes_options.wait`
    /// the reply itself waits until the bindings are live, and a refused
    /// binding refuses the join.
    fn join_v2(
        &mut self,
        m: Inbound,
        config: JoinConfig,
        claims: Option<Arc<Claims>>,
        resolved: Resolved,
        private: Option<(ChannelRights, ChannelRights)>,
    ) {
        if config.broadcast.replay.is_some() {
            match private {
                None => return self.reply_error(&m, REPLAY_PUBLIC),
                Some((read, _)) if !read.broadcast => {
                    let short = m.topic.strip_prefix("realtime:").unwrap_or(&m.topic);
                    return self.reply_error(
                        &m,
                        &format!(
                            "Unauthorized: You do not have permissions to read from this \
                             Channel topic: {short}"
                        ),
                    );
                }
                // Nothing to replay: this server stores no broadcast.
                Some(_) => {}
            }
        }
        let has_bindings = !config.postgres_changes.is_empty();
        let wait = config.postgres_changes_options.wait && has_bindings;
        let reply = resolved.reply();
        let (mut bindings, error) = resolved.into_parts();
        if wait {
            if let Some(reason) = &error {
                tracing::info!(socket = self.id, topic = %m.topic, %reason, "refused a join: a postgres_changes binding was refused");
                return self.reply_error(&m, reason);
            }
        }
        let join_ref = m.join_ref.clone();
        let topic = TopicKey::new(&m.topic, private.is_some());
        let presence_key = self.presence_key(&config.presence);
        if let Some(old) = self.channels.remove(&m.topic) {
            self.unsubscribe(&old);
        }
        self.forget_waits(&m.topic);
        // Topic copies (session, TopicKey, members) and the bindings, by
        // their size as sent.
        let held = 3 * m.topic.len() + super::BINDING_BYTES_PER_BYTE * reply.len();
        // Without wait, the reply is queued before the bindings are
        // subscribed, so it precedes every change they receive.
        if !wait {
            self.reply(&m, join_ref.as_deref(), true, &reply);
            if error.is_none() {
                self.hub.add_bindings(std::mem::take(&mut bindings));
            }
        }
        let receives_presence = config.presence.receives();
        let reads = {
            let read = private.map_or(ChannelRights::ALL, |(read, _)| read);
            ChannelRights {
                broadcast: read.broadcast,
                presence: read.presence && receives_presence,
            }
        };
        let state = self.hub.join_channel_reading(
            self.id,
            &topic,
            self.vsn,
            config.broadcast.self_broadcast,
            reads,
        );
        let expires_at = claims.as_ref().and_then(|c| c.expires_at);
        let mut channel = Channel::new(
            join_ref.clone(),
            ChannelKind::V2 {
                topic,
                ack: config.broadcast.ack,
                presence_key,
            },
            expires_at,
        );
        channel.held.add(held);
        channel.claims = claims;
        channel.private = private;
        self.channels.insert(m.topic.clone(), channel);
        let topic = m.topic.clone();
        if wait {
            let timeout = config
                .postgres_changes_options
                .timeout
                .map_or(ready::DEFAULT_WAIT, Duration::from_millis);
            self.reply_when_live(m, bindings, reply, timeout);
        } else if has_bindings {
            match error {
                Some(reason) => {
                    self.push_bindings_status(join_ref.as_deref(), &topic, Some(reason))
                }
                None => self.push_subscribed_when_live(&topic, join_ref.as_deref()),
            }
        }
        if receives_presence {
            // A private channel's member that may not read presence gets an
            // empty state.
            let state = if reads.presence { state } else { "{}".into() };
            self.push(join_ref.as_deref(), &topic, "presence_state", &state);
        }
        if config.broadcast.replication_ready {
            self.push_ready_when_live(&topic, join_ref.as_deref());
        }
    }
}

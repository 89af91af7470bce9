//! Tokens on channels: the token of a join, and the `access_token` push
//! that replaces it.
//!
//! Owns checking a token a client presents on a channel (when channels are
//! secured) and when the token that stands expires. Must not close the
//! socket or decide at the upgrade (`http` checks the socket's own token)
//! nor time the expiry (`session` closes channels whose token expired).

use crate::metrics::METRICS;
use crate::phoenix::frame::Inbound;
use crate::phoenix::payloads::{self, AccessTokenPayload};
use crate::phoenix::session::Session;

impl Session {
    /// When channels are secured, a token the client presents must verify;
    /// none means the socket's own token stands. On success, when the token
    /// that now stands expires.
    pub(super) fn check_token(&self, token: Option<&str>) -> Result<Option<u64>, String> {
        let Some(verifier) = &self.verifier else {
            return Ok(None);
        };
        match token {
            Some(t) => verifier.verify(t).map(|c| c.exp).map_err(|e| {
                METRICS.auth_failures.inc();
                e.to_string()
            }),
            None => Ok(self.socket_exp),
        }
    }

    /// An `access_token` push replaces the channel's token; one that does
    /// not verify closes the channel with a `system` error the client can
    /// read. The clients expect no reply, except to a payload of the wrong
    /// shape, which is answered with an error and changes nothing.
    pub(super) fn refresh_token(&mut self, m: Inbound) {
        let payload: AccessTokenPayload = match payloads::parse("access_token", &m.payload) {
            Ok(p) => p,
            Err(e) => return self.reply_error(&m, &e.to_string()),
        };
        let reason = match self.check_token(payload.token()) {
            Ok(exp) => {
                // A new token moves the channel's expiry; a null one (as
                // realtime-js 1.7 sends after every heartbeat) leaves it.
                if let (Some(_), Some(channel)) = (payload.token(), self.channels.get_mut(&m.topic))
                {
                    channel.expires_at = exp;
                }
                return;
            }
            Err(reason) => reason,
        };
        let Some(channel) = self.channels.remove(&m.topic) else {
            return;
        };
        tracing::info!(socket = self.id, topic = %m.topic, %reason, "closing a channel: its new token was refused");
        self.close_channel(&m.topic, channel, &reason);
    }
}

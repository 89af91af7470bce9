//! Tokens on channels: the token of a join, and the `access_token` push
//! that replaces it.
//!
//! Owns checking a token a client presents on a channel (when channels are
//! secured), when the token that stands expires, and what a new token may
//! change: its expiry, not who the channel acts as. Must not close the
//! socket or decide at the upgrade (`http` checks the socket's own token)
//! nor time the expiry (`session` closes channels whose token expired).

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use crate::auth::{AuthError, Claims};
use crate::metrics::METRICS;
use crate::phoenix::frame::Inbound;
use crate::phoenix::payloads::{self, AccessTokenPayload};
use crate::phoenix::session::{unix_now, Session};

/// Claims a refreshed token may change without the channel being joined
/// again: its validity period and identifier. Anything else (the role, the
/// subject, any claim a policy may read) means the channel's subscriptions
/// and rights were decided for someone else.
const REFRESHABLE_CLAIMS: &[&str] = &["exp", "iat", "nbf", "jti"];

impl Session {
    /// When channels are secured, a token the client presents must verify;
    /// none means the socket's own token stands, if it is still valid. On
    /// success, the claims that now stand (`None`: channels not secured).
    /// A token naming a key this server does not have fetches the remote
    /// JWKS again (rate-limited) before it is refused.
    pub(super) async fn check_token(
        &self,
        token: Option<&str>,
    ) -> Result<Option<Arc<Claims>>, String> {
        let Some(verifier) = &self.verifier else {
            return Ok(None);
        };
        let refused = |e: AuthError| {
            METRICS.auth_failures.inc();
            e.to_string()
        };
        // The token the socket connected with, sent again (realtime-js
        // 2.x sends it with every join): its claims are already verified,
        // only their expiry is looked at again.
        let again = token.is_some_and(|t| {
            self.socket_token.is_some()
                && self.socket_token == Some(crate::auth::token_fingerprint(t))
        });
        match token.filter(|_| !again) {
            Some(t) => verifier
                .verify_fetching(t)
                .await
                .map(|c| Some(Arc::new(c)))
                .map_err(refused),
            None => match &self.socket_claims {
                Some(c) if c.valid_at(unix_now()) => Ok(Some(c.clone())),
                Some(_) => Err(refused(AuthError::Expired)),
                None => Err(refused(AuthError::Missing)),
            },
        }
    }

    /// An `access_token` push replaces the channel's token; one that does
    /// not verify, or that names another role or user than the token the
    /// channel was joined with, closes the channel with a `system` error
    /// the client can read. The clients expect no reply, except to a
    /// payload of the wrong shape, which is answered with an error and
    /// changes nothing.
    pub(super) fn refresh_token(&mut self, m: Inbound) -> Option<BoxFuture<'_, ()>> {
        let payload: AccessTokenPayload = match payloads::parse("access_token", &m.payload) {
            Ok(p) => p,
            Err(e) => {
                self.reply_error(&m, &e.to_string());
                return None;
            }
        };
        // A null token (as realtime-js 1.7 sends after every heartbeat)
        // leaves the channel as it is.
        let token = payload.token()?.to_string();
        self.verifier.as_ref()?;
        Some(Box::pin(async move {
            let reason = match self.check_token(Some(&token)).await {
                Ok(claims) => {
                    let Some(channel) = self.channels.get_mut(&m.topic) else {
                        return;
                    };
                    let other = matches!((&channel.claims, &claims),
                        (Some(old), Some(new)) if !same_principal(&old.raw, &new.raw));
                    if other {
                        "the new access token names another role or claims than the one the \
                         channel was joined with: join the channel again"
                            .to_string()
                    } else {
                        channel.expires_at = claims.as_ref().and_then(|c| c.expires_at);
                        if claims.is_some() {
                            channel.claims = claims;
                        }
                        return;
                    }
                }
                Err(reason) => reason,
            };
            let Some(channel) = self.channels.remove(&m.topic) else {
                return;
            };
            tracing::info!(socket = self.id, topic = %m.topic, %reason, "closing a channel: its new token was refused");
            self.close_channel(&m.topic, channel, &reason);
        }))
    }
}

/// Whether two tokens' claims are equal but for [`REFRESHABLE_CLAIMS`].
fn same_principal(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    let kept = |m: &Map<String, Value>| -> Map<String, Value> {
        m.iter()
            .filter(|(k, _)| !REFRESHABLE_CLAIMS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    kept(a) == kept(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_refresh_may_move_the_expiry_only() {
        let a = map(json!({"sub": "a", "role": "authenticated", "exp": 1, "iat": 0}));
        let later = map(json!({"sub": "a", "role": "authenticated", "exp": 9, "iat": 5}));
        let other = map(json!({"sub": "b", "role": "authenticated", "exp": 9}));
        let anon = map(json!({"sub": "a", "role": "anon", "exp": 9, "iat": 0}));
        assert!(same_principal(&a, &later));
        assert!(!same_principal(&a, &other));
        assert!(!same_principal(&a, &anon));
    }
}

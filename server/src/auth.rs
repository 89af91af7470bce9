//! Client authentication: this module owns verifying the JWTs that clients present
//! (at the WebSocket upgrade and in channel joins) against the configured keys
//! (`JWT_SECRET`, `JWT_JWKS`, `JWT_JWKS_URL`, see [`keys`]), the time claims
//! (`exp`, `nbf`, with `JWT_LEEWAY`) and `JWT_CLAIM_VALIDATORS`. It decides
//! "valid or not, and why"; what to do about an invalid token (HTTP 403, an
//! error reply) belongs to the callers.
//!
//! Error messages ([`AuthError`]'s `Display`) go to the client, so they never
//! include a secret or the token.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use crate::config::Secret;

pub mod keys;
use keys::{Key, RemoteJwks};

/// The algorithms a token may name; each is verified only by a key that
/// verifies it.
const ACCEPTED: &str =
    "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA";

/// Where the verification keys come from.
#[derive(Debug, Clone, Default)]
pub struct KeySources {
    /// `JWT_SECRET`: verifies HS256, HS384 and HS512.
    pub secret: Option<Secret>,
    /// `JWT_JWKS`: a JWKS document (or one JWK).
    pub jwks: Option<String>,
    /// `JWT_JWKS_URL`: where to fetch a JWKS.
    pub jwks_url: Option<String>,
    /// `JWT_LEEWAY`: how far `exp` and `nbf` may be off.
    pub leeway: Duration,
}

/// Verifies client tokens. Cheap to clone; build one at start and share it.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    secret: Option<DecodingKey>,
    inline: Vec<Key>,
    remote: Option<RemoteJwks>,
    claim_validators: Map<String, Value>,
    leeway: u64,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("secret", &self.inner.secret.as_ref().map(|_| "<redacted>"))
            .field("inline", &self.inner.inline)
            .field("remote", &self.inner.remote)
            .field("claim_validators", &self.inner.claim_validators)
            .field("leeway", &self.inner.leeway)
            .finish()
    }
}

/// The claims of a verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    /// `exp` (seconds since the Unix epoch), when the token has one.
    pub exp: Option<u64>,
    /// When the token stops being accepted: `exp` plus the leeway.
    pub expires_at: Option<u64>,
    /// Every claim, as sent.
    pub raw: Map<String, Value>,
}

/// A keyed hash of a token (SipHash, keys random per process): tells a
/// token that was already verified on this socket from another one
/// without keeping the token. Forging another token with the same hash
/// needs the keys, and would only ever act with the claims already
/// verified.
pub fn token_fingerprint(token: &str) -> u64 {
    use std::hash::BuildHasher;
    static KEYS: std::sync::LazyLock<std::collections::hash_map::RandomState> =
        std::sync::LazyLock::new(std::collections::hash_map::RandomState::new);
    KEYS.hash_one(token)
}

impl Claims {
    /// The `role` claim (Supabase: `anon`, `authenticated`, `service_role`), if it is a string.
    pub fn role(&self) -> Option<&str> {
        self.raw.get("role").and_then(Value::as_str)
    }

    /// Whether the token is still accepted at `now` (seconds since the epoch).
    pub fn valid_at(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|e| now < e)
    }
}

/// Why a token was refused. `Display` is meant for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("access token is missing")]
    Missing,
    #[error("access token is malformed: {0}")]
    Malformed(String),
    #[error("access token signature is invalid")]
    BadSignature,
    #[error("access token has expired")]
    Expired,
    #[error("access token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("access token algorithm {0} is not supported: expected {ACCEPTED}")]
    UnsupportedAlgorithm(String),
    #[error("access token names key {0:?}, which this server does not have")]
    UnknownKey(String),
    #[error("no key of this server verifies {0} tokens")]
    NoKey(String),
    #[error("access token algorithm {alg} does not match key {kid:?}")]
    KeyMismatch { kid: String, alg: String },
    #[error("access token claim `{claim}` does not have the value this server requires")]
    ClaimMismatch { claim: String },
}

impl JwtVerifier {
    /// A verifier with the HMAC secret only: its bytes are the key as is
    /// (not base64-decoded). No leeway.
    pub fn new(secret: &Secret, claim_validators: Map<String, Value>) -> JwtVerifier {
        let sources = KeySources {
            secret: Some(secret.clone()),
            ..KeySources::default()
        };
        JwtVerifier::with_keys(&sources, claim_validators).expect("a secret alone is valid")
    }

    /// A verifier with every configured key. Errors name the setting.
    /// Nothing is fetched yet: call [`JwtVerifier::refresh`].
    pub fn with_keys(
        sources: &KeySources,
        claim_validators: Map<String, Value>,
    ) -> Result<JwtVerifier, String> {
        let inline = match &sources.jwks {
            None => Vec::new(),
            Some(text) => {
                let (keys, skipped) =
                    keys::parse_jwks(text).map_err(|e| format!("JWT_JWKS: {e}"))?;
                for why in skipped {
                    tracing::warn!("JWT_JWKS: leaving out {why}");
                }
                if keys.is_empty() {
                    return Err("JWT_JWKS has no key that verifies signatures".into());
                }
                keys
            }
        };
        let remote = match &sources.jwks_url {
            None => None,
            Some(url) => {
                let remote = RemoteJwks::new(url).map_err(|e| format!("JWT_JWKS_URL: {e}"))?;
                if url.starts_with("http://") {
                    tracing::warn!(%url, "JWT_JWKS_URL is not https: whoever can alter the traffic can make the server accept their tokens");
                }
                Some(remote)
            }
        };
        Ok(JwtVerifier {
            inner: Arc::new(Inner {
                secret: sources
                    .secret
                    .as_ref()
                    .map(|s| DecodingKey::from_secret(s.expose().as_bytes())),
                inline,
                remote,
                claim_validators,
                leeway: sources.leeway.as_secs(),
            }),
        })
    }

    /// Fetches the remote JWKS, if there is one (at start, then every
    /// [`keys::REFRESH_INTERVAL`]).
    pub async fn refresh(&self) -> Result<(), String> {
        match &self.inner.remote {
            Some(remote) => remote.refresh().await,
            None => Ok(()),
        }
    }

    /// Whether there is a remote JWKS to refresh.
    pub fn has_remote_keys(&self) -> bool {
        self.inner.remote.is_some()
    }

    /// [`JwtVerifier::verify`]; when the token names a key this server does
    /// not have and a remote JWKS is configured, fetches it again (at most
    /// once per [`keys::REFETCH_INTERVAL`]) and tries once more.
    pub async fn verify_fetching(&self, token: &str) -> Result<Claims, AuthError> {
        match self.verify(token) {
            Err(AuthError::UnknownKey(kid)) => match &self.inner.remote {
                Some(remote) => {
                    let _ = remote.refresh_for_unknown_kid().await;
                    self.verify(token)
                }
                None => Err(AuthError::UnknownKey(kid)),
            },
            other => other,
        }
    }

    /// Verifies a token with the keys at hand and returns its claims.
    ///
    /// - Algorithm: one of [`ACCEPTED`], and a key that verifies exactly
    ///   that algorithm: the HMAC secret for HS*, a JWK for what its type
    ///   (or its own `alg`) says. With a `kid`, only the key of that `kid`.
    ///   `none` and anything else are refused before anything is looked at.
    /// - `exp`: **not required**. A token without `exp` is accepted (it never
    ///   expires; anon/service keys are often like that). When present it must
    ///   be a number, and later than now minus the leeway; `exp: null` is
    ///   refused.
    /// - `nbf`: when present, a number not later than now plus the leeway.
    /// - Every claim validator pair must equal the claim exactly (JSON equality).
    /// - Nothing else is checked: not `iat`, `aud` or `iss` (unless a claim
    ///   validator names them).
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let (algorithm, kid) = header(token)?;
        let inner = &self.inner;
        let remote = inner.remote.as_ref().map(|r| r.keys());
        let jwks = inner
            .inline
            .iter()
            .chain(remote.iter().flat_map(|k| k.iter()));
        let mut candidates: Vec<&DecodingKey> = Vec::new();
        let is_hmac = matches!(
            algorithm,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        );
        if is_hmac {
            candidates.extend(inner.secret.as_ref());
        }
        let mut same_kid_other_alg = false;
        for key in jwks {
            if kid.is_some() && key.kid != kid {
                continue;
            }
            if key.algorithms.contains(&algorithm) {
                candidates.push(&key.key);
            } else if kid.is_some() {
                same_kid_other_alg = true;
            }
        }
        let alg_name = format!("{algorithm:?}");
        if candidates.is_empty() {
            return Err(match kid {
                Some(kid) if same_kid_other_alg => AuthError::KeyMismatch { kid, alg: alg_name },
                Some(kid) => AuthError::UnknownKey(kid),
                None => AuthError::NoKey(alg_name),
            });
        }

        // The signature first, with jsonwebtoken's primitive; the claims are
        // read here, so each malformed claim gets its own reason.
        let (message, signature) = token.rsplit_once('.').expect("three parts");
        let mut verified = false;
        for key in candidates {
            if key.family() != algorithm.family() {
                continue;
            }
            match jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, algorithm) {
                Ok(true) => {
                    verified = true;
                    break;
                }
                Ok(false) => {}
                Err(e) if matches!(e.kind(), ErrorKind::Base64(_)) => {
                    return Err(AuthError::Malformed(
                        "the signature is not valid base64url".into(),
                    ))
                }
                // A key that cannot verify this token (e.g. the wrong size):
                // another may.
                Err(_) => {}
            }
        }
        if !verified {
            return Err(AuthError::BadSignature);
        }
        let payload = message.split('.').nth(1).unwrap_or_default();
        let payload = base64url_decode(payload)
            .ok_or_else(|| AuthError::Malformed("a part is not valid base64url".into()))?;
        let raw: Map<String, Value> = serde_json::from_slice(&payload)
            .map_err(|_| AuthError::Malformed("the claims are not a JSON object".into()))?;

        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let leeway = inner.leeway as f64;
        let exp = match raw.get("exp") {
            None => None,
            Some(exp) => {
                let Some(seconds) = exp.as_f64().filter(|s| s.is_finite()) else {
                    return Err(AuthError::Malformed("the exp claim is not a number".into()));
                };
                if seconds + leeway <= now {
                    return Err(AuthError::Expired);
                }
                Some(seconds)
            }
        };
        match raw.get("nbf") {
            None => {}
            Some(nbf) => {
                let Some(seconds) = nbf.as_f64().filter(|s| s.is_finite()) else {
                    return Err(AuthError::Malformed("the nbf claim is not a number".into()));
                };
                if seconds - leeway > now {
                    return Err(AuthError::NotYetValid);
                }
            }
        }

        for (claim, required) in &inner.claim_validators {
            if raw.get(claim) != Some(required) {
                return Err(AuthError::ClaimMismatch {
                    claim: claim.clone(),
                });
            }
        }

        Ok(Claims {
            exp: exp.map(|s| s as u64),
            expires_at: exp.map(|s| (s + leeway).ceil() as u64),
            raw,
        })
    }
}

/// The token's `alg`, if it is one we accept, and its `kid`. Read by hand
/// (not with `jsonwebtoken::decode_header`) so an unknown `alg` is named in
/// the error rather than reported as bad JSON.
fn header(token: &str) -> Result<(Algorithm, Option<String>), AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed(
            "expected three base64url parts separated by dots".into(),
        ));
    };
    let header = base64url_decode(header)
        .ok_or_else(|| AuthError::Malformed("the header is not valid base64url".into()))?;
    let header: Map<String, Value> = serde_json::from_slice(&header)
        .map_err(|_| AuthError::Malformed("the header is not a JSON object".into()))?;
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.chars().take(128).collect()),
        Some(_) => {
            return Err(AuthError::Malformed(
                "the header's kid is not a string".into(),
            ))
        }
    };
    let algorithm = match header.get("alg") {
        Some(Value::String(alg)) => match alg.as_str() {
            "HS256" => Algorithm::HS256,
            "HS384" => Algorithm::HS384,
            "HS512" => Algorithm::HS512,
            "RS256" => Algorithm::RS256,
            "RS384" => Algorithm::RS384,
            "RS512" => Algorithm::RS512,
            "PS256" => Algorithm::PS256,
            "PS384" => Algorithm::PS384,
            "PS512" => Algorithm::PS512,
            "ES256" => Algorithm::ES256,
            "ES384" => Algorithm::ES384,
            "EdDSA" => Algorithm::EdDSA,
            other => {
                return Err(AuthError::UnsupportedAlgorithm(
                    other.chars().take(32).collect(),
                ))
            }
        },
        _ => return Err(AuthError::Malformed("the header has no alg".into())),
    };
    Ok((algorithm, kid))
}

/// Base64url without padding (RFC 7515); trailing `=` tolerated.
fn base64url_decode(input: &str) -> Option<Vec<u8>> {
    let input = input.trim_end_matches('=').as_bytes();
    if input.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &byte in input {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

    fn verifier(validators: Value) -> JwtVerifier {
        let Value::Object(validators) = validators else {
            panic!("validators must be an object")
        };
        JwtVerifier::new(&Secret::new(SECRET), validators)
    }

    fn token(alg: Algorithm, claims: Value, secret: &str) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// A token with the given header and claims, signed with `SECRET` using HS256
    /// whatever the header says, to test header handling.
    fn forged(header: Value, claims: Value) -> String {
        use jsonwebtoken::crypto::sign;
        let b64 = |v: &Value| base64url_encode(v.to_string().as_bytes());
        let message = format!("{}.{}", b64(&header), b64(&claims));
        let signature = sign(
            message.as_bytes(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{message}.{signature}")
    }

    fn base64url_encode(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn base64url_round_trip() {
        for len in 0..20 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 250) as u8).collect();
            assert_eq!(base64url_decode(&base64url_encode(&bytes)).unwrap(), bytes);
        }
        assert!(base64url_decode("a").is_none());
        assert!(base64url_decode("ab+/").is_none());
    }

    #[test]
    fn valid_tokens_of_every_hmac_algorithm() {
        let v = verifier(json!({}));
        let exp = now() + 3600;
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let claims =
                json!({"role": "authenticated", "sub": "u1", "exp": exp, "aud": "authenticated"});
            let verified = v.verify(&token(alg, claims.clone(), SECRET)).unwrap();
            assert_eq!(verified.exp, Some(exp), "{alg:?}");
            assert_eq!(Value::Object(verified.raw.clone()), claims);
            assert_eq!(verified.role(), Some("authenticated"));
        }
    }

    #[test]
    fn token_without_exp_is_accepted() {
        let v = verifier(json!({}));
        let claims = v
            .verify(&token(Algorithm::HS256, json!({"role": "anon"}), SECRET))
            .unwrap();
        assert_eq!(claims.exp, None);
    }

    #[test]
    fn bad_signature() {
        let v = verifier(json!({}));
        let t = token(Algorithm::HS256, json!({"role": "anon"}), "another-secret");
        assert_eq!(v.verify(&t), Err(AuthError::BadSignature));
        // Claims changed after signing.
        let good = token(Algorithm::HS256, json!({"role": "anon"}), SECRET);
        let parts: Vec<&str> = good.split('.').collect();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            base64url_encode(br#"{"role":"service_role"}"#),
            parts[2]
        );
        assert_eq!(v.verify(&tampered), Err(AuthError::BadSignature));
    }

    #[test]
    fn expired() {
        let v = verifier(json!({}));
        let t = token(Algorithm::HS256, json!({"exp": now() - 1}), SECRET);
        assert_eq!(v.verify(&t), Err(AuthError::Expired));
        let t = token(Algorithm::HS512, json!({"exp": 0}), SECRET);
        assert_eq!(v.verify(&t), Err(AuthError::Expired));
        let t = token(Algorithm::HS256, json!({"exp": "tomorrow"}), SECRET);
        assert!(matches!(v.verify(&t), Err(AuthError::Malformed(_))));
        let t = token(Algorithm::HS256, json!({"exp": null}), SECRET);
        assert!(matches!(v.verify(&t), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn other_algorithms_are_rejected() {
        let v = verifier(json!({}));
        let claims = json!({"role": "service_role"});
        for alg in ["none", "XY999", "HS1", "RSA-OAEP"] {
            let t = forged(json!({"alg": alg, "typ": "JWT"}), claims.clone());
            assert_eq!(
                v.verify(&t),
                Err(AuthError::UnsupportedAlgorithm(alg.into())),
                "{alg}"
            );
        }
        // Algorithms with no key of this server.
        for alg in ["RS256", "ES256", "PS512", "EdDSA"] {
            let t = forged(json!({"alg": alg, "typ": "JWT"}), claims.clone());
            assert_eq!(v.verify(&t), Err(AuthError::NoKey(alg.into())), "{alg}");
        }
        // An unsigned token ("alg": "none", empty signature).
        let t = forged(json!({"alg": "none"}), claims.clone());
        let unsigned = format!("{}.", t.rsplit_once('.').unwrap().0);
        assert_eq!(
            v.verify(&unsigned),
            Err(AuthError::UnsupportedAlgorithm("none".into()))
        );
        let message = AuthError::UnsupportedAlgorithm("none".into()).to_string();
        assert_eq!(
            message,
            "access token algorithm none is not supported: expected HS256, HS384, HS512, RS256, \
             RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA"
        );
        // A header that claims HS384 over an HS256 signature does not verify.
        let t = forged(json!({"alg": "HS384"}), claims);
        assert_eq!(v.verify(&t), Err(AuthError::BadSignature));
    }

    #[test]
    fn time_claims_with_a_leeway() {
        let v = JwtVerifier::with_keys(
            &KeySources {
                secret: Some(Secret::new(SECRET)),
                leeway: Duration::from_secs(5),
                ..KeySources::default()
            },
            Map::new(),
        )
        .unwrap();
        let t = |claims: Value| token(Algorithm::HS256, claims, SECRET);
        // Within the leeway: accepted, and expires at exp + leeway.
        let c = v.verify(&t(json!({"exp": now() - 2}))).unwrap();
        assert_eq!(c.expires_at, Some(now() - 2 + 5));
        assert!(c.valid_at(now()) && !c.valid_at(now() + 3));
        assert_eq!(
            v.verify(&t(json!({"exp": now() - 6}))),
            Err(AuthError::Expired)
        );
        assert!(v.verify(&t(json!({"nbf": now() + 3}))).is_ok());
        assert_eq!(
            v.verify(&t(json!({"nbf": now() + 60}))),
            Err(AuthError::NotYetValid)
        );
        // null and non-numbers are refused, with the claim named.
        for (claims, name) in [
            (json!({"exp": null}), "exp"),
            (json!({"exp": "tomorrow"}), "exp"),
            (json!({"nbf": null}), "nbf"),
            (json!({"nbf": [1]}), "nbf"),
        ] {
            match v.verify(&t(claims.clone())) {
                Err(AuthError::Malformed(why)) => assert!(why.contains(name), "{claims}: {why}"),
                other => panic!("{claims}: {other:?}"),
            }
        }
        // No exp: never expires.
        let c = v.verify(&t(json!({"role": "anon"}))).unwrap();
        assert_eq!((c.exp, c.expires_at), (None, None));
        assert!(c.valid_at(u64::MAX - 1));
    }

    #[test]
    fn claim_validators() {
        let v = verifier(json!({"iss": "supabase", "ref": "abc"}));
        let t = token(
            Algorithm::HS256,
            json!({"iss": "supabase", "ref": "abc", "role": "anon"}),
            SECRET,
        );
        assert!(v.verify(&t).is_ok());

        let t = token(
            Algorithm::HS256,
            json!({"iss": "supabase", "ref": "xyz"}),
            SECRET,
        );
        assert_eq!(
            v.verify(&t),
            Err(AuthError::ClaimMismatch {
                claim: "ref".into()
            })
        );
        // Missing claim, and a claim equal only as text, do not match.
        let t = token(Algorithm::HS256, json!({"iss": "supabase"}), SECRET);
        assert!(matches!(v.verify(&t), Err(AuthError::ClaimMismatch { .. })));
        let v = verifier(json!({"n": 1}));
        let t = token(Algorithm::HS256, json!({"n": "1"}), SECRET);
        assert!(matches!(v.verify(&t), Err(AuthError::ClaimMismatch { .. })));
    }

    #[test]
    fn garbage() {
        let v = verifier(json!({}));
        assert_eq!(v.verify(""), Err(AuthError::Missing));
        assert_eq!(v.verify("   "), Err(AuthError::Missing));
        for garbage in [
            "garbage",
            "a.b",
            "a.b.c.d",
            "!!!.???.***",
            "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln",
        ] {
            assert!(
                matches!(
                    v.verify(garbage),
                    Err(AuthError::Malformed(_)) | Err(AuthError::BadSignature)
                ),
                "{garbage}: {:?}",
                v.verify(garbage)
            );
        }
        assert!(matches!(v.verify("garbage"), Err(AuthError::Malformed(_))));
        // Claims that are not an object, correctly signed.
        let t = forged(json!({"alg": "HS256"}), json!([1, 2]));
        assert!(matches!(v.verify(&t), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn messages_never_contain_secret_or_token() {
        let v = verifier(json!({"iss": "supabase"}));
        let tokens = [
            token(Algorithm::HS256, json!({"iss": "x"}), SECRET),
            token(Algorithm::HS256, json!({"iss": "supabase"}), "wrong"),
            token(Algorithm::HS256, json!({"exp": 1}), SECRET),
            forged(json!({"alg": "RS256"}), json!({})),
            "garbage.token.here".to_owned(),
        ];
        for t in tokens {
            let e = v.verify(&t).unwrap_err();
            for text in [e.to_string(), format!("{e:?}")] {
                assert!(!text.contains(SECRET), "{text}");
                assert!(!text.contains(&t), "{text}");
                for part in t.split('.').filter(|p| p.len() > 8) {
                    assert!(!text.contains(part), "{text}");
                }
            }
        }
        assert!(!format!("{v:?}").contains(SECRET));
    }
}

//! Client authentication: this module owns verifying the JWTs that clients present
//! (at the WebSocket upgrade and in channel joins) against `JWT_SECRET` and
//! `JWT_CLAIM_VALIDATORS`. It decides "valid or not, and why"; what to do about an
//! invalid token (HTTP 403, an error reply) belongs to the callers.
//!
//! Error messages ([`AuthError`]'s `Display`) go to the client, so they never
//! include the secret or the token.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::Secret;

/// The algorithms we accept: HMAC with SHA-2, the only ones a shared secret can verify.
const ACCEPTED: &str = "HS256, HS384 or HS512";

/// Verifies client tokens. Cheap to clone; build one at start and share it.
#[derive(Clone)]
pub struct JwtVerifier {
    key: DecodingKey,
    claim_validators: Map<String, Value>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("key", &"<redacted>")
            .field("claim_validators", &self.claim_validators)
            .finish()
    }
}

/// The claims of a verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    /// `exp` (seconds since the Unix epoch), when the token has one.
    pub exp: Option<u64>,
    /// Every claim, as sent.
    pub raw: Map<String, Value>,
}

impl Claims {
    /// The `role` claim (Supabase: `anon`, `authenticated`, `service_role`), if it is a string.
    pub fn role(&self) -> Option<&str> {
        self.raw.get("role").and_then(Value::as_str)
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
    #[error("access token algorithm {0} is not supported: expected {ACCEPTED}")]
    UnsupportedAlgorithm(String),
    #[error("access token claim `{claim}` does not have the value this server requires")]
    ClaimMismatch { claim: String },
}

impl JwtVerifier {
    /// `secret` is used as is (its bytes are the HMAC key, not base64-decoded);
    /// every pair of `claim_validators` must equal the token's claim exactly.
    pub fn new(secret: &Secret, claim_validators: Map<String, Value>) -> JwtVerifier {
        JwtVerifier {
            key: DecodingKey::from_secret(secret.expose().as_bytes()),
            claim_validators,
        }
    }

    /// Verifies a token and returns its claims.
    ///
    /// - Algorithm: HS256, HS384 or HS512, as the token's header says; any other
    ///   `alg` (RS256, `none`, ...) is refused before anything else is looked at.
    /// - Signature: HMAC with the secret.
    /// - `exp`: **not required**. A token without `exp` is accepted (it never
    ///   expires; anon/service keys are often like that). When present it must be a
    ///   number and in the future (no leeway).
    /// - Every claim validator pair must equal the claim exactly (JSON equality).
    /// - Nothing else is checked: not `nbf`, `iat`, `aud` or `iss` (unless a claim
    ///   validator names them).
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let algorithm = header_algorithm(token)?;

        let mut validation = Validation::new(algorithm);
        validation.required_spec_claims.clear();
        validation.validate_exp = false; // checked below, with our rules
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;

        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => {
                    AuthError::UnsupportedAlgorithm(format!("{algorithm:?}"))
                }
                ErrorKind::Json(_) => {
                    AuthError::Malformed("the claims are not a JSON object".into())
                }
                ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                    AuthError::Malformed("a part is not valid base64url".into())
                }
                _ => AuthError::Malformed("not a valid JWT".into()),
            })?;
        let raw = data.claims;

        let exp = match raw.get("exp") {
            None | Some(Value::Null) => None,
            Some(exp) => {
                let Some(seconds) = exp.as_f64().filter(|s| s.is_finite()) else {
                    return Err(AuthError::Malformed("the exp claim is not a number".into()));
                };
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                if seconds <= now {
                    return Err(AuthError::Expired);
                }
                Some(exp.as_u64().unwrap_or(seconds as u64))
            }
        };

        for (claim, required) in &self.claim_validators {
            if raw.get(claim) != Some(required) {
                return Err(AuthError::ClaimMismatch {
                    claim: claim.clone(),
                });
            }
        }

        Ok(Claims { exp, raw })
    }
}

/// The token's `alg`, if it is one we accept. Read by hand (not with
/// `jsonwebtoken::decode_header`) so an unknown `alg` is named in the error
/// rather than reported as bad JSON.
fn header_algorithm(token: &str) -> Result<Algorithm, AuthError> {
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
    match header.get("alg") {
        Some(Value::String(alg)) => match alg.as_str() {
            "HS256" => Ok(Algorithm::HS256),
            "HS384" => Ok(Algorithm::HS384),
            "HS512" => Ok(Algorithm::HS512),
            other => Err(AuthError::UnsupportedAlgorithm(
                other.chars().take(32).collect(),
            )),
        },
        _ => Err(AuthError::Malformed("the header has no alg".into())),
    }
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
    }

    #[test]
    fn other_algorithms_are_rejected() {
        let v = verifier(json!({}));
        let claims = json!({"role": "service_role"});
        for alg in ["RS256", "ES256", "none", "PS512", "EdDSA", "XY999"] {
            let t = forged(json!({"alg": alg, "typ": "JWT"}), claims.clone());
            assert_eq!(
                v.verify(&t),
                Err(AuthError::UnsupportedAlgorithm(alg.into())),
                "{alg}"
            );
        }
        // An unsigned token ("alg": "none", empty signature).
        let t = forged(json!({"alg": "none"}), claims.clone());
        let unsigned = format!("{}.", t.rsplit_once('.').unwrap().0);
        assert_eq!(
            v.verify(&unsigned),
            Err(AuthError::UnsupportedAlgorithm("none".into()))
        );
        let message = AuthError::UnsupportedAlgorithm("RS256".into()).to_string();
        assert_eq!(
            message,
            "access token algorithm RS256 is not supported: expected HS256, HS384 or HS512"
        );
        // A header that claims HS384 over an HS256 signature does not verify.
        let t = forged(json!({"alg": "HS384"}), claims);
        assert_eq!(v.verify(&t), Err(AuthError::BadSignature));
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

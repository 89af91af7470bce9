//! The keys tokens are verified with: the HMAC secret (`JWT_SECRET`), the
//! keys of an inline JWKS (`JWT_JWKS`) and of a JWKS fetched from a URL
//! (`JWT_JWKS_URL`).
//!
//! Owns reading JWKs and deciding which algorithm each key verifies. The
//! algorithm comes from the key, never from the token: a JWK's `alg` when it
//! has one, else its type and curve (RSA: RS256; EC P-256: ES256, P-384:
//! ES384; OKP Ed25519: EdDSA; a symmetric `oct` key: HS256). The HMAC secret
//! verifies HS256, HS384 and HS512. So an asymmetric key is never used as an
//! HMAC secret (algorithm confusion), and `none` verifies nothing. Also owns
//! fetching the remote JWKS (hyper's client, rustls with the Web PKI roots),
//! cached, fetched again when a token names an unknown `kid` (at most once
//! per [`REFETCH_INTERVAL`]) and every [`REFRESH_INTERVAL`].

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// A token naming an unknown `kid` fetches the remote JWKS again, at most
/// this often (a stream of tokens with made-up `kid`s costs one fetch per
/// interval, not one per token).
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// The remote JWKS is fetched again this often, so a key removed from it
/// (revoked) stops verifying within this time.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(300);

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A JWKS larger than this is refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// One verification key.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    /// What it verifies (one algorithm, except the HMAC secret).
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// The keys of a JWKS document (`{"keys": [...]}`, or one JWK). Keys that
/// cannot verify signatures (`use: enc`, unsupported types, an `alg` that
/// does not fit the key) are left out, each with the reason in the second
/// list.
pub fn parse_jwks(text: &str) -> Result<(Vec<Key>, Vec<String>), String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
    let items: Vec<Value> = match doc {
        Value::Object(mut o) if o.contains_key("keys") => match o.remove("keys") {
            Some(Value::Array(keys)) => keys,
            _ => return Err("\"keys\" is not an array".into()),
        },
        Value::Object(o) if o.contains_key("kty") => vec![Value::Object(o)],
        _ => return Err("expected a JWKS ({\"keys\": [...]}) or a JWK".into()),
    };
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let kid = item.get("kid").and_then(Value::as_str).map(str::to_string);
        let name = match &kid {
            Some(k) => format!("key {k:?}"),
            None => format!("key #{}", i + 1),
        };
        match key_from_jwk(item) {
            Ok(key) => keys.push(key),
            Err(why) => skipped.push(format!("{name}: {why}")),
        }
    }
    Ok((keys, skipped))
}

fn key_from_jwk(item: Value) -> Result<Key, String> {
    let jwk: Jwk = serde_json::from_value(item).map_err(|e| format!("not a JWK ({e})"))?;
    if let Some(PublicKeyUse::Encryption) = jwk.common.public_key_use {
        return Err("its use is encryption".into());
    }
    let natural = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return Err(format!("curve {:?} is not supported", p.curve)),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => Algorithm::EdDSA,
            _ => return Err(format!("curve {:?} is not supported", p.curve)),
        },
        AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
        _ => return Err("key type not supported".into()),
    };
    let algorithm = match jwk.common.key_algorithm {
        None => natural,
        Some(declared) => {
            let alg = signing_algorithm(declared)
                .ok_or_else(|| format!("alg {declared:?} is not a signature algorithm"))?;
            if alg.family() != natural.family() {
                return Err(format!("alg {alg:?} does not fit its key type"));
            }
            // An EC key's curve fixes its algorithm.
            if matches!(natural, Algorithm::ES256 | Algorithm::ES384) && alg != natural {
                return Err(format!("alg {alg:?} does not fit its curve"));
            }
            alg
        }
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable ({e})"))?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        algorithms: vec![algorithm],
        key,
    })
}

fn signing_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// A JWKS fetched from a URL, cached.
pub struct RemoteJwks {
    url: hyper::Uri,
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Empty<Bytes>,
    >,
    keys: RwLock<Arc<Vec<Key>>>,
    /// Held while fetching; when the last fetch for an unknown `kid` started.
    last_on_demand: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl RemoteJwks {
    /// `url` must be `https://` (or `http://`, which the caller warns
    /// about). Nothing is fetched yet.
    pub fn new(url: &str) -> Result<RemoteJwks, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL ({e})"))?;
        match uri.scheme_str() {
            Some("https") | Some("http") => {}
            _ => return Err(format!("{url:?}: the URL must start with https://")),
        }
        if uri.host().is_none() {
            return Err(format!("{url:?}: the URL has no host"));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports the default protocol versions")
            .with_root_certificates(rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        Ok(RemoteJwks {
            url: uri,
            client,
            keys: RwLock::new(Arc::new(Vec::new())),
            last_on_demand: tokio::sync::Mutex::new(None),
        })
    }

    pub fn url(&self) -> String {
        self.url.to_string()
    }

    /// The keys of the last successful fetch.
    pub fn keys(&self) -> Arc<Vec<Key>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Fetches the JWKS (at start and every [`REFRESH_INTERVAL`]). On
    /// failure the cached keys stay, and the reason is returned.
    pub async fn refresh(&self) -> Result<(), String> {
        let _fetching = self.last_on_demand.lock().await;
        self.fetch_and_keep().await
    }

    /// Fetches the JWKS because a token named an unknown `kid`, unless such
    /// a fetch started less than [`REFETCH_INTERVAL`] ago (concurrent
    /// callers wait for the one fetch).
    pub async fn refresh_for_unknown_kid(&self) -> Result<(), String> {
        let mut last = self.last_on_demand.lock().await;
        if last.is_some_and(|t| t.elapsed() < REFETCH_INTERVAL) {
            return Ok(());
        }
        *last = Some(Instant::now());
        self.fetch_and_keep().await
    }

    async fn fetch_and_keep(&self) -> Result<(), String> {
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, self.fetch())
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {FETCH_TIMEOUT:?}")));
        match fetched {
            Ok((keys, skipped)) => {
                for why in &skipped {
                    tracing::warn!(url = %self.url, "JWT_JWKS_URL: leaving out {why}");
                }
                tracing::info!(url = %self.url, keys = keys.len(), "fetched the JWKS");
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
                Ok(())
            }
            Err(why) => {
                tracing::warn!(url = %self.url, error = %why, "fetching the JWKS (JWT_JWKS_URL) failed; keeping the keys fetched before");
                Err(why)
            }
        }
    }

    async fn fetch(&self) -> Result<(Vec<Key>, Vec<String>), String> {
        let response = self
            .client
            .get(self.url.clone())
            .await
            .map_err(|e| format!("GET failed: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET answered {status}"));
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the body failed (at most {MAX_JWKS_BYTES} bytes): {e}"))?
            .to_bytes();
        let text = std::str::from_utf8(&body).map_err(|_| "the body is not UTF-8".to_string())?;
        parse_jwks(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_algorithm_comes_from_the_key() {
        let ec = json!({"kty": "EC", "crv": "P-384", "kid": "e",
            "x": "iA7lWQLzVrKGEFjfGMfMHfTEZ2KnLiKU7JuNT3E7ygsfE7ygfTkOd8MhAl8QVfn4",
            "y": "dcEVzzEQDyZB8qqNU0EZrBpVbkD09DHEcRFbVcZWiBQmd0FMdYxFNHqgo1zHbAP_"});
        let okp = json!({"kty": "OKP", "crv": "Ed25519", "kid": "d",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        let oct = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "s"});
        let enc = json!({"kty": "oct", "k": "c2VjcmV0", "use": "enc"});
        let wrong = json!({"kty": "oct", "k": "c2VjcmV0", "alg": "RS256", "kid": "w"});
        let text = json!({"keys": [ec, okp, oct, enc, wrong, {"kty": "XYZ"}]}).to_string();
        let (keys, skipped) = parse_jwks(&text).unwrap();
        let algs: Vec<(Option<&str>, Vec<Algorithm>)> = keys
            .iter()
            .map(|k| (k.kid.as_deref(), k.algorithms.clone()))
            .collect();
        assert_eq!(
            algs,
            vec![
                (Some("e"), vec![Algorithm::ES384]),
                (Some("d"), vec![Algorithm::EdDSA]),
                (Some("s"), vec![Algorithm::HS256]),
            ]
        );
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped[1].contains("\"w\"") && skipped[1].contains("does not fit"));
    }

    #[test]
    fn a_single_jwk_and_bad_documents() {
        let one = json!({"kty": "oct", "k": "c2VjcmV0", "alg": "HS512"}).to_string();
        let (keys, _) = parse_jwks(&one).unwrap();
        assert_eq!(keys[0].algorithms, vec![Algorithm::HS512]);
        assert!(parse_jwks("[]").is_err());
        assert!(parse_jwks("{\"keys\": 3}").is_err());
        assert!(parse_jwks("not json").is_err());
    }

    #[test]
    fn remote_urls_are_checked() {
        assert!(RemoteJwks::new("ftp://example.com/jwks").is_err());
        assert!(RemoteJwks::new("not a url").is_err());
        assert!(RemoteJwks::new("https://example.com/.well-known/jwks.json").is_ok());
    }
}

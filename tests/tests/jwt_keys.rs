//! Tokens signed with asymmetric keys generated here (RSA, EC, Ed25519),
//! verified against an inline JWKS and one served over HTTP: the algorithm
//! comes from the key, `none` and algorithm confusion are refused, a rotated
//! `kid` is fetched, and unknown `kid`s do not make the server fetch more
//! than once per interval.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use realtime_server::auth::{AuthError, JwtVerifier, KeySources};
use realtime_server::config::Secret;
use realtime_tests::jwt::{hmac_token, jwks, now, SigningKey};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "a-test-secret-of-reasonable-length";

fn claims() -> Value {
    json!({"role": "authenticated", "sub": "u1", "exp": now() + 3600})
}

fn verifier(sources: KeySources) -> JwtVerifier {
    JwtVerifier::with_keys(&sources, Map::new()).expect("verifier")
}

fn inline(keys: &[&SigningKey], secret: bool) -> JwtVerifier {
    verifier(KeySources {
        secret: secret.then(|| Secret::new(SECRET)),
        jwks: Some(jwks(keys)),
        ..KeySources::default()
    })
}

#[test]
fn rsa_ec_and_ed25519_tokens_verify_against_their_keys() {
    let keys: Vec<SigningKey> = [
        ("rs256", Algorithm::RS256),
        ("rs384", Algorithm::RS384),
        ("rs512", Algorithm::RS512),
        ("ps256", Algorithm::PS256),
        ("es256", Algorithm::ES256),
        ("es384", Algorithm::ES384),
        ("ed", Algorithm::EdDSA),
    ]
    .into_iter()
    .map(|(kid, alg)| SigningKey::generate(kid, alg))
    .collect();
    let refs: Vec<&SigningKey> = keys.iter().collect();
    let v = inline(&refs, true);
    for key in &keys {
        let verified = v
            .verify(&key.sign(&claims()))
            .unwrap_or_else(|e| panic!("{:?}: {e}", key.algorithm));
        assert_eq!(
            verified.role(),
            Some("authenticated"),
            "{:?}",
            key.algorithm
        );
    }
    // The HMAC secret still verifies its tokens beside the JWKS.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims(),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert!(v.verify(&hs).is_ok());
    // Another key under a known kid: a bad signature.
    let impostor = SigningKey::generate("es256", Algorithm::ES256);
    assert_eq!(
        v.verify(&impostor.sign(&claims())),
        Err(AuthError::BadSignature)
    );
    // Claims changed after signing.
    let good = keys[0].sign(&claims());
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        realtime_tests::jwt::base64url(br#"{"role":"service_role"}"#),
        parts[2]
    );
    assert_eq!(v.verify(&tampered), Err(AuthError::BadSignature));
}

#[test]
fn the_algorithm_comes_from_the_key_not_the_header() {
    let rsa = SigningKey::generate("rsa", Algorithm::RS256);
    let ec = SigningKey::generate("ec", Algorithm::ES256);
    // A JWK without `alg`: RSA verifies RS256 only, P-256 ES256 only.
    let doc = json!({"keys": [rsa.jwk(false), ec.jwk(false)]}).to_string();
    let v = verifier(KeySources {
        jwks: Some(doc),
        ..KeySources::default()
    });
    assert!(v.verify(&rsa.sign(&claims())).is_ok());
    assert!(v.verify(&ec.sign(&claims())).is_ok());
    // The same RSA key signing RS512: refused, the key says RS256.
    let rs512 = SigningKey {
        kid: "rsa".into(),
        algorithm: Algorithm::RS512,
        key: rsa.key.clone(),
        public_der: Vec::new(),
        public_pem: String::new(),
    };
    assert_eq!(
        v.verify(&rs512.sign(&claims())),
        Err(AuthError::KeyMismatch {
            kid: "rsa".into(),
            alg: "RS512".into()
        })
    );
    // A header naming ES384 over an ES256 key's kid.
    let forged = {
        let t = ec.sign(&claims());
        let (_, rest) = t.split_once('.').unwrap();
        let header = json!({"alg": "ES384", "kid": "ec", "typ": "JWT"});
        format!(
            "{}.{rest}",
            realtime_tests::jwt::base64url(header.to_string().as_bytes())
        )
    };
    assert_eq!(
        v.verify(&forged),
        Err(AuthError::KeyMismatch {
            kid: "ec".into(),
            alg: "ES384".into()
        })
    );
}

#[test]
fn none_and_algorithm_confusion_are_refused() {
    let rsa = SigningKey::generate("rsa", Algorithm::RS256);
    let ed = SigningKey::generate("ed", Algorithm::EdDSA);
    for secret in [false, true] {
        let v = inline(&[&rsa, &ed], secret);
        // HS256 signed with the public key's bytes, the classic confusion:
        // no kid, the RSA key's kid, the Ed25519 key's kid; PEM and DER.
        for public in [rsa.public_pem.as_bytes(), &rsa.public_der, &ed.public_der] {
            for kid in [None, Some("rsa"), Some("ed")] {
                let mut header = json!({"alg": "HS256", "typ": "JWT"});
                if let Some(kid) = kid {
                    header["kid"] = json!(kid);
                }
                let t = hmac_token(&header, &claims(), public);
                let expected = match (kid, secret) {
                    (Some(kid), false) => AuthError::KeyMismatch {
                        kid: kid.into(),
                        alg: "HS256".into(),
                    },
                    (None, false) => AuthError::NoKey("HS256".into()),
                    (_, true) => AuthError::BadSignature,
                };
                assert_eq!(v.verify(&t), Err(expected), "kid {kid:?}, secret {secret}");
            }
        }
        // alg none, with and without a signature.
        let t = hmac_token(&json!({"alg": "none"}), &claims(), b"x");
        let unsigned = format!("{}.", t.rsplit_once('.').unwrap().0);
        for t in [t, unsigned] {
            assert_eq!(
                v.verify(&t),
                Err(AuthError::UnsupportedAlgorithm("none".into()))
            );
        }
    }
}

/// Serves `GET` with the current JWKS and counts the requests.
struct JwksServer {
    url: String,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(body: String) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let body = Arc::new(Mutex::new(body));
        let hits = Arc::new(AtomicUsize::new(0));
        let (b, h) = (body.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (b, h) = (b.clone(), h.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let body = b.lock().unwrap().clone();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        JwksServer { url, body, hits }
    }
}

#[tokio::test]
async fn a_rotated_kid_is_fetched_and_unknown_kids_fetch_at_most_once_per_interval() {
    let old = SigningKey::generate("2024", Algorithm::ES256);
    let new = SigningKey::generate("2025", Algorithm::RS256);
    let server = JwksServer::start(jwks(&[&old])).await;
    let v = verifier(KeySources {
        jwks_url: Some(server.url.clone()),
        ..KeySources::default()
    });
    v.refresh().await.expect("first fetch");
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    assert!(v.verify_fetching(&old.sign(&claims())).await.is_ok());

    // The issuer rotates: the new kid is fetched on first sight.
    *server.body.lock().unwrap() = jwks(&[&new]);
    let token = new.sign(&claims());
    assert_eq!(v.verify(&token), Err(AuthError::UnknownKey("2025".into())));
    assert!(v.verify_fetching(&token).await.is_ok());
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    // The old key is gone from the fetched set.
    assert_eq!(
        v.verify(&old.sign(&claims())),
        Err(AuthError::UnknownKey("2024".into()))
    );

    // A flood of made-up kids: no more fetches within the interval.
    for i in 0..50 {
        let stranger = hmac_token(
            &json!({"alg": "RS256", "kid": format!("made-up-{i}")}),
            &claims(),
            b"x",
        );
        assert!(matches!(
            v.verify_fetching(&stranger).await,
            Err(AuthError::UnknownKey(_))
        ));
    }
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);

    // A URL that does not answer leaves the keys fetched before.
    let v2 = verifier(KeySources {
        jwks_url: Some("http://127.0.0.1:9/jwks.json".into()),
        jwks: Some(jwks(&[&new])),
        ..KeySources::default()
    });
    assert!(v2.refresh().await.is_err());
    assert!(v2.verify(&token).is_ok(), "the inline keys still verify");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

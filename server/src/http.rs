//! HTTP routes: the WebSocket endpoints, health and readiness, broadcasts.
//!
//! Owns what an HTTP client sees before a socket exists: the upgrade (with the
//! serializer choice and, when channels are secured, the token check that
//! answers 403), `/healthz` (the process is alive), `/readyz` (the
//! replication stream is live), `/metrics` (Prometheus text), and the
//! broadcast routes realtime-js calls (`/api/broadcast`,
//! `/api/broadcast/<topic>/events/<event>`, both also under `/realtime/v1`
//! where supabase-js points), with CORS for browsers
//! (`CORS_ALLOWED_ORIGINS`). The socket itself is `phoenix::session`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode};
use warp::{Filter, Rejection, Reply};

use crate::auth::JwtVerifier;
use crate::cluster::{BusError, TopicKey};
use crate::config::{var, CorsOrigins};
use crate::hub::Hub;
use crate::limits::Slots;
use crate::metrics::{self, METRICS};
use crate::phoenix::frame::Vsn;
use crate::phoenix::session::{self, SocketContext};
use crate::replication::stream::StreamStatus;

/// What the routes share.
pub struct AppState {
    pub hub: Arc<Hub>,
    pub sockets: Arc<SocketContext>,
    pub status: Arc<StreamStatus>,
    /// `Some` when channels are secured.
    pub verifier: Option<JwtVerifier>,
    /// `MEMORY_BUDGET_MB`: past it, upgrades are refused.
    pub memory_budget: crate::limits::MemoryBudget,
    /// `MAX_CONNECTIONS`: one slot per socket, reserved before the upgrade
    /// is answered and released when the socket ends.
    pub socket_slots: Arc<Slots>,
    /// The largest request body the HTTP broadcast routes read
    /// (`MAX_FRAME_BYTES`, what a socket may send in one frame).
    pub max_body_bytes: usize,
    /// `CORS_ALLOWED_ORIGINS`: browsers at these origins may call the
    /// broadcast routes.
    pub cors: crate::config::CorsOrigins,
}

/// Routes a caller adds to the server's own (the `dev` command's demo API).
pub type ExtraRoutes = warp::filters::BoxedFilter<(warp::reply::Response,)>;

pub fn routes(
    state: Arc<AppState>,
    extra: Option<ExtraRoutes>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    // Without extra routes, a filter that never matches.
    let extra = extra.unwrap_or_else(|| {
        warp::any()
            .and_then(|| async { Err::<warp::reply::Response, _>(warp::reject::not_found()) })
            .boxed()
    });
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    let max_body = state.max_body_bytes as u64;
    let socket_path = warp::path!("socket" / "websocket")
        .or(warp::path!("realtime" / "v1" / "websocket"))
        .unify();
    let ws = socket_path
        .and(allow(&[Method::GET]))
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::optional::<String>("x-api-key"))
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(with_state.clone())
        .then(upgrade);

    // Broadcast over HTTP (realtime-js sends here when a channel is not
    // joined): {"messages": [{"topic", "event", "payload"}]}, topic without
    // the `realtime:` prefix.
    let origin_allowed = {
        let cors = state.cors.clone();
        warp::header::optional::<String>("origin")
            .and_then(move |origin: Option<String>| {
                let cors = cors.clone();
                async move {
                    match origin {
                        Some(o) if !cors.allows(&o) => Err(warp::reject::custom(OriginRefused(o))),
                        _ => Ok(()),
                    }
                }
            })
            .untuple_one()
    };
    let api_broadcast = api()
        .and(warp::path!("api" / "broadcast"))
        .and(allow(&[Method::POST]))
        .and(origin_allowed.clone())
        .and(warp::header::optional::<String>("apikey"))
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::body::content_length_limit(max_body))
        .and(warp::body::json::<BroadcastRequest>())
        .and(with_state.clone())
        .then(api_broadcast);

    // The newest realtime-js `httpSend()`: one event per request, the body
    // is the payload; topic and event in the path.
    let api_broadcast_event = api()
        .and(warp::path!(
            "api" / "broadcast" / String / "events" / String
        ))
        .and(allow(&[Method::POST]))
        .and(origin_allowed)
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::optional::<String>("apikey"))
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::body::content_length_limit(max_body))
        .and(warp::body::bytes())
        .and(with_state.clone())
        .then(api_broadcast_event);

    // A browser's preflight of the broadcast routes (CORS headers are
    // added to every answer of those paths below).
    let preflight = api()
        .and(
            warp::path!("api" / "broadcast")
                .or(
                    warp::path!("api" / "broadcast" / String / "events" / String)
                        .map(|_, _| ())
                        .untuple_one(),
                )
                .unify(),
        )
        .and(preflight_method())
        .and(warp::header::optional::<String>("origin"))
        .and(warp::header::optional::<String>(
            "access-control-request-headers",
        ))
        .and(with_state.clone())
        .map(preflight);

    let healthz = warp::path!("healthz").and(allow(READ)).map(|| "ok");
    let metrics = warp::path!("metrics")
        .and(allow(READ))
        .and(with_state.clone())
        .map(|s: Arc<AppState>| {
            warp::reply::with_header(
                METRICS.render(&s.hub, &s.status),
                "content-type",
                metrics::CONTENT_TYPE,
            )
        });
    let readyz = warp::path!("readyz")
        .and(allow(READ))
        .and(with_state)
        .map(|s: Arc<AppState>| {
            if s.status.is_live() {
                warp::reply::with_status("ready", StatusCode::OK)
            } else {
                warp::reply::with_status(
                    "not ready: the replication stream is not live",
                    StatusCode::SERVICE_UNAVAILABLE,
                )
            }
        });

    let index = warp::path::end()
        .and(allow(READ))
        .map(|| warp::reply::html(crate::dev::page::INDEX_HTML));

    let routes = ws
        .or(api_broadcast)
        .or(api_broadcast_event)
        .or(preflight)
        .or(healthz)
        .or(readyz)
        .or(metrics)
        .or(index)
        .or(extra)
        .recover(handle_rejection);
    // Every answer on a broadcast path, refusals included, carries the
    // CORS headers its origin may read.
    let cors = state.cors.clone();
    warp::path::full()
        .and(warp::header::headers_cloned())
        .and(routes)
        .map(move |path: warp::path::FullPath, headers: HeaderMap, reply| {
            let mut response = warp::reply::Reply::into_response(reply);
            if is_broadcast_path(path.as_str()) {
                add_cors_headers(&cors, &headers, &mut response);
            }
            response
        })
        .with(warp::log::custom(|info| {
            tracing::debug!(method = %info.method(), path = info.path(), status = info.status().as_u16(), "http");
        }))
}

/// The broadcast routes' paths start here, or after `/realtime/v1` (where
/// supabase-js points realtime-js: its REST URL is the socket URL without
/// `/websocket`, plus `/api/broadcast`).
fn api() -> impl Filter<Extract = (), Error = Infallible> + Clone {
    warp::path("realtime")
        .and(warp::path("v1"))
        .or(warp::any())
        .unify()
}

/// Passes `OPTIONS` only; any other method is "not found" for the
/// preflight route (not warp's 405), so that a request another route
/// refuses is answered with that route's reason.
fn preflight_method() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::method()
        .and_then(|m: Method| async move {
            if m == Method::OPTIONS {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
}

/// Whether `path` is one of the broadcast routes' (see [`api`]).
fn is_broadcast_path(path: &str) -> bool {
    let path = path.strip_prefix("/realtime/v1").unwrap_or(path);
    path == "/api/broadcast" || path.starts_with("/api/broadcast/")
}

/// The request headers a browser may send to the broadcast routes when its
/// preflight names none: what realtime-js and supabase-js send.
const CORS_HEADERS: &str = "authorization, apikey, content-type, x-client-info";

/// The CORS headers of an answer to `headers`' origin, when
/// `CORS_ALLOWED_ORIGINS` allows it: `*` for any origin, else the origin
/// itself (and `Vary: Origin`, as the answer depends on it).
fn add_cors_headers(cors: &CorsOrigins, headers: &HeaderMap, response: &mut warp::reply::Response) {
    let h = response.headers_mut();
    match cors {
        CorsOrigins::Any => {
            h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        }
        CorsOrigins::List(_) => {
            h.append("vary", HeaderValue::from_static("origin"));
            let origin = headers
                .get("origin")
                .filter(|o| o.to_str().is_ok_and(|o| cors.allows(o)));
            if let Some(origin) = origin {
                h.insert("access-control-allow-origin", origin.clone());
            }
        }
    }
}

/// `OPTIONS` on a broadcast route: 204 with the methods and headers a
/// browser may use (the origin's own header is added with the others'), or
/// 403 naming the origin `CORS_ALLOWED_ORIGINS` does not list.
fn preflight(
    origin: Option<String>,
    request_headers: Option<String>,
    state: Arc<AppState>,
) -> warp::reply::Response {
    if let Some(origin) = origin.as_deref().filter(|o| !state.cors.allows(o)) {
        return json_error(
            StatusCode::FORBIDDEN,
            &OriginRefused(origin.into()).to_string(),
        );
    }
    let mut response = warp::reply::Response::default();
    *response.status_mut() = StatusCode::NO_CONTENT;
    let h = response.headers_mut();
    h.insert("allow", HeaderValue::from_static("POST, OPTIONS"));
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, OPTIONS"),
    );
    // The headers the browser asks for (a list of header names), else the
    // ones the clients send.
    let asked = request_headers.filter(|v| {
        v.split(',').all(|name| {
            let name = name.trim();
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        })
    });
    let allowed = asked
        .and_then(|v| HeaderValue::from_str(&v).ok())
        .unwrap_or(HeaderValue::from_static(CORS_HEADERS));
    h.insert("access-control-allow-headers", allowed);
    h.insert("access-control-max-age", HeaderValue::from_static("86400"));
    response
}

/// A request from a browser at an origin `CORS_ALLOWED_ORIGINS` does not
/// list: refused before anything is sent.
#[derive(Debug)]
struct OriginRefused(String);

impl warp::reject::Reject for OriginRefused {}

impl std::fmt::Display for OriginRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "origin {:?} may not call this server: it is not in CORS_ALLOWED_ORIGINS",
            self.0
        )
    }
}

/// The methods of the routes that only answer.
const READ: &[Method] = &[Method::GET, Method::HEAD];

/// A request whose path exists but whose method the route does not take.
#[derive(Debug)]
struct WrongMethod {
    allow: &'static [Method],
}

impl warp::reject::Reject for WrongMethod {}

/// Passes requests with one of the methods `allow`; others are refused
/// with 405 and an `Allow` header naming them (see [`handle_rejection`]).
fn allow(allow: &'static [Method]) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::method()
        .and_then(move |m: Method| async move {
            if allow.contains(&m) {
                Ok(())
            } else {
                Err(warp::reject::custom(WrongMethod { allow }))
            }
        })
        .untuple_one()
}

/// Bytes a socket's reader keeps for incoming frames, and reads at most at
/// once. tungstenite's default is 128 KiB, zero-filled on the first read:
/// 128 KiB of memory for every socket, when clients send heartbeats of 60
/// bytes and joins of a few hundred (a join with a JWT, about a kilobyte).
/// A bigger frame grows the buffer to its size while it is read.
pub const READ_BUFFER_BYTES: usize = 2 * 1024;

/// Bytes of encoded frames a socket's writer gathers before it writes them
/// to the connection (a flush writes whatever is gathered). tungstenite's
/// default, 128 KiB, let every socket grow (by reallocation, copying as it
/// doubles) and keep a buffer as large as its largest burst.
pub const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// Why a request to a socket path is not a WebSocket upgrade this server can
/// take, with the status to answer; `None` when it is one.
fn refuse_handshake(
    headers: &HeaderMap,
    on_upgrade: Option<&OnUpgrade>,
) -> Option<(StatusCode, &'static str)> {
    let has_token = |name: &str, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    };
    if !has_token("connection", "upgrade") || !has_token("upgrade", "websocket") {
        return Some((
            StatusCode::UPGRADE_REQUIRED,
            "this is a WebSocket endpoint: send `Connection: upgrade` and `Upgrade: websocket`",
        ));
    }
    if headers
        .get("sec-websocket-version")
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Some((
            StatusCode::UPGRADE_REQUIRED,
            "unsupported Sec-WebSocket-Version: this server speaks version 13 (RFC 6455)",
        ));
    }
    if headers.get("sec-websocket-key").is_none() {
        return Some((StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key"));
    }
    if on_upgrade.is_none() {
        return Some((
            StatusCode::BAD_REQUEST,
            "this connection cannot be upgraded: use HTTP/1.1 for WebSockets",
        ));
    }
    None
}

/// Answers a socket path: `101 Switching Protocols` and a task serving the
/// socket, or the reason it is refused.
///
/// The upgrade is done here rather than with warp's `ws()`, which hides
/// tungstenite's [`WebSocketConfig`]: the server needs a small read buffer
/// (see [`READ_BUFFER_BYTES`]) and tungstenite's own message type, whose
/// text frames share their bytes, so a change's frame goes to every socket
/// without a copy.
async fn upgrade(
    query: HashMap<String, String>,
    api_key_header: Option<String>,
    headers: HeaderMap,
    on_upgrade: Option<OnUpgrade>,
    state: Arc<AppState>,
) -> warp::reply::Response {
    if let Some((status, reason)) = refuse_handshake(&headers, on_upgrade.as_ref()) {
        let mut response = text(status, reason.to_string());
        if status == StatusCode::UPGRADE_REQUIRED {
            // RFC 9110 and RFC 6455: say which upgrade and version would do.
            let h = response.headers_mut();
            h.insert("upgrade", HeaderValue::from_static("websocket"));
            h.insert("sec-websocket-version", HeaderValue::from_static("13"));
        }
        return response;
    }
    let vsn = match Vsn::from_param(query.get("vsn").map(String::as_str)) {
        Ok(v) => v,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let mut socket_claims = None;
    if let Some(verifier) = &state.verifier {
        let token = query
            .get("apikey")
            .or_else(|| query.get("token"))
            .or(api_key_header.as_ref());
        let result = match token {
            Some(t) => verifier.verify_fetching(t).await,
            None => Err(crate::auth::AuthError::Missing),
        };
        match result {
            Ok(claims) => {
                let fingerprint = token.map(|t| crate::auth::token_fingerprint(t));
                socket_claims = Some((claims, fingerprint))
            }
            Err(e) => {
                METRICS.auth_failures.inc();
                tracing::info!(reason = %e, "refused a socket: bad token");
                return text(StatusCode::FORBIDDEN, e.to_string());
            }
        }
    }
    if state.memory_budget.exceeded() {
        METRICS.limit_reached(var::MEMORY_BUDGET_MB);
        tracing::warn!("refused a socket: MEMORY_BUDGET_MB reached");
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            state.memory_budget.reason(),
        );
    }
    // The slot is reserved in one atomic step before the 101 is answered,
    // so a burst of upgrades never admits more than MAX_CONNECTIONS, and it
    // is released when the socket ends (or its upgrade fails).
    let Some(slot) = state.socket_slots.try_acquire() else {
        let limit = state.socket_slots.max();
        METRICS.connections_refused.inc();
        METRICS.limit_reached(var::MAX_CONNECTIONS);
        tracing::warn!(limit, "refused a socket: MAX_CONNECTIONS reached");
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many connections (limit {limit}): try another server"),
        );
    };
    METRICS.connections_accepted.inc();
    let ctx = state.sockets.clone();
    let max = ctx.limits.max_frame_bytes;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let (Some(on_upgrade), Some(key)) = (on_upgrade, headers.get("sec-websocket-key")) else {
        unreachable!("refuse_handshake checked both");
    };
    let accept = derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                session::serve(ws, vsn, ctx, socket_claims).await;
            }
            Err(e) => tracing::debug!(error = %e, "a WebSocket upgrade did not complete"),
        }
        drop(slot);
    });
    let mut response = warp::reply::Response::default();
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert("connection", HeaderValue::from_static("upgrade"));
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    response
}

#[derive(serde::Deserialize)]
struct BroadcastRequest {
    messages: Vec<BroadcastMessage>,
}

#[derive(serde::Deserialize)]
struct BroadcastMessage {
    topic: String,
    event: String,
    #[serde(default)]
    payload: serde_json::Value,
    /// To the members of the private channel of that name (realtime-js
    /// sends the channel's `config.private`).
    #[serde(default)]
    private: bool,
}

/// When channels are secured, the bearer token (or `apikey` header) of an
/// HTTP broadcast must verify; why not otherwise.
async fn check_http_token(
    state: &AppState,
    apikey: Option<String>,
    authorization: Option<String>,
) -> Result<Option<crate::auth::Claims>, String> {
    let Some(verifier) = &state.verifier else {
        return Ok(None);
    };
    let bearer = authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::to_string);
    let result = match bearer.or(apikey) {
        Some(t) => verifier.verify_fetching(&t).await,
        None => Err(crate::auth::AuthError::Missing),
    };
    result.map(Some).map_err(|e| {
        METRICS.auth_failures.inc();
        e.to_string()
    })
}

/// Whether the token's `claims` may send broadcasts to every private topic
/// among `messages`: as on a socket, the policies of `realtime.messages`
/// decide (an INSERT of extension `broadcast` on that topic). Public topics
/// need only a valid token. `Err` names the first topic refused.
async fn check_private_writes(
    state: &AppState,
    claims: Option<&crate::auth::Claims>,
    messages: &[(TopicKey, String)],
) -> Result<(), (StatusCode, String)> {
    let mut seen = std::collections::HashSet::new();
    let private: Vec<&str> = messages
        .iter()
        .map(|(topic, _)| topic)
        .filter(|topic| topic.private)
        .map(|topic| &*topic.topic)
        .filter(|topic| seen.insert(*topic))
        .collect();
    if private.is_empty() {
        return Ok(());
    }
    let (Some(authz), Some(claims)) = (state.hub.authorizer(), claims) else {
        return Err((
            StatusCode::FORBIDDEN,
            "private channels need SECURE_CHANNELS=true: their rights come from the token's \
             role and claims"
                .into(),
        ));
    };
    for topic in private {
        let short = topic.strip_prefix("realtime:").unwrap_or(topic);
        let group = authz.group(&claims.raw, Some(short));
        match authz
            .channel_rights(&group, crate::authz::plan::Command::Insert)
            .await
        {
            Ok(rights) if rights.broadcast => {}
            Ok(_) => {
                return Err((
                    StatusCode::FORBIDDEN,
                    format!(
                        "Unauthorized: You do not have permissions to write to this Channel \
                         topic: {short}; nothing was sent"
                    ),
                ))
            }
            Err(e) => {
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("checking the policies of realtime.messages for {short} failed: {e}; nothing was sent"),
                ))
            }
        }
    }
    Ok(())
}

/// The broadcast of `event` with `payload` to the members of `topic` (with
/// or without the `realtime:` prefix), as its topic key and frame payload.
fn broadcast_message(
    topic: &str,
    private: bool,
    event: &str,
    payload: &serde_json::Value,
) -> (TopicKey, String) {
    let topic = if topic.starts_with("realtime:") {
        topic.to_string()
    } else {
        format!("realtime:{topic}")
    };
    let payload = serde_json::json!({"type": "broadcast", "event": event, "payload": payload});
    (TopicKey::new(&topic, private), payload.to_string())
}

/// Sends broadcasts to the members of their topics on every server, in
/// order; answers 202 once the cluster's bus has them all. None is sent
/// when one is over `CLUSTER_MAX_MESSAGE_BYTES` (413, naming it); when the
/// bus is down or lagging they reach this server's members only (503, with
/// the reason).
async fn relay_broadcasts(
    state: &AppState,
    messages: Vec<(TopicKey, String)>,
) -> warp::reply::Response {
    let max = state.hub.cluster().settings().max_message_bytes;
    if let Some((i, (topic, payload))) = messages
        .iter()
        .enumerate()
        .find(|(_, (_, p))| p.len() > max)
    {
        state
            .hub
            .cluster()
            .status
            .refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reason = format!(
            "message {i} (topic {:?}) of {} bytes is over CLUSTER_MAX_MESSAGE_BYTES ({max}): nothing was sent",
            topic.topic,
            payload.len()
        );
        return json_error(StatusCode::PAYLOAD_TOO_LARGE, &reason);
    }
    if state.memory_budget.exceeded() {
        METRICS.limit_reached(var::MEMORY_BUDGET_MB);
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &state.memory_budget.reason(),
        );
    }
    let mut sent = Vec::with_capacity(messages.len());
    let mut failed: Option<BusError> = None;
    for (topic, payload) in &messages {
        match state.hub.broadcast(topic, None, payload) {
            Ok(s) => sent.push(s),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    for s in sent {
        if let Err(e) = s.wait().await {
            failed.get_or_insert(e);
        }
    }
    match failed {
        None => accepted(),
        Some(e @ BusError::TooLarge { .. }) => {
            json_error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string())
        }
        Some(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

fn accepted() -> warp::reply::Response {
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({})),
        StatusCode::ACCEPTED,
    )
    .into_response()
}

fn json_error(status: StatusCode, message: &str) -> warp::reply::Response {
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "error": message })),
        status,
    )
    .into_response()
}

async fn api_broadcast(
    apikey: Option<String>,
    authorization: Option<String>,
    body: BroadcastRequest,
    state: Arc<AppState>,
) -> warp::reply::Response {
    let claims = match check_http_token(&state, apikey, authorization).await {
        Ok(c) => c,
        Err(reason) => return json_error(StatusCode::FORBIDDEN, &reason),
    };
    let messages: Vec<_> = body
        .messages
        .iter()
        .map(|m| broadcast_message(&m.topic, m.private, &m.event, &m.payload))
        .collect();
    if let Err((status, reason)) = check_private_writes(&state, claims.as_ref(), &messages).await {
        return json_error(status, &reason);
    }
    relay_broadcasts(&state, messages).await
}

#[allow(clippy::too_many_arguments)]
async fn api_broadcast_event(
    topic: String,
    event: String,
    query: HashMap<String, String>,
    apikey: Option<String>,
    authorization: Option<String>,
    content_type: Option<String>,
    body: bytes::Bytes,
    state: Arc<AppState>,
) -> warp::reply::Response {
    let claims = match check_http_token(&state, apikey, authorization).await {
        Ok(c) => c,
        Err(reason) => return json_error(StatusCode::FORBIDDEN, &reason),
    };
    let (topic, event) = match (percent_decode(&topic), percent_decode(&event)) {
        (Some(t), Some(e)) => (t, e),
        _ => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!(
                "the path /api/broadcast/{topic}/events/{event} is not valid percent-encoded UTF-8"
            ),
            )
        }
    };
    let body = match BroadcastBody::read(content_type.as_deref(), body) {
        Ok(b) => b,
        Err((status, reason)) => return json_error(status, &reason),
    };
    if query
        .keys()
        .any(|k| k == "persist" || k.starts_with("persist["))
    {
        return json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("{}; nothing was sent", crate::phoenix::NO_PERSIST),
        );
    }
    let private = query.get("private").is_some_and(|p| p == "true");
    match body {
        BroadcastBody::Json(payload) => {
            let messages = vec![broadcast_message(&topic, private, &event, &payload)];
            if let Err((status, reason)) =
                check_private_writes(&state, claims.as_ref(), &messages).await
            {
                return json_error(status, &reason);
            }
            relay_broadcasts(&state, messages).await
        }
        BroadcastBody::Binary(data) => {
            let (key, _) = broadcast_message(&topic, private, &event, &serde_json::Value::Null);
            let max = crate::phoenix::frame::MAX_BINARY_FIELD_BYTES;
            if key.topic.len() > max || event.len() > max {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "a binary payload travels in a binary frame whose topic ({} bytes, \
                         with the realtime: prefix) and event ({} bytes) are at most {max} bytes \
                         each: nothing was sent",
                        key.topic.len(),
                        event.len()
                    ),
                );
            }
            let messages = [(key, String::new())];
            if let Err((status, reason)) =
                check_private_writes(&state, claims.as_ref(), &messages).await
            {
                return json_error(status, &reason);
            }
            let [(key, _)] = messages;
            bus_answer(state.hub.broadcast_binary(&key, None, &event, &data)).await
        }
    }
}

/// The body of the events route: JSON (`application/json`, or no
/// `Content-Type`, as Supabase Realtime takes it) or bytes
/// (`application/octet-stream`, realtime-js's `httpSend()` of an
/// `ArrayBuffer` or a typed array).
enum BroadcastBody {
    Json(serde_json::Value),
    Binary(bytes::Bytes),
}

impl BroadcastBody {
    fn read(content_type: Option<&str>, body: bytes::Bytes) -> Result<Self, (StatusCode, String)> {
        let media = content_type.map(|c| {
            c.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
        match media.as_deref() {
            None | Some("application/json") => serde_json::from_slice(&body)
                .map(BroadcastBody::Json)
                .map_err(|e| {
                    (
                        StatusCode::BAD_REQUEST,
                        format!("the body is not JSON: {e}"),
                    )
                }),
            Some("application/octet-stream") => Ok(BroadcastBody::Binary(body)),
            Some(_) => Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Type {:?} is not supported: send application/json or \
                     application/octet-stream",
                    content_type.unwrap_or_default()
                ),
            )),
        }
    }
}

/// Answers a broadcast handed to the cluster: 202 once its bus has it, 413
/// over `CLUSTER_MAX_MESSAGE_BYTES` (nothing was sent), 503 when the bus is
/// down or lagging (this server's members got it).
async fn bus_answer(sent: Result<crate::cluster::Sent, BusError>) -> warp::reply::Response {
    let result = match sent {
        Ok(s) => s.wait().await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => accepted(),
        Err(e @ BusError::TooLarge { .. }) => {
            json_error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string())
        }
        Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// Decodes `%XX` escapes (warp hands path segments over still encoded).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn text(status: StatusCode, body: String) -> warp::reply::Response {
    warp::reply::with_status(body, status).into_response()
}

/// Every refusal of a route, as a status and a plain reason: never Rust's
/// debug text.
async fn handle_rejection(err: Rejection) -> Result<warp::reply::Response, Infallible> {
    use warp::reject::{
        InvalidHeader, InvalidQuery, LengthRequired, MethodNotAllowed, MissingHeader,
        PayloadTooLarge, UnsupportedMediaType,
    };
    if err.is_not_found() {
        return Ok(text(StatusCode::NOT_FOUND, "not found".into()));
    }
    if let Some(refused) = err.find::<OriginRefused>() {
        return Ok(json_error(StatusCode::FORBIDDEN, &refused.to_string()));
    }
    if let Some(wrong) = err.find::<WrongMethod>() {
        let allow: Vec<&str> = wrong.allow.iter().map(Method::as_str).collect();
        let allow = allow.join(", ");
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method not allowed: this path takes {allow}"),
        );
        if let Ok(v) = HeaderValue::from_str(&allow) {
            response.headers_mut().insert("allow", v);
        }
        return Ok(response);
    }
    let (status, reason) = if err.find::<PayloadTooLarge>().is_some() {
        METRICS.limit_reached(var::MAX_FRAME_BYTES);
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload too large: the body is over MAX_FRAME_BYTES".to_string(),
        )
    } else if err.find::<LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "length required: send the body with a Content-Length header".to_string(),
        )
    } else if err.find::<MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed".to_string(),
        )
    } else if err.find::<UnsupportedMediaType>().is_some() {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported media type: send application/json".to_string(),
        )
    } else if let Some(e) = err.find::<warp::body::BodyDeserializeError>() {
        (
            StatusCode::BAD_REQUEST,
            format!("the body is not a broadcast request: {e}"),
        )
    } else if let Some(e) = err.find::<InvalidQuery>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else if let Some(e) = err.find::<InvalidHeader>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else if let Some(e) = err.find::<MissingHeader>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else {
        (StatusCode::BAD_REQUEST, "bad request".to_string())
    };
    Ok(text(status, reason))
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(percent_decode("room%3A1").as_deref(), Some("room:1"));
        assert_eq!(percent_decode("caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%FF"), None);
    }
}

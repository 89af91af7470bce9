//! HTTP routes: the WebSocket endpoints, health and readiness.
//!
//! Owns what an HTTP client sees before a socket exists: the upgrade (with the
//! serializer choice and, when channels are secured, the token check that
//! answers 403), `/healthz` (the process is alive) and `/readyz` (the
//! replication stream is live). The socket itself is `phoenix::socket`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::auth::JwtVerifier;
use crate::hub::Hub;
use crate::phoenix::frame::Vsn;
use crate::phoenix::socket::{self, SocketLimits};
use crate::replication::stream::StreamStatus;

/// What the routes share.
pub struct AppState {
    pub hub: Arc<Hub>,
    pub status: Arc<StreamStatus>,
    /// `Some` when channels are secured.
    pub verifier: Option<JwtVerifier>,
    pub limits: SocketLimits,
    pub max_connections: usize,
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
    let socket_path = warp::path!("socket" / "websocket")
        .or(warp::path!("realtime" / "v1" / "websocket"))
        .unify();
    let ws = socket_path
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::optional::<String>("x-api-key"))
        .and(with_state.clone())
        .and(warp::ws())
        .map(upgrade);

    let healthz = warp::path!("healthz").map(|| "ok");
    let readyz = warp::path!("readyz")
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
        .and(warp::get())
        .map(|| warp::reply::html(crate::dev::page::INDEX_HTML));

    ws.or(healthz)
        .or(readyz)
        .or(index)
        .or(extra)
        .recover(handle_rejection)
        .with(warp::log::custom(|info| {
            tracing::debug!(method = %info.method(), path = info.path(), status = info.status().as_u16(), "http");
        }))
}

fn upgrade(
    query: HashMap<String, String>,
    api_key_header: Option<String>,
    state: Arc<AppState>,
    ws: warp::ws::Ws,
) -> warp::reply::Response {
    let vsn = match Vsn::from_param(query.get("vsn").map(String::as_str)) {
        Ok(v) => v,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    if let Some(verifier) = &state.verifier {
        let token = query
            .get("apikey")
            .or_else(|| query.get("token"))
            .or(api_key_header.as_ref());
        let result = match token {
            Some(t) => verifier.verify(t),
            None => Err(crate::auth::AuthError::Missing),
        };
        if let Err(e) = result {
            tracing::info!(reason = %e, "refused a socket: bad token");
            return text(StatusCode::FORBIDDEN, e.to_string());
        }
    }
    if state.hub.socket_count() >= state.max_connections {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many connections (limit {}): try another server",
                state.max_connections
            ),
        );
    }
    let hub = state.hub.clone();
    let limits = state.limits.clone();
    ws.max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes)
        .on_upgrade(move |socket| socket::serve(socket, vsn, hub, limits))
        .into_response()
}

fn text(status: StatusCode, body: String) -> warp::reply::Response {
    warp::reply::with_status(body, status).into_response()
}

async fn handle_rejection(err: Rejection) -> Result<warp::reply::Response, Infallible> {
    if err.is_not_found() {
        return Ok(text(StatusCode::NOT_FOUND, "not found".into()));
    }
    Ok(text(
        StatusCode::BAD_REQUEST,
        format!("bad request: {err:?}"),
    ))
}

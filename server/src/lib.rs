//! realtime-server: streams PostgreSQL row changes, read from a logical
//! replication slot with `pgoutput`, to WebSocket clients that speak Phoenix
//! Channels (`@supabase/realtime-js` 1.x and 2.x, `phoenix`).
//!
//! Data flow: replication (`replication::stream`) -> decoder
//! (`replication::pgoutput`) -> [`change::Change`] -> [`hub::Hub`] (index,
//! encode once) -> per-socket queue -> `phoenix::writer` -> client.

pub mod auth;
pub mod authz;
pub mod change;
pub mod check;
pub mod cluster;
pub mod dev;
pub mod filter;
pub mod http;
pub mod hub;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod pg;
pub mod phoenix;
pub mod published;
pub mod replication;
pub mod select;
pub mod typed;

/// The configuration and the database TLS connector live in the contract
/// crate, which the operator shares; re-exported so that `crate::config` and
/// `crate::tls` read as before.
pub use realtime_contract::{config, tls};

use std::future::Future;
use std::sync::Arc;

use crate::auth::{JwtVerifier, KeySources};
use crate::authz::authorizer::{Authorizer, AuthzSettings};
use crate::config::Config;
use crate::http::AppState;
use crate::hub::Hub;
use crate::phoenix::session::{SocketContext, SocketLimits};
use crate::published::PublishedTables;
use crate::replication::stream::{self, StreamControl, StreamStatus};

/// How long a shutdown waits for sockets to send their close frames.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves until `shutdown` resolves: binds the listener, streams from the
/// database (reconnecting as needed) and serves sockets.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with(config, None, shutdown).await
}

/// [`serve`], with more routes beside the server's own.
pub async fn serve_with(
    config: Config,
    extra_routes: Option<http::ExtraRoutes>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let verifier = if config.secure_channels {
        let sources = KeySources {
            secret: config.jwt_secret.clone(),
            jwks: config.jwt_jwks.clone(),
            jwks_url: config.jwt_jwks_url.clone(),
            leeway: config.jwt_leeway,
        };
        let verifier = JwtVerifier::with_keys(&sources, config.jwt_claim_validators.clone())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if verifier.has_remote_keys() {
            if let Err(e) = verifier.refresh().await {
                tracing::warn!(error = %e, "fetching the JWKS (JWT_JWKS_URL) at start failed; tokens signed with its keys are refused until a fetch succeeds");
            }
            tokio::spawn(refresh_keys(verifier.clone()));
        }
        Some(verifier)
    } else {
        None
    };
    // Channels secured: PostgreSQL's grants and policies decide every
    // delivery, as the token's role and claims (see `authz`).
    let authz = config.secure_channels.then(|| {
        Authorizer::new(
            config.db.clone(),
            AuthzSettings {
                default_role: config.anon_role.clone(),
                check_timeout: config.authz_check_timeout,
                refresh_interval: config.authz_refresh,
                pool_size: config.authz_pool_size,
            },
        )
    });
    let memory_budget = limits::MemoryBudget::new(config.memory_budget_mb);
    tracing::info!(
        memory_budget_mb = memory_budget.mb,
        "sockets, joins, broadcasts and presences are refused past this many MiB queued or kept (MEMORY_BUDGET_MB)"
    );
    let hub = Arc::new(
        Hub::with_cluster(
            config.socket_queue_depth,
            cluster::ClusterSettings::from_config(&config),
        )
        .with_queue_bytes(config.socket_queue_bytes)
        .with_max_presence_members(config.max_presence_members)
        .with_authorizer(authz.clone())
        .with_memory_budget(memory_budget),
    );
    if let Some(authz) = &authz {
        let roles = [config.anon_role.clone(), "authenticated".to_string()];
        let checking = authz.clone();
        tokio::spawn(async move {
            let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
            checking.check_roles(&roles).await;
        });
        tokio::spawn(authz.clone().watch_catalog());
        tokio::spawn(apply_catalog_changes(authz.clone(), hub.clone()));
    }
    let status = Arc::new(StreamStatus::default());
    // The published tables joins are checked against: loaded now, kept
    // current from the catalog's fingerprint and the stream's Relation
    // messages (see `published`).
    let published = Arc::new(PublishedTables::new(config.clone()));
    {
        let published = published.clone();
        let interval = config.authz_refresh;
        tokio::spawn(async move {
            published.preload().await;
            published.watch(interval).await;
        });
    }
    let sockets = Arc::new(SocketContext {
        hub: hub.clone(),
        verifier: verifier.clone(),
        published: published.clone(),
        limits: SocketLimits::of(&config),
        memory_budget,
        catalog_lookups: Arc::new(limits::SharedRate::per_second(
            config.max_catalog_lookups_per_second,
        )),
        stream: status.clone(),
    });
    let state = Arc::new(AppState {
        hub: hub.clone(),
        sockets,
        status: status.clone(),
        verifier,
        socket_slots: limits::Slots::new(config.max_connections),
        memory_budget,
        max_body_bytes: config.max_frame_bytes,
        cors: config.cors_allowed_origins.clone(),
    });

    let addr = config.listen_addr();
    let listener = listen(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (PORT, BIND_ADDRESS): {e}"))?;
    tracing::info!(%addr, "listening");

    // The cluster's bus: Broadcast and Presence shared with the other
    // servers on this database (`CLUSTER_NAME`).
    let bus_stop = tokio_util::sync::CancellationToken::new();
    let mut bus = tokio::spawn(cluster::bus::run(
        hub.cluster().clone(),
        cluster::bus::BusConnect::from_config(&config),
        bus_stop.clone(),
    ));

    let control = StreamControl {
        published: Some(published),
        ..StreamControl::default()
    };
    let mut replication = tokio::spawn(stream::run(
        config.clone(),
        hub.clone(),
        status,
        control.clone(),
    ));
    // On the signal: stop the stream first (nothing more is dispatched, so
    // nothing more is confirmed), then close every socket with 1001 after its
    // queued frames (an upgraded socket would otherwise hold the graceful
    // shutdown open), then stop accepting.
    let closing_hub = hub.clone();
    let stopping = control.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.stop.cancel();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, stopping.halted.cancelled()).await;
        tracing::info!(sockets = closing_hub.socket_count(), "closing sockets");
        closing_hub.close_all();
    };
    let service = hyper_util::service::TowerToHyperService::new(warp::service(http::routes(
        state,
        extra_routes,
    )));
    let listening = listener::ListenerConfig {
        max_pending_connections: config.max_pending_connections,
        header_read_timeout: config.header_read_timeout,
    };
    listener::serve(listener, service, listening, shutdown).await;
    // Upgraded sockets are not part of the listener's graceful shutdown:
    // wait (a bounded time) until every writer has sent its close frame.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while hub.live_writers() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The bus says goodbye: this server's presences leave everywhere now,
    // not after CLUSTER_NODE_TIMEOUT_MS.
    bus_stop.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, &mut bus)
        .await
        .is_err()
    {
        bus.abort();
    }
    // The stream sends its final confirmed position, then closes; what was
    // confirmed stays confirmed and a durable slot resumes from there.
    if tokio::time::timeout(SHUTDOWN_GRACE, &mut replication)
        .await
        .is_err()
    {
        replication.abort();
    }
    Ok(())
}

/// Fetches the remote JWKS again every [`auth::keys::REFRESH_INTERVAL`], so
/// a key removed from it stops verifying.
async fn refresh_keys(verifier: JwtVerifier) {
    let mut tick = tokio::time::interval(auth::keys::REFRESH_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        let _ = verifier.refresh().await;
    }
}

/// After every catalog change the authorizer saw (grants, policies, roles):
/// subscriptions take their group's new access, and those that lost it are
/// removed and their clients told.
/// Connections the kernel queues for `accept` ([`listen`]).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Listens on `addr` with a backlog of [`LISTEN_BACKLOG`] (the kernel caps
/// it at `net.core.somaxconn`), not the standard library's 128: after a
/// restart every client reconnects at once, and a connection the full
/// queue drops is retried by its client only a second or more later.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn apply_catalog_changes(authz: Arc<Authorizer>, hub: Arc<Hub>) {
    let mut generation = authz.generation();
    while generation.changed().await.is_ok() {
        let revoked = hub.refresh_access();
        hub.notify_revoked(&revoked);
    }
}

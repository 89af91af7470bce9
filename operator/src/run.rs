//! `realtime-operator run`: the controller (watching RealtimeServers, the
//! StatefulSets and Services they own, their pods and the Secrets they
//! reference, in every namespace or in the one of `Settings::watch_namespace`),
//! run only while this process holds the leader Lease, and the `/healthz`,
//! `/readyz`, `/metrics` endpoints; stopping cleanly on a signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::net::TcpListener;

use crate::crd::RealtimeServer;
use crate::lease::{LeaderElector, LeaseSettings};
use crate::metrics::{self, Metrics};
use crate::names;
use crate::reconcile::{error_policy, reconcile, secrets, Context, Settings};

const MANAGED: &str = "app.kubernetes.io/managed-by=realtime-operator";

/// The objects of kind `K` the controller watches: in `ns`, or everywhere.
fn watched<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controller until `shutdown` completes.
pub async fn controller(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = settings.watch_namespace.clone();
    let ns = ns.as_deref();
    let ctx = Arc::new(Context::new(client.clone(), settings, metrics));
    let main = Controller::new(
        watched::<RealtimeServer>(&client, ns),
        watcher::Config::default(),
    );
    let store = main.store();
    main.owns(
        watched::<StatefulSet>(&client, ns),
        watcher::Config::default().labels(MANAGED),
    )
    .owns(
        watched::<Service>(&client, ns),
        watcher::Config::default().labels(MANAGED),
    )
    .watches(
        watched::<Pod>(&client, ns),
        watcher::Config::default().labels(MANAGED),
        |pod| {
            let ns = pod.namespace().unwrap_or_default();
            pod.labels()
                .get(names::INSTANCE_LABEL)
                .map(|n| ObjectRef::<RealtimeServer>::new(n).within(&ns))
        },
    )
    .watches(
        watched::<Secret>(&client, ns),
        watcher::Config::default(),
        move |secret| {
            let ns = secret.namespace();
            let name = secret.name_any();
            store
                .state()
                .into_iter()
                .filter(|o| {
                    o.namespace() == ns && secrets::referenced(&o.spec).contains(&name.as_str())
                })
                .map(|o| ObjectRef::from_obj(&*o))
                .collect::<Vec<_>>()
        },
    )
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|res| async move {
        match res {
            Ok(_) => {}
            // Already logged, with its retry, by `error_policy`; or a
            // resource deleted before its turn came.
            Err(
                e @ (kube::runtime::controller::Error::ReconcilerFailed(..)
                | kube::runtime::controller::Error::ObjectNotFound(..)),
            ) => tracing::debug!(error = %e, "reconcile"),
            // A watch that fails (e.g. forbidden by RBAC) is the operator's
            // problem, not one resource's: say so at the default level.
            Err(e) => tracing::warn!(error = %e, "watching failed"),
        }
    })
    .await;
}

/// How long a stopping operator waits for the reconciles in flight: a
/// reconcile is bounded by the database's connect timeout and the API
/// server's answers, and Kubernetes waits 30 s (the default
/// `terminationGracePeriodSeconds`) before it kills the pod.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Serves `/healthz` (alive), `/readyz` (connected to the API server) and
/// `/metrics` on `listener`, until the process ends.
pub async fn serve_health(listener: TcpListener, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "health endpoint: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, ready) = (metrics.clone(), ready.clone());
        let service = service_fn(move |req: Request<Incoming>| {
            let answer = health_answer(req.uri().path(), &metrics, &ready);
            async move { Ok::<_, std::convert::Infallible>(answer) }
        });
        tokio::spawn(async move {
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "health endpoint: connection ended");
            }
        });
    }
}

/// The answer to a request for `path`.
fn health_answer(path: &str, metrics: &Metrics, ready: &AtomicBool) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/healthz" => (StatusCode::OK, "text/plain", "ok".to_string()),
        "/readyz" if ready.load(Ordering::Relaxed) => {
            (StatusCode::OK, "text/plain", "ready".to_string())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready".to_string(),
        ),
        "/metrics" => (StatusCode::OK, metrics::CONTENT_TYPE, metrics.render()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found".to_string()),
    };
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

/// The whole `run` command: health endpoints, leader election, controller,
/// until `shutdown` completes (SIGTERM or SIGINT) or leadership is lost.
///
/// On `shutdown` it stops taking new work, lets the reconciles in flight
/// finish (at most [`SHUTDOWN_GRACE`]), releases the Lease so that a standby
/// leads at once, and returns `Ok`. When leadership is lost it returns an
/// error: the process should exit and restart as a candidate.
pub async fn run(
    client: Client,
    settings: Settings,
    lease: LeaseSettings,
    health: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shutdown = shutdown.boxed().shared();
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let listener = TcpListener::bind(health)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on HEALTH_ADDRESS={health}: {e}"))?;
    tokio::spawn(serve_health(listener, metrics.clone(), ready.clone()));
    client
        .apiserver_version()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the Kubernetes API server: {e}"))?;
    ready.store(true, Ordering::Relaxed);
    let elector = LeaderElector::new(client.clone(), lease);
    tracing::info!(identity = %elector.identity(), "waiting to become the leader");
    let leadership = tokio::select! {
        leadership = elector.acquire() => leadership?,
        _ = shutdown.clone() => {
            tracing::info!("stopping: never led, nothing to release");
            return Ok(());
        }
    };
    tracing::info!("leading: starting the controller");
    let stop = {
        let (lost, shutdown) = (leadership.lost(), shutdown.clone());
        async move {
            tokio::select! {
                _ = lost => {}
                _ = shutdown => tracing::info!("stopping: finishing the reconciles in flight"),
            }
        }
    }
    .boxed()
    .shared();
    let running = controller(client, settings, metrics, stop.clone());
    let grace = async move {
        stop.await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        _ = running => {}
        _ = grace => tracing::warn!(
            grace = ?SHUTDOWN_GRACE,
            "stopping without the reconciles still running: they did not finish in time"
        ),
    }
    if leadership.is_lost() {
        anyhow::bail!("lost the leader Lease: exiting so that a new leader takes over");
    }
    match leadership.release().await {
        Ok(true) => tracing::info!("released the leader Lease"),
        Ok(false) => tracing::info!("the leader Lease was no longer held"),
        // It expires by itself: a standby leads after the lease duration.
        Err(e) => tracing::warn!(error = %e, "releasing the leader Lease failed"),
    }
    Ok(())
}

//! `realtime-operator run`: the controller (watching RealtimeServers, the
//! StatefulSets and Services they own, their pods and the Secrets they
//! reference, in every namespace or in the one of `Settings::watch_namespace`),
//! run only while this process holds the leader Lease, and the `/healthz`,
//! `/readyz`, `/metrics` endpoints.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use warp::Filter;

use crate::crd::RealtimeServer;
use crate::lease::{LeaderElector, LeaseSettings};
use crate::metrics::Metrics;
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

/// Serves `/healthz` (alive), `/readyz` (connected to the API server) and `/metrics`.
pub async fn serve_health(addr: SocketAddr, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) {
    let healthz = warp::path!("healthz").map(|| "ok".to_string());
    let readyz = warp::path!("readyz").map(move || {
        if ready.load(Ordering::Relaxed) {
            warp::reply::with_status("ready".to_string(), warp::http::StatusCode::OK)
        } else {
            warp::reply::with_status(
                "not ready".to_string(),
                warp::http::StatusCode::SERVICE_UNAVAILABLE,
            )
        }
    });
    let m = warp::path!("metrics").map(move || metrics.render());
    warp::serve(warp::get().and(healthz.or(readyz).or(m)))
        .run(addr)
        .await;
}

/// The whole `run` command: health endpoints, leader election, controller.
/// Returns when leadership is lost (the process should then exit and restart).
pub async fn run(
    client: Client,
    settings: Settings,
    lease: LeaseSettings,
    health: SocketAddr,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    tokio::spawn(serve_health(health, metrics.clone(), ready.clone()));
    client
        .apiserver_version()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the Kubernetes API server: {e}"))?;
    ready.store(true, Ordering::Relaxed);
    let elector = LeaderElector::new(client.clone(), lease);
    tracing::info!(identity = %elector.identity(), "waiting to become the leader");
    let lost = elector.acquire().await?;
    tracing::info!("leading: starting the controller");
    controller(client, settings, metrics, async move {
        lost.await;
    })
    .await;
    anyhow::bail!("lost the leader Lease: exiting so that a new leader takes over")
}

//! `realtime-operator run` runs the controller; `realtime-operator crd` prints the
//! CustomResourceDefinition YAML (what `crds/` holds).
//!
//! `run` reads: `REALTIME_SERVER_IMAGE` (the server image when a spec names
//! none; default `ghcr.io/realtime-dev/realtime-server:<this version>`),
//! `POD_NAMESPACE` (where the leader Lease lives, default `default`), `POD_NAME`
//! (this candidate's identity, default the host name), `HEALTH_ADDRESS` (default
//! `0.0.0.0:8080`), `CLEANUP_TIMEOUT_SECONDS` (default 300), `WATCH_NAMESPACE`
//! (watch only this namespace; unset or empty: every namespace), `RUST_LOG`.
//!
//! `run` stops on SIGTERM or SIGINT: no new reconciles, those in flight
//! finish, the leader Lease is released, exit status 0. It exits with 1 when
//! it loses the Lease (to restart as a candidate) or cannot start.

use std::net::SocketAddr;
use std::time::Duration;

use realtime_operator::lease::LeaseSettings;
use realtime_operator::reconcile::Settings;

fn usage() -> ! {
    eprintln!("usage: realtime-operator run | crd");
    std::process::exit(2);
}

fn main() -> anyhow::Result<()> {
    // Both ring (kube) and aws-lc-rs (the contract's TLS connector) are
    // linked, so rustls needs to be told which provider the process uses.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match std::env::args().nth(1).as_deref() {
        Some("crd") => {
            print!("{}", realtime_operator::crd::crd_yaml());
            Ok(())
        }
        Some("run") => {
            let runtime = tokio::runtime::Runtime::new()?;
            let result = runtime.block_on(run());
            // Whatever is left (a database connection, a DNS lookup) must not
            // hold the exit up.
            runtime.shutdown_timeout(Duration::from_secs(1));
            result
        }
        _ => usage(),
    }
}

/// Completes on SIGTERM (what Kubernetes sends to stop a pod) or SIGINT; the
/// handlers are in place from this call on.
fn signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install a SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let health: SocketAddr = var("HEALTH_ADDRESS")
        .unwrap_or_else(|| "0.0.0.0:8080".into())
        .parse()
        .map_err(|e| anyhow::anyhow!("HEALTH_ADDRESS: not an address:port: {e}"))?;
    let cleanup_timeout = match var("CLEANUP_TIMEOUT_SECONDS") {
        Some(v) => Duration::from_secs(v.parse().map_err(|_| {
            anyhow::anyhow!("CLEANUP_TIMEOUT_SECONDS={v:?}: not a number of seconds")
        })?),
        None => realtime_operator::reconcile::DEFAULT_CLEANUP_TIMEOUT,
    };
    let settings = Settings {
        default_image: Some(
            var("REALTIME_SERVER_IMAGE")
                .unwrap_or_else(|| realtime_operator::reconcile::DEFAULT_SERVER_IMAGE.into()),
        ),
        cleanup_timeout,
        watch_namespace: var("WATCH_NAMESPACE"),
    };
    match &settings.watch_namespace {
        Some(ns) => tracing::info!(namespace = %ns, "watching one namespace"),
        None => tracing::info!("watching every namespace"),
    }
    let identity = var("POD_NAME")
        .or_else(|| var("HOSTNAME"))
        .unwrap_or_else(|| format!("realtime-operator-{}", std::process::id()));
    let lease = LeaseSettings::new(
        &var("POD_NAMESPACE").unwrap_or_else(|| "default".into()),
        &identity,
    );
    // Installed before anything can take long, so no signal goes unheard.
    let stop = signal();
    let client = kube::Client::try_default().await?;
    realtime_operator::run::run(client, settings, lease, health, stop).await
}

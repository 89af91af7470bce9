//! `realtime-operator run` runs the controller; `realtime-operator crd` prints the
//! CustomResourceDefinition YAML (what `crds/` holds).
//!
//! `run` reads: `REALTIME_SERVER_IMAGE` (the server image when a spec names
//! none; default `ghcr.io/realtime-dev/realtime-server:<this version>`),
//! `POD_NAMESPACE` (where the leader Lease lives, default `default`), `POD_NAME`
//! (this candidate's identity, default the host name), `HEALTH_ADDRESS` (default
//! `0.0.0.0:8080`), `CLEANUP_TIMEOUT_SECONDS` (default 300), `WATCH_NAMESPACE`
//! (watch only this namespace; unset or empty: every namespace), `RUST_LOG`
//! (logs go to stderr, coloured only on a terminal).
//!
//! `run` stops on SIGTERM or SIGINT: no new reconciles, those in flight
//! finish, the leader Lease is released, exit status 0. It exits with 1 when
//! it loses the Lease (to restart as a candidate) or cannot start.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use realtime_operator::lease::LeaseSettings;
use realtime_operator::reconcile::{Settings, DEFAULT_CLEANUP_TIMEOUT, DEFAULT_SERVER_IMAGE};

/// Reconciles RealtimeServer resources: the publication, replica identity and
/// replication slots in the target database, the server pods, status, and
/// cleanup of what it created.
#[derive(Parser)]
#[command(name = "realtime-operator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (one leader among the candidates, by a Lease).
    Run(RunArgs),
    /// Print the CustomResourceDefinition YAML (what `crds/` holds).
    Crd,
}

/// Each option also reads the environment variable it names (the chart sets
/// those); an empty variable counts as unset.
#[derive(Args)]
struct RunArgs {
    /// The server image for specs that name none.
    #[arg(long, env = "REALTIME_SERVER_IMAGE", default_value = DEFAULT_SERVER_IMAGE)]
    server_image: String,
    /// The namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This candidate's identity for the Lease [default: the host name].
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Where /healthz, /readyz and /metrics are served.
    #[arg(long, env = "HEALTH_ADDRESS", default_value = "0.0.0.0:8080")]
    health_address: SocketAddr,
    /// How long a deletion waits for an unreachable database before it
    /// removes the finalizer anyway, in seconds.
    #[arg(long, env = "CLEANUP_TIMEOUT_SECONDS", default_value_t = DEFAULT_CLEANUP_TIMEOUT.as_secs())]
    cleanup_timeout_seconds: u64,
    /// Watch only this namespace [default: every namespace].
    #[arg(long, env = "WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Both ring (kube) and aws-lc-rs (the contract's TLS connector) are
    // linked, so rustls needs to be told which provider the process uses.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match cli.command {
        Command::Crd => {
            print!("{}", realtime_operator::crd::crd_yaml());
            Ok(())
        }
        Command::Run(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            let result = runtime.block_on(run(args));
            // Whatever is left (a database connection, a DNS lookup) must not
            // hold the exit up.
            runtime.shutdown_timeout(Duration::from_secs(1));
            result
        }
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

async fn run(args: RunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // Logs go to stderr (stdout is for what a command prints, like
        // `crd`), with colours only when stderr is a terminal: pods' logs
        // and files get plain text.
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let health = args.health_address;
    let settings = Settings {
        default_image: Some(args.server_image),
        cleanup_timeout: Duration::from_secs(args.cleanup_timeout_seconds),
        watch_namespace: args.watch_namespace.filter(|ns| !ns.trim().is_empty()),
    };
    match &settings.watch_namespace {
        Some(ns) => tracing::info!(namespace = %ns, "watching one namespace"),
        None => tracing::info!("watching every namespace"),
    }
    let identity = args
        .identity
        .or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.trim().is_empty())
        })
        .unwrap_or_else(|| format!("realtime-operator-{}", std::process::id()));
    let lease = LeaseSettings::new(&args.lease_namespace, &identity);
    // Installed before anything can take long, so no signal goes unheard.
    let stop = signal();
    let client = kube::Client::try_default().await?;
    realtime_operator::run::run(client, settings, lease, health, stop).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}

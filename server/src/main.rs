//! The `realtime-server` binary: configuration from the environment, logs
//! with `tracing` (level from `RUST_LOG`, default `info`), serve until
//! SIGTERM or SIGINT. `realtime-server dev` runs the quick start, in builds
//! with the default `dev` feature.

use realtime_server::config::Config;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // Colours only on a terminal: log files and pods get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();

    if std::env::args().nth(1).as_deref() == Some("dev") {
        std::process::exit(dev_command().await);
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("realtime-server: invalid configuration:\n{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = realtime_server::serve(config, shutdown_signal()).await {
        eprintln!("realtime-server: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(feature = "dev")]
async fn dev_command() -> i32 {
    realtime_server::dev::command::main().await
}

/// A production build: say so, rather than reading `dev` as a misconfigured
/// start.
#[cfg(not(feature = "dev"))]
async fn dev_command() -> i32 {
    eprintln!(
        "realtime-server: this build has no `dev` command (built without the `dev` feature, \
         as the container image is). For the quick start, build with the default features: \
         `cargo run -p realtime-server -- dev`."
    );
    2
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

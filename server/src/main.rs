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

    match std::env::args().nth(1).as_deref() {
        Some("dev") => std::process::exit(dev_command().await),
        Some("setup-authorization") => std::process::exit(setup_authorization().await),
        _ => {}
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

/// `realtime-server setup-authorization [--print]`: applies (or prints) the
/// database objects authorization needs, as the server's database user
/// (`DB_*`): the roles tokens name granted to it, Supabase's `auth`
/// helpers when missing, `realtime.messages` and `realtime.topic()`.
async fn setup_authorization() -> i32 {
    // Only the database settings matter here: keys are not needed.
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    vars.push(("SECURE_CHANNELS".into(), "false".into()));
    let config = match Config::from_vars(vars) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("realtime-server setup-authorization: invalid configuration:\n{e}");
            return 2;
        }
    };
    if std::env::args().nth(2).as_deref() == Some("--print") {
        println!(
            "{}",
            realtime_server::authz::setup::setup_sql(&config.db.user)
        );
        return 0;
    }
    let db = realtime_server::authz::db::Db::new(config.db.clone(), 1);
    let conn = match db.lease().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("realtime-server setup-authorization: {e}");
            return 1;
        }
    };
    match realtime_server::authz::setup::apply(conn.client(), &config.db.user).await {
        Ok(()) => {
            println!(
                "realtime-server setup-authorization: done (roles anon, authenticated and \
                 service_role granted to {:?}; auth helpers and realtime.messages present)",
                config.db.user
            );
            0
        }
        Err(e) => {
            eprintln!("realtime-server setup-authorization: {e}");
            1
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

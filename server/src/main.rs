//! The `realtime-server` binary: configuration from the environment, logs
//! with `tracing` (level from `RUST_LOG`, default `info`), serve until
//! SIGTERM or SIGINT. `realtime-server dev` runs the quick start, in builds
//! with the default `dev` feature; `realtime-server check` reports what the
//! database still lacks.

use clap::{Parser, Subcommand};
use realtime_server::config::{Config, VARIABLES};
use tracing_subscriber::EnvFilter;

/// Streams PostgreSQL row changes, Broadcast and Presence to WebSocket
/// clients over the Phoenix Channels protocol (realtime-js, phoenix).
#[derive(Parser)]
#[command(name = "realtime-server", version, after_help = configuration_help())]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the configuration from the environment (the default).
    Serve,
    /// The quick start: a throwaway PostgreSQL, the server, a live page.
    ///
    /// Starts a throwaway local PostgreSQL with a demo table, the server on
    /// it, and a page at http://localhost:4000/ that shows changes live. Needs PostgreSQL's programs (initdb, postgres) installed. Not in
    /// production builds (built without the default `dev` feature).
    Dev,
    /// Reports every prerequisite of `serve`, with the SQL that fixes it.
    ///
    /// Connects with the configuration from the environment (as `serve`
    /// does) and prints one line per prerequisite, `ok` or `missing` with
    /// the SQL or setting that fixes it: the connection and the replication
    /// connection, wal_level, the REPLICATION attribute, the publications,
    /// the slot, and with SECURE_CHANNELS the roles granted to the server's
    /// user, auth.uid() and realtime.messages. Changes nothing. Exit status
    /// 0 when all is ready, 1 when something is missing, 2 on a
    /// configuration error.
    Check,
    /// Creates what authorization needs in the database (`DB_*`).
    ///
    /// As the server's database user: the roles tokens name (anon,
    /// authenticated, service_role) granted to it, Supabase's `auth` helpers
    /// when missing, `realtime.messages` (private channels' policies) and
    /// `realtime.topic()`. Idempotent.
    SetupAuthorization {
        /// Print the SQL instead of applying it.
        #[arg(long)]
        print: bool,
    },
}

/// Every variable the server reads, for `--help`.
fn configuration_help() -> String {
    let mut names = String::new();
    let mut line = 0;
    for (i, name) in VARIABLES.iter().chain(&["RUST_LOG"]).enumerate() {
        let sep = if i == 0 { "  " } else { ", " };
        if line + sep.len() + name.len() > 78 {
            names.push_str(",\n  ");
            line = 2;
        } else {
            names.push_str(sep);
            line += sep.len();
        }
        names.push_str(name);
        line += name.len();
    }
    format!(
        "Configuration is read from the environment; the README's Configuration\n\
         table gives each variable's default and meaning. A bad value stops the\n\
         server with exit status 2 and a message naming the variable.\n\n\
         Variables:\n{names}"
    )
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    // `check` prints a report on stdout and sets up its own logs.
    if !matches!(cli.command, Some(Command::Check)) {
        tracing_subscriber::fmt()
            .with_env_filter(
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
            )
            // Colours only on a terminal: log files and pods get plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init();
    }

    match cli.command {
        Some(Command::Dev) => std::process::exit(dev_command().await),
        Some(Command::SetupAuthorization { print }) => {
            std::process::exit(setup_authorization(print).await)
        }
        Some(Command::Serve) | None => {}
        Some(Command::Check) => std::process::exit(check().await),
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

/// `realtime-server check`: the report on stdout; logs (on stderr) only
/// when `RUST_LOG` asks for them, so the report stays readable.
async fn check() -> i32 {
    if let Ok(filter) = EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("realtime-server check: invalid configuration:\n{e}");
            return 2;
        }
    };
    let report = realtime_server::check::run(&config).await;
    print!("{report}");
    let code = report.exit_code();
    if code == 0 {
        println!("ready: every prerequisite is met");
    } else {
        println!("not ready: run the fixes above, then `realtime-server check` again");
    }
    code
}

/// `realtime-server setup-authorization [--print]`: applies (or prints) the
/// database objects authorization needs, as the server's database user
/// (`DB_*`): the roles tokens name granted to it, Supabase's `auth`
/// helpers when missing, `realtime.messages` and `realtime.topic()`.
async fn setup_authorization(print: bool) -> i32 {
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
    if print {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_names_every_variable() {
        let help = Cli::command().render_long_help().to_string();
        for name in VARIABLES {
            assert!(help.contains(name), "--help does not name {name}:\n{help}");
        }
    }
}

//! Command-line options (clap): the scenario, `--smoke`, and the sizes.
//! Every size has a full value and a tiny `--smoke` value, chosen by the
//! scenario that reads it (several scenarios share a name with their own
//! defaults: `realtime-bench --help` lists them per scenario).

use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "realtime-bench",
    version,
    about = "Measures realtime-server against the physical limits on this machine.",
    long_about = "Measures realtime-server against the physical limits on this machine: \
                  each scenario starts its own throwaway PostgreSQL and the server, drives \
                  load over loopback, and prints every figure beside a reference measured \
                  in the same run. BENCHMARKS.md says what each measures.",
    after_help = "Options a scenario does not read are ignored. The server binary: \
                  REALTIME_SERVER_BIN, else realtime-server beside this executable (built \
                  first when run through cargo)."
)]
pub struct Cli {
    /// The scenario to run (its options and their defaults in brackets).
    #[arg(value_enum)]
    pub scenario: Scenario,
    #[command(flatten)]
    pub opts: Opts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// rows/s decoded and delivered vs pg_recvlogical [--rows 1000000 --txns 100000]
    Ingest,
    /// commit-to-client percentiles vs the floor fed from the same stream, and pg_recvlogical [--sockets 500 --rates 64,640 --seconds 10]
    Latency,
    /// msg/s and CPU per million msgs vs a bare broadcaster, once per size [--sockets 10000 (or 1000,5000,...) --changes 500 --client v1|v2]
    Fanout,
    /// RSS per idle joined socket, time to connect [--sockets 50000 --hold 30 --heartbeat 25]
    Connections,
    /// 10,000 sockets with id=eq.N bindings vs 10 [--sockets 10000 --few 10 --rate 1000 --seconds 10]
    Filters,
    /// database CPU per 1,000 transactions at a fixed rate: no consumer, server, pg_recvlogical, trigger+NOTIFY [--rate 500 --seconds 20 --clients 4]
    Dbcost,
    /// bus candidates (NOTIFY vs logical messages); broadcast across two servers vs one; presence convergence [--part all|bus|servers --bus-rate 500 --bulk-rows 500000 --receivers 100 --rates 1000,5000 --seconds 5 --members 1000]
    Cluster,
    /// owner-policy RLS for many users vs no authorization, and vs one check per subscriber [--sockets 10000 --users 1000 --rate 1000 --seconds 10 --peer-changes 20]
    Rls,
    /// 10,000 realtime-js 2.x sockets (one postgres_changes binding each) rejoining after kill -9 of the server: rejoin time vs 2 s and vs a broadcast-only join, changes lost [--sockets 10000 --rate 200]
    Storm,
    /// every scenario in turn
    All,
    /// the fan-out floor process the fanout scenario starts [--sockets --frames]
    #[value(hide = true)]
    Floor,
}

/// The client a fan-out socket is (`--client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ClientKind {
    /// realtime-js 1.x: a legacy topic.
    #[default]
    V1,
    /// realtime-js 2.x: a channel with one postgres_changes binding.
    V2,
}

/// The sizes: each unset one takes the reading scenario's default (its
/// `--smoke` value with `--smoke`).
#[derive(Debug, Clone, Default, Args)]
pub struct Opts {
    /// Tiny sizes, no targets: proves the scenario still runs (the test
    /// suite runs each scenario so).
    #[arg(long)]
    pub smoke: bool,
    /// Rows of the one big transaction (ingest).
    #[arg(long, value_name = "N", value_parser = whole_number)]
    pub rows: Option<usize>,
    /// One-row transactions in the second run (ingest).
    #[arg(long, value_name = "N", value_parser = whole_number)]
    pub txns: Option<usize>,
    /// Client sockets (latency, fanout, connections, filters, rls, storm); fanout
    /// takes a comma-separated list and runs once per size.
    #[arg(
        long = "sockets",
        id = "sockets",
        value_name = "N[,N]",
        value_parser = whole_number,
        value_delimiter = ','
    )]
    pub socket_sizes: Option<Vec<usize>>,
    /// The one `--sockets` size of the scenarios that take one (set by
    /// [`Cli::try_parse_checked_from`]).
    #[arg(skip)]
    pub sockets: Option<usize>,
    /// Commit rates per second, comma-separated (latency, cluster).
    #[arg(long, value_name = "N,N", value_parser = whole_number, value_delimiter = ',')]
    pub rates: Option<Vec<usize>>,
    /// Seconds per measurement (latency, filters, dbcost, cluster, rls).
    #[arg(long, value_name = "S", value_parser = whole_number)]
    pub seconds: Option<usize>,
    /// Changes to fan out (fanout).
    #[arg(long, value_name = "N", value_parser = whole_number)]
    pub changes: Option<usize>,
    /// Seconds to hold the sockets idle (connections).
    #[arg(long, value_name = "S", value_parser = whole_number)]
    pub hold: Option<usize>,
    /// Heartbeat interval in seconds while holding (connections).
    #[arg(long, value_name = "S", value_parser = whole_number)]
    pub heartbeat: Option<usize>,
    /// Sockets in the small comparison run (filters).
    #[arg(long, value_name = "N", value_parser = whole_number)]
    pub few: Option<usize>,
    /// One-row transactions per second (filters, rls, dbcost, storm).
    #[arg(long, value_name = "N", value_parser = whole_number)]
    pub rate: Option<usize>,
    /// pgbench clients (dbcost).
    #[arg(long, value_name = "N", value_parser = whole_number)]
    pub clients: Option<usize>,
    /// Which client the fanout sockets are: v1 (realtime-js 1.x, the topic
    /// `realtime:public:fan`) or v2 (realtime-js 2.x, one postgres_changes
    /// binding on the table).
    #[arg(long, value_enum, value_name = "V")]
    pub client: Option<ClientKind>,
    /// Which part of the cluster scenario: all, bus or servers.
    #[arg(long, value_name = "PART")]
    pub part: Option<String>,
    /// Messages per second offered to each bus candidate (cluster).
    #[arg(long, value_name = "N", value_parser = whole_number)]
    pub bus_rate: Option<usize>,
    /// Rows of the bulk transaction beside the bus (cluster).
    #[arg(long, value_name = "N", value_parser = whole_number)]
    pub bulk_rows: Option<usize>,
    /// Receiving sockets per server (cluster).
    #[arg(long, value_name = "N", value_parser = whole_number)]
    pub receivers: Option<usize>,
    /// Presence members to converge (cluster).
    #[arg(long, value_name = "N", value_parser = whole_number)]
    pub members: Option<usize>,
    /// Distinct users owning the rows (rls; at most --sockets).
    #[arg(long, value_name = "N", value_parser = whole_number)]
    pub users: Option<usize>,
    /// Rows each subscriber is checked against in the one-check-per-subscriber run (rls).
    #[arg(long, value_name = "N", value_parser = whole_number)]
    pub peer_changes: Option<usize>,
    /// File of pre-encoded frames, one per line (floor).
    #[arg(long, value_name = "PATH", hide = true)]
    pub frames: Option<String>,
    /// Write the scenario's charts as SVG files into DIR (latency, fanout, storm).
    #[arg(long, value_name = "DIR")]
    pub charts: Option<PathBuf>,
    /// Broadcast a stamped template frame per change of the
    /// `pg_recvlogical` output on stdin (floor).
    #[arg(long, hide = true)]
    pub follow: bool,
}

impl Cli {
    /// The command line, or clap's error message and exit.
    pub fn parse_checked() -> Cli {
        Cli::try_parse_checked_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Parses, then checks what clap cannot: only fanout takes a list of
    /// socket counts.
    pub fn try_parse_checked_from<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut cli = Cli::try_parse_from(args)?;
        match cli.opts.socket_sizes.as_deref() {
            None => {}
            Some(&[one]) => cli.opts.sockets = Some(one),
            Some(_) if cli.scenario == Scenario::Fanout => {}
            Some(list) => {
                return Err(Cli::command().error(
                    ErrorKind::ValueValidation,
                    format!(
                        "--sockets {list:?}: only fanout runs once per size; {} takes one number",
                        cli.scenario
                            .to_possible_value()
                            .expect("a listed scenario")
                            .get_name()
                    ),
                ))
            }
        }
        Ok(cli)
    }
}

impl Opts {
    /// `given`, or `full` (`smoke` with `--smoke`).
    pub fn size(&self, given: Option<usize>, full: usize, smoke: usize) -> usize {
        given.unwrap_or(if self.smoke { smoke } else { full })
    }

    /// `given`, or `full` (`smoke` with `--smoke`).
    pub fn list(&self, given: &Option<Vec<usize>>, full: &[usize], smoke: &[usize]) -> Vec<usize> {
        given
            .clone()
            .unwrap_or_else(|| if self.smoke { smoke } else { full }.to_vec())
    }
}

/// A whole number; `_` may group digits (`1_000_000`).
fn whole_number(v: &str) -> Result<usize, String> {
    v.replace('_', "")
        .parse()
        .map_err(|_| format!("{v:?} is not a whole number (e.g. 1000 or 1_000)"))
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
    fn sizes_take_the_given_value_else_the_full_or_smoke_default() {
        let cli = Cli::try_parse_from(["realtime-bench", "latency", "--rates=1_000,5000"]).unwrap();
        assert_eq!(cli.scenario, Scenario::Latency);
        assert_eq!(cli.opts.list(&cli.opts.rates, &[1], &[2]), vec![1000, 5000]);
        assert_eq!(cli.opts.size(cli.opts.sockets, 1000, 20), 1000);
        let smoke =
            Cli::try_parse_from(["realtime-bench", "rls", "--smoke", "--users", "7"]).unwrap();
        assert_eq!(smoke.opts.size(smoke.opts.sockets, 1000, 20), 20);
        assert_eq!(smoke.opts.size(smoke.opts.users, 1000, 4), 7);
    }

    #[test]
    fn only_fanout_takes_a_list_of_socket_counts() {
        let cli =
            Cli::try_parse_checked_from(["realtime-bench", "fanout", "--sockets", "1000,5_000"])
                .unwrap();
        assert_eq!(
            cli.opts.list(&cli.opts.socket_sizes, &[1], &[2]),
            vec![1000, 5000]
        );
        assert_eq!(cli.opts.sockets, None);
        let cli =
            Cli::try_parse_checked_from(["realtime-bench", "latency", "--sockets", "500"]).unwrap();
        assert_eq!(cli.opts.size(cli.opts.sockets, 1, 2), 500);
        assert_eq!(cli.opts.socket_sizes, Some(vec![500]));
        let err = Cli::try_parse_checked_from(["realtime-bench", "latency", "--sockets", "1,2"])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("only fanout runs once per size; latency takes one"),
            "{err}"
        );
    }

    #[test]
    fn charts_are_written_only_when_asked() {
        let cli = Cli::try_parse_checked_from(["realtime-bench", "fanout"]).unwrap();
        assert_eq!(cli.opts.charts, None);
        let cli =
            Cli::try_parse_checked_from(["realtime-bench", "fanout", "--charts", "docs/bench"])
                .unwrap();
        assert_eq!(cli.opts.charts, Some(PathBuf::from("docs/bench")));
    }

    #[test]
    fn a_bad_number_or_scenario_is_refused_with_the_reason() {
        let err = Cli::try_parse_from(["realtime-bench", "ingest", "--rows", "many"]).unwrap_err();
        assert!(
            err.to_string().contains("\"many\" is not a whole number"),
            "{err}"
        );
        let err = Cli::try_parse_from(["realtime-bench", "ingets"]).unwrap_err();
        assert!(
            err.to_string().contains("ingest"),
            "suggests the scenario: {err}"
        );
    }

    #[test]
    fn help_lists_every_scenario_and_option() {
        let help = Cli::command().render_long_help().to_string();
        for name in [
            "ingest",
            "latency",
            "fanout",
            "connections",
            "filters",
            "dbcost",
            "cluster",
            "rls",
            "storm",
            "all",
            "--smoke",
            "--rows",
            "--bus-rate",
            "--peer-changes",
            "--charts",
        ] {
            assert!(help.contains(name), "--help does not name {name}:\n{help}");
        }
        // Other scenarios' descriptions name the floor; the process is hidden.
        assert!(
            !help.contains("- floor:"),
            "the floor process is internal:\n{help}"
        );
    }
}

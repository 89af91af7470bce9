//! realtime-bench: measures realtime-server against the physical limits on
//! this machine. Each scenario starts a throwaway PostgreSQL and the server
//! (release build under `cargo run --release`), drives load over loopback,
//! and prints every figure beside a reference measured in the same run.
//!
//!     cargo run --release -p realtime-bench -- <scenario> [--smoke] [--name value ...]
//!
//! Scenarios: ingest, latency, fanout, connections, filters, dbcost, cluster, rls, storm, all
//! (`--help` lists each one's options and defaults). See BENCHMARKS.md for what each measures and the latest figures.

mod chart;
mod client;
mod floor;
mod load;
mod opts;
mod report;
mod scenario;
mod stack;
mod sys;

use clap::ValueEnum;
use opts::{Cli, Scenario};

fn main() -> anyhow::Result<()> {
    let Cli { scenario, opts } = Cli::parse_checked();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if scenario == Scenario::Floor {
        return runtime.block_on(floor::run(&opts));
    }
    let nofile = sys::raise_nofile_limit();
    println!(
        "realtime-bench {}{}",
        scenario
            .to_possible_value()
            .expect("a listed scenario")
            .get_name(),
        if opts.smoke { " (smoke sizes)" } else { "" }
    );
    println!("machine: {}", sys::machine());
    println!("open-file limit: {nofile}");
    // Build or locate the server once, before any timing starts.
    let server = stack::server_bin()?;
    println!("server: {}", server.display());
    std::env::set_var("REALTIME_SERVER_BIN", server);
    runtime.block_on(async {
        match scenario {
            Scenario::Ingest => scenario::ingest::run(&opts).await,
            Scenario::Latency => scenario::latency::run(&opts).await,
            Scenario::Fanout => scenario::fanout::run(&opts).await,
            Scenario::Connections => scenario::connections::run(&opts).await,
            Scenario::Filters => scenario::filters::run(&opts).await,
            Scenario::Dbcost => scenario::dbcost::run(&opts).await,
            Scenario::Cluster => scenario::cluster::run(&opts).await,
            Scenario::Rls => scenario::rls::run(&opts).await,
            Scenario::Storm => scenario::storm::run(&opts).await,
            Scenario::All => {
                scenario::ingest::run(&opts).await?;
                scenario::latency::run(&opts).await?;
                scenario::fanout::run(&opts).await?;
                scenario::connections::run(&opts).await?;
                scenario::filters::run(&opts).await?;
                scenario::dbcost::run(&opts).await?;
                scenario::cluster::run(&opts).await?;
                scenario::rls::run(&opts).await?;
                scenario::storm::run(&opts).await
            }
            // Started by the fanout scenario, and answered above.
            Scenario::Floor => floor::run(&opts).await,
        }
    })?;
    println!("\n{}", sys::load());
    Ok(())
}

//! realtime-bench: measures realtime-server against the physical limits on
//! this machine. Each scenario starts a throwaway PostgreSQL and the server
//! (release build under `cargo run --release`), drives load over loopback,
//! and prints every figure beside a reference measured in the same run.
//!
//!     cargo run --release -p realtime-bench -- <scenario> [--smoke] [--name value ...]
//!
//! Scenarios: ingest, latency, fanout, connections, filters, dbcost, cluster, rls, all.
//! See BENCHMARKS.md for what each measures and the latest figures.

mod client;
mod floor;
mod load;
mod opts;
mod report;
mod scenario;
mod stack;
mod sys;

use opts::Opts;

const USAGE: &str = "usage: realtime-bench <scenario> [--smoke] [--name value ...]

scenarios (each starts its own PostgreSQL and server):
  ingest       rows/s decoded and delivered vs pg_recvlogical      --rows 1000000 --txns 100000
  latency      commit-to-client percentiles vs pg_recvlogical      --sockets 1000 --rates 1000,5000 --seconds 10
  fanout       msg/s and CPU per million msgs vs a bare broadcaster --sockets 10000 --changes 500
  connections  RSS per idle joined socket, time to connect         --sockets 50000 --hold 30 --heartbeat 25
  filters      10,000 sockets with id=eq.N bindings vs 10           --sockets 10000 --few 10 --rate 1000 --seconds 10
  dbcost       pgbench TPS: no consumer, server, trigger+NOTIFY     --seconds 15 --clients 4
  cluster      bus candidates (NOTIFY vs logical messages); broadcast across two servers vs one;
               presence convergence              --bus-rate 500 --bulk-rows 500000 --receivers 100
                                                 --rates 1000,5000 --seconds 5 --members 1000
  rls          owner-policy RLS for many users vs no authorization, and vs one check per subscriber
               --sockets 10000 --users 1000 --rate 1000 --seconds 10 --peer-changes 20
  all          every scenario in turn

--smoke runs tiny sizes (the test suite runs each scenario so).
The server binary: REALTIME_SERVER_BIN, else realtime-server beside this
executable (built first when run through cargo).";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(scenario) = args.first().cloned() else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let opts = Opts::parse(&args[1..])?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if scenario == "floor" {
        return runtime.block_on(floor::run(&opts));
    }
    let nofile = sys::raise_nofile_limit();
    println!(
        "realtime-bench {scenario}{}",
        if opts.smoke { " (smoke sizes)" } else { "" }
    );
    println!("machine: {}", sys::machine());
    println!("open-file limit: {nofile}");
    // Build or locate the server once, before any timing starts.
    let server = stack::server_bin()?;
    println!("server: {}", server.display());
    std::env::set_var("REALTIME_SERVER_BIN", server);
    runtime.block_on(async {
        match scenario.as_str() {
            "ingest" => scenario::ingest::run(&opts).await,
            "latency" => scenario::latency::run(&opts).await,
            "fanout" => scenario::fanout::run(&opts).await,
            "connections" => scenario::connections::run(&opts).await,
            "filters" => scenario::filters::run(&opts).await,
            "dbcost" => scenario::dbcost::run(&opts).await,
            "cluster" => scenario::cluster::run(&opts).await,
            "rls" => scenario::rls::run(&opts).await,
            "all" => {
                scenario::ingest::run(&opts).await?;
                scenario::latency::run(&opts).await?;
                scenario::fanout::run(&opts).await?;
                scenario::connections::run(&opts).await?;
                scenario::filters::run(&opts).await?;
                scenario::dbcost::run(&opts).await?;
                scenario::cluster::run(&opts).await?;
                scenario::rls::run(&opts).await
            }
            other => {
                eprintln!("unknown scenario {other:?}\n\n{USAGE}");
                std::process::exit(2);
            }
        }
    })?;
    println!("\n{}", sys::load());
    Ok(())
}

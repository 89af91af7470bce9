//! One module per scenario of the benchmark; each prints its figures with
//! the reference measured in the same run.

pub mod cluster;
pub mod connections;
pub mod dbcost;
pub mod fanout;
pub mod filters;
pub mod ingest;
pub mod latency;
pub mod rls;
pub mod storm;

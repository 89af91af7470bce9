//! realtime-harness: what the tests, the benchmarks and `realtime-server dev`
//! start on this machine, and how they wait on it. Not published; the server
//! depends on it only through its default `dev` feature, so a production
//! build (`--no-default-features`) carries none of it.
//!
//! - [`postgres`]: a throwaway PostgreSQL cluster with logical replication,
//!   started with a schema ([`TempPostgres::with_schema`]), removed on drop.
//! - [`process`]: a program run as a child process, its output in a log
//!   file, stopped on drop ([`LoggedProcess`]): the one child-process wrapper.
//! - [`server`]: the `realtime-server` binary run so ([`ServerProcess`]).
//! - [`net`]: free loopback ports and a one-shot HTTP GET.
//!
//! It knows nothing of the server's or the operator's code: it starts
//! programs and PostgreSQL, and talks to them over sockets.

pub mod net;
pub mod postgres;
pub mod process;
pub mod server;

pub use postgres::{PgError, TempPostgres};
pub use process::{LoggedProcess, ProcessError};
pub use server::ServerProcess;

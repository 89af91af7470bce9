//! realtime-contract: what the server and the operator must agree on, in one
//! crate that both use and that pulls in neither of them.
//!
//! - [`config`]: the server's environment variables (their names, as
//!   constants in [`config::var`]), their defaults and their parsing into a
//!   typed [`config::Config`]. The operator writes pods' environments with the
//!   same names; a test feeds what it writes to this parser.
//! - [`tls`]: what each `DB_SSL` / `sslMode` means for a connection, one
//!   connector for the server's and the operator's SQL connections.
//! - [`slots`]: how a durable slot is created (a failover slot on 17+).
//! - [`sql`]: quoting identifiers and literals for SQL text.
//! - [`authorization`]: the database objects the server's authorization
//!   uses, applied by the server's `setup-authorization` command or by the
//!   operator.
//!
//! Nothing here does I/O or knows about Kubernetes, WebSockets or replication.

pub mod authorization;
pub mod config;
pub mod slots;
pub mod sql;
pub mod tls;

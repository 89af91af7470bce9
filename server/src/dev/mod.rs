//! Local development support: a throwaway PostgreSQL with logical replication
//! (used by the tests and by the quick start), the `dev` command, and the live
//! page served at `/`.

pub mod command;
pub mod page;
pub mod postgres;
pub mod probe;

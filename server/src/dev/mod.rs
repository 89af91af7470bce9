//! Local development support: a throwaway PostgreSQL with logical replication,
//! used by the tests and by the `realtime-server dev` quick start.

pub mod postgres;

//! Everything between PostgreSQL's walsender and the hub: the replication
//! session, the `pgoutput` decoder and the type catalog.

pub mod catalog;
pub mod pgoutput;
pub mod stream;

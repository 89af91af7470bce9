//! Authorization: who may see which row change, and who may read and write
//! a private channel, decided by PostgreSQL's own grants and row level
//! security policies.
//!
//! Owns reading the policies and privileges from the catalog, reducing them
//! per role and per group of subscribers (same role and claims), and
//! checking row images against them inside PostgreSQL under the token's role
//! and claims. Knows nothing of sockets or of the replication stream.

pub mod analysis;
pub mod authorizer;
pub mod db;
pub mod decide;
pub mod image;
pub mod lanes;
pub mod nodetree;
pub mod plan;
pub mod setup;

//! Local development support: the live page served at `/`, and (with the
//! default `dev` feature) the `dev` command, which starts a throwaway
//! PostgreSQL from `realtime-harness`.

#[cfg(feature = "dev")]
pub mod command;
pub mod page;

//! Test harnesses shared by the end-to-end tests: a throwaway PostgreSQL (the
//! server crate's `dev` module, re-exported here), the real server binary as a
//! child process, a Phoenix Channels WebSocket client, and a real Kubernetes
//! API server (etcd + kube-apiserver on loopback).

pub mod chart;
pub mod k8s;
pub mod operator;
pub mod server;
pub mod ws;

pub use realtime_server::dev::postgres::{PgError, TempPostgres};

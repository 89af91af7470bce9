//! The end-to-end tests' own harnesses, on top of `realtime-harness` (a
//! throwaway PostgreSQL, child processes, ports; re-exported here): the real
//! server binary for a test ([`server`]), a Phoenix Channels WebSocket client
//! ([`ws`]), a real Kubernetes API server ([`k8s`]), the operator in-process
//! ([`operator`]), the chart and the operator binary ([`chart`]), and the
//! kubelet's part: a pod's environment ([`kubelet`]).

pub mod chart;
pub mod jwt;
pub mod k8s;
pub mod kubelet;
pub mod operator;
pub mod server;
pub mod ws;

pub use realtime_harness::{LoggedProcess, PgError, TempPostgres};

//! realtime-operator: reconciles `RealtimeServer` resources: prepares the
//! database (publication, replica identity, slots), rolls out the server pods,
//! reports status and cleans up what it created.

pub mod crd;
pub mod lease;
pub mod metrics;
pub mod names;
pub mod reconcile;
pub mod run;

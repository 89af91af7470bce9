//! The reconcile of one `RealtimeServer`: [`driver`] runs these steps in
//! order, each in its own module with its own error; the first that fails
//! stops the others, and [`driver`]'s `fail` turns its error into conditions,
//! an Event and the retry.
//!
//! 1. [`validate`] the spec (pure: an invalid spec waits for a change);
//! 2. read the referenced [`secrets`];
//! 3. [`connect`] to the database, check `wal_level` (`DatabaseReady`);
//! 4. the [`publication`] and replica identities (`PublicationReady`);
//! 5. the replication [`slots`] (`SlotsReady`);
//! 6. [`build`] the children (pure);
//! 7. apply them and count ready pods ([`rollout`], `Available`);
//! 8. write the [`status`].
//!
//! Every reason a user can see is a [`reason::Reason`]; every SQL statement is
//! in [`database`]; every write to the API server goes through [`apply`]. The
//! [`finalizer`](kube::runtime::finalizer) wraps the steps: on deletion
//! [`cleanup`] drops what this resource created in the database.

pub mod apply;
pub mod build;
pub mod cleanup;
pub mod conditions;
pub mod connect;
pub mod database;
pub mod driver;
pub mod events;
pub mod finalizer;
pub mod governing;
pub mod publication;
pub mod reason;
pub mod rollout;
pub mod secrets;
pub mod slots;
pub mod status;
pub mod validate;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Client, Resource, ResourceExt};

use self::events::{Fact, Recorder};
use self::finalizer::Step;
use self::reason::Reason;
use crate::crd::RealtimeServer;
use crate::metrics::Metrics;

/// The one field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "realtime-operator";
/// First retry delay after a failed reconcile; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(2);
/// Longest retry delay after failed reconciles.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Longest retry delay while deletion waits for the database or for slots in use.
pub const WAITING_RETRY: Duration = Duration::from_secs(5);
/// A healthy resource is looked at again after this long, to refresh slot health.
pub const RESYNC: Duration = Duration::from_secs(300);
/// How long deletion waits for an unreachable database before giving up on
/// dropping the slots (and saying so in a Warning Event).
pub const DEFAULT_CLEANUP_TIMEOUT: Duration = Duration::from_secs(300);

/// The server image the operator runs when neither the spec nor
/// `REALTIME_SERVER_IMAGE` names one: the image built from `server/Dockerfile`,
/// tagged with this release's version (the Helm chart's default too).
pub const DEFAULT_SERVER_IMAGE: &str = concat!(
    "ghcr.io/realtime-dev/realtime-server:",
    env!("CARGO_PKG_VERSION")
);

/// The operator's own configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The server image used when a spec names none (`REALTIME_SERVER_IMAGE`).
    pub default_image: Option<String>,
    pub cleanup_timeout: Duration,
    /// The one namespace to watch (`WATCH_NAMESPACE`); `None`: every namespace.
    /// Watching one namespace needs only a Role there, no ClusterRole.
    pub watch_namespace: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_image: None,
            cleanup_timeout: DEFAULT_CLEANUP_TIMEOUT,
            watch_namespace: None,
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    /// Whether the cluster serves `policy/v1` (asked once).
    pdb_v1: tokio::sync::OnceCell<bool>,
    /// Consecutive failures per resource, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Resources already told (by an Event) that their PDB is skipped.
    pdb_skip_told: Mutex<HashSet<String>>,
    /// Resources (by uid) known to have no PodDisruptionBudget: a resource
    /// of one replica is not asked to delete one at every reconcile.
    no_pdb: Mutex<HashSet<String>>,
    /// The slots each resource (by uid) had at its last slots step: what a
    /// missing slot is checked against (status, possibly stale in the
    /// object a reconcile got, only after a restart).
    slots_seen: Mutex<HashMap<String, Vec<String>>>,
    /// The last slot loss of each resource (by uid): what was said, and when.
    slots_lost: Mutex<HashMap<String, (String, Instant)>>,
}

impl Context {
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>) -> Context {
        let instance = std::env::var("POD_NAME").ok().filter(|n| !n.is_empty());
        Context {
            recorder: Recorder::new(client.clone(), FIELD_MANAGER, instance),
            client,
            settings,
            metrics,
            pdb_v1: tokio::sync::OnceCell::new(),
            failures: Mutex::new(HashMap::new()),
            pdb_skip_told: Mutex::new(HashSet::new()),
            no_pdb: Mutex::new(HashSet::new()),
            slots_seen: Mutex::new(HashMap::new()),
            slots_lost: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes an Event about `obj`, of the type and action that go with
    /// `reason`; a failure to publish is only logged.
    pub async fn event(&self, obj: &RealtimeServer, reason: Reason, note: String) {
        let (type_, action) = reason.event().unwrap_or_else(|| {
            debug_assert!(false, "{reason} is not an Event reason");
            (EventType::Normal, "Reconcile")
        });
        let reason = reason.as_str();
        tracing::info!(resource = %key(obj), reason, "{note}");
        let fact = Fact {
            type_,
            reason,
            action,
            note: &note,
        };
        if let Err(e) = self.recorder.publish(&fact, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "publishing an Event failed");
        }
    }

    /// Whether the cluster serves PodDisruptionBudgets in `policy/v1`.
    pub async fn serves_pdb_v1(&self) -> bool {
        *self
            .pdb_v1
            .get_or_init(|| async {
                match self.client.list_api_group_resources("policy/v1").await {
                    Ok(list) => list
                        .resources
                        .iter()
                        .any(|r| r.name == "poddisruptionbudgets"),
                    Err(_) => false,
                }
            })
            .await
    }

    /// Whether `obj` is known to have no PodDisruptionBudget.
    pub fn known_without_pdb(&self, obj: &RealtimeServer) -> bool {
        self.no_pdb.lock().expect("lock").contains(&uid(obj))
    }

    /// Records whether `obj` has a PodDisruptionBudget.
    pub fn set_has_pdb(&self, obj: &RealtimeServer, has: bool) {
        let mut known = self.no_pdb.lock().expect("lock");
        if has {
            known.remove(&uid(obj));
        } else {
            known.insert(uid(obj));
        }
    }

    /// The slots `obj` had at its last slots step in this process.
    pub fn slots_seen(&self, obj: &RealtimeServer) -> Option<Vec<String>> {
        self.slots_seen
            .lock()
            .expect("lock")
            .get(&uid(obj))
            .cloned()
    }

    /// Records the slots `obj` has now; `None`: it is gone.
    pub fn set_slots_seen(&self, obj: &RealtimeServer, slots: Option<Vec<String>>) {
        let mut seen = self.slots_seen.lock().expect("lock");
        match slots {
            Some(s) => seen.insert(uid(obj), s),
            None => {
                self.slots_lost.lock().expect("lock").remove(&uid(obj));
                seen.remove(&uid(obj))
            }
        };
    }

    /// Records that `obj` lost slots, as `message` says.
    pub fn set_slots_lost(&self, obj: &RealtimeServer, message: String) {
        self.slots_lost
            .lock()
            .expect("lock")
            .insert(uid(obj), (message, Instant::now()));
    }

    /// What was said of `obj`'s last slot loss in this process, and how long ago.
    pub fn slots_lost(&self, obj: &RealtimeServer) -> Option<(String, Duration)> {
        self.slots_lost
            .lock()
            .expect("lock")
            .get(&uid(obj))
            .map(|(m, at)| (m.clone(), at.elapsed()))
    }

    /// True the first time it is asked for `obj` (per operator process).
    pub fn first_pdb_skip(&self, obj: &RealtimeServer) -> bool {
        self.pdb_skip_told.lock().expect("lock").insert(key(obj))
    }
}

/// The uid, or `namespace/name` for an object not from the API server.
fn uid(obj: &RealtimeServer) -> String {
    obj.uid().unwrap_or_else(|| key(obj))
}

/// `namespace/name`.
pub fn key(obj: &RealtimeServer) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Everything that can fail a reconcile (and so retry it with backoff). Each
/// variant is a `reason` label of the failures metric.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("database: {what}: {source}")]
    Database {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("waiting: {0}")]
    Waiting(String),
}

impl Error {
    pub fn db(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
        let what = what.into();
        move |source| Error::Database { what, source }
    }

    /// The metrics label of this failure (one of
    /// [`crate::metrics::FAILURE_REASONS`]).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kubernetes",
            Error::Database { .. } => "database",
            Error::Waiting(_) => "waiting",
        }
    }
}

/// The controller's reconcile: the [`finalizer`] around [`driver::apply`]
/// and [`cleanup::cleanup`].
pub async fn reconcile(obj: Arc<RealtimeServer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = obj.namespace().unwrap_or_else(|| "default".into());
    let api: Api<RealtimeServer> = Api::namespaced(ctx.client.clone(), &ns);
    let k = key(&obj);
    let (name, deleting) = (obj.name_any(), obj.metadata.deletion_timestamp.is_some());
    let gone = obj.clone();
    let result = finalizer::guarded(&api, obj, |step| async {
        match step {
            Step::Apply(obj) => driver::apply(obj, ctx.clone()).await,
            Step::Cleanup(obj) => cleanup::cleanup(obj, ctx.clone()).await,
        }
    })
    .await;
    ctx.metrics.reconciled(started.elapsed());
    if result.is_ok() {
        ctx.failures.lock().expect("lock").remove(&k);
        if deleting {
            ctx.metrics.forget(&ns, &name);
            ctx.set_slots_seen(&gone, None);
        }
    }
    result
}

/// Failed reconciles retry with exponential backoff per resource.
pub fn error_policy(obj: Arc<RealtimeServer>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(err.metric_label());
    let n = {
        let mut f = ctx.failures.lock().expect("lock");
        let n = f.entry(key(&obj)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    // Waiting (slots in use, a database gone during deletion) is bounded by
    // its own deadline: look again soon rather than backing off for minutes.
    let delay = match err {
        Error::Waiting(_) => backoff(n).min(WAITING_RETRY),
        _ => backoff(n),
    };
    tracing::warn!(
        resource = %key(&obj),
        error = %error_chain(err),
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// `err` and every error behind it, `: `-separated, leaving out a cause
/// whose text is already said (`database: creating slot x: db error: ERROR:
/// relation "x" does not exist`, not `db error` alone).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

/// The delay after `n` consecutive failures.
pub fn backoff(n: u32) -> Duration {
    MIN_BACKOFF
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Text(String, #[source] Option<Box<Text>>);

    #[test]
    fn the_error_chain_says_every_cause_once() {
        let inner = Text("relation \"nope\" does not exist".into(), None);
        let middle = Text("db error".into(), Some(Box::new(inner)));
        let outer = Text("creating slot x: db error".into(), Some(Box::new(middle)));
        assert_eq!(
            error_chain(&outer),
            "creating slot x: db error: relation \"nope\" does not exist"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}

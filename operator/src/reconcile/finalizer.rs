//! The finalizer `realtime.dev/cleanup`, which keeps a deleted resource until
//! [`super::cleanup`] dropped what it created in the database.
//!
//! Like kube-rs's `finalizer()` helper (JSON patches with a `test` operation,
//! so another controller's finalizer is never removed or duplicated), with
//! two differences: the patches carry the operator's field manager, so
//! `managedFields` says who wrote the finalizer; and a resource already gone
//! when its finalizer is to be removed (a second reconcile of the same
//! deletion, queued before the first removed it) is the end of its deletion,
//! not a failure.

use std::sync::Arc;

use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{Error, FIELD_MANAGER};
use crate::crd::{RealtimeServer, FINALIZER};

/// What the reconcile is to do with a resource.
pub enum Step {
    /// Reconcile towards the spec (the finalizer is in place).
    Apply(Arc<RealtimeServer>),
    /// Clean up (the resource is being deleted, the finalizer still holds it).
    Cleanup(Arc<RealtimeServer>),
}

/// Where the resource stands.
#[derive(Debug, PartialEq, Eq)]
enum State {
    /// The finalizer is missing on a live resource: add it first.
    Unguarded,
    Live,
    /// Being deleted; the finalizer at this index.
    Deleting(usize),
    /// Being deleted and the finalizer is gone: nothing is left to do.
    Released,
}

fn state(obj: &RealtimeServer) -> State {
    let at = obj.finalizers().iter().position(|f| f == FINALIZER);
    match (obj.metadata.deletion_timestamp.is_some(), at) {
        (false, None) => State::Unguarded,
        (false, Some(_)) => State::Live,
        (true, Some(i)) => State::Deleting(i),
        (true, None) => State::Released,
    }
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// The JSON patch that adds the finalizer to `obj`, failing (409/422) if
/// the finalizers changed since `obj` was read.
fn add_patch(obj: &RealtimeServer) -> json_patch::Patch {
    let ops = if obj.finalizers().is_empty() {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    } else {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": obj.finalizers()},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ])
    };
    serde_json::from_value(ops).expect("a valid JSON patch")
}

/// The JSON patch that removes the finalizer at index `i`, only if it is
/// still there.
fn remove_patch(i: usize) -> json_patch::Patch {
    let path = format!("/metadata/finalizers/{i}");
    serde_json::from_value(json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]))
    .expect("a valid JSON patch")
}

/// Runs `step` on `obj` behind the finalizer: adds it to a live resource
/// (the change reconciles it again), removes it once cleanup succeeded.
pub async fn guarded<F, Fut>(
    api: &Api<RealtimeServer>,
    obj: Arc<RealtimeServer>,
    step: F,
) -> Result<Action, Error>
where
    F: FnOnce(Step) -> Fut,
    Fut: std::future::Future<Output = Result<Action, Error>>,
{
    let name = obj.name_any();
    match state(&obj) {
        State::Unguarded => {
            match api
                .patch(&name, &params(), &Patch::Json::<()>(add_patch(&obj)))
                .await
            {
                Ok(_) => Ok(Action::await_change()),
                Err(kube::Error::Api(s)) if changed_since_read(&s) => Ok(stale(&name)),
                Err(e) => Err(e.into()),
            }
        }
        State::Live => step(Step::Apply(obj)).await,
        State::Deleting(i) => {
            let action = step(Step::Cleanup(obj)).await?;
            match api
                .patch(&name, &params(), &Patch::Json::<()>(remove_patch(i)))
                .await
            {
                Ok(_) => Ok(action),
                // Already released by an earlier reconcile, and deleted.
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    tracing::debug!(resource = %name, "already gone when releasing its finalizer");
                    Ok(Action::await_change())
                }
                Err(kube::Error::Api(s)) if changed_since_read(&s) => Ok(stale(&name)),
                Err(e) => Err(e.into()),
            }
        }
        State::Released => Ok(Action::await_change()),
    }
}

/// Whether a finalizer patch was refused because its `test` failed (422)
/// or the object changed under it (409): this reconcile read a version the
/// cache had not caught up with; the newer one reconciles again.
fn changed_since_read(s: &kube::core::Status) -> bool {
    s.code == 409 || s.code == 422
}

/// What a reconcile of a stale version does: nothing now, and a look again
/// soon in case no newer version arrives.
fn stale(name: &str) -> Action {
    tracing::debug!(resource = %name, "its finalizers changed since it was read; reconciling the newer version");
    Action::requeue(std::time::Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::validate::tests::spec;

    fn obj(finalizers: &[&str], deleting: bool) -> RealtimeServer {
        let mut o = RealtimeServer::new("chat", spec());
        o.metadata.finalizers =
            (!finalizers.is_empty()).then(|| finalizers.iter().map(|f| f.to_string()).collect());
        if deleting {
            o.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ));
        }
        o
    }

    #[test]
    fn the_state_follows_the_finalizer_and_the_deletion() {
        assert_eq!(state(&obj(&[], false)), State::Unguarded);
        assert_eq!(state(&obj(&["other"], false)), State::Unguarded);
        assert_eq!(state(&obj(&[FINALIZER], false)), State::Live);
        assert_eq!(state(&obj(&["other", FINALIZER], true)), State::Deleting(1));
        assert_eq!(state(&obj(&["other"], true)), State::Released);
    }

    #[test]
    fn the_patches_test_before_they_change() {
        let add = serde_json::to_value(add_patch(&obj(&["other"], false))).unwrap();
        assert_eq!(
            add,
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": ["other"]},
                {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
            ])
        );
        let remove = serde_json::to_value(remove_patch(1)).unwrap();
        assert_eq!(
            remove,
            json!([
                {"op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/1"},
            ])
        );
    }
}

//! Step 7, apply: server-side applies the children (the headless Service
//! before the StatefulSet it governs; the PodDisruptionBudget
//! only where the cluster serves `policy/v1`; otherwise an Event says once why
//! there is none) and counts the pods the API server reports ready. Sets
//! `Available`.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};

use super::build::Children;
use super::conditions::{Wanted, AVAILABLE};
use super::driver::Failure;
use super::reason::Reason;
use super::{apply, governing};
use super::{Context, Error};
use crate::crd::RealtimeServer;
use crate::names;

/// Applying the children, or reading their pods, failed.
#[derive(Debug, thiserror::Error)]
#[error("applying the StatefulSet, Service or PodDisruptionBudget failed: {source}")]
pub struct RolloutError {
    #[source]
    source: Error,
}

/// Retried with backoff.
impl From<RolloutError> for Failure {
    fn from(e: RolloutError) -> Failure {
        let message = e.to_string();
        Failure::told(Reason::RolloutFailed, message).retried(e.source)
    }
}

/// Applies `children` and returns how many of `obj`'s pods are ready.
pub async fn rollout(
    obj: &RealtimeServer,
    ctx: &Context,
    children: &Children,
) -> Result<i32, RolloutError> {
    apply_all(obj, ctx, children)
        .await
        .map_err(|source| RolloutError { source })
}

async fn apply_all(obj: &RealtimeServer, ctx: &Context, children: &Children) -> Result<i32, Error> {
    apply::apply(&ctx.client, &children.headless_service).await?;
    governing::replace_if_governed_elsewhere(&ctx.client, &children.statefulset).await?;
    apply::apply(&ctx.client, &children.statefulset).await?;
    apply::apply(&ctx.client, &children.service).await?;
    pod_disruption_budget(obj, ctx, children.pod_disruption_budget.as_ref()).await?;
    // Pods: the API server's view of readiness (the kubelet reports it).
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let ready = pods
        .list(&ListParams::default().labels(&names::selector(&obj.name_any())))
        .await?
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
        .count();
    Ok(ready as i32)
}

/// Applies the PodDisruptionBudget when it is wanted and the cluster serves
/// `policy/v1`, and deletes one no longer wanted (looking first, once); says once, in an Event, why
/// there is none when the cluster cannot have one.
async fn pod_disruption_budget(
    obj: &RealtimeServer,
    ctx: &Context,
    wanted: Option<&PodDisruptionBudget>,
) -> Result<(), Error> {
    let served = ctx.serves_pdb_v1().await;
    match (wanted, served) {
        (Some(pdb), true) => {
            apply::apply(&ctx.client, pdb).await?;
            ctx.set_has_pdb(obj, true);
        }
        (Some(_), false) => {
            if ctx.first_pdb_skip(obj) {
                ctx.event(
                    obj,
                    Reason::PodDisruptionBudgetSkipped,
                    "no PodDisruptionBudget: this cluster does not serve policy/v1 \
                     (Kubernetes 1.21 or later does)"
                        .into(),
                )
                .await;
            }
        }
        // Looked up once (per operator process), not deleted blindly at
        // every reconcile of a one-replica resource.
        (None, true) if ctx.known_without_pdb(obj) => {}
        (None, true) => {
            let api: Api<PodDisruptionBudget> =
                Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
            let name = obj.name_any();
            if api.get_opt(&name).await?.is_some() {
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            ctx.set_has_pdb(obj, false);
        }
        (None, false) => {}
    }
    Ok(())
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `Available` for `ready` of `replicas` pods of the resource `name`.
pub fn available(name: &str, ready: i32, replicas: i32) -> Wanted {
    if replicas == 0 {
        Wanted::not(AVAILABLE, Reason::ScaledToZero, "spec.replicas is 0")
    } else if ready == replicas {
        Wanted::ok(
            AVAILABLE,
            Reason::AllReplicasReady,
            format!("{ready}/{replicas} pods ready"),
        )
    } else {
        Wanted::not(
            AVAILABLE,
            Reason::ReplicasNotReady,
            format!(
                "{ready}/{replicas} pods ready; see kubectl describe pods -l {}",
                names::selector(name)
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_says_how_many_pods_are_ready() {
        let w = available("chat", 2, 2);
        assert!(w.status);
        assert_eq!(w.reason, Reason::AllReplicasReady);
        assert_eq!(w.message, "2/2 pods ready");
        let w = available("chat", 1, 2);
        assert!(!w.status);
        assert_eq!(w.reason, Reason::ReplicasNotReady);
        assert_eq!(
            w.message,
            "1/2 pods ready; see kubectl describe pods -l app.kubernetes.io/instance=chat"
        );
        assert_eq!(available("chat", 0, 0).reason, Reason::ScaledToZero);
    }
}

//! A StatefulSet's `serviceName` cannot change. Operators before the headless
//! Service gave theirs the clients' Service: such a StatefulSet is deleted
//! with its pods orphaned (they keep running and serving), and the next
//! apply creates it governed by the headless Service, adopting the pods by
//! their labels. Part of step 7 ([`super::rollout`]).

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};

use super::Error;

/// Deletes the existing StatefulSet of `wanted` (orphaning its pods) when its
/// `serviceName` differs from the wanted one; a deletion still in progress
/// is waited for (the apply would fail on it).
pub async fn replace_if_governed_elsewhere(
    client: &Client,
    wanted: &StatefulSet,
) -> Result<(), Error> {
    let ns = wanted.namespace().unwrap_or_else(|| "default".into());
    let name = wanted.name_any();
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let Some(existing) = find(&api, &name).await? else {
        return Ok(());
    };
    let service_name = |s: &StatefulSet| s.spec.as_ref().and_then(|s| s.service_name.clone());
    if existing.metadata.deletion_timestamp.is_some() {
        return Err(Error::Waiting(format!(
            "StatefulSet {ns}/{name} is being deleted; it is created again once gone"
        )));
    }
    if service_name(&existing) == service_name(wanted) {
        return Ok(());
    }
    tracing::info!(
        statefulset = %format!("{ns}/{name}"),
        from = ?service_name(&existing),
        to = ?service_name(wanted),
        "replacing the StatefulSet to change its serviceName; its pods are orphaned and adopted again"
    );
    match api.delete(&name, &DeleteParams::orphan()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    // With the orphan finalizer the object stays until the garbage collector
    // has released the pods.
    match find(&api, &name).await? {
        None => Ok(()),
        Some(_) => Err(Error::Waiting(format!(
            "StatefulSet {ns}/{name} is being deleted (to change its serviceName); \
             it is created again once gone"
        ))),
    }
}

/// The StatefulSet `name`, by a list (the operator's RBAC grants list and
/// watch on StatefulSets, not get).
async fn find(api: &Api<StatefulSet>, name: &str) -> Result<Option<StatefulSet>, Error> {
    let list = api
        .list(&ListParams::default().fields(&format!("metadata.name={name}")))
        .await?;
    Ok(list.items.into_iter().next())
}

//! Every write to the API server, for the steps apply ([`super::rollout`]) and
//! status ([`super::status`]): a server-side apply with the one field manager,
//! forced, so the operator owns exactly the fields it sets; status goes through
//! the status subresource.

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use super::{Error, FIELD_MANAGER};
use crate::crd::{RealtimeServer, RealtimeServerStatus};

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Server-side applies `obj` (which carries its name and namespace).
pub async fn apply<K>(client: &Client, obj: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let ns = obj.namespace().unwrap_or_else(|| "default".into());
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let mut body = serde_json::to_value(obj).expect("a Kubernetes object serializes");
    body["apiVersion"] = json!(K::api_version(&()));
    body["kind"] = json!(K::kind(&()));
    Ok(api
        .patch(&obj.name_any(), &params(), &Patch::Apply(&body))
        .await?)
}

/// Writes `status` unless it equals what the object already has: a reconcile
/// that finds nothing new writes nothing.
pub async fn status(
    client: &Client,
    obj: &RealtimeServer,
    status: RealtimeServerStatus,
) -> Result<(), Error> {
    if obj.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let ns = obj.namespace().unwrap_or_else(|| "default".into());
    let api: Api<RealtimeServer> = Api::namespaced(client.clone(), &ns);
    let body = json!({
        "apiVersion": RealtimeServer::api_version(&()),
        "kind": RealtimeServer::kind(&()),
        "status": status,
    });
    api.patch_status(&obj.name_any(), &params(), &Patch::Apply(&body))
        .await?;
    Ok(())
}

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

/// What became of a status write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusWrite {
    /// Written.
    Written,
    /// Equal to what the object already has: nothing written.
    Unchanged,
    /// Refused: the object changed since `obj` was read (its resourceVersion
    /// is older than the API server's). The reconcile worked from a stale copy
    /// and must not overwrite a newer status (the slots and publication a newer
    /// reconcile recorded, which cleanup relies on); the newer version is
    /// reconciled next.
    Stale,
}

/// Writes `status` unless it equals what the object already has: a reconcile
/// that finds nothing new writes nothing. The write carries `obj`'s
/// resourceVersion as a precondition, so a reconcile that read an older copy
/// of the object (the controller's cache lags the API server) cannot replace
/// a status written since.
pub async fn status(
    client: &Client,
    obj: &RealtimeServer,
    status: RealtimeServerStatus,
) -> Result<StatusWrite, Error> {
    if obj.status.as_ref() == Some(&status) {
        return Ok(StatusWrite::Unchanged);
    }
    let ns = obj.namespace().unwrap_or_else(|| "default".into());
    let api: Api<RealtimeServer> = Api::namespaced(client.clone(), &ns);
    let mut body = json!({
        "apiVersion": RealtimeServer::api_version(&()),
        "kind": RealtimeServer::kind(&()),
        "status": status,
    });
    if let Some(rv) = &obj.metadata.resource_version {
        body["metadata"] = json!({ "resourceVersion": rv });
    }
    match api
        .patch_status(&obj.name_any(), &params(), &Patch::Apply(&body))
        .await
    {
        Ok(_) => Ok(StatusWrite::Written),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            tracing::debug!(
                resource = %obj.name_any(),
                "changed since this reconcile read it; its status is not written"
            );
            Ok(StatusWrite::Stale)
        }
        Err(e) => Err(e.into()),
    }
}

//! The finalizer's cleanup: when a `RealtimeServer` is deleted, drop the slots it
//! created (a slot without its consumer retains WAL until the disk fills) and,
//! with `reclaimPolicy: Delete`, the publication it created. If the database stays
//! unreachable longer than the cleanup timeout, deletion goes ahead with a
//! Warning Event naming what was left behind.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::database::{self as db, db_message, ConnParams};
use super::reason::Reason;
use super::secrets::{self, SecretsError};
use super::{Context, Error};
use crate::crd::{RealtimeServer, ReclaimPolicy};
use crate::names;

pub async fn cleanup(obj: Arc<RealtimeServer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_else(|| "default".into());
    let name = obj.name_any();
    // No new server may start (and recreate a slot) once the slots are going.
    let sts: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    match sts.delete(&name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }

    let outcome = drop_all(&obj, &ctx).await;
    // Nothing was ever created (the status records every slot and an owned
    // publication): an unreachable database or a missing Secret has nothing to
    // hold up.
    let created = obj
        .status
        .as_ref()
        .is_some_and(|s| !s.slots.is_empty() || s.publication_owned);
    if let (Err(e), false) = (&outcome, created) {
        ctx.event(
            &obj,
            Reason::CleanupSkipped,
            format!(
                "the status records no slot or publication of this resource, so deletion does \
                 not wait for the database ({e})"
            ),
        )
        .await;
        return Ok(Action::await_change());
    }
    let left: Vec<String> = match &outcome {
        Ok(left) if left.is_empty() => return Ok(Action::await_change()),
        Ok(left) => left.clone(),
        // Unknown: what status last saw.
        Err(_) => obj
            .status
            .as_ref()
            .map(|s| s.slots.iter().map(|s| s.name.clone()).collect())
            .unwrap_or_default(),
    };
    let since = obj
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| k8s_openapi::jiff::Timestamp::now().duration_since(t.0))
        .unwrap_or_default();
    let timeout = ctx.settings.cleanup_timeout;
    if since.unsigned_abs() >= timeout {
        let why = match &outcome {
            Ok(_) => "they were still in use".to_string(),
            Err(e) => e.to_string(),
        };
        let names = if left.is_empty() {
            format!("slots named {}_<n>", names::slot_prefix(&ns, &name))
        } else {
            left.join(", ")
        };
        ctx.event(
            &obj,
            Reason::SlotsLeftBehind,
            format!(
                "gave up after {timeout:?}: {why}. Replication slot(s) left behind, which retain \
                 WAL until dropped: {names}. Drop them with SELECT pg_drop_replication_slot('<name>')"
            ),
        )
        .await;
        return Ok(Action::await_change());
    }
    match outcome {
        Ok(left) => Err(Error::Waiting(format!(
            "slot(s) {} still in use",
            left.join(", ")
        ))),
        Err(e) => Err(e),
    }
}

/// Drops this resource's inactive slots (and its publication with reclaim
/// policy Delete); returns the slots still in use.
async fn drop_all(obj: &RealtimeServer, ctx: &Context) -> Result<Vec<String>, Error> {
    let ns = obj.namespace().unwrap_or_else(|| "default".into());
    let name = obj.name_any();
    let resolved = match secrets::read(&ctx.client, &ns, &obj.spec).await {
        Ok(r) => r,
        Err(SecretsError::Api(e)) => return Err(e.into()),
        Err(SecretsError::Missing(m)) => return Err(Error::Waiting(m)),
    };
    let params = ConnParams::from_spec(&obj.spec.database, resolved.db_password);
    let client = db::connect(&params).await.map_err(|e| {
        Error::Waiting(format!(
            "cannot connect to {}:{}: {}",
            params.host,
            params.port,
            db_message(&e)
        ))
    })?;
    let prefix = names::slot_prefix(&ns, &name);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods_left = !pods
        .list(&ListParams::default().labels(&names::selector(&name)))
        .await?
        .items
        .is_empty();
    let mut left = Vec::new();
    for slot in db::slots(&client)
        .await
        .map_err(Error::db("listing slots"))?
    {
        if names::slot_ordinal(&prefix, &slot.name).is_none() {
            continue;
        }
        if slot.active {
            // Its server is still running: end its stream once the pods are gone.
            if let (false, Some(pid)) = (pods_left, slot.active_pid) {
                db::terminate_backend(&client, pid)
                    .await
                    .map_err(Error::db("ending a slot's stream"))?;
            }
            left.push(slot.name);
            continue;
        }
        match db::drop_slot(&client, &slot.name).await {
            Ok(()) => {
                ctx.event(
                    obj,
                    Reason::SlotDropped,
                    format!("dropped replication slot {} (resource deleted)", slot.name),
                )
                .await
            }
            Err(e) => {
                tracing::info!(slot = %slot.name, error = %db_message(&e), "slot not dropped yet");
                left.push(slot.name);
            }
        }
    }
    // The publication goes last: a server still streaming needs it.
    if left.is_empty() && obj.spec.reclaim_policy == ReclaimPolicy::Delete {
        let publication = obj
            .spec
            .publication
            .name
            .clone()
            .unwrap_or_else(|| names::default_publication(&ns, &name));
        let mark = names::ownership_mark(&ns, &name);
        let p = db::publication(&client, &publication)
            .await
            .map_err(Error::db("reading the publication"))?;
        if p.is_some_and(|p| p.comment.as_deref() == Some(mark.as_str())) {
            db::drop_publication(&client, &publication)
                .await
                .map_err(Error::db(format!("dropping publication {publication}")))?;
            ctx.event(
                obj,
                Reason::PublicationDropped,
                format!("dropped publication {publication} (reclaimPolicy: Delete)"),
            )
            .await;
        }
    }
    Ok(left)
}

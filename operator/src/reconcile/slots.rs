//! Step 5, slots: one durable `pgoutput` slot per replica, named from the
//! resource and the pod's ordinal; the slots of replicas that are gone are
//! dropped once their pods are gone. Sets `SlotsReady`, and the slots' health
//! and the lag in status.

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt};
use tokio_postgres::error::SqlState;

use super::conditions::{Wanted, SLOTS_READY};
use super::database as db;
use super::driver::Failure;
use super::reason::Reason;
use super::validate::Validated;
use super::{Context, Error};
use crate::crd::{RealtimeServer, SlotStatus};
use crate::names;

/// This resource's slots after the step.
pub struct Slots {
    pub slots: Vec<SlotStatus>,
    /// Slots of removed replicas still waiting for their pods to go.
    pub waiting: Vec<String>,
}

impl Slots {
    /// `SlotsReady`: True, or False while slots wait for their pods.
    pub fn condition(&self) -> Wanted {
        if self.waiting.is_empty() {
            let names: Vec<&str> = self.slots.iter().map(|s| s.name.as_str()).collect();
            Wanted::ok(
                SLOTS_READY,
                Reason::Ready,
                format!(
                    "{} slot(s), one per replica: {}",
                    names.len(),
                    names.join(", ")
                ),
            )
        } else {
            Wanted::not(
                SLOTS_READY,
                Reason::WaitingForPods,
                format!(
                    "slot(s) {} of removed replicas are dropped once their pods are gone",
                    self.waiting.join(", ")
                ),
            )
        }
    }

    /// The most WAL any of the slots retains.
    pub fn lag(&self) -> Option<String> {
        self.slots
            .iter()
            .filter_map(|s| s.retained_wal_bytes)
            .max()
            .map(human_bytes)
    }
}

/// Managing the slots failed.
#[derive(Debug, thiserror::Error)]
#[error("managing replication slots on {target} failed: {source}")]
pub struct SlotsError {
    target: String,
    #[source]
    source: Error,
}

/// Retried with backoff.
impl From<SlotsError> for Failure {
    fn from(e: SlotsError) -> Failure {
        let message = e.to_string();
        Failure::told(Reason::SlotError, message).retried(e.source)
    }
}

/// Creates the missing slots and drops those of replicas that are gone, on the
/// database `client` reaches (`target` names it in messages).
pub async fn ensure(
    obj: &RealtimeServer,
    ctx: &Context,
    client: &tokio_postgres::Client,
    target: &str,
    v: &Validated,
) -> Result<Slots, SlotsError> {
    manage(obj, ctx, client, v)
        .await
        .map_err(|source| SlotsError {
            target: target.to_string(),
            source,
        })
}

async fn manage(
    obj: &RealtimeServer,
    ctx: &Context,
    client: &tokio_postgres::Client,
    v: &Validated,
) -> Result<Slots, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = db::slots(client)
        .await
        .map_err(Error::db("listing slots"))?;
    let mine: Vec<_> = existing
        .iter()
        .filter_map(|s| names::slot_ordinal(&v.slot_prefix, &s.name).map(|o| (o, s)))
        .collect();
    let mut waiting = Vec::new();
    for ordinal in 0..v.replicas as u32 {
        if !mine.iter().any(|(o, _)| *o == ordinal) {
            let slot = names::slot_name(&v.slot_prefix, ordinal);
            db::create_slot(client, &slot)
                .await
                .map_err(Error::db(format!("creating slot {slot}")))?;
            ctx.event(
                obj,
                Reason::SlotCreated,
                format!("created replication slot {slot} for replica {ordinal}"),
            )
            .await;
        }
    }
    for (ordinal, slot) in &mine {
        if *ordinal < v.replicas as u32 {
            continue;
        }
        let pod = format!("{}-{ordinal}", obj.name_any());
        if slot.active || pods.get_opt(&pod).await?.is_some() {
            waiting.push(slot.name.clone());
            continue;
        }
        match db::drop_slot(client, &slot.name).await {
            Ok(()) => {
                ctx.event(
                    obj,
                    Reason::SlotDropped,
                    format!(
                        "dropped replication slot {} of removed replica {ordinal}",
                        slot.name
                    ),
                )
                .await
            }
            // Became active in between: try again later.
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => waiting.push(slot.name.clone()),
            Err(e) => return Err(Error::db(format!("dropping slot {}", slot.name))(e)),
        }
    }
    let now = db::slots(client)
        .await
        .map_err(Error::db("listing slots"))?;
    let slots = now
        .into_iter()
        .filter(|s| names::slot_ordinal(&v.slot_prefix, &s.name).is_some())
        .map(|s| SlotStatus {
            name: s.name,
            active: s.active,
            retained_wal_bytes: s.retained_wal_bytes,
            confirmed_flush_lsn: s.confirmed_flush_lsn,
        })
        .collect();
    Ok(Slots { slots, waiting })
}

/// Bytes as a person would write them: `512B`, `3KiB`, `1.5MiB`, `2.0GiB`.
pub fn human_bytes(b: i64) -> String {
    const MB: i64 = 1024 * 1024;
    if b >= 1024 * MB {
        format!("{:.1}GiB", b as f64 / (1024 * MB) as f64)
    } else if b >= MB {
        format!("{:.1}MiB", b as f64 / MB as f64)
    } else if b >= 1024 {
        format!("{}KiB", b / 1024)
    } else {
        format!("{b}B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(name: &str, retained: Option<i64>) -> SlotStatus {
        SlotStatus {
            name: name.into(),
            active: true,
            retained_wal_bytes: retained,
            confirmed_flush_lsn: None,
        }
    }

    #[test]
    fn bytes_read_like_a_person_would_write_them() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(3 * 1024), "3KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 / 2), "1.5MiB");
        assert_eq!(human_bytes(2 * 1024 * 1024 * 1024), "2.0GiB");
    }

    #[test]
    fn the_lag_is_the_largest_retained_wal() {
        let s = Slots {
            slots: vec![
                slot("a_0", Some(10)),
                slot("a_1", Some(2048)),
                slot("a_2", None),
            ],
            waiting: vec![],
        };
        assert_eq!(s.lag().as_deref(), Some("2KiB"));
        let c = s.condition();
        assert!(c.status);
        assert_eq!(c.message, "3 slot(s), one per replica: a_0, a_1, a_2");
    }

    #[test]
    fn slots_waiting_for_their_pods_are_named() {
        let s = Slots {
            slots: vec![slot("a_0", None), slot("a_1", None)],
            waiting: vec!["a_1".into()],
        };
        let c = s.condition();
        assert!(!c.status);
        assert_eq!(c.reason, Reason::WaitingForPods);
        assert!(
            c.message.starts_with("slot(s) a_1 of removed replicas"),
            "{c:?}"
        );
    }
}

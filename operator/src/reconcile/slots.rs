//! Step 5, slots: one durable `pgoutput` slot per replica, named from the
//! resource and the pod's ordinal (a failover slot from PostgreSQL 17 on);
//! the slots of replicas that are gone are dropped once their pods are gone.
//! Sets `SlotsReady`, the slots' health and the lag in status, and the slot
//! gauges of the operator's metrics.
//!
//! A slot that status recorded but the database no longer has vanished
//! behind the operator's back: a failover to a standby without a copy of it,
//! or a restore. The changes committed since its consumer last confirmed
//! were never streamed, and cannot be: a new slot starts at the current WAL
//! position. The operator recreates it at once (waiting would not bring the
//! changes back, and the server would create its own on its next connect)
//! and says so loudly: a Warning Event `SlotLost`, `SlotsReady` False with
//! reason `SlotLost` for [`LOST_NOTICE`], and
//! `realtime_operator_slots_lost_total`.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt};
use tokio_postgres::error::SqlState;

use super::conditions::{Wanted, SLOTS_READY};
use super::database as db;
use super::driver::Failure;
use super::reason::Reason;
use super::status::old_condition;
use super::validate::Validated;
use super::{Context, Error};
use crate::crd::{RealtimeServer, SlotStatus};
use crate::metrics::SlotHealth;
use crate::names;

/// How long `SlotsReady` stays False (`SlotLost`) after a slot was lost.
pub const LOST_NOTICE: Duration = Duration::from_secs(60 * 60);

/// This resource's slots after the step.
pub struct Slots {
    pub slots: Vec<SlotStatus>,
    /// Slots of removed replicas still waiting for their pods to go.
    pub waiting: Vec<String>,
    /// What `SlotsReady` says while a lost slot is news (see [`LOST_NOTICE`]).
    pub lost: Option<String>,
}

impl Slots {
    /// `SlotsReady`: True, or False while slots wait for their pods.
    pub fn condition(&self) -> Wanted {
        if let Some(lost) = &self.lost {
            Wanted::not(SLOTS_READY, Reason::SlotLost, lost.clone())
        } else if self.waiting.is_empty() {
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
    // The slots this resource had: as this process last saw them, or, after
    // a restart, as status recorded them.
    let recorded: Vec<String> = ctx.slots_seen(obj).unwrap_or_else(|| {
        obj.status
            .as_ref()
            .map(|s| s.slots.iter().map(|s| s.name.clone()).collect())
            .unwrap_or_default()
    });
    let mut version = None;
    let mut lost = Vec::new();
    for ordinal in 0..v.replicas as u32 {
        if !mine.iter().any(|(o, _)| *o == ordinal) {
            let slot = names::slot_name(&v.slot_prefix, ordinal);
            let version = match version {
                Some(v) => v,
                None => *version.insert(
                    db::server_version_num(client)
                        .await
                        .map_err(Error::db("SHOW server_version_num"))?,
                ),
            };
            db::create_slot(client, &slot, version)
                .await
                .map_err(Error::db(format!("creating slot {slot}")))?;
            let failover = if version >= db::FAILOVER_SLOTS_SINCE {
                " (a failover slot)"
            } else {
                ""
            };
            if recorded.contains(&slot) {
                let note = lost_message(&slot, ordinal);
                ctx.metrics.slot_lost(&ns, &obj.name_any(), &slot);
                ctx.event(obj, Reason::SlotLost, note.clone()).await;
                lost.push(note);
            } else {
                ctx.event(
                    obj,
                    Reason::SlotCreated,
                    format!("created replication slot {slot} for replica {ordinal}{failover}"),
                )
                .await;
            }
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
    let now: Vec<_> = now
        .into_iter()
        .filter(|s| names::slot_ordinal(&v.slot_prefix, &s.name).is_some())
        .collect();
    let health: Vec<SlotHealth> = now
        .iter()
        .map(|s| SlotHealth {
            name: s.name.clone(),
            active: s.active,
            retained_wal_bytes: s.retained_wal_bytes,
            confirmed_lag_bytes: s.confirmed_lag_bytes,
        })
        .collect();
    ctx.metrics.slots(&ns, &obj.name_any(), &health);
    ctx.set_slots_seen(obj, Some(now.iter().map(|s| s.name.clone()).collect()));
    let slots = now
        .into_iter()
        .map(|s| SlotStatus {
            name: s.name,
            active: s.active,
            retained_wal_bytes: s.retained_wal_bytes,
            confirmed_flush_lsn: s.confirmed_flush_lsn,
        })
        .collect();
    // News for an hour: as this process remembers it, or, after a restart,
    // as status says.
    let lost = if lost.is_empty() {
        match ctx.slots_lost(obj) {
            Some((message, age)) => (age < LOST_NOTICE).then_some(message),
            None => still_news(obj, k8s_openapi::jiff::Timestamp::now()),
        }
    } else {
        let message = lost.join("; ");
        ctx.set_slots_lost(obj, message.clone());
        Some(message)
    };
    Ok(Slots {
        slots,
        waiting,
        lost,
    })
}

/// What is told when the slot of replica `ordinal` was lost.
fn lost_message(slot: &str, ordinal: u32) -> String {
    format!(
        "replication slot {slot} of replica {ordinal} vanished after the operator had created it \
         (a failover to a standby without it, or a restore): it was recreated at the current WAL \
         position, and changes committed since its server last confirmed were not streamed to \
         clients. On PostgreSQL 17 and later the operator creates failover slots: set \
         sync_replication_slots = on on the standbys to keep them"
    )
}

/// The `SlotLost` message of `obj`'s status while it is still news at `now`.
fn still_news(obj: &RealtimeServer, now: k8s_openapi::jiff::Timestamp) -> Option<String> {
    let c = old_condition(obj, SLOTS_READY)?;
    if c.reason != Reason::SlotLost.as_str() {
        return None;
    }
    let since: k8s_openapi::jiff::Timestamp = c.last_transition_time.parse().ok()?;
    let age = now.duration_since(since);
    (age.unsigned_abs() < LOST_NOTICE).then(|| c.message.clone())
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
            lost: None,
        };
        assert_eq!(s.lag().as_deref(), Some("2KiB"));
        let c = s.condition();
        assert!(c.status);
        assert_eq!(c.message, "3 slot(s), one per replica: a_0, a_1, a_2");
    }

    #[test]
    fn a_lost_slot_stays_news_for_an_hour() {
        let mut obj = RealtimeServer::new("chat", crate::reconcile::validate::tests::spec());
        let lost_at: k8s_openapi::jiff::Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        obj.status = Some(crate::crd::RealtimeServerStatus {
            conditions: vec![crate::crd::Condition {
                type_: SLOTS_READY.into(),
                status: "False".into(),
                reason: "SlotLost".into(),
                message: lost_message("a_0", 0),
                last_transition_time: lost_at.to_string(),
                observed_generation: None,
            }],
            ..Default::default()
        });
        let later = |mins: i64| lost_at + k8s_openapi::jiff::SignedDuration::from_mins(mins);
        assert_eq!(still_news(&obj, later(59)), Some(lost_message("a_0", 0)));
        assert_eq!(still_news(&obj, later(61)), None);
        let s = Slots {
            slots: vec![slot("a_0", None)],
            waiting: vec![],
            lost: still_news(&obj, later(1)),
        };
        let c = s.condition();
        assert!(!c.status);
        assert_eq!(c.reason, Reason::SlotLost);
        assert!(c.message.contains("a_0 of replica 0 vanished"), "{c:?}");
    }

    #[test]
    fn slots_waiting_for_their_pods_are_named() {
        let s = Slots {
            slots: vec![slot("a_0", None), slot("a_1", None)],
            waiting: vec!["a_1".into()],
            lost: None,
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

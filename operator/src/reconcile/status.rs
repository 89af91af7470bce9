//! Step 8, status: what a reconcile found, assembled as the steps go, then
//! written once (through the status subresource; nothing is written when
//! nothing changed). Conditions keep their transition times (see
//! [`conditions::merge`]).

use super::conditions::{self, Wanted};
use super::reason::Reason;
use super::slots::Slots;
use super::{apply, build, Context, Error};
use crate::crd::{Condition, RealtimeServer, RealtimeServerStatus};
use crate::names;
use kube::ResourceExt;

/// The status being assembled.
pub struct Report {
    wanted: Vec<Wanted>,
    pub status: RealtimeServerStatus,
}

impl Report {
    /// Starts from what `obj`'s status says and what its spec asks.
    pub fn new(obj: &RealtimeServer) -> Report {
        let old = obj.status.clone().unwrap_or_default();
        Report {
            wanted: Vec::new(),
            status: RealtimeServerStatus {
                observed_generation: obj.metadata.generation,
                replicas: obj.spec.replicas,
                ready_replicas: old.ready_replicas,
                replicas_summary: Some(format!("{}/{}", old.ready_replicas, obj.spec.replicas)),
                selector: Some(names::pod_selector(&obj.name_any())),
                endpoint: Some(build::endpoint(obj)),
                database: old.database.clone(),
                publication: old.publication.clone(),
                publication_owned: old.publication_owned,
                lag: old.lag.clone(),
                slots: old.slots.clone(),
                conditions: Vec::new(),
            },
        }
    }

    /// Sets a condition.
    pub fn set(&mut self, condition: Wanted) {
        self.wanted.retain(|w| w.type_ != condition.type_);
        self.wanted.push(condition);
    }

    /// Whether a condition is set yet.
    pub fn has(&self, type_: &str) -> bool {
        self.wanted.iter().any(|w| w.type_ == type_)
    }

    /// Marks every condition not yet set as False: not checked until
    /// `blocker` is resolved.
    pub fn blocked(&mut self, blocker: &str) {
        for t in conditions::ALL {
            if !self.has(t) {
                self.set(Wanted::not(
                    t,
                    Reason::Blocked,
                    format!("not checked until {blocker} is resolved"),
                ));
            }
        }
    }

    /// Records the slots step: each slot's health, the lag, `SlotsReady`.
    pub fn slots(&mut self, slots: &Slots) {
        self.status.lag = slots.lag();
        self.status.slots = slots.slots.clone();
        self.set(slots.condition());
    }

    /// Records how many of `replicas` pods are ready.
    pub fn ready(&mut self, ready: i32, replicas: i32) {
        self.status.ready_replicas = ready;
        self.status.replicas_summary = Some(format!("{ready}/{replicas}"));
    }

    /// Writes the status, unless it equals what the object already has or
    /// the object changed since `obj` was read ([`apply::StatusWrite`]).
    pub async fn write(
        mut self,
        ctx: &Context,
        obj: &RealtimeServer,
    ) -> Result<apply::StatusWrite, Error> {
        let old = obj.status.clone().unwrap_or_default();
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        self.status.conditions =
            conditions::merge(&old.conditions, &self.wanted, obj.metadata.generation, &now);
        apply::status(&ctx.client, obj, self.status).await
    }
}

/// The condition `type_` as `obj`'s status has it now.
pub fn old_condition<'a>(obj: &'a RealtimeServer, type_: &str) -> Option<&'a Condition> {
    obj.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::conditions::{AVAILABLE, DATABASE_READY, PUBLICATION_READY};
    use crate::reconcile::validate::tests::spec;

    #[test]
    fn blocked_fills_only_the_conditions_not_yet_set() {
        let mut r = Report::new(&RealtimeServer::new("chat", spec()));
        r.set(Wanted::ok(DATABASE_READY, Reason::Connected, "ok"));
        r.set(Wanted::not(
            PUBLICATION_READY,
            Reason::PublicationNotOwned,
            "not ours",
        ));
        r.blocked("the publication");
        let reasons: Vec<(&str, Reason)> = r.wanted.iter().map(|w| (w.type_, w.reason)).collect();
        assert_eq!(
            reasons,
            vec![
                (DATABASE_READY, Reason::Connected),
                (PUBLICATION_READY, Reason::PublicationNotOwned),
                ("SlotsReady", Reason::Blocked),
                (AVAILABLE, Reason::Blocked),
            ]
        );
        assert_eq!(
            r.wanted[3].message,
            "not checked until the publication is resolved"
        );
    }
}

//! Which of the matched subscribers receive a change, and the frames they
//! get.
//!
//! Owns the verdict of each group of subscribers for one change (once per
//! group, see `authz::decide`), the subscribers whose group needs a check
//! inside PostgreSQL (handed to the table's lane, see `authz::lanes`), and
//! encoding: each payload once per variant (with or without the old values,
//! and per `select` column list) and each frame once per topic, serializer
//! and ids, its bytes shared by every socket that receives it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Index, Outbound, SocketId, Subscriber};
use crate::authz::authorizer::{Authorizer, Group};
use crate::authz::db::Principal;
use crate::authz::decide::{self, Verdict};
use crate::authz::lanes::GroupCheck;
use crate::authz::plan::PolicyPlan;
use crate::change::{Cell, Change};
use crate::phoenix::frame::{self, Frame, Vsn};
use crate::select::Selection;

/// A 2.x channel's delivery: its serializer, the binding ids, whether with
/// old values.
type ChannelDelivery = (Vsn, Vec<u32>, bool);

/// The frames of one 2.x channel: its socket, topic and the columns its
/// bindings selected (`None`: all).
type ChannelKey = (SocketId, Arc<str>, Option<Arc<Selection>>);

/// One group waiting for its check: (whether its old images are checked,
/// whether some of its subscribers get old images unchecked, who receives
/// the change).
pub(super) type GroupTargets = (bool, bool, Vec<Target>);

/// Subscribers that receive a change, and whether with its old values.
#[derive(Debug, Default)]
pub(super) struct Deliveries {
    /// 1.x topics: (topic, socket, serializer, old values).
    legacy: Vec<(Arc<str>, SocketId, Vsn, bool)>,
    /// 2.x channels: (socket, topic, selected columns) -> (serializer,
    /// binding ids, old values). Bindings of one channel that select other
    /// columns get their own frames, each with its ids, as from Supabase.
    channels: HashMap<ChannelKey, ChannelDelivery, foldhash::fast::RandomState>,
}

/// One subscriber waiting for its group's check.
#[derive(Debug, Clone)]
pub(super) enum Target {
    Legacy {
        topic: Arc<str>,
        socket: SocketId,
        vsn: Vsn,
    },
    Binding {
        socket: SocketId,
        topic: Arc<str>,
        vsn: Vsn,
        id: u32,
        select: Option<Arc<Selection>>,
    },
}

impl Deliveries {
    pub(super) fn add(&mut self, target: Target, old: bool) {
        match target {
            Target::Legacy { topic, socket, vsn } => self.legacy.push((topic, socket, vsn, old)),
            Target::Binding {
                socket,
                topic,
                vsn,
                id,
                select,
            } => {
                let entry = self
                    .channels
                    .entry((socket, topic, select))
                    .or_insert_with(|| (vsn, Vec::new(), old));
                entry.1.push(id);
                entry.2 &= old;
            }
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.legacy.is_empty() && self.channels.is_empty()
    }

    /// Encodes and queues for every socket; returns how many frames were
    /// queued, and the sockets whose queue was full in `slow`.
    pub(super) fn queue(&self, index: &Index, change: &Change, slow: &mut Vec<SocketId>) -> u64 {
        let mut queued = 0;
        self.encode(change, |socket, frame| {
            let Some(entry) = index.sockets.get(&socket) else {
                return;
            };
            match entry.tx.try_send(Outbound::Frame(frame)) {
                Ok(()) => queued += 1,
                Err(mpsc::error::TrySendError::Full(_)) => slow.push(socket),
                // The socket is going away and unregisters itself.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        });
        queued
    }

    /// Encodes each frame once and hands it to `send` for each socket that
    /// receives it, in the order of the deliveries.
    pub(super) fn encode(&self, change: &Change, mut send: impl FnMut(SocketId, Frame)) {
        let stripped = std::cell::OnceCell::new();
        let variant = |old: bool| -> &Change {
            if old {
                change
            } else {
                stripped.get_or_init(|| without_old(change))
            }
        };
        if !self.legacy.is_empty() {
            let event = change.kind.as_str();
            let mut payloads: [Option<String>; 2] = [None, None];
            let mut frames: HashMap<(&Arc<str>, Vsn, bool), Frame> = HashMap::new();
            // Subscribers of one topic come together: the frame of the one
            // before is most often the one wanted, without hashing the topic.
            let mut last: Option<(&Arc<str>, Vsn, bool, Frame)> = None;
            for (topic, socket, vsn, old) in &self.legacy {
                if let Some((t, v, o, frame)) = &last {
                    if Arc::ptr_eq(t, topic) && v == vsn && o == old {
                        send(*socket, frame.clone());
                        continue;
                    }
                }
                let payload =
                    payloads[*old as usize].get_or_insert_with(|| variant(*old).legacy_json());
                let frame = frames
                    .entry((topic, *vsn, *old))
                    .or_insert_with(|| frame::encode(*vsn, None, None, topic, event, payload))
                    .clone();
                last = Some((topic, *vsn, *old, frame.clone()));
                send(*socket, frame);
            }
        }
        if !self.channels.is_empty() {
            let mut data: [Option<String>; 2] = [None, None];
            let mut selected: HashMap<(bool, &Arc<Selection>), String> = HashMap::new();
            type FrameCache<'a> = HashMap<
                (
                    &'a Arc<str>,
                    Vsn,
                    Vec<u32>,
                    bool,
                    Option<&'a Arc<Selection>>,
                ),
                Frame,
            >;
            let mut frames: FrameCache = HashMap::new();
            for ((socket, topic, select), (vsn, ids, old)) in &self.channels {
                let mut ids = ids.clone();
                ids.sort_unstable();
                ids.dedup();
                let data = match select {
                    None => data[*old as usize]
                        .get_or_insert_with(|| crate::typed::postgres_changes_data(variant(*old))),
                    Some(s) => selected.entry((*old, s)).or_insert_with(|| {
                        crate::typed::postgres_changes_data_selected(variant(*old), s)
                    }),
                };
                let frame = frames
                    .entry((topic, *vsn, ids, *old, select.as_ref()))
                    .or_insert_with_key(|(topic, vsn, ids, _, _)| {
                        let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
                        let payload = format!("{{\"ids\":[{}],\"data\":{}}}", ids.join(","), data);
                        frame::encode(*vsn, None, None, topic, "postgres_changes", &payload)
                    })
                    .clone();
                send(*socket, frame);
            }
        }
    }
}

/// The change with its old values left out (`old_record` empty).
fn without_old(change: &Change) -> Change {
    let mut c = change.clone();
    if let Some(old) = c.old_record.as_mut() {
        old.iter_mut().for_each(|cell| *cell = Cell::Absent);
    }
    c.unlimited = None;
    c
}

/// The groups waiting for a check, with their subscribers.
#[derive(Default)]
pub(super) struct Pending {
    groups: HashMap<u64, PendingGroup>,
}

struct PendingGroup {
    principal: Arc<Principal>,
    plan: Arc<PolicyPlan>,
    images: Vec<String>,
    old_checked: bool,
    old_unchecked: bool,
    targets: Vec<Target>,
}

impl Pending {
    pub(super) fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The checks for the lane, and what to deliver once they are done.
    pub(super) fn into_parts(self) -> (Vec<GroupCheck>, Vec<GroupTargets>) {
        self.groups
            .into_values()
            .map(|g| {
                (
                    GroupCheck {
                        principal: g.principal,
                        plan: g.plan,
                        images: g.images,
                    },
                    (g.old_checked, g.old_unchecked, g.targets),
                )
            })
            .unzip()
    }
}

/// Results of checks in, deliveries out.
pub(super) fn after_checks(
    mut deliveries: Deliveries,
    waiting: Vec<GroupTargets>,
    results: Vec<Vec<bool>>,
) -> Deliveries {
    for ((old_checked, old_unchecked, targets), passed) in waiting.into_iter().zip(results) {
        if let Verdict::Deliver { old } = decide::after_check(old_checked, old_unchecked, &passed) {
            for t in targets {
                deliveries.add(t, old);
            }
        }
    }
    deliveries
}

/// The verdicts of one change, computed once per group.
pub(super) struct Verdicts<'a> {
    authz: Option<&'a Arc<Authorizer>>,
    change: &'a Change,
    cache: HashMap<u64, (Verdict, Option<Arc<PolicyPlan>>)>,
}

impl<'a> Verdicts<'a> {
    pub(super) fn new(authz: Option<&'a Arc<Authorizer>>, change: &'a Change) -> Self {
        Verdicts {
            authz,
            change,
            cache: HashMap::new(),
        }
    }

    /// Routes one matched subscriber: to `now`, to `pending`, or nowhere.
    pub(super) fn route(
        &mut self,
        who: Option<&Subscriber>,
        target: Target,
        now: &mut Deliveries,
        pending: &mut Pending,
    ) {
        let Some(who) = who else {
            // Channels not secured: everyone subscribed receives everything.
            // Secured, a subscription that acts as nobody receives nothing
            // (every secured join gives one a group: this only fails closed).
            if self.authz.is_none() {
                now.add(target, true);
            }
            return;
        };
        let (verdict, plan) = self.verdict(who);
        match verdict {
            Verdict::Deliver { old } => now.add(target, old),
            Verdict::Skip | Verdict::Undecidable => {}
            Verdict::Check {
                images,
                old_checked,
                old_unchecked,
            } => {
                let Some(plan) = plan else { return };
                pending
                    .groups
                    .entry(who.group.id)
                    .or_insert_with(|| PendingGroup {
                        principal: who.group.principal.clone(),
                        plan,
                        images,
                        old_checked,
                        old_unchecked,
                        targets: Vec::new(),
                    })
                    .targets
                    .push(target);
            }
        }
    }

    fn verdict(&mut self, who: &Subscriber) -> (Verdict, Option<Arc<PolicyPlan>>) {
        if let Some(v) = self.cache.get(&who.group.id) {
            return v.clone();
        }
        let table = self.change.table.id;
        let access = who
            .access
            .clone()
            .or_else(|| self.authz.and_then(|a| a.cached_access(table, &who.group)));
        let decided = match access {
            Some(access) => {
                let verdict = decide::decide(&access, self.change);
                if verdict == Verdict::Undecidable {
                    if let Some(a) = self.authz {
                        a.stats.undecidable.fetch_add(1, Ordering::Relaxed);
                        crate::metrics::METRICS.rls_undecidable.inc();
                        a.undecidable(self.change, &who.group);
                    }
                }
                (verdict, access.plan)
            }
            None => {
                // A table this group has not been looked at for yet (a
                // schema-wide subscription, a table published since): this
                // change is withheld from it while its access is computed.
                if let Some(a) = self.authz {
                    a.stats.unresolved.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::METRICS.rls_undecidable.inc();
                    resolve_later(a, table, who.group.clone());
                }
                (Verdict::Undecidable, None)
            }
        };
        self.cache.insert(who.group.id, decided.clone());
        decided
    }
}

fn resolve_later(authz: &Arc<Authorizer>, table: u32, group: Group) {
    let authz = authz.clone();
    tokio::spawn(async move {
        if let Err(e) = authz.access(table, &group).await {
            tracing::warn!(table, role = %group.principal.role, error = %e, "computing a group's access to a table failed");
        }
    });
}

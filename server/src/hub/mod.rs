//! The subscription index and the fan-out of changes to sockets.
//!
//! Owns which socket listens to which topic, and the per-socket bounded send
//! queues. The replication reader calls [`Hub::dispatch`] for each change in
//! commit order: it finds the matching topics with a few hash lookups
//! (`realtime:*`, schema, table, and one lookup per filtered column), encodes
//! the payload once and each topic's frame once per serializer, and hands the
//! shared bytes to every matching socket's queue without waiting (the
//! changes of one replication read as one queue item per socket; those that
//! reach exactly one 1.x topic's sockets as one run shared by all of them,
//! see [`SharedRun`]). A socket
//! whose queue is full is closed as a slow consumer; the reader never waits
//! for a client. Knows nothing of WebSocket framing or of PostgreSQL.
//!
//! The members of 2.x channels (broadcast, presence) are in `members`;
//! their broadcasts and presences cross servers through the [`Cluster`]
//! the hub owns (its bus is started by `serve`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;

use crate::authz::authorizer::{Authorizer, ChannelRights, Group, GroupAccess};
use crate::authz::lanes::Item;
use crate::change::{Change, ChangeKind};
use crate::cluster::{BusError, Cluster, ClusterSettings, Sent, TopicKey};
use crate::limits::MemoryBudget;
use crate::metrics::METRICS;
use crate::phoenix::close;
use crate::phoenix::frame::{self, Frame, Vsn};

mod bindings;
mod deliver;
mod legacy;
mod members;
mod queue;
#[cfg(test)]
mod tests;
pub use bindings::Binding;
use bindings::BindingIndex;
use deliver::{Deliveries, Pending, Target, Verdicts};
use legacy::LegacyIndex;
pub use legacy::LegacyTopic;
use members::{Member, Members};
pub use queue::{queued_bytes, QueueRx, QueueTx};

pub type SocketId = u64;

/// Who a subscription acts as, when channels are secured: its group (role
/// and claims) and, for a subscription to one table, what the group may see
/// of it (as the subscription is indexed; `None`: looked up per change).
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub group: Group,
    /// The table's OID, for a subscription to one table.
    pub table: Option<u32>,
    pub access: Option<GroupAccess>,
}

/// A subscription whose group lost access to its table (a revoked grant):
/// the hub removed it; the socket tells its client.
#[derive(Debug, Clone)]
pub struct Revoked {
    pub socket: SocketId,
    pub topic: Arc<str>,
    pub vsn: Vsn,
    /// `schema.table`
    pub table: String,
    pub reason: String,
}

/// Most changes a [`Batch`] holds before the stream flushes it: bounds how
/// long the first of them waits behind the others being routed.
pub const BATCH_MAX_CHANGES: usize = 64;

/// Most (socket, frame) pairs a [`Batch`] holds before the stream flushes
/// it: each is a frame handle (the frame's bytes are shared), about 40
/// bytes with its share of the map, so a batch holds at most ~10 MiB of
/// handles, beside the frames of at most [`BATCH_MAX_CHANGES`] changes.
pub const BATCH_MAX_ENTRIES: usize = 1 << 18;

/// Changes being routed as one batch: the replication stream routes the
/// messages of one read (those ready without waiting) through one
/// `Routing`, and each socket gets their frames as one item of its queue
/// when it is dropped (its writer wakes once for them, not once per
/// change).
///
/// Holds the hub's index for reading from the first change to the last,
/// as routing one change always did: a channel's leave, which takes the
/// index for writing, happens before the batch or after its frames are
/// queued, never between, so nothing reaches a channel after its
/// `phx_close` reply. Must not be held across an await (the stream drops
/// it before it waits for the next read). A change that goes through a
/// row level security lane queues the batch first, so every socket still
/// gets every change in order.
pub struct Routing<'h> {
    hub: &'h Arc<Hub>,
    index: std::sync::RwLockReadGuard<'h, Index>,
    batch: Batch,
}

impl Routing<'_> {
    /// Routes `change`: its frames wait in the batch.
    pub fn dispatch(&mut self, change: &Change) {
        self.hub.dispatch_into(change, &self.index, &mut self.batch);
    }

    /// Whether the batch should be queued before another change is routed.
    pub fn is_full(&self) -> bool {
        self.batch.changes >= BATCH_MAX_CHANGES || self.batch.entries >= BATCH_MAX_ENTRIES
    }
}

impl Drop for Routing<'_> {
    /// Queues the batch, however routing ends.
    fn drop(&mut self) {
        self.hub.flush(&self.index, &mut self.batch);
    }
}

/// Frames decided for sockets and not yet queued (see [`Routing`]). Not
/// counted in the queued bytes until queued (bounded by
/// [`BATCH_MAX_CHANGES`] and [`BATCH_MAX_ENTRIES`]).
#[derive(Debug, Default)]
struct Batch {
    /// Changes whose sockets all get the same frames, shared by them: the
    /// run comes before every frame of `frames` (a change that cannot join
    /// the run goes to `frames`, and once `frames` holds any, none joins it).
    shared: Option<SharedRun>,
    /// The sockets a change's bindings reach, while [`Hub::share`] looks.
    scratch: Vec<(SocketId, Vsn)>,
    frames: SocketMap<Vec<Frame>>,
    changes: usize,
    entries: usize,
}

/// Changes that reach the same sockets with the same frame: exactly the
/// sockets of one 1.x topic, or 2.x channels that each have one binding, all
/// on the same topic name with the same binding id and `select` (channels
/// not secured; nothing else matched). Their frames are encoded once per
/// serializer and handed to every one of those sockets as one shared [`Run`]
/// when the batch is queued. Routing such a change costs one encoding
/// however many sockets get it; the per-socket work is one queue operation
/// per batch (and, for 2.x channels, a visit of each binding, as matching
/// always did).
#[derive(Debug)]
struct SharedRun {
    source: RunSource,
    topic: Arc<str>,
    /// The sockets and their serializers when the run began: every change
    /// of the run reaches exactly these (the index cannot change while the
    /// batch is routed: [`Routing`] holds it).
    sockets: Vec<(SocketId, Vsn)>,
    /// Frames for V1 and V2 sockets; encoded only for a serializer in use.
    frames: [Vec<Frame>; 2],
    vsns: [bool; 2],
    /// For 2.x channels whose bindings on the table do not depend on the
    /// row: the table (schema, name) and kind of change the run's sockets
    /// were found for. Another such change reaches the same bindings, so it
    /// joins without visiting them.
    reach: Option<(String, String, ChangeKind)>,
}

impl SharedRun {
    /// Appends `change`'s frames, one per serializer in use.
    fn push(&mut self, change: &Change) {
        let (event, payload) = match &self.source {
            RunSource::Topic => (change.kind.as_str(), change.legacy_json()),
            RunSource::Channels { id, select } => {
                let data = match select {
                    None => crate::typed::postgres_changes_data(change),
                    Some(s) => crate::typed::postgres_changes_data_selected(change, s),
                };
                (
                    "postgres_changes",
                    format!("{{\"ids\":[{id}],\"data\":{data}}}"),
                )
            }
        };
        for vsn in [Vsn::V1, Vsn::V2] {
            if self.vsns[vsn as usize] {
                self.frames[vsn as usize].push(frame::encode(
                    vsn,
                    None,
                    None,
                    &self.topic,
                    event,
                    &payload,
                ));
            }
        }
    }
}

/// Queues `item` (`n` frames) for `socket` without waiting: counted in
/// `queued`, or `socket` noted in `slow` when its queue cannot take it (a
/// closed queue's socket is going away and unregisters itself).
fn offer(
    entry: &SocketEntry,
    socket: SocketId,
    item: Outbound,
    n: u64,
    queued: &mut u64,
    slow: &mut Vec<SocketId>,
) {
    match entry.tx.try_send(item) {
        Ok(()) => *queued += n,
        Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => slow.push(socket),
        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {}
    }
}

/// What a [`SharedRun`]'s changes reach.
#[derive(Debug, PartialEq)]
enum RunSource {
    /// The sockets of one 1.x topic (the run's `topic`, the index's own).
    Topic,
    /// 2.x channels named the run's `topic`, each with one binding, all of
    /// this id and selection.
    Channels {
        id: u32,
        select: Option<Arc<crate::select::Selection>>,
    },
}

/// Text frames handed to a socket's queue as one item, shared by every
/// socket that gets the same frames (a topic's sockets get one run per
/// batch): one allocation, however many sockets.
#[derive(Debug, Clone)]
pub struct Run(Arc<RunFrames>);

#[derive(Debug)]
struct RunFrames {
    frames: Vec<Frame>,
    bytes: usize,
}

impl Run {
    pub fn new(frames: Vec<Frame>) -> Run {
        let bytes = frames.iter().map(|f| f.len()).sum();
        Run(Arc::new(RunFrames { frames, bytes }))
    }

    pub fn frames(&self) -> &[Frame] {
        &self.0.frames
    }

    /// The frames' bytes, together.
    pub fn bytes(&self) -> usize {
        self.0.bytes
    }
}

/// A map keyed by socket ids: hashed with foldhash (the ids are the
/// server's own, so no client can aim at its buckets).
pub(crate) type SocketMap<V> = HashMap<SocketId, V, foldhash::fast::RandomState>;

impl Batch {
    fn push(&mut self, socket: SocketId, frame: Frame) {
        self.frames
            .entry(socket)
            .or_insert_with(|| Vec::with_capacity(4))
            .push(frame);
        self.entries += 1;
    }
}

/// What a socket's writer sends, in order.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A text frame, possibly shared by many sockets (reference-counted:
    /// each socket's WebSocket writes the same bytes, none copies them).
    Frame(Frame),
    /// A binary frame (a broadcast with a binary payload, for vsn 2.0.0),
    /// shared the same way.
    Binary(bytes::Bytes),
    /// Text frames handed over at once (the changes of one replication
    /// read, see [`Batch`]): one queue operation and one wake-up of the
    /// writer for all of them. Counts as its frames against the queue's
    /// depth.
    Frames(Vec<Frame>),
    /// The same, shared by many sockets (see [`SharedRun`]).
    Run(Run),
    /// Close the socket with this code (one of `phoenix::close`) and reason.
    Close(u16, String),
}

struct SocketEntry {
    tx: QueueTx,
    cancel: CancellationToken,
}

#[derive(Default)]
struct Index {
    sockets: SocketMap<SocketEntry>,
    legacy: LegacyIndex,
    bindings: BindingIndex,
}

/// The handle a socket task gets when it registers.
pub struct Registration {
    pub id: SocketId,
    pub rx: QueueRx,
    /// A sender into the socket's own queue, for replies.
    pub tx: QueueTx,
    /// Cancelled when the hub closes the socket (slow consumer, shutdown).
    pub cancel: CancellationToken,
    /// Cancelled when the server shuts down: the session stops reading, and
    /// the writer sends what is queued, then 1001 (bounded in time).
    pub shutdown: CancellationToken,
    /// Held by the socket's writer until it has written its last frame, so
    /// a shutdown can wait for the close frames to leave.
    pub writer_guard: WriterGuard,
}

/// Counts a live socket writer; dropped when the writer ends.
pub struct WriterGuard(Arc<AtomicU64>);

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Hub {
    index: RwLock<Index>,
    next_id: AtomicU64,
    queue_depth: usize,
    shutdown: CancellationToken,
    writers: Arc<AtomicU64>,
    /// When channels are secured: decides who sees each change.
    authz: Option<Arc<Authorizer>>,
    /// The position of the last change dispatched (see `authz::lanes::Inflight`).
    seq: AtomicU64,
    /// `MAX_PRESENCE_MEMBERS`: presences tracked on one topic.
    max_presence_members: usize,
    /// `SOCKET_QUEUE_BYTES`: bytes queued for one socket.
    queue_bytes: usize,
    /// Members of 2.x channels, by topic (the cluster delivers to them too).
    members: Arc<Members>,
    cluster: Arc<Cluster>,
    /// `MEMORY_BUDGET_MB`: past it, broadcasts from this server's clients
    /// are refused (what is already accepted is still delivered).
    memory_budget: Option<MemoryBudget>,
}

impl Hub {
    /// At most `bytes` queued for one socket (`SOCKET_QUEUE_BYTES`).
    pub fn with_queue_bytes(mut self, bytes: usize) -> Self {
        self.queue_bytes = bytes;
        self
    }

    /// At most `max` presences tracked on one topic, over the whole cluster
    /// as this server sees it (`MAX_PRESENCE_MEMBERS`).
    pub fn with_max_presence_members(mut self, max: usize) -> Self {
        self.max_presence_members = max;
        self
    }

    /// Refuses broadcasts past `budget` (`MEMORY_BUDGET_MB`).
    pub fn with_memory_budget(mut self, budget: MemoryBudget) -> Self {
        self.memory_budget = Some(budget);
        self
    }

    /// A hub in a cluster of the default settings (its bus is not started:
    /// broadcasts and presences stay on this server).
    pub fn new(queue_depth: usize) -> Self {
        Self::with_cluster(queue_depth, ClusterSettings::default())
    }

    /// A hub whose 2.x channels are shared with the cluster `settings`
    /// name, once `cluster::bus::run` runs for [`Hub::cluster`].
    pub fn with_cluster(queue_depth: usize, settings: ClusterSettings) -> Self {
        let members = Arc::new(Members::new(queue_depth));
        Hub {
            index: RwLock::new(Index::default()),
            next_id: AtomicU64::new(1),
            queue_depth,
            shutdown: CancellationToken::new(),
            writers: Arc::new(AtomicU64::new(0)),
            authz: None,
            seq: AtomicU64::new(0),
            max_presence_members: crate::config::DEFAULT_MAX_PRESENCE_MEMBERS,
            queue_bytes: crate::config::DEFAULT_SOCKET_QUEUE_BYTES,
            cluster: Cluster::new(settings, members.clone()),
            memory_budget: None,
            members,
        }
    }

    /// This server's membership of the cluster.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Deliveries decided by `authz` (channels secured): each change
    /// reaches a subscription only if its role and claims may read the row.
    pub fn with_authorizer(mut self, authz: Option<Arc<Authorizer>>) -> Self {
        self.authz = authz;
        self
    }

    pub fn authorizer(&self) -> Option<&Arc<Authorizer>> {
        self.authz.as_ref()
    }

    /// The position of the last change dispatched: the confirmed position
    /// may pass a transaction only once no change up to its last one waits
    /// in a lane (`Authorizer::lanes.inflight`).
    pub fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    pub fn register(&self) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = queue::channel(self.queue_depth, self.queue_bytes);
        let cancel = CancellationToken::new();
        self.write().sockets.insert(
            id,
            SocketEntry {
                tx: tx.clone(),
                cancel: cancel.clone(),
            },
        );
        Registration {
            id,
            rx,
            tx,
            cancel,
            shutdown: self.shutdown.clone(),
            writer_guard: {
                self.writers.fetch_add(1, Ordering::SeqCst);
                WriterGuard(self.writers.clone())
            },
        }
    }

    /// Forgets a socket and its subscriptions.
    pub fn unregister(&self, id: SocketId, topics: impl IntoIterator<Item = LegacyTopic>) {
        let mut index = self.write();
        index.sockets.remove(&id);
        for t in topics {
            index.legacy.remove(&t, id);
        }
    }

    pub fn subscribe_legacy(
        &self,
        id: SocketId,
        vsn: Vsn,
        key: &LegacyTopic,
        topic: &str,
        subscriber: Option<Subscriber>,
    ) {
        self.write()
            .legacy
            .entry(key, topic)
            .sockets
            .insert(id, legacy::LegacySub { vsn, subscriber });
    }

    pub fn unsubscribe_legacy(&self, id: SocketId, key: &LegacyTopic) {
        self.write().legacy.remove(key, id);
    }

    /// Socket writers still running (a shutdown waits for them to finish
    /// sending their close frames).
    pub fn live_writers(&self) -> u64 {
        self.writers.load(Ordering::SeqCst)
    }

    pub fn socket_count(&self) -> usize {
        self.read().sockets.len()
    }

    /// Closes every socket with 1001 (shutdown), after the frames already
    /// in its queue: they were confirmed to PostgreSQL, so they must go out.
    /// A socket whose queue is full is closed at once.
    pub fn close_all(&self) {
        for entry in self.read().sockets.values() {
            let close = Outbound::Close(close::GOING_AWAY, close::SHUTTING_DOWN.into());
            if entry.tx.try_send(close).is_err() {
                entry.cancel.cancel();
            }
        }
        self.shutdown.cancel();
    }

    /// Hands `change` to every socket whose topic matches, in the order
    /// dispatch is called. Never waits: when channels are secured, the
    /// subscribers whose group needs a check inside PostgreSQL get the
    /// change from the table's lane, after the check, still in order; so do
    /// all of the table's subscribers while its lane holds earlier changes.
    pub fn dispatch(self: &Arc<Self>, change: &Change) {
        self.routing().dispatch(change);
    }

    /// Starts a batch of changes to route (see [`Routing`]).
    pub fn routing(self: &Arc<Self>) -> Routing<'_> {
        Routing {
            hub: self,
            index: self.read(),
            batch: Batch::default(),
        }
    }

    fn dispatch_into(self: &Arc<Self>, change: &Change, index: &Index, batch: &mut Batch) {
        METRICS.changes_received.inc();
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        if self.authz.is_none() && Self::share(change, index, batch) {
            return;
        }
        let mut now = Deliveries::default();
        let mut pending = Pending::default();
        {
            let mut verdicts = Verdicts::new(self.authz.as_ref(), change);
            index.legacy.matching(change, |subs| {
                for (&socket, sub) in &subs.sockets {
                    let target = Target::Legacy {
                        topic: subs.topic.clone(),
                        socket,
                        vsn: sub.vsn,
                    };
                    verdicts.route(sub.subscriber.as_ref(), target, &mut now, &mut pending);
                }
            });
            index.bindings.matching(change, |b| {
                let target = Target::Binding {
                    socket: b.socket,
                    topic: b.topic.clone(),
                    vsn: b.vsn,
                    id: b.id,
                    select: b.select.clone(),
                };
                verdicts.route(b.subscriber.as_ref(), target, &mut now, &mut pending);
            });
            let busy = self
                .authz
                .as_ref()
                .is_some_and(|a| a.lanes.busy(change.table.id));
            if !busy && !now.is_empty() {
                now.encode(change, |socket, frame| batch.push(socket, frame));
                batch.changes += 1;
                now = Deliveries::default();
            }
        }
        if pending.is_empty() && now.is_empty() {
            return;
        }
        let Some(authz) = &self.authz else {
            return;
        };
        // The lane may deliver before the batch would be flushed.
        self.flush(index, batch);
        // Behind the table's earlier changes: the checks, then everyone.
        let (checks, waiting) = pending.into_parts();
        let hub = self.clone();
        let change = change.clone();
        authz.lanes.submit(
            change.table.id,
            Item {
                seq,
                checks,
                deliver: Box::new(move |results| {
                    let deliveries = deliver::after_checks(now, waiting, results);
                    hub.queue_deliveries(&change, &deliveries);
                }),
            },
        );
    }

    /// Appends `change` to the batch's shared run when all the sockets it
    /// reaches get the same frame, the same sockets as the run's changes
    /// (see [`SharedRun`]), and the batch holds no other frames; false
    /// (nothing done) when it must be routed socket by socket. Channels not
    /// secured only: there every subscriber receives the change whole.
    fn share(change: &Change, index: &Index, batch: &mut Batch) -> bool {
        if !batch.frames.is_empty() {
            return false;
        }
        let mut topics = 0;
        let mut only = None;
        index.legacy.matching(change, |subs| {
            if !subs.sockets.is_empty() {
                topics += 1;
                only = Some(subs);
            }
        });
        if topics > 1 {
            return false;
        }
        if let Some(run) = &mut batch.shared {
            let same_reach = run.reach.as_ref().is_some_and(|(schema, table, kind)| {
                *kind == change.kind
                    && *schema == change.table.schema
                    && *table == change.table.name
            });
            if topics == 0 && same_reach && !index.bindings.depends_on_row(change) {
                run.push(change);
                batch.changes += 1;
                return true;
            }
        }
        // 2.x channels: alike when each is its channel's only binding (so
        // its frame carries its id alone) with the first one's topic, id
        // and selection.
        let mut bound = 0usize;
        let mut alike: Option<&Binding> = None;
        let mut differ = false;
        let reached = &mut batch.scratch;
        reached.clear();
        index.bindings.matching_alone(change, |b, alone| {
            bound += 1;
            if differ {
                return;
            }
            let same = match alike {
                None => true,
                Some(first) => {
                    first.id == b.id && first.topic == b.topic && first.select == b.select
                }
            };
            if !alone || !same {
                differ = true;
                return;
            }
            alike.get_or_insert(b);
            reached.push((b.socket, b.vsn));
        });
        let (source, topic) = match (only, alike) {
            (Some(subs), None) if bound == 0 => (RunSource::Topic, &subs.topic),
            (None, Some(b)) if !differ => (
                RunSource::Channels {
                    id: b.id,
                    select: b.select.clone(),
                },
                &b.topic,
            ),
            _ => return false,
        };
        match &batch.shared {
            Some(run) if run.source != source => return false,
            Some(run) if source == RunSource::Topic && !Arc::ptr_eq(&run.topic, topic) => {
                return false
            }
            Some(run)
                if source != RunSource::Topic
                    && (run.topic != *topic || run.sockets != batch.scratch) =>
            {
                return false
            }
            _ => {}
        }
        let reach =
            (source != RunSource::Topic && !index.bindings.depends_on_row(change)).then(|| {
                (
                    change.table.schema.clone(),
                    change.table.name.clone(),
                    change.kind,
                )
            });
        let run = batch.shared.get_or_insert_with(|| {
            let sockets: Vec<(SocketId, Vsn)> = match (&source, only) {
                (RunSource::Topic, Some(subs)) => subs
                    .sockets
                    .iter()
                    .map(|(&socket, sub)| (socket, sub.vsn))
                    .collect(),
                _ => std::mem::take(&mut batch.scratch),
            };
            let mut vsns = [false; 2];
            for (_, vsn) in &sockets {
                vsns[*vsn as usize] = true;
            }
            SharedRun {
                source,
                topic: topic.clone(),
                sockets,
                frames: [Vec::new(), Vec::new()],
                vsns,
                reach,
            }
        });
        run.push(change);
        batch.changes += 1;
        true
    }

    /// Hands each socket its frames from `batch` (one queue item each, the
    /// shared run first) and empties it; a socket whose queue cannot take
    /// them is closed as a slow consumer.
    fn flush(&self, index: &Index, batch: &mut Batch) {
        let mut slow = Vec::new();
        let mut queued = 0u64;
        if let Some(run) = batch.shared.take() {
            let runs = run.frames.map(|frames| match frames.len() {
                0 => None,
                1 => Some(Outbound::Frame(frames[0].clone())),
                _ => Some(Outbound::Run(Run::new(frames))),
            });
            for (socket, vsn) in run.sockets {
                let (Some(entry), Some(item)) = (index.sockets.get(&socket), &runs[vsn as usize])
                else {
                    continue;
                };
                let n = match item {
                    Outbound::Run(r) => r.frames().len() as u64,
                    _ => 1,
                };
                offer(entry, socket, item.clone(), n, &mut queued, &mut slow);
            }
        }
        if batch.frames.is_empty() {
            batch.changes = 0;
            METRICS.frames_queued.inc_by(queued);
            self.close_slow_in(index, slow);
            return;
        }
        // A socket whose queue refused the run gets nothing after it: it is
        // closed, and must not see later changes with the run's missing.
        let refused: SocketMap<()> = slow.iter().map(|&s| (s, ())).collect();
        for (socket, mut frames) in batch.frames.drain() {
            if refused.contains_key(&socket) {
                continue;
            }
            let Some(entry) = index.sockets.get(&socket) else {
                continue;
            };
            let n = frames.len() as u64;
            let item = if frames.len() == 1 {
                Outbound::Frame(frames.pop().expect("one frame"))
            } else {
                Outbound::Frames(frames)
            };
            offer(entry, socket, item, n, &mut queued, &mut slow);
        }
        batch.changes = 0;
        batch.entries = 0;
        METRICS.frames_queued.inc_by(queued);
        self.close_slow_in(index, slow);
    }

    /// Queues decided deliveries (from a lane).
    fn queue_deliveries(&self, change: &Change, deliveries: &Deliveries) {
        let mut slow = Vec::new();
        {
            let index = self.read();
            let queued = deliveries.queue(&index, change, &mut slow);
            METRICS.frames_queued.inc_by(queued);
        }
        if !slow.is_empty() {
            self.close_slow(slow);
        }
    }

    /// After a catalog change (`Authorizer::generation`): every binding on a
    /// table takes its group's new access and is indexed by it; those whose
    /// group lost access are removed and returned, for their sockets to
    /// tell the clients. 1.x subscriptions are returned the same way.
    pub fn refresh_access(&self) -> Vec<Revoked> {
        let Some(authz) = &self.authz else {
            return Vec::new();
        };
        let mut revoked = Vec::new();
        let mut index = self.write();
        for (key, socket, topic, table, subscriber) in index.bindings.secured() {
            let (Some(_), Some(table_oid)) = (&subscriber.access, subscriber.table) else {
                continue;
            };
            let Some(new) = authz.cached_access(table_oid, &subscriber.group) else {
                continue;
            };
            if let crate::authz::plan::Access::Denied(reason) = &new.access {
                if let Some(b) = index.bindings.remove_binding(key) {
                    revoked.push(Revoked {
                        socket,
                        topic,
                        vsn: b.vsn,
                        table: format!("{}.{}", b.schema, table.unwrap_or_default()),
                        reason: reason.clone(),
                    });
                }
                continue;
            }
            // Always: even an equal access may come with another plan
            // (the policies' text changed), which checks decide with.
            index.bindings.set_access(key, Some(new));
        }
        revoked.extend(index.legacy.revoked(authz));
        revoked
    }

    /// Tells each socket whose subscription [`Hub::refresh_access`]
    /// removed: a `system` error naming the table and why (the channel
    /// stays joined; its other subscriptions go on).
    pub fn notify_revoked(&self, revoked: &[Revoked]) {
        let index = self.read();
        for r in revoked {
            let Some(entry) = index.sockets.get(&r.socket) else {
                continue;
            };
            let short = r.topic.strip_prefix("realtime:").unwrap_or(&r.topic);
            let system = serde_json::json!({"extension": "postgres_changes", "status": "error",
                "message": format!("{}: access revoked: {}", r.table, r.reason),
                "channel": short});
            let frame = frame::encode(r.vsn, None, None, &r.topic, "system", &system.to_string());
            tracing::info!(socket = r.socket, topic = %r.topic, table = %r.table, reason = %r.reason,
                "a subscription lost its access to its table");
            let _ = entry.tx.try_send(Outbound::Frame(frame));
        }
    }

    /// Adds a channel's `postgres_changes` bindings.
    pub fn add_bindings(&self, bindings: Vec<Binding>) {
        let mut index = self.write();
        for b in bindings {
            index.bindings.add(b);
        }
    }

    /// [`Hub::add_bindings`], then `then` before the index is unlocked: no
    /// change reaches the bindings before what `then` queues, and it is
    /// queued only once they are subscribed. `then` must not call the hub.
    pub fn add_bindings_then<R>(&self, bindings: Vec<Binding>, then: impl FnOnce() -> R) -> R {
        let mut index = self.write();
        for b in bindings {
            index.bindings.add(b);
        }
        then()
    }

    /// Makes `socket` a member of the 2.x channel `topic`, for broadcast and
    /// presence; returns the cluster's `presence_state` payload of it, read
    /// in one step with the joining (no diff falls between them).
    pub fn join_channel(
        &self,
        socket: SocketId,
        topic: &TopicKey,
        vsn: Vsn,
        self_broadcast: bool,
    ) -> Arc<str> {
        self.join_channel_reading(socket, topic, vsn, self_broadcast, ChannelRights::ALL)
    }

    /// [`Hub::join_channel`] for a member that receives only what `reads`
    /// allows (a private channel): broadcasts, presence diffs and states.
    pub fn join_channel_reading(
        &self,
        socket: SocketId,
        topic: &TopicKey,
        vsn: Vsn,
        self_broadcast: bool,
        reads: ChannelRights,
    ) -> Arc<str> {
        let Some((tx, cancel)) = self
            .read()
            .sockets
            .get(&socket)
            .map(|e| (e.tx.clone(), e.cancel.clone()))
        else {
            return "{}".into();
        };
        let member = Member {
            vsn,
            self_broadcast,
            tx,
            cancel,
            reads,
        };
        let ((), state) = self
            .cluster
            .join(topic, || self.members.insert(topic, socket, member));
        state
    }

    /// Removes a 2.x channel of `socket`: its bindings, its membership, its
    /// presence (telling the members on every server).
    pub fn leave_channel(&self, socket: SocketId, topic: &TopicKey) {
        self.write().bindings.remove_channel(socket, &topic.topic);
        self.members.remove(topic, socket);
        self.cluster.untrack(topic, socket);
    }

    /// A broadcast (`payload` is the whole `{"type", "event", "payload"}`)
    /// to every member of `topic` on every server, except `from` unless it
    /// asked for its own. This server's members get it now, the others'
    /// when the bus brings it, in the order of the calls.
    ///
    /// Refused whole (nobody gets it) when over `CLUSTER_MAX_MESSAGE_BYTES`;
    /// when the bus is down or lagging it reaches this server's members only,
    /// and the error says so. Await the [`Sent`] to know the cluster has it.
    pub fn broadcast(
        &self,
        topic: &TopicKey,
        from: Option<SocketId>,
        payload: &str,
    ) -> Result<Sent, BusError> {
        self.within_budget()?;
        let sent = self.cluster.publish(topic, "broadcast", payload);
        if !matches!(sent, Err(BusError::TooLarge { .. })) {
            self.members.relay(topic, from, "broadcast", payload);
        }
        sent
    }

    /// `Err` past `MEMORY_BUDGET_MB`: a broadcast is new work, refused.
    fn within_budget(&self) -> Result<(), BusError> {
        match self.memory_budget.filter(MemoryBudget::exceeded) {
            Some(budget) => {
                METRICS.limit_reached(crate::config::var::MEMORY_BUDGET_MB);
                Err(BusError::OverBudget { mb: budget.mb })
            }
            None => Ok(()),
        }
    }

    /// [`Hub::broadcast`] of a broadcast whose payload is the bytes `data`
    /// (`event` is the user's): members on vsn 2.0.0 get it as a binary
    /// frame, those on vsn 1.0.0 cannot read one and do not.
    pub fn broadcast_binary(
        &self,
        topic: &TopicKey,
        from: Option<SocketId>,
        event: &str,
        data: &[u8],
    ) -> Result<Sent, BusError> {
        self.within_budget()?;
        let sent = self.cluster.publish_binary(topic, event, data);
        if !matches!(sent, Err(BusError::TooLarge { .. })) {
            self.members.relay_binary(topic, from, event, data);
        }
        sent
    }

    /// Tracks `socket`'s presence on `topic`: this server's members get the
    /// diff now, the other servers' members when the bus brings it. `Err`
    /// with the limit (`MAX_PRESENCE_MEMBERS`) when the topic is full and
    /// the socket is not tracked there yet.
    pub fn track(
        &self,
        socket: SocketId,
        topic: &TopicKey,
        key: String,
        meta: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), usize> {
        self.cluster
            .track(topic, socket, key, meta, self.max_presence_members)
    }

    /// Untracks `socket`'s presence on `topic`, everywhere.
    pub fn untrack(&self, socket: SocketId, topic: &TopicKey) {
        self.cluster.untrack(topic, socket);
    }

    /// Closes a socket whose own replies filled its queue (a client that
    /// sends requests without reading the answers); counted like any other
    /// slow consumer.
    pub fn close_slow_consumer(&self, id: SocketId) {
        self.close_slow(vec![id]);
    }

    fn close_slow(&self, ids: Vec<SocketId>) {
        if !ids.is_empty() {
            self.close_slow_in(&self.read(), ids);
        }
    }

    fn close_slow_in(&self, index: &Index, ids: Vec<SocketId>) {
        for id in ids {
            if let Some(entry) = index.sockets.get(&id) {
                if !entry.cancel.is_cancelled() {
                    METRICS.slow_consumer_closes.inc();
                    tracing::warn!(
                        socket = id,
                        queue_depth = self.queue_depth,
                        "closing a slow consumer: its send queue is full"
                    );
                    entry.cancel.cancel();
                }
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }
}

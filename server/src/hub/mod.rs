//! The subscription index and the fan-out of changes to sockets.
//!
//! Owns which socket listens to which topic, and the per-socket bounded send
//! queues. The replication reader calls [`Hub::dispatch`] for each change in
//! commit order: it finds the matching topics with a few hash lookups
//! (`realtime:*`, schema, table, and one lookup per filtered column), encodes
//! the payload once and each topic's frame once per serializer, and hands the
//! shared bytes to every matching socket's queue without waiting. A socket
//! whose queue is full is closed as a slow consumer; the reader never waits
//! for a client. Knows nothing of WebSocket framing or of PostgreSQL.
//!
//! The members of 2.x channels (broadcast, presence) are in `members`;
//! their broadcasts and presences cross servers through the [`Cluster`]
//! the hub owns (its bus is started by `serve`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::change::Change;
use crate::cluster::{BusError, Cluster, ClusterSettings, Sent, TopicKey};
use crate::metrics::METRICS;
use crate::phoenix::close;
use crate::phoenix::frame::{self, Frame, Vsn};

mod bindings;
mod legacy;
mod members;
mod queue;
pub use bindings::Binding;
use bindings::BindingIndex;
use legacy::LegacyIndex;
pub use legacy::LegacyTopic;
use members::{Member, Members};
pub use queue::{QueueRx, QueueTx, QUEUED_BYTES};

pub type SocketId = u64;

/// What a socket's writer sends, in order.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A text frame, possibly shared by many sockets (reference-counted:
    /// each socket's WebSocket writes the same bytes, none copies them).
    Frame(Frame),
    /// Close the socket with this code (one of `phoenix::close`) and reason.
    Close(u16, String),
}

struct SocketEntry {
    tx: QueueTx,
    cancel: CancellationToken,
}

#[derive(Default)]
struct Index {
    sockets: HashMap<SocketId, SocketEntry>,
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
    /// `MAX_PRESENCE_MEMBERS`: presences tracked on one topic.
    max_presence_members: usize,
    /// `SOCKET_QUEUE_BYTES`: bytes queued for one socket.
    queue_bytes: usize,
    /// Members of 2.x channels, by topic (the cluster delivers to them too).
    members: Arc<Members>,
    cluster: Arc<Cluster>,
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
            max_presence_members: crate::config::DEFAULT_MAX_PRESENCE_MEMBERS,
            queue_bytes: crate::config::DEFAULT_SOCKET_QUEUE_BYTES,
            cluster: Cluster::new(settings, members.clone()),
            members,
        }
    }

    /// This server's membership of the cluster.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
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

    pub fn subscribe_legacy(&self, id: SocketId, vsn: Vsn, key: &LegacyTopic, topic: &str) {
        self.write()
            .legacy
            .entry(key, topic)
            .sockets
            .insert(id, vsn);
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
    /// dispatch is called. Never waits.
    pub fn dispatch(&self, change: &Change) {
        METRICS.changes_received.inc();
        let mut slow: Vec<SocketId> = Vec::new();
        {
            let index = self.read();
            let mut payload: Option<String> = None;
            let event = change.kind.as_str();
            let mut queued = 0u64;
            index.legacy.matching(change, |subs| {
                let payload = payload.get_or_insert_with(|| change.legacy_json());
                let mut frames: [Option<Frame>; 2] = [None, None];
                for (&id, &vsn) in &subs.sockets {
                    let Some(entry) = index.sockets.get(&id) else {
                        continue;
                    };
                    let frame = frames[vsn as usize]
                        .get_or_insert_with(|| {
                            frame::encode(vsn, None, None, &subs.topic, event, payload)
                        })
                        .clone();
                    match entry.tx.try_send(Outbound::Frame(frame)) {
                        Ok(()) => queued += 1,
                        Err(mpsc::error::TrySendError::Full(_)) => slow.push(id),
                        // The socket is going away and unregisters itself.
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
            });
            queued += self.dispatch_bindings(&index, change, &mut slow);
            METRICS.frames_queued.inc_by(queued);
        }
        if !slow.is_empty() {
            self.close_slow(slow);
        }
    }

    /// The `postgres_changes` half of [`Hub::dispatch`]: the typed `data` is
    /// encoded once; each channel gets `{"ids": [...], "data": ...}` with the
    /// ids of its bindings that matched, and channels with the same topic and
    /// ids share one frame.
    fn dispatch_bindings(&self, index: &Index, change: &Change, slow: &mut Vec<SocketId>) -> u64 {
        // (socket, topic) -> (serializer, ids of the matched bindings)
        type PerChannel<'a> = HashMap<(SocketId, &'a Arc<str>), (Vsn, Vec<u32>)>;
        let mut per_channel: PerChannel = HashMap::new();
        index.bindings.matching(change, |b| {
            per_channel
                .entry((b.socket, &b.topic))
                .or_insert_with(|| (b.vsn, Vec::new()))
                .1
                .push(b.id);
        });
        if per_channel.is_empty() {
            return 0;
        }
        let data = crate::typed::postgres_changes_data(change);
        type FrameCache<'a> = HashMap<(&'a Arc<str>, Vsn, Vec<u32>), Frame>;
        let mut frames: FrameCache = HashMap::new();
        let mut queued = 0;
        for ((socket, topic), (vsn, mut ids)) in per_channel {
            let Some(entry) = index.sockets.get(&socket) else {
                continue;
            };
            ids.sort_unstable();
            let frame = frames
                .entry((topic, vsn, ids))
                .or_insert_with_key(|(topic, vsn, ids)| {
                    let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
                    let payload = format!("{{\"ids\":[{}],\"data\":{}}}", ids.join(","), data);
                    frame::encode(*vsn, None, None, topic, "postgres_changes", &payload)
                })
                .clone();
            match entry.tx.try_send(Outbound::Frame(frame)) {
                Ok(()) => queued += 1,
                Err(mpsc::error::TrySendError::Full(_)) => slow.push(socket),
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        queued
    }

    /// Adds a channel's `postgres_changes` bindings.
    pub fn add_bindings(&self, bindings: Vec<Binding>) {
        let mut index = self.write();
        for b in bindings {
            index.bindings.add(b);
        }
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
    ) -> String {
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
        let sent = self.cluster.publish(topic, "broadcast", payload);
        if !matches!(sent, Err(BusError::TooLarge { .. })) {
            self.members.relay(topic, from, "broadcast", payload);
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
        let index = self.read();
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

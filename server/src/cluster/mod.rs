//! Many servers, one service: Broadcast and Presence across server
//! processes, over the PostgreSQL every deployment already has.
//!
//! Every server of a cluster LISTENs on one channel (`realtime_cluster_` and
//! the cluster's name) on a plain SQL connection of its own, and sends its
//! messages there with `pg_notify`, in order, several to a transaction (see
//! [`bus`]). Nothing else is needed to find the others: a server is a member
//! once it listens, and its random [`NodeId`] tells its messages apart.
//!
//! - **Broadcast**: a broadcast accepted here is delivered to this server's
//!   members at once and published; every other server delivers it to its
//!   members when it arrives. One server's messages arrive everywhere in the
//!   order it sent them, so a sender's order holds for every subscriber.
//! - **Presence** ([`tracker`]): each server owns its sockets' presences and
//!   publishes deltas; a server that starts (or reconnects) asks everyone for
//!   their full state and sends its own; a gap in a sender's sequence numbers
//!   makes the receiver ask that sender again. Heartbeats every
//!   `heartbeat`; a server not heard from for `node_timeout` is gone and its
//!   presences leave everywhere (a clean shutdown says goodbye, and they leave
//!   at once).
//!
//! Owns the cluster's state and rules; knows nothing of sockets or frames:
//! what reaches local members goes through [`Deliver`]. A topic travels as a
//! [`TopicKey`], name and private flag together: a private and a public
//! topic of one name share nothing.

pub mod bus;
pub mod tracker;
pub mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use tracker::{Diff, Seen, Tracker};
pub use tracker::{Meta, SocketId};
pub use wire::NodeId;
use wire::{Envelope, Kind, Reassembler};

/// Messages waiting to be sent on the bus before a publish is refused as
/// "lagging" (each is at most `max_message_bytes`; a broadcast storm while
/// the database is slow must not grow memory without bound).
pub const OUTGOING_QUEUE: usize = 16_384;

/// Bytes of message bodies waiting to be sent on the bus before a publish
/// is refused as "lagging": with large broadcasts the message count alone
/// would allow gigabytes.
pub const OUTGOING_BYTES: usize = 32 << 20;

/// A topic as the cluster keys it: the name and whether it is private.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicKey {
    pub topic: Arc<str>,
    pub private: bool,
}

impl TopicKey {
    pub fn new(topic: &str, private: bool) -> TopicKey {
        TopicKey {
            topic: Arc::from(topic),
            private,
        }
    }
}

/// Where the cluster hands what local members must receive.
pub trait Deliver: Send + Sync + 'static {
    /// Sends `event` with `payload` (JSON) to every local member of `topic`.
    fn relay(&self, topic: &TopicKey, event: &str, payload: &str);
    /// Sends a broadcast of the user's `event` whose payload is the bytes
    /// `data` to every local member of `topic` that can read it.
    fn relay_binary(&self, topic: &TopicKey, event: &str, data: &[u8]);
}

/// The cluster's settings (from `CLUSTER_*` and `DB_RECONNECT_BACKOFF_*`).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Servers with the same name (on one database) form one cluster.
    pub name: String,
    /// How often a server says it is alive.
    pub heartbeat: Duration,
    /// A server not heard from for this long is gone.
    pub node_timeout: Duration,
    /// Largest broadcast (its JSON payload, in bytes) sent to the cluster;
    /// a larger one is refused with a reason.
    pub max_message_bytes: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for ClusterSettings {
    /// The defaults of `CLUSTER_*` and of the database reconnect backoff.
    fn default() -> ClusterSettings {
        use crate::config as c;
        ClusterSettings {
            name: c::DEFAULT_CLUSTER_NAME.to_owned(),
            heartbeat: Duration::from_millis(c::DEFAULT_CLUSTER_HEARTBEAT_MS),
            node_timeout: Duration::from_millis(c::DEFAULT_CLUSTER_NODE_TIMEOUT_MS),
            max_message_bytes: c::DEFAULT_CLUSTER_MAX_MESSAGE_BYTES,
            backoff_min: Duration::from_millis(c::DEFAULT_RECONNECT_BACKOFF_MIN_MS),
            backoff_max: Duration::from_millis(c::DEFAULT_RECONNECT_BACKOFF_MAX_MS),
        }
    }
}

impl ClusterSettings {
    /// The settings from the server's configuration (`CLUSTER_*`, and the
    /// database reconnect backoff).
    pub fn from_config(config: &crate::config::Config) -> ClusterSettings {
        ClusterSettings {
            name: config.cluster.name.clone(),
            heartbeat: config.cluster.heartbeat,
            node_timeout: config.cluster.node_timeout,
            max_message_bytes: config.cluster.max_message_bytes,
            backoff_min: config.reconnect_backoff_min,
            backoff_max: config.reconnect_backoff_max,
        }
    }

    /// The `LISTEN`/`NOTIFY` channel of this cluster.
    pub fn channel(&self) -> String {
        format!("realtime_cluster_{}", self.name)
    }
}

/// Why a message did not reach the cluster.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("message of {bytes} bytes is over CLUSTER_MAX_MESSAGE_BYTES ({max}): not sent")]
    TooLarge { bytes: usize, max: usize },
    #[error("the cluster bus is down (database connection lost): delivered on this server only")]
    Down,
    #[error("the cluster bus is lagging ({OUTGOING_QUEUE} messages waiting): delivered on this server only")]
    Lagging,
    #[error("the cluster bus failed to send: {0}")]
    Failed(String),
    /// Not a fault of the bus: the server refused the message before it
    /// (`MEMORY_BUDGET_MB`), here so a broadcast has one error type.
    #[error("the server is at its memory budget (MEMORY_BUDGET_MB={mb}): try again later")]
    OverBudget { mb: u64 },
}

/// What `/metrics` and `/readyz` show of the bus.
#[derive(Debug, Default)]
pub struct BusStatus {
    up: AtomicBool,
    /// Milliseconds since this node's oldest heartbeat still not seen back.
    lag_ms: AtomicU64,
    lagging: AtomicBool,
    pub nodes: AtomicU64,
    pub published: AtomicU64,
    pub received: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
    pub reconnects: AtomicU64,
}

impl BusStatus {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn is_lagging(&self) -> bool {
        self.lagging.load(Ordering::Relaxed)
    }

    /// How long this node's own heartbeat takes to come back, or how long
    /// the oldest one has been out (milliseconds).
    pub fn lag_ms(&self) -> u64 {
        self.lag_ms.load(Ordering::Relaxed)
    }
}

/// A message for the bus task.
struct Outgoing {
    envelope: Envelope,
    done: Option<oneshot::Sender<Result<(), BusError>>>,
    /// Gives the body's bytes back to the queue's count when the message
    /// is sent or dropped.
    _bytes: QueuedBytes,
}

struct QueuedBytes {
    n: usize,
    count: Arc<AtomicUsize>,
}

impl Drop for QueuedBytes {
    fn drop(&mut self) {
        self.count.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// A broadcast handed to the bus: resolves once it is sent (committed) or
/// failed.
pub struct Sent(oneshot::Receiver<Result<(), BusError>>);

impl Sent {
    pub async fn wait(self) -> Result<(), BusError> {
        self.0
            .await
            .unwrap_or_else(|_| Err(BusError::Failed("the bus stopped".into())))
    }
}

struct State {
    tracker: Tracker,
    seq: u64,
    reassembler: Reassembler,
    /// This node's heartbeats not yet seen back: (seq, sent at).
    heartbeats: std::collections::VecDeque<(u64, Instant)>,
}

/// This server's membership in the cluster.
pub struct Cluster {
    me: NodeId,
    settings: ClusterSettings,
    state: Mutex<State>,
    out: mpsc::Sender<Outgoing>,
    /// Bytes of the bodies in `out` (bounded by [`OUTGOING_BYTES`]).
    out_bytes: Arc<AtomicUsize>,
    out_rx: Mutex<Option<mpsc::Receiver<Outgoing>>>,
    deliver: Arc<dyn Deliver>,
    pub status: BusStatus,
}

/// A broadcast on the bus: `{"t": topic, "p": private, "e": event, "d":
/// payload}`, or for a binary payload `{"t", "p", "e": "broadcast", "u":
/// the user's event, "b": the bytes in base64}` (a `NOTIFY` payload is
/// text).
#[derive(Deserialize)]
struct RelayBody<'a> {
    #[serde(borrow)]
    t: std::borrow::Cow<'a, str>,
    p: bool,
    #[serde(borrow)]
    e: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    d: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    u: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    b: Option<std::borrow::Cow<'a, str>>,
}

impl RelayBody<'_> {
    /// Hands the broadcast to the local members.
    fn deliver(&self, deliver: &dyn Deliver) -> Result<(), String> {
        use base64::Engine as _;
        let topic = TopicKey::new(&self.t, self.p);
        match (&self.d, &self.u, &self.b) {
            (Some(d), None, None) => deliver.relay(&topic, &self.e, d.get()),
            (None, Some(event), Some(b64)) => {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|e| format!("the binary payload is not base64: {e}"))?;
                deliver.relay_binary(&topic, event, &data);
            }
            _ => return Err("neither a JSON payload (d) nor a binary one (u, b)".into()),
        }
        Ok(())
    }
}

#[derive(serde::Serialize, Deserialize)]
struct SyncBody {
    to: Option<String>,
}

impl Cluster {
    pub fn new(settings: ClusterSettings, deliver: Arc<dyn Deliver>) -> Arc<Cluster> {
        let me = NodeId::random();
        let (out, out_rx) = mpsc::channel(OUTGOING_QUEUE);
        Arc::new(Cluster {
            me,
            settings,
            state: Mutex::new(State {
                tracker: Tracker::new(me),
                seq: 0,
                reassembler: Reassembler::default(),
                heartbeats: Default::default(),
            }),
            out,
            out_bytes: Arc::default(),
            out_rx: Mutex::new(Some(out_rx)),
            deliver,
            status: BusStatus::default(),
        })
    }

    pub fn node(&self) -> NodeId {
        self.me
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a message (the caller holds the state lock, so sequence
    /// numbers follow the order of the changes they carry).
    fn enqueue(
        &self,
        st: &mut State,
        kind: Kind,
        body: String,
        done: Option<oneshot::Sender<Result<(), BusError>>>,
    ) -> Result<(), BusError> {
        if !self.status.is_up() {
            return Err(BusError::Down);
        }
        let n = body.len();
        let before = self.out_bytes.fetch_add(n, Ordering::AcqRel);
        let bytes = QueuedBytes {
            n,
            count: self.out_bytes.clone(),
        };
        if before > 0 && before + n > OUTGOING_BYTES {
            return Err(BusError::Lagging);
        }
        st.seq += 1;
        let envelope = Envelope {
            kind,
            node: self.me,
            seq: st.seq,
            body,
        };
        if kind == Kind::Heartbeat {
            st.heartbeats.push_back((st.seq, Instant::now()));
        }
        self.out
            .try_send(Outgoing {
                envelope,
                done,
                _bytes: bytes,
            })
            .map_err(|_| BusError::Lagging)
    }

    /// Publishes a broadcast: `event` with `payload` (JSON) for every member
    /// of `topic` on the other servers. The caller delivers it to this
    /// server's own members (unless this refuses it as too large). Await the
    /// result to know it was handed to the cluster.
    pub fn publish(&self, topic: &TopicKey, event: &str, payload: &str) -> Result<Sent, BusError> {
        if payload.len() > self.settings.max_message_bytes {
            self.status.refused.fetch_add(1, Ordering::Relaxed);
            return Err(BusError::TooLarge {
                bytes: payload.len(),
                max: self.settings.max_message_bytes,
            });
        }
        let body = format!(
            "{{\"t\":{},\"p\":{},\"e\":{},\"d\":{}}}",
            serde_json::Value::from(&*topic.topic),
            topic.private,
            serde_json::Value::from(event),
            payload
        );
        let (tx, rx) = oneshot::channel();
        let mut st = self.lock();
        self.enqueue(&mut st, Kind::Relay, body, Some(tx))?;
        Ok(Sent(rx))
    }

    /// Publishes a broadcast whose payload is the bytes `data` (`event` is
    /// the user's), as [`Cluster::publish`] does; the size limit applies to
    /// the bytes (they travel in base64, a third larger).
    pub fn publish_binary(
        &self,
        topic: &TopicKey,
        event: &str,
        data: &[u8],
    ) -> Result<Sent, BusError> {
        use base64::Engine as _;
        if data.len() > self.settings.max_message_bytes {
            self.status.refused.fetch_add(1, Ordering::Relaxed);
            return Err(BusError::TooLarge {
                bytes: data.len(),
                max: self.settings.max_message_bytes,
            });
        }
        let body = format!(
            "{{\"t\":{},\"p\":{},\"e\":\"broadcast\",\"u\":{},\"b\":\"{}\"}}",
            serde_json::Value::from(&*topic.topic),
            topic.private,
            serde_json::Value::from(event),
            base64::engine::general_purpose::STANDARD.encode(data)
        );
        let (tx, rx) = oneshot::channel();
        let mut st = self.lock();
        self.enqueue(&mut st, Kind::Relay, body, Some(tx))?;
        Ok(Sent(rx))
    }

    /// Runs `join` (which makes a socket a member of `topic`) and reads the
    /// cluster's presence state of `topic` as one step: no diff falls
    /// between the state the member gets and the diffs it receives.
    pub fn join<R>(&self, topic: &TopicKey, join: impl FnOnce() -> R) -> (R, Arc<str>) {
        let mut st = self.lock();
        let r = join();
        (r, st.tracker.state_payload(topic))
    }

    /// The cluster's presence state of `topic`.
    pub fn presence_state(&self, topic: &TopicKey) -> Arc<str> {
        self.lock().tracker.state_payload(topic)
    }

    /// How many presences the cluster has on `topic`, as this server sees it.
    pub fn presence_count(&self, topic: &TopicKey) -> usize {
        self.lock().tracker.count(topic)
    }

    /// Tracks a local socket's presence on `topic`: local members get the
    /// diff now, the other servers' members when the delta arrives.
    /// `Err(max)`, and nothing tracked, when `topic` already has `max`
    /// presences (over the cluster, as this node sees it) and `socket` is
    /// not one of them.
    pub fn track(
        &self,
        topic: &TopicKey,
        socket: SocketId,
        key: String,
        meta: Meta,
        max: usize,
    ) -> Result<(), usize> {
        let mut st = self.lock();
        if st.tracker.count(topic) >= max && !st.tracker.is_tracked(topic, socket) {
            return Err(max);
        }
        let (diff, body) = st.tracker.track(topic, socket, key, meta);
        self.deliver.relay(topic, "presence_diff", &diff.payload());
        // When the bus is down the delta is not sent: the full state is
        // sent again when it reconnects.
        let _ = self.enqueue(&mut st, Kind::Delta, body, None);
        Ok(())
    }

    /// Untracks a local socket's presence on `topic` (an untrack, a leave,
    /// a disconnect).
    pub fn untrack(&self, topic: &TopicKey, socket: SocketId) {
        let mut st = self.lock();
        if let Some((diff, body)) = st.tracker.untrack(topic, socket) {
            self.deliver.relay(topic, "presence_diff", &diff.payload());
            let _ = self.enqueue(&mut st, Kind::Delta, body, None);
        }
    }

    fn deliver_diffs(&self, diffs: Vec<Diff>) {
        for d in diffs {
            self.deliver.relay(&d.topic, "presence_diff", &d.payload());
        }
    }

    /// Reads one notification from the bus.
    fn receive(&self, payload: &str) {
        let now = Instant::now();
        let mut st = self.lock();
        let envelope = match st.reassembler.push(payload) {
            Ok(Some(e)) => e,
            Ok(None) => return,
            Err(e) => {
                self.status.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cluster bus: unreadable message");
                return;
            }
        };
        if envelope.node == self.me {
            if envelope.kind == Kind::Heartbeat {
                while st
                    .heartbeats
                    .front()
                    .is_some_and(|(seq, _)| *seq <= envelope.seq)
                {
                    let (_, sent) = st.heartbeats.pop_front().expect("checked");
                    self.status.lag_ms.store(
                        now.duration_since(sent).as_millis() as u64,
                        Ordering::Relaxed,
                    );
                }
            }
            return;
        }
        self.status.received.fetch_add(1, Ordering::Relaxed);
        let node = envelope.node;
        let seen = st.tracker.seen(node, envelope.seq, now);
        if seen == Seen::Old {
            return;
        }
        if seen == Seen::NewPeer {
            tracing::info!(node = %node, "cluster: a server joined");
            self.status
                .nodes
                .store(st.tracker.peers() as u64, Ordering::Relaxed);
        }
        if matches!(seen, Seen::NewPeer | Seen::Gap)
            && envelope.kind != Kind::State
            && st.tracker.should_ask(node, now, self.settings.heartbeat)
        {
            if seen == Seen::Gap {
                tracing::info!(node = %node, "cluster: missed messages from a server; asking for its presence state");
            }
            self.ask(&mut st, Some(node));
        }
        match envelope.kind {
            Kind::Relay => {
                drop(st);
                match serde_json::from_str::<RelayBody>(&envelope.body)
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.deliver(&*self.deliver))
                {
                    Ok(()) => {}
                    Err(e) => {
                        self.status.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(node = %node, error = %e, "cluster bus: unreadable broadcast");
                    }
                }
            }
            Kind::Delta => match st.tracker.apply_delta(node, &envelope.body) {
                Ok(diff) => self.deliver_diffs(diff.into_iter().collect()),
                Err(e) => tracing::warn!(error = %e, "cluster bus"),
            },
            Kind::State => match st.tracker.apply_state(node, &envelope.body) {
                Ok(diffs) => self.deliver_diffs(diffs),
                Err(e) => tracing::warn!(error = %e, "cluster bus"),
            },
            Kind::SyncRequest => {
                let to = serde_json::from_str::<SyncBody>(&envelope.body)
                    .ok()
                    .and_then(|b| b.to);
                if to.is_none() || to.as_deref() == Some(&self.me.to_string()) {
                    let body = st.tracker.local_state_body();
                    let _ = self.enqueue(&mut st, Kind::State, body, None);
                }
            }
            Kind::Bye => {
                tracing::info!(node = %node, "cluster: a server left (shut down)");
                let diffs = st.tracker.remove_peer(node);
                self.status
                    .nodes
                    .store(st.tracker.peers() as u64, Ordering::Relaxed);
                self.deliver_diffs(diffs);
            }
            Kind::Heartbeat => {}
        }
    }

    fn ask(&self, st: &mut State, to: Option<NodeId>) {
        let body = serde_json::to_string(&SyncBody {
            to: to.map(|n| n.to_string()),
        })
        .expect("serializable");
        let _ = self.enqueue(st, Kind::SyncRequest, body, None);
    }

    /// The bus (re)connected: every peer gets a fresh timeout, this node
    /// sends its full state and asks for everyone's.
    fn connected(&self) {
        let mut st = self.lock();
        st.tracker.heard_all(Instant::now());
        st.heartbeats.clear();
        let body = st.tracker.local_state_body();
        let _ = self.enqueue(&mut st, Kind::State, body, None);
        self.ask(&mut st, None);
    }

    /// Every heartbeat period while the bus is up: say this node is alive,
    /// forget the silent, ask the unsynced again, note the bus's lag.
    fn tick(&self) {
        let now = Instant::now();
        let mut st = self.lock();
        let _ = self.enqueue(&mut st, Kind::Heartbeat, String::new(), None);
        for node in st.tracker.silent(now, self.settings.node_timeout) {
            tracing::warn!(
                node = %node,
                timeout_ms = self.settings.node_timeout.as_millis() as u64,
                "cluster: a server fell silent; its presences leave"
            );
            let diffs = st.tracker.remove_peer(node);
            self.deliver_diffs(diffs);
        }
        self.status
            .nodes
            .store(st.tracker.peers() as u64, Ordering::Relaxed);
        for node in st.tracker.unsynced() {
            if st
                .tracker
                .should_ask(node, now, 2 * self.settings.heartbeat)
            {
                self.ask(&mut st, Some(node));
            }
        }
        if let Some((_, sent)) = st.heartbeats.front() {
            let out = now.duration_since(*sent);
            let lag = out.as_millis() as u64;
            self.status.lag_ms.fetch_max(lag, Ordering::Relaxed);
            let lagging = out > self.settings.node_timeout / 2;
            if lagging != self.status.lagging.swap(lagging, Ordering::Relaxed) {
                if lagging {
                    tracing::warn!(
                        lag_ms = lag,
                        "cluster bus is lagging: this server's own heartbeat has not come back"
                    );
                } else {
                    tracing::info!("cluster bus caught up");
                }
            }
        }
        // A heartbeat is at most node_timeout late before the others drop
        // this server; keep the queue of them short.
        while st.heartbeats.len() > 64 {
            st.heartbeats.pop_front();
        }
    }

    /// The message that says this node is leaving, for a clean shutdown.
    fn bye(&self) -> Option<Envelope> {
        let mut st = self.lock();
        st.seq += 1;
        Some(Envelope {
            kind: Kind::Bye,
            node: self.me,
            seq: st.seq,
            body: String::new(),
        })
    }

    fn set_up(&self, up: bool) {
        self.status.up.store(up, Ordering::Relaxed);
        if !up {
            self.status.lagging.store(false, Ordering::Relaxed);
        }
    }
}

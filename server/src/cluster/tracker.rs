//! Presence for the whole cluster, after Phoenix.Tracker's model: each node
//! owns the presences of its own sockets and is the only one to change them;
//! it tells the others with deltas, and answers a request for its full state
//! (a newcomer asks everyone; a node that missed a message asks the sender).
//! A node that falls silent for longer than the node timeout, or says goodbye,
//! is forgotten, and its presences leave everywhere.
//!
//! This module is the state and its rules only: it produces message bodies
//! and `presence_diff`s and never touches the bus or a socket. The caller
//! ([`super::Cluster`]) holds it under one lock, so that applying a change and
//! telling the local members about it happen as one step.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::wire::NodeId;
use super::TopicKey;

/// A socket of this process.
pub type SocketId = u64;
/// A presence's metadata, as the client tracked it.
pub type Meta = Map<String, Value>;

/// One tracked presence.
#[derive(Debug, Clone, PartialEq)]
pub struct Presence {
    pub key: String,
    /// Unique in the cluster: the owner's node id and a counter.
    pub phx_ref: String,
    pub meta: Meta,
}

impl Presence {
    fn meta_json(&self) -> Value {
        let mut m = self.meta.clone();
        m.insert("phx_ref".into(), Value::String(self.phx_ref.clone()));
        Value::Object(m)
    }
}

/// `{key: {"metas": [...]}}`, Phoenix Presence's shape.
fn group<'a>(items: impl Iterator<Item = &'a Presence>) -> Value {
    let mut out = Map::new();
    for p in items {
        let entry = out
            .entry(p.key.clone())
            .or_insert_with(|| serde_json::json!({"metas": []}));
        entry["metas"]
            .as_array_mut()
            .expect("metas is an array")
            .push(p.meta_json());
    }
    Value::Object(out)
}

/// Presences that joined and left one topic: a `presence_diff`.
#[derive(Debug, Clone, PartialEq)]
pub struct Diff {
    pub topic: TopicKey,
    pub joins: Vec<Presence>,
    pub leaves: Vec<Presence>,
}

impl Diff {
    /// The `presence_diff` payload.
    pub fn payload(&self) -> String {
        serde_json::json!({
            "joins": group(self.joins.iter()),
            "leaves": group(self.leaves.iter()),
        })
        .to_string()
    }

    fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }
}

/// A presence on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct WireEntry {
    #[serde(rename = "r")]
    phx_ref: String,
    #[serde(rename = "k")]
    key: String,
    #[serde(rename = "m")]
    meta: Meta,
}

/// The body of a delta: joins and leaves (by ref) on one topic.
#[derive(Debug, Serialize, Deserialize)]
struct DeltaBody {
    t: String,
    p: bool,
    #[serde(default)]
    j: Vec<WireEntry>,
    #[serde(default)]
    l: Vec<String>,
}

/// The body of a full state: every presence of the sender, per topic.
#[derive(Debug, Serialize, Deserialize)]
struct StateBody {
    topics: Vec<StateTopic>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateTopic {
    t: String,
    p: bool,
    e: Vec<WireEntry>,
}

/// What the tracker knows of another node.
struct Peer {
    heard: Instant,
    /// The sequence number expected next from it.
    next_seq: u64,
    /// Whether its full state was received since the last gap.
    synced: bool,
    /// When its state was last asked for.
    asked: Option<Instant>,
    topics: HashMap<TopicKey, HashMap<String, Presence>>,
}

/// What a message's sequence number says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The first message from this node.
    NewPeer,
    /// The next one, as expected.
    InOrder,
    /// Messages were missed: the node's state must be asked for.
    Gap,
    /// Already seen (or older): ignore it.
    Old,
}

/// A body that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("unreadable {what} from node {node}: {source}")]
pub struct BodyError {
    what: &'static str,
    node: NodeId,
    source: serde_json::Error,
}

pub struct Tracker {
    me: NodeId,
    next_ref: u64,
    local: HashMap<TopicKey, HashMap<SocketId, Presence>>,
    peers: HashMap<NodeId, Peer>,
    /// The `presence_state` payload of each topic that has presences, built
    /// at the first join after a change and shared by the joins that
    /// follow (a join storm on a topic of large presences serializes them
    /// once, not once per join); dropped at the topic's next change.
    states: HashMap<TopicKey, Arc<str>>,
}

impl Tracker {
    pub fn new(me: NodeId) -> Tracker {
        Tracker {
            me,
            next_ref: 0,
            local: HashMap::new(),
            peers: HashMap::new(),
            states: HashMap::new(),
        }
    }

    /// Tracks `socket` on `topic` (replacing its earlier presence there):
    /// the diff for the local members, and the delta body for the others.
    pub fn track(
        &mut self,
        topic: &TopicKey,
        socket: SocketId,
        key: String,
        meta: Meta,
    ) -> (Diff, String) {
        self.next_ref += 1;
        self.states.remove(topic);
        let new = Presence {
            key,
            phx_ref: format!("{}.{}", self.me, self.next_ref),
            meta,
        };
        let old = self
            .local
            .entry(topic.clone())
            .or_default()
            .insert(socket, new.clone());
        let body = DeltaBody {
            t: topic.topic.to_string(),
            p: topic.private,
            j: vec![WireEntry {
                phx_ref: new.phx_ref.clone(),
                key: new.key.clone(),
                meta: new.meta.clone(),
            }],
            l: old.iter().map(|o| o.phx_ref.clone()).collect(),
        };
        let diff = Diff {
            topic: topic.clone(),
            joins: vec![new],
            leaves: old.into_iter().collect(),
        };
        (diff, serde_json::to_string(&body).expect("serializable"))
    }

    /// Untracks `socket` on `topic`: the diff and the delta body, if it was
    /// tracked.
    pub fn untrack(&mut self, topic: &TopicKey, socket: SocketId) -> Option<(Diff, String)> {
        let members = self.local.get_mut(topic)?;
        let old = members.remove(&socket)?;
        if members.is_empty() {
            self.local.remove(topic);
        }
        self.states.remove(topic);
        let body = DeltaBody {
            t: topic.topic.to_string(),
            p: topic.private,
            j: Vec::new(),
            l: vec![old.phx_ref.clone()],
        };
        let diff = Diff {
            topic: topic.clone(),
            joins: Vec::new(),
            leaves: vec![old],
        };
        Some((diff, serde_json::to_string(&body).expect("serializable")))
    }

    /// The `presence_state` payload of `topic`: this node's presences and
    /// every other node's.
    pub fn state_payload(&mut self, topic: &TopicKey) -> Arc<str> {
        if let Some(state) = self.states.get(topic) {
            return state.clone();
        }
        let local = self.local.get(topic).into_iter().flat_map(|m| m.values());
        let remote = self
            .peers
            .values()
            .filter_map(|p| p.topics.get(topic))
            .flat_map(|m| m.values());
        let state: Arc<str> = group(local.chain(remote)).to_string().into();
        // Only topics with presences are kept: a topic nobody tracks on
        // costs nothing here, however many are joined.
        if &*state != "{}" {
            self.states.insert(topic.clone(), state.clone());
        }
        state
    }

    /// Whether this node tracks `socket` on `topic`.
    pub fn is_tracked(&self, topic: &TopicKey, socket: SocketId) -> bool {
        self.local
            .get(topic)
            .is_some_and(|m| m.contains_key(&socket))
    }

    /// How many presences the cluster has on `topic`, as this node sees it.
    pub fn count(&self, topic: &TopicKey) -> usize {
        self.local.get(topic).map_or(0, |m| m.len())
            + self
                .peers
                .values()
                .filter_map(|p| p.topics.get(topic))
                .map(|m| m.len())
                .sum::<usize>()
    }

    /// The body of this node's full state.
    pub fn local_state_body(&self) -> String {
        let topics = self
            .local
            .iter()
            .map(|(topic, members)| StateTopic {
                t: topic.topic.to_string(),
                p: topic.private,
                e: members
                    .values()
                    .map(|p| WireEntry {
                        phx_ref: p.phx_ref.clone(),
                        key: p.key.clone(),
                        meta: p.meta.clone(),
                    })
                    .collect(),
            })
            .collect();
        serde_json::to_string(&StateBody { topics }).expect("serializable")
    }

    /// Notes a message from `node` with sequence number `seq`.
    pub fn seen(&mut self, node: NodeId, seq: u64, now: Instant) -> Seen {
        match self.peers.get_mut(&node) {
            None => {
                self.peers.insert(
                    node,
                    Peer {
                        heard: now,
                        next_seq: seq + 1,
                        synced: false,
                        asked: None,
                        topics: HashMap::new(),
                    },
                );
                Seen::NewPeer
            }
            Some(peer) => {
                peer.heard = now;
                if seq < peer.next_seq {
                    return Seen::Old;
                }
                let gap = seq > peer.next_seq;
                peer.next_seq = seq + 1;
                if gap {
                    peer.synced = false;
                    Seen::Gap
                } else {
                    Seen::InOrder
                }
            }
        }
    }

    /// Whether `node`'s state should be asked for now: it is not synced and
    /// was not asked within `again`. Marks it asked.
    pub fn should_ask(&mut self, node: NodeId, now: Instant, again: Duration) -> bool {
        let Some(peer) = self.peers.get_mut(&node) else {
            return false;
        };
        if peer.synced || peer.asked.is_some_and(|t| now.duration_since(t) < again) {
            return false;
        }
        peer.asked = Some(now);
        true
    }

    /// Peers whose state is still missing.
    pub fn unsynced(&self) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|(_, p)| !p.synced)
            .map(|(n, _)| *n)
            .collect()
    }

    /// Applies a delta from `node`. Ignored (None) while its state is
    /// missing: the state, when it comes, includes it.
    pub fn apply_delta(&mut self, node: NodeId, body: &str) -> Result<Option<Diff>, BodyError> {
        let delta: DeltaBody = serde_json::from_str(body).map_err(|source| BodyError {
            what: "presence delta",
            node,
            source,
        })?;
        let Some(peer) = self.peers.get_mut(&node) else {
            return Ok(None);
        };
        if !peer.synced {
            return Ok(None);
        }
        let topic = TopicKey::new(&delta.t, delta.p);
        let members = peer.topics.entry(topic.clone()).or_default();
        let mut diff = Diff {
            topic: topic.clone(),
            joins: Vec::new(),
            leaves: Vec::new(),
        };
        for r in delta.l {
            if let Some(old) = members.remove(&r) {
                diff.leaves.push(old);
            }
        }
        for e in delta.j {
            let p = Presence {
                key: e.key,
                phx_ref: e.phx_ref,
                meta: e.meta,
            };
            members.insert(p.phx_ref.clone(), p.clone());
            diff.joins.push(p);
        }
        if members.is_empty() {
            peer.topics.remove(&topic);
        }
        if !diff.is_empty() {
            self.states.remove(&topic);
        }
        Ok((!diff.is_empty()).then_some(diff))
    }

    /// Replaces `node`'s presences with its full state: the diffs per topic.
    pub fn apply_state(&mut self, node: NodeId, body: &str) -> Result<Vec<Diff>, BodyError> {
        let state: StateBody = serde_json::from_str(body).map_err(|source| BodyError {
            what: "presence state",
            node,
            source,
        })?;
        let Some(peer) = self.peers.get_mut(&node) else {
            return Ok(Vec::new());
        };
        let mut new: HashMap<TopicKey, HashMap<String, Presence>> = HashMap::new();
        for t in state.topics {
            let members = new.entry(TopicKey::new(&t.t, t.p)).or_default();
            for e in t.e {
                members.insert(
                    e.phx_ref.clone(),
                    Presence {
                        key: e.key,
                        phx_ref: e.phx_ref,
                        meta: e.meta,
                    },
                );
            }
        }
        let old = std::mem::replace(&mut peer.topics, new);
        peer.synced = true;
        let mut diffs = Vec::new();
        let empty = HashMap::new();
        for (topic, members) in &peer.topics {
            let before = old.get(topic).unwrap_or(&empty);
            let joins: Vec<Presence> = members
                .iter()
                .filter(|(r, _)| !before.contains_key(*r))
                .map(|(_, p)| p.clone())
                .collect();
            let leaves: Vec<Presence> = before
                .iter()
                .filter(|(r, _)| !members.contains_key(*r))
                .map(|(_, p)| p.clone())
                .collect();
            let diff = Diff {
                topic: topic.clone(),
                joins,
                leaves,
            };
            if !diff.is_empty() {
                diffs.push(diff);
            }
        }
        for (topic, members) in old {
            if !peer.topics.contains_key(&topic) && !members.is_empty() {
                diffs.push(Diff {
                    topic,
                    joins: Vec::new(),
                    leaves: members.into_values().collect(),
                });
            }
        }
        for d in &diffs {
            self.states.remove(&d.topic);
        }
        Ok(diffs)
    }

    /// Forgets `node`: its presences leave (the diffs per topic).
    pub fn remove_peer(&mut self, node: NodeId) -> Vec<Diff> {
        let Some(peer) = self.peers.remove(&node) else {
            return Vec::new();
        };
        let diffs: Vec<Diff> = peer
            .topics
            .into_iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(topic, members)| Diff {
                topic,
                joins: Vec::new(),
                leaves: members.into_values().collect(),
            })
            .collect();
        for d in &diffs {
            self.states.remove(&d.topic);
        }
        diffs
    }

    /// Peers not heard from for longer than `timeout`.
    pub fn silent(&self, now: Instant, timeout: Duration) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|(_, p)| now.duration_since(p.heard) > timeout)
            .map(|(n, _)| *n)
            .collect()
    }

    /// Counts every peer as heard now (after this node's own bus was down:
    /// its silence says nothing of theirs), and as needing a resync.
    pub fn heard_all(&mut self, now: Instant) {
        for peer in self.peers.values_mut() {
            peer.heard = now;
            peer.synced = false;
            peer.asked = None;
        }
    }

    /// The other nodes this node knows.
    pub fn peers(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic() -> TopicKey {
        TopicKey::new("room", false)
    }

    fn meta(v: &str) -> Meta {
        let mut m = Meta::new();
        m.insert("user".into(), Value::String(v.into()));
        m
    }

    #[test]
    fn a_peer_state_then_deltas_make_one_view_and_a_silent_peer_leaves() {
        let (a, b) = (NodeId(1), NodeId(2));
        let mut ta = Tracker::new(a);
        let mut tb = Tracker::new(b);
        let now = Instant::now();

        // b tracks alice before a knows b.
        let (_, _delta_lost) = tb.track(&topic(), 10, "alice".into(), meta("alice"));
        // a hears b's heartbeat: a new peer, not synced, its deltas ignored.
        assert_eq!(ta.seen(b, 5, now), Seen::NewPeer);
        assert!(ta.should_ask(b, now, Duration::from_secs(1)));
        assert!(
            !ta.should_ask(b, now, Duration::from_secs(1)),
            "asked once a second"
        );
        // b answers with its state.
        assert_eq!(ta.seen(b, 6, now), Seen::InOrder);
        let diffs = ta.apply_state(b, &tb.local_state_body()).unwrap();
        assert_eq!(diffs.len(), 1);
        assert_eq!(diffs[0].joins[0].key, "alice");

        // Then a delta: bob joins on b.
        let (_, delta) = tb.track(&topic(), 11, "bob".into(), meta("bob"));
        assert_eq!(ta.seen(b, 7, now), Seen::InOrder);
        let diff = ta.apply_delta(b, &delta).unwrap().unwrap();
        assert_eq!(diff.joins[0].key, "bob");
        // a's own presence and b's two in one state.
        ta.track(&topic(), 1, "carol".into(), meta("carol"));
        assert_eq!(ta.count(&topic()), 3);
        let state: Value = serde_json::from_str(&ta.state_payload(&topic())).unwrap();
        for k in ["alice", "bob", "carol"] {
            assert_eq!(state[k]["metas"][0]["user"], k, "{state}");
        }

        // b falls silent: after the timeout it is gone, its presences leave.
        let later = now + Duration::from_secs(10);
        assert_eq!(ta.silent(later, Duration::from_secs(5)), vec![b]);
        let diffs = ta.remove_peer(b);
        assert_eq!(diffs.len(), 1);
        assert_eq!(diffs[0].leaves.len(), 2);
        assert_eq!(ta.count(&topic()), 1);
    }

    #[test]
    fn a_gap_unsyncs_the_peer_until_its_state_arrives() {
        let (a, b) = (NodeId(1), NodeId(2));
        let mut ta = Tracker::new(a);
        let mut tb = Tracker::new(b);
        let now = Instant::now();
        ta.seen(b, 1, now);
        ta.apply_state(b, &tb.local_state_body()).unwrap();
        let (_, d1) = tb.track(&topic(), 1, "x".into(), meta("x"));
        assert_eq!(ta.seen(b, 2, now), Seen::InOrder);
        assert!(ta.apply_delta(b, &d1).unwrap().is_some());
        // Message 3 is lost; 4 untracks x.
        let (_, d2) = tb.untrack(&topic(), 1).unwrap();
        assert_eq!(ta.seen(b, 4, now), Seen::Gap);
        assert!(
            ta.apply_delta(b, &d2).unwrap().is_none(),
            "ignored until synced"
        );
        assert_eq!(ta.seen(b, 4, now), Seen::Old);
        let diffs = ta.apply_state(b, &tb.local_state_body()).unwrap();
        assert_eq!(diffs.len(), 1);
        assert_eq!(diffs[0].leaves[0].key, "x");
        assert_eq!(ta.count(&topic()), 0);
    }

    #[test]
    fn private_and_public_topics_of_one_name_never_share_presences() {
        let mut t = Tracker::new(NodeId(1));
        t.track(
            &TopicKey::new("room", true),
            1,
            "secret".into(),
            Meta::new(),
        );
        assert_eq!(t.count(&TopicKey::new("room", false)), 0);
        assert_eq!(&*t.state_payload(&TopicKey::new("room", false)), "{}");
        assert_eq!(t.count(&TopicKey::new("room", true)), 1);
    }

    #[test]
    fn the_state_is_built_once_until_the_topic_changes_by_any_path() {
        let (a, b) = (NodeId(1), NodeId(2));
        let mut ta = Tracker::new(a);
        let mut tb = Tracker::new(b);
        let now = Instant::now();
        ta.track(&topic(), 1, "alice".into(), meta("alice"));
        let first = ta.state_payload(&topic());
        assert!(
            Arc::ptr_eq(&first, &ta.state_payload(&topic())),
            "joins share one payload"
        );
        let has = |t: &mut Tracker, key: &str| t.state_payload(&topic()).contains(key);
        // A peer's full state, its delta and its departure each drop it.
        tb.track(&topic(), 10, "bob".into(), meta("bob"));
        ta.seen(b, 1, now);
        ta.apply_state(b, &tb.local_state_body()).unwrap();
        assert!(has(&mut ta, "bob"));
        let (_, delta) = tb.track(&topic(), 11, "carol".into(), meta("carol"));
        ta.seen(b, 2, now);
        ta.apply_delta(b, &delta).unwrap();
        assert!(has(&mut ta, "carol"));
        ta.remove_peer(b);
        assert!(!has(&mut ta, "bob") && has(&mut ta, "alice"));
        // A local untrack and a retrack too.
        ta.track(&topic(), 1, "alice".into(), meta("alice2"));
        assert!(has(&mut ta, "alice2"));
        ta.untrack(&topic(), 1);
        assert_eq!(&*ta.state_payload(&topic()), "{}");
        assert!(
            ta.states.is_empty(),
            "a topic without presences keeps nothing"
        );
    }

    #[test]
    fn a_retrack_is_one_diff_with_the_new_join_and_the_old_leave() {
        let mut t = Tracker::new(NodeId(1));
        let (first, _) = t.track(&topic(), 1, "k".into(), meta("a"));
        let (diff, _) = t.track(&topic(), 1, "k".into(), meta("b"));
        assert_eq!(diff.leaves, first.joins);
        assert_eq!(diff.joins[0].meta, meta("b"));
        assert_ne!(diff.joins[0].phx_ref, first.joins[0].phx_ref);
        assert_eq!(t.count(&topic()), 1);
    }
}

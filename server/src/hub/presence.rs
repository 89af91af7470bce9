//! Presence (realtime-js 2.x): who is tracked on each topic, per server
//! process, and the `presence_state` / `presence_diff` payloads in Phoenix
//! Presence's shape: `{key: {"metas": [{"phx_ref": ..., ...meta}]}}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::SocketId;

#[derive(Debug, Clone)]
struct Presence {
    key: String,
    phx_ref: String,
    meta: Map<String, Value>,
}

impl Presence {
    fn meta_json(&self) -> Value {
        let mut m = self.meta.clone();
        m.insert("phx_ref".into(), Value::String(self.phx_ref.clone()));
        Value::Object(m)
    }
}

#[derive(Debug, Default)]
pub(super) struct PresenceIndex {
    topics: HashMap<Arc<str>, HashMap<SocketId, Presence>>,
    next_ref: AtomicU64,
}

/// `{key: {"metas": [...]}}` of some presences.
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

fn diff(joins: Option<&Presence>, leaves: Option<&Presence>) -> String {
    serde_json::json!({
        "joins": group(joins.into_iter()),
        "leaves": group(leaves.into_iter()),
    })
    .to_string()
}

impl PresenceIndex {
    /// Tracks `socket` on `topic` under `key`; returns the `presence_diff`
    /// payload to broadcast, or `Err(max)` when the topic already has `max`
    /// presences and `socket` is not one of them.
    pub(super) fn track(
        &mut self,
        topic: &Arc<str>,
        socket: SocketId,
        key: String,
        meta: Map<String, Value>,
        max: usize,
    ) -> Result<String, usize> {
        let members = self.topics.entry(topic.clone()).or_default();
        if members.len() >= max && !members.contains_key(&socket) {
            return Err(max);
        }
        let phx_ref = format!("F{}", self.next_ref.fetch_add(1, Ordering::Relaxed));
        let new = Presence { key, phx_ref, meta };
        let old = members.insert(socket, new.clone());
        Ok(diff(Some(&new), old.as_ref()))
    }

    /// Untracks `socket` on `topic`; the diff to broadcast if it was tracked.
    pub(super) fn untrack(&mut self, topic: &Arc<str>, socket: SocketId) -> Option<String> {
        let members = self.topics.get_mut(topic)?;
        let old = members.remove(&socket)?;
        if members.is_empty() {
            self.topics.remove(topic);
        }
        Some(diff(None, Some(&old)))
    }

    /// The `presence_state` payload of `topic`.
    pub(super) fn state(&self, topic: &str) -> String {
        match self.topics.get(topic) {
            Some(m) => group(m.values()).to_string(),
            None => "{}".into(),
        }
    }
}

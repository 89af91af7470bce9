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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::change::{Change, ChangeKind};
use crate::phoenix::frame::{self, Vsn};

pub type SocketId = u64;

/// What a socket's writer sends, in order.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A text frame, possibly shared by many sockets.
    Frame(Arc<str>),
    /// Close the socket with this code and reason.
    Close(u16, String),
}

/// Close code for a socket whose send queue overflowed (RFC 6455 1013, "try
/// again later": the client reconnects).
pub const CLOSE_SLOW_CONSUMER: u16 = 1013;

/// A legacy (realtime-js 1.x) topic, parsed once at join.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LegacyTopic {
    /// `realtime:*`
    All,
    /// `realtime:{schema}`
    Schema(String),
    /// `realtime:{schema}:{table}`
    Table(String, String),
    /// `realtime:{schema}:{table}:{column}=eq.{value}`
    Row {
        schema: String,
        table: String,
        column: String,
        value: String,
    },
}

impl LegacyTopic {
    /// Parses a topic; `None` when it does not start with `realtime:` or is
    /// not of one of the four forms.
    pub fn parse(topic: &str) -> Result<LegacyTopic, String> {
        let rest = topic
            .strip_prefix("realtime:")
            .ok_or_else(|| "unmatched topic".to_string())?;
        if rest == "*" {
            return Ok(LegacyTopic::All);
        }
        let mut parts = rest.splitn(3, ':');
        let schema = parts.next().unwrap_or_default();
        if schema.is_empty() {
            return Err(format!("topic {topic:?} names no schema"));
        }
        let Some(table) = parts.next() else {
            return Ok(LegacyTopic::Schema(schema.to_string()));
        };
        if table.is_empty() {
            return Err(format!("topic {topic:?} names no table"));
        }
        let Some(filter) = parts.next() else {
            return Ok(LegacyTopic::Table(schema.to_string(), table.to_string()));
        };
        let (column, value) = filter
            .split_once("=eq.")
            .filter(|(c, _)| !c.is_empty())
            .ok_or_else(|| {
                format!("topic {topic:?}: the filter must be column=eq.value, got {filter:?}")
            })?;
        Ok(LegacyTopic::Row {
            schema: schema.to_string(),
            table: table.to_string(),
            column: column.to_string(),
            value: value.to_string(),
        })
    }
}

/// The sockets on one topic.
#[derive(Debug)]
struct TopicSubs {
    topic: Arc<str>,
    sockets: HashMap<SocketId, Vsn>,
}

impl TopicSubs {
    fn new(topic: &str) -> Self {
        TopicSubs {
            topic: topic.into(),
            sockets: HashMap::new(),
        }
    }
}

#[derive(Debug, Default)]
struct TableNode {
    subs: Option<TopicSubs>,
    /// column -> value text -> subscribers of `column=eq.value`.
    rows: HashMap<String, HashMap<String, TopicSubs>>,
}

#[derive(Debug, Default)]
struct SchemaNode {
    subs: Option<TopicSubs>,
    tables: HashMap<String, TableNode>,
}

#[derive(Debug, Default)]
struct LegacyIndex {
    all: Option<TopicSubs>,
    schemas: HashMap<String, SchemaNode>,
}

impl LegacyIndex {
    /// The subscriber set of `topic`, created if absent.
    fn entry(&mut self, key: &LegacyTopic, topic: &str) -> &mut TopicSubs {
        match key {
            LegacyTopic::All => self.all.get_or_insert_with(|| TopicSubs::new(topic)),
            LegacyTopic::Schema(s) => self
                .schemas
                .entry(s.clone())
                .or_default()
                .subs
                .get_or_insert_with(|| TopicSubs::new(topic)),
            LegacyTopic::Table(s, t) => self
                .schemas
                .entry(s.clone())
                .or_default()
                .tables
                .entry(t.clone())
                .or_default()
                .subs
                .get_or_insert_with(|| TopicSubs::new(topic)),
            LegacyTopic::Row {
                schema,
                table,
                column,
                value,
            } => self
                .schemas
                .entry(schema.clone())
                .or_default()
                .tables
                .entry(table.clone())
                .or_default()
                .rows
                .entry(column.clone())
                .or_default()
                .entry(value.clone())
                .or_insert_with(|| TopicSubs::new(topic)),
        }
    }

    /// Removes `socket` from `key`, pruning what becomes empty.
    fn remove(&mut self, key: &LegacyTopic, socket: SocketId) {
        fn drop_empty(subs: &mut Option<TopicSubs>, socket: SocketId) {
            if let Some(s) = subs {
                s.sockets.remove(&socket);
                if s.sockets.is_empty() {
                    *subs = None;
                }
            }
        }
        let (schema, rest) = match key {
            LegacyTopic::All => return drop_empty(&mut self.all, socket),
            LegacyTopic::Schema(s) => (s, None),
            LegacyTopic::Table(s, t) => (s, Some((t, None))),
            LegacyTopic::Row {
                schema,
                table,
                column,
                value,
            } => (schema, Some((table, Some((column, value))))),
        };
        let Some(sn) = self.schemas.get_mut(schema) else {
            return;
        };
        match rest {
            None => drop_empty(&mut sn.subs, socket),
            Some((table, row)) => {
                if let Some(tn) = sn.tables.get_mut(table) {
                    match row {
                        None => drop_empty(&mut tn.subs, socket),
                        Some((column, value)) => {
                            if let Some(values) = tn.rows.get_mut(column) {
                                if let Some(s) = values.get_mut(value) {
                                    s.sockets.remove(&socket);
                                    if s.sockets.is_empty() {
                                        values.remove(value);
                                    }
                                }
                                if values.is_empty() {
                                    tn.rows.remove(column);
                                }
                            }
                        }
                    }
                    if tn.subs.is_none() && tn.rows.is_empty() {
                        sn.tables.remove(table);
                    }
                }
            }
        }
        if sn.subs.is_none() && sn.tables.is_empty() {
            self.schemas.remove(schema);
        }
    }

    /// Calls `f` with every subscriber set that `change` reaches.
    fn matching<'a>(&'a self, change: &Change, mut f: impl FnMut(&'a TopicSubs)) {
        if let Some(s) = &self.all {
            f(s);
        }
        let Some(sn) = self.schemas.get(&change.table.schema) else {
            return;
        };
        if let Some(s) = &sn.subs {
            f(s);
        }
        let Some(tn) = sn.tables.get(&change.table.name) else {
            return;
        };
        if let Some(s) = &tn.subs {
            f(s);
        }
        if change.kind == ChangeKind::Truncate {
            return;
        }
        for (column, values) in &tn.rows {
            let Some(idx) = change.table.column_index(column) else {
                continue;
            };
            let Some(text) = change.filter_text(idx) else {
                continue;
            };
            let Ok(text) = std::str::from_utf8(text) else {
                continue;
            };
            if let Some(s) = values.get(text) {
                f(s);
            }
        }
    }
}

struct SocketEntry {
    tx: mpsc::Sender<Outbound>,
    cancel: CancellationToken,
}

#[derive(Default)]
struct Index {
    sockets: HashMap<SocketId, SocketEntry>,
    legacy: LegacyIndex,
}

/// Counters the hub keeps (exported at `/metrics` later).
#[derive(Debug, Default)]
pub struct HubStats {
    pub changes: AtomicU64,
    pub frames_queued: AtomicU64,
    pub slow_consumer_closes: AtomicU64,
}

/// The handle a socket task gets when it registers.
pub struct Registration {
    pub id: SocketId,
    pub rx: mpsc::Receiver<Outbound>,
    /// A sender into the socket's own queue, for replies.
    pub tx: mpsc::Sender<Outbound>,
    /// Cancelled when the hub closes the socket (slow consumer, shutdown).
    pub cancel: CancellationToken,
}

pub struct Hub {
    index: RwLock<Index>,
    next_id: AtomicU64,
    queue_depth: usize,
    pub stats: HubStats,
}

impl Hub {
    pub fn new(queue_depth: usize) -> Self {
        Hub {
            index: RwLock::new(Index::default()),
            next_id: AtomicU64::new(1),
            queue_depth,
            stats: HubStats::default(),
        }
    }

    pub fn register(&self) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.queue_depth);
        let cancel = CancellationToken::new();
        self.write().sockets.insert(
            id,
            SocketEntry {
                tx: tx.clone(),
                cancel: cancel.clone(),
            },
        );
        Registration { id, rx, tx, cancel }
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

    pub fn socket_count(&self) -> usize {
        self.read().sockets.len()
    }

    /// Closes every socket (shutdown).
    pub fn close_all(&self) {
        for entry in self.read().sockets.values() {
            entry.cancel.cancel();
        }
    }

    /// Hands `change` to every socket whose topic matches, in the order
    /// dispatch is called. Never waits.
    pub fn dispatch(&self, change: &Change) {
        self.stats.changes.fetch_add(1, Ordering::Relaxed);
        let mut slow: Vec<SocketId> = Vec::new();
        {
            let index = self.read();
            let mut payload: Option<String> = None;
            let event = change.kind.as_str();
            let mut queued = 0u64;
            index.legacy.matching(change, |subs| {
                let payload = payload.get_or_insert_with(|| change.legacy_json());
                let mut frames: [Option<Arc<str>>; 2] = [None, None];
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
            self.stats
                .frames_queued
                .fetch_add(queued, Ordering::Relaxed);
        }
        if !slow.is_empty() {
            self.close_slow(slow);
        }
    }

    fn close_slow(&self, ids: Vec<SocketId>) {
        let index = self.read();
        for id in ids {
            if let Some(entry) = index.sockets.get(&id) {
                if !entry.cancel.is_cancelled() {
                    self.stats
                        .slow_consumer_closes
                        .fetch_add(1, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_four_legacy_topics() {
        assert_eq!(LegacyTopic::parse("realtime:*"), Ok(LegacyTopic::All));
        assert_eq!(
            LegacyTopic::parse("realtime:public"),
            Ok(LegacyTopic::Schema("public".into()))
        );
        assert_eq!(
            LegacyTopic::parse("realtime:public:users"),
            Ok(LegacyTopic::Table("public".into(), "users".into()))
        );
        assert_eq!(
            LegacyTopic::parse("realtime:public:users:id=eq.a:b"),
            Ok(LegacyTopic::Row {
                schema: "public".into(),
                table: "users".into(),
                column: "id".into(),
                value: "a:b".into()
            })
        );
        assert_eq!(
            LegacyTopic::parse("room:lobby"),
            Err("unmatched topic".into())
        );
        assert!(LegacyTopic::parse("realtime:public:users:id=gt.1").is_err());
        assert!(LegacyTopic::parse("realtime:").is_err());
    }
}

//! The `postgres_changes` (realtime-js 2.x) subscription index.
//!
//! Bindings are indexed by schema, then table; within a table, a filter
//! with a plain `eq` or `in` condition by that condition's column and
//! canonical values, so a change costs one lookup per indexed column however
//! many sockets filter on other values (a binding found there is checked
//! against its other conditions). Only filters without such a condition
//! (ranges, `neq`, patterns, `is`, negations) of the change's own table are
//! scanned. Filters look at the whole row (before `MAX_RECORD_BYTES` cut
//! it): the new row, or the old row for DELETE.
//!
//! When channels are secured, a binding whose group's policies reduce to
//! `column = value` (the owner pattern) is indexed by that column and value
//! like an `eq` filter, so a change reaches it with one lookup however many
//! users are subscribed; its own filter is then checked on the way. A
//! binding whose group may see no row of the table is kept aside, never
//! visited.

use std::collections::HashMap;
use std::sync::Arc;

use indexmap::IndexSet;

use super::{SocketId, Subscriber};
use crate::authz::plan::Access;
use crate::change::{Cell, Change, ChangeKind};
use crate::filter::{Comparison, Field, Filter, Value};
use crate::phoenix::frame::Vsn;
use crate::select::Selection;

/// A binding that acts as someone: its key, socket, topic, table (`None`:
/// the whole schema) and subscriber.
pub(super) type SecuredBinding = (Key, SocketId, Arc<str>, Option<String>, Subscriber);

/// One binding of a channel.
#[derive(Debug, Clone)]
pub struct Binding {
    pub socket: SocketId,
    pub topic: Arc<str>,
    pub vsn: Vsn,
    pub id: u32,
    pub schema: String,
    /// `None`: every table of the schema.
    pub table: Option<String>,
    /// `None`: every event (`*`).
    pub event: Option<ChangeKind>,
    pub filter: Option<Filter>,
    /// The columns its subscriber receives (`select`); `None`: all.
    pub select: Option<Arc<Selection>>,
    /// Who the binding acts as, when channels are secured.
    pub subscriber: Option<Subscriber>,
}

impl Binding {
    /// The `column = value` this binding is indexed by, when its group's
    /// policies reduce to it (the first of their equalities).
    fn owned_by(&self) -> Option<(&str, &str)> {
        match self.subscriber.as_ref()?.access.as_ref()?.access {
            Access::Match(ref c) => c.first().map(|(k, v)| (k.as_str(), v.as_str())),
            _ => None,
        }
    }

    /// Whether the binding's group may see no row of its table.
    fn sees_nothing(&self) -> bool {
        matches!(
            self.subscriber
                .as_ref()
                .and_then(|s| s.access.as_ref())
                .map(|a| &a.access),
            Some(Access::Nothing | Access::Denied(_))
        )
    }
}

type Key = u64;

/// A set of bindings: iterated in the order they were added, and a binding
/// is removed in constant time, so a leave costs the hub time in proportion
/// to the channel's own bindings and values, whatever else is subscribed.
type Keys = IndexSet<Key>;

/// The bindings indexed by an `eq`/`in` condition on one column of a table.
#[derive(Debug)]
struct EqColumn {
    /// How the column's values compare (the same for every binding on it:
    /// it comes from the column's type).
    kind: Comparison,
    /// canonical value -> bindings.
    values: HashMap<String, Keys>,
}

#[derive(Debug, Default)]
struct TableNode {
    unfiltered: Keys,
    /// column -> its equality bindings.
    eq: HashMap<String, EqColumn>,
    scanned: Keys,
    /// column -> text value -> bindings whose policies say `column = value`.
    owned: HashMap<String, HashMap<String, Keys>>,
    /// Bindings whose group may see no row of the table.
    silent: Keys,
}

impl TableNode {
    fn is_empty(&self) -> bool {
        self.unfiltered.is_empty()
            && self.eq.is_empty()
            && self.scanned.is_empty()
            && self.owned.is_empty()
            && self.silent.is_empty()
    }
}

#[derive(Debug, Default)]
struct SchemaNode {
    all_tables: Keys,
    tables: HashMap<String, TableNode>,
}

/// A binding as indexed, and whether it is its channel's only binding: a
/// change that reaches it then reaches no other binding of the channel, so
/// its frame carries its id alone and equals that of every other such
/// binding with the same topic, id and `select` (see `Hub::share`).
#[derive(Debug)]
struct Indexed {
    binding: Binding,
    alone: bool,
}

#[derive(Debug, Default)]
pub(super) struct BindingIndex {
    next: Key,
    /// Hashed with foldhash: the keys are the index's own numbers.
    bindings: HashMap<Key, Indexed, foldhash::fast::RandomState>,
    /// (socket, topic) -> its bindings.
    by_channel: HashMap<(SocketId, Arc<str>), Vec<Key>>,
    /// Each topic name once, with how many bindings hold it: bindings of
    /// one name share its `Arc`, so comparing them is comparing pointers
    /// (not a cache miss on each socket's own copy of the string).
    topics: HashMap<Arc<str>, usize>,
    schemas: HashMap<String, SchemaNode>,
}

impl BindingIndex {
    /// Adds a binding: time in proportion to its indexed condition's values
    /// (at most `MAX_FILTER_VALUES`, each once).
    pub(super) fn add(&mut self, mut b: Binding) {
        b.topic = match self.topics.get_key_value(&b.topic) {
            Some((shared, _)) => shared.clone(),
            None => b.topic,
        };
        *self.topics.entry(b.topic.clone()).or_default() += 1;
        self.next += 1;
        let k = self.next;
        let keys = self
            .by_channel
            .entry((b.socket, b.topic.clone()))
            .or_default();
        keys.push(k);
        let alone = keys.len() == 1;
        if keys.len() == 2 {
            let first = keys[0];
            if let Some(i) = self.bindings.get_mut(&first) {
                i.alone = false;
            }
        }
        self.insert_key(k, b, alone);
    }

    /// Indexes binding `k`.
    fn insert_key(&mut self, k: Key, b: Binding, alone: bool) {
        let schema = self.schemas.entry(b.schema.clone()).or_default();
        match &b.table {
            None => {
                schema.all_tables.insert(k);
            }
            Some(t) => {
                let node = schema.tables.entry(t.clone()).or_default();
                if b.sees_nothing() {
                    node.silent.insert(k);
                } else if let Some((column, value)) = b.owned_by() {
                    node.owned
                        .entry(column.to_string())
                        .or_default()
                        .entry(value.to_string())
                        .or_default()
                        .insert(k);
                } else {
                    match b.filter.as_ref().map(|f| f.index_keys()) {
                        None => {
                            node.unfiltered.insert(k);
                        }
                        Some(Some(index)) => {
                            let col =
                                node.eq.entry(index.column.to_string()).or_insert_with(|| {
                                    EqColumn {
                                        kind: index.kind,
                                        values: HashMap::new(),
                                    }
                                });
                            for key in index.keys {
                                col.values.entry(key).or_default().insert(k);
                            }
                        }
                        Some(None) => {
                            node.scanned.insert(k);
                        }
                    }
                }
            }
        }
        self.bindings.insert(k, Indexed { binding: b, alone });
    }

    /// Removes every binding of the channel `topic` on `socket`: time in
    /// proportion to those bindings and their values.
    pub(super) fn remove_channel(&mut self, socket: SocketId, topic: &Arc<str>) {
        let Some(keys) = self.by_channel.remove(&(socket, topic.clone())) else {
            return;
        };
        for k in keys {
            if let Some((b, _)) = self.remove_key(k) {
                self.release(&b.topic);
            }
        }
    }

    /// Forgets one binding's hold on its topic name.
    fn release(&mut self, topic: &Arc<str>) {
        if let Some(n) = self.topics.get_mut(topic) {
            *n -= 1;
            if *n == 0 {
                self.topics.remove(topic);
            }
        }
    }

    /// Unindexes binding `k` and returns it, and whether it was alone.
    fn remove_key(&mut self, k: Key) -> Option<(Binding, bool)> {
        let Indexed { binding: b, alone } = self.bindings.remove(&k)?;
        let Some(schema) = self.schemas.get_mut(&b.schema) else {
            return Some((b, alone));
        };
        match &b.table {
            None => {
                schema.all_tables.swap_remove(&k);
            }
            Some(t) => {
                if let Some(node) = schema.tables.get_mut(t) {
                    if b.sees_nothing() {
                        node.silent.swap_remove(&k);
                    } else if let Some((column, value)) = b.owned_by() {
                        if let Some(values) = node.owned.get_mut(column) {
                            if let Some(keys) = values.get_mut(value) {
                                keys.swap_remove(&k);
                                if keys.is_empty() {
                                    values.remove(value);
                                }
                            }
                            if values.is_empty() {
                                node.owned.remove(column);
                            }
                        }
                    } else {
                        match b.filter.as_ref().map(|f| f.index_keys()) {
                            None => {
                                node.unfiltered.swap_remove(&k);
                            }
                            Some(Some(index)) => {
                                if let Some(col) = node.eq.get_mut(index.column) {
                                    for key in index.keys {
                                        if let Some(v) = col.values.get_mut(&key) {
                                            v.swap_remove(&k);
                                            if v.is_empty() {
                                                col.values.remove(&key);
                                            }
                                        }
                                    }
                                    if col.values.is_empty() {
                                        node.eq.remove(index.column);
                                    }
                                }
                            }
                            Some(None) => {
                                node.scanned.swap_remove(&k);
                            }
                        }
                    }
                    if node.is_empty() {
                        schema.tables.remove(t);
                    }
                }
            }
        }
        if schema.all_tables.is_empty() && schema.tables.is_empty() {
            self.schemas.remove(&b.schema);
        }
        Some((b, alone))
    }

    /// Whether which bindings `change` reaches depends on its row, not only
    /// on its table and kind: its table has filtered or owner-indexed
    /// bindings. When it does not, changes of one table and kind reach the
    /// same bindings (while the index does not change).
    pub(super) fn depends_on_row(&self, change: &Change) -> bool {
        self.schemas
            .get(&change.table.schema)
            .and_then(|s| s.tables.get(&change.table.name))
            .is_some_and(|n| !n.eq.is_empty() || !n.scanned.is_empty() || !n.owned.is_empty())
    }

    /// Every binding that `change` reaches.
    pub(super) fn matching<'a>(&'a self, change: &Change, mut f: impl FnMut(&'a Binding)) {
        self.matching_alone(change, |b, _| f(b));
    }

    /// Every binding that `change` reaches, and whether it is its channel's
    /// only binding.
    pub(super) fn matching_alone<'a>(
        &'a self,
        change: &Change,
        mut f: impl FnMut(&'a Binding, bool),
    ) {
        if change.kind == ChangeKind::Truncate {
            return;
        }
        let Some(schema) = self.schemas.get(&change.table.schema) else {
            return;
        };
        let row = |column: &str| field(change, column);
        // Visits binding `k` when its event is the change's and `passes`
        // says its filter (if any) lets the row through.
        let mut visit = |k: &'a Key, passes: &dyn Fn(&Filter) -> bool| {
            if let Some(Indexed { binding: b, alone }) = self.bindings.get(k) {
                if b.event.is_none_or(|e| e == change.kind) && b.filter.as_ref().is_none_or(passes)
                {
                    f(b, *alone);
                }
            }
        };
        let unfiltered = |_: &Filter| true;
        let whole = |f: &Filter| f.matches(row);
        // Found by its indexed condition: the others are checked.
        let rest = |f: &Filter| f.conditions.len() == 1 || f.matches_unindexed(row);
        for k in &schema.all_tables {
            visit(k, &unfiltered);
        }
        let Some(node) = schema.tables.get(&change.table.name) else {
            return;
        };
        for k in &node.unfiltered {
            visit(k, &unfiltered);
        }
        for (column, col) in &node.eq {
            let Field::Text(text) = field(change, column) else {
                continue;
            };
            if let Some(v) = Value::parse(col.kind, &text) {
                if let Some(keys) = col.values.get(&v.key()) {
                    for k in keys {
                        visit(k, &rest);
                    }
                }
            }
        }
        for k in &node.scanned {
            visit(k, &whole);
        }
        // Owner-indexed: one lookup by the deciding row's value; their own
        // filter is checked here. A row that does not hold the column (a
        // key-only old row of a DELETE) cannot be looked up: all of them are
        // visited, and the policies' rule for such deletes applies.
        for (column, values) in &node.owned {
            match deciding_text(change, column) {
                Some(text) => {
                    if let Some(keys) = values.get(text.as_str()) {
                        for k in keys {
                            visit(k, &whole);
                        }
                    }
                }
                None if change.kind == ChangeKind::Delete => {
                    for k in values.values().flatten() {
                        visit(k, &whole);
                    }
                }
                None => {}
            }
        }
    }

    /// Every binding that acts as someone, with its table (`None`: the whole
    /// schema), for looking at their access again.
    pub(super) fn secured(&self) -> Vec<SecuredBinding> {
        self.bindings
            .iter()
            .filter_map(|(k, i)| {
                let b = &i.binding;
                let s = b.subscriber.clone()?;
                Some((*k, b.socket, b.topic.clone(), b.table.clone(), s))
            })
            .collect()
    }

    /// Replaces a binding's access (it is indexed again by it).
    pub(super) fn set_access(
        &mut self,
        k: Key,
        access: Option<crate::authz::authorizer::GroupAccess>,
    ) {
        let Some((mut b, alone)) = self.remove_key(k) else {
            return;
        };
        if let Some(s) = b.subscriber.as_mut() {
            s.access = access;
        }
        self.insert_key(k, b, alone);
    }

    /// Removes one binding (of a channel that stays); returns it.
    pub(super) fn remove_binding(&mut self, k: Key) -> Option<Binding> {
        let (b, _) = self.remove_key(k)?;
        self.release(&b.topic);
        if let Some(keys) = self.by_channel.get_mut(&(b.socket, b.topic.clone())) {
            keys.retain(|x| *x != k);
            if let [last] = keys[..] {
                if let Some(i) = self.bindings.get_mut(&last) {
                    i.alone = true;
                }
            }
        }
        Some(b)
    }
}

/// The text of `column` in the row that decides a change for row level
/// security (the whole row, before `MAX_RECORD_BYTES` cut it).
fn deciding_text(change: &Change, column: &str) -> Option<String> {
    let idx = change.table.column_index(column)?;
    match crate::authz::image::primary(change)?.get(idx)? {
        Cell::Text(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// The value of `column` that a filter looks at: in the new row, or the
/// old row for DELETE, whole (before `MAX_RECORD_BYTES` cut it down, as
/// PostgreSQL would see it). A column the row image does not carry (a
/// key-only old row, an unchanged TOASTed value) is unknown.
fn field<'c>(change: &'c Change, column: &str) -> Field<'c> {
    let cell = change
        .table
        .column_index(column)
        .and_then(|idx| crate::authz::image::primary(change)?.get(idx));
    match cell {
        Some(Cell::Text(b)) => Field::Text(String::from_utf8_lossy(b)),
        Some(Cell::Null) => Field::Null,
        _ => Field::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{ColumnInfo, TableInfo};
    use crate::replication::catalog::TypeKind;
    use crate::replication::pgoutput::ReplicaIdentity;

    fn table() -> Arc<TableInfo> {
        let col = |name: &str, type_name: &str, kind: TypeKind, is_key: bool| ColumnInfo {
            name: name.into(),
            type_name: type_name.into(),
            kind,
            type_oid: 0,
            type_modifier: -1,
            is_key,
        };
        Arc::new(TableInfo::new(
            1,
            "public".into(),
            "items".into(),
            ReplicaIdentity::Full,
            vec![
                col("id", "int8", TypeKind::Integer, true),
                col("room", "int4", TypeKind::Integer, false),
                col("body", "text", TypeKind::Text, false),
            ],
        ))
    }

    fn cell(v: Option<&str>) -> Cell {
        match v {
            Some(t) => Cell::Text(bytes::Bytes::copy_from_slice(t.as_bytes())),
            None => Cell::Null,
        }
    }

    fn insert(room: Option<&str>, body: Option<&str>) -> Change {
        Change {
            kind: ChangeKind::Insert,
            table: table(),
            commit_timestamp: "2024-01-01T00:00:00.000000Z".into(),
            record: Some(vec![cell(Some("1")), cell(room), cell(body)]),
            old_record: None,
            errors: Vec::new(),
            unlimited: None,
        }
    }

    fn binding(socket: SocketId, filter: &str) -> Binding {
        let columns = |c: &str| match c {
            "id" | "room" => Some(Comparison::Number),
            "body" => Some(Comparison::Text),
            _ => None,
        };
        Binding {
            socket,
            topic: "realtime:t".into(),
            vsn: Vsn::V2,
            id: 1,
            schema: "public".into(),
            table: Some("items".into()),
            event: None,
            filter: Some(Filter::parse(filter, columns).unwrap()),
            select: None,
            subscriber: None,
        }
    }

    fn reached(index: &BindingIndex, change: &Change) -> Vec<SocketId> {
        let mut sockets = Vec::new();
        index.matching(change, |b| sockets.push(b.socket));
        sockets.sort_unstable();
        sockets
    }

    /// A filter of several conditions is indexed by its plain eq/in (a
    /// change costs one lookup for it), and the bindings found there are
    /// checked against their other conditions; filters without one are
    /// scanned.
    #[test]
    fn several_conditions_are_indexed_by_one_eq_or_in_and_the_rest_checked() {
        let mut index = BindingIndex::default();
        index.add(binding(1, "body=like.a%,room=eq.1"));
        index.add(binding(2, "room=in.(1,2),body=not.is.null"));
        index.add(binding(3, "room=gt.0,body=like.a%"));
        index.add(binding(4, "room=not.eq.1"));
        let node = &index.schemas["public"].tables["items"];
        let mut keys: Vec<&String> = node.eq["room"].values.keys().collect();
        keys.sort();
        assert_eq!(keys, ["1", "2"]);
        assert_eq!(node.eq["room"].values["1"].len(), 2);
        assert_eq!(node.scanned.len(), 2, "the filters without a plain eq/in");

        assert_eq!(reached(&index, &insert(Some("1"), Some("abc"))), [1, 2, 3]);
        assert_eq!(reached(&index, &insert(Some("1"), Some("xbc"))), [2]);
        assert_eq!(reached(&index, &insert(Some("2"), None)), [4]);
        assert_eq!(
            reached(&index, &insert(None, Some("a"))),
            Vec::<SocketId>::new()
        );

        index.remove_channel(1, &"realtime:t".into());
        index.remove_channel(2, &"realtime:t".into());
        index.remove_channel(3, &"realtime:t".into());
        index.remove_channel(4, &"realtime:t".into());
        assert!(index.schemas.is_empty(), "{:?}", index.schemas);
    }

    /// A value `MAX_RECORD_BYTES` left out of the record is still there
    /// for the filter, as it is for PostgreSQL.
    #[test]
    fn filters_see_the_whole_row() {
        let mut index = BindingIndex::default();
        index.add(binding(1, "body=like.%end"));
        let mut change = insert(Some("1"), Some("a long body's end"));
        change.unlimited = Some(Arc::new((change.record.clone(), None)));
        change.record.as_mut().unwrap()[2] = Cell::Absent;
        assert_eq!(reached(&index, &change), [1]);
        change.unlimited = None;
        assert_eq!(reached(&index, &change), Vec::<SocketId>::new());
    }

    #[test]
    fn bindings_of_one_topic_name_share_it_and_the_name_goes_with_the_last() {
        let mut index = BindingIndex::default();
        let mut one = binding(1, "room=eq.1");
        one.topic = Arc::from("realtime:t");
        let mut two = binding(2, "room=eq.1");
        two.topic = Arc::from("realtime:t");
        assert!(!Arc::ptr_eq(&one.topic, &two.topic));
        index.add(one);
        index.add(two);
        let mut topics = Vec::new();
        index.matching(&insert(Some("1"), None), |b| topics.push(b.topic.clone()));
        assert_eq!(topics.len(), 2);
        assert!(Arc::ptr_eq(&topics[0], &topics[1]));
        drop(topics);
        index.remove_channel(1, &Arc::from("realtime:t"));
        assert_eq!(index.topics.len(), 1);
        index.remove_channel(2, &Arc::from("realtime:t"));
        assert!(index.topics.is_empty(), "{:?}", index.topics);
        assert!(index.bindings.is_empty() && index.by_channel.is_empty());
    }
}

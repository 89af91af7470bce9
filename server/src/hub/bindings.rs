//! The `postgres_changes` (realtime-js 2.x) subscription index.
//!
//! Bindings are indexed by schema, then table; within a table, `eq` and `in`
//! filters by column and canonical value, so a change costs one lookup per
//! filtered column however many sockets filter on other values. Only the
//! range and `neq` filters of the change's own table are scanned.

use std::collections::HashMap;
use std::sync::Arc;

use super::SocketId;
use crate::change::{Cell, Change, ChangeKind};
use crate::filter::{Filter, Value};
use crate::phoenix::frame::Vsn;

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
}

type Key = u64;

#[derive(Debug, Default)]
struct TableNode {
    unfiltered: Vec<Key>,
    /// column -> canonical value -> bindings.
    eq: HashMap<String, HashMap<String, Vec<Key>>>,
    scanned: Vec<Key>,
}

#[derive(Debug, Default)]
struct SchemaNode {
    all_tables: Vec<Key>,
    tables: HashMap<String, TableNode>,
}

#[derive(Debug, Default)]
pub(super) struct BindingIndex {
    next: Key,
    bindings: HashMap<Key, Binding>,
    /// (socket, topic) -> its bindings.
    by_channel: HashMap<(SocketId, Arc<str>), Vec<Key>>,
    schemas: HashMap<String, SchemaNode>,
}

fn remove_key(v: &mut Vec<Key>, k: Key) {
    if let Some(i) = v.iter().position(|x| *x == k) {
        v.swap_remove(i);
    }
}

impl BindingIndex {
    pub(super) fn add(&mut self, b: Binding) {
        self.next += 1;
        let k = self.next;
        let schema = self.schemas.entry(b.schema.clone()).or_default();
        match &b.table {
            None => schema.all_tables.push(k),
            Some(t) => {
                let node = schema.tables.entry(t.clone()).or_default();
                match b.filter.as_ref().map(|f| (f, f.eq_keys())) {
                    None => node.unfiltered.push(k),
                    Some((f, Some(keys))) => {
                        let col = node.eq.entry(f.column.clone()).or_default();
                        for key in keys {
                            col.entry(key).or_default().push(k);
                        }
                    }
                    Some((_, None)) => node.scanned.push(k),
                }
            }
        }
        self.by_channel
            .entry((b.socket, b.topic.clone()))
            .or_default()
            .push(k);
        self.bindings.insert(k, b);
    }

    /// Removes every binding of the channel `topic` on `socket`.
    pub(super) fn remove_channel(&mut self, socket: SocketId, topic: &Arc<str>) {
        let Some(keys) = self.by_channel.remove(&(socket, topic.clone())) else {
            return;
        };
        for k in keys {
            let Some(b) = self.bindings.remove(&k) else {
                continue;
            };
            let Some(schema) = self.schemas.get_mut(&b.schema) else {
                continue;
            };
            match &b.table {
                None => remove_key(&mut schema.all_tables, k),
                Some(t) => {
                    if let Some(node) = schema.tables.get_mut(t) {
                        match b.filter.as_ref().map(|f| (f, f.eq_keys())) {
                            None => remove_key(&mut node.unfiltered, k),
                            Some((f, Some(keys))) => {
                                if let Some(col) = node.eq.get_mut(&f.column) {
                                    for key in keys {
                                        if let Some(v) = col.get_mut(&key) {
                                            remove_key(v, k);
                                            if v.is_empty() {
                                                col.remove(&key);
                                            }
                                        }
                                    }
                                    if col.is_empty() {
                                        node.eq.remove(&f.column);
                                    }
                                }
                            }
                            Some((_, None)) => remove_key(&mut node.scanned, k),
                        }
                        if node.unfiltered.is_empty()
                            && node.eq.is_empty()
                            && node.scanned.is_empty()
                        {
                            schema.tables.remove(t);
                        }
                    }
                }
            }
            if schema.all_tables.is_empty() && schema.tables.is_empty() {
                self.schemas.remove(&b.schema);
            }
        }
    }

    /// Every binding that `change` reaches.
    pub(super) fn matching<'a>(&'a self, change: &Change, mut f: impl FnMut(&'a Binding)) {
        if change.kind == ChangeKind::Truncate {
            return;
        }
        let Some(schema) = self.schemas.get(&change.table.schema) else {
            return;
        };
        let mut visit = |k: &'a Key| {
            if let Some(b) = self.bindings.get(k) {
                if b.event.is_none_or(|e| e == change.kind) {
                    f(b);
                }
            }
        };
        schema.all_tables.iter().for_each(&mut visit);
        let Some(node) = schema.tables.get(&change.table.name) else {
            return;
        };
        node.unfiltered.iter().for_each(&mut visit);
        for (column, values) in &node.eq {
            let Some((kind, text)) = column_text(change, column, self, values) else {
                continue;
            };
            if let Some(v) = Value::parse(kind, &text) {
                if let Some(keys) = values.get(&v.key()) {
                    keys.iter().for_each(&mut visit);
                }
            }
        }
        for k in &node.scanned {
            if let Some(b) = self.bindings.get(k) {
                let filter = b.filter.as_ref().expect("scanned bindings have a filter");
                let text = row_text(change, &filter.column);
                if filter.matches(text.as_deref()) {
                    visit(k);
                }
            }
        }
    }
}

/// The text of `column` in the row a filter looks at, with the comparison
/// kind of the first binding on that column (all share the column's type).
fn column_text(
    change: &Change,
    column: &str,
    index: &BindingIndex,
    values: &HashMap<String, Vec<Key>>,
) -> Option<(crate::filter::Comparison, String)> {
    let kind = values
        .values()
        .flatten()
        .find_map(|k| index.bindings.get(k))
        .and_then(|b| b.filter.as_ref())
        .map(|f| f.kind)?;
    Some((kind, row_text(change, column)?))
}

/// A filter looks at the new row, or the old row for DELETE.
fn row_text(change: &Change, column: &str) -> Option<String> {
    let idx = change.table.column_index(column)?;
    let row = match change.kind {
        ChangeKind::Delete => change.old_record.as_ref()?,
        _ => change.record.as_ref()?,
    };
    match row.get(idx)? {
        Cell::Text(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

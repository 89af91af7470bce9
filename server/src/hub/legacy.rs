//! The legacy (realtime-js 1.x) subscription index: topics `realtime:*`,
//! `realtime:{schema}`, `realtime:{schema}:{table}` and
//! `realtime:{schema}:{table}:{column}=eq.{value}`, as nested hash maps so a
//! change finds its subscribers with a few lookups.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Revoked, SocketId, Subscriber};
use crate::authz::authorizer::{Authorizer, GroupAccess};
use crate::authz::plan::Access;
use crate::change::{Change, ChangeKind};
use crate::phoenix::frame::Vsn;

/// One socket on a topic.
#[derive(Debug, Clone)]
pub(super) struct LegacySub {
    pub(super) vsn: Vsn,
    /// Who it acts as, when channels are secured.
    pub(super) subscriber: Option<Subscriber>,
}

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
pub(super) struct TopicSubs {
    pub(super) topic: Arc<str>,
    pub(super) sockets: HashMap<SocketId, LegacySub>,
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
pub(super) struct LegacyIndex {
    all: Option<TopicSubs>,
    schemas: HashMap<String, SchemaNode>,
}

impl LegacyIndex {
    /// The subscriber set of `topic`, created if absent.
    pub(super) fn entry(&mut self, key: &LegacyTopic, topic: &str) -> &mut TopicSubs {
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
    pub(super) fn remove(&mut self, key: &LegacyTopic, socket: SocketId) {
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

    /// Removes the subscriptions to one table whose group lost access to it
    /// (see `Hub::refresh_access`).
    pub(super) fn revoked(&mut self, authz: &Authorizer) -> Vec<Revoked> {
        let mut out = Vec::new();
        let mut check = |subs: &mut TopicSubs, table: String| {
            subs.sockets.retain(|socket, sub| {
                let vsn = sub.vsn;
                let Some(s) = &mut sub.subscriber else {
                    return true;
                };
                let Some(oid) = s.table else {
                    return true;
                };
                match authz.cached_access(oid, &s.group) {
                    Some(GroupAccess {
                        access: Access::Denied(reason),
                        ..
                    }) => {
                        out.push(Revoked {
                            socket: *socket,
                            topic: subs.topic.clone(),
                            vsn,
                            table: table.clone(),
                            reason,
                        });
                        false
                    }
                    // The policies changed: the subscription decides with
                    // the new access from now on.
                    Some(new) => {
                        s.access = Some(new);
                        true
                    }
                    None => true,
                }
            });
        };
        for (schema, sn) in &mut self.schemas {
            for (table, tn) in &mut sn.tables {
                let name = format!("{schema}.{table}");
                if let Some(subs) = tn.subs.as_mut() {
                    check(subs, name.clone());
                }
                for values in tn.rows.values_mut() {
                    for subs in values.values_mut() {
                        check(subs, name.clone());
                    }
                }
            }
        }
        out
    }

    /// Calls `f` with every subscriber set that `change` reaches.
    pub(super) fn matching<'a>(&'a self, change: &Change, mut f: impl FnMut(&'a TopicSubs)) {
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

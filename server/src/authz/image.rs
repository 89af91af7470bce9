//! The row images a change carries, as the policies see them.
//!
//! Owns which image decides a change (the new row for INSERT and UPDATE,
//! the old row for DELETE, and for an UPDATE the old row again to decide
//! whether the old values may go along), whether an image holds every column
//! the policies read (a key-only old row or an unchanged TOASTed value does
//! not), and the image as a JSON object for `json_populate_record`: text
//! values as JSON strings, `json`/`jsonb` values embedded as JSON.

use std::collections::BTreeSet;

use crate::change::{push_json_str, Cell, Change, ChangeKind, Row, TableInfo};
use crate::replication::catalog::TypeKind;

/// The image that decides whether a change reaches a group.
pub fn primary(change: &Change) -> Option<&Row> {
    match change.kind {
        ChangeKind::Delete => change.unlimited_old().or(change.old_record.as_ref()),
        ChangeKind::Insert | ChangeKind::Update => {
            change.unlimited_new().or(change.record.as_ref())
        }
        ChangeKind::Truncate => None,
    }
}

/// For an UPDATE, the old image whose visibility decides whether
/// `old_record` is sent; `None` when the change carries no old values
/// (nothing to withhold).
pub fn previous(change: &Change) -> Option<&Row> {
    if change.kind != ChangeKind::Update {
        return None;
    }
    let old = change.unlimited_old().or(change.old_record.as_ref())?;
    old.iter().any(|c| *c != Cell::Absent).then_some(old)
}

/// Whether `row` holds a value (or NULL) for every column in `reads`
/// (`None`: a column no image has, so never).
pub fn complete(table: &TableInfo, row: &Row, reads: Option<&BTreeSet<String>>) -> bool {
    let known = |c: &Cell| matches!(c, Cell::Text(_) | Cell::Null);
    match reads {
        None => false,
        Some(columns) => columns.iter().all(|name| {
            table
                .column_index(name)
                .and_then(|i| row.get(i))
                .is_some_and(known)
        }),
    }
}

/// Whether `row`'s columns hold exactly these text values.
pub fn matches(table: &TableInfo, row: &Row, constraints: &[(String, String)]) -> bool {
    constraints.iter().all(|(column, value)| {
        table
            .column_index(column)
            .and_then(|i| row.get(i))
            .is_some_and(|c| matches!(c, Cell::Text(b) if b.as_ref() == value.as_bytes()))
    })
}

/// The image as a JSON object, absent columns left out.
pub fn json(table: &TableInfo, row: &Row) -> String {
    let mut out = String::with_capacity(128);
    out.push('{');
    let mut first = true;
    for (col, cell) in table.columns.iter().zip(row) {
        let value = match cell {
            Cell::Absent | Cell::UnchangedToast => continue,
            Cell::Null => None,
            Cell::Text(b) => Some(b),
        };
        if !first {
            out.push(',');
        }
        first = false;
        push_json_str(&mut out, &col.name);
        out.push(':');
        match value {
            None => out.push_str("null"),
            Some(bytes) => {
                let text = String::from_utf8_lossy(bytes);
                // json and jsonb columns take the JSON value itself.
                if col.kind == TypeKind::Json
                    && serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok()
                {
                    out.push_str(&text);
                } else {
                    push_json_str(&mut out, &text);
                }
            }
        }
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::ColumnInfo;
    use crate::replication::pgoutput::ReplicaIdentity;
    use bytes::Bytes;
    use std::sync::Arc;

    fn table() -> Arc<TableInfo> {
        let col = |name: &str, kind: TypeKind| ColumnInfo {
            name: name.into(),
            type_name: "x".into(),
            kind,
            type_oid: 25,
            type_modifier: -1,
            is_key: name == "id",
        };
        Arc::new(TableInfo::new(
            1,
            "public".into(),
            "t".into(),
            ReplicaIdentity::Default,
            vec![
                col("id", TypeKind::Integer),
                col("owner", TypeKind::Text),
                col("doc", TypeKind::Json),
            ],
        ))
    }

    fn text(s: &str) -> Cell {
        Cell::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn images_as_json_and_completeness() {
        let t = table();
        let row = vec![text("1"), text("a\"b"), text(r#"{"k": [1]}"#)];
        assert_eq!(
            json(&t, &row),
            r#"{"id":"1","owner":"a\"b","doc":{"k": [1]}}"#
        );
        let reads: BTreeSet<String> = ["owner".to_string()].into();
        assert!(complete(&t, &row, Some(&reads)));
        assert!(!complete(&t, &row, None));
        let key_only = vec![text("1"), Cell::Absent, Cell::Absent];
        assert_eq!(json(&t, &key_only), r#"{"id":"1"}"#);
        assert!(!complete(&t, &key_only, Some(&reads)));
        let toast = vec![text("1"), Cell::UnchangedToast, Cell::Null];
        assert!(!complete(&t, &toast, Some(&reads)));
        assert_eq!(json(&t, &toast), r#"{"id":"1","doc":null}"#);
    }

    #[test]
    fn constraints_compare_text_forms() {
        let t = table();
        let row = vec![text("1"), text("alice"), Cell::Null];
        assert!(matches(&t, &row, &[("owner".into(), "alice".into())]));
        assert!(!matches(&t, &row, &[("owner".into(), "bob".into())]));
        assert!(!matches(&t, &row, &[("doc".into(), "null".into())]));
        assert!(!matches(&t, &row, &[("missing".into(), "x".into())]));
        assert!(matches(&t, &row, &[]));
    }
}

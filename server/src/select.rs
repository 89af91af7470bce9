//! The `select` column list of a `postgres_changes` binding (realtime-js
//! 2.1xx's `select: ['id', 'body']`): the columns its subscriber's `record`,
//! `old_record` and `columns` keep.
//!
//! Owns reading the list at join, as Supabase Realtime reads it (a list of
//! column names; a string is refused; entries that are not strings are
//! ignored; the table's primary key columns are always kept; a binding on a
//! whole schema may not select), and which of a table's columns a selection
//! keeps. Must not encode payloads (`typed`) or route changes (the hub).

use serde_json::Value;

/// The longest `select` list read: PostgreSQL tables have at most 1600
/// columns, so a longer list names a column twice or one that is not there.
/// Bounds the work a join's list costs before its names are looked up.
pub const MAX_SELECT_COLUMNS: usize = 1600;

/// The columns a binding's subscriber receives: those it selected and the
/// table's primary key, sorted, each once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Selection {
    columns: Vec<String>,
}

impl Selection {
    /// Reads a binding's `select` (`None`: not sent, or null) for a binding on
    /// one table (`table`) whose columns `has_column` knows, with primary
    /// key columns `keys`. `Ok(None)`: every column.
    pub fn parse(
        select: Option<&Value>,
        table: bool,
        has_column: impl Fn(&str) -> bool,
        keys: &[String],
    ) -> Result<Option<Selection>, String> {
        let list = match select {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(list)) => list,
            Some(Value::String(_)) => {
                return Err("select must be a list of column names, e.g. \
                            select: [\"id\", \"body\"], not a string"
                    .into())
            }
            Some(_) => return Err("select must be a list of column names".into()),
        };
        if list.len() > MAX_SELECT_COLUMNS {
            return Err(format!(
                "select lists {} columns; a table has at most {MAX_SELECT_COLUMNS}",
                list.len()
            ));
        }
        // Entries that are not strings are skipped, as Supabase Realtime
        // does; a list of none selects every column.
        let names: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
        if names.is_empty() {
            return Ok(None);
        }
        if !table {
            return Err("select needs a table: a binding on a whole schema \
                        receives whole rows"
                .into());
        }
        let mut columns = Vec::with_capacity(names.len() + keys.len());
        for name in names {
            if !has_column(name) {
                return Err(format!("select: the table has no column {name:?}"));
            }
            columns.push(name.to_string());
        }
        columns.extend(keys.iter().cloned());
        columns.sort_unstable();
        columns.dedup();
        Ok(Some(Selection { columns }))
    }

    /// The selected columns (the primary key included), sorted.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Whether the selection keeps the column `name`.
    pub fn keeps(&self, name: &str) -> bool {
        self.columns
            .binary_search_by(|c| c.as_str().cmp(name))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(select: Value, table: bool) -> Result<Option<Selection>, String> {
        let keys = vec!["id".to_string()];
        Selection::parse(
            Some(&select),
            table,
            |c| ["id", "body", "room"].contains(&c),
            &keys,
        )
    }

    #[test]
    fn a_list_of_columns_keeps_them_and_the_primary_key() {
        let s = parse(json!(["room", "body", "room"]), true)
            .unwrap()
            .unwrap();
        assert_eq!(s.columns(), ["body", "id", "room"]);
        assert!(s.keeps("id") && s.keeps("body") && !s.keeps("other"));
        let s = parse(json!(["body"]), true).unwrap().unwrap();
        assert!(s.keeps("id"), "the primary key always goes along");
        assert!(!s.keeps("room"));
    }

    #[test]
    fn no_list_is_every_column() {
        assert_eq!(Selection::parse(None, true, |_| true, &[]), Ok(None));
        assert_eq!(parse(json!(null), true), Ok(None));
        assert_eq!(parse(json!([]), true), Ok(None));
        assert_eq!(
            parse(json!([1, null]), true),
            Ok(None),
            "non-strings are skipped"
        );
        assert_eq!(
            parse(json!(["body", 7]), true).unwrap().unwrap().columns(),
            ["body", "id"]
        );
    }

    #[test]
    fn bad_lists_say_why() {
        assert!(parse(json!("id,body"), true)
            .unwrap_err()
            .contains("not a string"));
        assert!(parse(json!({"a": 1}), true)
            .unwrap_err()
            .contains("a list of column names"));
        assert!(parse(json!(["nope"]), true)
            .unwrap_err()
            .contains("no column \"nope\""));
        assert!(parse(json!(["id"]), false)
            .unwrap_err()
            .contains("select needs a table"));
        assert_eq!(
            parse(json!([]), false),
            Ok(None),
            "an empty list selects every column"
        );
        let long: Vec<&str> = vec!["id"; MAX_SELECT_COLUMNS + 1];
        assert!(parse(json!(long), true)
            .unwrap_err()
            .contains("at most 1600"));
    }
}

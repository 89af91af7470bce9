//! Typed JSON values from PostgreSQL's text forms, and the `postgres_changes`
//! payload (realtime-js 2.x) built from them.
//!
//! Owns: booleans as `true`/`false`, numbers as JSON numbers (non-finite
//! ones as strings), json/jsonb embedded, arrays (`{1,2,"a b",NULL}`) as JSON
//! arrays of their element kind, timestamps as ISO-8601 UTC strings,
//! everything else as strings.

use crate::change::{
    iso_timestamp, push_errors, push_json_str, push_row, Cell, Change, ChangeKind, Row, TableInfo,
};
use crate::replication::catalog::TypeKind;
use crate::select::Selection;

/// Appends the typed JSON of `text`, a value of `kind`.
pub fn push_typed(out: &mut String, kind: &TypeKind, text: &str) {
    match kind {
        TypeKind::Bool => out.push_str(match text {
            "t" => "true",
            "f" => "false",
            other => return push_json_str(out, other),
        }),
        TypeKind::Integer | TypeKind::Float | TypeKind::Numeric => {
            if is_json_number(text) {
                out.push_str(text);
            } else {
                // NaN, Infinity: not JSON numbers.
                push_json_str(out, text);
            }
        }
        TypeKind::Json => {
            // PostgreSQL validated it; a json value keeps its spacing.
            if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
                out.push_str(text);
            } else {
                push_json_str(out, text);
            }
        }
        TypeKind::Timestamp | TypeKind::TimestampTz => push_json_str(out, &iso_timestamp(text)),
        TypeKind::Array(elem) => match parse_array(text) {
            Some(items) => push_array(out, elem, &items),
            None => push_json_str(out, text),
        },
        TypeKind::Text => push_json_str(out, text),
    }
}

fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return false;
    }
    let mut i = usize::from(b[0] == b'-');
    let digits_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - digits_start;
    if int_digits == 0 || (int_digits > 1 && b[digits_start] == b'0') {
        return false;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    i == b.len()
}

/// An element of a parsed array literal.
#[derive(Debug, Clone, PartialEq)]
pub enum ArrayItem {
    Null,
    Value(String),
    Array(Vec<ArrayItem>),
}

/// Parses PostgreSQL's array output (`{1,2}`, `{{1,2},{3,4}}`,
/// `{"a b",NULL,"x\"y"}`). Arrays with explicit bounds (`[0:1]={...}`) and
/// anything unexpected give `None`; the caller then sends the text.
pub fn parse_array(text: &str) -> Option<Vec<ArrayItem>> {
    let b = text.as_bytes();
    let mut pos = 0;
    let items = parse_level(b, &mut pos)?;
    (pos == b.len()).then_some(items)
}

fn parse_level(b: &[u8], pos: &mut usize) -> Option<Vec<ArrayItem>> {
    if b.get(*pos) != Some(&b'{') {
        return None;
    }
    *pos += 1;
    let mut items = Vec::new();
    if b.get(*pos) == Some(&b'}') {
        *pos += 1;
        return Some(items);
    }
    loop {
        match b.get(*pos)? {
            b'{' => items.push(ArrayItem::Array(parse_level(b, pos)?)),
            b'"' => {
                *pos += 1;
                let mut s = Vec::new();
                loop {
                    match *b.get(*pos)? {
                        b'\\' => {
                            s.push(*b.get(*pos + 1)?);
                            *pos += 2;
                        }
                        b'"' => {
                            *pos += 1;
                            break;
                        }
                        c => {
                            s.push(c);
                            *pos += 1;
                        }
                    }
                }
                items.push(ArrayItem::Value(String::from_utf8(s).ok()?));
            }
            _ => {
                let start = *pos;
                while !matches!(b.get(*pos)?, b',' | b'}') {
                    *pos += 1;
                }
                let raw = std::str::from_utf8(&b[start..*pos]).ok()?;
                items.push(if raw == "NULL" {
                    ArrayItem::Null
                } else {
                    ArrayItem::Value(raw.to_string())
                });
            }
        }
        match b.get(*pos)? {
            b',' => *pos += 1,
            b'}' => {
                *pos += 1;
                return Some(items);
            }
            _ => return None,
        }
    }
}

fn push_array(out: &mut String, elem: &TypeKind, items: &[ArrayItem]) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            ArrayItem::Null => out.push_str("null"),
            ArrayItem::Value(v) => push_typed(out, elem, v),
            ArrayItem::Array(inner) => push_array(out, elem, inner),
        }
    }
    out.push(']');
}

fn push_typed_row(out: &mut String, table: &TableInfo, row: &Row) {
    push_row(out, table, row, |out, col, text| {
        push_typed(out, &col.kind, text)
    })
}

/// The `data` object of a `postgres_changes` push.
pub fn postgres_changes_data(change: &Change) -> String {
    data(change, None)
}

/// [`postgres_changes_data`] for a binding that selected columns: `columns`,
/// `record` and `old_record` keep only those (the primary key among them).
pub fn postgres_changes_data_selected(change: &Change, select: &Selection) -> String {
    let keep: Vec<bool> = change
        .table
        .columns
        .iter()
        .map(|c| select.keeps(&c.name))
        .collect();
    data(change, Some(&keep))
}

/// `keep`: which columns go out (`None`: all).
fn data(change: &Change, keep: Option<&[bool]>) -> String {
    let kept = |i: usize| keep.is_none_or(|k| k.get(i).copied().unwrap_or(false));
    let trimmed = |row: &Row| -> Row {
        row.iter()
            .enumerate()
            .map(|(i, c)| if kept(i) { c.clone() } else { Cell::Absent })
            .collect()
    };
    let t = &change.table;
    let mut out = String::with_capacity(256);
    out.push_str("{\"schema\":");
    push_json_str(&mut out, &t.schema);
    out.push_str(",\"table\":");
    push_json_str(&mut out, &t.name);
    out.push_str(",\"commit_timestamp\":\"");
    out.push_str(&change.commit_timestamp);
    out.push_str("\",\"type\":\"");
    out.push_str(change.kind.as_str());
    out.push_str("\",\"columns\":[");
    let mut first = true;
    for (_, c) in t.columns.iter().enumerate().filter(|(i, _)| kept(*i)) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str("{\"name\":");
        push_json_str(&mut out, &c.name);
        out.push_str(",\"type\":");
        push_json_str(&mut out, &c.type_name);
        out.push('}');
    }
    out.push(']');
    let row = |out: &mut String, row: &Row| match keep {
        None => push_typed_row(out, t, row),
        Some(_) => push_typed_row(out, t, &trimmed(row)),
    };
    if let Some(record) = &change.record {
        out.push_str(",\"record\":");
        row(&mut out, record);
    } else if change.kind != ChangeKind::Truncate {
        out.push_str(",\"record\":{}");
    }
    if let Some(old) = &change.old_record {
        out.push_str(",\"old_record\":");
        row(&mut out, old);
    }
    push_errors(&mut out, &change.errors);
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(kind: TypeKind, text: &str) -> serde_json::Value {
        let mut s = String::new();
        push_typed(&mut s, &kind, text);
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn values_become_json_of_their_type() {
        use serde_json::json;
        assert_eq!(typed(TypeKind::Bool, "t"), json!(true));
        assert_eq!(typed(TypeKind::Integer, "-42"), json!(-42));
        assert_eq!(typed(TypeKind::Numeric, "1.50"), json!(1.5));
        assert_eq!(typed(TypeKind::Float, "NaN"), json!("NaN"));
        assert_eq!(typed(TypeKind::Float, "1e+30"), json!(1e30));
        assert_eq!(typed(TypeKind::Json, "{\"a\": [1]}"), json!({"a": [1]}));
        assert_eq!(
            typed(TypeKind::TimestampTz, "2021-02-16 23:47:47.5+00"),
            json!("2021-02-16T23:47:47.5Z")
        );
        let ints = TypeKind::Array(Box::new(TypeKind::Integer));
        assert_eq!(typed(ints.clone(), "{1,2,NULL}"), json!([1, 2, null]));
        assert_eq!(
            typed(ints.clone(), "{{1,2},{3,4}}"),
            json!([[1, 2], [3, 4]])
        );
        assert_eq!(typed(ints, "[0:1]={1,2}"), json!("[0:1]={1,2}"));
        let texts = TypeKind::Array(Box::new(TypeKind::Text));
        assert_eq!(
            typed(texts, r#"{a,"b c","x\"y",NULL,"NULL"}"#),
            json!(["a", "b c", "x\"y", null, "NULL"])
        );
        assert_eq!(typed(TypeKind::Text, "héllo"), json!("héllo"));
    }
}

//! The change model and its legacy JSON form.
//!
//! Owns what one row change is once decoded (`Change`: the table, the new and
//! old rows, the commit time) and how it is written for realtime-js 1.x clients
//! (the payload realtime-js 1.x reads, as the README's "Run the server against
//! your PostgreSQL" shows it: text values, timestamps in UTC with `Z`,
//! `columns` with flags and type_modifier). Knows nothing of sockets or topics.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;

use crate::replication::catalog::TypeKind;
use crate::replication::pgoutput::ReplicaIdentity;

/// Seconds from the Unix epoch to PostgreSQL's epoch (2000-01-01 UTC).
pub const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

/// The placeholder for a TOASTed value that an UPDATE did not change and that
/// the old row does not carry.
pub const UNCHANGED_TOAST: &str = "unchanged_toast";

/// A published table as the latest `Relation` message describes it, with
/// type names resolved. Replaced whole when the table changes.
#[derive(Debug)]
pub struct TableInfo {
    pub id: u32,
    pub schema: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<ColumnInfo>,
    /// `"columns":[...]` of the legacy payload, encoded once per relation.
    pub legacy_columns_json: String,
}

#[derive(Debug)]
pub struct ColumnInfo {
    pub name: String,
    pub type_name: String,
    pub kind: TypeKind,
    pub type_oid: u32,
    pub type_modifier: i32,
    pub is_key: bool,
}

impl TableInfo {
    pub fn new(
        id: u32,
        schema: String,
        name: String,
        replica_identity: ReplicaIdentity,
        columns: Vec<ColumnInfo>,
    ) -> Self {
        let mut json = String::from("[");
        for (i, c) in columns.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str("{\"name\":");
            push_json_str(&mut json, &c.name);
            json.push_str(",\"type\":");
            push_json_str(&mut json, &c.type_name);
            json.push_str(if c.is_key {
                ",\"flags\":[\"key\"]"
            } else {
                ",\"flags\":[]"
            });
            // atttypmod as an unsigned 32-bit number (4294967295 for -1).
            let _ = write!(json, ",\"type_modifier\":{}}}", c.type_modifier as u32);
        }
        json.push(']');
        TableInfo {
            id,
            schema,
            name,
            replica_identity,
            columns,
            legacy_columns_json: json,
        }
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Insert => "INSERT",
            ChangeKind::Update => "UPDATE",
            ChangeKind::Delete => "DELETE",
            ChangeKind::Truncate => "TRUNCATE",
        }
    }
}

/// One column's value in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// The column is not part of this row image (e.g. a non-key column of a
    /// key-only old row): left out of the JSON object.
    Absent,
    Null,
    /// The text form, as PostgreSQL's output function wrote it.
    Text(Bytes),
    /// A TOASTed value that did not change and that no old row carries.
    UnchangedToast,
}

/// One row image, a cell per column of the table (in column order).
pub type Row = Vec<Cell>;

/// A committed row change, ready to be matched and encoded.
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: ChangeKind,
    pub table: Arc<TableInfo>,
    /// ISO-8601 UTC with microseconds and `Z`, shared by the transaction.
    pub commit_timestamp: Arc<str>,
    /// The new row: INSERT and UPDATE.
    pub record: Option<Row>,
    /// The old row: UPDATE (empty when the key did not change and the table
    /// has no REPLICA IDENTITY FULL) and DELETE.
    pub old_record: Option<Row>,
    /// Things the client should know about this change, e.g. a TOASTed value
    /// that could not be filled.
    pub errors: Vec<String>,
    /// The new and old rows before `MAX_RECORD_BYTES` cut them down, when it
    /// did: row level security decides on the whole row.
    pub unlimited: Option<Arc<(Option<Row>, Option<Row>)>>,
}

impl Change {
    /// The whole new row, when `record` was cut down.
    pub fn unlimited_new(&self) -> Option<&Row> {
        self.unlimited.as_ref().and_then(|u| u.0.as_ref())
    }

    /// The whole old row, when `old_record` was cut down.
    pub fn unlimited_old(&self) -> Option<&Row> {
        self.unlimited.as_ref().and_then(|u| u.1.as_ref())
    }

    /// The text of `column` in the row that selects this change for a
    /// `column=eq.value` topic: the new row, or the old row for DELETE.
    pub fn filter_text(&self, column: usize) -> Option<&[u8]> {
        let row = match self.kind {
            ChangeKind::Delete => self.old_record.as_ref()?,
            _ => self.record.as_ref()?,
        };
        match row.get(column)? {
            Cell::Text(b) => Some(b),
            _ => None,
        }
    }

    /// The legacy payload (realtime-js 1.x): `{type, schema, table,
    /// commit_timestamp, columns, record, old_record, errors}`.
    pub fn legacy_json(&self) -> String {
        let t = &self.table;
        let mut out = String::with_capacity(256);
        out.push_str("{\"type\":\"");
        out.push_str(self.kind.as_str());
        out.push_str("\",\"schema\":");
        push_json_str(&mut out, &t.schema);
        out.push_str(",\"table\":");
        push_json_str(&mut out, &t.name);
        out.push_str(",\"commit_timestamp\":\"");
        out.push_str(&self.commit_timestamp);
        out.push('"');
        if self.kind == ChangeKind::Truncate {
            out.push('}');
            return out;
        }
        out.push_str(",\"columns\":");
        out.push_str(&t.legacy_columns_json);
        if let Some(record) = &self.record {
            out.push_str(",\"record\":");
            push_legacy_row(&mut out, t, record);
        }
        if let Some(old) = &self.old_record {
            out.push_str(",\"old_record\":");
            push_legacy_row(&mut out, t, old);
        }
        push_errors(&mut out, &self.errors);
        out.push('}');
        out
    }
}

fn push_legacy_row(out: &mut String, table: &TableInfo, row: &Row) {
    push_row(out, table, row, |out, col, text| match col.kind {
        TypeKind::Timestamp | TypeKind::TimestampTz => push_json_str(out, &iso_timestamp(text)),
        _ => push_json_str(out, text),
    })
}

/// Appends a row as a JSON object, leaving out absent cells; `value` writes
/// a column's text as JSON (the two wire forms differ only there).
pub(crate) fn push_row(
    out: &mut String,
    table: &TableInfo,
    row: &Row,
    value: impl Fn(&mut String, &ColumnInfo, &str),
) {
    out.push('{');
    let mut first = true;
    for (col, cell) in table.columns.iter().zip(row) {
        if *cell == Cell::Absent {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        push_json_str(out, &col.name);
        out.push(':');
        match cell {
            Cell::Absent => unreachable!("skipped above"),
            Cell::Null => out.push_str("null"),
            Cell::UnchangedToast => push_json_str(out, UNCHANGED_TOAST),
            Cell::Text(bytes) => value(out, col, &String::from_utf8_lossy(bytes)),
        }
    }
    out.push('}');
}

/// Appends `"errors":null` or `"errors":[...]`.
pub(crate) fn push_errors(out: &mut String, errors: &[String]) {
    out.push_str(",\"errors\":");
    if errors.is_empty() {
        out.push_str("null");
        return;
    }
    out.push('[');
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, e);
    }
    out.push(']');
}

/// Appends `s` as a JSON string literal.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// PostgreSQL's text form of a timestamp (`2021-02-16 23:47:47.518844+00`,
/// or without zone) as ISO-8601 in UTC with `Z`. The replication session runs
/// with `TimeZone=UTC`, so the zone is `+00` and this is a rewrite; another
/// offset is converted. Values that are not plain timestamps (`infinity`,
/// BC dates) are returned as they are.
pub fn iso_timestamp(text: &str) -> String {
    let b = text.as_bytes();
    let well_formed = b.len() >= 19 && b[10] == b' ' && b[4] == b'-' && !text.ends_with(" BC");
    if !well_formed {
        return text.to_string();
    }
    let (local, zone) = split_zone(text);
    let mut out = String::with_capacity(text.len() + 2);
    match zone {
        None | Some("+00") => {
            out.push_str(&local[..10]);
            out.push('T');
            out.push_str(&local[11..]);
            out.push('Z');
            out
        }
        Some(_) => match chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z") {
            Ok(t) => t
                .with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            Err(_) => text.to_string(),
        },
    }
}

/// Splits `2021-02-16 23:47:47.5+05:30` into the local part and `+05:30`.
fn split_zone(text: &str) -> (&str, Option<&str>) {
    match text[19..].find(['+', '-']) {
        Some(i) => (&text[..19 + i], Some(&text[19 + i..])),
        None => (text, None),
    }
}

/// A commit time in microseconds since 2000-01-01 UTC, as ISO-8601 with six
/// fractional digits and `Z`, the form realtime's clients have always seen.
///
/// Written digit by digit: once per transaction, chrono's `format` (which
/// interprets the pattern each time) was 4% of the server's ingest profile.
pub fn commit_timestamp(micros_since_2000: i64) -> String {
    use chrono::{Datelike, Timelike};
    let unix_micros = micros_since_2000.saturating_add(PG_EPOCH_UNIX_SECS * 1_000_000);
    let Some(t) = chrono::DateTime::from_timestamp_micros(unix_micros) else {
        return "1970-01-01T00:00:00.000000Z".to_string();
    };
    if !(0..=9999).contains(&t.year()) {
        return t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    }
    let fields = [
        (t.year() as u32, 4),
        (t.month(), 2),
        (t.day(), 2),
        (t.hour(), 2),
        (t.minute(), 2),
        (t.second(), 2),
        (t.nanosecond() / 1000, 6),
    ];
    let separators = [b'-', b'-', b'T', b':', b':', b'.', b'Z'];
    let mut out = Vec::with_capacity(27);
    for ((value, width), sep) in fields.into_iter().zip(separators) {
        let mut digits = [b'0'; 6];
        let mut v = value;
        for d in digits[..width].iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&digits[..width]);
        out.push(sep);
    }
    String::from_utf8(out).expect("ASCII digits and separators")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_become_utc_iso() {
        assert_eq!(
            iso_timestamp("2021-02-16 23:47:47.518844+00"),
            "2021-02-16T23:47:47.518844Z"
        );
        assert_eq!(iso_timestamp("2021-02-16 23:47:47"), "2021-02-16T23:47:47Z");
        assert_eq!(
            iso_timestamp("2021-02-17 05:17:47.5+05:30"),
            "2021-02-16T23:47:47.500Z"
        );
        assert_eq!(iso_timestamp("infinity"), "infinity");
        assert_eq!(
            iso_timestamp("0044-03-15 12:00:00 BC"),
            "0044-03-15 12:00:00 BC"
        );
    }

    #[test]
    fn commit_timestamp_has_microseconds_and_z() {
        // 2021-02-16T23:47:47.518844Z
        let unix = 1_613_519_267_518_844_i64;
        let pg = unix - PG_EPOCH_UNIX_SECS * 1_000_000;
        assert_eq!(commit_timestamp(pg), "2021-02-16T23:47:47.518844Z");
        assert_eq!(commit_timestamp(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(commit_timestamp(-1), "1999-12-31T23:59:59.999999Z");
    }

    proptest::proptest! {
        /// The hand-written formatter says what chrono's format says, from
        /// year 1 to 9999 and beyond.
        #[test]
        fn commit_timestamp_matches_chrono(micros in -63_082_281_600_000_000_i64..300_000_000_000_000_000) {
            let unix_micros = micros + PG_EPOCH_UNIX_SECS * 1_000_000;
            let expected = chrono::DateTime::from_timestamp_micros(unix_micros)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
            proptest::prop_assert_eq!(Some(commit_timestamp(micros)), expected);
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\nd\u{1}é😀");
        assert_eq!(s, "\"a\\\"b\\\\c\\nd\\u0001é😀\"");
        let parsed: String = serde_json::from_str(&s).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}é😀");
    }

    fn users() -> Arc<TableInfo> {
        Arc::new(TableInfo::new(
            1,
            "public".into(),
            "users".into(),
            ReplicaIdentity::Default,
            vec![
                ColumnInfo {
                    name: "id".into(),
                    type_name: "int8".into(),
                    kind: TypeKind::Integer,
                    type_oid: 20,
                    type_modifier: -1,
                    is_key: true,
                },
                ColumnInfo {
                    name: "name".into(),
                    type_name: "text".into(),
                    kind: TypeKind::Text,
                    type_oid: 25,
                    type_modifier: -1,
                    is_key: false,
                },
            ],
        ))
    }

    #[test]
    fn legacy_update_payload_is_exact() {
        let change = Change {
            kind: ChangeKind::Update,
            table: users(),
            commit_timestamp: "2021-02-16T23:47:47.518844Z".into(),
            record: Some(vec![
                Cell::Text(Bytes::from_static(b"2")),
                Cell::Text(Bytes::from_static(b"Jane")),
            ]),
            old_record: Some(vec![Cell::Text(Bytes::from_static(b"2")), Cell::Absent]),
            errors: vec![],
            unlimited: None,
        };
        assert_eq!(
            change.legacy_json(),
            r#"{"type":"UPDATE","schema":"public","table":"users","commit_timestamp":"2021-02-16T23:47:47.518844Z","columns":[{"name":"id","type":"int8","flags":["key"],"type_modifier":4294967295},{"name":"name","type":"text","flags":[],"type_modifier":4294967295}],"record":{"id":"2","name":"Jane"},"old_record":{"id":"2"},"errors":null}"#
        );
    }

    #[test]
    fn legacy_truncate_payload_has_only_the_table() {
        let change = Change {
            kind: ChangeKind::Truncate,
            table: users(),
            commit_timestamp: "2021-02-16T23:47:47.518844Z".into(),
            record: None,
            old_record: None,
            errors: vec![],
            unlimited: None,
        };
        assert_eq!(
            change.legacy_json(),
            r#"{"type":"TRUNCATE","schema":"public","table":"users","commit_timestamp":"2021-02-16T23:47:47.518844Z"}"#
        );
    }
}

//! Row filters of `postgres_changes` bindings: `column=op.value`.
//!
//! Owns parsing a filter against the table's columns (at join, so a bad
//! filter is refused with its reason) and comparing a row's text value with
//! it by the column's type: numbers as numbers, timestamps and dates as time,
//! booleans as booleans, everything else as text. Equality is also expressed
//! as a canonical key so the hub can index `eq` and `in` filters by value.

use std::cmp::Ordering;
use std::fmt;

use chrono::{DateTime, NaiveDate, NaiveDateTime};

/// How values of a column compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Number,
    Time,
    Date,
    Bool,
    Text,
}

impl Comparison {
    /// From `pg_type.typcategory` of the column's (base) type and its name.
    pub fn from_category(category: char, type_name: &str) -> Comparison {
        match (category, type_name) {
            ('N', _) => Comparison::Number,
            ('B', _) => Comparison::Bool,
            (_, "date") => Comparison::Date,
            (_, "timestamp" | "timestamptz") => Comparison::Time,
            _ => Comparison::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "eq" => Op::Eq,
            "neq" => Op::Neq,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "in" => Op::In,
            _ => return None,
        })
    }
}

/// A value in comparable form.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i128),
    Float(f64),
    Time(NaiveDateTime),
    Date(NaiveDate),
    Bool(bool),
    Text(String),
}

impl Value {
    /// Parses `text` as a value of the given comparison kind.
    pub fn parse(kind: Comparison, text: &str) -> Option<Value> {
        let t = text.trim();
        match kind {
            Comparison::Number => t.parse::<i128>().map(Value::Int).ok().or_else(|| {
                t.parse::<f64>()
                    .ok()
                    .filter(|f| !f.is_nan())
                    .map(Value::Float)
            }),
            Comparison::Time => parse_time(t).map(Value::Time),
            Comparison::Date => NaiveDate::parse_from_str(t, "%Y-%m-%d")
                .ok()
                .map(Value::Date),
            Comparison::Bool => match t.to_ascii_lowercase().as_str() {
                "t" | "true" | "yes" | "on" | "1" => Some(Value::Bool(true)),
                "f" | "false" | "no" | "off" | "0" => Some(Value::Bool(false)),
                _ => None,
            },
            Comparison::Text => Some(Value::Text(text.to_string())),
        }
    }

    fn compare(&self, other: &Value) -> Option<Ordering> {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => Some(a.cmp(b)),
            (Value::Int(a), Value::Float(b)) => (*a as f64).partial_cmp(b),
            (Value::Float(a), Value::Int(b)) => a.partial_cmp(&(*b as f64)),
            (Value::Float(a), Value::Float(b)) => a.partial_cmp(b),
            (Value::Time(a), Value::Time(b)) => Some(a.cmp(b)),
            (Value::Date(a), Value::Date(b)) => Some(a.cmp(b)),
            (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
            (Value::Text(a), Value::Text(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            _ => None,
        }
    }

    /// A string equal for values that are equal (`1` and `1.0`, two spellings
    /// of one instant): the key of the hub's equality index.
    pub fn key(&self) -> String {
        match self {
            Value::Int(i) => i.to_string(),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e30 => (*f as i128).to_string(),
            Value::Float(f) => f.to_string(),
            Value::Time(t) => t.format("%Y-%m-%dT%H:%M:%S%.f").to_string(),
            Value::Date(d) => d.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Text(s) => s.clone(),
        }
    }
}

/// Timestamps in the forms PostgreSQL prints and clients send; with a zone,
/// converted to UTC; without one, taken as UTC.
fn parse_time(t: &str) -> Option<NaiveDateTime> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Some(dt.naive_utc());
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(dt) = DateTime::parse_from_str(t, fmt) {
            return Some(dt.naive_utc());
        }
    }
    let t = t.strip_suffix('Z').unwrap_or(t);
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(t, fmt) {
            return Some(dt);
        }
    }
    NaiveDate::parse_from_str(t, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
}

/// Most values an `in` list may hold by default (`MAX_FILTER_VALUES`,
/// Supabase Realtime's limit too). Each distinct value is a key in the hub's
/// index, and a binding's join and leave touch each one under the hub's
/// lock, so the client's work there is bounded by this; the list is refused
/// before any value is parsed.
pub const MAX_IN_VALUES: usize = realtime_contract::config::DEFAULT_MAX_FILTER_VALUES;

/// The longest piece of a client's filter quoted back in an error (the
/// filter itself may be as long as a frame).
const SHOWN_CHARS: usize = 80;

/// A parsed filter, bound to a column of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub column: String,
    pub op: Op,
    pub kind: Comparison,
    /// One value, or the list of `in` (without duplicates, at most
    /// [`MAX_IN_VALUES`]).
    pub values: Vec<Value>,
}

/// Why a filter was refused; the text goes to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError(pub String);

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Filter {
    /// Parses `column=op.value` for a table whose columns `lookup` describes
    /// (`None` for an unknown column).
    pub fn parse(
        text: &str,
        lookup: impl Fn(&str) -> Option<Comparison>,
    ) -> Result<Filter, FilterError> {
        Self::parse_with_limit(text, lookup, MAX_IN_VALUES)
    }

    /// [`Filter::parse`], with `max_values` values at most in an `in` list
    /// (`MAX_FILTER_VALUES`).
    pub fn parse_with_limit(
        text: &str,
        lookup: impl Fn(&str) -> Option<Comparison>,
        max_values: usize,
    ) -> Result<Filter, FilterError> {
        let bad = |why: String| FilterError(format!("invalid filter {}: {why}", shown(text)));
        let (column, rest) = text
            .split_once('=')
            .ok_or_else(|| bad("expected column=op.value".into()))?;
        let (op_text, value) = rest
            .split_once('.')
            .ok_or_else(|| bad("expected column=op.value".into()))?;
        let op = Op::parse(op_text).ok_or_else(|| {
            bad(format!(
                "unknown operator {}: use eq, neq, lt, lte, gt, gte or in",
                shown(op_text)
            ))
        })?;
        let column = column.trim();
        let kind = lookup(column)
            .ok_or_else(|| bad(format!("the table has no column {}", shown(column))))?;
        let raw_values: Box<dyn Iterator<Item = &str>> = if op == Op::In {
            let inner = value
                .strip_prefix('(')
                .and_then(|v| v.strip_suffix(')'))
                .ok_or_else(|| bad("in takes a list: in.(a,b,c)".into()))?;
            if inner.contains('"') {
                return Err(bad(
                    "quoted values in an in list are not supported: list plain values \
                     without commas"
                        .into(),
                ));
            }
            if inner.split(',').nth(max_values).is_some() {
                return Err(bad(format!(
                    "an in list takes at most {max_values} values (MAX_FILTER_VALUES)"
                )));
            }
            Box::new(inner.split(',').map(str::trim))
        } else {
            Box::new(std::iter::once(value))
        };
        let parse_value = |v: &str| {
            Value::parse(kind, v).ok_or_else(|| {
                bad(format!(
                    "{} is not a valid {} value for column {column:?}",
                    shown(v),
                    kind_name(kind)
                ))
            })
        };
        // Equal values (`1`, `1.0`, `01`) are one key of the index, and a
        // change matching it is one match: keep the first of each.
        let mut values = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for v in raw_values {
            let v = parse_value(v)?;
            if seen.insert(v.key()) {
                values.push(v);
            }
        }
        Ok(Filter {
            column: column.to_string(),
            op,
            kind,
            values,
        })
    }

    /// Whether a row whose column has text form `text` (`None` for NULL)
    /// passes. NULL passes no filter, as in SQL.
    pub fn matches(&self, text: Option<&str>) -> bool {
        let Some(v) = text.and_then(|t| Value::parse(self.kind, t)) else {
            return false;
        };
        let ord = |want: &Value| v.compare(want);
        match self.op {
            Op::Eq => ord(&self.values[0]) == Some(Ordering::Equal),
            Op::Neq => matches!(ord(&self.values[0]), Some(o) if o != Ordering::Equal),
            Op::Lt => ord(&self.values[0]) == Some(Ordering::Less),
            Op::Lte => matches!(ord(&self.values[0]), Some(Ordering::Less | Ordering::Equal)),
            Op::Gt => ord(&self.values[0]) == Some(Ordering::Greater),
            Op::Gte => matches!(
                ord(&self.values[0]),
                Some(Ordering::Greater | Ordering::Equal)
            ),
            Op::In => self.values.iter().any(|w| ord(w) == Some(Ordering::Equal)),
        }
    }

    /// The equality keys when the filter is `eq` or `in` (indexable), each
    /// once.
    pub fn eq_keys(&self) -> Option<Vec<String>> {
        matches!(self.op, Op::Eq | Op::In).then(|| self.values.iter().map(Value::key).collect())
    }
}

/// `text` quoted for an error message, cut to [`SHOWN_CHARS`] characters.
fn shown(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        None => format!("{text:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &text[..end], text.len()),
    }
}

fn kind_name(kind: Comparison) -> &'static str {
    match kind {
        Comparison::Number => "number",
        Comparison::Time => "timestamp",
        Comparison::Date => "date",
        Comparison::Bool => "boolean",
        Comparison::Text => "text",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(c: &str) -> Option<Comparison> {
        match c {
            "id" => Some(Comparison::Number),
            "name" => Some(Comparison::Text),
            "at" => Some(Comparison::Time),
            "day" => Some(Comparison::Date),
            "ok" => Some(Comparison::Bool),
            _ => None,
        }
    }

    fn f(s: &str) -> Filter {
        Filter::parse(s, cols).unwrap()
    }

    #[test]
    fn numbers_compare_as_numbers() {
        assert!(f("id=gt.9").matches(Some("10")));
        assert!(!f("id=gt.9").matches(Some("9")));
        assert!(f("id=gte.9").matches(Some("9")));
        assert!(f("id=lt.10").matches(Some("9.5")));
        assert!(f("id=eq.1").matches(Some("1.0")));
        assert!(f("id=neq.1").matches(Some("2")));
        assert!(!f("id=neq.1").matches(Some("1")));
        assert!(f("id=in.(1,2,3)").matches(Some("2")));
        assert!(!f("id=in.(1,2,3)").matches(Some("4")));
        assert!(!f("id=eq.1").matches(None), "NULL passes no filter");
        assert_eq!(
            f("id=in.(1, 2.0)").eq_keys(),
            Some(vec!["1".into(), "2".into()])
        );
    }

    #[test]
    fn text_compares_as_text() {
        assert!(f("name=eq.bob").matches(Some("bob")));
        assert!(f("name=lt.bob").matches(Some("alice")));
        assert!(!f("name=gt.bob").matches(Some("Zed")), "byte order: Z < b");
        assert!(
            f("name=eq.a.b").matches(Some("a.b")),
            "dots after the op belong to the value"
        );
    }

    #[test]
    fn timestamps_compare_as_time() {
        assert!(f("at=gt.2021-01-01T00:00:00Z").matches(Some("2021-01-01 00:00:01+00")));
        assert!(f("at=eq.2021-01-01T05:30:00+05:30").matches(Some("2021-01-01 00:00:00+00")));
        assert!(f("day=lt.2021-02-01").matches(Some("2021-01-31")));
        assert!(f("ok=eq.true").matches(Some("t")));
    }

    #[test]
    fn bad_filters_say_why() {
        let e = |s: &str| Filter::parse(s, cols).unwrap_err().0;
        assert!(e("nope=eq.1").contains("no column \"nope\""));
        assert!(e("id=eq.abc").contains("not a valid number"));
        assert!(e("id=like.1").contains("unknown operator"));
        assert!(e("id").contains("column=op.value"));
        assert!(e("name=in.(\"a,b\",c)").contains("quoted values"));
        assert!(e("id=in.1,2").contains("in.(a,b,c)"));
        assert!(e("at=gt.yesterday").contains("timestamp"));
        let too_many: Vec<String> = (0..=MAX_IN_VALUES).map(|i| i.to_string()).collect();
        assert!(e(&format!("id=in.({})", too_many.join(","))).contains("at most 100 values"));
        let repeated = format!("id=in.({})", vec!["7"; 300_000].join(","));
        let error = e(&repeated);
        assert!(error.contains("at most 100 values"), "{error}");
        assert!(error.len() < 300, "the filter is not echoed whole: {error}");
        let long = format!("name=zz.{}", "x".repeat(100_000));
        assert!(e(&long).len() < 300);
    }

    #[test]
    fn in_lists_keep_each_value_once() {
        let repeated = vec!["7"; MAX_IN_VALUES - 2].join(",");
        let f = f(&format!("id=in.({repeated},7.0,8)"));
        assert_eq!(f.values, vec![Value::Int(7), Value::Int(8)]);
        assert_eq!(f.eq_keys(), Some(vec!["7".into(), "8".into()]));
    }
}

/// Properties of the filter parser over arbitrary client input: it never
/// panics, and a valid filter parses to what it says.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn cols(c: &str) -> Option<Comparison> {
        match c {
            "id" => Some(Comparison::Number),
            "name" => Some(Comparison::Text),
            "at" => Some(Comparison::Time),
            "day" => Some(Comparison::Date),
            "ok" => Some(Comparison::Bool),
            _ => None,
        }
    }

    const OPS: [(&str, Op); 7] = [
        ("eq", Op::Eq),
        ("neq", Op::Neq),
        ("lt", Op::Lt),
        ("lte", Op::Lte),
        ("gt", Op::Gt),
        ("gte", Op::Gte),
        ("in", Op::In),
    ];

    /// Filters made of the grammar's own pieces, mostly well-formed.
    fn filterish() -> impl Strategy<Value = String> {
        (
            prop_oneof![
                Just("id"),
                Just("name"),
                Just("at"),
                Just("day"),
                Just("ok"),
                Just(" id "),
                Just("nope"),
                Just(""),
            ],
            prop_oneof![Just("="), Just(""), Just("=="), Just(".")],
            prop_oneof![Just("eq"), Just("in"), Just("gte"), Just("like"), Just("")],
            prop_oneof![Just("."), Just(""), Just("..")],
            "[-+0-9a-zT:.,() \"eEZ]{0,30}",
        )
            .prop_map(|(c, eq, op, dot, v)| format!("{c}{eq}{op}{dot}{v}"))
    }

    fn check_never_panics(text: &str, row: &str) {
        if let Ok(f) = Filter::parse(text, cols) {
            assert!(!f.values.is_empty(), "{text:?} parsed to no value");
            let _ = f.matches(Some(row));
            let _ = f.matches(None);
            let _ = f.eq_keys();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_text_parses_or_is_refused(text in any::<String>(), row in any::<String>()) {
            check_never_panics(&text, &row);
        }

        #[test]
        fn filter_like_text_parses_or_is_refused(text in filterish(), row in "[-+0-9a-zT:. ]{0,30}") {
            check_never_panics(&text, &row);
        }

        #[test]
        fn number_filters_say_what_they_compare(n in any::<i64>(), row in any::<i64>(), op in 0..6usize) {
            let (name, op) = OPS[op];
            let f = Filter::parse(&format!("id={name}.{n}"), cols)
                .map_err(|e| TestCaseError::fail(e.0))?;
            prop_assert_eq!(&f, &Filter {
                column: "id".into(), op, kind: Comparison::Number, values: vec![Value::Int(n.into())],
            });
            let want = match op {
                Op::Eq => row == n,
                Op::Neq => row != n,
                Op::Lt => row < n,
                Op::Lte => row <= n,
                Op::Gt => row > n,
                Op::Gte => row >= n,
                Op::In => unreachable!(),
            };
            prop_assert_eq!(f.matches(Some(&row.to_string())), want);
        }

        #[test]
        fn text_eq_takes_the_rest_verbatim(v in any::<String>()) {
            let f = Filter::parse(&format!("name=eq.{v}"), cols)
                .map_err(|e| TestCaseError::fail(e.0))?;
            prop_assert_eq!(&f.values, &vec![Value::Text(v.clone())]);
            prop_assert!(f.matches(Some(&v)));
            prop_assert_eq!(f.eq_keys(), Some(vec![v]));
        }

        #[test]
        fn in_lists_hold_each_value(ns in prop::collection::vec(any::<i64>(), 1..8), other in any::<i64>()) {
            let list = ns.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
            let f = Filter::parse(&format!("id=in.({list})"), cols)
                .map_err(|e| TestCaseError::fail(e.0))?;
            prop_assert_eq!(f.op, Op::In);
            let mut distinct: Vec<i64> = Vec::new();
            for n in &ns {
                if !distinct.contains(n) {
                    distinct.push(*n);
                }
            }
            prop_assert_eq!(&f.values, &distinct.iter().map(|&n| Value::Int(n.into())).collect::<Vec<_>>());
            for n in &ns {
                prop_assert!(f.matches(Some(&n.to_string())));
            }
            prop_assert_eq!(f.matches(Some(&other.to_string())), ns.contains(&other));
            prop_assert_eq!(f.eq_keys(), Some(distinct.iter().map(i64::to_string).collect()));
        }

        #[test]
        fn text_in_lists_hold_each_trimmed_value(items in prop::collection::vec("[^,\"]{0,8}", 1..6)) {
            let f = Filter::parse(&format!("name=in.({})", items.join(",")), cols)
                .map_err(|e| TestCaseError::fail(e.0))?;
            let mut want: Vec<Value> = Vec::new();
            for i in &items {
                let v = Value::Text(i.trim().to_string());
                if !want.contains(&v) {
                    want.push(v);
                }
            }
            prop_assert_eq!(&f.values, &want);
        }

        #[test]
        fn unknown_columns_and_operators_are_refused(col in "[a-z_]{1,8}", op in "[a-z]{1,5}", v in ".*") {
            let text = format!("{col}={op}.{v}");
            let parsed = Filter::parse(&text, cols);
            if !OPS.iter().any(|(name, _)| *name == op) {
                prop_assert!(parsed.unwrap_err().0.contains("unknown operator"));
            } else if cols(&col).is_none() {
                prop_assert!(parsed.unwrap_err().0.contains("no column"));
            }
        }
    }
}

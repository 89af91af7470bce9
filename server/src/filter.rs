//! Row filters of `postgres_changes` bindings: the `filter` grammar of
//! Supabase Realtime (PostgREST's operators, conditions AND-ed with `,`).
//!
//! Owns parsing a filter against the table's columns (at join, so a bad
//! filter is refused with the part that is wrong), printing it back, and
//! deciding whether a row passes: values compared by the column's type
//! (numbers as numbers, timestamps and dates as time, booleans as booleans,
//! everything else as text), NULL as in SQL. A plain `eq` or `in` condition
//! is also expressed as canonical keys so the hub can index the binding by
//! it. Knows nothing of changes, sockets or the hub.
//!
//! ```text
//! filter    = condition *( "," condition )        every condition must pass (AND)
//! condition = column "=" [ "not." ] op "." value
//! op        = eq | neq | lt | lte | gt | gte | isdistinct   one value of the column's type
//!           | in                                             "(" item *( "," item ) ")"
//!           | like | ilike                                   a pattern: % (or *) any text, _ one character
//!           | match | imatch                                 a regular expression
//!           | is                                             null | true | false | unknown
//! value     = the rest of the condition, or "..." with \" and \\ escapes
//! item      = as in a PostgreSQL array literal: "..." quoted, NULL unquoted is NULL
//! ```
//!
//! A `,` inside double quotes or parentheses belongs to the value. Every
//! size a client controls is bounded: conditions (`MAX_FILTER_CONDITIONS`),
//! values of an `in` list (`MAX_FILTER_VALUES`), the length of a pattern
//! ([`MAX_PATTERN_BYTES`]) and what a regular expression compiles to
//! ([`REGEX_SIZE_LIMIT`]), so the work one change costs a binding is
//! bounded by them and the size of the row.

use std::borrow::Cow;
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

    fn name(self) -> &'static str {
        match self {
            Comparison::Number => "number",
            Comparison::Time => "timestamp",
            Comparison::Date => "date",
            Comparison::Bool => "boolean",
            Comparison::Text => "text",
        }
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
/// as soon as it has one value more, before any value is parsed.
pub const MAX_IN_VALUES: usize = realtime_contract::config::DEFAULT_MAX_FILTER_VALUES;

/// Most conditions a filter may join by default (`MAX_FILTER_CONDITIONS`):
/// each is checked for every change that reaches the binding.
pub const MAX_CONDITIONS: usize = realtime_contract::config::DEFAULT_MAX_FILTER_CONDITIONS;

/// The longest `like`/`ilike` pattern or `match`/`imatch` regular expression,
/// in bytes. Patterns name a prefix, a word, a shape of identifier; this is
/// far above those, and bounds both what a binding keeps and the work per
/// character of a value (a `like` segment is matched 64 characters per
/// machine word, so at most 8 words per character of the value).
pub const MAX_PATTERN_BYTES: usize = 512;

/// The most a `match`/`imatch` regular expression may compile to, in bytes
/// (the `regex` crate's size limit; 10 MiB by default). A short pattern can
/// still compile big (`\w{100}` is thousands of Unicode states): such a
/// pattern is refused at join. Matching takes time linear in the value's
/// length times at most this.
pub const REGEX_SIZE_LIMIT: usize = 64 * 1024;

/// The most memory the lazy DFA of one regular expression may cache while
/// matching (the `regex` crate's default is 2 MiB per expression); past it
/// the cache is cleared or matching falls back to a slower engine, never an
/// exponential one.
pub const REGEX_CACHE_LIMIT: usize = 256 * 1024;

/// The longest piece of a client's filter quoted back in an error (the
/// filter itself may be as long as a frame).
const SHOWN_CHARS: usize = 80;

/// What a filter may hold (from the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `MAX_FILTER_CONDITIONS`.
    pub max_conditions: usize,
    /// `MAX_FILTER_VALUES`: values of one `in` list.
    pub max_values: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_conditions: MAX_CONDITIONS,
            max_values: MAX_IN_VALUES,
        }
    }
}

/// The operators, by the name a filter gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    Like,
    Ilike,
    Is,
    Match,
    Imatch,
    IsDistinct,
}

impl Op {
    /// Every operator, in the order an error lists them.
    pub const ALL: [Op; 13] = [
        Op::Eq,
        Op::Neq,
        Op::Lt,
        Op::Lte,
        Op::Gt,
        Op::Gte,
        Op::In,
        Op::Like,
        Op::Ilike,
        Op::Is,
        Op::Match,
        Op::Imatch,
        Op::IsDistinct,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::In => "in",
            Op::Like => "like",
            Op::Ilike => "ilike",
            Op::Is => "is",
            Op::Match => "match",
            Op::Imatch => "imatch",
            Op::IsDistinct => "isdistinct",
        }
    }

    fn parse(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == s)
    }
}

/// A value as the client wrote it (unquoted) and in comparable form.
#[derive(Debug, Clone, PartialEq)]
pub struct Literal {
    pub text: String,
    pub value: Value,
}

/// The keyword of an `is` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsValue {
    Null,
    True,
    False,
    Unknown,
}

impl IsValue {
    fn name(self) -> &'static str {
        match self {
            IsValue::Null => "null",
            IsValue::True => "true",
            IsValue::False => "false",
            IsValue::Unknown => "unknown",
        }
    }
}

/// What an operator compares the column with.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// `eq`, `neq`, `lt`, `lte`, `gt`, `gte`, `isdistinct`.
    Value(Literal),
    /// `in`: its distinct values (at most `MAX_FILTER_VALUES`), and whether
    /// the list holds NULL (then a row in none of the values is NULL to
    /// `in`, as in SQL: `not.in` passes it not).
    List { items: Vec<Literal>, null: bool },
    /// `like`, `ilike`.
    Pattern(LikePattern),
    /// `match`, `imatch`.
    Regex(Regex),
    /// `is`.
    Is(IsValue),
}

/// One `column=[not.]op.value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub column: String,
    pub kind: Comparison,
    pub negated: bool,
    pub op: Op,
    pub operand: Operand,
}

/// The value of a column in the row a filter looks at.
#[derive(Debug, Clone, PartialEq)]
pub enum Field<'a> {
    /// SQL NULL.
    Null,
    /// The value's text form, as PostgreSQL's output function wrote it.
    Text(Cow<'a, str>),
    /// Not in the row (a key-only old row, an unchanged TOASTed value, a
    /// column the table no longer has): no condition on it passes, negated
    /// or not.
    Unknown,
}

impl Condition {
    /// SQL's answer for a row whose column holds `field`: `None` is NULL
    /// (unknown), which passes no filter, negated or not.
    pub fn test(&self, field: &Field<'_>) -> Option<bool> {
        let text = match field {
            Field::Unknown => return None,
            Field::Null => None,
            Field::Text(t) => Some(t.as_ref()),
        };
        let answer = match &self.operand {
            Operand::Is(keyword) => Some(match (keyword, text) {
                (IsValue::Null | IsValue::Unknown, t) => t.is_none(),
                (_, None) => false,
                (IsValue::True, Some(t)) => Value::parse(self.kind, t) == Some(Value::Bool(true)),
                (IsValue::False, Some(t)) => Value::parse(self.kind, t) == Some(Value::Bool(false)),
            }),
            Operand::Value(want) if self.op == Op::IsDistinct => match text {
                None => Some(true),
                Some(t) => Value::parse(self.kind, t)?
                    .compare(&want.value)
                    .map(|o| o != Ordering::Equal),
            },
            Operand::Value(want) => {
                let o = Value::parse(self.kind, text?)?.compare(&want.value)?;
                Some(match self.op {
                    Op::Eq => o == Ordering::Equal,
                    Op::Neq => o != Ordering::Equal,
                    Op::Lt => o == Ordering::Less,
                    Op::Lte => o != Ordering::Greater,
                    Op::Gt => o == Ordering::Greater,
                    Op::Gte => o != Ordering::Less,
                    _ => return None,
                })
            }
            Operand::List { items, null } => {
                let v = Value::parse(self.kind, text?)?;
                if items
                    .iter()
                    .any(|i| v.compare(&i.value) == Some(Ordering::Equal))
                {
                    Some(true)
                } else if *null {
                    None
                } else {
                    Some(false)
                }
            }
            Operand::Pattern(p) => Some(p.matches(text?)),
            Operand::Regex(r) => Some(r.regex.is_match(text?)),
        };
        if self.negated {
            answer.map(|b| !b)
        } else {
            answer
        }
    }

    /// Whether a row whose column holds `field` passes.
    pub fn passes(&self, field: &Field<'_>) -> bool {
        self.test(field) == Some(true)
    }

    /// The equality keys of a plain `eq` or `in` (each once), which the hub
    /// may index the condition by.
    fn keys(&self) -> Option<Vec<String>> {
        if self.negated {
            return None;
        }
        match (&self.op, &self.operand) {
            (Op::Eq, Operand::Value(v)) => Some(vec![v.value.key()]),
            (Op::In, Operand::List { items, .. }) => {
                Some(items.iter().map(|i| i.value.key()).collect())
            }
            _ => None,
        }
    }
}

/// A parsed filter, bound to columns of the table: every condition must
/// pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// At least one, at most `MAX_FILTER_CONDITIONS`, in the order written.
    pub conditions: Vec<Condition>,
    /// The condition the hub indexes the binding by: the plain `eq` or
    /// `in` with the fewest values (the first of equals), if any.
    pub index: Option<usize>,
}

/// The condition a hub index holds a filter under.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexKeys<'a> {
    pub column: &'a str,
    pub kind: Comparison,
    /// Canonical keys ([`Value::key`]), each once.
    pub keys: Vec<String>,
}

/// Why a filter was refused; the message goes to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    pub message: String,
    /// The configuration variable whose limit the filter went over.
    pub limit: Option<&'static str>,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FilterError {}

/// Why one condition was refused (the filter's error wraps it): what is
/// wrong, then (after the condition, when the filter has several) what to
/// do.
struct Why {
    message: String,
    hint: Option<String>,
    limit: Option<&'static str>,
}

impl From<String> for Why {
    fn from(message: String) -> Why {
        Why {
            message,
            hint: None,
            limit: None,
        }
    }
}

impl From<&str> for Why {
    fn from(message: &str) -> Why {
        Why::from(message.to_string())
    }
}

impl Filter {
    /// Parses a filter for a table whose columns `lookup` describes (`None`
    /// for an unknown column), with the default limits.
    pub fn parse(
        text: &str,
        lookup: impl Fn(&str) -> Option<Comparison>,
    ) -> Result<Filter, FilterError> {
        Self::parse_with_limits(text, lookup, Limits::default())
    }

    /// [`Filter::parse`], with `max_values` values at most in an `in` list
    /// (`MAX_FILTER_VALUES`).
    pub fn parse_with_limit(
        text: &str,
        lookup: impl Fn(&str) -> Option<Comparison>,
        max_values: usize,
    ) -> Result<Filter, FilterError> {
        let limits = Limits {
            max_values,
            ..Limits::default()
        };
        Self::parse_with_limits(text, lookup, limits)
    }

    /// [`Filter::parse`] with the configured limits.
    pub fn parse_with_limits(
        text: &str,
        lookup: impl Fn(&str) -> Option<Comparison>,
        limits: Limits,
    ) -> Result<Filter, FilterError> {
        let refuse = |why: Why| {
            let hint = why.hint.map(|h| format!(": {h}")).unwrap_or_default();
            FilterError {
                message: format!("invalid filter {}: {}{hint}", shown(text), why.message),
                limit: why.limit,
            }
        };
        let segments = split_conditions(text, limits.max_conditions).map_err(refuse)?;
        let several = segments.len() > 1;
        let mut conditions = Vec::with_capacity(segments.len());
        for segment in segments {
            let condition = parse_condition(segment, &lookup, limits).map_err(|mut why| {
                if several {
                    why.message = format!("{} in {}", why.message, shown(segment.trim()));
                }
                refuse(why)
            })?;
            conditions.push(condition);
        }
        let index = conditions
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.keys().map(|k| (k.len(), i)))
            .min()
            .map(|(_, i)| i);
        Ok(Filter { conditions, index })
    }

    /// Whether a row passes every condition; `row` gives a column's value.
    pub fn matches<'r>(&self, row: impl Fn(&str) -> Field<'r>) -> bool {
        self.conditions.iter().all(|c| c.passes(&row(&c.column)))
    }

    /// Whether a row passes every condition but the indexed one (the hub
    /// found the binding by that one's value).
    pub fn matches_unindexed<'r>(&self, row: impl Fn(&str) -> Field<'r>) -> bool {
        self.conditions
            .iter()
            .enumerate()
            .all(|(i, c)| Some(i) == self.index || c.passes(&row(&c.column)))
    }

    /// The indexed condition's column, comparison and keys.
    pub fn index_keys(&self) -> Option<IndexKeys<'_>> {
        let c = &self.conditions[self.index?];
        Some(IndexKeys {
            column: &c.column,
            kind: c.kind,
            keys: c.keys()?,
        })
    }
}

/// Prints the filter so that it parses back to itself: values quoted where
/// the grammar needs it, as realtime-js quotes them.
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.conditions.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}=", c.column)?;
            if c.negated {
                f.write_str("not.")?;
            }
            write!(f, "{}.", c.op.name())?;
            match &c.operand {
                Operand::Value(v) => write_scalar(f, &v.text)?,
                Operand::Pattern(p) => write_scalar(f, &p.source)?,
                Operand::Regex(r) => write_scalar(f, r.regex.as_str())?,
                Operand::Is(k) => f.write_str(k.name())?,
                Operand::List { items, null } => {
                    f.write_str("(")?;
                    for (j, item) in items.iter().enumerate() {
                        if j > 0 {
                            f.write_str(",")?;
                        }
                        write_item(f, &item.text)?;
                    }
                    if *null {
                        f.write_str(if items.is_empty() { "NULL" } else { ",NULL" })?;
                    }
                    f.write_str(")")?;
                }
            }
        }
        Ok(())
    }
}

/// A value after `op.`: quoted when it holds a character the grammar reads
/// (`,()"\`) or starts or ends with whitespace.
fn write_scalar(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    let plain = !text.contains([',', '(', ')', '"', '\\']) && text.trim() == text;
    if plain {
        f.write_str(text)
    } else {
        write_quoted(f, text)
    }
}

/// An `in` item: quoted as a PostgreSQL array literal needs (empty, `NULL`,
/// `{}`, whitespace) and as the filter's splitting needs (`,()"\`).
fn write_item(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    let plain = !text.is_empty()
        && !text.eq_ignore_ascii_case("null")
        && !text.contains(|c: char| ",(){}\"\\".contains(c) || pg_space(c));
    if plain {
        f.write_str(text)
    } else {
        write_quoted(f, text)
    }
}

fn write_quoted(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in text.chars() {
        if c == '"' || c == '\\' {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}

/// Whitespace as PostgreSQL's array input skips it.
fn pg_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// Splits a filter into its conditions at each `,` outside double quotes
/// and parentheses, as Supabase Realtime does: a `"` opens a quoted part
/// only after `.`, `(` or `,`, and `\` escapes the next character inside
/// one. Refuses more than `max` conditions as soon as it sees one more.
fn split_conditions(text: &str, max: usize) -> Result<Vec<&str>, Why> {
    if text.trim().is_empty() {
        return Err("the filter is empty: expected column=op.value".into());
    }
    let b = text.as_bytes();
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut prev, mut start, mut i) = (0usize, false, 0u8, 0usize, 0usize);
    // Before a condition's `=` is its column, whose name is read as written:
    // a `(` or `"` there groups nothing (the printed filter writes the name
    // as is, so grouping there would split it differently when read again).
    let mut column = true;
    while i < b.len() {
        let c = b[i];
        if column {
            match c {
                b'=' => column = false,
                b',' => {}
                _ => {
                    i += 1;
                    continue;
                }
            }
        }
        if quoted {
            match c {
                b'\\' => {
                    prev = b.get(i + 1).copied().unwrap_or(0);
                    i += 2;
                    continue;
                }
                b'"' => quoted = false,
                _ => {}
            }
        } else {
            match c {
                b'"' if matches!(prev, b'.' | b'(' | b',') => quoted = true,
                b'(' => depth += 1,
                b')' => depth = depth.saturating_sub(1),
                b',' if depth == 0 => {
                    out.push(&text[start..i]);
                    if out.len() >= max {
                        return Err(Why {
                            message: format!(
                                "a filter takes at most {max} conditions (MAX_FILTER_CONDITIONS)"
                            ),
                            hint: None,
                            limit: Some(realtime_contract::config::var::MAX_FILTER_CONDITIONS),
                        });
                    }
                    start = i + 1;
                    prev = 0;
                    column = true;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        }
        prev = c;
        i += 1;
    }
    out.push(&text[start..]);
    Ok(out)
}

const GRAMMAR: &str = "expected column=op.value";

fn parse_condition(
    segment: &str,
    lookup: &impl Fn(&str) -> Option<Comparison>,
    limits: Limits,
) -> Result<Condition, Why> {
    let segment = segment.trim();
    if segment.is_empty() {
        return Err("an empty condition (check for extra commas)".into());
    }
    let (column, rest) = segment.split_once('=').ok_or(GRAMMAR)?;
    let column = column.trim();
    if column.is_empty() {
        return Err(format!("{GRAMMAR}: no column before =").into());
    }
    let (negated, rest) = match rest.strip_prefix("not.") {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    let (op_text, value) = rest.split_once('.').ok_or(GRAMMAR)?;
    let op = Op::parse(op_text).ok_or_else(|| {
        let names: Vec<&str> = Op::ALL.iter().map(|o| o.name()).collect();
        Why {
            message: format!("unknown operator {}", shown(op_text)),
            hint: Some(format!(
                "use {} (not. before one negates it)",
                names.join(", ")
            )),
            limit: None,
        }
    })?;
    let kind =
        lookup(column).ok_or_else(|| format!("the table has no column {}", shown(column)))?;
    let typed = |text: String, what: &str| -> Result<Literal, Why> {
        match Value::parse(kind, &text) {
            Some(value) => Ok(Literal { text, value }),
            None => Err(format!(
                "{} is not a valid {} value{what} for column {column:?}",
                shown(&text),
                kind.name()
            )
            .into()),
        }
    };
    let text_only = || -> Result<(), Why> {
        if kind == Comparison::Text {
            return Ok(());
        }
        Err(format!(
            "{} compares text, and column {column:?} is a {} (use eq, lt, gt, in...)",
            op.name(),
            kind.name()
        )
        .into())
    };
    let pattern = |text: &str| -> Result<(), Why> {
        if text.len() > MAX_PATTERN_BYTES {
            return Err(format!(
                "a {} pattern takes at most {MAX_PATTERN_BYTES} bytes, this one has {}",
                op.name(),
                text.len()
            )
            .into());
        }
        Ok(())
    };
    let operand = match op {
        Op::Eq | Op::Neq | Op::Lt | Op::Lte | Op::Gt | Op::Gte | Op::IsDistinct => {
            Operand::Value(typed(unquote(value).into_owned(), "")?)
        }
        Op::In => {
            let inner = value
                .strip_prefix('(')
                .and_then(|v| v.strip_suffix(')'))
                .ok_or("in takes a list: in.(a,b,c)")?;
            let raw = parse_list(inner, limits.max_values)?;
            // Equal values (`1`, `1.0`, `01`) are one key of the index, and
            // a change matching it is one match: keep the first of each.
            let mut items = Vec::new();
            let mut null = false;
            let mut seen = std::collections::HashSet::new();
            for item in raw {
                match item {
                    None => null = true,
                    Some(text) => {
                        let literal = typed(text, " in the in list")?;
                        if seen.insert(literal.value.key()) {
                            items.push(literal);
                        }
                    }
                }
            }
            Operand::List { items, null }
        }
        Op::Is => {
            let keyword = unquote(value);
            let keyword = match keyword.to_ascii_lowercase().as_str() {
                "null" => IsValue::Null,
                "true" => IsValue::True,
                "false" => IsValue::False,
                "unknown" => IsValue::Unknown,
                _ => {
                    return Err(format!(
                        "is takes null, true, false or unknown, not {}",
                        shown(&keyword)
                    )
                    .into())
                }
            };
            if keyword != IsValue::Null && kind != Comparison::Bool {
                return Err(format!(
                    "is.{} needs a boolean column, and column {column:?} is a {}",
                    keyword.name(),
                    kind.name()
                )
                .into());
            }
            Operand::Is(keyword)
        }
        Op::Like | Op::Ilike => {
            text_only()?;
            let source = unquote(value);
            pattern(&source)?;
            Operand::Pattern(LikePattern::new(&source, op == Op::Ilike)?)
        }
        Op::Match | Op::Imatch => {
            text_only()?;
            let source = unquote(value);
            pattern(&source)?;
            Operand::Regex(Regex::new(&source, op == Op::Imatch)?)
        }
    };
    Ok(Condition {
        column: column.to_string(),
        kind,
        negated,
        op,
        operand,
    })
}

/// A value in double quotes loses them and its `\` escapes; anything else
/// (a value that is not one whole quoted string) is taken as written.
fn unquote(value: &str) -> Cow<'_, str> {
    let Some(rest) = value.strip_prefix('"') else {
        return Cow::Borrowed(value);
    };
    let mut out = String::with_capacity(rest.len());
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next) => out.push(next),
                None => return Cow::Borrowed(value),
            },
            '"' if chars.as_str().is_empty() => return Cow::Owned(out),
            '"' => return Cow::Borrowed(value),
            c => out.push(c),
        }
    }
    Cow::Borrowed(value)
}

/// The items of an `in` list, read as PostgreSQL reads a one-dimensional
/// array literal: items separated by `,`; `"..."` quoted with `\` escapes;
/// unquoted items trimmed of whitespace, with `\` escapes, and `NULL` (any
/// case) is NULL (`None`). `in.()` is the empty list. Refuses more than
/// `max` items as soon as it sees one more.
fn parse_list(inner: &str, max: usize) -> Result<Vec<Option<String>>, Why> {
    let mut items = Vec::new();
    if inner.chars().all(pg_space) {
        return Ok(items);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.next_if(|c| pg_space(*c)).is_some() {}
        if items.len() == max {
            return Err(Why {
                message: format!("an in list takes at most {max} values (MAX_FILTER_VALUES)"),
                hint: None,
                limit: Some(realtime_contract::config::var::MAX_FILTER_VALUES),
            });
        }
        if chars.next_if_eq(&'"').is_some() {
            let mut item = String::new();
            loop {
                match chars.next() {
                    None => return Err("a quoted value of the in list has no closing \"".into()),
                    Some('\\') => match chars.next() {
                        Some(c) => item.push(c),
                        None => {
                            return Err("a quoted value of the in list has no closing \"".into())
                        }
                    },
                    Some('"') => break,
                    Some(c) => item.push(c),
                }
            }
            while chars.next_if(|c| pg_space(*c)).is_some() {}
            items.push(Some(item));
        } else {
            let mut item = String::new();
            // Bytes up to the last character that is not trailing
            // whitespace (an escaped space counts as text).
            let mut kept = 0;
            let mut escaped = false;
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                chars.next();
                match c {
                    '\\' => {
                        let next = chars.next().ok_or("an in list may not end with \\")?;
                        item.push(next);
                        kept = item.len();
                        escaped = true;
                    }
                    '"' | '{' | '}' => {
                        return Err(format!(
                        "{c:?} in an unquoted value of the in list: put the value in double quotes"
                    )
                        .into())
                    }
                    c => {
                        item.push(c);
                        if !pg_space(c) {
                            kept = item.len();
                        }
                    }
                }
            }
            item.truncate(kept);
            if item.is_empty() {
                return Err(
                    "an empty value in the in list: quote it (\"\") to mean empty text".into(),
                );
            }
            items.push((escaped || !item.eq_ignore_ascii_case("null")).then_some(item));
        }
        match chars.next() {
            None => return Ok(items),
            Some(',') => {}
            Some(c) => {
                return Err(format!(
                    "{c:?} after a quoted value of the in list: expected , or the list's end"
                )
                .into())
            }
        }
    }
}

/// A `like`/`ilike` pattern, as PostgreSQL reads one: `%` is any text, `_`
/// one character, `\` makes the next character plain; `*` is `%` too, as
/// PostgREST has it. `ilike` compares lowercase.
///
/// Matching takes time linear in the value: the pattern is cut at its `%`s
/// into segments; the first must match at the start, the last at the end,
/// and each one between at its leftmost place after the previous one (the
/// leftmost is never worse), found with a bit-parallel scan (shift-and) that
/// reads each character of the value once per 64 characters of segment.
#[derive(Debug, Clone, PartialEq)]
pub struct LikePattern {
    /// As the client wrote it (unquoted).
    pub source: String,
    pub case_insensitive: bool,
    /// The text between `%`s (two or more when the pattern has one; the
    /// first and last may be empty).
    segments: Vec<Segment>,
}

/// Characters of a pattern between `%`s: `None` is `_`.
#[derive(Debug, Clone, PartialEq)]
struct Segment {
    chars: Vec<Option<char>>,
    /// For the shift-and scan: each character's positions, as bits
    /// (position `i` is bit `i % 64` of word `i / 64`), sorted by
    /// character; `_` positions are in every mask and in `any`.
    masks: Vec<(char, Vec<u64>)>,
    any: Vec<u64>,
}

impl Segment {
    fn new(chars: Vec<Option<char>>) -> Segment {
        let words = chars.len().div_ceil(64).max(1);
        let mut any = vec![0u64; words];
        for (i, c) in chars.iter().enumerate() {
            if c.is_none() {
                any[i / 64] |= 1 << (i % 64);
            }
        }
        let mut masks: Vec<(char, Vec<u64>)> = Vec::new();
        for (i, c) in chars.iter().enumerate() {
            let Some(c) = *c else { continue };
            let at = match masks.binary_search_by(|(m, _)| m.cmp(&c)) {
                Ok(at) => at,
                Err(at) => {
                    masks.insert(at, (c, any.clone()));
                    at
                }
            };
            masks[at].1[i / 64] |= 1 << (i % 64);
        }
        Segment { chars, masks, any }
    }

    fn len(&self) -> usize {
        self.chars.len()
    }

    fn matches_at(&self, text: &[char], at: usize) -> bool {
        text.len() >= at + self.len()
            && self
                .chars
                .iter()
                .zip(&text[at..])
                .all(|(p, t)| p.is_none_or(|p| p == *t))
    }

    /// Where the segment first occurs in `text`.
    fn find(&self, text: &[char]) -> Option<usize> {
        let n = self.len();
        if n == 0 {
            return Some(0);
        }
        let last = ((n - 1) / 64, 1u64 << ((n - 1) % 64));
        let mut state = vec![0u64; self.any.len()];
        for (i, c) in text.iter().enumerate() {
            let mask = match self.masks.binary_search_by(|(m, _)| m.cmp(c)) {
                Ok(at) => &self.masks[at].1,
                Err(_) => &self.any,
            };
            // state = ((state << 1) | 1) & mask, over the words.
            let mut carry = 1u64;
            for (w, m) in state.iter_mut().zip(mask) {
                let next_carry = *w >> 63;
                *w = ((*w << 1) | carry) & m;
                carry = next_carry;
            }
            if state[last.0] & last.1 != 0 {
                return Some(i + 1 - n);
            }
        }
        None
    }
}

impl LikePattern {
    fn new(source: &str, case_insensitive: bool) -> Result<LikePattern, Why> {
        let mut segments = Vec::new();
        let mut current: Vec<Option<char>> = Vec::new();
        let push = |current: &mut Vec<Option<char>>, c: char| {
            if case_insensitive {
                current.extend(c.to_lowercase().map(Some));
            } else {
                current.push(Some(c));
            }
        };
        let mut chars = source.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    let next = chars.next().ok_or_else(|| {
                        format!(
                            "the pattern {} ends with \\ (a \\ makes the next character plain)",
                            shown(source)
                        )
                    })?;
                    push(&mut current, next);
                }
                '%' | '*' => segments.push(Segment::new(std::mem::take(&mut current))),
                '_' => current.push(None),
                c => push(&mut current, c),
            }
        }
        segments.push(Segment::new(current));
        Ok(LikePattern {
            source: source.to_string(),
            case_insensitive,
            segments,
        })
    }

    /// Whether the whole of `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        let chars: Vec<char> = if self.case_insensitive {
            text.to_lowercase().chars().collect()
        } else {
            text.chars().collect()
        };
        let segments = &self.segments;
        let (first, last) = (&segments[0], &segments[segments.len() - 1]);
        if segments.len() == 1 {
            return chars.len() == first.len() && first.matches_at(&chars, 0);
        }
        if chars.len() < first.len() + last.len() {
            return false;
        }
        let end = chars.len() - last.len();
        if !first.matches_at(&chars, 0) || !last.matches_at(&chars, end) {
            return false;
        }
        let mut at = first.len();
        for segment in &segments[1..segments.len() - 1] {
            match segment.find(&chars[at..end]) {
                Some(found) => at += found + segment.len(),
                None => return false,
            }
        }
        true
    }
}

/// A `match`/`imatch` regular expression (the `regex` crate's syntax, close
/// to PostgreSQL's for classes, anchors, groups and repetition; without
/// back references and look-around, which it refuses). As in PostgreSQL,
/// it matches anywhere in the value and `.` matches a newline.
#[derive(Debug, Clone)]
pub struct Regex {
    pub regex: regex::Regex,
    pub case_insensitive: bool,
}

impl PartialEq for Regex {
    fn eq(&self, other: &Regex) -> bool {
        self.regex.as_str() == other.regex.as_str()
            && self.case_insensitive == other.case_insensitive
    }
}

impl Regex {
    fn new(source: &str, case_insensitive: bool) -> Result<Regex, Why> {
        let regex = regex::RegexBuilder::new(source)
            .case_insensitive(case_insensitive)
            .dot_matches_new_line(true)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_CACHE_LIMIT)
            .build()
            .map_err(|e| match e {
                regex::Error::CompiledTooBig(limit) => format!(
                    "the regular expression {} compiles to more than {limit} bytes: make it simpler",
                    shown(source)
                ),
                e => {
                    // The crate's message repeats the pattern over lines,
                    // with its reason on the last.
                    let text = e.to_string();
                    let reason = text.lines().last().unwrap_or_default();
                    let reason = reason.strip_prefix("error: ").unwrap_or(reason);
                    format!("invalid regular expression {}: {reason}", shown(source))
                }
            })?;
        Ok(Regex {
            regex,
            case_insensitive,
        })
    }
}

/// `text` quoted for an error message, cut to [`SHOWN_CHARS`] characters.
fn shown(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        None => format!("{text:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &text[..end], text.len()),
    }
}

#[cfg(test)]
mod tests;

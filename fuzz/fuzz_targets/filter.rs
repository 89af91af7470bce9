//! `postgres_changes` filters as any client may send them (Supabase
//! Realtime's grammar: conditions joined by `,`, `not.`, `eq` ... `in`,
//! `like`/`ilike`, `match`/`imatch`, `is`, `isdistinct`, quoted values),
//! through the server's parser (`Filter::parse`, `Filter::parse_with_limits`)
//! against a few tables: one with a column of each comparison kind, and
//! tables whose every column is of one kind.
//!
//! Beyond "no panic": an error is bounded (the filter is not echoed whole);
//! smaller limits never accept what the defaults refuse; a filter holds
//! between one and `MAX_FILTER_CONDITIONS` conditions on known columns, an
//! `in` list at most `MAX_FILTER_VALUES` values, each key once; the index
//! is a plain `eq`/`in` with the fewest keys; a row is matched exactly when
//! each condition passes, and a column the row lacks passes nothing; a row
//! holding an `eq` or `in` filter's own value passes it; and the filter's
//! printed form parses back to the same filter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use realtime_server::filter::{
    Comparison, Field, Filter, Limits, Op, Operand, MAX_CONDITIONS, MAX_IN_VALUES,
};

const KINDS: [Comparison; 5] = [
    Comparison::Number,
    Comparison::Time,
    Comparison::Date,
    Comparison::Bool,
    Comparison::Text,
];

/// A table with one column of each kind (the names the seeds use).
fn mixed(column: &str) -> Option<Comparison> {
    match column {
        "id" => Some(Comparison::Number),
        "at" => Some(Comparison::Time),
        "day" => Some(Comparison::Date),
        "ok" => Some(Comparison::Bool),
        "name" => Some(Comparison::Text),
        _ => None,
    }
}

/// The smaller limits tried beside the defaults.
const SMALL: Limits = Limits {
    max_conditions: 2,
    max_values: 3,
};

/// The longest error a filter may get, whatever its length: the filter and
/// the condition it names are each cut to a few dozen characters.
const MAX_ERROR_BYTES: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // Filters arrive inside a JSON string: UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(text, mixed);
    for kind in KINDS {
        check(text, move |_: &str| Some(kind));
    }
});

fn check(text: &str, lookup: impl Fn(&str) -> Option<Comparison> + Copy) {
    let parsed = Filter::parse(text, lookup);
    let small = Filter::parse_with_limits(text, lookup, SMALL);
    for r in [&parsed, &small] {
        if let Err(e) = r {
            assert!(
                e.message.len() <= MAX_ERROR_BYTES,
                "{} bytes of error for {} bytes of filter",
                e.message.len(),
                text.len()
            );
        }
    }
    if let Ok(s) = &small {
        assert_eq!(
            parsed.as_ref().ok(),
            Some(s),
            "{text:?}: accepted with the limits {SMALL:?}, not with the defaults"
        );
    }
    let Ok(filter) = parsed else {
        return;
    };

    let n = filter.conditions.len();
    assert!((1..=MAX_CONDITIONS).contains(&n), "{text:?}: {n} conditions");
    for c in &filter.conditions {
        assert_eq!(lookup(&c.column), Some(c.kind), "{text:?}: {}", c.column);
        if let Operand::List { items, .. } = &c.operand {
            assert_eq!(c.op, Op::In, "{text:?}");
            assert!(items.len() <= MAX_IN_VALUES, "{text:?}");
            let mut keys: Vec<String> = items.iter().map(|i| i.value.key()).collect();
            let all = keys.len();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), all, "{text:?}: a key twice in the list");
        }
    }

    // The index: a plain eq/in with the fewest keys.
    let plain_keys = |c: &realtime_server::filter::Condition| -> Option<usize> {
        if c.negated {
            return None;
        }
        match (&c.op, &c.operand) {
            (Op::Eq, Operand::Value(_)) => Some(1),
            (Op::In, Operand::List { items, .. }) => Some(items.len()),
            _ => None,
        }
    };
    let fewest = filter.conditions.iter().filter_map(plain_keys).min();
    match (filter.index, filter.index_keys()) {
        (Some(i), Some(keys)) => {
            let c = &filter.conditions[i];
            assert_eq!(plain_keys(c), Some(keys.keys.len()), "{text:?}");
            assert_eq!(Some(keys.keys.len()), fewest, "{text:?}");
            assert_eq!((keys.column, keys.kind), (c.column.as_str(), c.kind));
        }
        (None, None) => assert_eq!(fewest, None, "{text:?}: a plain eq/in, no index"),
        (i, k) => panic!("{text:?}: index {i:?} with keys {k:?}"),
    }

    // Rows: every condition must pass; what the row lacks passes nothing.
    assert!(!filter.matches(|_| Field::Unknown), "{text:?}");
    let rows = [
        Field::Null,
        Field::Text("1".into()),
        Field::Text("true".into()),
        Field::Text("2026-11-29 12:00:00+00".into()),
        Field::Text(text.into()),
    ];
    for field in &rows {
        let each = filter.conditions.iter().all(|c| c.passes(field));
        assert_eq!(filter.matches(|_| field.clone()), each, "{text:?} {field:?}");
        let rest = filter
            .conditions
            .iter()
            .enumerate()
            .all(|(i, c)| Some(i) == filter.index || c.passes(field));
        assert_eq!(
            filter.matches_unindexed(|_| field.clone()),
            rest,
            "{text:?} {field:?}"
        );
    }

    // A row holding the filter's own value passes a lone eq or in.
    if let [c] = filter.conditions.as_slice() {
        let own: Vec<&str> = match (&c.op, &c.operand, c.negated) {
            (Op::Eq, Operand::Value(v), false) => vec![&v.text],
            (Op::In, Operand::List { items, .. }, false) => {
                items.iter().map(|i| i.text.as_str()).collect()
            }
            _ => vec![],
        };
        for value in own {
            assert!(
                filter.matches(|_| Field::Text(value.into())),
                "{text:?}: a row whose {} is {value:?} (the filter's own value)",
                c.column
            );
        }
    }

    // Printed, the filter parses back to itself and prints the same.
    let printed = filter.to_string();
    let again = Filter::parse(&printed, lookup)
        .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?} is refused: {e}"));
    assert_eq!(again, filter, "{text:?} printed as {printed:?}");
    assert_eq!(again.to_string(), printed, "{text:?}");
}

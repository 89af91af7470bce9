//! `postgres_changes` filters as any client may send them
//! (`column=op.value`, `in.(a,b)`), through the server's parser
//! (`Filter::parse`, `Filter::parse_with_limit`) against a few tables: one
//! with a column of each comparison kind, and tables whose every column is
//! of one kind.
//!
//! Beyond "no panic": an error is bounded (the filter is not echoed whole);
//! a smaller `in` limit never accepts what the default refuses; a filter
//! holds one value (an `in` list: at most the limit, each key once); a row
//! whose value is the filter's own value passes or fails as the operator
//! says; and the filter's printed form parses back to the same column,
//! operator, kind and index keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use realtime_server::filter::{Comparison, Filter, Op, MAX_IN_VALUES};

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

/// The smaller `in` limit tried beside the default.
const SMALL_LIMIT: usize = 3;

/// The longest error a filter may get, whatever its length: each piece of
/// the filter it quotes is cut to 80 characters.
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
    let small = Filter::parse_with_limit(text, lookup, SMALL_LIMIT);
    for r in [&parsed, &small] {
        if let Err(e) = r {
            assert!(
                e.0.len() <= MAX_ERROR_BYTES,
                "{} bytes of error for {} bytes of filter",
                e.0.len(),
                text.len()
            );
        }
    }
    if let Ok(s) = &small {
        assert_eq!(
            parsed.as_ref().ok(),
            Some(s),
            "{text:?}: accepted with at most {SMALL_LIMIT} values, not with {MAX_IN_VALUES}"
        );
    }
    let Ok(filter) = parsed else {
        return;
    };
    assert_eq!(lookup(&filter.column), Some(filter.kind), "{text:?}");
    match filter.op {
        Op::In => {
            assert!(!filter.values.is_empty(), "{text:?}: an empty in list");
            assert!(filter.values.len() <= MAX_IN_VALUES, "{text:?}");
        }
        _ => assert_eq!(filter.values.len(), 1, "{text:?}"),
    }
    let keys: Vec<String> = filter.values.iter().map(|v| v.key()).collect();
    let mut distinct = keys.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        keys.len(),
        "{text:?}: a key twice in {keys:?}"
    );
    if matches!(filter.op, Op::Eq | Op::In) {
        assert_eq!(filter.eq_keys().as_ref(), Some(&keys), "{text:?}");
    } else {
        assert_eq!(filter.eq_keys(), None, "{text:?}");
    }

    // A row holding the filter's own value (in its key's form).
    for key in &keys {
        let want = matches!(filter.op, Op::Eq | Op::In | Op::Lte | Op::Gte);
        assert_eq!(
            filter.matches(Some(key)),
            want,
            "{text:?}: a row whose {} is {key:?} (the filter's value)",
            filter.column
        );
    }
    assert!(!filter.matches(None), "{text:?}: NULL passes no filter");

    // Printed with its keys, the filter parses back to the same one.
    let printed = print(&filter, &keys);
    let again = Filter::parse(&printed, lookup)
        .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?} is refused: {e}"));
    assert_eq!(
        again.column, filter.column,
        "{text:?} printed as {printed:?}"
    );
    assert_eq!(again.op, filter.op, "{text:?} printed as {printed:?}");
    assert_eq!(again.kind, filter.kind, "{text:?} printed as {printed:?}");
    let again_keys: Vec<String> = again.values.iter().map(|v| v.key()).collect();
    assert_eq!(again_keys, keys, "{text:?} printed as {printed:?}");
}

fn print(filter: &Filter, keys: &[String]) -> String {
    let op = match filter.op {
        Op::Eq => "eq",
        Op::Neq => "neq",
        Op::Lt => "lt",
        Op::Lte => "lte",
        Op::Gt => "gt",
        Op::Gte => "gte",
        Op::In => return format!("{}=in.({})", filter.column, keys.join(",")),
    };
    format!("{}={op}.{}", filter.column, keys[0])
}

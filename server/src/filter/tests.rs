//! The filter grammar: what each operator selects, how NULL behaves, what
//! is refused and why, and properties over arbitrary client input.

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
    Filter::parse(s, cols).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn err(s: &str) -> String {
    match Filter::parse(s, cols) {
        Ok(f) => panic!("{s:?} parsed: {f:?}"),
        Err(e) => e.message,
    }
}

/// Whether the filter (on one column) passes a row whose column holds
/// `value` (`None`: NULL).
fn passes(filter: &str, value: Option<&str>) -> bool {
    let filter = f(filter);
    let column = filter.conditions[0].column.clone();
    filter.matches(|c| match (c == column, value) {
        (false, _) => Field::Unknown,
        (true, Some(t)) => Field::Text(t.into()),
        (true, None) => Field::Null,
    })
}

/// A row: each named column holds its text (or NULL); any other is unknown.
fn row<'a>(values: &'a [(&'a str, Option<&'a str>)]) -> impl Fn(&str) -> Field<'a> + 'a {
    move |c| match values.iter().find(|(k, _)| *k == c) {
        Some((_, Some(t))) => Field::Text(Cow::Borrowed(t)),
        Some((_, None)) => Field::Null,
        None => Field::Unknown,
    }
}

#[test]
fn numbers_compare_as_numbers() {
    assert!(passes("id=gt.9", Some("10")));
    assert!(!passes("id=gt.9", Some("9")));
    assert!(passes("id=gte.9", Some("9")));
    assert!(passes("id=lt.10", Some("9.5")));
    assert!(passes("id=lte.10", Some("10.0")));
    assert!(passes("id=eq.1", Some("1.0")));
    assert!(passes("id=neq.1", Some("2")));
    assert!(!passes("id=neq.1", Some("1")));
    assert!(passes("id=in.(1,2,3)", Some("2")));
    assert!(!passes("id=in.(1,2,3)", Some("4")));
    assert!(passes("id=isdistinct.1", Some("2")));
    assert!(!passes("id=isdistinct.1", Some("1.0")));
    assert_eq!(
        f("id=in.(1, 2.0)").index_keys().unwrap().keys,
        vec!["1".to_string(), "2".to_string()]
    );
}

#[test]
fn text_compares_as_text() {
    assert!(passes("name=eq.bob", Some("bob")));
    assert!(passes("name=lt.bob", Some("alice")));
    assert!(!passes("name=gt.bob", Some("Zed")), "byte order: Z < b");
    assert!(
        passes("name=eq.a.b", Some("a.b")),
        "dots after the op belong to the value"
    );
    assert!(passes("name=eq.\"a,b\"", Some("a,b")));
    assert!(passes(
        r#"name=eq."say \"hi\" \\o/""#,
        Some(r#"say "hi" \o/"#)
    ));
    assert!(
        passes("name=eq.\"a\"b", Some("\"a\"b")),
        "a value that is not one quoted string is taken as written"
    );
    assert!(passes("name=eq.", Some("")), "the empty text");
}

#[test]
fn timestamps_dates_and_booleans_compare_by_type() {
    assert!(passes(
        "at=gt.2021-01-01T00:00:00Z",
        Some("2021-01-01 00:00:01+00")
    ));
    assert!(passes(
        "at=eq.2021-01-01T05:30:00+05:30",
        Some("2021-01-01 00:00:00+00")
    ));
    assert!(passes("day=lt.2021-02-01", Some("2021-01-31")));
    assert!(passes("ok=eq.true", Some("t")));
    assert!(passes("ok=neq.true", Some("f")));
}

#[test]
fn conditions_are_anded() {
    let range = f("id=gt.0,id=lt.100");
    assert_eq!(range.conditions.len(), 2);
    for (v, want) in [("0", false), ("1", true), ("99", true), ("100", false)] {
        assert_eq!(range.matches(row(&[("id", Some(v))])), want, "{v}");
    }
    let two = f("id=eq.1,name=like.a%");
    assert!(two.matches(row(&[("id", Some("1")), ("name", Some("abc"))])));
    assert!(!two.matches(row(&[("id", Some("1")), ("name", Some("xbc"))])));
    assert!(!two.matches(row(&[("id", Some("2")), ("name", Some("abc"))])));
    assert!(
        !two.matches(row(&[("id", Some("1"))])),
        "a condition on a column the row does not carry fails"
    );
}

#[test]
fn not_negates_every_operator() {
    let cases = [
        ("id=not.eq.1", "2", "1"),
        ("id=not.neq.1", "1", "2"),
        ("id=not.lt.2", "2", "1"),
        ("id=not.lte.2", "3", "2"),
        ("id=not.gt.2", "2", "3"),
        ("id=not.gte.2", "1", "2"),
        ("id=not.in.(1,2)", "3", "2"),
        ("name=not.like.a%", "ba", "ab"),
        ("name=not.ilike.A%", "ba", "ab"),
        ("name=not.match.^a", "ba", "ab"),
        ("name=not.imatch.^A", "ba", "ab"),
        ("ok=not.is.true", "f", "t"),
        ("id=not.isdistinct.1", "1", "2"),
    ];
    for (filter, passing, failing) in cases {
        assert!(passes(filter, Some(passing)), "{filter} passes {passing}");
        assert!(!passes(filter, Some(failing)), "{filter} fails {failing}");
    }
}

/// NULL as in SQL: a comparison with NULL is not true, negated or not;
/// `is.null` and `isdistinct` are.
#[test]
fn null_is_sql_null() {
    for filter in [
        "id=eq.1",
        "id=neq.1",
        "id=lt.1",
        "id=gte.1",
        "id=in.(1,2)",
        "name=like.%",
        "name=match..*",
        "ok=is.true",
        "ok=is.false",
        "id=not.isdistinct.1",
        "id=not.is.null",
    ] {
        assert!(!passes(filter, None), "{filter} passes no NULL");
        let negated = match filter.split_once("not.") {
            Some((a, b)) => format!("{a}{b}"),
            None => filter.replacen('=', "=not.", 1),
        };
        let want = matches!(
            negated.as_str(),
            "ok=not.is.true" | "ok=not.is.false" | "id=isdistinct.1" | "id=is.null"
        );
        assert_eq!(passes(&negated, None), want, "{negated} on NULL");
    }
    assert!(passes("ok=is.unknown", None));
    assert!(!passes("ok=is.unknown", Some("t")));
    // A list holding NULL: a row in none of its values is NULL to `in`,
    // so `not.in` passes it not.
    assert!(passes("id=in.(1,null)", Some("1")));
    assert!(!passes("id=in.(1,null)", Some("2")));
    assert!(!passes("id=not.in.(1,NULL)", Some("2")));
    assert!(passes("id=not.in.(1,2)", Some("3")));
}

#[test]
fn unknown_values_pass_nothing() {
    for filter in [
        "id=eq.1",
        "id=not.eq.1",
        "id=is.null",
        "id=not.is.null",
        "id=isdistinct.1",
        "id=not.isdistinct.1",
        "name=not.like.x",
    ] {
        let parsed = f(filter);
        assert!(!parsed.matches(|_| Field::Unknown), "{filter}");
    }
    // A value the column's type cannot compare (numeric NaN) compares with
    // nothing.
    assert!(!passes("id=eq.1", Some("NaN")));
    assert!(!passes("id=not.eq.1", Some("NaN")));
}

#[test]
fn like_patterns_as_postgresql_reads_them() {
    let like = |p: &str, t: &str| passes(&format!("name=like.{p}"), Some(t));
    let ilike = |p: &str, t: &str| passes(&format!("name=ilike.{p}"), Some(t));
    assert!(like("abc", "abc"));
    assert!(!like("abc", "abcd"));
    assert!(like("a%", "abcd"));
    assert!(like("%d", "abcd"));
    assert!(like("%b%", "abcd"));
    assert!(!like("%x%", "abcd"));
    assert!(like("a_c", "abc"));
    assert!(!like("a_c", "ac"));
    assert!(like("a*d", "abcd"), "* is % as PostgREST has it");
    assert!(like("%", ""));
    assert!(like("", ""));
    assert!(!like("", "a"));
    assert!(like(r"100\%", "100%"));
    assert!(!like(r"100\%", "1000"));
    assert!(like(r"a\_b", "a_b"));
    assert!(!like(r"a\_b", "axb"));
    assert!(like(r"a\\b", r"a\b"));
    assert!(like(r"a\*", "a*"));
    assert!(like("%a%b%a%", "xxaxxbxxaxx"));
    assert!(!like("%a%b%a%", "xxaxxbxx"));
    assert!(like("%aab", "aaaab"), "a segment found after a false start");
    assert!(like("_é_", "aéb"), "_ is one character, not one byte");
    assert!(!like("A%", "abc"));
    assert!(ilike("A%", "abc"));
    assert!(ilike("%ÉT%", "été"));
    assert!(like("\"a,b%\"", "a,bc"), "a quoted pattern");
    let long = "x".repeat(70) + "y";
    assert!(
        like(&format!("%{long}%"), &format!("xx{long}x")),
        "segments over 64 characters"
    );
    assert!(!like(&format!("%{long}%"), &"x".repeat(200)));
}

#[test]
fn regular_expressions_match_anywhere() {
    assert!(passes("name=match.^a.c$", Some("abc")));
    assert!(passes("name=match.b", Some("abc")), "unanchored");
    assert!(!passes("name=match.B", Some("abc")));
    assert!(passes("name=imatch.B", Some("abc")));
    assert!(
        passes("name=match.a.c", Some("a\nc")),
        ". matches a newline"
    );
    assert!(passes(
        "name=match.[0-9]{3}-[0-9]{4}",
        Some("call 555-1234")
    ));
    assert!(passes("name=match.\"^(a|b),c$\"", Some("b,c")), "quoted");
}

#[test]
fn in_lists_read_quoted_values_as_postgresql_arrays() {
    let list = |s: &str| match f(s).conditions.remove(0).operand {
        Operand::List { items, null } => {
            (items.into_iter().map(|i| i.text).collect::<Vec<_>>(), null)
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(
        list("name=in.(\"a,b\",c)"),
        (vec!["a,b".into(), "c".into()], false)
    );
    assert_eq!(
        list(r#"name=in.("x\"y", z )"#),
        (vec!["x\"y".into(), "z".into()], false)
    );
    assert_eq!(
        list(r"name=in.(a\,b,c\ )"),
        (vec!["a,b".into(), "c ".into()], false)
    );
    assert_eq!(
        list("name=in.( a b ,c)"),
        (vec!["a b".into(), "c".into()], false)
    );
    assert_eq!(
        list("name=in.(\"\",\"NULL\")"),
        (vec!["".into(), "NULL".into()], false)
    );
    assert_eq!(list("name=in.(a,NULL,null)"), (vec!["a".into()], true));
    assert_eq!(
        list("name=in.((a),b)"),
        (vec!["(a)".into(), "b".into()], false)
    );
    assert_eq!(list("name=in.()"), (vec![], false));
    assert!(
        !passes("name=in.()", Some("a")),
        "the empty list holds nothing"
    );
    assert!(passes("name=not.in.()", Some("a")));
    assert!(passes("name=in.(\"a,b\",c)", Some("a,b")));
    assert!(!passes("name=in.(\"a,b\",c)", Some("a")));
    let quoted_in_two = f("name=in.(\"a,b\",c),id=eq.1");
    assert_eq!(quoted_in_two.conditions.len(), 2);
}

#[test]
fn is_takes_keywords() {
    assert!(passes("name=is.null", None));
    assert!(!passes("name=is.null", Some("")));
    assert!(passes("name=not.is.null", Some("x")));
    assert!(passes("ok=is.true", Some("t")));
    assert!(!passes("ok=is.true", Some("f")));
    assert!(passes("ok=is.false", Some("f")));
    assert!(passes("ok=is.NULL", None), "keywords in any case");
    assert!(passes("ok=is.\"true\"", Some("t")));
}

#[test]
fn bad_filters_say_which_part_is_wrong() {
    assert_eq!(
        err("id=eq.1,name=zz.x"),
        "invalid filter \"id=eq.1,name=zz.x\": unknown operator \"zz\" in \"name=zz.x\": \
         use eq, neq, lt, lte, gt, gte, in, like, ilike, is, match, imatch, isdistinct \
         (not. before one negates it)"
    );
    assert_eq!(
        err("id=zz.x"),
        "invalid filter \"id=zz.x\": unknown operator \"zz\": use eq, neq, lt, lte, gt, gte, \
         in, like, ilike, is, match, imatch, isdistinct (not. before one negates it)"
    );
    assert!(err("nope=eq.1").contains("no column \"nope\""));
    assert!(err("id=eq.1,nope=eq.1").ends_with("no column \"nope\" in \"nope=eq.1\""));
    assert!(err("id=eq.abc").contains("\"abc\" is not a valid number value for column \"id\""));
    assert!(err("id=in.(1,x)").contains("\"x\" is not a valid number value in the in list"));
    assert!(err("id").contains("column=op.value"));
    assert!(err("=eq.1").contains("no column before ="));
    assert!(err("id=eq").contains("column=op.value"));
    assert!(err("id=not.not.eq.1").contains("unknown operator \"not\""));
    assert!(err("id=eq.1,,id=eq.2").contains("an empty condition"));
    assert!(err("id=eq.1,").contains("an empty condition"));
    assert!(err("  ").contains("the filter is empty"));
    assert!(err("id=in.1,2").contains("in.(a,b,c)"));
    assert!(err("at=gt.yesterday").contains("timestamp"));
    assert!(err("id=like.1%").contains("like compares text, and column \"id\" is a number"));
    assert!(err("ok=match.t").contains("match compares text"));
    assert!(err("name=is.nothing").contains("is takes null, true, false or unknown"));
    assert!(err("name=is.true").contains("is.true needs a boolean column"));
    assert!(err(r"name=like.ab\").contains("ends with \\"));
    assert!(err("name=match.(a").contains("invalid regular expression \"(a\": unclosed group"));
    assert!(err(r"name=match.(a)\1").contains("invalid regular expression"));
    assert!(err(r"name=match.(?=a)").contains("look-around"));
    assert!(err(r"name=match.(\w{50}){20}").contains("compiles to more than 65536 bytes"));
    assert!(err("name=in.(a,\"b)").contains("no closing \""));
    assert!(err("name=in.(a,)").contains("an empty value"));
    assert!(err("name=in.(a{b)").contains("'{' in an unquoted value"));
    assert!(err("name=in.(\"a\"b)").contains("'b' after a quoted value"));
}

#[test]
fn every_client_controlled_size_is_bounded() {
    let e = |s: &str, limits: Limits| Filter::parse_with_limits(s, cols, limits).unwrap_err();
    let limits = Limits {
        max_conditions: 3,
        max_values: 4,
    };
    let four = "id=gt.0,id=gt.1,id=gt.2,id=gt.3";
    let refused = e(four, limits);
    assert!(
        refused
            .message
            .ends_with("a filter takes at most 3 conditions (MAX_FILTER_CONDITIONS)"),
        "{refused}"
    );
    assert_eq!(refused.limit, Some("MAX_FILTER_CONDITIONS"));
    assert!(Filter::parse_with_limits("id=gt.0,id=gt.1,id=gt.2", cols, limits).is_ok());
    let refused = e("id=in.(1,2,3,4,5)", limits);
    assert!(refused
        .message
        .contains("at most 4 values (MAX_FILTER_VALUES)"));
    assert_eq!(refused.limit, Some("MAX_FILTER_VALUES"));
    assert!(Filter::parse_with_limits("id=in.(1,2,3,4)", cols, limits).is_ok());

    let too_many: Vec<String> = (0..=MAX_IN_VALUES).map(|i| i.to_string()).collect();
    assert!(err(&format!("id=in.({})", too_many.join(","))).contains("at most 100 values"));
    let repeated = format!("id=in.({})", vec!["7"; 300_000].join(","));
    let error = err(&repeated);
    assert!(error.contains("at most 100 values"), "{error}");
    assert!(error.len() < 300, "the filter is not echoed whole: {error}");
    let conditions = vec!["id=eq.1"; 100_000].join(",");
    let error = err(&conditions);
    assert!(error.contains("at most 10 conditions"), "{error}");
    assert!(error.len() < 300, "{error}");
    let long = format!("name=zz.{}", "x".repeat(100_000));
    assert!(err(&long).len() < 300);

    let pattern = "x".repeat(MAX_PATTERN_BYTES);
    assert!(Filter::parse(&format!("name=like.{pattern}"), cols).is_ok());
    assert!(Filter::parse(&format!("name=match.{pattern}"), cols).is_ok());
    for op in ["like", "ilike", "match", "imatch"] {
        let error = err(&format!("name={op}.{pattern}x"));
        assert!(
            error.contains(&format!(
                "a {op} pattern takes at most 512 bytes, this one has 513"
            )),
            "{error}"
        );
        assert!(error.len() < 400, "{error}");
    }
}

#[test]
fn a_plain_eq_or_in_is_the_index() {
    let keys = |s: &str| f(s).index_keys().map(|k| (k.column.to_string(), k.keys));
    assert_eq!(keys("id=eq.1"), Some(("id".into(), vec!["1".into()])));
    assert_eq!(
        keys("name=like.a%,id=in.(1,2),name=eq.x"),
        Some(("name".into(), vec!["x".into()])),
        "the condition with the fewest keys"
    );
    assert_eq!(
        keys("id=in.(1,2),name=in.(a,b)"),
        Some(("id".into(), vec!["1".into(), "2".into()])),
        "the first of equals"
    );
    assert_eq!(keys("id=not.eq.1"), None, "a negated eq is no index");
    assert_eq!(keys("id=gt.1,name=like.x"), None);
    assert_eq!(keys("id=in.(1,1.0,01)").unwrap().1, vec!["1".to_string()]);

    let filter = f("name=like.a%,id=eq.1");
    assert_eq!(filter.index, Some(1));
    // The hub found the binding by id: only the rest is checked.
    assert!(filter.matches_unindexed(row(&[("id", Some("2")), ("name", Some("ab"))])));
    assert!(!filter.matches_unindexed(row(&[("id", Some("1")), ("name", Some("b"))])));
}

#[test]
fn filters_print_as_realtime_js_writes_them() {
    for text in [
        "id=eq.1,name=lt.30",
        "name=not.in.(draft,archived)",
        "name=eq.\"a,b\"",
        "name=in.(\"a,b\",c)",
        "name=is.null",
        "ok=not.is.true",
        "name=like.%foo%",
        "name=imatch.^post-",
        "id=isdistinct.5",
        "name=eq.\"say \\\"hi\\\"\"",
        "name=in.(\"\",\"null\",\"a b\",NULL)",
        "name=in.()",
    ] {
        assert_eq!(f(text).to_string(), text);
    }
    assert_eq!(
        f(" id =eq.1 , id=in.( 1 , 2,1.0 )").to_string(),
        "id=eq.1,id=in.(1,2)"
    );
    assert_eq!(f("name=eq.\"plain\"").to_string(), "name=eq.plain");
    assert_eq!(f("ok=is.TRUE").to_string(), "ok=is.true");
    assert_eq!(f("name=in.(null,a)").to_string(), "name=in.(a,NULL)");
}

/// A column's name is read as written: a `(` or `"` in it groups nothing,
/// so the commas after it still separate conditions, and the filter prints
/// back to itself (found by the `filter` fuzz target: `id(=eq.3,id=eq.5`
/// was one condition whose value was `3,id=eq.5`).
#[test]
fn parentheses_and_quotes_in_a_column_name_group_nothing() {
    let any = |_: &str| Some(Comparison::Text);
    for text in [
        "id(=eq.3,id=eq.5)",
        "\"a=eq.1,b\"=eq.2",
        "f(x)=in.(1,2),y=eq.3",
    ] {
        let parsed = Filter::parse(text, any).unwrap_or_else(|e| panic!("{text}: {e}"));
        let columns: Vec<&str> = parsed
            .conditions
            .iter()
            .map(|c| c.column.as_str())
            .collect();
        let want: Vec<&str> = match text {
            "id(=eq.3,id=eq.5)" => vec!["id(", "id"],
            "\"a=eq.1,b\"=eq.2" => vec!["\"a", "b\""],
            _ => vec!["f(x)", "y"],
        };
        assert_eq!(columns, want, "{text}");
        let printed = parsed.to_string();
        assert_eq!(
            Filter::parse(&printed, any).unwrap(),
            parsed,
            "{text} as {printed}"
        );
    }
}

/// What realtime-js 2.119.1's `postgresChangesFilter()` builds (its output,
/// written out) parses to what the app asked for.
#[test]
fn realtime_js_builder_output_parses() {
    let eq_lt = f("id=eq.1,id=lt.30");
    assert_eq!(eq_lt.conditions.len(), 2);
    assert_eq!(
        f("name=not.in.(draft,archived)").conditions[0].operand,
        Operand::List {
            items: vec![
                Literal {
                    text: "draft".into(),
                    value: Value::Text("draft".into())
                },
                Literal {
                    text: "archived".into(),
                    value: Value::Text("archived".into())
                }
            ],
            null: false
        }
    );
    // .eq('name', ' padded ') and .in('name', ['a,b', 'q"x', 'back\\slash'])
    assert!(passes("name=eq.\" padded \"", Some(" padded ")));
    let list = "name=in.(\"a,b\",\"q\\\"x\",\"back\\\\slash\")";
    for v in ["a,b", "q\"x", "back\\slash"] {
        assert!(passes(list, Some(v)), "{v}");
    }
    assert!(passes("ok=is.false", Some("f")));
    assert!(passes("ok=not.is.null", Some("t")));
}

/// Properties over arbitrary client input: parsing never panics, and a
/// filter prints to text that parses back to it.
mod properties {
    use super::*;
    use proptest::prelude::*;

    const CMP: [(&str, Op); 6] = [
        ("eq", Op::Eq),
        ("neq", Op::Neq),
        ("lt", Op::Lt),
        ("lte", Op::Lte),
        ("gt", Op::Gt),
        ("gte", Op::Gte),
    ];

    /// realtime-js's quoting of a scalar (its `serializeScalar`).
    fn js_scalar(v: &str) -> String {
        if v.contains([',', '(', ')', '"', '\\']) || v.trim() != v {
            format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
        } else {
            v.to_string()
        }
    }

    /// Conditions made of the grammar's own pieces, mostly well-formed:
    /// values of printable ASCII (quotes, parentheses, commas, escapes and
    /// wildcards included) for the text column, numbers and lists of them,
    /// the `is` keywords, timestamps, and now and then a broken piece.
    fn condition() -> impl Strategy<Value = String> {
        let not = || prop_oneof![3 => Just(""), 1 => Just("not.")];
        let text_op = prop_oneof![
            Just("eq"),
            Just("neq"),
            Just("lt"),
            Just("gte"),
            Just("isdistinct"),
            Just("like"),
            Just("ilike"),
            Just("match"),
            Just("imatch"),
        ];
        let number_op = prop_oneof![
            Just("eq"),
            Just("neq"),
            Just("lt"),
            Just("lte"),
            Just("gt"),
            Just("gte"),
            Just("isdistinct"),
        ];
        let number = "-?[0-9]{1,4}(\\.[0-9]{1,2})?";
        prop_oneof![
            4 => (not(), text_op, "[ -~]{0,14}")
                .prop_map(|(n, op, v)| format!("name={n}{op}.{v}")),
            2 => (not(), prop::collection::vec("[ -~]{0,6}", 0..4))
                .prop_map(|(n, items)| format!("name={n}in.({})", items.join(","))),
            2 => (not(), number_op, number)
                .prop_map(|(n, op, v)| format!("id={n}{op}.{v}")),
            1 => (not(), prop::collection::vec(number, 1..4))
                .prop_map(|(n, items)| format!("id={n}in.({})", items.join(", "))),
            1 => (not(), prop_oneof![Just("null"), Just("true"), Just("FALSE"), Just("unknown"), Just("\"null\"")])
                .prop_map(|(n, v)| format!("ok={n}is.{v}")),
            1 => (not(), prop_oneof![Just("eq"), Just("lt")], "20[0-9]{2}-0[1-9]-1[0-9]( 0[0-9]:00:00(Z|\\+02)?)?")
                .prop_map(|(n, op, v)| format!("at={n}{op}.{v}")),
            1 => (
                prop_oneof![Just("id"), Just(" name "), Just("nope"), Just("")],
                prop_oneof![Just("="), Just(""), Just("==")],
                prop_oneof![Just(""), Just("not."), Just("not")],
                prop_oneof![Just("eq"), Just("in"), Just("is"), Just("zz"), Just("")],
                prop_oneof![Just("."), Just(""), Just("..")],
                "[-+0-9a-zT:.,() \"\\\\%_*^$|{}eEZ]{0,20}",
            )
                .prop_map(|(c, eq, not, op, dot, v)| format!("{c}{eq}{not}{op}{dot}{v}")),
        ]
    }

    fn filterish() -> impl Strategy<Value = String> {
        prop::collection::vec(condition(), 1..4).prop_map(|c| c.join(","))
    }

    /// Parses; when it parses, it prints to text that parses back to the
    /// same filter (and prints the same again), and rows never panic it.
    fn check(text: &str, row_value: &str) {
        let Ok(parsed) = Filter::parse(text, cols) else {
            return;
        };
        assert!(!parsed.conditions.is_empty());
        let printed = parsed.to_string();
        let again = Filter::parse(&printed, cols)
            .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which fails: {e}"));
        assert_eq!(again, parsed, "{text:?} printed as {printed:?}");
        assert_eq!(again.to_string(), printed);
        for field in [Field::Text(row_value.into()), Field::Null, Field::Unknown] {
            let _ = parsed.matches(|_| field.clone());
            let _ = parsed.matches_unindexed(|_| field.clone());
        }
        let _ = parsed.index_keys();
    }

    /// A plain recursive LIKE matcher: the reference for the linear one.
    fn like_reference(p: &[Option<Option<char>>], t: &[char]) -> bool {
        // p: None is %, Some(None) is _, Some(Some(c)) is c.
        match p.split_first() {
            None => t.is_empty(),
            Some((None, rest)) => (0..=t.len()).any(|i| like_reference(rest, &t[i..])),
            Some((Some(c), rest)) => {
                !t.is_empty() && c.is_none_or(|c| c == t[0]) && like_reference(rest, &t[1..])
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_text_parses_or_is_refused(text in any::<String>(), row in any::<String>()) {
            check(&text, &row);
        }

        #[test]
        fn filter_like_text_parses_or_is_refused(text in filterish(), row in "[-+0-9a-zT:. ]{0,30}") {
            check(&text, &row);
        }

        #[test]
        fn what_realtime_js_quotes_parses_to_what_it_meant(v in any::<String>(), op in 0..6usize) {
            let (name, _) = CMP[op];
            let parsed = Filter::parse(&format!("name={name}.{}", js_scalar(&v)), cols)
                .map_err(|e| TestCaseError::fail(e.message))?;
            prop_assert_eq!(
                &parsed.conditions[0].operand,
                &Operand::Value(Literal { text: v.clone(), value: Value::Text(v.clone()) })
            );
            check(&parsed.to_string(), &v);
        }

        #[test]
        fn realtime_js_in_lists_parse_to_their_items(
            items in prop::collection::vec("[^{}]{1,8}", 1..6)
                .prop_filter("NULL is PostgreSQL's NULL", |v| v.iter().all(|i| !i.trim().eq_ignore_ascii_case("null")))
        ) {
            let list: Vec<String> = items.iter().map(|i| js_scalar(i)).collect();
            let text = format!("name=in.({}),id=eq.1", list.join(","));
            let parsed = Filter::parse(&text, cols).map_err(|e| TestCaseError::fail(e.message))?;
            let Operand::List { items: got, null } = &parsed.conditions[0].operand else {
                return Err(TestCaseError::fail("not a list"));
            };
            prop_assert!(!null);
            let mut want: Vec<String> = Vec::new();
            for i in &items {
                // Unquoted items are trimmed, as PostgreSQL trims them.
                let i = if js_scalar(i) == *i { i.trim_matches(pg_space).to_string() } else { i.clone() };
                if !want.contains(&i) {
                    want.push(i);
                }
            }
            prop_assert_eq!(got.iter().map(|l| l.text.clone()).collect::<Vec<_>>(), want);
            check(&text, "x");
        }

        #[test]
        fn number_filters_say_what_they_compare(n in any::<i64>(), row in any::<i64>(), op in 0..6usize, not in any::<bool>()) {
            let (name, op) = CMP[op];
            let prefix = if not { "not." } else { "" };
            let parsed = Filter::parse(&format!("id={prefix}{name}.{n}"), cols)
                .map_err(|e| TestCaseError::fail(e.message))?;
            prop_assert_eq!(&parsed.conditions, &vec![Condition {
                column: "id".into(), kind: Comparison::Number, negated: not, op,
                operand: Operand::Value(Literal { text: n.to_string(), value: Value::Int(n.into()) }),
            }]);
            let want = match op {
                Op::Eq => row == n,
                Op::Neq => row != n,
                Op::Lt => row < n,
                Op::Lte => row <= n,
                Op::Gt => row > n,
                Op::Gte => row >= n,
                _ => unreachable!(),
            };
            let text = row.to_string();
            prop_assert_eq!(parsed.matches(|_| Field::Text(text.as_str().into())), want != not);
            prop_assert!(!parsed.matches(|_| Field::Null), "NULL passes neither");
        }

        #[test]
        fn anded_conditions_pass_when_each_does(a in -5i64..5, b in -5i64..5, row in -6i64..6, ops in (0..6usize, 0..6usize)) {
            let (one, two) = (CMP[ops.0].0, CMP[ops.1].0);
            let both = f(&format!("id={one}.{a},id={two}.{b}"));
            let text = row.to_string();
            let field = || Field::Text(text.as_str().into());
            let each = f(&format!("id={one}.{a}")).matches(|_| field())
                && f(&format!("id={two}.{b}")).matches(|_| field());
            prop_assert_eq!(both.matches(|_| field()), each);
        }

        #[test]
        fn in_lists_hold_each_value(ns in prop::collection::vec(any::<i64>(), 1..8), other in any::<i64>()) {
            let list = ns.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
            let parsed = f(&format!("id=in.({list})"));
            let mut distinct: Vec<i64> = Vec::new();
            for n in &ns {
                if !distinct.contains(n) {
                    distinct.push(*n);
                }
            }
            let keys = parsed.index_keys().unwrap().keys;
            prop_assert_eq!(keys, distinct.iter().map(i64::to_string).collect::<Vec<_>>());
            for n in &ns {
                let t = n.to_string();
                prop_assert!(parsed.matches(|_| Field::Text(t.as_str().into())));
            }
            let t = other.to_string();
            prop_assert_eq!(parsed.matches(|_| Field::Text(t.as_str().into())), ns.contains(&other));
        }

        #[test]
        fn like_matches_as_the_plain_matcher(
            pattern in "[ab%_*]{0,12}",
            text in "[ab]{0,14}",
        ) {
            let parsed = f(&format!("name=like.{pattern}"));
            let tokens: Vec<Option<Option<char>>> = pattern
                .chars()
                .map(|c| match c {
                    '%' | '*' => None,
                    '_' => Some(None),
                    c => Some(Some(c)),
                })
                .collect();
            let chars: Vec<char> = text.chars().collect();
            prop_assert_eq!(
                parsed.matches(|_| Field::Text(text.as_str().into())),
                like_reference(&tokens, &chars),
                "{} on {}", pattern, text
            );
        }

        #[test]
        fn long_like_segments_match_as_the_plain_matcher(
            pattern in "[ab_]{60,140}",
            text in "[ab]{0,30}",
            pad in "[ab]{0,30}",
        ) {
            // A segment of more than 64 characters spans machine words.
            let parsed = f(&format!("name=like.%{pattern}%"));
            let hay = format!("{text}{}{pad}", pattern.replace('_', "a"));
            prop_assert!(parsed.matches(|_| Field::Text(hay.as_str().into())));
            let tokens: Vec<Option<Option<char>>> = std::iter::once(None)
                .chain(pattern.chars().map(|c| if c == '_' { Some(None) } else { Some(Some(c)) }))
                .chain(std::iter::once(None))
                .collect();
            let other = format!("{text}{pad}{text}");
            let chars: Vec<char> = other.chars().collect();
            prop_assert_eq!(
                parsed.matches(|_| Field::Text(other.as_str().into())),
                like_reference(&tokens, &chars)
            );
        }

        #[test]
        fn unknown_columns_and_operators_are_refused(col in "[a-z_]{1,8}", op in "[a-z]{1,10}", v in "[^,]*") {
            if op == "not" {
                return Ok(());
            }
            let text = format!("{col}={op}.{v}");
            match Filter::parse(&text, cols) {
                Err(e) if Op::parse(&op).is_none() => {
                    prop_assert!(e.message.contains("unknown operator"), "{}", e.message);
                }
                Err(e) if Op::parse(&op).is_some() && cols(&col).is_none() => {
                    prop_assert!(e.message.contains("no column"), "{}", e.message);
                }
                Ok(_) => prop_assert!(Op::parse(&op).is_some() && cols(&col).is_some()),
                Err(_) => {}
            }
        }
    }
}

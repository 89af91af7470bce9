//! What a policy expression depends on, decided from its node tree.
//!
//! Owns the pure half of reducing a policy: whether an expression depends on
//! the token's claims only (so it has one value per group of subscribers and
//! can be computed once), whether a policy has the owner shape
//! `column = <claims-only expression>` (so it can be indexed like an `eq`
//! filter), and cutting the claims side out of the policy's SQL text. It
//! does no I/O: the functions an expression calls are described by the
//! caller ([`Functions`]), read from `pg_proc`. Whatever it does not
//! recognise is "depends on the row", which is always exact (the row is then
//! checked inside PostgreSQL).

use std::collections::{BTreeSet, HashMap};

use super::nodetree::{self, Node, Tree};

/// What the analysis needs to know of one function, from `pg_proc`.
#[derive(Debug, Clone)]
pub struct Function {
    pub schema: String,
    pub name: String,
    /// `provolatile`: `i`mmutable, `s`table, `v`olatile.
    pub volatile: char,
    /// `prolang`'s name: `sql`, `plpgsql`, `internal`, `c`.
    pub language: String,
    pub nargs: i64,
    pub returns_set: bool,
    /// The function sets its own configuration (`SET search_path ...`).
    pub has_config: bool,
    /// A SQL function's body as a node tree: `prosqlbody`, or its text
    /// body parsed by PostgreSQL into one (see `catalog::probe_body`).
    pub body: Option<Tree>,
}

/// The functions an expression (and the bodies it reaches) calls, by OID.
pub type Functions = HashMap<i64, Function>;

/// Built-in stable functions whose value within one transaction depends only
/// on the session's settings, which the server fixes per group (the claims,
/// the role) or per connection. `now()` and friends are stable too but change
/// with time: they are not here.
const SETTINGS_FUNCTIONS: &[&str] = &[
    "current_setting",
    "current_user",
    "session_user",
    "current_role",
];

/// How deep function bodies are followed (a body calling a function whose
/// body calls another...). Past this an expression counts as row-dependent.
const MAX_BODY_DEPTH: usize = 4;

/// Equality operators whose `a = b` is exactly "the text forms are equal"
/// for values of their type: `int2`, `int4`, `int8`, `text` (with a
/// deterministic collation, checked separately), `uuid`, `oid`,
/// `name`. Their OIDs are fixed in PostgreSQL's catalog (`pg_operator.dat`).
const TEXT_EQUALITY_OPERATORS: &[i64] = &[94, 96, 410, 98, 2972, 607, 93];

/// Collations under which text equality is byte equality: none (`0`),
/// `default` (100), `C` (950), `POSIX` (951). `default` is always
/// deterministic; a nondeterministic collation (PostgreSQL 12+) is never one
/// of these.
const DETERMINISTIC_COLLATIONS: &[i64] = &[0, 100, 950, 951];

/// Every function OID a tree calls directly (functions, operators' functions).
pub fn called_functions(tree: &Tree) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    nodetree::collect_ints(tree, &["FUNCEXPR"], "funcid", &mut out);
    nodetree::collect_ints(
        tree,
        &["OPEXPR", "NULLIFEXPR", "DISTINCTEXPR", "SCALARARRAYOPEXPR"],
        "opfuncid",
        &mut out,
    );
    out
}

/// Whether `tree`'s value depends only on the session's settings (the
/// token's claims and role, the connection's fixed settings): no column of
/// any table, no table read, no volatile or time-dependent function. Every
/// function it calls must be in `functions` (else: false).
pub fn claims_only(tree: &Tree, functions: &Functions) -> bool {
    claims_only_at(tree, functions, 0)
}

fn claims_only_at(tree: &Tree, functions: &Functions, depth: usize) -> bool {
    let node = match tree {
        Tree::Node(n) => n,
        Tree::List(items) => return items.iter().all(|t| claims_only_at(t, functions, depth)),
        Tree::Null => return true,
        // Bare atoms only occur as field values, handled per node below.
        Tree::Atom(_) | Tree::Datum(_) => return false,
    };
    let args_ok = |field: &str| {
        node.get(field)
            .is_none_or(|t| claims_only_at(t, functions, depth))
    };
    match node.tag.as_str() {
        "CONST" | "CASETESTEXPR" => true,
        "FUNCEXPR" => {
            node.flag("funcretset") == Some(false)
                && node
                    .int("funcid")
                    .is_some_and(|f| function_ok(f, functions, depth))
                && args_ok("args")
        }
        "OPEXPR" | "NULLIFEXPR" | "DISTINCTEXPR" | "SCALARARRAYOPEXPR" => {
            node.flag("opretset") != Some(true)
                && node
                    .int("opfuncid")
                    .is_some_and(|f| function_ok(f, functions, depth))
                && args_ok("args")
        }
        "BOOLEXPR" | "COALESCEEXPR" | "ARRAYEXPR" => args_ok("args") && args_ok("elements"),
        "NULLTEST" | "BOOLEANTEST" | "RELABELTYPE" | "COERCEVIAIO" | "COERCETODOMAIN" => {
            args_ok("arg")
        }
        "CASEEXPR" => args_ok("arg") && args_ok("args") && args_ok("defresult"),
        "CASEWHEN" => args_ok("expr") && args_ok("result"),
        // `(SELECT <expr>)` with no FROM: the common `(select auth.uid())`.
        "SUBLINK" => {
            node.int("subLinkType") == Some(4)
                && node.is_null("testexpr")
                && node
                    .node("subselect")
                    .and_then(single_expression)
                    .is_some_and(|e| claims_only_at(e, functions, depth))
        }
        // Vars (columns of any table), Params, aggregates, window functions,
        // SQLValueFunction (CURRENT_TIMESTAMP...), anything unknown.
        _ => false,
    }
}

fn function_ok(oid: i64, functions: &Functions, depth: usize) -> bool {
    let Some(f) = functions.get(&oid) else {
        return false;
    };
    if f.returns_set {
        return false;
    }
    if f.schema == "pg_catalog" {
        return f.volatile == 'i' || SETTINGS_FUNCTIONS.contains(&f.name.as_str());
    }
    // A user function: only a SQL function without arguments or settings of
    // its own, whose body is itself claims-only.
    f.language == "sql"
        && f.nargs == 0
        && !f.has_config
        && f.volatile != 'v'
        && depth < MAX_BODY_DEPTH
        && f.body
            .as_ref()
            .and_then(body_expression)
            .is_some_and(|e| claims_only_at(e, functions, depth + 1))
}

/// The one expression of a SQL function body: `RETURN expr`, `SELECT expr`,
/// or `BEGIN ATOMIC SELECT expr; END` (a list of one such query).
pub fn body_expression(body: &Tree) -> Option<&Tree> {
    match body {
        Tree::Node(q) => single_expression(q),
        Tree::List(items) if items.len() == 1 => body_expression(&items[0]),
        _ => None,
    }
}

/// The single output expression of a `SELECT <expr>` with nothing else: no
/// FROM, WHERE, grouping, aggregates, set operations, CTEs or limits.
fn single_expression(query: &Node) -> Option<&Tree> {
    if query.tag != "QUERY" || query.int("commandType") != Some(1) {
        return None;
    }
    let empty = |f: &str| query.is_null(f);
    let off = |f: &str| query.flag(f) != Some(true);
    let plain = empty("rtable")
        && empty("cteList")
        && empty("groupClause")
        && empty("groupingSets")
        && empty("havingQual")
        && empty("windowClause")
        && empty("distinctClause")
        && empty("limitOffset")
        && empty("limitCount")
        && empty("setOperations")
        && empty("rowMarks")
        && empty("utilityStmt")
        && off("hasAggs")
        && off("hasWindowFuncs")
        && off("hasTargetSRFs")
        && off("hasRecursive")
        && off("hasModifyingCTE")
        && off("hasForUpdate");
    if !plain {
        return None;
    }
    let jointree = query.node("jointree")?;
    if !jointree.is_null("fromlist") || !jointree.is_null("quals") {
        return None;
    }
    let mut outputs = query
        .list("targetList")?
        .iter()
        .filter_map(Tree::as_node)
        .filter(|tle| tle.flag("resjunk") != Some(true));
    let first = outputs.next()?;
    if outputs.next().is_some() {
        return None;
    }
    first.get("expr")
}

/// The owner shape of a policy qual: `column = <claims-only expression>`
/// (either side), where `=` is one of the equalities whose truth is the
/// equality of the two values' text forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerShape {
    /// The column's number in the table.
    pub attnum: i16,
    /// Whether the claims side is the right operand.
    pub claims_on_right: bool,
    /// The claims side's node tree (to verify a text cut from the policy's
    /// SQL against).
    pub claims: Tree,
}

/// The owner shape of `qual`, if it has it.
pub fn owner_shape(qual: &Tree, functions: &Functions) -> Option<OwnerShape> {
    let op = qual.as_node()?;
    if op.tag != "OPEXPR" || !TEXT_EQUALITY_OPERATORS.contains(&op.int("opno")?) {
        return None;
    }
    if !DETERMINISTIC_COLLATIONS.contains(&op.int("inputcollid").unwrap_or(0)) {
        return None;
    }
    let args = op.list("args")?;
    let [left, right] = args else {
        return None;
    };
    let (column, claims, claims_on_right) = match (plain_column(left), plain_column(right)) {
        (Some(c), None) => (c, right, true),
        (None, Some(c)) => (c, left, false),
        _ => return None,
    };
    if !claims_only(claims, functions) {
        return None;
    }
    Some(OwnerShape {
        attnum: column,
        claims_on_right,
        claims: claims.clone(),
    })
}

/// A column of the policy's table, read as is (or relabelled, as `varchar`
/// to `text`, which keeps the bytes).
fn plain_column(tree: &Tree) -> Option<i16> {
    let n = tree.as_node()?;
    match n.tag.as_str() {
        "VAR" if n.int("varno") == Some(1) && n.int("varlevelsup") == Some(0) => {
            n.int("varattno").filter(|a| *a > 0).map(|a| a as i16)
        }
        "RELABELTYPE" => plain_column(n.get("arg")?),
        _ => None,
    }
}

/// Cuts the claims side out of the SQL text PostgreSQL printed for an owner
/// qual (`pg_get_expr`), which is `(<left> <op> <right>)` with the operator
/// alone at the first parenthesis level. `None` when the text is not of that
/// form. The caller must still verify the cut (parse it back and compare
/// trees): this only finds the place.
pub fn cut_claims_side(qual_sql: &str, claims_on_right: bool) -> Option<String> {
    let inner = qual_sql.strip_prefix('(')?.strip_suffix(')')?;
    let bytes = inner.as_bytes();
    let mut depth = 0i32;
    let mut i = 0;
    let mut found: Option<(usize, usize)> = None;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => {
                // A string or a quoted identifier; a doubled quote is part of it.
                let q = bytes[i];
                i += 1;
                loop {
                    if i >= bytes.len() {
                        return None;
                    }
                    if bytes[i] == q {
                        if bytes.get(i + 1) == Some(&q) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
            }
            b' ' if depth == 0 => {
                if let Some(len) = operator_at(&inner[i + 1..]) {
                    if found.is_some() {
                        return None;
                    }
                    found = Some((i, i + 1 + len + 1));
                    i += len + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    if depth != 0 {
        return None;
    }
    let (start, end) = found?;
    let side = if claims_on_right {
        inner.get(end..)?
    } else {
        inner.get(..start)?
    };
    let side = side.trim();
    (!side.is_empty()).then(|| side.to_string())
}

/// The length of an equality operator token followed by a space at the
/// start of `s`: `=` or `OPERATOR(pg_catalog.=)`.
fn operator_at(s: &str) -> Option<usize> {
    for token in ["= ", "OPERATOR(pg_catalog.=) "] {
        if s.starts_with(token) {
            return Some(token.len() - 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(schema: &str, name: &str, volatile: char, body: Option<&str>) -> Function {
        Function {
            schema: schema.into(),
            name: name.into(),
            volatile,
            language: if body.is_some() { "sql" } else { "internal" }.into(),
            nargs: 0,
            returns_set: false,
            has_config: false,
            body: body.map(|b| nodetree::parse(b).unwrap()),
        }
    }

    /// `auth.uid()` as Supabase defines it, as its body reads once parsed:
    /// `(select coalesce(nullif(current_setting(...), ''), ...)::uuid)`,
    /// reduced here to the calls that matter.
    fn functions() -> Functions {
        let uid_body = "{QUERY :commandType 1 :rtable <> :cteList <> :jointree {FROMEXPR \
            :fromlist <> :quals <>} :hasAggs false :targetList ({TARGETENTRY :expr {COERCEVIAIO \
            :arg {COALESCEEXPR :args ({NULLIFEXPR :opno 98 :opfuncid 67 :opretset false :args \
            ({FUNCEXPR :funcid 3294 :funcretset false :args ({CONST :consttype 25} {CONST \
            :consttype 16})} {CONST :consttype 25})})}} :resjunk false})}";
        let mut f = Functions::new();
        f.insert(3294, function("pg_catalog", "current_setting", 's', None));
        f.insert(67, function("pg_catalog", "texteq", 'i', None));
        f.insert(2956, function("pg_catalog", "uuid_eq", 'i', None));
        f.insert(1299, function("pg_catalog", "now", 's', None));
        f.insert(16388, function("auth", "uid", 's', Some(uid_body)));
        f.insert(
            16400,
            Function {
                language: "plpgsql".into(),
                ..function("public", "is_admin", 's', None)
            },
        );
        f
    }

    fn var(attno: i64) -> String {
        format!("{{VAR :varno 1 :varattno {attno} :vartype 2950 :varlevelsup 0}}")
    }

    fn call(funcid: i64) -> String {
        format!("{{FUNCEXPR :funcid {funcid} :funcretset false :args <>}}")
    }

    fn eq(opno: i64, left: &str, right: &str) -> Tree {
        nodetree::parse(&format!(
            "{{OPEXPR :opno {opno} :opfuncid 2956 :opretset false :inputcollid 0 :args ({left} {right})}}"
        ))
        .unwrap()
    }

    #[test]
    fn the_owner_pattern_is_recognised_on_either_side_and_through_a_subselect() {
        let f = functions();
        let shape = owner_shape(&eq(2972, &var(2), &call(16388)), &f).unwrap();
        assert_eq!((shape.attnum, shape.claims_on_right), (2, true));
        let shape = owner_shape(&eq(2972, &call(16388), &var(3)), &f).unwrap();
        assert_eq!((shape.attnum, shape.claims_on_right), (3, false));
        let subselect = format!(
            "{{SUBLINK :subLinkType 4 :testexpr <> :subselect {{QUERY :commandType 1 :rtable <> \
             :jointree {{FROMEXPR :fromlist <> :quals <>}} :targetList ({{TARGETENTRY :expr {} \
             :resjunk false}})}}}}",
            call(16388)
        );
        assert!(owner_shape(&eq(2972, &subselect, &var(2)), &f).is_some());
    }

    #[test]
    fn what_is_not_the_owner_pattern_falls_back() {
        let f = functions();
        // Not an equality whose truth is text equality (uuid < ...).
        assert!(owner_shape(&eq(2974, &var(2), &call(16388)), &f).is_none());
        // Two columns.
        assert!(owner_shape(&eq(2972, &var(2), &var(3)), &f).is_none());
        // Time-dependent, table-reading or unknown functions.
        assert!(owner_shape(&eq(2972, &var(2), &call(1299)), &f).is_none());
        assert!(owner_shape(&eq(2972, &var(2), &call(16400)), &f).is_none());
        assert!(owner_shape(&eq(2972, &var(2), &call(99999)), &f).is_none());
        // A subselect that reads a table.
        let reads = format!(
            "{{SUBLINK :subLinkType 4 :testexpr <> :subselect {{QUERY :commandType 1 :rtable \
             ({{RANGETBLENTRY :relid 5}}) :jointree {{FROMEXPR :fromlist ({{RANGETBLREF :rtindex \
             1}}) :quals <>}} :targetList ({{TARGETENTRY :expr {} :resjunk false}})}}}}",
            call(16388)
        );
        assert!(owner_shape(&eq(2972, &var(2), &reads), &f).is_none());
        // A nondeterministic collation.
        let tree = nodetree::parse(&format!(
            "{{OPEXPR :opno 98 :opfuncid 67 :inputcollid 12345 :args ({} {})}}",
            var(2),
            call(16388)
        ))
        .unwrap();
        assert!(owner_shape(&tree, &f).is_none());
    }

    #[test]
    fn claims_only_expressions() {
        let f = functions();
        assert!(claims_only(&nodetree::parse(&call(16388)).unwrap(), &f));
        assert!(!claims_only(&nodetree::parse(&var(1)).unwrap(), &f));
        let t = nodetree::parse("{CONST :consttype 16 :constvalue 1 [ 1 0 0 0 0 0 0 0 ]}").unwrap();
        assert!(claims_only(&t, &f));
        // A user function calling itself: bounded, not claims-only.
        let mut f2 = f.clone();
        let loop_body = format!(
            "{{QUERY :commandType 1 :rtable <> :jointree {{FROMEXPR :fromlist <> :quals <>}} \
             :targetList ({{TARGETENTRY :expr {} :resjunk false}})}}",
            call(20000)
        );
        f2.insert(20000, function("public", "me", 's', Some(&loop_body)));
        assert!(!claims_only(&nodetree::parse(&call(20000)).unwrap(), &f2));
    }

    #[test]
    fn the_claims_side_is_cut_from_the_printed_qual() {
        assert_eq!(
            cut_claims_side("(owner = auth.uid())", true).as_deref(),
            Some("auth.uid()")
        );
        assert_eq!(
            cut_claims_side("(( SELECT auth.uid() AS uid) = owner)", false).as_deref(),
            Some("( SELECT auth.uid() AS uid)")
        );
        assert_eq!(
            cut_claims_side("((owner)::text = (auth.jwt() ->> 'sub'::text))", true).as_deref(),
            Some("(auth.jwt() ->> 'sub'::text)")
        );
        assert_eq!(
            cut_claims_side("(\"a = b\" = 'x = y'::text)", true).as_deref(),
            Some("'x = y'::text")
        );
        assert_eq!(
            cut_claims_side("(owner OPERATOR(pg_catalog.=) auth.uid())", true).as_deref(),
            Some("auth.uid()")
        );
        // Two operators at the top level, unbalanced text, no parentheses.
        assert_eq!(cut_claims_side("(a = b = c)", true), None);
        assert_eq!(cut_claims_side("(a = (b)", true), None);
        assert_eq!(cut_claims_side("a = b", true), None);
        assert_eq!(cut_claims_side("(a <= b)", true), None);
    }
}

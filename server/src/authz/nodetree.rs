//! A reader for PostgreSQL's `pg_node_tree` text (what `pg_policy.polqual`
//! and `pg_proc.prosqlbody` hold, written by the server's `outfuncs.c`).
//!
//! Owns turning that text into a [`Tree`] of nodes with named fields, and
//! the few walks the policy analysis needs (which columns of the policy's
//! table an expression reads). It gives no meaning to node types: an
//! unknown node is kept as is, so a caller that does not recognise a node
//! must treat the expression as opaque.

use std::collections::BTreeSet;

/// One value in a node tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tree {
    /// `{TAG :field value ...}`
    Node(Node),
    /// `( ... )`: a list of nodes, or of numbers (`(i 1 2)`, `(o 1 2)`, `(b 1)`).
    List(Vec<Tree>),
    /// A scalar: a number, `true`/`false`, a name, a string.
    Atom(String),
    /// A `Const`'s datum bytes (`7 [ 28 0 0 0 115 117 98 ]`).
    Datum(Vec<u8>),
    /// `<>`: NULL or an empty list.
    Null,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub tag: String,
    pub fields: Vec<(String, Tree)>,
}

impl Node {
    pub fn get(&self, field: &str) -> Option<&Tree> {
        self.fields
            .iter()
            .find(|(name, _)| name == field)
            .map(|(_, v)| v)
    }

    /// A numeric field.
    pub fn int(&self, field: &str) -> Option<i64> {
        match self.get(field)? {
            Tree::Atom(a) => a.parse().ok(),
            _ => None,
        }
    }

    /// A boolean field (`true`/`false`).
    pub fn flag(&self, field: &str) -> Option<bool> {
        match self.get(field)? {
            Tree::Atom(a) if a == "true" => Some(true),
            Tree::Atom(a) if a == "false" => Some(false),
            _ => None,
        }
    }

    /// A field that holds a list of nodes (`<>` is the empty list).
    pub fn list(&self, field: &str) -> Option<&[Tree]> {
        match self.get(field)? {
            Tree::List(items) => Some(items),
            Tree::Null => Some(&[]),
            _ => None,
        }
    }

    /// A field that holds one node.
    pub fn node(&self, field: &str) -> Option<&Node> {
        match self.get(field)? {
            Tree::Node(n) => Some(n),
            _ => None,
        }
    }

    /// Whether the field is `<>` (or missing).
    pub fn is_null(&self, field: &str) -> bool {
        matches!(self.get(field), None | Some(Tree::Null))
    }
}

impl Tree {
    pub fn as_node(&self) -> Option<&Node> {
        match self {
            Tree::Node(n) => Some(n),
            _ => None,
        }
    }

    /// The tree without `:location` fields (source positions), so that two
    /// parses of the same expression from different texts compare equal.
    pub fn without_locations(&self) -> Tree {
        match self {
            Tree::Node(n) => Tree::Node(Node {
                tag: n.tag.clone(),
                fields: n
                    .fields
                    .iter()
                    .filter(|(name, _)| name != "location" && name != "stmt_location")
                    .map(|(name, v)| (name.clone(), v.without_locations()))
                    .collect(),
            }),
            Tree::List(items) => Tree::List(items.iter().map(Tree::without_locations).collect()),
            other => other.clone(),
        }
    }
}

/// Why a text is not a node tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a node tree: {0}")]
pub struct ParseError(String);

/// Reads a whole node tree.
pub fn parse(text: &str) -> Result<Tree, ParseError> {
    let mut tokens = Tokens::new(text);
    let tree = read_value(&mut tokens, 0)?;
    match tokens.next() {
        None => Ok(tree),
        Some(t) => Err(ParseError(format!("unexpected {t:?} after the tree"))),
    }
}

/// Nesting deeper than this is refused rather than risking the stack.
const MAX_DEPTH: usize = 512;

fn read_value(tokens: &mut Tokens, depth: usize) -> Result<Tree, ParseError> {
    if depth > MAX_DEPTH {
        return Err(ParseError("nested too deeply".into()));
    }
    let Some(token) = tokens.next() else {
        return Err(ParseError("the text ended early".into()));
    };
    match token.as_str() {
        "{" => read_node(tokens, depth),
        "(" => {
            let mut items = Vec::new();
            loop {
                match tokens.peek() {
                    None => return Err(ParseError("a list is not closed".into())),
                    Some(")") => {
                        tokens.next();
                        return Ok(Tree::List(items));
                    }
                    Some(_) => items.push(read_value(tokens, depth + 1)?),
                }
            }
        }
        "<>" => Ok(Tree::Null),
        "}" | ")" => Err(ParseError(format!("unexpected {token:?}"))),
        _ => {
            // A datum: its length, then its bytes in brackets.
            if tokens.peek() == Some("[") {
                tokens.next();
                let mut bytes = Vec::new();
                loop {
                    match tokens.next() {
                        None => return Err(ParseError("a datum is not closed".into())),
                        Some(t) if t == "]" => break,
                        Some(t) => bytes.push(
                            t.parse::<i16>()
                                .map_err(|_| ParseError(format!("datum byte {t:?}")))?
                                as u8,
                        ),
                    }
                }
                // By-value datums print the whole Datum word, so the
                // length is not the number of bytes: keep them all.
                token
                    .parse::<usize>()
                    .map_err(|_| ParseError(format!("datum length {token:?}")))?;
                return Ok(Tree::Datum(bytes));
            }
            Ok(Tree::Atom(token))
        }
    }
}

fn read_node(tokens: &mut Tokens, depth: usize) -> Result<Tree, ParseError> {
    let Some(tag) = tokens.next() else {
        return Err(ParseError("a node has no tag".into()));
    };
    let mut node = Node {
        tag,
        fields: Vec::new(),
    };
    loop {
        match tokens.next() {
            None => return Err(ParseError(format!("node {} is not closed", node.tag))),
            Some(t) if t == "}" => return Ok(Tree::Node(node)),
            Some(t) if t.starts_with(':') => {
                let name = t[1..].to_string();
                // A field with no value before the next field or the end
                // (outfuncs writes none for some empty strings).
                let value = match tokens.peek() {
                    Some(next) if next.starts_with(':') || next == "}" => Tree::Null,
                    _ => read_value(tokens, depth + 1)?,
                };
                node.fields.push((name, value));
            }
            // Some node types write bare values (e.g. a list of them).
            Some(t) => {
                return Err(ParseError(format!(
                    "node {} has {t:?} where a field was expected",
                    node.tag
                )))
            }
        }
    }
}

/// `pg_strtok`'s tokens: `(`, `)`, `{`, `}` alone; anything else up to
/// whitespace or one of those, with `\` escaping the next character.
struct Tokens<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    peeked: Option<Option<String>>,
}

impl<'a> Tokens<'a> {
    fn new(text: &'a str) -> Self {
        Tokens {
            chars: text.chars().peekable(),
            peeked: None,
        }
    }

    fn peek(&mut self) -> Option<&str> {
        if self.peeked.is_none() {
            let t = self.read();
            self.peeked = Some(t);
        }
        self.peeked.as_ref().and_then(|t| t.as_deref())
    }

    fn next(&mut self) -> Option<String> {
        match self.peeked.take() {
            Some(t) => t,
            None => self.read(),
        }
    }

    fn read(&mut self) -> Option<String> {
        while self.chars.peek().is_some_and(|c| c.is_whitespace()) {
            self.chars.next();
        }
        let first = self.chars.next()?;
        if matches!(first, '(' | ')' | '{' | '}') {
            return Some(first.to_string());
        }
        let mut token = String::new();
        let mut c = first;
        loop {
            if c == '\\' {
                if let Some(escaped) = self.chars.next() {
                    token.push(escaped);
                }
            } else {
                token.push(c);
            }
            match self.chars.peek() {
                Some(&n) if !n.is_whitespace() && !matches!(n, '(' | ')' | '{' | '}') => {
                    c = n;
                    self.chars.next();
                }
                _ => break,
            }
        }
        Some(token)
    }
}

/// Which columns of the policy's table (range table entry 1 of the
/// expression) an expression reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ColumnRefs {
    /// Column numbers (`attnum`) read by name.
    pub columns: BTreeSet<i16>,
    /// The whole row is read (`t.*`, or the row as a value).
    pub whole_row: bool,
    /// A system column (`ctid`, `xmin`, ...) is read: no row image has it.
    pub system: bool,
}

impl ColumnRefs {
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty() && !self.whole_row && !self.system
    }
}

/// The columns of the policy's table that `tree` reads, at any depth: a
/// `Var` refers to the table when its `varlevelsup` equals the number of
/// queries (sublinks, subqueries, CTEs) it sits inside.
pub fn column_refs(tree: &Tree) -> ColumnRefs {
    let mut refs = ColumnRefs::default();
    walk_vars(tree, 0, &mut refs);
    refs
}

fn walk_vars(tree: &Tree, depth: i64, refs: &mut ColumnRefs) {
    match tree {
        Tree::Node(n) => {
            if n.tag == "VAR" {
                if n.int("varlevelsup") == Some(depth) && n.int("varno") == Some(1) {
                    match n.int("varattno") {
                        Some(0) => refs.whole_row = true,
                        Some(a) if a > 0 => {
                            refs.columns.insert(a as i16);
                        }
                        _ => refs.system = true,
                    }
                }
                return;
            }
            let inner = if n.tag == "QUERY" { depth + 1 } else { depth };
            for (_, v) in &n.fields {
                walk_vars(v, inner, refs);
            }
        }
        Tree::List(items) => items.iter().for_each(|t| walk_vars(t, depth, refs)),
        _ => {}
    }
}

/// Every value of `field` on nodes tagged `tag`, anywhere in the tree.
pub fn collect_ints(tree: &Tree, tags: &[&str], field: &str, out: &mut BTreeSet<i64>) {
    match tree {
        Tree::Node(n) => {
            if tags.contains(&n.tag.as_str()) {
                if let Some(v) = n.int(field) {
                    out.insert(v);
                }
            }
            for (_, v) in &n.fields {
                collect_ints(v, tags, field, out);
            }
        }
        Tree::List(items) => items.iter().for_each(|t| collect_ints(t, tags, field, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `owner = auth.uid()`, as PostgreSQL 15 stores it.
    const OWNER: &str = "{OPEXPR :opno 2972 :opfuncid 2956 :opresulttype 16 :opretset false \
        :opcollid 0 :inputcollid 0 :args ({VAR :varno 1 :varattno 2 :vartype 2950 :vartypmod -1 \
        :varcollid 0 :varlevelsup 0 :varnosyn 1 :varattnosyn 2 :location 62} {FUNCEXPR :funcid \
        16388 :funcresulttype 2950 :funcretset false :funcvariadic false :funcformat 0 \
        :funccollid 0 :inputcollid 0 :args <> :location 70}) :location 68}";

    #[test]
    fn reads_an_operator_over_a_column_and_a_function() {
        let tree = parse(OWNER).unwrap();
        let op = tree.as_node().unwrap();
        assert_eq!(op.tag, "OPEXPR");
        assert_eq!(op.int("opno"), Some(2972));
        assert_eq!(op.flag("opretset"), Some(false));
        let args = op.list("args").unwrap();
        assert_eq!(args.len(), 2);
        let var = args[0].as_node().unwrap();
        assert_eq!((var.tag.as_str(), var.int("varattno")), ("VAR", Some(2)));
        let func = args[1].as_node().unwrap();
        assert_eq!(func.int("funcid"), Some(16388));
        assert_eq!(func.list("args"), Some(&[][..]));
        let refs = column_refs(&tree);
        assert_eq!(refs.columns.iter().copied().collect::<Vec<_>>(), vec![2]);
        assert!(!refs.whole_row && !refs.system);
    }

    #[test]
    fn reads_constants_strings_with_escapes_and_number_lists() {
        let text = "{CONST :consttype 25 :consttypmod -1 :constcollid 100 :constlen -1 \
            :constbyval false :constisnull false :location 73 :constvalue 7 [ 28 0 0 0 115 117 98 ]}";
        let c = parse(text).unwrap();
        assert_eq!(
            c.as_node().unwrap().get("constvalue"),
            Some(&Tree::Datum(vec![28, 0, 0, 0, 115, 117, 98]))
        );
        let null = parse("{CONST :consttype 25 :constisnull true :constvalue <>}").unwrap();
        assert!(null.as_node().unwrap().is_null("constvalue"));
        let named = parse(r"{TARGETENTRY :resname my\ col\{x\} :resno 1}").unwrap();
        assert_eq!(
            named.as_node().unwrap().get("resname"),
            Some(&Tree::Atom("my col{x}".into()))
        );
        let ints = parse("{X :ids (i 1 2 3) :none <>}").unwrap();
        assert_eq!(
            ints.as_node().unwrap().get("ids"),
            Some(&Tree::List(vec![
                Tree::Atom("i".into()),
                Tree::Atom("1".into()),
                Tree::Atom("2".into()),
                Tree::Atom("3".into())
            ]))
        );
    }

    #[test]
    fn columns_read_inside_sublinks_count_and_other_tables_do_not() {
        // EXISTS (SELECT 1 FROM members m WHERE m.team = team): the inner
        // Var of `members` (varlevelsup 0 inside the query) is not ours; the
        // outer reference (varlevelsup 1) is column 4 of the policy's table.
        let text = "{SUBLINK :subLinkType 0 :subselect {QUERY :rtable ({RANGETBLENTRY :relid 99}) \
            :jointree {FROMEXPR :fromlist <> :quals {OPEXPR :opno 96 :args ({VAR :varno 1 \
            :varattno 1 :varlevelsup 0} {VAR :varno 1 :varattno 4 :varlevelsup 1})}}}}";
        let refs = column_refs(&parse(text).unwrap());
        assert_eq!(refs.columns.iter().copied().collect::<Vec<_>>(), vec![4]);
        let whole = parse("{NULLTEST :arg {VAR :varno 1 :varattno 0 :varlevelsup 0}}").unwrap();
        assert!(column_refs(&whole).whole_row);
        let system = parse("{VAR :varno 1 :varattno -1 :varlevelsup 0}").unwrap();
        assert!(column_refs(&system).system);
    }

    #[test]
    fn locations_do_not_matter_for_equality() {
        let a = parse(OWNER).unwrap();
        let b = parse(&OWNER.replace(":location 70", ":location 3")).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.without_locations(), b.without_locations());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for text in [
            "",
            "{",
            "{X :a (",
            "{X :a 3 [ 1 2",
            ")",
            "{X :a 1} extra",
            "{X 1}",
        ] {
            assert!(parse(text).is_err(), "{text:?}");
        }
        let deep = "(".repeat(10_000);
        assert!(parse(&deep).is_err());
    }
}

//! What a role may see of a table (or write to it), read from the catalog
//! and reduced as far as PostgreSQL's own rules allow.
//!
//! Owns the plan of one (table, role, command): whether the role has the
//! privilege, whether row level security applies to it (enabled, not the
//! owner unless forced, no `BYPASSRLS`, not a superuser), and if so which
//! policies apply (those for the command or `ALL`, for `PUBLIC` or a role
//! the role has the privileges of), combined as PostgreSQL combines them:
//! permissive ones with OR, restrictive ones with AND, and nothing visible
//! without a permissive one. Each policy is classified: its expression
//! depends on the claims only, or has the owner shape, or depends on the
//! row. Also the SQL that checks row images against the combined policies,
//! and the SQL that computes the claims-only parts for one group.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::analysis::{self, Function, Functions};
use super::db::{Conn, Db, DbError, Principal};
use super::nodetree::{self, Tree};

/// What is being authorized: reading rows (`SELECT` policies, `USING`) or
/// adding one (`INSERT` policies, `WITH CHECK`, else `USING`), as private
/// channels' writes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Select,
    Insert,
}

impl Command {
    pub fn privilege(self) -> &'static str {
        match self {
            Command::Select => "SELECT",
            Command::Insert => "INSERT",
        }
    }

    /// `pg_policy.polcmd` of policies for this command (besides `*`, ALL).
    fn polcmd(self) -> &'static str {
        match self {
            Command::Select => "r",
            Command::Insert => "a",
        }
    }
}

/// A table, named for logs and errors.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    pub oid: u32,
    pub schema: String,
    pub name: String,
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{}",
            quote_ident(&self.schema),
            quote_ident(&self.name)
        )
    }
}

/// The plan of a (table, role, command).
#[derive(Debug, Clone)]
pub enum RolePlan {
    /// The role may not: no privilege on the table, or no `USAGE` on its
    /// schema. The text says which, for the client.
    Denied(String),
    /// Every row: no row level security for this role.
    All,
    /// Row level security applies.
    Policies(Arc<PolicyPlan>),
}

/// The policies that apply to one role, reduced.
#[derive(Debug)]
pub struct PolicyPlan {
    pub table: TableName,
    pub command: Command,
    /// The applicable policies' names, for logs.
    pub names: Vec<String>,
    pub permissive: Vec<Part>,
    pub restrictive: Vec<Part>,
    /// The columns (by name) the combined policies read (every column for a
    /// whole-row reference); `None`: a system column, which no row image has.
    pub reads: Option<BTreeSet<String>>,
    /// Checks row images (`$1`: `text[]` of JSON objects) and returns the
    /// 1-based positions of those the policies let through. `None` when no
    /// permissive policy has an expression: nothing is visible.
    pub check_sql: Option<String>,
    /// Computes the claims-only parts for one group: `text[]`, one per
    /// [`Part`] slot. `None` when there are none.
    pub group_sql: Option<String>,
}

/// One applicable policy.
#[derive(Debug, Clone)]
pub struct Part {
    pub policy: String,
    pub shape: Shape,
}

#[derive(Debug, Clone)]
pub enum Shape {
    /// Depends on the claims only: one boolean per group, at `slot`.
    Claims { slot: usize },
    /// `column = <claims-only>`: one value per group, at `slot`.
    Owner { column: String, slot: usize },
    /// Depends on the row: checked inside PostgreSQL.
    Row,
}

/// What one group (role and claims) may see of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Nothing: no privilege.
    Denied(String),
    /// No row (no permissive policy passes, a restrictive one fails).
    Nothing,
    /// Rows whose columns have these text values (all of them; none: every
    /// row).
    Match(Vec<(String, String)>),
    /// Each row is checked inside PostgreSQL.
    Check,
}

/// Reads the plan of `table` for `role`. Errors are the database's (a role
/// or table that does not exist is an error).
pub async fn load(
    db: &Db,
    table: u32,
    role: &str,
    command: Command,
) -> Result<RolePlan, PlanError> {
    let mut conn = db.lease().await?;
    load_on(&mut conn, table, role, command).await
}

/// Why a plan could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("role {0:?} does not exist")]
    NoRole(String),
    #[error("table with OID {0} does not exist")]
    NoTable(u32),
    #[error(transparent)]
    Db(#[from] DbError),
}

const ROLE_SQL: &str = "SELECT r.rolsuper OR r.rolbypassrls FROM pg_catalog.pg_roles r \
    WHERE r.rolname = $1";

const FACTS_SQL: &str = "SELECT n.nspname::text, c.relname::text, c.relrowsecurity, \
    c.relforcerowsecurity, \
    pg_catalog.has_schema_privilege(r.oid, n.oid, 'USAGE'), \
    pg_catalog.has_table_privilege(r.oid, c.oid, $3), \
    pg_catalog.pg_has_role(r.oid, c.relowner, 'USAGE') \
    FROM pg_catalog.pg_class c \
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
    JOIN pg_catalog.pg_roles r ON r.rolname = $2 \
    WHERE c.oid = $1";

const COLUMNS_SQL: &str = "SELECT a.attnum::int2, a.attname::text FROM pg_catalog.pg_attribute a \
    WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped";

/// The policies that apply to a role for a command: for the command or
/// ALL, for PUBLIC or a role whose privileges the role has.
const POLICIES_SQL: &str = "SELECT p.polname::text, p.polpermissive, \
    p.polqual::text, pg_catalog.pg_get_expr(p.polqual, p.polrelid), \
    p.polwithcheck::text, pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) \
    FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_roles r ON r.rolname = $2 \
    WHERE p.polrelid = $1 AND p.polcmd::text IN ('*', $3) \
    AND (0::oid = ANY (p.polroles) OR EXISTS (SELECT FROM pg_catalog.unnest(p.polroles) AS pr(oid) \
         WHERE pg_catalog.pg_has_role(r.oid, pr.oid, 'USAGE'))) \
    ORDER BY p.polname";

const FUNCTIONS_SQL: &str = "SELECT p.oid::int8, n.nspname::text, p.proname::text, \
    p.provolatile::text, l.lanname::text, p.pronargs::int8, p.proretset, \
    p.proconfig IS NOT NULL, p.prosrc, pg_catalog.format_type(p.prorettype, NULL), \
    pg_catalog.to_jsonb(p)->>'prosqlbody' \
    FROM pg_catalog.pg_proc p \
    JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
    JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
    WHERE p.oid = ANY ($1::oid[])";

/// [`load`] on a connection the caller holds.
pub async fn load_on(
    conn: &mut Conn,
    table: u32,
    role: &str,
    command: Command,
) -> Result<RolePlan, PlanError> {
    let role_sql = conn.statement(ROLE_SQL).await?;
    let Some(role_row) = conn
        .client()
        .query_opt(&role_sql, &[&role])
        .await
        .map_err(db_error)?
    else {
        return Err(PlanError::NoRole(role.to_string()));
    };
    let bypass: bool = role_row.get(0);
    let facts_sql = conn.statement(FACTS_SQL).await?;
    let Some(facts) = conn
        .client()
        .query_opt(&facts_sql, &[&table, &role, &command.privilege()])
        .await
        .map_err(db_error)?
    else {
        return Err(PlanError::NoTable(table));
    };
    let name = TableName {
        oid: table,
        schema: facts.get(0),
        name: facts.get(1),
    };
    let (rls, force, usage, privilege, owner): (bool, bool, bool, bool, bool) = (
        facts.get(2),
        facts.get(3),
        facts.get(4),
        facts.get(5),
        facts.get(6),
    );
    if !usage {
        return Ok(RolePlan::Denied(format!(
            "role {role:?} has no USAGE on schema {}",
            quote_ident(&name.schema)
        )));
    }
    if !privilege {
        return Ok(RolePlan::Denied(format!(
            "role {role:?} may not {} {name}",
            command.privilege()
        )));
    }
    // PostgreSQL's check_enable_rls: superusers and BYPASSRLS roles, and
    // the owner unless FORCE ROW LEVEL SECURITY, are not subject to it.
    if !rls || bypass || (owner && !force) {
        return Ok(RolePlan::All);
    }

    let columns_sql = conn.statement(COLUMNS_SQL).await?;
    let columns: HashMap<i16, String> = conn
        .client()
        .query(&columns_sql, &[&table])
        .await
        .map_err(db_error)?
        .iter()
        .map(|r| (r.get::<_, i16>(0), r.get::<_, String>(1)))
        .collect();

    let policies_sql = conn.statement(POLICIES_SQL).await?;
    let rows = conn
        .client()
        .query(&policies_sql, &[&table, &role, &command.polcmd()])
        .await
        .map_err(db_error)?;
    // (name, permissive, tree, sql) of policies that have an expression for
    // the command: PostgreSQL skips the others.
    let mut policies: Vec<(String, bool, Tree, String)> = Vec::new();
    let mut names = Vec::new();
    for r in &rows {
        let policy: String = r.get(0);
        names.push(policy.clone());
        let permissive: bool = r.get(1);
        let (tree, sql): (Option<String>, Option<String>) = match command {
            Command::Select => (r.get(2), r.get(3)),
            // QUAL_FOR_WCO: the WITH CHECK expression, else USING.
            Command::Insert => match r.get::<_, Option<String>>(4) {
                Some(check) => (Some(check), r.get(5)),
                None => (r.get(2), r.get(3)),
            },
        };
        let (Some(tree), Some(sql)) = (tree, sql) else {
            continue;
        };
        let tree = nodetree::parse(&tree).map_err(|e| {
            DbError::Connection(format!("reading policy {policy:?} of {name}: {e}"))
        })?;
        policies.push((policy, permissive, tree, sql));
    }

    let mut wanted = BTreeSet::new();
    for (_, _, tree, _) in &policies {
        wanted.extend(analysis::called_functions(tree));
    }
    let functions = load_functions(conn, wanted).await?;

    // Columns read, by the policies that take part.
    let mut refs = nodetree::ColumnRefs::default();
    for (_, _, tree, _) in &policies {
        let r = nodetree::column_refs(tree);
        refs.columns.extend(r.columns);
        refs.whole_row |= r.whole_row;
        refs.system |= r.system;
    }
    // The whole row: every column, generated ones included (a row image
    // from the stream has none, so such a row is never decided on a
    // partial image). A system column: never decidable.
    let reads = if refs.system {
        None
    } else if refs.whole_row {
        Some(columns.values().cloned().collect())
    } else {
        refs.columns
            .iter()
            .map(|a| columns.get(a).cloned())
            .collect::<Option<BTreeSet<String>>>()
    };

    let mut group_exprs: Vec<String> = Vec::new();
    let mut permissive = Vec::new();
    let mut restrictive = Vec::new();
    for (policy, is_permissive, tree, sql) in &policies {
        let shape = if analysis::claims_only(tree, &functions) {
            group_exprs.push(format!("(({sql}))::text"));
            Shape::Claims {
                slot: group_exprs.len() - 1,
            }
        } else if let Some(owner) = analysis::owner_shape(tree, &functions) {
            match verified_claims_side(conn, sql, &owner).await {
                Some(side) => {
                    group_exprs.push(format!("(({side}))::text"));
                    match columns.get(&owner.attnum) {
                        Some(column) => Shape::Owner {
                            column: column.clone(),
                            slot: group_exprs.len() - 1,
                        },
                        None => Shape::Row,
                    }
                }
                None => Shape::Row,
            }
        } else {
            Shape::Row
        };
        let part = Part {
            policy: policy.clone(),
            shape,
        };
        if *is_permissive {
            permissive.push(part);
        } else {
            restrictive.push(part);
        }
    }

    let permissive_sql: Vec<&str> = policies
        .iter()
        .filter(|p| p.1)
        .map(|p| p.3.as_str())
        .collect();
    let restrictive_sql: Vec<&str> = policies
        .iter()
        .filter(|p| !p.1)
        .map(|p| p.3.as_str())
        .collect();
    let check_sql =
        (!permissive_sql.is_empty()).then(|| check_sql(&name, &permissive_sql, &restrictive_sql));
    let group_sql = (!group_exprs.is_empty())
        .then(|| format!("SELECT ARRAY[{}]::text[]", group_exprs.join(", ")));
    Ok(RolePlan::Policies(Arc::new(PolicyPlan {
        table: name,
        command,
        names,
        permissive,
        restrictive,
        reads,
        check_sql,
        group_sql,
    })))
}

/// The statement that checks row images against the combined policies: each
/// image becomes a row of the table's type (`json_populate_record`), named
/// as the table so the policies' expressions read it as they read the
/// table, and passes when the combined expression is true.
fn check_sql(table: &TableName, permissive: &[&str], restrictive: &[&str]) -> String {
    let mut combined = format!(
        "({})",
        permissive
            .iter()
            .map(|q| format!("({q})"))
            .collect::<Vec<_>>()
            .join(" OR ")
    );
    for q in restrictive {
        combined.push_str(&format!(" AND ({q})"));
    }
    // Inside EXISTS the table's alias hides the images' (even when the names
    // are equal); the images are named in the function's argument only,
    // which sees the outer query.
    format!(
        "SELECT \"realtime images\".i::int4 \
         FROM pg_catalog.unnest($1::text[]) WITH ORDINALITY AS \"realtime images\"(j, i) \
         WHERE EXISTS (SELECT FROM pg_catalog.json_populate_record(NULL::{table}, \
         \"realtime images\".j::json) AS {alias} WHERE {combined})",
        alias = quote_ident(&table.name),
    )
}

/// The claims side of an owner policy as SQL, cut from the policy's printed
/// expression and verified: PostgreSQL parses the cut text into the very
/// same expression tree. `None` when it does not.
async fn verified_claims_side(
    conn: &mut Conn,
    qual_sql: &str,
    owner: &analysis::OwnerShape,
) -> Option<String> {
    let side = analysis::cut_claims_side(qual_sql, owner.claims_on_right)?;
    let create = format!("CREATE TEMP VIEW realtime_probe AS SELECT ({side}\n) AS v");
    let tree = probe(
        conn,
        &create,
        "SELECT r.ev_action::text FROM pg_catalog.pg_rewrite r \
         WHERE r.ev_class = 'pg_temp.realtime_probe'::regclass",
    )
    .await?;
    // ({QUERY ... :targetList ({TARGETENTRY :expr E ...})})
    let query = match &tree {
        Tree::List(items) => items.first()?.as_node()?.clone(),
        Tree::Node(n) => n.clone(),
        _ => return None,
    };
    let expr = query
        .list("targetList")?
        .first()?
        .as_node()?
        .get("expr")?
        .clone();
    (strip(&expr) == strip(&owner.claims)).then_some(side)
}

/// A tree without positions and statement offsets, to compare parses.
fn strip(tree: &Tree) -> Tree {
    fn go(t: &Tree) -> Tree {
        match t {
            Tree::Node(n) => Tree::Node(nodetree::Node {
                tag: n.tag.clone(),
                fields: n
                    .fields
                    .iter()
                    .filter(|(k, _)| {
                        !matches!(k.as_str(), "location" | "stmt_location" | "stmt_len")
                    })
                    .map(|(k, v)| (k.clone(), go(v)))
                    .collect(),
            }),
            Tree::List(items) => Tree::List(items.iter().map(go).collect()),
            other => other.clone(),
        }
    }
    go(tree)
}

/// Runs `create` (a temporary object) and `read` (one text column, a node
/// tree) in a transaction that is rolled back: nothing stays.
async fn probe(conn: &mut Conn, create: &str, read: &str) -> Option<Tree> {
    let client = conn.client();
    client.batch_execute("BEGIN").await.ok()?;
    let result = async {
        client.execute(create, &[]).await.ok()?;
        let row = client.query_one(read, &[]).await.ok()?;
        let text: Option<String> = row.get(0);
        nodetree::parse(&text?).ok()
    }
    .await;
    let _ = client.batch_execute("ROLLBACK").await;
    result
}

/// How many rounds of "a body calls functions not yet read" are followed.
const FUNCTION_ROUNDS: usize = 4;

/// The functions `wanted` names, and those their SQL bodies call, with the
/// bodies as node trees. A SQL function with a text body is given one by
/// PostgreSQL itself: the body is parsed as a `RETURN (...)` body of a
/// temporary function (PostgreSQL 14+); when that fails the function has no
/// body here, and counts as depending on the row.
async fn load_functions(conn: &mut Conn, mut wanted: BTreeSet<i64>) -> Result<Functions, DbError> {
    let mut functions = Functions::new();
    for _ in 0..FUNCTION_ROUNDS {
        wanted.retain(|f| !functions.contains_key(f));
        if wanted.is_empty() {
            break;
        }
        let oids: Vec<u32> = wanted.iter().map(|o| *o as u32).collect();
        let sql = conn.statement(FUNCTIONS_SQL).await?;
        let rows = conn
            .client()
            .query(&sql, &[&oids])
            .await
            .map_err(db_error)?;
        let mut next = BTreeSet::new();
        for r in rows {
            let oid: i64 = r.get(0);
            let language: String = r.get(4);
            let nargs: i64 = r.get(5);
            let has_config: bool = r.get(7);
            let src: Option<String> = r.get(8);
            let returns: String = r.get(9);
            let sqlbody: Option<String> = r.get(10);
            let body = if language != "sql" || nargs != 0 || has_config {
                None
            } else if let Some(b) = sqlbody {
                nodetree::parse(&b).ok()
            } else {
                match src {
                    Some(src) => probe_body(conn, &src, &returns).await,
                    None => None,
                }
            };
            if let Some(b) = &body {
                next.extend(analysis::called_functions(b));
            }
            let volatile: String = r.get(3);
            functions.insert(
                oid,
                Function {
                    schema: r.get(1),
                    name: r.get(2),
                    volatile: volatile.chars().next().unwrap_or('v'),
                    language,
                    nargs,
                    returns_set: r.get(6),
                    has_config,
                    body,
                },
            );
        }
        wanted = next;
    }
    Ok(functions)
}

/// A SQL function's text body, as the node tree PostgreSQL makes of it when
/// it is the `RETURN` expression of a temporary function.
async fn probe_body(conn: &mut Conn, src: &str, returns: &str) -> Option<Tree> {
    let body = src.trim().trim_end_matches(';').trim();
    if body.is_empty() {
        return None;
    }
    let create = format!(
        "CREATE FUNCTION pg_temp.realtime_probe() RETURNS {returns} LANGUAGE sql STABLE \
         RETURN ({body}\n)"
    );
    probe(
        conn,
        &create,
        "SELECT pg_catalog.to_jsonb(p)->>'prosqlbody' FROM pg_catalog.pg_proc p \
         WHERE p.oid = 'pg_temp.realtime_probe()'::regprocedure",
    )
    .await
}

impl PolicyPlan {
    /// What a group may see, from the values of the claims-only parts
    /// ([`PolicyPlan::group_sql`]) computed for it.
    pub fn access(&self, slots: &[Option<String>]) -> Access {
        if self.check_sql.is_none() {
            return Access::Nothing;
        }
        let truth = |slot: &usize| {
            matches!(
                slots.get(*slot).and_then(|v| v.as_deref()),
                Some("true" | "t")
            )
        };
        let value = |slot: &usize| slots.get(*slot).cloned().flatten();
        let mut constraints = Vec::new();
        let mut row_dependent = false;
        for part in &self.restrictive {
            match &part.shape {
                Shape::Claims { slot } if !truth(slot) => return Access::Nothing,
                Shape::Claims { .. } => {}
                Shape::Owner { column, slot } => match value(slot) {
                    None => return Access::Nothing,
                    Some(v) => constraints.push((column.clone(), v)),
                },
                Shape::Row => row_dependent = true,
            }
        }
        let mut any_true = false;
        let mut remaining = Vec::new();
        for part in &self.permissive {
            match &part.shape {
                Shape::Claims { slot } => any_true |= truth(slot),
                Shape::Owner { column, slot } => {
                    if let Some(v) = value(slot) {
                        remaining.push(Some((column.clone(), v)));
                    }
                }
                Shape::Row => remaining.push(None),
            }
        }
        if row_dependent {
            return Access::Check;
        }
        if any_true {
            return Access::Match(constraints);
        }
        match remaining.as_slice() {
            [] => Access::Nothing,
            [Some(owner)] => {
                constraints.insert(0, owner.clone());
                Access::Match(constraints)
            }
            _ => Access::Check,
        }
    }

    /// Computes what `who` may see: one statement when some part depends
    /// on the claims only, none otherwise.
    pub async fn access_for(
        &self,
        db: &Db,
        who: &Principal,
        timeout: Duration,
    ) -> Result<Access, DbError> {
        let slots = match &self.group_sql {
            None => Vec::new(),
            Some(sql) => {
                let rows = db.as_group(who, sql, &[], timeout).await?;
                rows.first()
                    .map(|r| r.get::<_, Vec<Option<String>>>(0))
                    .unwrap_or_default()
            }
        };
        Ok(self.access(&slots))
    }
}

fn db_error(e: tokio_postgres::Error) -> DbError {
    match e.as_db_error() {
        Some(db) => DbError::Sql {
            code: db.code().code().to_string(),
            message: db.message().to_string(),
        },
        None => DbError::Connection(e.to_string()),
    }
}

pub use realtime_contract::sql::quote_ident;

//! The `postgres_changes` bindings of a 2.x join.
//!
//! Owns turning each requested binding into a hub [`Binding`]: its event,
//! the published table(s) it names (looked up in the catalog: the one step
//! of handling a message that waits), its filter and its `select` column
//! list checked against the table's columns. Also the join reply's echo of
//! the bindings with their
//! ids, and the `system` push that says whether they all stand; one refused
//! binding means none is subscribed. Must not answer the join or keep the
//! channel (`join`), nor match changes (the hub does).

use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::Value;

use crate::auth::Claims;
use crate::authz::authorizer::Group;
use crate::authz::plan::Access;
use crate::change::ChangeKind;
use crate::config::var;
use crate::filter::{self, Filter};
use crate::hub::{Binding, Subscriber};
use crate::metrics::METRICS;
use crate::phoenix::payloads::BindingRequest;
use crate::phoenix::session::Session;
use crate::published::PublishedTable;
use crate::select::Selection;

/// A binding's table, filter and `select` list, checked.
type Shaped = (Arc<PublishedTable>, Option<Filter>, Option<Arc<Selection>>);

/// Why a binding does not fit its table; `limit` names a limit it is over
/// (no fresher catalog changes that).
struct Refusal {
    message: String,
    limit: Option<&'static str>,
}

/// A join's bindings after the catalog was asked about each.
#[derive(Debug, Default)]
pub(super) struct Resolved {
    /// Each request as sent, with its id: the join reply's
    /// `postgres_changes`.
    echo: Vec<Value>,
    bindings: Vec<Binding>,
    /// Why the first refused binding was refused.
    error: Option<String>,
}

impl Resolved {
    /// The join reply's response: `{"postgres_changes": [...]}`.
    pub(super) fn reply(&self) -> String {
        serde_json::json!({ "postgres_changes": self.echo }).to_string()
    }

    /// The bindings to subscribe, and why the first refused one was refused
    /// (then none may be).
    pub(super) fn into_parts(self) -> (Vec<Binding>, Option<String>) {
        (self.bindings, self.error)
    }
}

impl Session {
    /// Resolves every requested binding before the join is answered; ids
    /// count from 1 in the order requested.
    pub(super) async fn resolve_bindings(
        &self,
        requests: &[BindingRequest],
        topic: &Arc<str>,
        claims: Option<&Arc<Claims>>,
    ) -> Resolved {
        let mut out = Resolved::default();
        // Channels secured: every binding acts as the token's group.
        let group = match (&self.authz, claims) {
            (Some(authz), Some(c)) => Some(authz.group(&c.raw, None)),
            _ => None,
        };
        for (i, req) in requests.iter().enumerate() {
            let id = i as u32 + 1;
            let mut echo = req.echo.clone();
            echo.insert("id".into(), Value::from(id));
            out.echo.push(Value::Object(echo));
            match self.binding(req, id, topic, group.as_ref()).await {
                Ok(b) => out.bindings.push(b),
                Err(reason) => {
                    out.error.get_or_insert(reason);
                }
            }
        }
        out
    }

    /// The `system` push after the join reply: "Subscribed to PostgreSQL",
    /// or the reason a binding was refused.
    pub(super) fn push_bindings_status(
        &self,
        join_ref: Option<&RawValue>,
        topic: &str,
        error: Option<String>,
    ) {
        let channel = topic.strip_prefix("realtime:").unwrap_or(topic);
        let system = match &error {
            None => serde_json::json!({"extension": "postgres_changes", "status": "ok",
                "message": "Subscribed to PostgreSQL", "channel": channel}),
            Some(reason) => {
                tracing::info!(socket = self.id, %topic, %reason, "refused postgres_changes bindings");
                serde_json::json!({"extension": "postgres_changes", "status": "error",
                    "message": reason, "channel": channel})
            }
        };
        self.push(join_ref, topic, "system", &system.to_string());
    }

    /// One binding, checked against the published tables.
    async fn binding(
        &self,
        req: &BindingRequest,
        id: u32,
        topic: &Arc<str>,
        group: Option<&Group>,
    ) -> Result<Binding, String> {
        let event = match req.event.as_deref().map(str::to_ascii_uppercase).as_deref() {
            Some("*") => None,
            Some("INSERT") => Some(ChangeKind::Insert),
            Some("UPDATE") => Some(ChangeKind::Update),
            Some("DELETE") => Some(ChangeKind::Delete),
            other => {
                return Err(format!(
                    "invalid event {:?}: use INSERT, UPDATE, DELETE or *",
                    other.unwrap_or("")
                ))
            }
        };
        let schema = req.schema.clone().unwrap_or_else(|| "public".to_string());
        let table = req.table.clone().filter(|t| !t.is_empty() && t != "*");
        // `select` arrives in the entry as sent (realtime-js 2.1xx: a list
        // of column names); a whole schema may not select, and that needs
        // no lookup to say.
        let select = req.echo.get("select");
        if table.is_none() {
            Selection::parse(select, false, |_| true, &[])?;
        }
        // From the snapshot of the published tables; what it would refuse
        // is checked against the catalog itself once (it may be stale: a
        // table published a moment ago), within the socket's lookup rate.
        let tables = self.published.lookup(&schema, table.as_deref()).await?;
        let (tables, (first, filter, select)) =
            match self.shape(req, &schema, table.as_deref(), select, &tables) {
                Ok(shaped) => (tables, shaped),
                Err(Refusal {
                    limit: Some(_),
                    message,
                }) => return Err(message),
                Err(Refusal { limit: None, .. }) => {
                    if !self.catalog_lookups.take() {
                        METRICS.limit_reached(var::MAX_CATALOG_LOOKUPS_PER_SECOND);
                        return Err(super::rate::CATALOG.to_string());
                    }
                    let live = self
                        .published
                        .lookup_live(&schema, table.as_deref())
                        .await?;
                    let shaped = self
                        .shape(req, &schema, table.as_deref(), select, &live)
                        .map_err(|r| r.message)?;
                    (live, shaped)
                }
            };
        let subscriber = match (group, &self.authz) {
            (Some(group), Some(authz)) => Some(match &table {
                // One table: refused unless the role may read it; what the
                // group may see of it is computed now and indexed.
                Some(name) => {
                    let access = authz
                        .access(first.oid, group)
                        .await
                        .map_err(|e| format!("checking access to {schema}.{name} failed: {e}"))?;
                    if let Access::Denied(reason) = &access.access {
                        return Err(format!("{schema}.{name}: {reason}"));
                    }
                    Subscriber {
                        group: group.clone(),
                        table: Some(first.oid),
                        access: Some(access),
                    }
                }
                // Every table of the schema: looked up per change's table;
                // computed now so that their first changes are not
                // withheld (a table the role may not read delivers nothing).
                None => {
                    for t in &tables {
                        let _ = authz.access(t.oid, group).await;
                    }
                    Subscriber {
                        group: group.clone(),
                        table: None,
                        access: None,
                    }
                }
            }),
            _ => None,
        };
        Ok(Binding {
            socket: self.id,
            topic: topic.clone(),
            vsn: self.vsn,
            id,
            schema,
            table,
            event,
            filter,
            select,
            subscriber,
        })
    }

    /// The binding's table among `tables` (the published tables of
    /// `schema`, only `table` when named), its filter and its `select`
    /// list checked against the table's columns.
    fn shape(
        &self,
        req: &BindingRequest,
        schema: &str,
        table: Option<&str>,
        select: Option<&Value>,
        tables: &[Arc<PublishedTable>],
    ) -> Result<Shaped, Refusal> {
        let refused = |message: String| Refusal {
            message,
            limit: None,
        };
        let Some(first) = tables.first() else {
            return Err(refused(match table {
                Some(t) => format!(
                    "{schema}.{t} is not in any publication this server streams: add it, e.g. \
                     ALTER PUBLICATION <name> ADD TABLE {schema}.{t}"
                ),
                None => format!(
                    "schema {schema:?} has no table in the publications this server streams"
                ),
            }));
        };
        // A filter of only whitespace is no filter, as in Supabase Realtime.
        let filter = match req.filter.as_deref().filter(|f| !f.trim().is_empty()) {
            None => None,
            Some(text) => {
                if table.is_none() {
                    return Err(refused(format!("filter {text:?} needs a table")));
                }
                let limits = filter::Limits {
                    max_conditions: self.limits.max_filter_conditions,
                    max_values: self.limits.max_filter_values,
                };
                match Filter::parse_with_limits(text, |c| first.column(c), limits) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        if let Some(limit) = e.limit {
                            METRICS.limit_reached(limit);
                        }
                        return Err(Refusal {
                            message: e.message,
                            limit: e.limit,
                        });
                    }
                }
            }
        };
        let select = match table {
            Some(_) => Selection::parse(select, true, |c| first.column(c).is_some(), &first.keys)
                .map_err(refused)?
                .map(Arc::new),
            None => None,
        };
        Ok((first.clone(), filter, select))
    }
}

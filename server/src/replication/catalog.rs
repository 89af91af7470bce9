//! Type names and kinds from the database catalog.
//!
//! Owns the map from a type OID to its name (`int4`, `_int4`, `my_enum`, a
//! domain's own name) and to the kind of value it holds (what the JSON forms
//! need: is it a timestamp, a number, an array of what). Loaded once per
//! replication session from `pg_type`, then kept current by the `Type`
//! messages that `pgoutput` sends for every non-built-in type before a
//! relation that uses it (so types created after start get their names).
//! Must not do I/O itself: the caller runs [`TypeCatalog::LOAD_SQL`].

use std::collections::HashMap;
use std::sync::Arc;

/// What the JSON forms need to know about a type's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeKind {
    Bool,
    /// int2, int4, int8, oid: JSON numbers.
    Integer,
    /// float4, float8, numeric: JSON numbers where finite.
    Float,
    Numeric,
    /// json, jsonb: embedded as JSON.
    Json,
    /// timestamp without time zone.
    Timestamp,
    /// timestamp with time zone.
    TimestampTz,
    /// An array of elements of the given kind.
    Array(Box<TypeKind>),
    /// Everything else travels as its text form.
    Text,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    pub name: String,
    pub kind: TypeKind,
}

/// Built-in OIDs whose kind is not "text" (pg_type.dat).
fn builtin_kind(oid: u32) -> Option<TypeKind> {
    Some(match oid {
        16 => TypeKind::Bool,
        20 | 21 | 23 | 26 => TypeKind::Integer,
        700 | 701 => TypeKind::Float,
        1700 => TypeKind::Numeric,
        114 | 3802 => TypeKind::Json,
        1114 => TypeKind::Timestamp,
        1184 => TypeKind::TimestampTz,
        _ => return None,
    })
}

/// One row of [`TypeCatalog::LOAD_SQL`].
#[derive(Debug, Clone)]
pub struct TypeRow {
    pub oid: u32,
    pub name: String,
    /// `typtype`: b base, d domain, e enum, c composite, r range, m multirange, p pseudo.
    pub typtype: char,
    /// `typbasetype` for domains, 0 otherwise.
    pub base: u32,
    /// `typelem` for arrays (`typcategory` 'A'), 0 otherwise.
    pub elem: u32,
}

#[derive(Debug, Default)]
pub struct TypeCatalog {
    rows: HashMap<u32, TypeRow>,
    resolved: HashMap<u32, Arc<TypeInfo>>,
}

impl TypeCatalog {
    /// Every type, with what is needed to resolve domains and arrays.
    pub const LOAD_SQL: &'static str = "SELECT oid::int8, typname::text, typtype::text, \
         typbasetype::int8, CASE WHEN typcategory = 'A' THEN typelem ELSE 0 END::int8 \
         FROM pg_catalog.pg_type";

    pub fn new(rows: impl IntoIterator<Item = TypeRow>) -> Self {
        TypeCatalog {
            rows: rows.into_iter().map(|r| (r.oid, r)).collect(),
            resolved: HashMap::new(),
        }
    }

    /// Records a type named by a `Type` message: one created after the
    /// catalog was loaded. A type the catalog already knows keeps its catalog
    /// name, since `pgoutput` names a domain by its base type. Its kind is what
    /// its name says for arrays of known types; otherwise text.
    pub fn learn(&mut self, oid: u32, name: &str) {
        if self.rows.contains_key(&oid) {
            return;
        }
        let elem = name
            .strip_prefix('_')
            .and_then(|elem_name| {
                self.rows
                    .values()
                    .find(|r| r.name == elem_name)
                    .map(|r| r.oid)
            })
            .unwrap_or(0);
        self.rows.insert(
            oid,
            TypeRow {
                oid,
                name: name.to_string(),
                typtype: 'b',
                base: 0,
                elem,
            },
        );
        self.resolved.remove(&oid);
    }

    /// Name and kind of `oid`. An OID the catalog does not know (it cannot
    /// happen for a column `pgoutput` describes, which sends a `Type` message
    /// first) is named by its number.
    pub fn get(&mut self, oid: u32) -> Arc<TypeInfo> {
        if let Some(info) = self.resolved.get(&oid) {
            return info.clone();
        }
        let info = Arc::new(TypeInfo {
            name: self
                .rows
                .get(&oid)
                .map(|r| r.name.clone())
                .unwrap_or_else(|| oid.to_string()),
            kind: self.kind(oid, 0),
        });
        self.resolved.insert(oid, info.clone());
        info
    }

    fn kind(&self, oid: u32, depth: u8) -> TypeKind {
        if let Some(kind) = builtin_kind(oid) {
            return kind;
        }
        // Domains over domains over arrays: a chain, bounded in case of a
        // broken catalog.
        if depth > 16 {
            return TypeKind::Text;
        }
        match self.rows.get(&oid) {
            Some(r) if r.typtype == 'd' && r.base != 0 => self.kind(r.base, depth + 1),
            Some(r) if r.elem != 0 => TypeKind::Array(Box::new(self.kind(r.elem, depth + 1))),
            _ => TypeKind::Text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(oid: u32, name: &str, typtype: char, base: u32, elem: u32) -> TypeRow {
        TypeRow {
            oid,
            name: name.into(),
            typtype,
            base,
            elem,
        }
    }

    #[test]
    fn resolves_builtins_arrays_domains_and_new_types() {
        let mut cat = TypeCatalog::new([
            row(23, "int4", 'b', 0, 0),
            row(1007, "_int4", 'b', 0, 23),
            row(25, "text", 'b', 0, 0),
            row(90000, "posint", 'd', 23, 0),
            row(90001, "mood", 'e', 0, 0),
        ]);
        assert_eq!(cat.get(23).name, "int4");
        assert_eq!(cat.get(23).kind, TypeKind::Integer);
        assert_eq!(cat.get(1007).name, "_int4");
        assert_eq!(
            cat.get(1007).kind,
            TypeKind::Array(Box::new(TypeKind::Integer))
        );
        assert_eq!(cat.get(90000).name, "posint");
        assert_eq!(cat.get(90000).kind, TypeKind::Integer);
        assert_eq!(cat.get(90001).kind, TypeKind::Text);

        cat.learn(90000, "int4"); // pgoutput names a domain by its base type
        assert_eq!(cat.get(90000).name, "posint");
        cat.learn(90002, "color");
        cat.learn(90003, "_color");
        assert_eq!(cat.get(90002).name, "color");
        assert_eq!(cat.get(90003).name, "_color");
        assert_eq!(
            cat.get(90003).kind,
            TypeKind::Array(Box::new(TypeKind::Text))
        );
        assert_eq!(cat.get(4242).name, "4242");
    }
}

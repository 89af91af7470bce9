//! Step 1, validate: checks a spec without any I/O and turns it into the
//! [`Validated`] values the later steps use (resolved defaults, parsed table
//! names, derived database names). Every problem is reported at once, each in a
//! sentence that names the field and says what is expected.
//!
//! The CRD's schema bounds and CEL rules (see [`crate::crd`]) refuse most of
//! these problems at admission, on API servers that enforce CEL (1.25+); this
//! step is the fallback for those that do not, and for what a schema cannot
//! see (the operator's default image, byte lengths of names).

use super::build::OPERATOR_ENV;
use super::driver::Failure;
use super::reason::Reason;
use crate::crd::{
    PodTemplateOverlay, RealtimeServerSpec, RealtimeServerStatus, CONFIG_HASH_ANNOTATION,
    MAX_REPLICAS, MAX_REPLICATION_LAG_MB, OPERATOR_LABELS, PULL_POLICIES, SERVICE_TYPES,
};
use crate::names;

/// The longest resource name: its StatefulSet's pods are labelled
/// `controller-revision-hash=<name>-<10 characters>`, a label value of at
/// most 63 characters.
pub const MAX_NAME: usize = 52;

/// A table as `schema.table`, unquoted; SQL quotes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QualifiedTable {
    pub schema: String,
    pub table: String,
}

impl std::fmt::Display for QualifiedTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

impl QualifiedTable {
    /// `schema.table`, or `table` in schema `public`.
    pub fn parse(s: &str) -> Result<QualifiedTable, String> {
        let (schema, table) = match s.split_once('.') {
            Some((schema, table)) => (schema, table),
            None => ("public", s),
        };
        for part in [schema, table] {
            if part.is_empty() || part.len() > names::MAX_IDENTIFIER || part.contains('\0') {
                return Err(format!(
                    "{s:?} is not a table name: expected schema.table, each part 1 to 63 bytes"
                ));
            }
        }
        Ok(QualifiedTable {
            schema: schema.into(),
            table: table.into(),
        })
    }
}

/// What the publication should publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicationTarget {
    AllTables,
    /// Sorted and without duplicates.
    Tables(Vec<QualifiedTable>),
}

/// A spec that passed validation, with every default resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    pub publication: String,
    pub target: PublicationTarget,
    /// Sorted and without duplicates.
    pub replica_identity_full: Vec<QualifiedTable>,
    pub slot_prefix: String,
    pub replicas: i32,
    pub image: String,
}

/// Why a spec is invalid: every problem found, each a sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid spec: {}", .problems.join("; "))]
pub struct SpecError {
    pub problems: Vec<String>,
}

/// An invalid spec waits for the user to change it.
impl From<SpecError> for Failure {
    fn from(e: SpecError) -> Failure {
        Failure::told(Reason::InvalidSpec, e.to_string())
    }
}

/// Checks `spec` of the resource `namespace/name`; `default_image` is the
/// operator's configured server image.
pub fn validate(
    namespace: &str,
    name: &str,
    spec: &RealtimeServerSpec,
    default_image: Option<&str>,
) -> Result<Validated, SpecError> {
    let mut errors = Vec::new();

    if name.len() > MAX_NAME {
        errors.push(format!(
            "metadata.name {name:?} has {} characters: at most {MAX_NAME} (the StatefulSet's \
             pods carry the label controller-revision-hash=<name>-<10 characters>, at most 63, \
             and the headless Service is <name>-headless); recreate it with a shorter name",
            name.len()
        ));
    }
    if !(0..=MAX_REPLICAS).contains(&spec.replicas) {
        errors.push(format!(
            "spec.replicas={}: expected 0 to {MAX_REPLICAS}",
            spec.replicas
        ));
    }
    if let Some(mb) = spec
        .max_replication_lag_mb
        .filter(|mb| *mb > MAX_REPLICATION_LAG_MB)
    {
        errors.push(format!(
            "spec.maxReplicationLagMB={mb}: expected 0 to {MAX_REPLICATION_LAG_MB}"
        ));
    }
    if spec.database.host.trim().is_empty() {
        errors.push("spec.database.host is empty: set the PostgreSQL host name".into());
    }
    if spec.database.port == 0 {
        errors.push("spec.database.port=0: expected a port number 1 to 65535".into());
    }
    if spec.database.name.is_empty() || spec.database.user.is_empty() {
        errors.push("spec.database.name and spec.database.user must not be empty".into());
    }
    let pw = &spec.database.password_secret_ref;
    if pw.name.is_empty() || pw.key.is_empty() {
        errors.push(
            "spec.database.passwordSecretRef needs both name and key (a Secret in this namespace)"
                .into(),
        );
    }

    let publication = spec
        .publication
        .name
        .clone()
        .unwrap_or_else(|| names::default_publication(namespace, name));
    if publication.is_empty()
        || publication.len() > names::MAX_IDENTIFIER
        || publication.contains('\0')
    {
        errors.push(format!(
            "spec.publication.name={publication:?}: expected 1 to 63 bytes"
        ));
    }

    let mut tables = Vec::new();
    for t in &spec.publication.tables {
        match QualifiedTable::parse(t) {
            Ok(q) => tables.push(q),
            Err(e) => errors.push(format!("spec.publication.tables: {e}")),
        }
    }
    tables.sort();
    tables.dedup();
    let target = match (
        spec.publication.all_tables,
        spec.publication.tables.is_empty(),
    ) {
        (true, true) => PublicationTarget::AllTables,
        (true, false) => {
            errors.push("spec.publication: set either allTables or tables, not both".into());
            PublicationTarget::AllTables
        }
        (false, true) => {
            errors.push(
                "spec.publication.tables is empty: list the tables to stream as schema.table, \
                 or set allTables: true"
                    .into(),
            );
            PublicationTarget::Tables(Vec::new())
        }
        (false, false) => PublicationTarget::Tables(tables),
    };

    let mut replica_identity_full = Vec::new();
    for t in &spec.publication.replica_identity_full {
        match QualifiedTable::parse(t) {
            Ok(q) => replica_identity_full.push(q),
            Err(e) => errors.push(format!("spec.publication.replicaIdentityFull: {e}")),
        }
    }
    replica_identity_full.sort();
    replica_identity_full.dedup();

    if spec.auth.secure_channels && spec.auth.jwt_secret_ref.is_none() {
        errors.push(
            "spec.auth.secureChannels is true but spec.auth.jwtSecretRef is not set: name the \
             Secret key holding the JWT secret, or set secureChannels: false"
                .into(),
        );
    }
    if !SERVICE_TYPES.contains(&spec.service.type_.as_str()) {
        errors.push(format!(
            "spec.service.type={:?}: expected one of {SERVICE_TYPES:?}",
            spec.service.type_
        ));
    }
    if !(1..=65535).contains(&spec.service.port) {
        errors.push(format!(
            "spec.service.port={}: expected 1 to 65535",
            spec.service.port
        ));
    }
    if let Some(p) = &spec.image_pull_policy {
        if !PULL_POLICIES.contains(&p.as_str()) {
            errors.push(format!(
                "spec.imagePullPolicy={p:?}: expected one of {PULL_POLICIES:?}"
            ));
        }
    }
    if let Some(overlay) = &spec.pod_template {
        pod_template(overlay, &mut errors);
    }
    let image = spec
        .image
        .clone()
        .or_else(|| default_image.map(str::to_owned))
        .unwrap_or_default();
    if image.is_empty() {
        errors.push(
            "spec.image is not set and the operator has no default image (REALTIME_SERVER_IMAGE)"
                .into(),
        );
    }

    if !errors.is_empty() {
        return Err(SpecError { problems: errors });
    }
    Ok(Validated {
        publication,
        target,
        replica_identity_full,
        slot_prefix: names::slot_prefix(namespace, name),
        replicas: spec.replicas,
        image,
    })
}

/// What `spec.podTemplate` may not touch: the operator's labels, its
/// configuration-hash annotation and the environment variables it writes.
fn pod_template(overlay: &PodTemplateOverlay, errors: &mut Vec<String>) {
    if let Some(m) = &overlay.metadata {
        let labels: Vec<&str> = OPERATOR_LABELS
            .into_iter()
            .filter(|l| m.labels.as_ref().is_some_and(|m| m.contains_key(*l)))
            .collect();
        if !labels.is_empty() {
            errors.push(format!(
                "spec.podTemplate.metadata.labels sets {labels:?}: the operator sets these \
                 labels (they select the pods); remove them"
            ));
        }
        if m.annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(CONFIG_HASH_ANNOTATION))
        {
            errors.push(format!(
                "spec.podTemplate.metadata.annotations sets {CONFIG_HASH_ANNOTATION:?}: the \
                 operator sets it (it rolls the pods when the configuration changes); remove it"
            ));
        }
    }
    for e in overlay.env.iter().flatten() {
        if OPERATOR_ENV.contains(&e.name.as_str()) {
            errors.push(format!(
                "spec.podTemplate.env sets {}: the operator writes it from the spec (see \
                 the operator README); set the spec field instead",
                e.name
            ));
        } else if e.name.is_empty() {
            errors.push("spec.podTemplate.env: an entry has no name".into());
        }
    }
    if let Some(t) = overlay.termination_grace_period_seconds.filter(|t| *t < 0) {
        errors.push(format!(
            "spec.podTemplate.terminationGracePeriodSeconds={t}: expected 0 or more"
        ));
    }
}

/// `host:port/name`: the database `spec` points at, as `status.database`
/// records it.
pub fn database_identity(spec: &RealtimeServerSpec) -> String {
    let db = &spec.database;
    format!("{}:{}/{}", db.host, db.port, db.name)
}

/// Refuses a spec that points a resource that already created slots or a
/// publication at another database or publication: those would be left
/// behind (slots retaining WAL until the disk fills). The CRD's CEL rules
/// refuse such an update at admission where the API server enforces them;
/// this is the fallback, reading what the status recorded.
pub fn unchanged_identity(
    status: Option<&RealtimeServerStatus>,
    spec: &RealtimeServerSpec,
    v: &Validated,
) -> Result<(), SpecError> {
    let Some(status) = status else {
        return Ok(());
    };
    let created = !status.slots.is_empty() || status.publication_owned;
    let mut problems = Vec::new();
    let now = database_identity(spec);
    if let Some(was) = status
        .database
        .as_ref()
        .filter(|was| created && **was != now)
    {
        problems.push(format!(
            "spec.database points at {now} but this resource's slots and publication are in \
             {was}: spec.database.host, port and name are immutable; set them back, or delete \
             and recreate the resource to move it"
        ));
    }
    if let Some(was) = status
        .publication
        .as_ref()
        .filter(|was| status.publication_owned && **was != v.publication)
    {
        problems.push(format!(
            "spec.publication.name={:?} but this resource manages publication {was}: \
             spec.publication.name is immutable; set it back, or delete and recreate the \
             resource to stream another publication",
            v.publication
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SpecError { problems })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::*;

    pub(crate) fn spec() -> RealtimeServerSpec {
        serde_json::from_value(serde_json::json!({
            "database": {
                "host": "db.example",
                "passwordSecretRef": {"name": "db", "key": "password"}
            },
            "publication": {"tables": ["public.messages", "rooms"]},
            "auth": {"secureChannels": false},
            "image": "realtime-server:test",
        }))
        .unwrap()
    }

    #[test]
    fn defaults_are_resolved() {
        let v = validate("default", "chat", &spec(), None).unwrap();
        assert_eq!(v.publication, "realtime_default_chat");
        assert_eq!(v.slot_prefix, "rts_default_chat");
        assert_eq!(v.replicas, 1);
        assert_eq!(
            v.target,
            PublicationTarget::Tables(vec![
                QualifiedTable::parse("public.messages").unwrap(),
                QualifiedTable::parse("public.rooms").unwrap(),
            ])
        );
    }

    #[test]
    fn no_tables_and_not_all_tables_is_rejected() {
        let mut s = spec();
        s.publication.tables.clear();
        let e = validate("default", "chat", &s, None).unwrap_err().problems;
        assert!(e[0].contains("allTables"), "{e:?}");
    }

    #[test]
    fn secure_channels_need_a_jwt_secret() {
        let mut s = spec();
        s.auth.secure_channels = true;
        let e = validate("default", "chat", &s, None).unwrap_err().problems;
        assert!(e.iter().any(|m| m.contains("jwtSecretRef")), "{e:?}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut s = spec();
        s.replicas = -1;
        s.service.type_ = "Headless".into();
        s.image = None;
        s.publication.tables = vec!["a.".into()];
        let e = validate("default", "chat", &s, None).unwrap_err();
        assert_eq!(e.problems.len(), 4, "{e:?}");
        assert_eq!(
            e.to_string(),
            format!("invalid spec: {}", e.problems.join("; ")),
            "the message a user sees names every problem"
        );
    }

    #[test]
    fn the_database_and_publication_stay_once_something_was_created() {
        let s = spec();
        let v = validate("default", "chat", &s, None).unwrap();
        let mut status = RealtimeServerStatus {
            database: Some("db.example:5432/postgres".into()),
            publication: Some("realtime_default_chat".into()),
            ..Default::default()
        };
        assert_eq!(unchanged_identity(Some(&status), &s, &v), Ok(()));
        let mut moved = spec();
        moved.database.host = "db2".into();
        moved.publication.name = Some("other".into());
        let mv = validate("default", "chat", &moved, None).unwrap();
        // Nothing created yet: the resource may still point elsewhere.
        assert_eq!(unchanged_identity(Some(&status), &moved, &mv), Ok(()));
        status.slots.push(SlotStatus {
            name: "rts_default_chat_0".into(),
            active: false,
            retained_wal_bytes: None,
            confirmed_flush_lsn: None,
        });
        let e = unchanged_identity(Some(&status), &moved, &mv).unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e:?}");
        assert!(
            e.problems[0].starts_with(
                "spec.database points at db2:5432/postgres but this resource's slots and \
                 publication are in db.example:5432/postgres"
            ),
            "{e:?}"
        );
        status.publication_owned = true;
        let e = unchanged_identity(Some(&status), &moved, &mv).unwrap_err();
        assert_eq!(e.problems.len(), 2, "{e:?}");
        assert!(
            e.problems[1].contains("manages publication realtime_default_chat"),
            "{e:?}"
        );
        assert_eq!(unchanged_identity(None, &moved, &mv), Ok(()));
    }

    #[test]
    fn the_pod_template_cannot_take_what_the_operator_owns() {
        let mut s = spec();
        s.pod_template = Some(
            serde_json::from_value(serde_json::json!({
                "metadata": {
                    "labels": {"app.kubernetes.io/instance": "other", "team": "chat"},
                    "annotations": {"realtime.dev/config-hash": "x"},
                },
                "env": [
                    {"name": "SLOT_NAME", "value": "mine"},
                    {"name": "TEMPORARY_SLOT", "value": "true"},
                    {"name": "MAX_CONNECTIONS", "value": "10"},
                ],
                "terminationGracePeriodSeconds": -1,
            }))
            .unwrap(),
        );
        let e = validate("default", "chat", &s, None).unwrap_err().problems;
        assert_eq!(e.len(), 5, "{e:?}");
        assert!(e[0].contains("[\"app.kubernetes.io/instance\"]"), "{e:?}");
        assert!(e[1].contains("realtime.dev/config-hash"), "{e:?}");
        assert!(
            e[2].starts_with("spec.podTemplate.env sets SLOT_NAME"),
            "{e:?}"
        );
        assert!(
            e[3].starts_with("spec.podTemplate.env sets TEMPORARY_SLOT"),
            "{e:?}"
        );
        assert!(e[4].contains("terminationGracePeriodSeconds=-1"), "{e:?}");
    }

    #[test]
    fn a_name_too_long_for_the_statefulsets_pods_is_refused() {
        let long = "a".repeat(MAX_NAME);
        assert!(validate("default", &long, &spec(), None).is_ok());
        let longer = "a".repeat(MAX_NAME + 1);
        let e = validate("default", &longer, &spec(), None)
            .unwrap_err()
            .problems;
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("has 53 characters: at most 52"), "{e:?}");
    }

    #[test]
    fn the_operator_default_image_is_used() {
        let mut s = spec();
        s.image = None;
        let v = validate("default", "chat", &s, Some("img:1")).unwrap();
        assert_eq!(v.image, "img:1");
    }
}

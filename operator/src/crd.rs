//! The `RealtimeServer` custom resource (`realtime.dev/v1alpha1`): its spec, what a
//! user declares, and its status, what the operator reports. Types only: no I/O and
//! no reconcile logic live here. `realtime-operator crd` prints the CRD generated
//! from these types; `crds/realtimeservers.realtime.dev.yaml` is that output.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, PodSecurityContext, ResourceRequirements,
    SecurityContext, Toleration, TopologySpreadConstraint,
};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The finalizer that guards this resource's replication slots and publication.
pub const FINALIZER: &str = "realtime.dev/cleanup";

/// A realtime-server deployment streaming one PostgreSQL database's changes to
/// WebSocket clients.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "realtime.dev",
    version = "v1alpha1",
    kind = "RealtimeServer",
    plural = "realtimeservers",
    namespaced,
    shortname = "rts",
    status = "RealtimeServerStatus",
    // `kubectl scale rts` and a HorizontalPodAutoscaler: the operator rolls the
    // replica count out to the StatefulSet and its slots.
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Available\")].status"}"#,
    printcolumn = r#"{"name":"Replicas","type":"string","jsonPath":".status.replicasSummary"}"#,
    printcolumn = r#"{"name":"Publication","type":"string","jsonPath":".status.publication"}"#,
    printcolumn = r#"{"name":"Lag","type":"string","jsonPath":".status.lag"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = integer_formats)]
pub struct RealtimeServerSpec {
    /// The PostgreSQL database to stream from.
    pub database: DatabaseSpec,
    /// The publication the servers stream.
    #[serde(default)]
    pub publication: PublicationSpec,
    /// Server pods; each streams from its own replication slot.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = MAX_REPLICAS))]
    pub replicas: i32,
    /// The server image; defaults to the operator's configured image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Always, IfNotPresent or Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = PULL_POLICIES))]
    pub image_pull_policy: Option<String>,
    /// Client authentication.
    #[serde(default)]
    pub auth: AuthSpec,
    /// Past this much WAL retained by a slot when a server connects, the server
    /// drops and recreates its slot (changes in between are lost). 0 or unset: off.
    #[serde(
        default,
        rename = "maxReplicationLagMB",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(max = MAX_REPLICATION_LAG_MB))]
    pub max_replication_lag_mb: Option<u64>,
    /// What happens to the publication this resource created when it is deleted.
    /// Replication slots are always dropped.
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,
    /// The Service in front of the pods.
    #[serde(default)]
    pub service: ServiceSpec,
    /// Compute resources of the server container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Additions to the server pods, merged onto what the operator builds
    /// (the README's "Pod template overlay" says what may not be overridden).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverlay>,
}

/// The labels the operator puts on every pod: they select the pods (the
/// StatefulSet, the Services, the PodDisruptionBudget, the scale subresource).
pub const OPERATOR_LABELS: [&str; 3] = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
];
/// The pod annotation the operator owns: a change of it rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "realtime.dev/config-hash";

/// What a user adds to the server pods, merged onto what the operator builds,
/// as Stackable's `podOverrides` and CloudNativePG's pod settings do. What the
/// operator sets for the server's contract cannot be overridden: its labels,
/// its configuration-hash annotation and the environment variables it writes
/// are refused (the rules below at admission, the operator's validation as
/// the fallback).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverlay {
    /// Labels and annotations added to the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<PodOverlayMetadata>,
    /// Environment variables added to the server container after the
    /// operator's (any server setting the operator does not write, such as
    /// `MAX_CONNECTIONS` or `RUST_LOG`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub termination_grace_period_seconds: Option<i64>,
    /// The pod's security context: the fields set here replace the operator's
    /// (non-root user 65532, RuntimeDefault seccomp); the others stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// The server container's security context, merged the same way over the
    /// operator's (read-only root filesystem, no privilege escalation, every
    /// capability dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_security_context: Option<SecurityContext>,
}

/// Labels and annotations added to the pods.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOverlayMetadata {
    /// Added to the pods' labels; the operator's `app.kubernetes.io/name`,
    /// `instance` and `managed-by` cannot be set here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "!('app.kubernetes.io/name' in self || 'app.kubernetes.io/instance' in self || 'app.kubernetes.io/managed-by' in self)",
        "message": "spec.podTemplate.metadata.labels: app.kubernetes.io/name, app.kubernetes.io/instance and app.kubernetes.io/managed-by are set by the operator (they select the pods)",
    }]))]
    pub labels: Option<BTreeMap<String, String>>,
    /// Added to the pods' annotations; the operator's
    /// `realtime.dev/config-hash` cannot be set here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "!('realtime.dev/config-hash' in self)",
        "message": "spec.podTemplate.metadata.annotations: realtime.dev/config-hash is set by the operator (it rolls the pods when the configuration changes)",
    }]))]
    pub annotations: Option<BTreeMap<String, String>>,
}

fn default_replicas() -> i32 {
    1
}

/// The largest `spec.replicas`: slot names leave room for five ordinal digits.
pub const MAX_REPLICAS: i32 = 99_999;
/// The largest `spec.maxReplicationLagMB`: 2^43 - 1 MB is 2^63 bytes less one
/// MB, so the limit in bytes fits PostgreSQL's bigint (and the schema's int64).
pub const MAX_REPLICATION_LAG_MB: u64 = (1 << 43) - 1;
/// The image pull policies Kubernetes knows.
pub const PULL_POLICIES: [&str; 3] = ["Always", "IfNotPresent", "Never"];
/// The Service types the operator builds.
pub const SERVICE_TYPES: [&str; 3] = ["ClusterIP", "NodePort", "LoadBalancer"];
/// PostgreSQL's longest identifier (NAMEDATALEN - 1), in bytes.
pub const MAX_IDENTIFIER: u32 = 63;

/// Where and how to connect to PostgreSQL. The user needs the REPLICATION
/// attribute and the right to create publications on the listed tables.
///
/// `host`, `port` and `name` say which database holds this resource's slots
/// and publication: they are immutable (a change would leave the slots behind,
/// retaining WAL, in the database that was left). Delete and recreate the
/// resource to move it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    #[schemars(length(min = 1), extend("x-kubernetes-validations" = [immutable("spec.database.host")]))]
    pub host: String,
    #[serde(default = "default_db_port")]
    #[schemars(
        extend("x-kubernetes-validations" = [immutable("spec.database.port")]),
        range(min = 1, max = 65535)
    )]
    pub port: u16,
    /// The database name.
    #[serde(default = "default_db_name")]
    #[schemars(length(min = 1), extend("x-kubernetes-validations" = [immutable("spec.database.name")]))]
    pub name: String,
    #[serde(default = "default_db_user")]
    #[schemars(length(min = 1))]
    pub user: String,
    /// The password, from a key of a Secret in the resource's namespace.
    pub password_secret_ref: SecretKeyRef,
    /// TLS to the database.
    #[serde(default)]
    pub ssl_mode: SslMode,
}

fn default_db_port() -> u16 {
    5432
}
fn default_db_name() -> String {
    "postgres".into()
}
fn default_db_user() -> String {
    "postgres".into()
}

/// A key of a Secret in the resource's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1))]
    pub name: String,
    #[schemars(length(min = 1))]
    pub key: String,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SslMode {
    #[default]
    #[serde(rename = "disable")]
    Disable,
    #[serde(rename = "require")]
    Require,
    #[serde(rename = "verify-full")]
    VerifyFull,
}

impl SslMode {
    /// The server's `DB_SSL` value.
    pub fn as_env(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The publication streamed by the servers.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.allTables || size(self.tables) > 0",
        "message": "spec.publication.tables is empty: list the tables to stream as schema.table, or set allTables: true",
    },
    {
        "rule": "!self.allTables || size(self.tables) == 0",
        "message": "spec.publication: set either allTables or tables, not both",
    },
    {
        "rule": "has(self.name) == has(oldSelf.name) && (!has(self.name) || self.name == oldSelf.name)",
        "messageExpression": "'spec.publication.name is immutable (it was ' + (has(oldSelf.name) ? oldSelf.name : 'not set') + '): delete and recreate the resource to stream another publication'",
    },
]))]
pub struct PublicationSpec {
    /// Publication name; defaults to `realtime_<namespace>_<name>` (see status).
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_IDENTIFIER))]
    pub name: Option<String>,
    /// Publish every table of the database (`FOR ALL TABLES`).
    #[serde(default)]
    pub all_tables: bool,
    /// Tables to publish, as `schema.table`; required unless `allTables`.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Tables (`schema.table`) to set to `REPLICA IDENTITY FULL`, so updates and
    /// deletes carry the old row.
    #[serde(default)]
    pub replica_identity_full: Vec<String>,
    /// Take over an existing publication that no RealtimeServer created. Without
    /// it, such a publication is left alone and the resource reports a conflict.
    #[serde(default)]
    pub adopt: bool,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!self.secureChannels || has(self.jwtSecretRef)",
    "message": "spec.auth.secureChannels is true (the default) but spec.auth.jwtSecretRef is not set: name the Secret key holding the JWT secret, or set secureChannels: false",
}]))]
pub struct AuthSpec {
    /// Require a JWT to join channels. Needs `jwtSecretRef`.
    #[serde(default = "default_true")]
    pub secure_channels: bool,
    /// The HMAC secret that signs client tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret_ref: Option<SecretKeyRef>,
    /// Prepare the database for authorization at every reconcile: create the
    /// roles tokens name (anon, authenticated, service_role) and grant them
    /// to `spec.database.user`, create Supabase's auth.uid(), auth.role()
    /// and auth.jwt() when missing, and realtime.messages with
    /// realtime.topic() for private channels. Idempotent; never replaces
    /// what exists. Needs a database user that may create roles and schemas.
    #[serde(default)]
    pub setup_authorization: bool,
}

fn default_true() -> bool {
    true
}

impl Default for AuthSpec {
    fn default() -> Self {
        AuthSpec {
            secure_channels: true,
            jwt_secret_ref: None,
            setup_authorization: false,
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ReclaimPolicy {
    /// Keep the publication when the resource is deleted.
    #[default]
    Retain,
    /// Drop the publication this resource created when it is deleted.
    Delete,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// ClusterIP, NodePort or LoadBalancer.
    #[serde(default = "default_service_type", rename = "type")]
    #[schemars(extend("enum" = SERVICE_TYPES))]
    pub type_: String,
    /// The Service's port (the pods listen on 4000).
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            type_: default_service_type(),
            port: default_service_port(),
        }
    }
}

fn default_service_type() -> String {
    "ClusterIP".into()
}
fn default_service_port() -> i32 {
    4000
}

/// What the operator observed.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RealtimeServerStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// DatabaseReady, PublicationReady, SlotsReady, Available.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The replicas the StatefulSet was given (the scale subresource's
    /// `status.replicas`).
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// The label selector of the pods, for the scale subresource (an HPA
    /// reads the pods' metrics through it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// `ready/desired`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_summary: Option<String>,
    /// The WebSocket endpoint inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The database (`host:port/name`) that holds this resource's slots and
    /// publication, recorded once connected: the operator refuses a spec that
    /// points elsewhere (the CEL rules refuse it at admission where enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The publication this resource streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publication: Option<String>,
    /// Whether this resource created (or adopted) the publication, and so manages it.
    #[serde(default)]
    pub publication_owned: bool,
    /// The largest WAL retained by one of the slots, human readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<String>,
    /// One entry per replication slot of this resource.
    #[serde(default)]
    pub slots: Vec<SlotStatus>,
}

/// A condition, shaped like `metav1.Condition`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    pub reason: String,
    pub message: String,
    /// RFC 3339; changes only when `status` changes.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One replication slot as PostgreSQL reports it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlotStatus {
    pub name: String,
    /// A server is streaming from it.
    pub active: bool,
    /// WAL bytes the slot keeps from being recycled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_wal_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_flush_lsn: Option<String>,
}

/// A CEL transition rule that keeps `field` as it was created.
fn immutable(field: &str) -> serde_json::Value {
    serde_json::json!({
        "rule": "self == oldSelf",
        "message": format!(
            "{field} is immutable: the slots and publication live in the database first named; \
             delete and recreate the resource to move it"
        ),
    })
}

/// Only the integer formats Kubernetes knows (int32, int64): an unsigned Rust
/// type gives `uint16`/`uint64`, which `kubectl apply` warns about on 1.28+.
/// The unsigned type's lower bound stays as `minimum: 0`.
fn integer_formats(schema: &mut schemars::Schema) {
    if let Some(obj) = schema.as_object_mut() {
        let unsigned = match obj.get("format").and_then(|f| f.as_str()) {
            Some("uint8" | "uint16") => Some("int32"),
            Some("uint32" | "uint64" | "uint") => Some("int64"),
            _ => None,
        };
        if let Some(format) = unsigned {
            obj.insert("format".into(), format.into());
            obj.entry("minimum").or_insert(0.into());
        }
    }
    schemars::transform::transform_subschemas(&mut integer_formats, schema);
}

/// The CRD as YAML, as committed under `crds/`.
pub fn crd_yaml() -> String {
    serde_yaml::to_string(&RealtimeServer::crd()).expect("the CRD serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_crd_is_the_generated_one() {
        let committed = include_str!("../../crds/realtimeservers.realtime.dev.yaml");
        assert!(
            committed == crd_yaml(),
            "crds/realtimeservers.realtime.dev.yaml is stale: run \
             `cargo run -p realtime-operator -- crd > crds/realtimeservers.realtime.dev.yaml`"
        );
    }

    #[test]
    fn the_sample_in_examples_is_a_valid_resource() {
        let sample = include_str!("../examples/realtimeserver.yaml");
        let obj: RealtimeServer = serde_yaml::from_str(sample).expect("the sample parses");
        assert_eq!(obj.spec.replicas, 2);
        assert_eq!(obj.spec.max_replication_lag_mb, Some(1024));
        let overlay = obj
            .spec
            .pod_template
            .as_ref()
            .expect("the sample has a podTemplate");
        assert_eq!(overlay.termination_grace_period_seconds, Some(60));
        let v = crate::reconcile::validate::validate("default", "chat", &obj.spec, Some("img"));
        assert!(v.is_ok(), "{v:?}");
    }

    #[test]
    fn a_minimal_spec_gets_the_documented_defaults() {
        let spec: RealtimeServerSpec = serde_json::from_value(serde_json::json!({
            "database": {"host": "db", "passwordSecretRef": {"name": "db", "key": "password"}},
        }))
        .unwrap();
        assert_eq!(spec.replicas, 1);
        assert_eq!(spec.database.port, 5432);
        assert_eq!(spec.reclaim_policy, ReclaimPolicy::Retain);
        assert!(spec.auth.secure_channels);
        assert_eq!(spec.service.port, 4000);
        assert_eq!(spec.database.ssl_mode, SslMode::Disable);
    }
}

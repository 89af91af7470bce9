//! The `RealtimeServer` custom resource (`realtime.dev/v1alpha1`): its spec, what a
//! user declares, and its status, what the operator reports. Types only: no I/O and
//! no reconcile logic live here. `realtime-operator crd` prints the CRD generated
//! from these types; `crds/realtimeservers.realtime.dev.yaml` is that output.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
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
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Available\")].status"}"#,
    printcolumn = r#"{"name":"Replicas","type":"string","jsonPath":".status.replicasSummary"}"#,
    printcolumn = r#"{"name":"Publication","type":"string","jsonPath":".status.publication"}"#,
    printcolumn = r#"{"name":"Lag","type":"string","jsonPath":".status.lag"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RealtimeServerSpec {
    /// The PostgreSQL database to stream from.
    pub database: DatabaseSpec,
    /// The publication the servers stream.
    #[serde(default)]
    pub publication: PublicationSpec,
    /// Server pods; each streams from its own replication slot.
    #[serde(default = "default_replicas")]
    pub replicas: i32,
    /// The server image; defaults to the operator's configured image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Always, IfNotPresent or Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
}

fn default_replicas() -> i32 {
    1
}

/// Where and how to connect to PostgreSQL. The user needs the REPLICATION
/// attribute and the right to create publications on the listed tables.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    pub host: String,
    #[serde(default = "default_db_port")]
    pub port: u16,
    /// The database name.
    #[serde(default = "default_db_name")]
    pub name: String,
    #[serde(default = "default_db_user")]
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
    pub name: String,
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
pub struct PublicationSpec {
    /// Publication name; defaults to `realtime_<namespace>_<name>` (see status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    pub type_: String,
    /// The Service's port (the pods listen on 4000).
    #[serde(default = "default_service_port")]
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
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// `ready/desired`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_summary: Option<String>,
    /// The WebSocket endpoint inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
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

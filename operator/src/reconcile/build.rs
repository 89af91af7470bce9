//! Step 6, build: the child objects as pure functions of the resource and its
//! validated spec (no client, no clock). The server pods are configured only
//! through the environment variables of the contract's `config` module (named
//! by its [`var`] constants); secrets are referenced with `secretKeyRef`,
//! never copied.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use realtime_contract::config::var;

use super::validate::Validated;
use crate::crd::{PodTemplateOverlay, RealtimeServer, SecretKeyRef};
use crate::names;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The port the server listens on inside the pod.
pub const SERVER_PORT: i32 = 4000;
pub use crate::crd::CONFIG_HASH_ANNOTATION;
/// Every environment variable the operator may write (see [`server_env`]),
/// and `TEMPORARY_SLOT` (a temporary slot would break the one-durable-slot-
/// per-replica contract): `spec.podTemplate.env` cannot set them.
pub const OPERATOR_ENV: &[&str] = &[
    var::PORT,
    var::BIND_ADDRESS,
    var::DB_HOST,
    var::DB_PORT,
    var::DB_NAME,
    var::DB_USER,
    var::DB_PASSWORD,
    var::DB_SSL,
    var::PUBLICATIONS,
    var::SLOT_NAME,
    var::POD_NAME,
    var::SECURE_CHANNELS,
    var::CLUSTER_NAME,
    var::MAX_REPLICATION_LAG_MB,
    var::JWT_SECRET,
    var::TEMPORARY_SLOT,
];
/// Non-root user of the server container (the distroless "nonroot" user).
const RUN_AS_USER: i64 = 65532;

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn env_secret(name: &str, r: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: r.name.clone(),
                key: r.key.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The children of a resource, as the rollout applies them.
pub struct Children {
    pub statefulset: StatefulSet,
    /// The clients' Service.
    pub service: Service,
    /// The StatefulSet's governing Service: stable DNS names of the pods.
    pub headless_service: Service,
    /// With more than one replica: keep all but one up during disruptions.
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
}

/// Every child of `obj`; `secret_values` (the referenced Secrets' values, as
/// `secret/key` -> value) only enter the configuration hash.
pub fn children(
    obj: &RealtimeServer,
    v: &Validated,
    secret_values: &BTreeMap<String, Vec<u8>>,
) -> Children {
    let hash = config_hash(&server_env(obj, v), secret_values);
    Children {
        statefulset: statefulset(obj, v, &hash),
        service: service(obj),
        headless_service: headless_service(obj),
        pod_disruption_budget: (v.replicas > 1).then(|| pod_disruption_budget(obj)),
    }
}

/// The server container's environment (see the contract's `config` module).
pub fn server_env(obj: &RealtimeServer, v: &Validated) -> Vec<EnvVar> {
    let spec = &obj.spec;
    let db = &spec.database;
    let mut out = vec![
        env(var::PORT, SERVER_PORT.to_string()),
        env(var::BIND_ADDRESS, "0.0.0.0"),
        env(var::DB_HOST, db.host.clone()),
        env(var::DB_PORT, db.port.to_string()),
        env(var::DB_NAME, db.name.clone()),
        env(var::DB_USER, db.user.clone()),
        env_secret(var::DB_PASSWORD, &db.password_secret_ref),
        env(var::DB_SSL, db.ssl_mode.as_env()),
        env(
            var::PUBLICATIONS,
            serde_json::to_string(&[&v.publication]).expect("a string array serializes"),
        ),
        env(
            var::SLOT_NAME,
            format!(
                "{}_{}",
                v.slot_prefix,
                realtime_contract::config::ORDINAL_PLACEHOLDER
            ),
        ),
        EnvVar {
            name: var::POD_NAME.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    api_version: Some("v1".into()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        env(var::SECURE_CHANNELS, spec.auth.secure_channels.to_string()),
        // The replicas behind the Service are one cluster: a broadcast or a
        // presence on one pod reaches the clients of every pod.
        env(
            var::CLUSTER_NAME,
            names::cluster_name(&obj.namespace().unwrap_or_default(), &obj.name_any()),
        ),
    ];
    if let Some(mb) = spec.max_replication_lag_mb {
        out.push(env(var::MAX_REPLICATION_LAG_MB, mb.to_string()));
    }
    if let Some(jwt) = &spec.auth.jwt_secret_ref {
        out.push(env_secret(var::JWT_SECRET, jwt));
    }
    out
}

/// A hash of everything the pods' configuration depends on: the environment and
/// the values of the referenced secrets (given as `(secret/key, value)`), so that
/// a changed password rolls the pods. Only the hash is stored.
pub fn config_hash(env: &[EnvVar], secret_values: &BTreeMap<String, Vec<u8>>) -> String {
    let mut input = serde_json::to_string(env).expect("env serializes");
    for (k, v) in secret_values {
        input.push('\n');
        input.push_str(k);
        input.push('=');
        input.push_str(&names::short_hash(&String::from_utf8_lossy(v), 32));
    }
    names::short_hash(&input, 16)
}

fn meta(obj: &RealtimeServer) -> ObjectMeta {
    ObjectMeta {
        name: Some(obj.name_any()),
        namespace: obj.namespace(),
        labels: Some(names::labels(&obj.name_any())),
        owner_references: obj.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

/// The server pods: one per slot ordinal, with `spec.podTemplate` merged on.
pub fn statefulset(obj: &RealtimeServer, v: &Validated, config_hash: &str) -> StatefulSet {
    let mut sts = base_statefulset(obj, v, config_hash);
    if let (Some(overlay), Some(spec)) = (&obj.spec.pod_template, sts.spec.as_mut()) {
        merge_overlay(&mut spec.template, overlay);
    }
    sts
}

/// Merges `overlay` onto the pod template the operator built. Labels,
/// annotations and env are added (validation refused any that the operator
/// owns); the pod settings the operator leaves unset are set; the security
/// contexts are merged field by field, the overlay's fields winning.
pub fn merge_overlay(template: &mut PodTemplateSpec, overlay: &PodTemplateOverlay) {
    if let Some(m) = &overlay.metadata {
        let meta = template.metadata.get_or_insert_with(Default::default);
        for (mine, theirs) in [
            (&mut meta.labels, &m.labels),
            (&mut meta.annotations, &m.annotations),
        ] {
            if let Some(theirs) = theirs {
                let mine = mine.get_or_insert_with(Default::default);
                for (k, v) in theirs {
                    mine.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
    }
    let Some(pod) = template.spec.as_mut() else {
        return;
    };
    if let Some(env) = &overlay.env {
        let container = &mut pod.containers[0];
        container
            .env
            .get_or_insert_with(Vec::new)
            .extend(env.iter().cloned());
    }
    if let Some(c) = &overlay.container_security_context {
        let container = &mut pod.containers[0];
        container.security_context = Some(merged(&container.security_context, c));
    }
    if let Some(p) = &overlay.security_context {
        pod.security_context = Some(merged(&pod.security_context, p));
    }
    if overlay.image_pull_secrets.is_some() {
        pod.image_pull_secrets = overlay.image_pull_secrets.clone();
    }
    if overlay.service_account_name.is_some() {
        pod.service_account_name = overlay.service_account_name.clone();
    }
    if overlay.priority_class_name.is_some() {
        pod.priority_class_name = overlay.priority_class_name.clone();
    }
    if overlay.topology_spread_constraints.is_some() {
        pod.topology_spread_constraints = overlay.topology_spread_constraints.clone();
    }
    if overlay.termination_grace_period_seconds.is_some() {
        pod.termination_grace_period_seconds = overlay.termination_grace_period_seconds;
    }
}

/// `base` with every field that `over` sets replaced by `over`'s (objects
/// merged key by key, recursively; lists and values replaced).
fn merged<T: Serialize + DeserializeOwned>(base: &Option<T>, over: &T) -> T {
    fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
        match (base, over) {
            (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
                for (k, v) in o {
                    merge(b.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (b, o) => *b = o,
        }
    }
    let mut value = serde_json::to_value(base).expect("a security context serializes");
    merge(
        &mut value,
        serde_json::to_value(over).expect("a security context serializes"),
    );
    serde_json::from_value(value).expect("a merge of two security contexts is one")
}

fn base_statefulset(obj: &RealtimeServer, v: &Validated, config_hash: &str) -> StatefulSet {
    let spec = &obj.spec;
    let name = obj.name_any();
    let labels = names::labels(&name);
    let env = server_env(obj, v);
    let container = Container {
        name: "realtime-server".into(),
        image: Some(v.image.clone()),
        image_pull_policy: spec.image_pull_policy.clone(),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: SERVER_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
        resources: spec.resources.clone(),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    StatefulSet {
        metadata: meta(obj),
        spec: Some(StatefulSetSpec {
            replicas: Some(v.replicas),
            service_name: Some(names::headless_service(&name)),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.into(),
                        config_hash.into(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS_USER),
                        run_as_group: Some(RUN_AS_USER),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    volumes: Some(vec![Volume {
                        name: "tmp".into(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Default::default()
                    }]),
                    node_selector: spec.node_selector.clone(),
                    tolerations: spec.tolerations.clone(),
                    affinity: spec.affinity.clone(),
                    enable_service_links: Some(false),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Service in front of the pods.
pub fn service(obj: &RealtimeServer) -> Service {
    Service {
        metadata: meta(obj),
        spec: Some(ServiceSpec {
            type_: Some(obj.spec.service.type_.clone()),
            selector: Some(names::labels(&obj.name_any())),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: obj.spec.service.port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The StatefulSet's governing Service: headless (`clusterIP: None`), so each
/// pod gets a stable DNS name (`<pod>.<name>-headless.<namespace>.svc`), with
/// not-ready pods published too, so that replicas find each other while
/// they start. Clients use [`service`].
pub fn headless_service(obj: &RealtimeServer) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(names::headless_service(&obj.name_any())),
            ..meta(obj)
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(names::labels(&obj.name_any())),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: SERVER_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A PodDisruptionBudget keeping all but one replica up during voluntary
/// disruptions; only wanted when there is more than one replica.
pub fn pod_disruption_budget(obj: &RealtimeServer) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(obj),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(names::labels(&obj.name_any())),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The in-cluster WebSocket endpoint.
pub fn endpoint(obj: &RealtimeServer) -> String {
    format!(
        "ws://{}.{}.svc:{}/socket/websocket",
        obj.name_any(),
        obj.namespace().unwrap_or_default(),
        obj.spec.service.port
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::validate::{tests::spec, validate};

    fn obj() -> RealtimeServer {
        let mut o = RealtimeServer::new("chat", spec());
        o.metadata.namespace = Some("default".into());
        o.metadata.uid = Some("uid-1".into());
        o
    }

    fn env_map(sts: &StatefulSet) -> BTreeMap<String, EnvVar> {
        let c = &sts
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        c.env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect()
    }

    #[test]
    fn the_statefulset_carries_the_contract_env_and_secret_refs() {
        let o = obj();
        let v = validate("default", "chat", &o.spec, None).unwrap();
        let sts = statefulset(&o, &v, "h");
        let env = env_map(&sts);
        assert_eq!(
            env["SLOT_NAME"].value.as_deref(),
            Some("rts_default_chat_{ordinal}")
        );
        assert_eq!(
            env["PUBLICATIONS"].value.as_deref(),
            Some(r#"["realtime_default_chat"]"#)
        );
        let pw = env["DB_PASSWORD"].value_from.as_ref().unwrap();
        assert_eq!(pw.secret_key_ref.as_ref().unwrap().name, "db");
        assert!(env["DB_PASSWORD"].value.is_none());
        let pod = env["POD_NAME"].value_from.as_ref().unwrap();
        assert_eq!(pod.field_ref.as_ref().unwrap().field_path, "metadata.name");
    }

    #[test]
    fn probes_security_and_owner_reference() {
        let o = obj();
        let v = validate("default", "chat", &o.spec, None).unwrap();
        let sts = statefulset(&o, &v, "h");
        let c = &sts
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        let path = |p: &Option<Probe>| p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone();
        assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
        assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let owner = &sts.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "RealtimeServer");
        assert_eq!(owner.uid, "uid-1");
        assert_eq!(owner.controller, Some(true));
    }

    #[test]
    fn the_hash_changes_with_the_config_and_only_then() {
        let o = obj();
        let v = validate("default", "chat", &o.spec, None).unwrap();
        let secrets = BTreeMap::from([("db/password".to_string(), b"a".to_vec())]);
        let h1 = config_hash(&server_env(&o, &v), &secrets);
        assert_eq!(h1, config_hash(&server_env(&o, &v), &secrets));
        let mut o2 = o.clone();
        o2.spec.replicas = 3; // not part of the pods' configuration
        assert_eq!(h1, config_hash(&server_env(&o2, &v), &secrets));
        o2.spec.max_replication_lag_mb = Some(10);
        assert_ne!(h1, config_hash(&server_env(&o2, &v), &secrets));
        let changed = BTreeMap::from([("db/password".to_string(), b"b".to_vec())]);
        assert_ne!(h1, config_hash(&server_env(&o, &v), &changed));
    }

    #[test]
    fn a_pdb_only_with_more_than_one_replica() {
        let mut o = obj();
        let secrets = BTreeMap::new();
        let v = validate("default", "chat", &o.spec, None).unwrap();
        assert!(children(&o, &v, &secrets).pod_disruption_budget.is_none());
        o.spec.replicas = 2;
        let v = validate("default", "chat", &o.spec, None).unwrap();
        let c = children(&o, &v, &secrets);
        assert!(c.pod_disruption_budget.is_some());
        assert_eq!(c.statefulset.spec.unwrap().replicas, Some(2));
    }

    #[test]
    fn the_pdb_selects_the_pods_and_allows_one_down() {
        let o = obj();
        let pdb = pod_disruption_budget(&o);
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            spec.selector.unwrap().match_labels.unwrap(),
            names::labels("chat")
        );
        assert_eq!(pdb.metadata.owner_references.unwrap()[0].name, "chat");
    }

    #[test]
    fn the_statefulset_is_governed_by_a_headless_service() {
        let o = obj();
        let v = validate("default", "chat", &o.spec, None).unwrap();
        let c = children(&o, &v, &BTreeMap::new());
        let h = &c.headless_service;
        assert_eq!(h.metadata.name.as_deref(), Some("chat-headless"));
        assert_eq!(
            c.statefulset.spec.as_ref().unwrap().service_name.as_deref(),
            Some("chat-headless")
        );
        let spec = h.spec.as_ref().unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.selector.as_ref(), Some(&names::labels("chat")));
        assert_eq!(
            h.metadata.owner_references.as_ref().unwrap()[0].name,
            "chat"
        );
        // The clients' Service stays as it was.
        let s = c.service.spec.as_ref().unwrap();
        assert_eq!(c.service.metadata.name.as_deref(), Some("chat"));
        assert_eq!(s.cluster_ip, None);
        assert_eq!(s.type_.as_deref(), Some("ClusterIP"));
    }

    fn overlaid() -> RealtimeServer {
        let mut o = obj();
        o.spec.pod_template = Some(
            serde_json::from_value(serde_json::json!({
                "metadata": {
                    "labels": {"team": "chat"},
                    "annotations": {"prometheus.io/scrape": "true"},
                },
                "env": [
                    {"name": "MAX_CONNECTIONS", "value": "5000"},
                    {"name": "RUST_LOG", "value": "debug"},
                ],
                "imagePullSecrets": [{"name": "registry"}],
                "serviceAccountName": "realtime",
                "priorityClassName": "high",
                "topologySpreadConstraints": [{
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "chat"}},
                }],
                "terminationGracePeriodSeconds": 45,
                "securityContext": {"fsGroup": 2000, "runAsUser": 1000},
                "containerSecurityContext": {"readOnlyRootFilesystem": false},
            }))
            .unwrap(),
        );
        o
    }

    #[test]
    fn the_pod_template_overlay_is_merged_onto_the_operators_pods() {
        let o = overlaid();
        let v = validate("default", "chat", &o.spec, None).unwrap();
        let sts = statefulset(&o, &v, "h");
        let template = &sts.spec.as_ref().unwrap().template;
        let meta = template.metadata.as_ref().unwrap();
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["team"], "chat");
        for (k, v) in names::labels("chat") {
            assert_eq!(labels[&k], v, "the operator's label {k} stays");
        }
        let annotations = meta.annotations.as_ref().unwrap();
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations[CONFIG_HASH_ANNOTATION], "h");
        // The selector is the operator's alone.
        assert_eq!(
            sts.spec.as_ref().unwrap().selector.match_labels,
            Some(names::labels("chat"))
        );

        let pod = template.spec.as_ref().unwrap();
        assert_eq!(pod.image_pull_secrets.as_ref().unwrap()[0].name, "registry");
        assert_eq!(pod.service_account_name.as_deref(), Some("realtime"));
        assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
        assert_eq!(pod.termination_grace_period_seconds, Some(45));
        assert_eq!(
            pod.topology_spread_constraints.as_ref().unwrap()[0].topology_key,
            "topology.kubernetes.io/zone"
        );
        // Security contexts: the overlay's fields win, the others stay.
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_user, Some(1000));
        assert_eq!(psc.fs_group, Some(2000));
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        let csc = pod.containers[0].security_context.as_ref().unwrap();
        assert_eq!(csc.read_only_root_filesystem, Some(false));
        assert_eq!(csc.allow_privilege_escalation, Some(false));
        assert_eq!(
            csc.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".to_string()])
        );

        // Env: the operator's first, then the overlay's.
        let env = pod.containers[0].env.as_ref().unwrap();
        let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
        let operator = server_env(&o, &v).len();
        assert_eq!(&names[operator..], ["MAX_CONNECTIONS", "RUST_LOG"]);
        assert_eq!(env_map(&sts)["SLOT_NAME"], server_env(&o, &v)[9]);
    }

    #[test]
    fn without_an_overlay_the_pods_are_the_operators() {
        let o = obj();
        let v = validate("default", "chat", &o.spec, None).unwrap();
        let mut with_empty = o.clone();
        with_empty.spec.pod_template = Some(Default::default());
        assert_eq!(statefulset(&o, &v, "h"), statefulset(&with_empty, &v, "h"));
        let pod = statefulset(&o, &v, "h")
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        assert_eq!(pod.service_account_name, None);
        assert_eq!(pod.termination_grace_period_seconds, None);
    }

    #[test]
    fn every_variable_the_operator_writes_is_reserved() {
        let mut o = obj();
        o.spec.max_replication_lag_mb = Some(1);
        o.spec.auth.jwt_secret_ref = Some(SecretKeyRef {
            name: "jwt".into(),
            key: "secret".into(),
        });
        let v = validate("default", "chat", &o.spec, None).unwrap();
        for e in server_env(&o, &v) {
            assert!(
                OPERATOR_ENV.contains(&e.name.as_str()),
                "{} is not reserved",
                e.name
            );
        }
        let mut reserved = crate::crd::OPERATOR_LABELS.to_vec();
        reserved.sort();
        let labels = names::labels("x");
        assert_eq!(
            labels.keys().map(String::as_str).collect::<Vec<_>>(),
            reserved
        );
    }

    #[test]
    fn the_service_points_at_the_http_port() {
        let s = service(&obj());
        let p = &s.spec.unwrap().ports.unwrap()[0];
        assert_eq!(p.port, 4000);
        assert_eq!(p.target_port, Some(IntOrString::String("http".into())));
    }
}

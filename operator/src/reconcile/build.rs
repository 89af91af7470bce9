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
use crate::crd::{RealtimeServer, SecretKeyRef};
use crate::names;

/// The port the server listens on inside the pod.
pub const SERVER_PORT: i32 = 4000;
/// The pod template annotation that changes whenever the configuration does.
pub const CONFIG_HASH_ANNOTATION: &str = "realtime.dev/config-hash";
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
    pub service: Service,
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

/// The server pods: one per slot ordinal.
pub fn statefulset(obj: &RealtimeServer, v: &Validated, config_hash: &str) -> StatefulSet {
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
            service_name: Some(name.clone()),
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
    fn the_service_points_at_the_http_port() {
        let s = service(&obj());
        let p = &s.spec.unwrap().ports.unwrap()[0];
        assert_eq!(p.port, 4000);
        assert_eq!(p.target_port, Some(IntOrString::String("http".into())));
    }
}

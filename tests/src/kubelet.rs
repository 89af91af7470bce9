//! The kubelet's part, which the tests play (the API server runs no pods):
//! turning a container's `env` from a pod template into the variables the
//! program is started with, and reporting a pod of a template ready.
//!
//! Owns: plain values, `secretKeyRef` (from the Secrets the test holds) and
//! `fieldRef` to the pod's name and namespace. Any other source is a test
//! that needs more of the kubelet than this: it panics, naming the variable.
//! Starting the program is the test's business ([`crate::server`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, Pod as PodObject, PodTemplateSpec};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::Api;

/// Secrets by name, then key, with their values: what `secretKeyRef` reads.
pub type Secrets = BTreeMap<String, BTreeMap<String, String>>;

/// The pod a container's environment is resolved for.
#[derive(Debug, Clone, Copy)]
pub struct Pod<'a> {
    /// `metadata.name` (a StatefulSet's pods end in their ordinal: `chat-0`).
    pub name: &'a str,
    /// `metadata.namespace`.
    pub namespace: &'a str,
    /// The Secrets of that namespace.
    pub secrets: &'a Secrets,
}

/// `env` resolved as the kubelet would for `pod`. A variable with neither a
/// value nor a source is the empty string, as in a real pod.
pub fn resolve_env(env: &[EnvVar], pod: Pod<'_>) -> BTreeMap<String, String> {
    env.iter()
        .map(|e| (e.name.clone(), value(e, pod)))
        .collect()
}

/// Creates pod `name` of `template` (its labels and spec) in `pods`'
/// namespace and reports it Running and Ready, as the kubelet does once the
/// readiness probe passes.
pub async fn report_ready(pods: &Api<PodObject>, name: &str, template: &PodTemplateSpec) {
    let pod = PodObject {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            ..Default::default()
        },
        spec: template.spec.clone(),
        ..Default::default()
    };
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create the pod {name}: {e}"));
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
        }})),
    )
    .await
    .unwrap_or_else(|e| panic!("report the pod {name} ready: {e}"));
}

fn value(e: &EnvVar, pod: Pod<'_>) -> String {
    if let Some(v) = &e.value {
        return v.clone();
    }
    let Some(from) = &e.value_from else {
        return String::new();
    };
    if let Some(s) = &from.secret_key_ref {
        return pod
            .secrets
            .get(&s.name)
            .and_then(|m| m.get(&s.key))
            .unwrap_or_else(|| {
                panic!(
                    "{}: no key {:?} in Secret {}/{} (the test holds: {:?})",
                    e.name,
                    s.key,
                    pod.namespace,
                    s.name,
                    pod.secrets.keys().collect::<Vec<_>>()
                )
            })
            .clone();
    }
    if let Some(f) = &from.field_ref {
        return match f.field_path.as_str() {
            "metadata.name" => pod.name.to_string(),
            "metadata.namespace" => pod.namespace.to_string(),
            other => panic!("{}: fieldRef {other} is not resolved by the tests", e.name),
        };
    }
    panic!(
        "{}: valueFrom {from:?} is not resolved by the tests",
        e.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EnvVarSource, ObjectFieldSelector, SecretKeySelector};

    fn var(name: &str, value: Option<&str>, from: Option<EnvVarSource>) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: value.map(str::to_string),
            value_from: from,
        }
    }

    fn secret(name: &str, key: &str) -> Option<EnvVarSource> {
        Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: name.into(),
                key: key.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn values_secrets_and_pod_fields_resolve() {
        let secrets = Secrets::from([(
            "db".to_string(),
            BTreeMap::from([("password".to_string(), "s3cret".to_string())]),
        )]);
        let field = |path: &str| EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let env = [
            var("PLAIN", Some("v"), None),
            var("EMPTY", None, None),
            var("DB_PASSWORD", None, secret("db", "password")),
            var("POD", None, Some(field("metadata.name"))),
            var("NS", None, Some(field("metadata.namespace"))),
        ];
        let pod = Pod {
            name: "chat-1",
            namespace: "apps",
            secrets: &secrets,
        };
        let got = resolve_env(&env, pod);
        let want = [
            ("DB_PASSWORD", "s3cret"),
            ("EMPTY", ""),
            ("NS", "apps"),
            ("PLAIN", "v"),
            ("POD", "chat-1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(got, BTreeMap::from(want));
    }

    #[test]
    #[should_panic(expected = "DB_PASSWORD: no key \"password\" in Secret apps/db")]
    fn a_missing_secret_names_the_variable() {
        let env = [var("DB_PASSWORD", None, secret("db", "password"))];
        resolve_env(
            &env,
            Pod {
                name: "chat-0",
                namespace: "apps",
                secrets: &Secrets::new(),
            },
        );
    }
}

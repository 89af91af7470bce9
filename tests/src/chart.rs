//! Helpers for the tests of what ships: the Helm chart (rendered by the real
//! `helm`, installed by `tests/k8s/install-helm.sh`), the sample resources, and
//! the operator binary, which the tests run as a child process
//! ([`crate::LoggedProcess`]) with the environment the chart's Deployment
//! gives it ([`crate::kubelet`]).
//!
//! This module owns: finding `helm`, the chart and the operator binary, `helm
//! template`, applying rendered YAML to the API server (server-side apply, as
//! `kubectl apply --server-side` does), and a ServiceAccount token from the
//! TokenRequest API.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{pinned_kind, Scope};
use kube::{Api, Client};

/// Version of the `helm` binary `tests/k8s/install-helm.sh` caches.
pub const HELM_VERSION: &str = "v3.17.2";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `charts/realtime-operator`.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/realtime-operator")
}

/// The `helm` binary: `$HELM_BIN`, else the install script's cache.
pub fn helm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HELM_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let cache = match std::env::var_os("HELM_CACHE").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            Some(d) => PathBuf::from(d).join("realtime"),
            None => {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/realtime")
            }
        },
    };
    let bin = cache.join(format!("helm-{HELM_VERSION}/helm"));
    assert!(
        bin.is_file(),
        "{} does not exist: run `tests/k8s/install-helm.sh` (tests/setup.sh does), or point \
         HELM_BIN at a helm binary",
        bin.display()
    );
    bin
}

/// Runs `helm args...`: Ok(stdout) or Err(stdout + stderr).
pub fn helm(args: &[&str]) -> Result<String, String> {
    let out = Command::new(helm_bin())
        .args(args)
        // No user's helm configuration or plugins.
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("realtime-helm-config"),
        )
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("realtime-helm-cache"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("realtime-helm-data"),
        )
        .stdin(Stdio::null())
        .output()
        .expect("run helm");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{stderr}"))
    }
}

/// `helm template <release> charts/realtime-operator --namespace <ns> <extra...>`.
pub fn template(release: &str, namespace: &str, extra: &[&str]) -> Result<String, String> {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        release,
        chart.to_str().expect("UTF-8 path"),
        "--namespace",
        namespace,
    ];
    args.extend_from_slice(extra);
    helm(&args)
}

/// The documents of a multi-document YAML stream (empty ones dropped).
pub fn documents(yaml: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| {
            let v: serde_yaml::Value =
                serde::Deserialize::deserialize(d).expect("valid YAML document");
            serde_json::to_value(v).expect("YAML as JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The rendered object of `kind` named `name`.
pub fn find<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            panic!(
                "no {kind} {name} among: {:?}",
                docs.iter()
                    .map(|d| format!("{}/{}", d["kind"], d["metadata"]["name"]))
                    .collect::<Vec<_>>()
            )
        })
}

/// Server-side applies every document (field manager `realtime-test`), in
/// order, in its own namespace or `default_ns`; returns `kind/name` of each.
pub async fn apply_all(
    client: &Client,
    docs: &[serde_json::Value],
    default_ns: &str,
) -> Result<Vec<String>, String> {
    let mut applied = Vec::new();
    for doc in docs {
        let obj: DynamicObject =
            serde_json::from_value(doc.clone()).map_err(|e| format!("{doc}: {e}"))?;
        let types = obj
            .types
            .clone()
            .ok_or("a document without apiVersion/kind")?;
        let gvk = GroupVersionKind::try_from(&types).map_err(|e| e.to_string())?;
        let (resource, caps) = pinned_kind(client, &gvk)
            .await
            .map_err(|e| format!("discovering {}: {e}", types.kind))?;
        let name = obj
            .metadata
            .name
            .clone()
            .ok_or("a document without a name")?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                obj.metadata.namespace.as_deref().unwrap_or(default_ns),
                &resource,
            ),
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        let doc = if types.kind == "CustomResourceDefinition" {
            &crate::operator::crd_for_server(client, doc.clone()).await
        } else {
            doc
        };
        api.patch(
            &name,
            &PatchParams::apply("realtime-test").force(),
            &Patch::Apply(doc),
        )
        .await
        .map_err(|e| format!("applying {} {name}: {e}", types.kind))?;
        applied.push(format!("{}/{name}", types.kind));
    }
    Ok(applied)
}

/// A token of ServiceAccount `ns/name` from the TokenRequest API, as the
/// kubelet mounts into the pod.
pub async fn service_account_token(client: &Client, ns: &str, name: &str) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create_token_request(name, &PostParams::default(), &req)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for ServiceAccount {ns}/{name}: {e}"))
        .status
        .expect("TokenRequest status")
        .token
}

/// Where cargo put the operator binary: beside the test executable's `deps/`.
/// `REALTIME_OPERATOR_BIN` overrides.
pub fn operator_bin() -> PathBuf {
    crate::server::workspace_bin("realtime-operator", "REALTIME_OPERATOR_BIN")
}

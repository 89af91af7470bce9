//! Integration tests of the real Kubernetes API server harness
//! (`realtime_tests::k8s`): each test starts its own etcd + kube-apiserver and
//! checks what a client of that server sees.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::runtime::{conditions, wait::await_condition, watcher, WatchStreamExt};
use kube::ResourceExt;
use realtime_tests::k8s::KubeApiServer;
use serde_json::json;

const MANAGER: &str = "realtime-test";

async fn start() -> KubeApiServer {
    match KubeApiServer::start().await {
        Ok(k8s) => k8s,
        Err(e) => panic!("starting the Kubernetes API server: {e}"),
    }
}

async fn namespace_names(client: kube::Client) -> Vec<String> {
    Api::<Namespace>::all(client)
        .list(&ListParams::default())
        .await
        .expect("list namespaces")
        .items
        .iter()
        .map(|ns| ns.name_any())
        .collect()
}

#[tokio::test]
async fn lists_the_system_namespaces() {
    let k8s = start().await;
    let names = namespace_names(k8s.client()).await;
    assert!(
        names.contains(&"default".to_string()),
        "namespaces: {names:?}"
    );
    assert!(
        names.contains(&"kube-system".to_string()),
        "namespaces: {names:?}"
    );
}

#[tokio::test]
async fn server_side_apply_of_a_config_map_records_the_field_manager() {
    let k8s = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(k8s.client(), "default");
    let desired = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": "settings" },
        "data": { "mode": "fast", "replicas": "2" },
    });
    cms.patch(
        "settings",
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .expect("server-side apply");

    let cm = cms.get("settings").await.expect("read back the ConfigMap");
    let data = cm.data.clone().unwrap_or_default();
    assert_eq!(
        data,
        BTreeMap::from([
            ("mode".to_string(), "fast".to_string()),
            ("replicas".to_string(), "2".to_string())
        ])
    );
    let managers: Vec<(String, String)> = cm
        .managed_fields()
        .iter()
        .map(|f| {
            (
                f.manager.clone().unwrap_or_default(),
                f.operation.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(managers, vec![(MANAGER.to_string(), "Apply".to_string())]);

    // Applying again without a field drops it: the manager owns the object's shape.
    let smaller = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": "settings" },
        "data": { "mode": "slow" },
    });
    cms.patch(
        "settings",
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&smaller),
    )
    .await
    .expect("second apply");
    let data = cms
        .get("settings")
        .await
        .expect("read back")
        .data
        .unwrap_or_default();
    assert_eq!(
        data,
        BTreeMap::from([("mode".to_string(), "slow".to_string())])
    );
}

fn widget_crd() -> serde_json::Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "widgets.test.realtime.dev" },
        "spec": {
            "group": "test.realtime.dev",
            "scope": "Namespaced",
            "names": { "plural": "widgets", "singular": "widget", "kind": "Widget" },
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "subresources": { "status": {} },
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "properties": { "message": { "type": "string" } },
                        },
                        "status": {
                            "type": "object",
                            "properties": { "phase": { "type": "string" } },
                        },
                    },
                }},
            }],
        },
    })
}

/// The next applied object from the watch that satisfies `wanted` (a watch may
/// also report intermediate writes, such as managedFields-only updates).
async fn next_widget_where<S>(
    events: &mut S,
    what: &str,
    wanted: impl Fn(&DynamicObject) -> bool,
) -> DynamicObject
where
    S: futures::Stream<Item = Result<DynamicObject, watcher::Error>> + Unpin,
{
    let wait = async {
        loop {
            let obj = events
                .next()
                .await
                .expect("the watch stream goes on")
                .expect("a watch event, not an error");
            if wanted(&obj) {
                return obj;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("no watch event with {what} within 20 s"))
}

fn message(obj: &DynamicObject) -> Option<&str> {
    obj.data.pointer("/spec/message").and_then(|v| v.as_str())
}

fn phase(obj: &DynamicObject) -> Option<&str> {
    obj.data.pointer("/status/phase").and_then(|v| v.as_str())
}

#[tokio::test]
async fn custom_resource_is_established_created_and_watched() {
    let k8s = start().await;
    let client = k8s.client();

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd_name = "widgets.test.realtime.dev";
    crds.patch(
        crd_name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(widget_crd()),
    )
    .await
    .expect("apply the CRD");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds.clone(), crd_name, conditions::is_crd_established()),
    )
    .await
    .expect("CRD Established within 30 s")
    .expect("watching the CRD");

    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("test.realtime.dev", "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);

    let mut events = watcher(widgets.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();

    let apply = |msg: &str| {
        json!({
            "apiVersion": "test.realtime.dev/v1",
            "kind": "Widget",
            "metadata": { "name": "w1" },
            "spec": { "message": msg },
        })
    };
    widgets
        .patch(
            "w1",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(apply("hello")),
        )
        .await
        .expect("create the Widget");

    let seen = next_widget_where(&mut events, "message hello", |w| {
        message(w) == Some("hello")
    })
    .await;
    assert_eq!(seen.name_any(), "w1");

    widgets
        .patch(
            "w1",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(apply("changed")),
        )
        .await
        .expect("modify the Widget");
    next_widget_where(&mut events, "message changed", |w| {
        message(w) == Some("changed")
    })
    .await;

    // The status subresource: the main resource ignores status, /status sets it.
    let mut with_status = apply("changed");
    with_status["status"] = json!({ "phase": "Ignored" });
    let stored = widgets
        .patch(
            "w1",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(with_status),
        )
        .await
        .expect("apply with a status");
    assert_eq!(
        phase(&stored),
        None,
        "status written through the main resource: {stored:?}"
    );
    let status = json!({ "status": { "phase": "Ready" } });
    widgets
        .patch_status("w1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch the status subresource");
    let seen = next_widget_where(&mut events, "phase Ready", |w| phase(w) == Some("Ready")).await;
    assert_eq!(message(&seen), Some("changed"));
}

fn process_is_gone(pid: u32) -> bool {
    // A reaped process has no /proc entry; a reused pid would run something else.
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Err(_) => true,
        Ok(cmdline) => {
            let cmdline = String::from_utf8_lossy(&cmdline);
            !(cmdline.contains("kube-apiserver") || cmdline.contains("etcd"))
        }
    }
}

#[tokio::test]
async fn two_servers_run_side_by_side_and_drop_frees_everything() {
    let (a, b) = tokio::join!(start(), start());
    assert_ne!(a.ports().apiserver, b.ports().apiserver);
    assert_ne!(a.admin_token(), b.admin_token());
    assert!(namespace_names(a.client())
        .await
        .contains(&"default".to_string()));
    assert!(namespace_names(b.client())
        .await
        .contains(&"default".to_string()));

    // Each server only knows its own admin token.
    let cross = a.client_with_token(b.admin_token()).expect("client");
    let err = Api::<Namespace>::all(cross)
        .list(&ListParams::default())
        .await
        .expect_err("b's token is unknown to a");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 401),
        "{err:?}"
    );

    let ports = a.ports();
    let pids = a.pids();
    let dir = a.dir().to_path_buf();
    drop(a);

    for port in [ports.apiserver, ports.etcd_client, ports.etcd_peer] {
        TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("port {port} still taken after drop: {e}"));
    }
    assert!(
        process_is_gone(pids.apiserver),
        "kube-apiserver {} still runs",
        pids.apiserver
    );
    assert!(process_is_gone(pids.etcd), "etcd {} still runs", pids.etcd);
    assert!(!dir.exists(), "{} still exists", dir.display());

    // The other one is unaffected.
    assert!(namespace_names(b.client())
        .await
        .contains(&"kube-system".to_string()));
}

#[tokio::test]
async fn extra_static_tokens_authenticate_and_rbac_applies() {
    let k8s = KubeApiServer::builder()
        .token("viewer-token-0123456789", "viewer", &["viewers"])
        .start()
        .await
        .unwrap_or_else(|e| panic!("starting the Kubernetes API server: {e}"));
    let viewer = k8s
        .client_with_token("viewer-token-0123456789")
        .expect("client");
    let namespaces: Api<Namespace> = Api::all(viewer.clone());

    let err = namespaces
        .list(&ListParams::default())
        .await
        .expect_err("no RBAC grant yet");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err:?}"
    );

    // Grant the group a role, as an admin would. (Not the built-in `view`: it
    // is an aggregated role, filled in by kube-controller-manager, which this
    // harness does not run.)
    let admin = k8s.client();
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": { "name": "namespace-reader" },
        "rules": [{ "apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"] }],
    });
    Api::<ClusterRole>::all(admin.clone())
        .patch(
            "namespace-reader",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&role),
        )
        .await
        .expect("create the ClusterRole");
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": { "name": "viewers" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "namespace-reader" },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "viewers" }],
    });
    Api::<ClusterRoleBinding>::all(admin)
        .patch(
            "viewers",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&binding),
        )
        .await
        .expect("bind the ClusterRole");

    // The RBAC authorizer works from a cache: the grant shows up shortly.
    let mut last = None;
    for _ in 0..50 {
        match namespaces.list(&ListParams::default()).await {
            Ok(list) => {
                assert!(list.items.iter().any(|ns| ns.name_any() == "default"));
                // Only what was granted: ConfigMaps stay forbidden.
                let cms: Api<ConfigMap> = Api::namespaced(viewer, "default");
                let err = cms
                    .list(&ListParams::default())
                    .await
                    .expect_err("not granted");
                assert!(
                    matches!(&err, kube::Error::Api(s) if s.code == 403),
                    "{err:?}"
                );
                return;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the viewer still cannot list namespaces: {last:?}");
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let out = std::process::Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("running `{kubectl}` (set KUBECTL or put kubectl on PATH): {e}")
        });
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn kubectl_works_with_the_kubeconfig() {
    let k8s = start().await;
    let out = kubectl(k8s.kubeconfig_path(), &["get", "namespaces", "-o", "name"]);
    assert!(out.lines().any(|l| l == "namespace/kube-system"), "{out}");
}

#[test]
fn a_panicking_test_still_stops_the_server() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen_in_thread = seen.clone();
    let outcome = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
        rt.block_on(async {
            let k8s = start().await;
            *seen_in_thread.lock().unwrap() =
                Some((k8s.pids(), k8s.ports(), k8s.dir().to_path_buf()));
            panic!("a failing test");
        })
    })
    .join();
    assert!(outcome.is_err(), "the thread panicked");

    let (pids, ports, dir) = seen.lock().unwrap().take().expect("the server had started");
    assert!(
        process_is_gone(pids.apiserver),
        "kube-apiserver {} still runs",
        pids.apiserver
    );
    assert!(process_is_gone(pids.etcd), "etcd {} still runs", pids.etcd);
    TcpListener::bind(("127.0.0.1", ports.apiserver)).expect("the API server port is free");
    assert!(!dir.exists(), "{} still exists", dir.display());
}

//! The Helm chart, as users get it: `helm lint --strict` and `helm template`
//! (the real helm) with several value sets, the values schema rejecting a bad
//! value by name, the chart's CRDs and version in step with the crates, the
//! README's configuration reference in step with the schemas, and the rendered
//! chart applied to a real API server, where the operator binary runs with the
//! environment of the chart's Deployment and a token of the chart's
//! ServiceAccount (not admin) and reconciles every sample without one
//! forbidden request.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::runtime::{conditions, wait::await_condition};
use kube::{Api, Client};
use realtime_harness::process::command_with_env;
use realtime_operator::crd::{Condition, RealtimeServer};
use realtime_tests::chart::{
    apply_all, chart_dir, documents, find, helm, operator_bin, repo_root, service_account_token,
    template,
};
use realtime_tests::k8s::KubeApiServer;
use realtime_tests::kubelet::{self, Secrets};
use realtime_tests::server::{free_port, http_get};
use realtime_tests::{LoggedProcess, TempPostgres};
use serde_json::{json, Value};

const RELEASE: &str = "rt";
const OPERATOR_NS: &str = "realtime-system";
/// `<release>-<chart>`: the Deployment, ServiceAccount and RBAC objects.
const FULLNAME: &str = "rt-realtime-operator";
const VERSION: &str = env!("CARGO_PKG_VERSION");
const WAIT: Duration = Duration::from_secs(45);

/// The value sets every check runs with.
fn value_sets() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("default", vec![]),
        ("namespaced", vec!["--set", "watchNamespace=apps"]),
        (
            "serviceMonitor",
            vec!["--set", "metrics.serviceMonitor.enabled=true"],
        ),
        (
            "monitoring",
            vec![
                "--set",
                "metrics.podMonitor.enabled=true",
                "--set",
                "metrics.prometheusRule.enabled=true",
                "--set",
                "metrics.grafanaDashboard.enabled=true",
            ],
        ),
        (
            "custom image",
            vec![
                "--set",
                "image.repository=registry.example.com/ops/realtime-operator",
                "--set",
                "image.tag=1.2.3",
                "--set",
                "serverImage.repository=registry.example.com/ops/realtime-server",
                "--set",
                "serverImage.tag=1.2.3",
            ],
        ),
        (
            "networkPolicy",
            vec![
                "--set",
                "networkPolicy.enabled=true",
                "--set",
                "networkPolicy.databases.cidrs={10.20.0.0/16}",
            ],
        ),
    ]
}

fn render(extra: &[&str]) -> Vec<Value> {
    let out = template(RELEASE, OPERATOR_NS, extra)
        .unwrap_or_else(|e| panic!("helm template {extra:?} failed:\n{e}"));
    documents(&out)
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn container(docs: &[Value]) -> Value {
    find(docs, "Deployment", FULLNAME)["spec"]["template"]["spec"]["containers"][0].clone()
}

fn env_of(container: &Value) -> BTreeMap<String, Value> {
    container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

#[test]
fn helm_lint_strict_passes_with_every_value_set() {
    let chart = chart_dir();
    for (name, set) in value_sets() {
        let mut args = vec!["lint", "--strict", chart.to_str().unwrap()];
        args.extend(set.iter());
        let out = helm(&args).unwrap_or_else(|e| panic!("helm lint --strict ({name}):\n{e}"));
        assert!(
            out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{name}: {out}"
        );
    }
}

#[test]
fn default_values_render_a_cluster_wide_least_privilege_operator() {
    let docs = render(&[]);
    assert_eq!(
        kinds(&docs),
        BTreeSet::from(
            [
                "ClusterRole",
                "ClusterRoleBinding",
                "Deployment",
                "Role",
                "RoleBinding",
                "Service",
                "ServiceAccount"
            ]
            .map(String::from)
        ),
        "no ServiceMonitor or NetworkPolicy unless asked for"
    );
    let deploy = find(&docs, "Deployment", FULLNAME);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], FULLNAME);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = container(&docs);
    assert_eq!(
        c["image"],
        format!("ghcr.io/realtime-dev/realtime-operator:{VERSION}")
    );
    assert_eq!(c["args"], json!(["run"]));
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let env = env_of(&c);
    assert_eq!(
        env["REALTIME_SERVER_IMAGE"]["value"],
        realtime_operator::reconcile::DEFAULT_SERVER_IMAGE,
        "the chart and the operator binary default to the same server image"
    );
    assert_eq!(env["WATCH_NAMESPACE"]["value"], "");
    assert_eq!(
        env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace",
        "the leader Lease lives in the release namespace"
    );
    let svc = find(&docs, "Service", &format!("{FULLNAME}-metrics"));
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics");

    let binding = find(&docs, "ClusterRoleBinding", FULLNAME);
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": FULLNAME, "namespace": OPERATOR_NS}])
    );
    // Least privilege: no wildcard, and Secrets are only read.
    let role = find(&docs, "ClusterRole", FULLNAME);
    for rule in role["rules"].as_array().unwrap() {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(
                !rule[field].as_array().unwrap().contains(&json!("*")),
                "{rule}"
            );
        }
        if rule["resources"]
            .as_array()
            .unwrap()
            .contains(&json!("secrets"))
        {
            assert_eq!(rule["verbs"], json!(["get", "list", "watch"]), "{rule}");
        }
    }
    let lease = find(&docs, "Role", &format!("{FULLNAME}-leader-election"));
    assert_eq!(lease["metadata"]["namespace"], OPERATOR_NS);
}

#[test]
fn namespaced_mode_renders_a_role_in_the_watched_namespace_and_no_cluster_role() {
    let docs = render(&["--set", "watchNamespace=apps"]);
    let k = kinds(&docs);
    assert!(
        !k.contains("ClusterRole") && !k.contains("ClusterRoleBinding"),
        "{k:?}"
    );
    let role = find(&docs, "Role", FULLNAME);
    assert_eq!(role["metadata"]["namespace"], "apps");
    let binding = find(&docs, "RoleBinding", FULLNAME);
    assert_eq!(binding["metadata"]["namespace"], "apps");
    assert_eq!(binding["subjects"][0]["namespace"], OPERATOR_NS);
    assert_eq!(
        env_of(&container(&docs))["WATCH_NAMESPACE"]["value"],
        "apps"
    );
}

#[test]
fn service_monitor_and_network_policies_render_when_enabled() {
    let docs = render(&["--set", "metrics.serviceMonitor.enabled=true"]);
    let sm = find(&docs, "ServiceMonitor", FULLNAME);
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");

    let docs = render(&[
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "networkPolicy.databases.cidrs={10.20.0.0/16}",
        "--set",
        "watchNamespace=apps",
    ]);
    let op = find(&docs, "NetworkPolicy", FULLNAME);
    assert_eq!(op["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    let egress = op["spec"]["egress"].as_array().unwrap();
    let ports: Vec<Vec<i64>> = egress
        .iter()
        .map(|e| {
            e["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["port"].as_i64().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(
        ports,
        vec![vec![443, 6443], vec![5432], vec![53, 53]],
        "egress: the API server, the databases, DNS; nothing else"
    );
    assert_eq!(egress[1]["to"][0]["ipBlock"]["cidr"], "10.20.0.0/16");
    let servers = find(&docs, "NetworkPolicy", &format!("{FULLNAME}-servers"));
    assert_eq!(servers["metadata"]["namespace"], "apps");
    assert_eq!(
        servers["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "realtime-server"
    );
    assert_eq!(servers["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(servers["spec"]["ingress"][0]["ports"][0]["port"], 4000);
}

#[test]
fn a_custom_image_is_used_for_the_operator_and_its_servers() {
    let (_, set) = value_sets().remove(4);
    let docs = render(&set);
    let c = container(&docs);
    assert_eq!(
        c["image"],
        "registry.example.com/ops/realtime-operator:1.2.3"
    );
    assert_eq!(
        env_of(&c)["REALTIME_SERVER_IMAGE"]["value"],
        "registry.example.com/ops/realtime-server:1.2.3"
    );
}

#[test]
fn a_misspelled_or_mistyped_value_fails_with_a_message_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "image:\n  reposiotry: example.com/op\nreplicaCount: two\n\
         metrics:\n  serviceMonitor:\n    enabeld: true\n",
    )
    .unwrap();
    let err = template(RELEASE, OPERATOR_NS, &["-f", bad.to_str().unwrap()])
        .expect_err("the schema rejects the values");
    for named in ["reposiotry", "replicaCount", "enabeld"] {
        assert!(err.contains(named), "the message names {named}:\n{err}");
    }
    let err = template(
        RELEASE,
        OPERATOR_NS,
        &["--set", "watchNamespace=Not_A_Namespace"],
    )
    .expect_err("not a namespace name");
    assert!(err.contains("watchNamespace"), "{err}");
    let err = template(
        RELEASE,
        OPERATOR_NS,
        &["--set", "image.pullPolicy=Sometimes"],
    )
    .expect_err("not a pull policy");
    assert!(err.contains("image.pullPolicy"), "{err}");
}

#[test]
fn the_chart_ships_the_same_crd_bytes_as_crds_dir() {
    let name = "realtimeservers.realtime.dev.yaml";
    let top = std::fs::read(repo_root().join("crds").join(name)).unwrap();
    let path = chart_dir().join("crds").join(name);
    assert!(
        !std::fs::symlink_metadata(&path).unwrap().is_symlink(),
        "a symlink does not survive helm package: copy the file"
    );
    let chart = std::fs::read(&path).unwrap();
    assert!(
        top == chart,
        "charts/realtime-operator/crds/{name} differs from crds/{name}: run \
         `cp crds/{name} charts/realtime-operator/crds/`"
    );
    // And helm ships it: --include-crds renders it first.
    let docs = render(&["--include-crds"]);
    assert_eq!(docs[0]["kind"], "CustomResourceDefinition");
    assert_eq!(docs[0]["metadata"]["name"], "realtimeservers.realtime.dev");
}

#[test]
fn the_chart_is_versioned_with_the_crates() {
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(
        chart["version"].as_str(),
        Some(VERSION),
        "Chart.yaml version"
    );
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(VERSION),
        "Chart.yaml appVersion"
    );
}

/// The rows of the README table under `heading`: first cell (without
/// backticks) -> second cell.
fn readme_table(readme: &str, heading: &str) -> BTreeMap<String, String> {
    let mut lines = readme.lines().skip_while(|l| l.trim() != heading);
    assert!(lines.next().is_some(), "README has no heading {heading:?}");
    let mut rows = BTreeMap::new();
    for line in lines.take_while(|l| !l.starts_with('#')) {
        let Some(row) = line.strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<&str> = row.split(" | ").collect();
        let key = cells[0].trim_end_matches('`').to_string();
        let default = cells
            .get(1)
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        assert!(rows.insert(key.clone(), default).is_none(), "{key} twice");
    }
    rows
}

/// Leaf paths of a JSON schema's `properties` (an object with properties is
/// descended into unless its path is in `opaque`), with their schema.
fn leaves(prefix: &str, schema: &Value, opaque: &[&str], out: &mut BTreeMap<String, Value>) {
    match schema["properties"].as_object() {
        Some(props) if !opaque.contains(&prefix) => {
            for (k, v) in props {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&p, v, opaque, out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), schema.clone());
        }
    }
}

/// A default as the README writes it: `value` in backticks, JSON for lists.
fn readme_default(v: &Value) -> String {
    match v {
        Value::String(s) if s.is_empty() => "`\"\"`".into(),
        Value::String(s) => format!("`{s}`"),
        other => format!("`{other}`"),
    }
}

#[test]
fn the_readme_documents_every_chart_value_and_every_resource_field() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();

    // Chart values: the schema's leaves, with values.yaml's defaults.
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap(),
    )
    .unwrap();
    let mut keys = BTreeMap::new();
    leaves("", &schema, &[], &mut keys);
    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap())
            .unwrap();
    let values = serde_json::to_value(values).unwrap();
    let table = readme_table(&readme, "### Chart values");
    assert_eq!(
        table.keys().collect::<Vec<_>>(),
        keys.keys().collect::<Vec<_>>(),
        "README's chart values table and values.schema.json list different keys"
    );
    for key in keys.keys() {
        let default = key.split('.').fold(&values, |v, k| &v[k]);
        assert!(!default.is_null(), "values.yaml has no default for {key}");
        // Maps and non-empty lists are described in words, not compared.
        let comparable = match default {
            Value::Object(_) => false,
            Value::Array(a) => a.is_empty(),
            _ => true,
        };
        if comparable {
            assert_eq!(
                table[key],
                readme_default(default),
                "README default of {key}"
            );
        }
    }

    // The resource: the CRD's spec fields, with their defaults.
    let crd: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join("crds/realtimeservers.realtime.dev.yaml"))
            .unwrap(),
    )
    .unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mut fields = BTreeMap::new();
    // Kubernetes' own types are documented by Kubernetes.
    leaves(
        "spec",
        spec,
        &[
            "spec.resources",
            "spec.affinity",
            "spec.podTemplate.securityContext",
            "spec.podTemplate.containerSecurityContext",
        ],
        &mut fields,
    );
    let table = readme_table(&readme, "### RealtimeServer reference");
    assert_eq!(
        table.keys().collect::<Vec<_>>(),
        fields.keys().collect::<Vec<_>>(),
        "README's RealtimeServer table and the CRD list different fields"
    );
    for (field, schema) in &fields {
        if let Some(d) = schema.get("default") {
            assert_eq!(table[field], readme_default(d), "README default of {field}");
        }
    }
}

// ---------------------------------------------------------------------------
// On a real API server.

/// The cluster with the rendered chart applied (CRDs included) in
/// `realtime-system`, and a database.
struct Installed {
    k8s: KubeApiServer,
    admin: Client,
    pg: TempPostgres,
    db: tokio_postgres::Client,
    docs: Vec<Value>,
}

async fn install(values: &[&str], namespaces: &[&str]) -> Installed {
    let (pg, db) = TempPostgres::with_schema(
        "CREATE TABLE messages (id bigint PRIMARY KEY, body text);
         CREATE TABLE rooms (id bigint PRIMARY KEY, name text);
         CREATE TABLE profiles (id bigint PRIMARY KEY, name text);",
    )
    .await
    .expect("PostgreSQL with the schema");
    let k8s = KubeApiServer::start().await.expect("start the API server");
    let admin = k8s.client();
    let ns_docs: Vec<Value> = std::iter::once(OPERATOR_NS)
        .chain(namespaces.iter().copied())
        .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}))
        .collect();
    apply_all(&admin, &ns_docs, "default").await.unwrap();

    let mut args = vec!["--include-crds"];
    args.extend_from_slice(values);
    let docs = render(&args);
    let applied = apply_all(&admin, &docs, OPERATOR_NS)
        .await
        .unwrap_or_else(|e| panic!("the API server refused the rendered chart: {e}"));
    assert!(
        applied.contains(&format!("Deployment/{FULLNAME}")),
        "{applied:?}"
    );
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    tokio::time::timeout(
        Duration::from_secs(20),
        await_condition(
            crds,
            "realtimeservers.realtime.dev",
            conditions::is_crd_established(),
        ),
    )
    .await
    .expect("CRD established in time")
    .expect("watch the CRD");
    Installed {
        k8s,
        admin,
        pg,
        db,
        docs,
    }
}

impl Installed {
    /// Starts the operator binary as the chart's Deployment would: its
    /// container's environment (fieldRefs resolved for a pod name), the
    /// ServiceAccount's token, and only the health address moved to loopback.
    async fn start_operator(&self) -> (LoggedProcess, u16) {
        let deploy: Deployment =
            serde_json::from_value(find(&self.docs, "Deployment", FULLNAME).clone()).unwrap();
        let pod = deploy.spec.unwrap().template.spec.unwrap();
        let sa = pod.service_account_name.clone().unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.args.as_deref(), Some(&["run".to_string()][..]));
        let mut env = kubelet::resolve_env(
            c.env.as_ref().unwrap(),
            kubelet::Pod {
                name: &format!("{FULLNAME}-7d9f8b-x2x4q"),
                namespace: OPERATOR_NS,
                secrets: &Secrets::new(),
            },
        );
        let port = free_port();
        let health: SocketAddr = ([127, 0, 0, 1], port).into();
        env.insert("HEALTH_ADDRESS".into(), health.to_string());

        let token = service_account_token(&self.admin, OPERATOR_NS, &sa).await;
        let kubeconfig = self
            .k8s
            .write_kubeconfig_for_token("operator.kubeconfig", &token)
            .unwrap();
        env.insert("KUBECONFIG".into(), kubeconfig.display().to_string());
        let mut cmd = command_with_env(operator_bin(), &env);
        cmd.arg("run");
        let mut op = LoggedProcess::spawn(cmd, "realtime-operator").expect("spawn");
        tokio::task::block_in_place(|| {
            op.wait_for("the Lease (its log line)", WAIT, |op| {
                log_has(op, "leading: starting the controller").then_some(())
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
        (op, port)
    }

    /// Applies a sample from operator/examples in `ns`, pointed at the test's
    /// database (only `spec.database.host` and `port` change); returns the
    /// RealtimeServer's name.
    async fn apply_sample(&self, file: &str, ns: &str) -> String {
        let text =
            std::fs::read_to_string(repo_root().join("operator/examples").join(file)).unwrap();
        let mut docs = documents(&text);
        let mut name = None;
        for d in &mut docs {
            d["metadata"]["namespace"] = json!(ns);
            if d["kind"] == "RealtimeServer" {
                d["spec"]["database"]["host"] = json!("127.0.0.1");
                d["spec"]["database"]["port"] = json!(self.pg.port());
                name = d["metadata"]["name"].as_str().map(String::from);
            }
        }
        apply_all(&self.admin, &docs, ns)
            .await
            .unwrap_or_else(|e| panic!("the API server refused {file}: {e}"));
        name.unwrap_or_else(|| panic!("{file} has no RealtimeServer"))
    }

    async fn wait_condition(
        &self,
        op: &LoggedProcess,
        ns: &str,
        name: &str,
        type_: &str,
        reason: &str,
    ) -> Condition {
        let api: Api<RealtimeServer> = Api::namespaced(self.admin.clone(), ns);
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        loop {
            let c = api
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|o| o.status)
                .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == type_));
            if let Some(c) = &c {
                if c.status == "True" && c.reason == reason {
                    return c.clone();
                }
            }
            last = c.or(last);
            assert!(
                Instant::now() < deadline,
                "{ns}/{name}: no {type_}=True ({reason}); last: {last:?}\noperator log:\n{}",
                op.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The kubelet's part: the StatefulSet's pods, reported ready.
    async fn run_pods(&self, op: &LoggedProcess, ns: &str, name: &str) {
        let sts: Api<StatefulSet> = Api::namespaced(self.admin.clone(), ns);
        let deadline = Instant::now() + WAIT;
        let sts = loop {
            if let Some(sts) = sts.get_opt(name).await.unwrap() {
                break sts;
            }
            assert!(
                Instant::now() < deadline,
                "{ns}/{name}: no StatefulSet; operator log:\n{}",
                op.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let replicas = sts.spec.as_ref().unwrap().replicas.unwrap_or(1);
        let template = sts.spec.unwrap().template;
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), ns);
        for i in 0..replicas {
            kubelet::report_ready(&pods, &format!("{name}-{i}"), &template).await;
        }
    }

    async fn reconciled(&self, op: &LoggedProcess, ns: &str, name: &str) -> RealtimeServer {
        self.wait_condition(op, ns, name, "DatabaseReady", "Connected")
            .await;
        self.wait_condition(op, ns, name, "SlotsReady", "Ready")
            .await;
        self.run_pods(op, ns, name).await;
        self.wait_condition(op, ns, name, "Available", "AllReplicasReady")
            .await;
        let api: Api<RealtimeServer> = Api::namespaced(self.admin.clone(), ns);
        api.get(name).await.unwrap()
    }

    async fn query_strings(&self, sql: &str) -> Vec<String> {
        self.db
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|r| r.get(0))
            .collect()
    }
}

fn log_has(op: &LoggedProcess, text: &str) -> bool {
    op.log().contains(text)
}

/// No request of the operator was refused by RBAC.
fn assert_never_forbidden(op: &LoggedProcess) {
    let log = op.log();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the operator was refused a request:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_chart_reconciles_every_sample_with_its_service_account_never_forbidden() {
    let env = install(&[], &[]).await;
    let (mut op, port) = env.start_operator().await;

    let mut names = Vec::new();
    for file in [
        "minimal.yaml",
        "all-tables.yaml",
        "chosen-tables-full.yaml",
        "secured.yaml",
    ] {
        names.push(env.apply_sample(file, "default").await);
    }
    let mut statuses = BTreeMap::new();
    for name in &names {
        let obj = env.reconciled(&op, "default", name).await;
        let status = obj.status.clone().unwrap();
        assert_eq!(
            status.ready_replicas, obj.spec.replicas,
            "{name}: {status:?}"
        );
        assert_eq!(status.slots.len() as i32, obj.spec.replicas, "{name}");
        statuses.insert(name.clone(), status);
    }

    // What each sample is for, as PostgreSQL and the pods see it (names with
    // a `-` get a hash suffix: status says which).
    let all = env
        .query_strings("SELECT pubname::text FROM pg_publication WHERE puballtables ORDER BY 1")
        .await;
    assert_eq!(
        all,
        vec![statuses["all-tables"].publication.clone().unwrap()]
    );
    let full = env
        .query_strings(
            "SELECT relname::text FROM pg_class WHERE relreplident = 'f' AND relkind = 'r' \
             ORDER BY 1",
        )
        .await;
    assert_eq!(full, vec!["messages", "rooms"], "REPLICA IDENTITY FULL");
    let slots = env
        .query_strings("SELECT slot_name::text FROM pg_replication_slots ORDER BY 1")
        .await;
    let mut reported: Vec<String> = statuses
        .values()
        .flat_map(|s| s.slots.iter().map(|s| s.name.clone()))
        .collect();
    reported.sort();
    assert_eq!(slots, reported, "one slot per replica, as status reports");
    assert_eq!(slots.len(), 5, "{slots:?}");
    let sts: Api<StatefulSet> = Api::namespaced(env.admin.clone(), "default");
    let pod = sts
        .get("secured")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(realtime_operator::reconcile::DEFAULT_SERVER_IMAGE),
        "the servers run the chart's default server image"
    );
    let jwt = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "JWT_SECRET")
        .expect("JWT_SECRET");
    let r = jwt
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (r.name.as_str(), r.key.as_str()),
        ("realtime-jwt", "secret")
    );

    // The operator serves its probes and metrics where the chart points them.
    let (code, body) = tokio::task::spawn_blocking(move || http_get(port, "/healthz"))
        .await
        .unwrap()
        .expect("/healthz answers");
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, metrics) = tokio::task::spawn_blocking(move || http_get(port, "/metrics"))
        .await
        .unwrap()
        .expect("/metrics answers");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("realtime_operator_reconciles_total"),
        "{metrics}"
    );

    // Deleting a sample: the finalizer drops its slot, with the same rights.
    let api: Api<RealtimeServer> = Api::namespaced(env.admin.clone(), "default");
    api.delete("minimal", &Default::default()).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while api.get_opt("minimal").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "minimal was not deleted:\n{}",
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let slots = env
        .query_strings(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE '%minimal%'",
        )
        .await;
    assert!(slots.is_empty(), "{slots:?}");

    assert!(op.exited().is_none(), "the operator is still running");
    assert_never_forbidden(&op);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_install_reconciles_its_namespace_only_with_a_role() {
    // With the NetworkPolicies too: the API server accepts them.
    let env = install(
        &[
            "--set",
            "watchNamespace=apps",
            "--set",
            "networkPolicy.enabled=true",
        ],
        &["apps"],
    )
    .await;
    assert!(
        env.docs.iter().any(|d| d["kind"] == "NetworkPolicy"),
        "NetworkPolicies were applied"
    );
    let (mut op, _) = env.start_operator().await;
    // A resource outside the watched namespace first: had the operator seen
    // it, it would have reconciled it before the one in `apps`.
    let outside = env.apply_sample("minimal.yaml", "default").await;
    let inside = env.apply_sample("minimal.yaml", "apps").await;
    env.reconciled(&op, "apps", &inside).await;

    let api: Api<RealtimeServer> = Api::namespaced(env.admin.clone(), "default");
    let ignored = api.get(&outside).await.unwrap();
    assert!(ignored.status.is_none(), "{:?}", ignored.status);
    assert!(
        ignored.metadata.finalizers.is_none(),
        "no finalizer outside"
    );
    let slots = env
        .query_strings("SELECT slot_name::text FROM pg_replication_slots ORDER BY 1")
        .await;
    assert_eq!(slots, vec!["rts_apps_minimal_0"]);
    assert!(op.exited().is_none(), "the operator is still running");
    assert_never_forbidden(&op);
    assert!(log_has(&op, "watching one namespace"), "{}", op.log());
}

#[test]
fn deploy_manifest_is_the_chart_rendered_with_its_defaults() {
    let rendered = template("realtime-operator", "realtime-system", &[]).unwrap();
    let committed =
        std::fs::read_to_string(repo_root().join("deploy/realtime-operator.yaml")).unwrap();
    assert!(
        committed == rendered,
        "deploy/realtime-operator.yaml is stale: run `helm template realtime-operator \
         charts/realtime-operator --namespace realtime-system > deploy/realtime-operator.yaml`"
    );
    let docs = documents(&committed);
    let deploy = find(&docs, "Deployment", "realtime-operator");
    assert_eq!(deploy["metadata"]["namespace"], "realtime-system");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_as_the_readme_says_succeeds_on_the_api_server() {
    let k8s = KubeApiServer::start().await.expect("start the API server");
    let kubeconfig = k8s.kubeconfig_path().to_str().unwrap().to_string();
    let chart = chart_dir();
    // README: helm install realtime-operator charts/realtime-operator
    //   --namespace realtime-system --create-namespace
    let out = tokio::task::spawn_blocking(move || {
        helm(&[
            "install",
            "realtime-operator",
            chart.to_str().unwrap(),
            "--namespace",
            "realtime-system",
            "--create-namespace",
            "--kubeconfig",
            &kubeconfig,
        ])
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("helm install failed:\n{e}\n{}", k8s.log_tails()));
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(
        out.contains("It watches RealtimeServers in every namespace."),
        "NOTES.txt: {out}"
    );
    let crds: Api<CustomResourceDefinition> = Api::all(k8s.client());
    tokio::time::timeout(
        Duration::from_secs(20),
        await_condition(
            crds,
            "realtimeservers.realtime.dev",
            conditions::is_crd_established(),
        ),
    )
    .await
    .expect("the chart's CRD established in time")
    .expect("watch the CRD");
    let deploys: Api<Deployment> = Api::namespaced(k8s.client(), "realtime-system");
    let d = deploys
        .get("realtime-operator")
        .await
        .expect("the Deployment");
    assert_eq!(d.spec.unwrap().replicas, Some(1));
}

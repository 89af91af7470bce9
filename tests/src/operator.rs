//! Helpers for the operator's tests: a real API server with the CRD installed, a
//! real PostgreSQL, the operator's controller running in-process as a task, and
//! waits on what a user would look at (conditions, slots, objects).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::ByteString;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{conditions, wait::await_condition};
use kube::{Api, Client, CustomResourceExt};
use realtime_operator::crd::{Condition, RealtimeServer};
use realtime_operator::metrics::Metrics;
use realtime_operator::reconcile::{Context, Settings};
use serde_json::Value;

use crate::k8s::KubeApiServer;
use crate::TempPostgres;

/// The namespace the tests use.
pub const NS: &str = "default";
/// The image the tests' operator defaults to (nothing pulls it: no kubelet).
pub const IMAGE: &str = "realtime-server:test";

/// `crd` as the API server behind `client` takes it by server-side apply:
/// before Kubernetes 1.23 the schema has no `x-kubernetes-validations` field
/// (the CEL rules; a create drops it, a server-side apply refuses it), so it
/// is taken out there. Newer servers get the CRD as `crds/` has it.
pub async fn crd_for_server(client: &Client, mut crd: Value) -> Value {
    let version = client
        .apiserver_version()
        .await
        .expect("ask the API server its version");
    let minor: u32 = version
        .minor
        .trim_end_matches('+')
        .parse()
        .unwrap_or_else(|_| panic!("API server minor version {:?}", version.minor));
    if version.major == "1" && minor < 23 {
        strip_cel_rules(&mut crd);
    }
    crd
}

fn strip_cel_rules(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("x-kubernetes-validations");
            map.values_mut().for_each(strip_cel_rules);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_cel_rules),
        _ => {}
    }
}

/// Installs the CRD and waits until it is established.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crd_for_server(client, serde_json::to_value(RealtimeServer::crd()).unwrap()).await;
    let name = crd["metadata"]["name"].as_str().unwrap().to_owned();
    crds.patch(
        &name,
        &PatchParams::apply("realtime-test").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply the CRD");
    tokio::time::timeout(
        Duration::from_secs(20),
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await
    .expect("CRD established in time")
    .expect("watch the CRD");
}

/// Polls `f` until it gives `Some`, or panics naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A real API server and PostgreSQL, the CRD installed, and a Secret `db`
/// holding the (unused with trust auth) password under `password`.
pub struct OperatorEnv {
    pub k8s: KubeApiServer,
    pub pg: TempPostgres,
    pub client: Client,
    pub db: tokio_postgres::Client,
    /// The metrics of the controller [`OperatorEnv::run_controller`] started.
    pub metrics: Arc<Metrics>,
    controller: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl OperatorEnv {
    pub async fn start() -> OperatorEnv {
        // No schema: each test creates its tables.
        let (pg, db) = TempPostgres::with_schema("")
            .await
            .expect("start PostgreSQL");
        let k8s = KubeApiServer::start().await.expect("start the API server");
        let client = k8s.client();
        install_crd(&client).await;
        let env = OperatorEnv {
            k8s,
            pg,
            client,
            db,
            metrics: Arc::new(Metrics::default()),
            controller: None,
        };
        env.put_secret("db", "password", "unused-with-trust-auth")
            .await;
        env
    }

    /// The operator's settings in the tests: a short cleanup timeout.
    pub fn settings() -> Settings {
        Settings {
            default_image: Some(IMAGE.into()),
            cleanup_timeout: Duration::from_secs(8),
            watch_namespace: None,
        }
    }

    /// A reconcile context, for driving `reconcile` by hand.
    pub fn context(&self) -> Arc<Context> {
        Arc::new(Context::new(
            self.client.clone(),
            Self::settings(),
            Arc::new(Metrics::default()),
        ))
    }

    /// Starts the controller as a task (stopped on drop).
    pub fn run_controller(&mut self) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(realtime_operator::run::controller(
            self.client.clone(),
            Self::settings(),
            self.metrics.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        self.controller = Some((tx, task));
    }

    pub async fn put_secret(&self, name: &str, key: &str, value: &str) {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), NS);
        let s = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                key.to_string(),
                ByteString(value.as_bytes().to_vec()),
            )])),
            ..Default::default()
        };
        secrets
            .patch(
                name,
                &PatchParams::apply("realtime-test").force(),
                &Patch::Apply(&s),
            )
            .await
            .expect("apply the Secret");
    }

    pub fn api(&self) -> Api<RealtimeServer> {
        Api::namespaced(self.client.clone(), NS)
    }

    /// Creates a RealtimeServer from a JSON spec.
    pub async fn create(&self, name: &str, spec: Value) -> RealtimeServer {
        let obj: RealtimeServer = serde_json::from_value(serde_json::json!({
            "apiVersion": "realtime.dev/v1alpha1",
            "kind": "RealtimeServer",
            "metadata": {"name": name, "namespace": NS},
            "spec": spec,
        }))
        .expect("a valid RealtimeServer");
        self.api()
            .create(&PostParams::default(), &obj)
            .await
            .expect("create the RealtimeServer")
    }

    /// Merges `patch` into the spec.
    pub async fn patch_spec(&self, name: &str, patch: Value) {
        self.api()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "spec": patch })),
            )
            .await
            .expect("patch the spec");
    }

    pub async fn condition(&self, name: &str, type_: &str) -> Option<Condition> {
        let obj = self.api().get_opt(name).await.ok()??;
        obj.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_)
    }

    /// Waits until condition `type_` has `status` and `reason`; returns it.
    pub async fn wait_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> Condition {
        let mut last = None;
        let what = format!("{name}: {type_}={status} ({reason})");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let c = self.condition(name, type_).await;
            if let Some(c) = &c {
                if c.status == status && c.reason == reason {
                    return c.clone();
                }
            }
            last = c.or(last);
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; last seen: {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Logical slot names in PostgreSQL, sorted.
    pub async fn slots(&self) -> Vec<String> {
        self.db
            .query(
                "SELECT slot_name::text FROM pg_replication_slots WHERE plugin = 'pgoutput' ORDER BY 1",
                &[],
            )
            .await
            .expect("list slots")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// The tables of a publication as `schema.table`, sorted; `None` if it does not exist.
    pub async fn publication_tables(&self, name: &str) -> Option<Vec<String>> {
        let exists = self
            .db
            .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
            .await
            .expect("read pg_publication")
            .is_some();
        if !exists {
            return None;
        }
        Some(
            self.db
                .query(
                    "SELECT schemaname || '.' || tablename FROM pg_publication_tables \
                     WHERE pubname = $1 ORDER BY 1",
                    &[&name],
                )
                .await
                .expect("read pg_publication_tables")
                .iter()
                .map(|r| r.get(0))
                .collect(),
        )
    }

    /// The Events about `name`, oldest first, as `kubectl describe` lists
    /// them: (type, reason, note, count), the count 1 unless a series.
    pub async fn events(&self, name: &str) -> Vec<(String, String, String, i32)> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), NS);
        let mut list: Vec<Event> = events
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect();
        list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        list.into_iter()
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                    e.series.map_or(1, |s| s.count),
                )
            })
            .collect()
    }

    /// The value of the sample `series` (name and labels) in the
    /// controller's metrics.
    pub fn metric(&self, series: &str) -> Option<String> {
        self.metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
    }

    /// Reasons of the Events about `name`.
    pub async fn event_reasons(&self, name: &str) -> Vec<(String, String)> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), NS);
        events
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }
}

impl Drop for OperatorEnv {
    fn drop(&mut self) {
        if let Some((tx, task)) = self.controller.take() {
            let _ = tx.send(());
            task.abort();
        }
    }
}

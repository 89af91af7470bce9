//! End to end: the operator, a real API server, a real PostgreSQL and the real
//! `realtime-server` binary. The API server has no kubelet, so this test plays
//! its part: it starts the server with the environment from the StatefulSet's
//! pod template (secrets and the pod name resolved as the kubelet would) and
//! reports the pod ready. A WebSocket client then receives a committed change,
//! and the resource turns Available.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use realtime_tests::kubelet::{self, Secrets};
use realtime_tests::operator::{wait_for, OperatorEnv, NS};
use realtime_tests::server::{free_port, ServerProcess};
use realtime_tests::ws::PhxClient;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_committed_in_postgres_reaches_a_websocket_client_through_the_operators_pod() {
    let mut env = OperatorEnv::start().await;
    env.db
        .batch_execute("CREATE TABLE messages (id bigint PRIMARY KEY, body text)")
        .await
        .unwrap();
    env.run_controller();
    env.create(
        "chat",
        json!({
            "database": {
                "host": "127.0.0.1",
                "port": env.pg.port(),
                "passwordSecretRef": {"name": "db", "key": "password"},
            },
            "publication": {"tables": ["public.messages"]},
            "auth": {"secureChannels": false},
        }),
    )
    .await;
    env.wait_condition("chat", "SlotsReady", "True", "Ready")
        .await;

    // The kubelet's part: the pod's environment, from the StatefulSet.
    let sts: Api<StatefulSet> = Api::namespaced(env.client.clone(), NS);
    let sts = wait_for("the StatefulSet", Duration::from_secs(30), || async {
        sts.get_opt("chat").await.ok().flatten()
    })
    .await;
    let template = sts.spec.unwrap().template;
    let pod_spec = template.spec.clone().unwrap();
    let secrets = Secrets::from([(
        "db".to_string(),
        BTreeMap::from([("password".to_string(), "unused-with-trust-auth".to_string())]),
    )]);
    let mut vars = kubelet::resolve_env(
        pod_spec.containers[0].env.as_ref().unwrap(),
        kubelet::Pod {
            name: "chat-0",
            namespace: NS,
            secrets: &secrets,
        },
    );
    assert_eq!(vars["SLOT_NAME"], "rts_default_chat_{ordinal}");
    // Only where it listens differs from the pod: a free loopback port.
    vars.insert("PORT".into(), free_port().to_string());
    vars.insert("BIND_ADDRESS".into(), "127.0.0.1".into());
    vars.insert("RUST_LOG".into(), "info".into());
    let server = tokio::task::spawn_blocking(move || ServerProcess::start(vars))
        .await
        .unwrap();

    // The pod object, reported ready as the kubelet would once /readyz answers.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), NS);
    kubelet::report_ready(&pods, "chat-0", &template).await;

    let c = env
        .wait_condition("chat", "Available", "True", "AllReplicasReady")
        .await;
    assert!(c.message.contains("1/1"), "{c:?}");
    let obj = env.api().get("chat").await.unwrap();
    let status = obj.status.unwrap();
    assert_eq!(status.ready_replicas, 1);
    assert_eq!(status.slots[0].name, "rts_default_chat_0");

    // A client receives a change.
    let mut client = PhxClient::connect(&server.ws_url("1.0.0"))
        .await
        .expect("connect");
    let reply = client.join("realtime:public:messages", json!({})).await;
    assert_eq!(reply.payload["status"], "ok", "{reply:?}");
    env.db
        .batch_execute("INSERT INTO messages VALUES (1, 'hello')")
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(20), client.next_event())
        .await
        .unwrap_or_else(|_| panic!("no change within 20s; server log:\n{}", server.log()));
    assert_eq!(m.event, "INSERT", "{m:?}");
    assert_eq!(m.payload["record"]["body"], "hello", "{m:?}");

    // The server streams from the operator's slot.
    let active: bool = env
        .db
        .query_one(
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'rts_default_chat_0'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(active, "the server streams from the operator's slot");
}

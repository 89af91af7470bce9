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

/// Starts the server of pod `name` as the kubelet would (its environment
/// from the StatefulSet's template, on a free loopback port) and reports the
/// pod ready once it is.
async fn start_pod(
    env: &OperatorEnv,
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
    name: &'static str,
) -> ServerProcess {
    let secrets = Secrets::from([(
        "db".to_string(),
        BTreeMap::from([("password".to_string(), "unused-with-trust-auth".to_string())]),
    )]);
    let pod_spec = template.spec.clone().unwrap();
    let mut vars = kubelet::resolve_env(
        pod_spec.containers[0].env.as_ref().unwrap(),
        kubelet::Pod {
            name,
            namespace: NS,
            secrets: &secrets,
        },
    );
    vars.insert("PORT".into(), free_port().to_string());
    vars.insert("BIND_ADDRESS".into(), "127.0.0.1".into());
    vars.insert("RUST_LOG".into(), "info".into());
    let server = tokio::task::spawn_blocking(move || ServerProcess::start(vars))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), NS);
    kubelet::report_ready(&pods, name, template).await;
    server
}

/// Reads `c`'s frames until one satisfies `hit`.
async fn until_frame(
    c: &mut PhxClient,
    what: &str,
    hit: impl Fn(&realtime_tests::ws::Msg) -> bool,
) -> realtime_tests::ws::Msg {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(!left.is_zero(), "never received {what}");
        if let Ok(m) = c.next_within(left).await {
            if hit(&m) {
                return m;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_are_one_service_broadcast_and_presence_cross_pods() {
    let mut env = OperatorEnv::start().await;
    env.db
        .batch_execute("CREATE TABLE messages (id bigint PRIMARY KEY, body text)")
        .await
        .unwrap();
    env.run_controller();
    env.create(
        "chat",
        json!({
            "replicas": 2,
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
    let sts: Api<StatefulSet> = Api::namespaced(env.client.clone(), NS);
    let sts = wait_for("the StatefulSet", Duration::from_secs(30), || async {
        sts.get_opt("chat").await.ok().flatten()
    })
    .await;
    assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(2));
    let template = sts.spec.unwrap().template;
    let env_vars = template.spec.as_ref().unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let cluster = env_vars
        .iter()
        .find(|e| e.name == "CLUSTER_NAME")
        .and_then(|e| e.value.clone());
    assert_eq!(cluster.as_deref(), Some("rtc_default_chat"), "{env_vars:?}");

    // The kubelet's part, for both pods.
    let pod0 = start_pod(&env, &template, "chat-0").await;
    let pod1 = start_pod(&env, &template, "chat-1").await;
    let c = env
        .wait_condition("chat", "Available", "True", "AllReplicasReady")
        .await;
    assert!(c.message.contains("2/2"), "{c:?}");

    // One user on each pod, in one room.
    let topic = "realtime:room";
    let config = |key: &str| json!({"config": {"broadcast": {"self": false, "ack": true}, "presence": {"key": key}}});
    let mut alice = PhxClient::connect(&pod0.ws_url("2.0.0")).await.unwrap();
    let mut bob = PhxClient::connect(&pod1.ws_url("2.0.0")).await.unwrap();
    assert_eq!(
        alice.join(topic, config("alice")).await.payload["status"],
        "ok"
    );
    assert_eq!(bob.join(topic, config("bob")).await.payload["status"], "ok");

    // Presence crosses: bob on pod 1 sees alice of pod 0 join.
    let r = alice
        .push(
            topic,
            "presence",
            json!({"type": "presence", "event": "track", "payload": {"name": "alice"}}),
            Some("1"),
        )
        .await;
    alice.expect_reply(&r).await;
    let diff = until_frame(&mut bob, "alice's presence on pod 1", |m| {
        m.event == "presence_diff" && m.payload["joins"].get("alice").is_some()
    })
    .await;
    assert_eq!(diff.payload["joins"]["alice"]["metas"][0]["name"], "alice");

    // A broadcast crosses: sent on pod 1 (acknowledged once the cluster has
    // it), received on pod 0.
    let r = bob
        .push(
            topic,
            "broadcast",
            json!({"type": "broadcast", "event": "msg", "payload": {"text": "hi from pod 1"}}),
            Some("2"),
        )
        .await;
    assert_eq!(bob.expect_reply(&r).await.payload["status"], "ok");
    let m = until_frame(&mut alice, "bob's broadcast on pod 0", |m| {
        m.event == "broadcast"
    })
    .await;
    assert_eq!(m.payload["payload"]["text"], "hi from pod 1", "{m:?}");

    // Alice's socket goes away: her presence leaves on pod 1 too.
    drop(alice);
    until_frame(&mut bob, "alice's leave on pod 1", |m| {
        m.event == "presence_diff" && m.payload["leaves"].get("alice").is_some()
    })
    .await;
    drop(pod0);
    drop(pod1);
}

//! The operator's reconcile against a real API server (any version from 1.20, no kubelet) and a
//! real PostgreSQL: what a user sees in the database, in the cluster and in the
//! resource's status after declaring, changing and deleting a RealtimeServer.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::Api;
use realtime_tests::operator::{wait_for, OperatorEnv, NS};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn spec(tables: &[&str]) -> serde_json::Value {
    json!({
        "database": {
            "host": "127.0.0.1",
            "port": 0,
            "passwordSecretRef": {"name": "db", "key": "password"},
        },
        "publication": {"tables": tables},
        "auth": {"secureChannels": false},
    })
}

async fn env_with_tables() -> OperatorEnv {
    let env = OperatorEnv::start().await;
    env.db
        .batch_execute(
            "CREATE TABLE messages (id bigint PRIMARY KEY, body text);
             CREATE TABLE rooms (id bigint PRIMARY KEY, name text);",
        )
        .await
        .expect("create tables");
    env
}

fn with_port(mut spec: serde_json::Value, env: &OperatorEnv) -> serde_json::Value {
    spec["database"]["port"] = json!(env.pg.port());
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_realtimeserver_is_rolled_out_followed_scaled_and_cleaned_up() {
    let mut env = env_with_tables().await;
    env.run_controller();
    let mut s = with_port(spec(&["public.messages", "rooms"]), &env);
    s["replicas"] = json!(2);
    s["reclaimPolicy"] = json!("Delete");
    s["publication"]["replicaIdentityFull"] = json!(["public.messages"]);
    s["podTemplate"] = json!({
        "metadata": {"labels": {"team": "chat"}, "annotations": {"example.com/owner": "chat"}},
        "env": [{"name": "MAX_CONNECTIONS", "value": "5000"}],
        "serviceAccountName": "realtime",
        "terminationGracePeriodSeconds": 45,
        "securityContext": {"fsGroup": 2000},
    });
    env.create("chat", s).await;

    for t in ["DatabaseReady", "PublicationReady", "SlotsReady"] {
        env.wait_condition(
            "chat",
            t,
            "True",
            match t {
                "DatabaseReady" => "Connected",
                _ => "Ready",
            },
        )
        .await;
    }
    // No kubelet: no pod is ever ready, and the condition says so.
    let available = env
        .wait_condition("chat", "Available", "False", "ReplicasNotReady")
        .await;
    assert!(available.message.contains("0/2"), "{available:?}");

    // The database.
    assert_eq!(
        env.publication_tables("realtime_default_chat").await,
        Some(vec![
            "public.messages".to_string(),
            "public.rooms".to_string()
        ])
    );
    let ident: String = env
        .db
        .query_one(
            "SELECT relreplident::text FROM pg_class WHERE oid = 'public.messages'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ident, "f", "messages is REPLICA IDENTITY FULL");
    assert_eq!(
        env.slots().await,
        vec!["rts_default_chat_0", "rts_default_chat_1"]
    );

    // The cluster.
    let sts: Api<StatefulSet> = Api::namespaced(env.client.clone(), NS);
    let sts = sts.get("chat").await.expect("the StatefulSet exists");
    assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(2));
    // spec.podTemplate is merged onto the operator's pods.
    let template = &sts.spec.as_ref().unwrap().template;
    let meta = template.metadata.as_ref().unwrap();
    assert_eq!(meta.labels.as_ref().unwrap()["team"], "chat");
    assert_eq!(
        meta.labels.as_ref().unwrap()["app.kubernetes.io/instance"],
        "chat"
    );
    assert_eq!(
        meta.annotations.as_ref().unwrap()["example.com/owner"],
        "chat"
    );
    assert!(meta
        .annotations
        .as_ref()
        .unwrap()
        .contains_key("realtime.dev/config-hash"));
    let pod = template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("realtime"));
    assert_eq!(pod.termination_grace_period_seconds, Some(45));
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(
        (psc.fs_group, psc.run_as_non_root),
        (Some(2000), Some(true))
    );
    let vars = pod.containers[0].env.as_ref().unwrap();
    assert_eq!(vars.last().unwrap().name, "MAX_CONNECTIONS");
    assert!(vars.iter().any(|e| e.name == "SLOT_NAME"));
    let owner = &sts.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("RealtimeServer", "chat")
    );
    let services: Api<Service> = Api::namespaced(env.client.clone(), NS);
    let svc = services.get("chat").await.expect("the Service exists");
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 4000);
    // The StatefulSet is governed by a headless Service of its own.
    assert_eq!(
        sts.spec.as_ref().unwrap().service_name.as_deref(),
        Some("chat-headless")
    );
    let headless = services
        .get("chat-headless")
        .await
        .expect("the headless Service exists");
    assert_eq!(
        headless.metadata.owner_references.as_ref().unwrap()[0].name,
        "chat"
    );
    let hs = headless.spec.unwrap();
    assert_eq!(hs.cluster_ip.as_deref(), Some("None"));
    assert_eq!(hs.publish_not_ready_addresses, Some(true));

    // The status.
    let obj = env.api().get("chat").await.unwrap();
    let status = obj.status.unwrap();
    assert_eq!(status.observed_generation, obj.metadata.generation);
    assert_eq!(status.publication.as_deref(), Some("realtime_default_chat"));
    assert!(status.publication_owned);
    assert_eq!(
        status
            .slots
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        vec!["rts_default_chat_0", "rts_default_chat_1"]
    );
    assert!(status
        .slots
        .iter()
        .all(|s| !s.active && s.confirmed_flush_lsn.is_some()));
    assert_eq!(
        status.endpoint.as_deref(),
        Some("ws://chat.default.svc:4000/socket/websocket")
    );

    // Two replicas want a PodDisruptionBudget: created where the API server
    // serves policy/v1 (1.21+), else skipped with an Event saying why.
    let serves_pdb_v1 = env
        .k8s
        .client()
        .list_api_group_resources("policy/v1")
        .await
        .is_ok_and(|l| l.resources.iter().any(|r| r.name == "poddisruptionbudgets"));
    if serves_pdb_v1 {
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(env.k8s.client(), NS);
        let pdb = wait_for("the PodDisruptionBudget", WAIT, || async {
            pdbs.get_opt("chat").await.unwrap()
        })
        .await;
        let spec = pdb.spec.expect("the PDB has a spec");
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
    }
    let events = wait_for("the PDB step's Events", WAIT, || async {
        let ev = env.event_reasons("chat").await;
        let pdb_done = serves_pdb_v1 || ev.iter().any(|(r, _)| r == "PodDisruptionBudgetSkipped");
        (pdb_done && ev.iter().any(|(r, _)| r == "SlotCreated")).then_some(ev)
    })
    .await;
    assert!(
        events.iter().any(|(r, _)| r == "PublicationCreated"),
        "{events:?}"
    );
    assert!(events.iter().any(|(r, _)| r == "SlotCreated"), "{events:?}");
    // The test cluster keeps WAL for slots without limit: the user is warned.
    assert!(
        events.iter().any(|(r, _)| r == "UnlimitedWalRetention"),
        "{events:?}"
    );

    // The table list changes: the publication follows.
    env.patch_spec("chat", json!({"publication": {"tables": ["public.rooms"]}}))
        .await;
    wait_for("the publication to follow the spec", WAIT, || async {
        (env.publication_tables("realtime_default_chat").await
            == Some(vec!["public.rooms".to_string()]))
        .then_some(())
    })
    .await;

    // The scale subresource (kubectl scale, an HPA) reads the status.
    let scale = env.api().get_scale("chat").await.expect("GET .../scale");
    assert_eq!(scale.spec.unwrap().replicas, Some(2));
    let scale_status = scale.status.unwrap();
    assert_eq!(scale_status.replicas, 2);
    assert_eq!(
        scale_status.selector.as_deref(),
        Some(
            "app.kubernetes.io/instance=chat,app.kubernetes.io/managed-by=realtime-operator,\
             app.kubernetes.io/name=realtime-server"
        )
    );

    // Scale 2 -> 1 through the scale subresource, as `kubectl scale rts chat
    // --replicas=1` does: the slot of replica 1 is dropped (its pod never
    // existed here) and the StatefulSet follows.
    env.api()
        .patch_scale(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .expect("PATCH .../scale");
    wait_for("slot 1 to be dropped", WAIT, || async {
        (env.slots().await == vec!["rts_default_chat_0"]).then_some(())
    })
    .await;
    wait_for("the StatefulSet to scale", WAIT, || async {
        let sts: Api<StatefulSet> = Api::namespaced(env.client.clone(), NS);
        (sts.get("chat").await.ok()?.spec?.replicas == Some(1)).then_some(())
    })
    .await;
    let obj = wait_for(
        "the status to describe the new generation",
        WAIT,
        || async {
            let obj = env.api().get("chat").await.ok()?;
            (obj.status.as_ref()?.observed_generation == obj.metadata.generation).then_some(obj)
        },
    )
    .await;
    assert_eq!(obj.spec.replicas, 1);
    assert_eq!(obj.status.unwrap().replicas, 1);

    // Delete: slots and (reclaimPolicy Delete) the publication go, the finalizer is released.
    env.api()
        .delete("chat", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("the resource to be gone", WAIT, || async {
        env.api()
            .get_opt("chat")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        env.slots().await.is_empty(),
        "slots left: {:?}",
        env.slots().await
    );
    assert_eq!(env.publication_tables("realtime_default_chat").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problems_are_reported_in_conditions_a_person_can_act_on() {
    let mut env = env_with_tables().await;
    // A user with a password, and password authentication for it.
    env.db
        .batch_execute("CREATE ROLE app LOGIN REPLICATION PASSWORD 'right'")
        .await
        .unwrap();
    let hba = env.pg.data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all app 127.0.0.1/32 scram-sha-256\n{old}"),
    )
    .unwrap();
    env.db
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    env.put_secret("wrong", "password", "not-the-password")
        .await;
    env.run_controller();

    // A Secret that does not exist.
    let mut s = with_port(spec(&["public.messages"]), &env);
    s["database"]["passwordSecretRef"]["name"] = json!("missing");
    env.create("nosecret", s).await;
    // A wrong password.
    let mut s = with_port(spec(&["public.messages"]), &env);
    s["database"]["user"] = json!("app");
    s["database"]["passwordSecretRef"]["name"] = json!("wrong");
    env.create("badpass", s).await;
    // An invalid spec: no tables.
    env.create("invalid", with_port(spec(&[]), &env)).await;
    // A table that does not exist.
    env.create("notable", with_port(spec(&["public.nope"]), &env))
        .await;

    let c = env
        .wait_condition("nosecret", "DatabaseReady", "False", "SecretNotFound")
        .await;
    assert!(c.message.contains("default/missing"), "{c:?}");
    let c = env
        .wait_condition("badpass", "DatabaseReady", "False", "AuthenticationFailed")
        .await;
    assert!(c.message.contains("password"), "{c:?}");
    let c = env
        .wait_condition("invalid", "DatabaseReady", "False", "InvalidSpec")
        .await;
    assert!(c.message.contains("allTables"), "{c:?}");
    let a = env.condition("invalid", "Available").await.unwrap();
    assert_eq!(
        (a.status.as_str(), a.reason.as_str()),
        ("False", "InvalidSpec")
    );
    let c = env
        .wait_condition("notable", "PublicationReady", "False", "PublicationError")
        .await;
    assert!(
        c.message.contains("public.nope") || c.message.contains("nope"),
        "{c:?}"
    );
    wait_for("the InvalidSpec Event", WAIT, || async {
        env.event_reasons("invalid")
            .await
            .iter()
            .any(|(r, _)| r == "InvalidSpec")
            .then_some(())
    })
    .await;

    // Fixing the Secret (it is watched) fixes the resource.
    env.put_secret("missing", "password", "x").await;
    env.wait_condition("nosecret", "SlotsReady", "True", "Ready")
        .await;
    env.put_secret("wrong", "password", "right").await;
    env.wait_condition("badpass", "DatabaseReady", "True", "Connected")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_is_reported_with_what_to_run() {
    let mut env = env_with_tables().await;
    env.db
        .batch_execute("ALTER SYSTEM SET wal_level = replica")
        .await
        .unwrap();
    let pg = &env.pg;
    pg.stop("fast").unwrap();
    pg.restart().unwrap();
    env.db = env.pg.connect().await.unwrap();
    env.run_controller();
    env.create("chat", with_port(spec(&["public.messages"]), &env))
        .await;
    let c = env
        .wait_condition("chat", "DatabaseReady", "False", "WalLevelNotLogical")
        .await;
    assert!(
        c.message.contains("ALTER SYSTEM SET wal_level = logical") && c.message.contains("restart"),
        "{c:?}"
    );
    let p = env.condition("chat", "PublicationReady").await.unwrap();
    assert_eq!(p.status, "False");
    assert!(env.slots().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_publication_is_only_taken_over_when_adopted() {
    let mut env = env_with_tables().await;
    env.db
        .batch_execute("CREATE PUBLICATION theirs FOR TABLE rooms")
        .await
        .unwrap();
    env.run_controller();
    let mut s = with_port(spec(&["public.messages"]), &env);
    s["publication"]["name"] = json!("theirs");
    env.create("chat", s).await;
    let c = env
        .wait_condition("chat", "PublicationReady", "False", "PublicationNotOwned")
        .await;
    assert!(c.message.contains("adopt"), "{c:?}");
    assert_eq!(
        env.publication_tables("theirs").await,
        Some(vec!["public.rooms".to_string()]),
        "left alone"
    );
    assert!(env.slots().await.is_empty());

    env.patch_spec("chat", json!({"publication": {"adopt": true}}))
        .await;
    env.wait_condition("chat", "PublicationReady", "True", "Ready")
        .await;
    assert_eq!(
        env.publication_tables("theirs").await,
        Some(vec!["public.messages".to_string()])
    );
    // A second resource cannot take it from the first, even with adopt.
    let mut s = with_port(spec(&["public.rooms"]), &env);
    s["publication"]["name"] = json!("theirs");
    s["publication"]["adopt"] = json!(true);
    env.create("other", s).await;
    env.wait_condition("other", "PublicationReady", "False", "PublicationConflict")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_reconcile_with_nothing_changed_writes_nothing() {
    let env = env_with_tables().await;
    let ctx = env.context();
    let mut s = with_port(spec(&["public.messages"]), &env);
    s["replicas"] = json!(2);
    env.create("chat", s).await;
    let versions = || async {
        let sts: Api<StatefulSet> = Api::namespaced(env.client.clone(), NS);
        let svc: Api<Service> = Api::namespaced(env.client.clone(), NS);
        (
            env.api()
                .get("chat")
                .await
                .unwrap()
                .metadata
                .resource_version,
            sts.get("chat")
                .await
                .ok()
                .and_then(|o| o.metadata.resource_version),
            svc.get("chat")
                .await
                .ok()
                .and_then(|o| o.metadata.resource_version),
        )
    };
    // First the finalizer, then the work.
    for _ in 0..2 {
        let obj = env.api().get("chat").await.unwrap();
        realtime_operator::reconcile::reconcile(std::sync::Arc::new(obj), ctx.clone())
            .await
            .expect("reconcile");
    }
    let before = versions().await;
    assert!(before.1.is_some() && before.2.is_some(), "{before:?}");
    let obj = env.api().get("chat").await.unwrap();
    realtime_operator::reconcile::reconcile(std::sync::Arc::new(obj), ctx.clone())
        .await
        .expect("reconcile again");
    assert_eq!(versions().await, before, "resourceVersions changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_is_not_blocked_forever_by_an_unreachable_database() {
    let mut env = env_with_tables().await;
    env.run_controller();
    env.create("chat", with_port(spec(&["public.messages"]), &env))
        .await;
    env.wait_condition("chat", "SlotsReady", "True", "Ready")
        .await;
    env.pg.stop("fast").unwrap();
    env.api()
        .delete("chat", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the resource to be released", WAIT, || async {
        env.api()
            .get_opt("chat")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let events = env.event_reasons("chat").await;
    let left = events
        .iter()
        .find(|(r, _)| r == "SlotsLeftBehind")
        .unwrap_or_else(|| panic!("a SlotsLeftBehind Event: {events:?}"));
    assert!(left.1.contains("rts_default_chat_0"), "{left:?}");
}

/// The controller's cache can lag the API server: a reconcile may start from a
/// copy older than the status the previous reconcile wrote. If that reconcile
/// fails (the database went away), its status must not replace the newer one,
/// which records the slots cleanup has to drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_of_a_stale_copy_does_not_erase_the_slots_in_the_status() {
    let env = env_with_tables().await;
    let ctx = env.context();
    env.create("chat", with_port(spec(&["public.messages"]), &env))
        .await;
    let reconcile =
        |obj| realtime_operator::reconcile::reconcile(std::sync::Arc::new(obj), ctx.clone());
    // The finalizer first; then this copy, without a status, goes stale.
    reconcile(env.api().get("chat").await.unwrap())
        .await
        .expect("add the finalizer");
    let stale = env.api().get("chat").await.unwrap();
    reconcile(stale.clone()).await.expect("reconcile");
    let recorded = |s: Option<realtime_operator::crd::RealtimeServerStatus>| {
        let s = s.unwrap_or_default();
        (
            s.slots.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
            s.publication_owned,
        )
    };
    let fresh = env.api().get("chat").await.unwrap();
    assert_eq!(
        recorded(fresh.status),
        (vec!["rts_default_chat_0".to_string()], true)
    );

    env.pg.stop("fast").unwrap();
    // Whatever it returns (a retry), it must not write its view of the status.
    let _ = reconcile(stale).await;
    let after = env.api().get("chat").await.unwrap();
    assert_eq!(
        recorded(after.status),
        (vec!["rts_default_chat_0".to_string()], true),
        "the stale reconcile replaced the status"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_password_rolls_the_pods() {
    let mut env = env_with_tables().await;
    env.run_controller();
    env.create("chat", with_port(spec(&["public.messages"]), &env))
        .await;
    env.wait_condition("chat", "SlotsReady", "True", "Ready")
        .await;
    let sts: Api<StatefulSet> = Api::namespaced(env.client.clone(), NS);
    let hash = |s: StatefulSet| -> Option<String> {
        s.spec?
            .template
            .metadata?
            .annotations?
            .get("realtime.dev/config-hash")
            .cloned()
    };
    let before = wait_for("the config hash", WAIT, || async {
        hash(sts.get_opt("chat").await.ok()??)
    })
    .await;
    // Trust auth ignores the password: only the pods' configuration changes.
    env.put_secret("db", "password", "rotated").await;
    let after = wait_for("a new config hash", WAIT, || async {
        let h = hash(sts.get_opt("chat").await.ok()??)?;
        (h != before).then_some(h)
    })
    .await;
    assert_ne!(before, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_that_never_reached_its_database_is_deleted_at_once() {
    let mut env = env_with_tables().await;
    env.run_controller();
    let mut s = with_port(spec(&["public.messages"]), &env);
    s["database"]["passwordSecretRef"]["name"] = json!("missing");
    env.create("chat", s).await;
    env.wait_condition("chat", "DatabaseReady", "False", "SecretNotFound")
        .await;
    env.api()
        .delete("chat", &DeleteParams::default())
        .await
        .unwrap();
    // Well within the cleanup timeout of the tests' operator.
    wait_for(
        "the resource to be released",
        Duration::from_secs(5),
        || async {
            env.api()
                .get_opt("chat")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
}

/// Operators before the headless Service governed the StatefulSet by the
/// clients' Service; `serviceName` is immutable, so such a StatefulSet is
/// deleted with its pods orphaned and created again. The test plays the
/// garbage collector (no controller-manager here), which releases the
/// orphan finalizer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_governed_by_the_clients_service_is_replaced() {
    let mut env = env_with_tables().await;
    let sts: Api<StatefulSet> = Api::namespaced(env.client.clone(), NS);
    let labels = json!({
        "app.kubernetes.io/name": "realtime-server",
        "app.kubernetes.io/instance": "chat",
        "app.kubernetes.io/managed-by": "realtime-operator",
    });
    let old = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "chat", "namespace": NS, "labels": labels},
        "spec": {
            "serviceName": "chat",
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "realtime-server", "image": "old"}]},
            },
        },
    }))
    .unwrap();
    sts.create(&Default::default(), &old)
        .await
        .expect("the old StatefulSet");

    env.run_controller();
    env.create("chat", with_port(spec(&["public.messages"]), &env))
        .await;
    let deleting = wait_for("the old StatefulSet to be deleted", WAIT, || async {
        let s = sts.get("chat").await.ok()?;
        s.metadata.deletion_timestamp.is_some().then_some(s)
    })
    .await;
    assert_eq!(
        deleting.metadata.finalizers.as_deref(),
        Some(&["orphan".to_string()][..]),
        "deleted with its pods orphaned"
    );
    // The garbage collector's part: the pods are released, the finalizer goes.
    sts.patch(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("remove the orphan finalizer");
    let new = wait_for(
        "the StatefulSet governed by the headless Service",
        WAIT,
        || async {
            let s = sts.get("chat").await.ok()?;
            (s.spec.as_ref()?.service_name.as_deref() == Some("chat-headless")).then_some(s)
        },
    )
    .await;
    assert_eq!(
        new.metadata.owner_references.as_ref().unwrap()[0].kind,
        "RealtimeServer"
    );
}

/// The database a resource's slots live in cannot change: where the API
/// server enforces the CRD's CEL rules (1.25+) it refuses the update; where
/// it does not, the operator refuses the spec with InvalidSpec and leaves the
/// slots where they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_of_a_resource_cannot_be_changed() {
    let mut env = env_with_tables().await;
    env.run_controller();
    env.create("chat", with_port(spec(&["public.messages"]), &env))
        .await;
    env.wait_condition("chat", "SlotsReady", "True", "Ready")
        .await;
    let obj = env.api().get("chat").await.unwrap();
    let recorded = format!("127.0.0.1:{}/postgres", env.pg.port());
    assert_eq!(
        obj.status.unwrap().database.as_deref(),
        Some(recorded.as_str())
    );

    let patched = env
        .api()
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"database": {"host": "db.elsewhere"}}})),
        )
        .await;
    match patched {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{e:?}");
            assert!(
                e.message.contains("spec.database.host is immutable"),
                "{e:?}"
            );
        }
        Err(e) => panic!("patching the host: {e}"),
        Ok(_) => {
            let c = env
                .wait_condition("chat", "DatabaseReady", "False", "InvalidSpec")
                .await;
            assert!(
                c.message.contains(&format!(
                    "spec.database points at db.elsewhere:{}/postgres but this resource's \
                     slots and publication are in {recorded}",
                    env.pg.port()
                )),
                "{c:?}"
            );
        }
    }
    assert_eq!(env.slots().await, vec!["rts_default_chat_0"]);
}

/// The CRD's bounds are OpenAPI validation, which every API server enforces
/// (1.20 too): a negative replica count or a port out of range never reaches
/// the operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_refuses_numbers_out_of_bounds() {
    let env = OperatorEnv::start().await;
    let mut bad = spec(&["public.messages"]);
    bad["database"]["port"] = json!(5432);
    bad["replicas"] = json!(-1);
    bad["service"] = json!({"port": 70000});
    let obj: realtime_operator::crd::RealtimeServer = serde_json::from_value(json!({
        "apiVersion": "realtime.dev/v1alpha1",
        "kind": "RealtimeServer",
        "metadata": {"name": "bad", "namespace": NS},
        "spec": bad,
    }))
    .unwrap();
    match env.api().create(&Default::default(), &obj).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{e:?}");
            assert!(e.message.contains("spec.replicas"), "{e:?}");
            assert!(e.message.contains("spec.service.port"), "{e:?}");
        }
        other => panic!("replicas -1 and port 70000 were not refused: {other:?}"),
    }

    let mut good = spec(&["public.messages"]);
    good["database"]["port"] = json!(5432);
    env.create("chat", good).await;
    let patched = env
        .api()
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"database": {"port": 65536}}})),
        )
        .await;
    match patched {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{e:?}");
            assert!(e.message.contains("spec.database.port"), "{e:?}");
        }
        other => panic!("port 65536 was not refused: {other:?}"),
    }
}

//! What a user sees of the operator in `kubectl describe` (Events),
//! `managedFields` and the operator's metrics, against a real API server and
//! a real PostgreSQL: each distinct fact is its own Event, a failed step is a
//! Warning Event, the finalizer is written by the operator's field manager,
//! deleting a resource counts no failure, and a slot dropped behind the
//! operator's back is a condition, an Event and a metric.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{DeleteParams, Patch, PatchParams};
use realtime_operator::reconcile::reconcile;
use realtime_tests::operator::{wait_for, OperatorEnv};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn spec(env: &OperatorEnv, tables: &[&str]) -> serde_json::Value {
    json!({
        "database": {
            "host": "127.0.0.1",
            "port": env.pg.port(),
            "passwordSecretRef": {"name": "db", "key": "password"},
        },
        "publication": {"tables": tables},
        "auth": {"secureChannels": false},
    })
}

async fn env() -> OperatorEnv {
    let env = OperatorEnv::start().await;
    env.db
        .batch_execute("CREATE TABLE messages (id bigint PRIMARY KEY, body text)")
        .await
        .expect("create the table");
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fact_is_its_own_event_and_a_failed_step_is_a_warning_event() {
    let mut env = env().await;
    env.run_controller();
    let mut s = spec(&env, &["public.messages"]);
    s["replicas"] = json!(2);
    env.create("chat", s).await;
    let mut s = spec(&env, &["public.messages"]);
    s["database"]["passwordSecretRef"]["name"] = json!("missing");
    env.create("nosecret", s).await;
    env.create("notable", spec(&env, &["public.nope"])).await;

    // Two slots: two Events, each saying which (not one "(x2)" naming _0).
    let created = wait_for("two SlotCreated Events", WAIT, || async {
        let created: Vec<_> = env
            .events("chat")
            .await
            .into_iter()
            .filter(|(_, reason, _, _)| reason == "SlotCreated")
            .collect();
        (created.len() >= 2).then_some(created)
    })
    .await;
    let notes: Vec<&str> = created.iter().map(|(_, _, n, _)| n.as_str()).collect();
    assert_eq!(
        notes,
        vec![
            "created replication slot rts_default_chat_0 for replica 0",
            "created replication slot rts_default_chat_1 for replica 1",
        ],
        "{created:?}"
    );
    assert!(created.iter().all(|(t, _, _, n)| t == "Normal" && *n == 1));

    // A missing Secret and a table that does not exist: a condition and a
    // Warning Event with the same message.
    for (name, reason, needle) in [
        ("nosecret", "SecretNotFound", "default/missing"),
        ("notable", "PublicationError", "nope"),
    ] {
        let condition_type = match reason {
            "SecretNotFound" => "DatabaseReady",
            _ => "PublicationReady",
        };
        let c = env
            .wait_condition(name, condition_type, "False", reason)
            .await;
        assert!(c.message.contains(needle), "{c:?}");
        let events = wait_for(&format!("a {reason} Event"), WAIT, || async {
            let ev = env.events(name).await;
            ev.iter().any(|(_, r, _, _)| r == reason).then_some(ev)
        })
        .await;
        let ev = events.iter().find(|(_, r, _, _)| r == reason).unwrap();
        assert_eq!(ev.0, "Warning", "{ev:?}");
        assert_eq!(ev.2, c.message, "the Event says what the condition says");
    }
    // The failure is logged with PostgreSQL's own words, which the message
    // (built from the whole error chain) carries.
    let c = env.condition("notable", "PublicationReady").await.unwrap();
    assert!(c.message.contains("does not exist"), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_finalizer_is_the_operators_and_deletion_counts_no_failure() {
    let env = env().await;
    let ctx = env.context();
    env.create("chat", spec(&env, &["public.messages"])).await;
    // First the finalizer, then the work.
    for _ in 0..2 {
        let obj = env.api().get("chat").await.unwrap();
        reconcile(Arc::new(obj), ctx.clone())
            .await
            .expect("reconcile");
    }
    let obj = env.api().get("chat").await.unwrap();
    assert_eq!(
        obj.metadata.finalizers.as_deref(),
        Some(&["realtime.dev/cleanup".to_string()][..])
    );
    let managers: Vec<(String, String)> = obj
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.to_string().contains("f:finalizers"))
        })
        .map(|m| {
            (
                m.manager.unwrap_or_default(),
                m.operation.unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        managers,
        vec![("realtime-operator".to_string(), "Update".to_string())],
        "who wrote metadata.finalizers"
    );

    // Deleted: a reconcile releases the finalizer and the resource goes. A
    // second reconcile of the same deletion, queued before (the StatefulSet's
    // deletion triggers one), finds it gone: that is not a failure.
    env.api()
        .delete("chat", &DeleteParams::default())
        .await
        .unwrap();
    let deleting = Arc::new(env.api().get("chat").await.unwrap());
    assert!(deleting.metadata.deletion_timestamp.is_some());
    reconcile(deleting.clone(), ctx.clone())
        .await
        .expect("the cleanup");
    assert!(env.api().get_opt("chat").await.unwrap().is_none());
    reconcile(deleting, ctx.clone())
        .await
        .expect("a second reconcile of a resource already gone is no failure");

    // The same through the controller: its failures metric stays empty.
    let mut env = env;
    env.run_controller();
    env.create("other", spec(&env, &["public.messages"])).await;
    env.wait_condition("other", "SlotsReady", "True", "Ready")
        .await;
    env.api()
        .delete("other", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the resource to be gone", WAIT, || async {
        env.api()
            .get_opt("other")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    // Whatever was queued by the deletion has run.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = env.metrics.render();
    let failures: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("realtime_operator_reconcile_failures_total"))
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    assert!(failures.is_empty(), "failures counted: {failures:?}");
    // Its series went with it.
    assert!(!text.contains("realtimeserver=\"other\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_replica_resource_sends_no_delete_for_a_missing_pdb() {
    let env = env().await;
    let ctx = env.context();
    env.create("chat", spec(&env, &["public.messages"])).await;
    for _ in 0..5 {
        let obj = env.api().get("chat").await.unwrap();
        reconcile(Arc::new(obj), ctx.clone())
            .await
            .expect("reconcile");
    }
    // The API server counts every request it served.
    let text = env
        .client
        .request_text(
            http::Request::get("/metrics")
                .body(Vec::new())
                .expect("a request"),
        )
        .await
        .expect("the API server's metrics");
    let pdb_requests: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains("resource=\"poddisruptionbudgets\"")
        })
        .collect();
    assert!(
        !pdb_requests.iter().any(|l| l.contains("verb=\"DELETE\"")),
        "{pdb_requests:#?}"
    );
    // Looked up at most once (where policy/v1 is served).
    let gets: u64 = pdb_requests
        .iter()
        .filter(|l| l.contains("verb=\"GET\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum();
    assert!(gets <= 1, "{pdb_requests:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_dropped_behind_the_operators_back_is_a_condition_an_event_and_a_metric() {
    let mut env = env().await;
    env.run_controller();
    env.create("chat", spec(&env, &["public.messages"])).await;
    env.wait_condition("chat", "SlotsReady", "True", "Ready")
        .await;
    let labels = "{namespace=\"default\",realtimeserver=\"chat\",slot=\"rts_default_chat_0\"}";
    // The per-slot gauges: no server streams here.
    let active = wait_for("the slot gauges", WAIT, || async {
        env.metric(&format!("realtime_operator_slot_active{labels}"))
    })
    .await;
    assert_eq!(active, "0");
    let retained: i64 = env
        .metric(&format!(
            "realtime_operator_slot_retained_wal_bytes{labels}"
        ))
        .expect("retained WAL gauge")
        .parse()
        .unwrap();
    assert!(retained >= 0);
    assert!(env
        .metric(&format!(
            "realtime_operator_slot_confirmed_lag_bytes{labels}"
        ))
        .is_some());
    assert_eq!(
        env.metric("realtime_operator_replicas{namespace=\"default\",realtimeserver=\"chat\"}")
            .as_deref(),
        Some("1")
    );

    // A failover to a standby without the slot, or a restore: it is gone.
    env.db
        .execute("SELECT pg_drop_replication_slot('rts_default_chat_0')", &[])
        .await
        .expect("drop the slot");
    // Any change makes the operator look again (it would at the resync).
    env.api()
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"poke": "1"}}})),
        )
        .await
        .unwrap();
    let c = env
        .wait_condition("chat", "SlotsReady", "False", "SlotLost")
        .await;
    assert!(
        c.message
            .contains("rts_default_chat_0 of replica 0 vanished")
            && c.message.contains("were not streamed"),
        "{c:?}"
    );
    let events = wait_for("a SlotLost Event", WAIT, || async {
        let ev = env.events("chat").await;
        ev.iter().any(|(_, r, _, _)| r == "SlotLost").then_some(ev)
    })
    .await;
    let lost = events.iter().find(|(_, r, _, _)| r == "SlotLost").unwrap();
    assert_eq!(lost.0, "Warning", "{lost:?}");
    assert_eq!(lost.2, c.message);
    assert_eq!(
        env.metric(&format!("realtime_operator_slots_lost_total{labels}"))
            .as_deref(),
        Some("1")
    );
    // Recreated, and only one SlotCreated Event: the recreation is told as
    // a loss, not as an ordinary creation.
    assert_eq!(env.slots().await, vec!["rts_default_chat_0"]);
    assert_eq!(
        events
            .iter()
            .filter(|(_, r, _, _)| r == "SlotCreated")
            .count(),
        1,
        "{events:?}"
    );
    // It stays news at the next reconcile (for an hour).
    env.api()
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"poke": "2"}}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = env.condition("chat", "SlotsReady").await.unwrap();
    assert_eq!(
        (again.reason.as_str(), again.message),
        ("SlotLost", c.message)
    );
}

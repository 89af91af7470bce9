//! Two operators against one API server: only the holder of the Lease runs the
//! controller (and so writes); when it dies, the other takes over once the lease
//! expires. Each operator runs `realtime_operator::run::run` on its own runtime
//! and thread, so that stopping it stops everything it started, like a crash.

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use realtime_operator::lease::{LeaderElector, LeaseSettings};
use realtime_tests::k8s::KubeApiServer;
use realtime_tests::operator::{wait_for, OperatorEnv, NS};
use realtime_tests::server::{free_port, http_get};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn lease(identity: &str) -> LeaseSettings {
    LeaseSettings {
        duration: Duration::from_secs(3),
        retry: Duration::from_millis(200),
        ..LeaseSettings::new(NS, identity)
    }
}

/// A running operator: dropping `stop` stops its runtime.
struct Operator {
    port: u16,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Operator {
    fn start(config: kube::Config, identity: &str) -> Operator {
        let port = free_port();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let identity = identity.to_string();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.spawn(async move {
                let client = kube::Client::try_from(config).expect("client");
                let health: SocketAddr = ([127, 0, 0, 1], port).into();
                let r = realtime_operator::run::run(
                    client,
                    OperatorEnv::settings(),
                    lease(&identity),
                    health,
                )
                .await;
                eprintln!("operator {identity} ended: {r:?}");
            });
            let _ = rx.recv();
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        Operator {
            port,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Reconciles this operator ran, from its `/metrics`.
    fn reconciles(&self) -> Option<u64> {
        let (code, body) = http_get(self.port, "/metrics")?;
        assert_eq!(code, 200);
        body.lines()
            .find_map(|l| l.strip_prefix("realtime_operator_reconciles_total "))
            .and_then(|n| n.trim().parse().ok())
    }

    fn kill(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_candidate_holds_the_lease_until_it_stops_renewing() {
    let k8s = KubeApiServer::start().await.expect("API server");
    let a = LeaderElector::new(k8s.client(), lease("a"));
    let b = LeaderElector::new(k8s.client(), lease("b"));
    assert!(
        a.try_acquire_or_renew().await.unwrap(),
        "a takes the free lease"
    );
    assert!(!b.try_acquire_or_renew().await.unwrap(), "b must wait");
    assert!(a.try_acquire_or_renew().await.unwrap(), "a renews");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(
        b.try_acquire_or_renew().await.unwrap(),
        "b takes the expired lease"
    );
    assert!(!a.try_acquire_or_renew().await.unwrap(), "a lost it");
    let l: Api<Lease> = Api::namespaced(k8s.client(), NS);
    let spec = l.get("realtime-operator").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_reconciles_and_the_other_takes_over() {
    let env = OperatorEnv::start().await;
    env.db
        .batch_execute("CREATE TABLE messages (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    let mut first = Operator::start(env.k8s.config().clone(), "first");
    wait_for("the first operator to lead", WAIT, || async {
        let l: Api<Lease> = Api::namespaced(env.client.clone(), NS);
        let holder = l
            .get_opt("realtime-operator")
            .await
            .ok()??
            .spec?
            .holder_identity?;
        (holder == "first").then_some(())
    })
    .await;
    let second = Operator::start(env.k8s.config().clone(), "second");
    env.create(
        "chat",
        json!({
            "database": {
                "host": "127.0.0.1", "port": env.pg.port(),
                "passwordSecretRef": {"name": "db", "key": "password"},
            },
            "publication": {"tables": ["public.messages"]},
            "auth": {"secureChannels": false},
        }),
    )
    .await;
    env.wait_condition("chat", "SlotsReady", "True", "Ready")
        .await;
    let (p1, p2) = (first.port, second.port);
    let count = |port: u16| {
        tokio::task::spawn_blocking(move || {
            let (_, body) = http_get(port, "/metrics")?;
            body.lines()
                .find_map(|l| l.strip_prefix("realtime_operator_reconciles_total "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
    };
    assert!(
        count(p1).await.unwrap().unwrap_or(0) > 0,
        "the leader reconciles"
    );
    assert_eq!(
        count(p2).await.unwrap(),
        Some(0),
        "the standby does nothing"
    );

    // The leader dies; the standby takes over once the lease expires.
    first.kill();
    wait_for("the second operator to take over", WAIT, || async {
        let n = count(p2).await.unwrap()?;
        (n > 0).then_some(())
    })
    .await;
    assert!(second.reconciles().unwrap_or(0) > 0);
}

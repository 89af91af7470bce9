//! Two operators against one API server: only the holder of the Lease runs the
//! controller (and so writes); when it dies, the other takes over once the lease
//! expires, and when it is stopped (SIGTERM) it releases the lease, so the
//! other takes over at once. The crash tests run `realtime_operator::run::run`
//! on its own runtime and thread, so that stopping it stops everything it
//! started; the SIGTERM test runs the operator binary.

use std::net::SocketAddr;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::Api;
use realtime_operator::lease::{LeaderElector, LeaseSettings};
use realtime_tests::chart::operator_bin;
use realtime_tests::k8s::KubeApiServer;
use realtime_tests::operator::{install_crd, wait_for, OperatorEnv, NS};
use realtime_tests::server::{free_port, http_get};
use realtime_tests::LoggedProcess;
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
                    // Stopped only by dropping its runtime, like a crash.
                    std::future::pending(),
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

/// The operator binary, as candidate `identity` for the Lease in `NS`.
fn start_binary(k8s: &KubeApiServer, identity: &str) -> LoggedProcess {
    let mut cmd = Command::new(operator_bin());
    cmd.arg("run")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KUBECONFIG", k8s.kubeconfig_path())
        .env("POD_NAMESPACE", NS)
        .env("POD_NAME", identity)
        .env("HEALTH_ADDRESS", format!("127.0.0.1:{}", free_port()))
        .env("RUST_LOG", "info");
    LoggedProcess::spawn(cmd, &format!("realtime-operator {identity}"))
        .expect("start the operator binary")
}

/// Waits until `op` logged `text`.
async fn wait_log(op: &mut LoggedProcess, text: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !op.log().contains(text) {
        assert!(
            op.exited().is_none(),
            "the operator exited before {text:?}:\n{}",
            op.log()
        );
        assert!(
            Instant::now() < deadline,
            "no {text:?} within {timeout:?}:\n{}",
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends SIGTERM to `op`.
fn send_term(op: &LoggedProcess) {
    op.signal("TERM").expect("send SIGTERM to the operator");
}

/// Waits (at most `timeout`) for `op` to exit.
async fn wait_exit(op: &mut LoggedProcess, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = op.exited() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the operator did not exit within {timeout:?}:\n{}",
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends SIGTERM to `op` and waits (at most `timeout`) for it to exit.
async fn terminate(op: &mut LoggedProcess, timeout: Duration) -> ExitStatus {
    send_term(op);
    wait_exit(op, timeout).await
}

async fn lease_spec(k8s: &KubeApiServer) -> LeaseSpec {
    let leases: Api<Lease> = Api::namespaced(k8s.client(), NS);
    leases
        .get("realtime-operator")
        .await
        .expect("the Lease")
        .spec
        .unwrap_or_default()
}

const LEADING: &str = "leading: starting the controller";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_the_lease_so_a_standby_leads_at_once_and_exits_0() {
    // The binary's lease lasts 15 s: a standby that leads well before that
    // was handed the lease, it did not wait for it to expire.
    const AT_ONCE: Duration = Duration::from_secs(8);
    let k8s = KubeApiServer::start().await.expect("API server");
    install_crd(&k8s.client()).await;

    let mut first = start_binary(&k8s, "first");
    wait_log(&mut first, LEADING, WAIT).await;
    let mut second = start_binary(&k8s, "second");
    wait_log(&mut second, "waiting to become the leader", WAIT).await;
    // A standby stopped before it ever led exits 0 too, and takes nothing.
    let mut third = start_binary(&k8s, "third");
    wait_log(&mut third, "waiting to become the leader", WAIT).await;
    let status = terminate(&mut third, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{}", third.log());
    assert!(!second.log().contains(LEADING), "{}", second.log());
    assert_eq!(
        lease_spec(&k8s).await.holder_identity.as_deref(),
        Some("first")
    );

    let status = terminate(&mut first, Duration::from_secs(25)).await;
    let stopped = Instant::now();
    assert_eq!(status.code(), Some(0), "{}", first.log());
    assert!(
        first.log().contains("released the leader Lease"),
        "{}",
        first.log()
    );
    // Its stderr is a pipe, not a terminal: plain text, no ANSI colours.
    assert!(
        !first.log().contains('\u{1b}'),
        "escape codes in a log that is not a terminal:\n{}",
        first.log()
    );
    wait_log(&mut second, LEADING, AT_ONCE).await;
    eprintln!(
        "the standby led {:?} after the leader exited",
        stopped.elapsed()
    );
    let spec = lease_spec(&k8s).await;
    assert_eq!(spec.holder_identity.as_deref(), Some("second"));
    assert_eq!(spec.lease_transitions, Some(1), "{spec:?}");

    // The last one stopped leaves the Lease free: no holder.
    let status = terminate(&mut second, Duration::from_secs(25)).await;
    assert_eq!(status.code(), Some(0), "{}", second.log());
    let spec = lease_spec(&k8s).await;
    assert_eq!(spec.holder_identity, None, "{spec:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_reconcile_in_flight_finish_and_write_its_status() {
    // A "database" that accepts the operator's connection and hangs up
    // HANG later: the reconcile that reaches it is in flight that long.
    const HANG: Duration = Duration::from_secs(3);
    let env = OperatorEnv::start().await;
    let db = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = db.local_addr().unwrap().port();
    let mut op = start_binary(&env.k8s, "only");
    wait_log(&mut op, LEADING, WAIT).await;
    env.create(
        "slow",
        json!({
            "database": {
                "host": "127.0.0.1", "port": port,
                "passwordSecretRef": {"name": "db", "key": "password"},
            },
            "publication": {"tables": ["public.messages"]},
            "auth": {"secureChannels": false},
        }),
    )
    .await;
    let (connection, _) = tokio::time::timeout(WAIT, db.accept())
        .await
        .expect("the operator connects to the database")
        .unwrap();
    assert!(
        env.condition("slow", "DatabaseReady").await.is_none(),
        "no status before the connection ends"
    );
    let sent = Instant::now();
    send_term(&op);
    tokio::time::sleep(HANG).await;
    assert!(
        op.exited().is_none(),
        "exited with a reconcile in flight:\n{}",
        op.log()
    );
    drop(connection);
    let status = wait_exit(&mut op, Duration::from_secs(25)).await;
    assert_eq!(status.code(), Some(0), "{}", op.log());
    assert!(sent.elapsed() >= HANG);
    let c = env
        .condition("slow", "DatabaseReady")
        .await
        .unwrap_or_else(|| panic!("the reconcile in flight wrote no status:\n{}", op.log()));
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "ConnectionFailed"),
        "{c:?}"
    );
    let spec = lease_spec(&env.k8s).await;
    assert_eq!(spec.holder_identity, None, "{spec:?}");
}

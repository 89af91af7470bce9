//! The operator's own database connections follow `spec.database.sslMode`: against
//! a PostgreSQL that rejects unencrypted connections, `require` works, `disable`
//! is refused, and `verify-full` refuses a self-signed certificate. Each outcome
//! is what the DatabaseReady condition says.

use std::process::Command;

use realtime_tests::operator::OperatorEnv;
use serde_json::json;

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run a command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Turns on TLS with a self-signed certificate and rejects plain TCP.
async fn tls_only(env: &OperatorEnv) {
    let data = env.pg.data_dir();
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
        .args(["-subj", "/CN=localhost", "-days", "1", "-keyout"])
        .arg(data.join("server.key"))
        .arg("-out")
        .arg(data.join("server.crt")));
    run(Command::new("chmod")
        .arg("600")
        .arg(data.join("server.key")));
    // The key must belong to the user PostgreSQL runs as (postgres, as root).
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&data).unwrap());
    run(Command::new("chown")
        .arg(owner.to_string())
        .arg(data.join("server.key"))
        .arg(data.join("server.crt")));
    let hba = data.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("hostnossl all all 127.0.0.1/32 reject\n{old}"),
    )
    .unwrap();
    for sql in ["ALTER SYSTEM SET ssl = on", "SELECT pg_reload_conf()"] {
        env.db.batch_execute(sql).await.unwrap();
    }
}

fn spec(env: &OperatorEnv, ssl: &str) -> serde_json::Value {
    json!({
        "database": {
            "host": "127.0.0.1",
            "port": env.pg.port(),
            "passwordSecretRef": {"name": "db", "key": "password"},
            "sslMode": ssl,
        },
        "publication": {"tables": ["public.messages"]},
        "auth": {"secureChannels": false},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_connects_with_tls_as_the_spec_says() {
    let mut env = OperatorEnv::start().await;
    env.db
        .batch_execute("CREATE TABLE messages (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    tls_only(&env).await;
    env.run_controller();
    env.create("tls", spec(&env, "require")).await;
    env.create("plain", spec(&env, "disable")).await;
    env.create("verified", spec(&env, "verify-full")).await;

    env.wait_condition("tls", "DatabaseReady", "True", "Connected")
        .await;
    env.wait_condition("tls", "SlotsReady", "True", "Ready")
        .await;
    let c = env
        .wait_condition("plain", "DatabaseReady", "False", "AuthenticationFailed")
        .await;
    assert!(c.message.contains("no encryption"), "{c:?}");
    let c = env
        .wait_condition("verified", "DatabaseReady", "False", "ConnectionFailed")
        .await;
    assert!(c.message.to_lowercase().contains("certificate"), "{c:?}");
}

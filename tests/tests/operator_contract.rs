//! The operator-server contract: the environment the operator writes into the
//! StatefulSet's pod template, with its secrets resolved as the kubelet would,
//! parses with the server's own configuration parser and means what the
//! resource says. If either side changes a variable, this fails.

use std::collections::BTreeMap;

use realtime_operator::crd::RealtimeServer;
use realtime_operator::reconcile::{build, validate::validate};
use realtime_server::config::{Config, DbSsl, SlotConfig};
use realtime_tests::kubelet::{resolve_env, Pod};
use serde_json::json;

fn resource(spec: serde_json::Value) -> RealtimeServer {
    let mut o: RealtimeServer = serde_json::from_value(json!({
        "apiVersion": "realtime.dev/v1alpha1",
        "kind": "RealtimeServer",
        "metadata": {"name": "chat", "namespace": "default", "uid": "u-1"},
        "spec": spec,
    }))
    .expect("a valid resource");
    o.metadata.generation = Some(1);
    o
}

fn pod_env(obj: &RealtimeServer, pod: &str) -> BTreeMap<String, String> {
    let v = validate("default", "chat", &obj.spec, Some("img")).expect("valid spec");
    let sts = build::statefulset(obj, &v, "hash");
    let template = sts.spec.unwrap().template.spec.unwrap();
    let env = template.containers[0].env.clone().unwrap();
    let secrets = BTreeMap::from([
        (
            "db".to_string(),
            BTreeMap::from([("password".to_string(), "s3cret".to_string())]),
        ),
        (
            "jwt".to_string(),
            BTreeMap::from([("secret".to_string(), "jwt-key".to_string())]),
        ),
    ]);
    resolve_env(
        &env,
        Pod {
            name: pod,
            namespace: "default",
            secrets: &secrets,
        },
    )
}

#[test]
fn the_pod_environment_parses_with_the_servers_config_parser() {
    let obj = resource(json!({
        "database": {
            "host": "db.internal", "port": 6432, "name": "app", "user": "realtime",
            "passwordSecretRef": {"name": "db", "key": "password"},
            "sslMode": "verify-full"
        },
        "publication": {"name": "app_changes", "tables": ["public.messages"]},
        "replicas": 3,
        "auth": {"secureChannels": true, "jwtSecretRef": {"name": "jwt", "key": "secret"}},
        "maxReplicationLagMB": 512,
        // A server setting the spec has no field for, through the overlay.
        "podTemplate": {"env": [{"name": "MAX_CONNECTIONS", "value": "1234"}]},
    }));
    let env = pod_env(&obj, "chat-1");
    let config = Config::from_vars(&env).unwrap_or_else(|e| panic!("{e}\nenv: {env:?}"));
    assert_eq!(config.port, 4000);
    assert_eq!(config.db.host, "db.internal");
    assert_eq!(config.db.port, 6432);
    assert_eq!(config.db.name, "app");
    assert_eq!(config.db.user, "realtime");
    assert_eq!(config.db.password.expose(), "s3cret");
    assert_eq!(config.db.ssl, DbSsl::VerifyFull);
    assert_eq!(config.publications, vec!["app_changes".to_string()]);
    assert_eq!(config.max_replication_lag_mb, Some(512));
    assert_eq!(config.max_connections, 1234);
    assert!(config.secure_channels);
    assert_eq!(config.jwt_secret.unwrap().expose(), "jwt-key");
    match config.slot {
        SlotConfig::Durable(name) => assert_eq!(name.as_str(), "rts_default_chat_1"),
        other => panic!("expected a durable slot, got {other:?}"),
    }
}

#[test]
fn each_ordinal_gets_its_own_slot() {
    let obj = resource(json!({
        "database": {"host": "db", "passwordSecretRef": {"name": "db", "key": "password"}},
        "publication": {"allTables": true},
        "auth": {"secureChannels": false},
    }));
    for (pod, slot) in [
        ("chat-0", "rts_default_chat_0"),
        ("chat-12", "rts_default_chat_12"),
    ] {
        let config = Config::from_vars(pod_env(&obj, pod)).expect("parses");
        match config.slot {
            SlotConfig::Durable(name) => assert_eq!(name.as_str(), slot),
            other => panic!("expected a durable slot, got {other:?}"),
        }
        assert!(!config.secure_channels);
        assert_eq!(
            config.publications,
            vec!["realtime_default_chat".to_string()]
        );
    }
}

#[test]
fn no_secret_is_inlined_in_the_pod_template() {
    let obj = resource(json!({
        "database": {"host": "db", "passwordSecretRef": {"name": "db", "key": "password"}},
        "publication": {"allTables": true},
        "auth": {"jwtSecretRef": {"name": "jwt", "key": "secret"}},
    }));
    let v = validate("default", "chat", &obj.spec, Some("img")).unwrap();
    let sts = build::statefulset(&obj, &v, "hash");
    let text = serde_json::to_string(&sts).unwrap();
    assert!(!text.contains("s3cret") && !text.contains("jwt-key"));
    for name in ["DB_PASSWORD", "JWT_SECRET"] {
        let env = sts
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} set"))
            .clone();
        assert!(env.value.is_none(), "{name} is inlined");
        assert!(
            env.value_from.unwrap().secret_key_ref.is_some(),
            "{name} by secretKeyRef"
        );
    }
}

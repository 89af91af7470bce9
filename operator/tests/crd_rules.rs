//! The CRD refuses a bad spec at admission: its OpenAPI bounds and its CEL
//! rules (`x-kubernetes-validations`), read from the generated CRD (the one
//! `crds/` holds, a unit test keeps them equal) and evaluated with kube-rs's
//! CEL evaluator the way an API server of 1.25+ does, defaults applied first.
//! The operator's own validation stays the fallback (v1.20 ignores CEL); these
//! samples check that both agree.

use kube::CustomResourceExt;
use kube_cel::{compile_schema, Validator};
use realtime_operator::crd::{RealtimeServer, MAX_REPLICAS};
use realtime_operator::reconcile::validate::validate;
use serde_json::{json, Value};

fn schema() -> Value {
    let crd = RealtimeServer::crd();
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("the CRD has a schema"),
    )
    .unwrap()
}

fn object(spec: Value) -> Value {
    json!({
        "apiVersion": "realtime.dev/v1alpha1",
        "kind": "RealtimeServer",
        "metadata": {"name": "chat", "namespace": "default"},
        "spec": spec,
    })
}

/// A valid spec with every default left out.
fn valid() -> Value {
    json!({
        "database": {"host": "db", "passwordSecretRef": {"name": "db", "key": "password"}},
        "publication": {"tables": ["public.messages"]},
        "auth": {"jwtSecretRef": {"name": "jwt", "key": "secret"}},
    })
}

/// The messages of the rules that refuse `spec` (updating from `old`, if given).
fn refused(spec: &Value, old: Option<&Value>) -> Vec<String> {
    let old = old.map(|o| object(o.clone()));
    match Validator::new().validate(&schema(), &object(spec.clone()), old.as_ref()) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

/// What the operator says about `spec` (its fallback validation).
fn operator_problems(spec: &Value) -> Vec<String> {
    let spec = serde_json::from_value(spec.clone()).expect("the sample parses as a spec");
    match validate("default", "chat", &spec, Some("img")) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems,
    }
}

/// `spec` with the field at `pointer` set to `value` (added if absent).
fn with(mut spec: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("a JSON pointer");
    spec.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .expect("the sample has the parent object")
        .insert(key.into(), value);
    spec
}

#[test]
fn every_rule_compiles() {
    let compiled = compile_schema(&schema());
    let errors: Vec<String> = compiled
        .compilation_errors()
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    let text = serde_json::to_string(&schema()).unwrap();
    assert!(
        text.matches("x-kubernetes-validations").count() >= 5,
        "the rules are in the generated schema"
    );
}

#[test]
fn a_valid_spec_passes_both_the_rules_and_the_operator() {
    assert_eq!(refused(&valid(), None), Vec::<String>::new());
    assert_eq!(operator_problems(&valid()), Vec::<String>::new());
    let all = with(valid(), "/publication", json!({"allTables": true}));
    assert_eq!(refused(&all, None), Vec::<String>::new());
    assert_eq!(operator_problems(&all), Vec::<String>::new());
    let open = with(valid(), "/auth", json!({"secureChannels": false}));
    assert_eq!(refused(&open, None), Vec::<String>::new());
    assert_eq!(operator_problems(&open), Vec::<String>::new());
}

#[test]
fn secured_channels_need_a_jwt_secret() {
    // secureChannels defaults to true: the default is applied before the rule.
    for spec in [
        with(valid(), "/auth", json!({})),
        with(valid(), "/auth", json!({"secureChannels": true})),
    ] {
        let refused = refused(&spec, None);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            refused[0].contains("spec.auth.jwtSecretRef is not set"),
            "{refused:?}"
        );
        assert!(operator_problems(&spec)[0].contains("jwtSecretRef"));
    }
    let mut no_auth = valid();
    no_auth.as_object_mut().unwrap().remove("auth");
    assert!(refused(&no_auth, None)[0].contains("spec.auth.jwtSecretRef"));
}

#[test]
fn tables_are_required_unless_all_tables() {
    let none = with(valid(), "/publication", json!({}));
    let refused_none = refused(&none, None);
    assert_eq!(refused_none.len(), 1, "{refused_none:?}");
    assert!(
        refused_none[0].contains("spec.publication.tables is empty"),
        "{refused_none:?}"
    );
    assert!(operator_problems(&none)[0].contains("spec.publication.tables is empty"));

    let both = with(
        valid(),
        "/publication",
        json!({"allTables": true, "tables": ["public.messages"]}),
    );
    let refused_both = refused(&both, None);
    assert_eq!(refused_both.len(), 1, "{refused_both:?}");
    assert!(
        refused_both[0].contains("either allTables or tables"),
        "{refused_both:?}"
    );
    assert!(operator_problems(&both)[0].contains("either allTables or tables"));
}

#[test]
fn the_database_identity_is_immutable() {
    let old = valid();
    for (pointer, value, field) in [
        ("/database/host", json!("db2"), "spec.database.host"),
        ("/database/port", json!(5433), "spec.database.port"),
        ("/database/name", json!("other"), "spec.database.name"),
    ] {
        let new = with(old.clone(), pointer, value);
        // On create the rule does not apply: there is no old object.
        assert_eq!(refused(&new, None), Vec::<String>::new());
        let refused = refused(&new, Some(&old));
        assert_eq!(refused.len(), 1, "{field}: {refused:?}");
        assert!(
            refused[0].contains(&format!("{field} is immutable")),
            "{refused:?}"
        );
    }
    // Setting the defaulted port or name to its default is no change.
    let explicit = with(old.clone(), "/database/port", json!(5432));
    assert_eq!(refused(&explicit, Some(&old)), Vec::<String>::new());
}

#[test]
fn what_may_change_changes() {
    let old = valid();
    for (pointer, value) in [
        ("/database/user", json!("realtime")),
        (
            "/database/passwordSecretRef",
            json!({"name": "db2", "key": "pw"}),
        ),
        ("/publication/tables", json!(["public.a", "public.b"])),
        ("/auth", json!({"secureChannels": false})),
    ] {
        let new = with(old.clone(), pointer, value);
        assert_eq!(refused(&new, Some(&old)), Vec::<String>::new(), "{pointer}");
    }
    let mut scaled = old.clone();
    scaled["replicas"] = json!(5);
    assert_eq!(refused(&scaled, Some(&old)), Vec::<String>::new());
}

#[test]
fn the_publication_name_is_immutable_once_created() {
    let unnamed = valid();
    let named = with(
        valid(),
        "/publication",
        json!({"name": "chat_pub", "tables": ["public.messages"]}),
    );
    assert_eq!(refused(&named, Some(&named)), Vec::<String>::new());
    let renamed = with(named.clone(), "/publication/name", json!("other"));
    let r = refused(&renamed, Some(&named));
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(
        r[0].contains("spec.publication.name is immutable (it was chat_pub)"),
        "{r:?}"
    );
    let r = refused(&named, Some(&unnamed));
    assert!(r[0].contains("(it was not set)"), "{r:?}");
    let r = refused(&unnamed, Some(&named));
    assert!(r[0].contains("(it was chat_pub)"), "{r:?}");
}

/// The OpenAPI bounds of every number a user sets: only formats Kubernetes
/// knows, and the ranges the operator validates.
#[test]
fn numbers_have_the_bounds_the_operator_validates() {
    let schema = schema();
    let text = serde_json::to_string(&schema).unwrap();
    assert!(!text.contains("\"format\":\"uint"), "unsigned formats left");
    let spec = &schema["properties"]["spec"]["properties"];
    let bounds = |v: &Value| (v["minimum"].as_f64(), v["maximum"].as_f64());
    assert_eq!(
        bounds(&spec["replicas"]),
        (Some(0.0), Some(MAX_REPLICAS as f64))
    );
    assert_eq!(
        bounds(&spec["database"]["properties"]["port"]),
        (Some(1.0), Some(65535.0))
    );
    assert_eq!(
        bounds(&spec["service"]["properties"]["port"]),
        (Some(1.0), Some(65535.0))
    );
    assert_eq!(spec["maxReplicationLagMB"]["format"], "int64");
    assert_eq!(spec["maxReplicationLagMB"]["minimum"].as_f64(), Some(0.0));
    // Just past each bound the operator says no too.
    for (pointer, value) in [
        ("/replicas", json!(-1)),
        ("/replicas", json!(MAX_REPLICAS + 1)),
        ("/service", json!({"port": 0})),
        ("/service", json!({"port": 65536})),
        ("/service", json!({"type": "Headless"})),
        ("/imagePullPolicy", json!("Sometimes")),
    ] {
        let p = operator_problems(&with(valid(), pointer, value.clone()));
        assert_eq!(p.len(), 1, "{pointer}={value}: {p:?}");
    }
}

#[test]
fn the_pod_template_cannot_set_the_operators_labels_or_annotation() {
    let fine = with(
        valid(),
        "/podTemplate",
        json!({"metadata": {"labels": {"team": "chat"}, "annotations": {"a": "b"}}}),
    );
    assert_eq!(refused(&fine, None), Vec::<String>::new());
    assert_eq!(operator_problems(&fine), Vec::<String>::new());
    for label in [
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/managed-by",
    ] {
        let spec = with(
            valid(),
            "/podTemplate",
            json!({"metadata": {"labels": {label: "x"}}}),
        );
        let r = refused(&spec, None);
        assert_eq!(r.len(), 1, "{label}: {r:?}");
        assert!(
            r[0].contains("spec.podTemplate.metadata.labels: app.kubernetes.io/name"),
            "{r:?}"
        );
        assert_eq!(operator_problems(&spec).len(), 1, "{label}");
    }
    let hash = with(
        valid(),
        "/podTemplate",
        json!({"metadata": {"annotations": {"realtime.dev/config-hash": "x"}}}),
    );
    let r = refused(&hash, None);
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(r[0].contains("realtime.dev/config-hash is set by the operator"));
    assert_eq!(operator_problems(&hash).len(), 1);
}

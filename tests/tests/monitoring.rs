//! The monitoring the chart ships, checked with the real tools: the
//! PrometheusRule that `helm template` renders passes `promtool check rules`
//! and the alert unit tests of `tests/monitoring/alerts.test.yaml` (`promtool
//! test rules`: each alert fires on sample series); every series the rules
//! and the Grafana dashboard use is one the operator or the server exports;
//! every alert has its runbook section; the PodMonitor scrapes the server
//! pods. `promtool` is Debian's `prometheus` package (tests/setup.sh).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use realtime_tests::chart::{documents, find, repo_root, template};
use serde_json::Value;

const FULLNAME: &str = "rt-realtime-operator";

fn render(extra: &[&str]) -> Vec<Value> {
    let out = template("rt", "realtime-system", extra)
        .unwrap_or_else(|e| panic!("helm template {extra:?} failed:\n{e}"));
    documents(&out)
}

/// `promtool`: `$PROMTOOL_BIN`, else the one on PATH.
fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("PROMTOOL_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file());
    found.expect(
        "promtool not found: run tests/setup.sh (installs Debian's prometheus package), or point \
         PROMTOOL_BIN at one",
    )
}

fn run_promtool(args: &[&str], dir: &std::path::Path) -> String {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The rendered PrometheusRule's `spec` (its `groups`), as a rules file.
fn rules() -> Value {
    let docs = render(&["--set", "metrics.prometheusRule.enabled=true"]);
    find(&docs, "PrometheusRule", FULLNAME)["spec"].clone()
}

fn alerts(rules: &Value) -> Vec<Value> {
    rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect()
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_yaml::to_string(&rules()).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        repo_root().join("tests/monitoring/alerts.test.yaml"),
        dir.path().join("alerts.test.yaml"),
    )
    .unwrap();
    let checked = run_promtool(&["check", "rules", "rules.yaml"], dir.path());
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    let tested = run_promtool(&["test", "rules", "alerts.test.yaml"], dir.path());
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every alert is unit tested.
    let tests = std::fs::read_to_string(dir.path().join("alerts.test.yaml")).unwrap();
    for alert in alerts(&rules()) {
        let name = alert["alert"].as_str().unwrap();
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{name} has no unit test in tests/monitoring/alerts.test.yaml"
        );
    }
}

#[test]
fn a_broken_rule_is_caught_by_promtool() {
    // The check above can fail: promtool refuses an expression that does
    // not parse.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = rules();
    rules["groups"][0]["rules"][0]["expr"] = Value::from("realtime_operator_slot_active ==");
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_yaml::to_string(&rules).unwrap(),
    )
    .unwrap();
    let out = Command::new(promtool())
        .args(["check", "rules", "rules.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Every series name the operator and the server register, from their
/// metrics modules.
fn exported() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in ["operator/src/metrics.rs", "server/src/metrics.rs"] {
        let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
        for part in text.split('"').skip(1).step_by(2) {
            if part.starts_with("realtime_")
                && part.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            {
                names.insert(part.to_string());
            }
        }
    }
    names
}

/// The `realtime_*` names an expression uses.
fn used(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
        if ident(bytes[i]) && (i == 0 || !ident(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && ident(bytes[i]) {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            // A series name, not a label inside {...}.
            let next = bytes[i..].iter().find(|c| !c.is_whitespace());
            if word.starts_with("realtime_") && next != Some(&'=') && next != Some(&'~') {
                out.insert(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// A name `exported` registers, or one of the series a counter or a
/// histogram of that name renders.
fn is_exported(name: &str, exported: &BTreeSet<String>) -> bool {
    exported.contains(name)
        || ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|b| exported.contains(b))
            })
}

#[test]
fn the_rules_and_the_dashboard_use_only_series_that_are_exported() {
    let exported = exported();
    assert!(exported.contains("realtime_operator_slot_retained_wal_bytes"));
    assert!(exported.contains("realtime_slow_consumer_closes"));
    let mut exprs: Vec<String> = alerts(&rules())
        .iter()
        .map(|a| a["expr"].as_str().unwrap().to_string())
        .collect();
    let docs = render(&["--set", "metrics.grafanaDashboard.enabled=true"]);
    let cm = find(&docs, "ConfigMap", &format!("{FULLNAME}-dashboard"));
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: Value =
        serde_json::from_str(cm["data"]["realtime.json"].as_str().unwrap()).expect("valid JSON");
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    let mut names = BTreeSet::new();
    for e in &exprs {
        names.extend(used(e));
    }
    assert!(names.len() >= 12, "{names:?}");
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| !is_exported(n, &exported))
        .collect();
    assert!(
        unknown.is_empty(),
        "series no one exports: {unknown:?} (exported: {exported:?})"
    );
}

#[test]
fn every_alert_links_to_its_runbook_section() {
    let runbook = std::fs::read_to_string(repo_root().join("docs/runbook.md")).unwrap();
    let sections: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(str::to_string)
        .collect();
    let alerts = alerts(&rules());
    assert_eq!(alerts.len(), 7);
    for alert in alerts {
        let name = alert["alert"].as_str().unwrap();
        assert!(sections.contains(name), "docs/runbook.md has no ## {name}");
        let url = alert["annotations"]["runbook_url"].as_str().unwrap();
        assert!(
            url.ends_with(&format!("docs/runbook.md#{}", name.to_lowercase())),
            "{name}: {url}"
        );
        assert!(!alert["annotations"]["summary"].is_null(), "{name}");
    }
}

#[test]
fn the_pod_monitor_scrapes_the_server_pods_and_nothing_renders_by_default() {
    let docs = render(&["--set", "metrics.podMonitor.enabled=true"]);
    let pm = find(&docs, "PodMonitor", &format!("{FULLNAME}-servers"));
    assert_eq!(
        pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "realtime-server"
    );
    let endpoint = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "http");
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(pm["spec"]["namespaceSelector"]["any"], true);
    let docs = render(&[
        "--set",
        "metrics.podMonitor.enabled=true",
        "--set",
        "watchNamespace=apps",
    ]);
    let pm = find(&docs, "PodMonitor", &format!("{FULLNAME}-servers"));
    assert_eq!(
        pm["spec"]["namespaceSelector"]["matchNames"],
        serde_json::json!(["apps"])
    );

    let kinds: BTreeSet<String> = render(&[])
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    for kind in ["PodMonitor", "PrometheusRule", "ConfigMap"] {
        assert!(!kinds.contains(kind), "{kind} rendered by default");
    }
}

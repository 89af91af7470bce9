//! `realtime-server check`, as an administrator runs it: the real binary
//! against a real PostgreSQL whose server user lacks what `serve` needs.
//!
//! - Every missing prerequisite is one `missing` line naming the SQL that
//!   fixes it, and the exit status is 1; once that SQL (and the printed
//!   authorization setup) is applied, every line is `ok` and the exit status
//!   is 0.
//! - A bad configuration exits 2 naming the variable; an unreachable
//!   database exits 1, the connection `missing` and the rest `skipped`.

use std::collections::BTreeMap;

use realtime_harness::process::command_with_env;
use realtime_tests::server::{free_port, server_bin};
use realtime_tests::TempPostgres;

/// The server's database user: a plain login role, no REPLICATION.
const USER: &str = "rt_checker";
const PUBLICATION: &str = "rt_pub";
const SLOT: &str = "rt_check_slot";

/// `realtime-server check` with `env` only: its exit status and stdout.
fn check(env: &BTreeMap<String, String>) -> (i32, String, String) {
    let out = command_with_env(server_bin(), env)
        .arg("check")
        .output()
        .expect("run realtime-server check");
    (
        out.status.code().expect("check exits, not killed"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The one report line about `what` (it starts with its status).
fn line<'a>(report: &'a str, what: &str) -> &'a str {
    let found: Vec<&str> = report.lines().filter(|l| l.contains(what)).collect();
    assert_eq!(found.len(), 1, "one line about {what:?} in:\n{report}");
    found[0]
}

fn assert_missing_with(report: &str, what: &str, fix: &str) {
    let l = line(report, what);
    assert!(
        l.starts_with("missing ") && l.contains(fix),
        "{what:?} should be missing with the fix {fix:?}:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_prerequisites_name_their_sql_and_pass_once_it_is_run() {
    let pg = TempPostgres::start().expect("start PostgreSQL");
    let admin = pg.connect().await.expect("connect as superuser");
    admin
        .batch_execute(&format!(
            "CREATE ROLE {USER} LOGIN; CREATE ROLE anon NOLOGIN; \
             CREATE TABLE items (id bigint PRIMARY KEY, body text);"
        ))
        .await
        .unwrap();
    let mut env = pg.server_env(&[PUBLICATION]).unwrap();
    env.insert("DB_USER".into(), USER.into());
    env.insert("SLOT_NAME".into(), SLOT.into());
    env.insert("SECURE_CHANNELS".into(), "true".into());
    env.insert(
        "JWT_SECRET".into(),
        "a-test-secret-of-reasonable-length".into(),
    );

    let (code, report, stderr) = check(&env);
    println!("{report}");
    assert_eq!(code, 1, "something is missing:\n{report}\n{stderr}");
    assert!(
        report.starts_with(&format!(
            "ok       connection to 127.0.0.1:{}/postgres as {USER}\n",
            pg.port()
        )),
        "{report}"
    );
    assert!(line(&report, "wal_level").starts_with("ok "), "{report}");
    assert!(
        line(&report, "replication connection").starts_with("missing "),
        "{report}"
    );
    let replication = format!("ALTER ROLE \"{USER}\" REPLICATION;");
    assert_missing_with(&report, "has REPLICATION", &replication);
    let publication = format!("CREATE PUBLICATION \"{PUBLICATION}\" FOR ALL TABLES;");
    assert_missing_with(&report, "publication \"rt_pub\"", &publication);
    assert!(
        line(
            &report,
            &format!("slot \"{SLOT}\" (SLOT_NAME) can be created")
        )
        .starts_with("ok "),
        "{report}"
    );
    let anon = format!("GRANT \"anon\" TO \"{USER}\";");
    assert_missing_with(&report, "role \"anon\" granted", &anon);
    // A role that does not exist yet is created first.
    let authenticated =
        format!("CREATE ROLE \"authenticated\" NOLOGIN; GRANT \"authenticated\" TO \"{USER}\";");
    assert_missing_with(&report, "role \"authenticated\" granted", &authenticated);
    assert_missing_with(&report, "auth.uid()", "realtime-server setup-authorization");
    assert_missing_with(
        &report,
        "realtime.messages (optional",
        "setup-authorization",
    );
    assert!(report.contains("not ready"), "{report}");

    // The administrator runs what the report said, then the printed
    // authorization setup.
    for sql in [&replication, &publication, &anon, &authenticated] {
        admin
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let (code, report, stderr) = check(&env);
    assert_eq!(code, 1, "auth.uid() is still missing:\n{report}\n{stderr}");
    assert!(
        line(&report, "replication connection").starts_with("ok "),
        "{report}"
    );
    assert_missing_with(&report, "auth.uid()", "setup-authorization");

    let printed = command_with_env(server_bin(), &env)
        .args(["setup-authorization", "--print"])
        .output()
        .expect("run setup-authorization --print");
    assert!(printed.status.success());
    admin
        .batch_execute(&String::from_utf8_lossy(&printed.stdout))
        .await
        .expect("apply the printed authorization setup");

    let (code, report, stderr) = check(&env);
    println!("{report}");
    assert_eq!(code, 0, "all is ready:\n{report}\n{stderr}");
    let lines: Vec<&str> = report.lines().collect();
    assert!(lines.len() >= 10, "{report}");
    for l in &lines[..lines.len() - 1] {
        assert!(l.starts_with("ok "), "every prerequisite ok:\n{report}");
    }
    assert!(
        report.ends_with("ready: every prerequisite is met\n"),
        "{report}"
    );

    // Once the server made its slot, the check finds it rather than room
    // for it.
    admin
        .batch_execute(&format!(
            "SELECT pg_catalog.pg_create_logical_replication_slot('{SLOT}', 'pgoutput')"
        ))
        .await
        .unwrap();
    let (code, report, _) = check(&env);
    assert_eq!(code, 0, "{report}");
    assert!(
        line(&report, &format!("slot \"{SLOT}\"")).contains("exists (pgoutput)"),
        "{report}"
    );
    admin
        .batch_execute(&format!(
            "SELECT pg_catalog.pg_drop_replication_slot('{SLOT}')"
        ))
        .await
        .unwrap();
}

#[test]
fn a_bad_configuration_exits_2_naming_the_variable() {
    let env: BTreeMap<String, String> = [
        ("DB_HOST", "127.0.0.1"),
        ("DB_PORT", "not-a-port"),
        ("DB_NAME", "postgres"),
        ("DB_USER", "postgres"),
        ("DB_PASSWORD", "x"),
        ("PUBLICATIONS", "[\"p\"]"),
        ("SECURE_CHANNELS", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let (code, report, stderr) = check(&env);
    assert_eq!(code, 2, "{report}\n{stderr}");
    assert!(stderr.contains("DB_PORT"), "{stderr}");
    assert!(
        report.is_empty(),
        "no report on a bad configuration: {report}"
    );
}

#[test]
fn an_unreachable_database_is_missing_and_the_rest_skipped() {
    let port = free_port().to_string();
    let env: BTreeMap<String, String> = [
        ("DB_HOST", "127.0.0.1"),
        ("DB_PORT", port.as_str()),
        ("DB_NAME", "postgres"),
        ("DB_USER", "postgres"),
        ("DB_PASSWORD", "x"),
        ("PUBLICATIONS", "[\"p\"]"),
        ("SECURE_CHANNELS", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let (code, report, stderr) = check(&env);
    println!("{report}");
    assert_eq!(code, 1, "{report}\n{stderr}");
    let connection = report.lines().next().unwrap_or_default();
    assert!(
        connection.starts_with(&format!(
            "missing  connection to 127.0.0.1:{port}/postgres as postgres:"
        )),
        "{report}"
    );
    assert!(connection.contains("DB_HOST, DB_PORT"), "{report}");
    assert!(line(&report, "replication connection").starts_with("missing "));
    assert!(
        line(&report, "wal_level").starts_with("skipped "),
        "{report}"
    );
    assert!(line(&report, "publication \"p\"").starts_with("skipped "));
    assert!(
        !report.contains("auth.uid"),
        "channels not secured: {report}"
    );
}

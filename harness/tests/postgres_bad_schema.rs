//! A schema that fails stops the start with PostgreSQL's reason and leaves no
//! cluster behind. Its own test binary: it points TMPDIR at a directory of
//! its own, which must not be shared with other tests.

use std::os::unix::fs::PermissionsExt;

use realtime_harness::{PgError, TempPostgres};

#[tokio::test]
async fn a_failing_schema_names_the_cause_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    // Run as root, PostgreSQL runs as `postgres`, which must reach its files.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::env::set_var("TMPDIR", tmp.path());

    let e = TempPostgres::with_schema("CREATE TABLE broken (")
        .await
        .expect_err("a syntax error fails the start");
    assert!(matches!(e, PgError::Sql { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("applying the schema to postgres://") && text.contains("syntax error"),
        "the error names the step, the database and PostgreSQL's reason: {text}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

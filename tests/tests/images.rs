//! What can be checked of the container images on a machine that cannot build
//! them: each binary runs as the images' non-root user (65532, distroless's
//! `nonroot`) on a read-only root filesystem, as the Dockerfiles and the pod
//! security contexts (chart and operator) declare, and serves its health
//! endpoint. The test starts each binary in its own mount namespace where `/`
//! is remounted read-only (`unshare --mount`), with its user switched by
//! `setpriv`, which needs root: the tests run as root (CI too).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use realtime_harness::process::command_with_env;
use realtime_tests::chart::{operator_bin, repo_root};
use realtime_tests::k8s::KubeApiServer;
use realtime_tests::server::{free_port, server_bin, ServerProcess};
use realtime_tests::{LoggedProcess, TempPostgres};

/// The user of the images (`USER` in the Dockerfiles, distroless `nonroot`).
const IMAGE_UID: u32 = 65532;
const WAIT: Duration = Duration::from_secs(40);

/// Copies `bin` into a fresh directory that the image user can read (the
/// build's target directory may sit under a private home).
fn readable_copy(bin: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let to = dir.path().join(bin.file_name().unwrap());
    std::fs::copy(bin, &to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, to)
}

/// `bin args...` as uid/gid 65532 with no supplementary groups, on a
/// read-only `/`, with exactly `env`.
fn confined(bin: &Path, args: &[&str], env: &BTreeMap<String, String>) -> Command {
    assert_eq!(
        effective_uid(),
        0,
        "switching to uid {IMAGE_UID} and remounting / needs root (the tests run as root)"
    );
    let mut cmd = command_with_env("unshare", env);
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -o remount,bind,ro / && exec setpriv --reuid={IMAGE_UID} \
             --regid={IMAGE_UID} --clear-groups --no-new-privs -- \"$0\" \"$@\""
        ))
        .arg(bin)
        .args(args);
    cmd
}

/// The effective uid of this process, from /proc (no libc dependency).
fn effective_uid() -> u32 {
    uid_of("self").1
}

/// (real, effective) uid of `pid` (or "self").
fn uid_of(pid: &str) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let ids: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    (ids[0], ids[1])
}

/// The mount options of `/` as `pid` sees it.
fn root_mount_options(pid: u32) -> String {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    info.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 5 && f[4] == "/")
        .map(|f| f[5].to_string())
        .unwrap_or_default()
}

/// Waits until GET `path` on `port` answers 200; panics with the log
/// otherwise (also at once if it exits).
fn wait_ok(p: &mut LoggedProcess, port: u16, path: &str) -> String {
    tokio::task::block_in_place(|| p.wait_http_ok(port, path, WAIT))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// It really runs as the image user on a read-only root.
fn assert_confined(p: &LoggedProcess) {
    let pid = p.pid();
    assert_eq!(
        uid_of(&pid.to_string()),
        (IMAGE_UID, IMAGE_UID),
        "runs as uid {IMAGE_UID}"
    );
    let opts = root_mount_options(pid);
    assert!(
        opts.split(',').any(|o| o == "ro"),
        "/ is read-only for it: {opts}"
    );
}

#[test]
fn the_dockerfiles_build_each_binary_into_a_non_root_image() {
    for (bin, port) in [("realtime-server", 4000), ("realtime-operator", 8080)] {
        let dir = bin.trim_start_matches("realtime-");
        let text = std::fs::read_to_string(repo_root().join(dir).join("Dockerfile")).unwrap();
        let last_stage = text.rsplit("\nFROM ").next().unwrap();
        assert!(
            last_stage.starts_with("gcr.io/distroless/cc-debian12:nonroot"),
            "{dir}/Dockerfile: the final stage is distroless nonroot"
        );
        assert!(
            last_stage.contains(&format!("\nUSER {IMAGE_UID}:{IMAGE_UID}\n")),
            "{dir}/Dockerfile: USER {IMAGE_UID}"
        );
        assert!(
            last_stage.contains(&format!("ENTRYPOINT [\"/{bin}\"]")),
            "{dir}/Dockerfile: runs /{bin}"
        );
        assert!(
            last_stage.contains(&format!("EXPOSE {port}")),
            "{dir}/Dockerfile"
        );
        assert!(
            text.contains(&format!("cargo build --release --locked -p {bin}")),
            "{dir}/Dockerfile builds {bin} from the locked workspace"
        );
    }
}

/// The server's image is a production build: without the default `dev`
/// feature, whose dependency tree holds no test harness. (The default build
/// does hold it, or this test could not fail.)
#[test]
fn the_server_image_is_built_without_the_dev_command_and_the_harness() {
    let dockerfile = std::fs::read_to_string(repo_root().join("server/Dockerfile")).unwrap();
    assert!(
        dockerfile
            .contains("cargo build --release --locked -p realtime-server --no-default-features"),
        "server/Dockerfile builds without default features"
    );
    let packages = |features: &[&str]| {
        let out = Command::new(env!("CARGO"))
            .args(["tree", "--locked", "--offline", "-p", "realtime-server"])
            .args(features)
            .args(["-e", "normal,build", "--prefix", "none", "--format", "{p}"])
            .current_dir(repo_root())
            .output()
            .expect("run cargo tree");
        assert!(
            out.status.success(),
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let production = packages(&["--no-default-features"]);
    assert!(production.contains("realtime-server"), "{production}");
    assert!(
        !production.contains("realtime-harness"),
        "the production build depends on the harness:\n{production}"
    );
    let default = packages(&[]);
    assert!(default.contains("realtime-harness"), "{default}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_runs_as_non_root_on_a_read_only_root_filesystem() {
    let (pg, _db) = TempPostgres::with_schema(
        "CREATE TABLE messages (id bigint PRIMARY KEY); \
         CREATE PUBLICATION realtime_test FOR TABLE messages;",
    )
    .await
    .expect("PostgreSQL with the schema");
    let (_dir, bin) = readable_copy(&server_bin());
    let env = ServerProcess::env_for(&pg, &["realtime_test"]);
    let port: u16 = env["PORT"].parse().unwrap();
    let mut server =
        LoggedProcess::spawn(confined(&bin, &[], &env), "realtime-server").expect("spawn");
    assert_eq!(wait_ok(&mut server, port, "/healthz").trim(), "ok");
    // /readyz: the replication stream from PostgreSQL is live.
    wait_ok(&mut server, port, "/readyz");
    assert_confined(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_runs_as_non_root_on_a_read_only_root_filesystem() {
    let k8s = KubeApiServer::start().await.expect("start the API server");
    let (dir, bin) = readable_copy(&operator_bin());
    // The kubeconfig a pod would get from its mounted token, readable by 65532.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, k8s.kubeconfig_for_token(k8s.admin_token())).unwrap();
    std::fs::set_permissions(&kubeconfig, std::fs::Permissions::from_mode(0o644)).unwrap();
    let port = free_port();
    let env = BTreeMap::from([
        ("KUBECONFIG".to_string(), kubeconfig.display().to_string()),
        ("HEALTH_ADDRESS".into(), format!("127.0.0.1:{port}")),
        ("POD_NAMESPACE".into(), "default".into()),
        ("POD_NAME".into(), "realtime-operator-0".into()),
        ("RUST_LOG".into(), "info".into()),
    ]);
    let mut op =
        LoggedProcess::spawn(confined(&bin, &["run"], &env), "realtime-operator").expect("spawn");
    assert_eq!(wait_ok(&mut op, port, "/healthz").trim(), "ok");
    // /readyz: it reached the API server.
    wait_ok(&mut op, port, "/readyz");
    assert_confined(&op);
    let deadline = Instant::now() + WAIT;
    while !op.log().contains("leading: starting the controller") {
        assert!(
            Instant::now() < deadline,
            "it did not take the Lease:\n{}",
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

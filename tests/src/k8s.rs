//! A real Kubernetes API server for tests: etcd plus kube-apiserver (v1.20.2,
//! built once by `tests/k8s/build-kube-apiserver.sh`) on loopback ports, in a
//! temporary directory, stopped and removed on drop.
//!
//! This module owns: locating the binaries, the per-instance files (token file,
//! service-account keys, certificates, kubeconfig, logs), starting both
//! processes (with a retry when a port was taken in a race), waiting for
//! `/readyz`, handing out `kube::Client`s for the admin token or any other
//! bearer token, and the cleanup.
//!
//! There is no controller-manager, scheduler or kubelet: objects are stored and
//! served (CRDs, server-side apply, watches, RBAC), but nothing acts on them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), realtime_tests::k8s::K8sError> {
//! let k8s = realtime_tests::k8s::KubeApiServer::start().await?;
//! let client = k8s.client();
//! // `kubectl --kubeconfig` works too:
//! println!("{}", k8s.kubeconfig_path().display());
//! # Ok(()) }
//! ```

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use realtime_harness::{LoggedProcess, ProcessError};
use tempfile::TempDir;

/// Version of the kube-apiserver binary this harness expects.
pub const KUBE_APISERVER_VERSION: &str = "v1.20.2";

/// Environment variable naming a kube-apiserver binary to use instead of the cache.
pub const BIN_ENV: &str = "KUBE_APISERVER_BIN";

const BUILD_HINT: &str = "run `tests/k8s/build-kube-apiserver.sh` (it builds and caches \
    kube-apiserver once per machine), or point KUBE_APISERVER_BIN at a kube-apiserver binary";

/// Group of the admin user: cluster-admin through RBAC's bootstrap binding.
pub const ADMIN_GROUP: &str = "system:masters";

/// Default wait for `/readyz`: generous, as several test binaries may start
/// servers at once on a small machine.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Attempts when a port turns out to be taken between choosing and binding it.
const PORT_ATTEMPTS: usize = 5;
/// Upper bound of one readiness poll.
const MAX_POLL_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of each log shown in startup errors.
const TAIL_LINES: usize = 40;

/// Everything that can go wrong when starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("kube-apiserver binary not found at {path}: {hint}")]
    ApiServerMissing { path: PathBuf, hint: &'static str },

    #[error("`etcd` not found on PATH: install it with `apt-get install etcd-server`")]
    EtcdMissing,

    #[error("`openssl` not found on PATH: install it with `apt-get install openssl`")]
    OpensslMissing,

    #[error("{step}: {source}")]
    Io {
        step: String,
        #[source]
        source: io::Error,
    },

    #[error(transparent)]
    Process(#[from] ProcessError),

    #[error("{step}: `{command}` failed with {status}: {stderr}")]
    Command {
        step: &'static str,
        command: String,
        status: ExitStatus,
        stderr: String,
    },

    #[error("{process} exited during startup with {status}\n{logs}")]
    Exited {
        process: &'static str,
        status: ExitStatus,
        logs: String,
    },

    #[error("{process} not ready after {waited:?}: {last_error}\n{logs}")]
    NotReady {
        process: &'static str,
        waited: Duration,
        last_error: String,
        logs: String,
    },

    #[error("ports stayed taken after {attempts} attempts; last failure: {last}")]
    PortsTaken {
        attempts: usize,
        last: Box<K8sError>,
    },

    #[error("kubeconfig for {server}: {source}")]
    Kubeconfig {
        server: String,
        #[source]
        source: kube::config::KubeconfigError,
    },

    #[error("building a kube client for {server}: {source}")]
    Client {
        server: String,
        #[source]
        source: kube::Error,
    },
}

impl K8sError {
    fn io(step: impl Into<String>) -> impl FnOnce(io::Error) -> K8sError {
        let step = step.into();
        move |source| K8sError::Io { step, source }
    }

    /// True when the failure was a port taken by someone else: worth a retry.
    fn is_port_race(&self) -> bool {
        match self {
            K8sError::Exited { logs, .. } | K8sError::NotReady { logs, .. } => {
                logs.contains("address already in use")
            }
            _ => false,
        }
    }
}

/// A static bearer token, written into the API server's `--token-auth-file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticToken {
    pub token: String,
    pub user: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl StaticToken {
    fn csv_line(&self) -> String {
        let mut line = format!("{},{},{}", self.token, self.user, self.uid);
        if !self.groups.is_empty() {
            let _ = write!(line, ",\"{}\"", self.groups.join(","));
        }
        line
    }
}

/// Options for [`KubeApiServer`], set before start (the token file is read once).
#[derive(Debug, Clone)]
pub struct KubeApiServerBuilder {
    tokens: Vec<StaticToken>,
    ready_timeout: Duration,
    extra_args: Vec<String>,
}

impl Default for KubeApiServerBuilder {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            extra_args: Vec::new(),
        }
    }
}

impl KubeApiServerBuilder {
    /// Adds a static token for `user` (uid `<user>-uid`) in `groups`, besides
    /// the admin token. The user has no permissions unless RBAC grants some.
    pub fn token(
        mut self,
        token: impl Into<String>,
        user: impl Into<String>,
        groups: &[&str],
    ) -> Self {
        let user = user.into();
        self.tokens.push(StaticToken {
            token: token.into(),
            uid: format!("{user}-uid"),
            user,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        });
        self
    }

    /// How long to wait for `/readyz` (default 90 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// An extra kube-apiserver flag, e.g. `--feature-gates=...`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Starts etcd and kube-apiserver and waits until the API server is ready.
    pub async fn start(self) -> Result<KubeApiServer, K8sError> {
        KubeApiServer::start_with(self).await
    }
}

/// The OS process ids of a running instance (to check that they are gone after drop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pids {
    pub etcd: u32,
    pub apiserver: u32,
}

/// The loopback ports of a running instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub apiserver: u16,
    pub etcd_client: u16,
    pub etcd_peer: u16,
}

/// A running etcd + kube-apiserver pair. Dropping it kills both and removes
/// its temporary directory.
pub struct KubeApiServer {
    // Field order matters for drop: fields drop in order, so the processes
    // are killed (the API server first), then the directory goes.
    apiserver: LoggedProcess,
    etcd: LoggedProcess,
    pids: Pids,
    ports: Ports,
    admin_token: String,
    kubeconfig: PathBuf,
    config: kube::Config,
    client: kube::Client,
    dir: TempDir,
}

impl std::fmt::Debug for KubeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApiServer")
            .field("server", &self.server_url())
            .field("dir", &self.dir.path())
            .field("pids", &self.pids)
            .finish_non_exhaustive()
    }
}

impl KubeApiServer {
    /// Starts a server with default options: only the admin token.
    pub async fn start() -> Result<Self, K8sError> {
        Self::builder().start().await
    }

    /// Options before start: extra static tokens, the readiness timeout, flags.
    pub fn builder() -> KubeApiServerBuilder {
        KubeApiServerBuilder::default()
    }

    /// The kube-apiserver binary: `$KUBE_APISERVER_BIN`, else the build script's cache.
    pub fn binary_path() -> Result<PathBuf, K8sError> {
        let path = match std::env::var_os(BIN_ENV) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => cache_dir()
                .join(format!("kube-apiserver-{KUBE_APISERVER_VERSION}"))
                .join("kube-apiserver"),
        };
        if path.is_file() {
            Ok(path)
        } else {
            Err(K8sError::ApiServerMissing {
                path,
                hint: BUILD_HINT,
            })
        }
    }

    async fn start_with(options: KubeApiServerBuilder) -> Result<Self, K8sError> {
        install_tls_provider();
        let apiserver_bin = Self::binary_path()?;
        let etcd_bin = find_on_path("etcd").ok_or(K8sError::EtcdMissing)?;
        let openssl_bin = find_on_path("openssl").ok_or(K8sError::OpensslMissing)?;
        let version = apiserver_version(&apiserver_bin)?;
        let bins = Bins {
            apiserver: apiserver_bin,
            version,
            etcd: etcd_bin,
            openssl: openssl_bin,
        };
        let mut attempt = 1;
        loop {
            match Self::start_once(&bins, &options).await {
                Err(e) if e.is_port_race() => {
                    if attempt >= PORT_ATTEMPTS {
                        return Err(K8sError::PortsTaken {
                            attempts: attempt,
                            last: Box::new(e),
                        });
                    }
                    tracing::warn!(attempt, "a port was taken during startup, retrying: {e}");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn start_once(bins: &Bins, options: &KubeApiServerBuilder) -> Result<Self, K8sError> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("realtime-k8s-")
            .tempdir()
            .map_err(K8sError::io(
                "creating the temp dir for etcd and kube-apiserver",
            ))?;
        let root = dir.path();
        let [apiserver_port, etcd_client, etcd_peer] = realtime_harness::net::free_ports()
            .map_err(K8sError::io("choosing ports for etcd and kube-apiserver"))?;
        let ports = Ports {
            apiserver: apiserver_port,
            etcd_client,
            etcd_peer,
        };

        // Files the API server reads at start.
        let admin_token = random_token()?;
        let mut tokens = vec![StaticToken {
            token: admin_token.clone(),
            user: "admin".into(),
            uid: "admin-uid".into(),
            groups: vec![ADMIN_GROUP.into()],
        }];
        tokens.extend(options.tokens.iter().cloned());
        let token_file = root.join("tokens.csv");
        let csv: String = tokens.iter().map(|t| t.csv_line() + "\n").collect();
        write_file(&token_file, &csv)?;
        let sa_key = root.join("sa.key");
        let sa_pub = root.join("sa.pub");
        run_openssl(
            &bins.openssl,
            "generating the service-account signing key",
            &[
                "genrsa".as_ref(),
                "-out".as_ref(),
                sa_key.as_os_str(),
                "2048".as_ref(),
            ],
        )?;
        run_openssl(
            &bins.openssl,
            "extracting the service-account public key",
            &[
                "rsa".as_ref(),
                "-in".as_ref(),
                sa_key.as_os_str(),
                "-pubout".as_ref(),
                "-out".as_ref(),
                sa_pub.as_os_str(),
            ],
        )?;
        let cert_dir = root.join("certs");
        fs::create_dir(&cert_dir)
            .map_err(K8sError::io(format!("creating {}", cert_dir.display())))?;

        // etcd
        let etcd_log = root.join("etcd.log");
        let etcd_client_url = format!("http://127.0.0.1:{}", ports.etcd_client);
        let etcd_peer_url = format!("http://127.0.0.1:{}", ports.etcd_peer);
        let mut etcd_cmd = Command::new(&bins.etcd);
        etcd_cmd
            .arg("--name=test")
            .arg(format!("--data-dir={}", root.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_client_url}"))
            .arg(format!("--advertise-client-urls={etcd_client_url}"))
            .arg(format!("--listen-peer-urls={etcd_peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={etcd_peer_url}"))
            .arg(format!("--initial-cluster=test={etcd_peer_url}"))
            .arg("--logger=zap")
            .arg("--log-level=info")
            .env_remove("ETCDCTL_API");
        let etcd = spawn_logged(etcd_cmd, "etcd", &etcd_log)?;
        let mut procs = Started {
            etcd,
            apiserver: None,
        };
        let apiserver_log = root.join("kube-apiserver.log");
        let logs = || log_tails(&[("etcd", &etcd_log), ("kube-apiserver", &apiserver_log)]);

        wait_for_etcd(
            &mut procs,
            ports.etcd_client,
            &etcd_log,
            options.ready_timeout,
            &logs,
        )
        .await?;

        // kube-apiserver
        let mut apiserver_cmd = Command::new(&bins.apiserver);
        apiserver_cmd
            .arg(format!("--etcd-servers={etcd_client_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            // The endpoints of the `kubernetes` Service may not be loopback
            // addresses; nothing here needs them, so do not keep them.
            .arg("--endpoint-reconciler-type=none")
            .arg(format!("--secure-port={}", ports.apiserver))
            .arg(format!("--cert-dir={}", cert_dir.display()))
            .arg(format!("--token-auth-file={}", token_file.display()))
            .arg("--authorization-mode=RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--service-account-key-file={}", sa_pub.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                sa_key.display()
            ))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--profiling=false");
        if bins.version < (1, 24) {
            // Before 1.24 the API server also served plain HTTP on 8080
            // unless told not to; 1.24 removed both the port and the flag.
            apiserver_cmd.arg("--insecure-port=0");
        }
        apiserver_cmd.args(&options.extra_args);
        procs.apiserver = Some(spawn_logged(
            apiserver_cmd,
            "kube-apiserver",
            &apiserver_log,
        )?);

        let server = format!("https://127.0.0.1:{}", ports.apiserver);
        let kubeconfig = root.join("kubeconfig");
        write_file(&kubeconfig, &kubeconfig_yaml(&server, &admin_token))?;
        let config = config_from_kubeconfig(&kubeconfig, &server).await?;
        let client = kube::Client::try_from(config.clone()).map_err(|source| K8sError::Client {
            server: server.clone(),
            source,
        })?;

        wait_for_readyz(&mut procs, &client, options.ready_timeout, &logs).await?;

        let Started { etcd, apiserver } = procs;
        let apiserver = apiserver.expect("kube-apiserver was started");
        let pids = Pids {
            etcd: etcd.pid(),
            apiserver: apiserver.pid(),
        };
        tracing::info!(%server, elapsed = ?started.elapsed(), dir = %root.display(), "kube-apiserver ready");
        Ok(KubeApiServer {
            apiserver,
            etcd,
            pids,
            ports,
            admin_token,
            kubeconfig,
            config,
            client,
            dir,
        })
    }

    /// A client with the admin token (group `system:masters`). It was built in
    /// the runtime that ran `start`; for another tokio runtime use [`Self::new_client`].
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A fresh admin client, bound to the calling tokio runtime.
    pub fn new_client(&self) -> Result<kube::Client, K8sError> {
        self.build_client(self.config.clone())
    }

    /// A client that authenticates with another bearer token (a static token
    /// added through the builder, or a ServiceAccount token), TLS unverified.
    pub fn client_with_token(&self, token: &str) -> Result<kube::Client, K8sError> {
        let mut config = self.config.clone();
        config.auth_info = token_auth_info(token);
        self.build_client(config)
    }

    fn build_client(&self, config: kube::Config) -> Result<kube::Client, K8sError> {
        install_tls_provider();
        kube::Client::try_from(config).map_err(|source| K8sError::Client {
            server: self.server_url(),
            source,
        })
    }

    /// The kube client configuration of the admin client.
    pub fn config(&self) -> &kube::Config {
        &self.config
    }

    /// Path of a kubeconfig file with the admin token, for `kubectl` and `helm`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kubeconfig document for this server and any bearer token.
    pub fn kubeconfig_for_token(&self, token: &str) -> String {
        kubeconfig_yaml(&self.server_url(), token)
    }

    /// Writes a kubeconfig for `token` into the instance's directory (removed on
    /// drop) under `name` and returns its path.
    pub fn write_kubeconfig_for_token(&self, name: &str, token: &str) -> Result<PathBuf, K8sError> {
        let path = self.dir.path().join(name);
        write_file(&path, &self.kubeconfig_for_token(token))?;
        Ok(path)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.ports.apiserver)
    }

    /// The admin bearer token (random per instance).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The API server's port and etcd's ports.
    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// Process ids of etcd and kube-apiserver.
    pub fn pids(&self) -> Pids {
        self.pids
    }

    /// The instance's temporary directory (certs, keys, token file, logs, kubeconfig).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of both logs, for test failure messages.
    pub fn log_tails(&self) -> String {
        log_tails(&[
            ("etcd", self.etcd.log_path()),
            ("kube-apiserver", self.apiserver.log_path()),
        ])
    }
}

/// The (major, minor) version a kube-apiserver binary reports:
/// `Kubernetes v1.20.2` (or `v1.36.0-alpha.1+abc`).
fn apiserver_version(bin: &Path) -> Result<(u32, u32), K8sError> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .map_err(K8sError::io(format!("running {} --version", bin.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_apiserver_version(&text).ok_or_else(|| K8sError::Io {
        step: format!("reading the version of {}", bin.display()),
        source: io::Error::other(format!(
            "`--version` printed {:?}, not `Kubernetes vMAJOR.MINOR...`",
            text.trim()
        )),
    })
}

fn parse_apiserver_version(text: &str) -> Option<(u32, u32)> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

#[cfg(test)]
mod version_tests {
    use super::parse_apiserver_version;

    #[test]
    fn versions_as_kube_apiserver_prints_them() {
        assert_eq!(
            parse_apiserver_version("Kubernetes v1.20.2\n"),
            Some((1, 20))
        );
        assert_eq!(
            parse_apiserver_version("Kubernetes v1.36.0-alpha.1+0abc"),
            Some((1, 36))
        );
        assert_eq!(parse_apiserver_version("Kubernetes v1.28+"), Some((1, 28)));
        assert_eq!(parse_apiserver_version("kube-apiserver"), None);
    }
}

struct Bins {
    apiserver: PathBuf,
    /// What `kube-apiserver --version` said: flags differ between versions.
    version: (u32, u32),
    etcd: PathBuf,
    openssl: PathBuf,
}

/// The processes started so far; dropping it (startup failed half-way)
/// kills them.
struct Started {
    etcd: LoggedProcess,
    apiserver: Option<LoggedProcess>,
}

impl Started {
    /// An error naming the first process that has exited: startup failed.
    fn alive(&mut self, logs: &impl Fn() -> String) -> Result<(), K8sError> {
        let exited = match self.apiserver.as_mut().and_then(LoggedProcess::exited) {
            Some(status) => Some(("kube-apiserver", status)),
            None => self.etcd.exited().map(|status| ("etcd", status)),
        };
        match exited {
            Some((process, status)) => Err(K8sError::Exited {
                process,
                status,
                logs: logs(),
            }),
            None => Ok(()),
        }
    }
}

fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KUBE_APISERVER_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"),
    };
    base.join("realtime")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// 32 hex characters from the OS random source.
fn random_token() -> Result<String, K8sError> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(K8sError::io("reading /dev/urandom for the admin token"))?;
    Ok(bytes.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

fn write_file(path: &Path, contents: &str) -> Result<(), K8sError> {
    fs::write(path, contents).map_err(K8sError::io(format!("writing {}", path.display())))
}

fn run_openssl(
    openssl: &Path,
    step: &'static str,
    args: &[&std::ffi::OsStr],
) -> Result<(), K8sError> {
    let command = std::iter::once(openssl.as_os_str())
        .chain(args.iter().copied())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new(openssl)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(K8sError::io(format!("{step}: running `{command}`")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(K8sError::Command {
            step,
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Spawns with stdout and stderr in `log`. Quiet when a test panics: the
/// logs are long, and startup errors carry their tails.
fn spawn_logged(cmd: Command, name: &str, log: &Path) -> Result<LoggedProcess, K8sError> {
    Ok(LoggedProcess::spawn_logging_to(cmd, name, log)?.quiet_on_panic())
}

/// Waits until our etcd logs that it serves clients: that proves it bound
/// the port (a health check alone could reach another test's etcd).
async fn wait_for_etcd(
    procs: &mut Started,
    port: u16,
    log: &Path,
    timeout: Duration,
    logs: &impl Fn() -> String,
) -> Result<(), K8sError> {
    let started = Instant::now();
    loop {
        procs.alive(logs)?;
        let text = fs::read_to_string(log).unwrap_or_default();
        if text.contains("serving client traffic insecurely") {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(K8sError::NotReady {
                process: "etcd",
                waited: started.elapsed(),
                last_error: format!(
                    "no \"serving client traffic\" line for port {port} in its log"
                ),
                logs: logs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `/readyz` (and the system namespaces) with the admin token. Another test's server on the same
/// port would reject our random token, so success means it is ours.
async fn wait_for_readyz(
    procs: &mut Started,
    client: &kube::Client,
    timeout: Duration,
    logs: &impl Fn() -> String,
) -> Result<(), K8sError> {
    let started = Instant::now();
    let mut poll_timeout = Duration::from_secs(1);
    loop {
        procs.alive(logs)?;
        // kube-apiserver opens its port seconds before it serves: a request
        // sent then waits in the backlog. A short per-poll timeout (growing
        // slowly, for a loaded machine) keeps that from delaying readiness.
        let last_error = match tokio::time::timeout(poll_timeout, check_ready(client)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => {
                let e = format!("the API server did not answer within {poll_timeout:?}");
                poll_timeout = (poll_timeout + Duration::from_millis(500)).min(MAX_POLL_TIMEOUT);
                e
            }
        };
        if started.elapsed() > timeout {
            return Err(K8sError::NotReady {
                process: "kube-apiserver",
                waited: started.elapsed(),
                last_error,
                logs: logs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ready for tests: `/readyz` says ok and the namespaces `default` and
/// `kube-system` exist (their controllers may run a moment after `/readyz`).
async fn check_ready(client: &kube::Client) -> Result<(), String> {
    let request = http::Request::get("/readyz")
        .body(Vec::new())
        .expect("a static request is valid");
    match client.request_text(request).await {
        Ok(body) if body.trim() == "ok" => {}
        Ok(body) => return Err(format!("/readyz answered {body:?}")),
        Err(e) => return Err(format!("/readyz: {e}")),
    }
    let namespaces: kube::Api<Namespace> = kube::Api::all(client.clone());
    for name in ["default", "kube-system"] {
        match namespaces.get_opt(name).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(format!("namespace {name} does not exist yet")),
            Err(e) => return Err(format!("reading namespace {name}: {e}")),
        }
    }
    Ok(())
}

fn log_tails(logs: &[(&str, &Path)]) -> String {
    let mut out = String::new();
    for (name, path) in logs {
        let text = match fs::read(path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(cannot read: {e})"),
        };
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
        let _ = writeln!(
            out,
            "--- last {} lines of {} ({}) ---",
            tail.len(),
            name,
            path.display()
        );
        for line in tail {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

fn kubeconfig_yaml(server: &str, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: realtime-test
  cluster:
    server: {server}
    insecure-skip-tls-verify: true
users:
- name: realtime-test
  user:
    token: {token}
contexts:
- name: realtime-test
  context:
    cluster: realtime-test
    user: realtime-test
    namespace: default
current-context: realtime-test
"
    )
}

async fn config_from_kubeconfig(path: &Path, server: &str) -> Result<kube::Config, K8sError> {
    let map = |source| K8sError::Kubeconfig {
        server: server.to_string(),
        source,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(map)?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(map)
}

/// Picks the process-wide rustls provider. Both ring (kube's `ring` feature)
/// and aws-lc-rs (the server crate's dependencies) are linked into the test
/// binaries, so rustls cannot choose one by itself and kube's client would
/// panic. Idempotent; keeps a provider someone else installed first.
pub fn install_tls_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

/// `AuthInfo` with only a bearer token. Its token field is a `secrecy` type;
/// going through serde avoids depending on that crate.
fn token_auth_info(token: &str) -> AuthInfo {
    serde_json::from_value(serde_json::json!({ "token": token })).expect("AuthInfo accepts a token")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_lines_quote_groups() {
        let t = StaticToken {
            token: "t0k".into(),
            user: "alice".into(),
            uid: "alice-uid".into(),
            groups: vec!["a".into(), "b".into()],
        };
        assert_eq!(t.csv_line(), "t0k,alice,alice-uid,\"a,b\"");
        let no_groups = StaticToken {
            groups: vec![],
            ..t
        };
        assert_eq!(no_groups.csv_line(), "t0k,alice,alice-uid");
    }

    #[test]
    fn kubeconfig_parses_with_insecure_skip_tls_verify() {
        let yaml = kubeconfig_yaml("https://127.0.0.1:6443", "abc");
        let kc = Kubeconfig::from_yaml(&yaml).unwrap();
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.insecure_skip_tls_verify, Some(true));
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
    }

    #[test]
    fn random_tokens_differ() {
        let (a, b) = (random_token().unwrap(), random_token().unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn missing_binary_names_the_build_script() {
        let err = K8sError::ApiServerMissing {
            path: "/nope".into(),
            hint: BUILD_HINT,
        };
        assert!(err
            .to_string()
            .contains("tests/k8s/build-kube-apiserver.sh"));
    }
}

//! A throwaway PostgreSQL cluster with logical replication, for the tests, the
//! benchmarks and `realtime-server dev`.
//!
//! Owns: finding the machine's PostgreSQL binaries, `initdb` into a temporary
//! directory, starting the server on a free loopback port with `wal_level =
//! logical`, applying a schema ([`TempPostgres::with_schema`], the one way to
//! get a database to test against), and removing every trace of it on drop
//! (also when a test panics). As root it runs PostgreSQL as the `postgres`
//! user, since `initdb` refuses to run as root. It never touches a cluster it
//! did not create.

use std::fmt;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::net::free_port;

/// The superuser that `initdb` creates; tests and the dev command connect as it.
pub const SUPERUSER: &str = "postgres";

/// How often to try again with a new port when another process took ours
/// between choosing it and PostgreSQL binding it (tests start clusters in
/// parallel).
const PORT_ATTEMPTS: usize = 5;

/// How much of the server log to show when something fails.
const LOG_TAIL_BYTES: u64 = 4096;

/// Why a throwaway cluster could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "no PostgreSQL server binaries found (looked for `initdb` on PATH, in `pg_config --bindir` \
         and under /usr/lib/postgresql/*/bin). Install them: `apt-get install postgresql` \
         (Debian/Ubuntu), or set PG_BINDIR to the directory that holds initdb and pg_ctl"
    )]
    BinariesNotFound,
    #[error(
        "running as root, but there is no `postgres` user to run PostgreSQL as (initdb refuses \
         root): create it with `useradd --system postgres`, or run as a normal user"
    )]
    NoPostgresUser,
    #[error("{step}: {source}")]
    Io {
        step: String,
        #[source]
        source: io::Error,
    },
    #[error("{step} failed ({status}):\n{output}")]
    Command {
        step: String,
        status: String,
        output: String,
    },
    #[error("PostgreSQL did not start: {reason}\n--- tail of {log} ---\n{tail}")]
    Start {
        reason: String,
        log: String,
        tail: String,
    },
    #[error("{step} {url}: {reason}")]
    Sql {
        step: &'static str,
        url: String,
        /// The error with its causes: tokio-postgres says only "db error"
        /// and keeps PostgreSQL's message in its source.
        reason: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("starting PostgreSQL: the blocking task failed: {0}")]
    Task(String),
}

impl PgError {
    fn sql(step: &'static str, url: String, source: tokio_postgres::Error) -> PgError {
        let mut reason = source.to_string();
        let mut cause = std::error::Error::source(&source);
        while let Some(c) = cause {
            reason.push_str(&format!(": {c}"));
            cause = c.source();
        }
        PgError::Sql {
            step,
            url,
            reason,
            source,
        }
    }
}

fn io_err(step: impl Into<String>) -> impl FnOnce(io::Error) -> PgError {
    let step = step.into();
    move |source| PgError::Io { step, source }
}

/// A running throwaway cluster. Dropping it stops PostgreSQL and deletes its
/// directory.
pub struct TempPostgres {
    // Declared first so the directory outlives nothing that needs it; removed
    // explicitly in `Drop` after the server is stopped.
    dir: Option<tempfile::TempDir>,
    bindir: PathBuf,
    port: u16,
    run_as_postgres: bool,
}

impl fmt::Debug for TempPostgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TempPostgres")
            .field("dir", &self.dir())
            .field("port", &self.port)
            .finish()
    }
}

impl TempPostgres {
    /// Creates and starts a cluster with logical replication on a free
    /// loopback port. Blocking: takes about a second.
    pub fn start() -> Result<Self, PgError> {
        let bindir = find_bindir()?;
        let run_as_postgres = is_root();
        if run_as_postgres && !user_exists(SUPERUSER) {
            return Err(PgError::NoPostgresUser);
        }

        let dir = tempfile::Builder::new()
            .prefix("realtime-pg-")
            .tempdir()
            .map_err(io_err("creating a temporary directory for PostgreSQL"))?;
        let mut pg = TempPostgres {
            dir: Some(dir),
            bindir,
            port: 0,
            run_as_postgres,
        };
        if run_as_postgres {
            pg.chown_to_postgres(pg.dir())?;
        }
        pg.initdb()?;

        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            pg.port = free_port().map_err(io_err("choosing a port for PostgreSQL"))?;
            pg.write_config()?;
            match pg.pg_ctl_start() {
                Ok(()) => return Ok(pg),
                Err(e) => {
                    let tail = pg.log_tail();
                    let port_taken = tail.contains("could not bind")
                        || tail.contains("Address already in use")
                        || tail.contains("could not create any TCP/IP sockets");
                    last_err = Some(e);
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        Err(last_err.expect("at least one start attempt"))
    }

    /// Starts a cluster (off the async runtime: it blocks for about a second),
    /// connects, and runs `schema` (any SQL; several statements run as one
    /// transaction; "" for none). The one way the tests, the benchmarks and
    /// `realtime-server dev` get a database with their tables. On failure
    /// nothing is left behind.
    pub async fn with_schema(
        schema: &str,
    ) -> Result<(TempPostgres, tokio_postgres::Client), PgError> {
        let pg = tokio::task::spawn_blocking(TempPostgres::start)
            .await
            .map_err(|e| PgError::Task(e.to_string()))??;
        let applied = async {
            let url = pg.url();
            let db = pg
                .connect()
                .await
                .map_err(|e| PgError::sql("connecting to", url.clone(), e))?;
            if !schema.is_empty() {
                db.batch_execute(schema)
                    .await
                    .map_err(|e| PgError::sql("applying the schema to", url, e))?;
            }
            Ok(db)
        }
        .await;
        match applied {
            Ok(db) => Ok((pg, db)),
            Err(e) => {
                // Stopping blocks: not on the runtime's threads.
                let _ = tokio::task::spawn_blocking(move || drop(pg)).await;
                Err(e)
            }
        }
    }

    /// The cluster's directory: `data/`, the server log and the Unix socket.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("directory lives until drop")
            .path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir().join("postgresql.log")
    }

    /// Directory of `initdb`, `pg_ctl`, `pg_recvlogical`, `psql`.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn user(&self) -> &'static str {
        SUPERUSER
    }

    pub fn dbname(&self) -> &'static str {
        "postgres"
    }

    /// The environment of a `realtime-server` process streaming this
    /// cluster's `publications`: a free `PORT` on 127.0.0.1, the database
    /// settings (trust authentication: the password is never checked) and
    /// channels not secured. Callers add the rest (`RUST_LOG`, limits).
    pub fn server_env(
        &self,
        publications: &[&str],
    ) -> Result<std::collections::BTreeMap<String, String>, PgError> {
        use realtime_contract::config::var;
        let publications = serde_json::to_string(publications).expect("a list of strings is JSON");
        Ok([
            (
                var::PORT,
                free_port()
                    .map_err(io_err("choosing the server's port"))?
                    .to_string(),
            ),
            (var::BIND_ADDRESS, self.host().to_string()),
            (var::DB_HOST, self.host().to_string()),
            (var::DB_PORT, self.port().to_string()),
            (var::DB_NAME, self.dbname().to_string()),
            (var::DB_USER, self.user().to_string()),
            (var::DB_PASSWORD, "unused-with-trust-auth".to_string()),
            (var::PUBLICATIONS, publications),
            (var::SECURE_CHANNELS, "false".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect())
    }

    /// A libpq-style connection string for `tokio_postgres::connect`.
    pub fn connection_string(&self) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            self.host(),
            self.port,
            SUPERUSER,
            self.dbname()
        )
    }

    /// A `postgres://` URL, for `psql` and humans.
    pub fn url(&self) -> String {
        format!(
            "postgres://{}@{}:{}/{}",
            SUPERUSER,
            self.host(),
            self.port,
            self.dbname()
        )
    }

    /// Connects with tokio-postgres; the connection task is spawned on the
    /// current runtime.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) =
            tokio_postgres::connect(&self.connection_string(), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            // The connection ends when the client is dropped or the server stops;
            // either way the client's calls report it.
            let _ = connection.await;
        });
        Ok(client)
    }

    /// The last few KiB of the server log.
    pub fn log_tail(&self) -> String {
        read_tail(&self.log_path(), LOG_TAIL_BYTES)
    }

    /// Stops the server (`mode`: "smart", "fast" or "immediate"), keeping the
    /// data, so a test can start it again with [`TempPostgres::restart`].
    pub fn stop(&self, mode: &str) -> Result<(), PgError> {
        let data = self.data_dir();
        let out = self.run_pg(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                mode.as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        )?;
        check(&format!("pg_ctl stop -m {mode}"), out)
    }

    /// Starts a stopped server again on the same port and data.
    pub fn restart(&self) -> Result<(), PgError> {
        self.pg_ctl_start()
    }

    /// Runs one of the cluster's binaries (e.g. `psql`, `pg_recvlogical`) as
    /// the user that owns the cluster, with the given arguments.
    pub fn command(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        let mut cmd = if self.run_as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", SUPERUSER, "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.env_remove("PGDATA")
            .env("PGHOST", self.host())
            .env("PGUSER", SUPERUSER)
            .env("PGDATABASE", self.dbname());
        // Before the first start there is no port yet, and initdb reads PGPORT.
        if self.port == 0 {
            cmd.env_remove("PGPORT");
        } else {
            cmd.env("PGPORT", self.port.to_string());
        }
        cmd
    }

    /// A PostgreSQL client program (`pgbench`, `pg_recvlogical`, `psql`) run
    /// as this process's user, connecting over TCP to this cluster through
    /// `PGHOST`, `PGPORT`, `PGUSER` and `PGDATABASE`. Found beside the
    /// cluster's binaries, else in `pg_config --bindir`, else on PATH.
    pub fn client_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(client_program(&self.bindir, program));
        cmd.env_remove("PGDATA")
            .env("PGHOST", self.host())
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", SUPERUSER)
            .env("PGDATABASE", self.dbname());
        cmd
    }

    fn run_pg(&self, program: &str, args: &[&std::ffi::OsStr]) -> Result<Output, PgError> {
        self.command(program)
            .args(args)
            .output()
            .map_err(io_err(format!(
                "running {}",
                self.bindir.join(program).display()
            )))
    }

    fn initdb(&self) -> Result<(), PgError> {
        let data = self.data_dir();
        let out = self.run_pg(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                SUPERUSER.as_ref(),
                "--auth=trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C.UTF-8".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        check("initdb", out)
    }

    fn write_config(&self) -> Result<(), PgError> {
        // `include` order: the last setting wins, so a rewrite on retry with a
        // new port is one file, appended to by postgresql.conf once.
        let data = self.data_dir();
        let conf = data.join("postgresql.conf");
        let extra = data.join("realtime.conf");
        let socket_dir = self.dir().display().to_string();
        let settings = format!(
            "# written by realtime's TempPostgres\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{socket_dir}'\n\
             wal_level = logical\n\
             max_replication_slots = 32\n\
             max_wal_senders = 32\n\
             max_connections = 100\n\
             fsync = off\n\
             full_page_writes = off\n\
             shared_buffers = 64MB\n\
             log_min_messages = warning\n\
             log_line_prefix = '%m [%p] '\n",
            port = self.port,
        );
        fs::write(&extra, settings).map_err(io_err(format!("writing {}", extra.display())))?;
        let current =
            fs::read_to_string(&conf).map_err(io_err(format!("reading {}", conf.display())))?;
        if !current.contains("include 'realtime.conf'") {
            fs::write(&conf, current + "\ninclude 'realtime.conf'\n")
                .map_err(io_err(format!("writing {}", conf.display())))?;
        }
        if self.run_as_postgres {
            self.chown_to_postgres(&extra)?;
        }
        Ok(())
    }

    fn pg_ctl_start(&self) -> Result<(), PgError> {
        let data = self.data_dir();
        let log = self.log_path();
        let out = self.run_pg(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "start".as_ref(),
            ],
        )?;
        if out.status.success() {
            return Ok(());
        }
        Err(PgError::Start {
            reason: format!(
                "pg_ctl start exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            log: log.display().to_string(),
            tail: self.log_tail(),
        })
    }

    fn chown_to_postgres(&self, path: &Path) -> Result<(), PgError> {
        let out = Command::new("chown")
            .arg("-R")
            .arg(format!("{SUPERUSER}:"))
            .arg(path)
            .output()
            .map_err(io_err("running chown"))?;
        check(&format!("chown -R postgres {}", path.display()), out)
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if self.port != 0 {
            // Immediate: the data is thrown away anyway. Errors are ignored
            // (the server may already be stopped by a test).
            let _ = self.stop("immediate");
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

fn check(step: &str, out: Output) -> Result<(), PgError> {
    if out.status.success() {
        return Ok(());
    }
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    Err(PgError::Command {
        step: step.to_string(),
        status: out.status.to_string(),
        output,
    })
}

/// Finds the directory holding `initdb` and `pg_ctl`: `PG_BINDIR`, then PATH,
/// then `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> Result<PathBuf, PgError> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();

    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if has_server(&dir) {
            return Ok(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(dir) = std::env::split_paths(&path).find(|d| has_server(d)) {
            return Ok(dir);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_server(&dir) {
                return Ok(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, dir)| dir)
        .ok_or(PgError::BinariesNotFound)
}

/// `program` beside the server binaries in `bindir`, else in `pg_config
/// --bindir` (client packages may live apart), else the bare name for PATH.
fn client_program(bindir: &Path, program: &str) -> PathBuf {
    let beside = bindir.join(program);
    if beside.is_file() {
        return beside;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join(program).is_file() {
            return dir.join(program);
        }
    }
    PathBuf::from(program)
}

fn is_root() -> bool {
    // SAFETY-free check: `id -u` avoids a libc dependency for one call.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn user_exists(name: &str) -> bool {
    Command::new("id")
        .arg("-u")
        .arg(name)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn read_tail(path: &Path, max: u64) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

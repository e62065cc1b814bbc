//! PostgreSQL for the role-probe test: a primary and a streaming standby from Debian's
//! postgresql, run as the `postgres` user inside backend namespaces (processes and data
//! directory removed on drop), and a client that runs one statement per fresh connection and
//! says where it ran or how it failed.

use std::{
    collections::BTreeSet,
    fs::OpenOptions,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use netlab::Namespace;
use tokio_postgres::{error::SqlState, NoTls, SimpleQueryMessage};

use super::topology::*;

/// Where every server listens, and both VIPs' port.
pub const POSTGRES_PORT: u16 = 5432;
/// The read VIP: a second address, as both VIPs use PostgreSQL's port.
pub const READ_VIP: Ipv4Addr = Ipv4Addr::new(10, 201, 100, 2);
/// How long a client waits for a session: short, so that a SYN the load balancer drops (a VIP
/// with no backend for a moment) costs the traffic loops little of their resolution.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(150);
/// How long a client waits for a statement's answer once connected.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// The server programs this test runs.
const PROGRAMS: [&str; 4] = ["initdb", "pg_ctl", "postgres", "pg_basebackup"];

/// The directory of the newest installed PostgreSQL's server programs: Debian keeps them off
/// PATH, in /usr/lib/postgresql/VERSION/bin.
fn server_programs() -> PathBuf {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            PROGRAMS
                .iter()
                .all(|program| bin.join(program).is_file())
                .then_some((version, bin))
        })
        .max();
    match newest {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server in /usr/lib/postgresql/VERSION/bin (needs {PROGRAMS:?}): install \
             the Debian package postgresql (`cargo xtask test` installs it; `cargo xtask doctor` \
             lists what is missing)"
        ),
    }
}

/// The `postgres` system user's uid and gid: PostgreSQL refuses to run as root.
fn postgres_account() -> (u32, u32) {
    // SAFETY: a valid C string; the entry's fields are copied before any other passwd call.
    let entry = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    assert!(
        !entry.is_null(),
        "no `postgres` user: the Debian package postgresql creates it"
    );
    // SAFETY: a non-null entry getpwnam returned.
    unsafe { ((*entry).pw_uid, (*entry).pw_gid) }
}

/// Two PostgreSQL servers and the scratch directory holding their data and logs. Dropping it
/// stops every server (immediate shutdown, then SIGKILL), kills what is left of them in their
/// namespaces and removes the directory, also when the test panics.
pub struct Postgres {
    bin: PathBuf,
    uid: u32,
    gid: u32,
    dir: PathBuf,
    /// Per backend: the postmaster (started directly as `postgres`, so the child is the
    /// postmaster itself) and the namespace it runs in.
    servers: Vec<Option<(Child, String)>>,
}

impl Postgres {
    pub fn new() -> Self {
        let (uid, gid) = postgres_account();
        let dir = std::env::temp_dir().join(format!(
            "failover-postgres-test-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        Self {
            bin: server_programs(),
            uid,
            gid,
            dir,
            servers: vec![None, None],
        }
    }

    fn data(&self, index: usize) -> PathBuf {
        self.dir.join(format!("data-{index}"))
    }

    fn log(&self, index: usize) -> PathBuf {
        self.dir.join(format!("{}.log", backend_name(index)))
    }

    /// A server program run as `postgres`, in the scratch directory (root's working directory
    /// is not readable by it).
    fn program(&self, name: &str) -> Command {
        let mut command = Command::new(self.bin.join(name));
        command
            .uid(self.uid)
            .gid(self.gid)
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        command
    }

    /// Runs `command` to completion; panics with its output when it fails.
    fn run(command: &mut Command) {
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{command:?}: {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A new primary in `data-<index>`: initdb, then every client trusted (the servers only
    /// listen inside the test's namespaces).
    pub fn init_primary(&self, index: usize) {
        let data = self.data(index);
        Self::run(self.program("initdb").arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "--locale=C",
            "-E",
            "UTF8",
        ]));
        let mut hba = OpenOptions::new()
            .append(true)
            .open(data.join("pg_hba.conf"))
            .unwrap();
        hba.write_all(b"host all all 0.0.0.0/0 trust\nhost replication all 0.0.0.0/0 trust\n")
            .unwrap();
    }

    /// A standby in `data-<index>`, copied from the primary at `primary` by pg_basebackup from
    /// `namespace`, with `-R` (standby.signal and primary_conninfo) and a replication slot.
    pub fn init_standby(&self, index: usize, namespace: &Namespace, primary: Ipv4Addr) {
        let mut command = self.program("pg_basebackup");
        command.arg("-D").arg(self.data(index)).args([
            "-h",
            &primary.to_string(),
            "-p",
            &POSTGRES_PORT.to_string(),
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            "-C",
            "-S",
            &format!("standby_{index}"),
            "-c",
            "fast",
            "--no-sync",
        ]);
        namespace.enter(|| Self::run(&mut command)).unwrap();
    }

    /// Starts the server of `data-<index>` inside `namespace`, listening on the backend's
    /// address and both VIPs, with settings for speed (no fsync, small buffers) and no Unix
    /// socket (the namespaces share one file system).
    pub fn start(&mut self, index: usize, namespace: &Namespace) {
        let log = std::fs::File::create(self.log(index)).unwrap();
        let listen = format!("{},{VIP},{READ_VIP}", backend_address(index));
        let settings = [
            format!("listen_addresses={listen}"),
            format!("port={POSTGRES_PORT}"),
            "unix_socket_directories=".to_owned(),
            format!("cluster_name={}", backend_name(index)),
            "fsync=off".to_owned(),
            "full_page_writes=off".to_owned(),
            "shared_buffers=16MB".to_owned(),
            "max_connections=40".to_owned(),
        ];
        let mut command = self.program("postgres");
        command.arg("-D").arg(self.data(index));
        for setting in &settings {
            command.args(["-c", setting]);
        }
        command.stdout(log.try_clone().unwrap()).stderr(log);
        // Forked from a thread inside the namespace, the postmaster and its children live there.
        let child = namespace.enter(|| command.spawn()).unwrap().unwrap();
        self.servers[index] = Some((child, namespace.name().to_owned()));
    }

    /// `pg_ctl promote` without its wait (it polls every 100 ms): the caller watches the
    /// server leave recovery itself.
    pub fn promote(&self, index: usize) {
        Self::run(
            self.program("pg_ctl")
                .args(["promote", "-W", "-D"])
                .arg(self.data(index)),
        );
    }

    /// Sends `signal` to the postmaster of `index` (SIGINT: fast shutdown, SIGQUIT: immediate)
    /// and reaps it; SIGKILL after `patience`, then every process left in its namespace (only
    /// its children run there).
    pub fn stop(&mut self, index: usize, signal: i32, patience: Duration) {
        let Some((mut child, namespace)) = self.servers[index].take() else {
            return;
        };
        // SAFETY: signalling a child we own and have not reaped.
        unsafe { libc::kill(child.id() as i32, signal) };
        if wait_for(patience, || child.try_wait().ok().flatten()).is_none() {
            let _ = child.kill();
        }
        let _ = child.wait();
        for pid in netlab::namespace_pids(&namespace).unwrap_or_default() {
            // SAFETY: a process in a namespace this test created; no other program runs there.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    pub fn logs(&self) -> String {
        (0..self.servers.len())
            .map(|index| {
                let path = self.log(index);
                format!(
                    "--- {}\n{}",
                    path.display(),
                    std::fs::read_to_string(&path).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        for index in 0..self.servers.len() {
            self.stop(index, libc::SIGQUIT, Duration::from_secs(5));
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What one statement over a fresh connection came to.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlOutcome {
    /// The statement ran on server `server` (its `cluster_name`), in recovery or not.
    Answered { server: String, in_recovery: bool },
    /// No session: refused, timed out, or turned away before the statement.
    NoConnection(String),
    /// A standby refused a write (SQLSTATE 25006).
    ReadOnly(String),
    /// The session was cut by its server's shutdown.
    Cut(String),
    /// Anything else.
    Failed(String),
}

/// How the test's client connects to the server at `address`: as `postgres`, to its database.
fn client_config(address: SocketAddr, connect_timeout: Duration) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .hostaddr(address.ip())
        .port(address.port())
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(connect_timeout);
    config
}

/// Runs `sql`, whose first row must be `(cluster_name, pg_is_in_recovery())`, over a new
/// connection to `address` from the calling thread's namespace.
async fn sql_execute(address: SocketAddr, sql: &str) -> SqlOutcome {
    let config = client_config(address, CONNECT_TIMEOUT);
    let (client, connection) =
        match tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls)).await {
            Err(_) => return SqlOutcome::NoConnection("timed out".into()),
            Ok(Err(error)) => return SqlOutcome::NoConnection(error_text(&error)),
            Ok(Ok(pair)) => pair,
        };
    let driver = tokio::spawn(connection);
    let result = tokio::time::timeout(ANSWER_TIMEOUT, client.simple_query(sql)).await;
    drop(client);
    driver.abort();
    let messages = match result {
        Err(_) => return SqlOutcome::Failed("no answer in time".into()),
        Ok(Ok(messages)) => messages,
        Ok(Err(error)) => {
            let text = error_text(&error);
            return match error.code() {
                Some(code) if *code == SqlState::READ_ONLY_SQL_TRANSACTION => {
                    SqlOutcome::ReadOnly(text)
                }
                Some(code)
                    if [
                        SqlState::ADMIN_SHUTDOWN,
                        SqlState::CRASH_SHUTDOWN,
                        SqlState::CANNOT_CONNECT_NOW,
                    ]
                    .contains(code) =>
                {
                    SqlOutcome::Cut(text)
                }
                None if error.is_closed() => SqlOutcome::Cut(text),
                _ => SqlOutcome::Failed(text),
            };
        }
    };
    let row = messages.iter().find_map(|message| match message {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    match row.map(|row| (row.get(0), row.get(1))) {
        Some((Some(server), Some(in_recovery))) => SqlOutcome::Answered {
            server: server.to_owned(),
            in_recovery: in_recovery == "t",
        },
        _ => SqlOutcome::Failed(format!("no (cluster_name, in_recovery) row: {messages:?}")),
    }
}

/// The error and its causes (tokio-postgres's own text is only "db error" or "error connecting").
fn error_text(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `sql` once over a new connection from `namespace`.
pub fn sql_once(namespace: &Namespace, address: SocketAddr, sql: &str) -> SqlOutcome {
    namespace
        .enter(|| runtime().block_on(sql_execute(address, sql)))
        .unwrap()
}

/// Where a statement ran: the server's `cluster_name` (`b0`, `b1`) and whether it is a standby.
pub const IDENTITY: &str = "SELECT current_setting('cluster_name'), pg_is_in_recovery()";

/// One statement of [`sql_traffic`]: when its connection began and ended, and what it came to.
#[derive(Debug)]
pub struct SqlSample {
    pub n: i64,
    pub started: Instant,
    pub ended: Instant,
    pub outcome: SqlOutcome,
}

/// Statements `sql(n)` through `address` from `namespace`, each over a fresh connection (so the
/// load balancer chooses a backend for each), back to back until `until`.
pub fn sql_traffic(
    namespace: &Namespace,
    address: SocketAddr,
    until: Instant,
    first: i64,
    sql: impl Fn(i64) -> String + Sync,
) -> Vec<SqlSample> {
    namespace
        .enter(|| {
            let runtime = runtime();
            let mut samples = Vec::new();
            // Bounded by time; the count bound only guards against a clock that stands still.
            for n in first..first + 100_000 {
                let started = Instant::now();
                if started >= until {
                    break;
                }
                let outcome = runtime.block_on(sql_execute(address, &sql(n)));
                let refused = matches!(outcome, SqlOutcome::NoConnection(_));
                samples.push(SqlSample {
                    n,
                    started,
                    ended: Instant::now(),
                    outcome,
                });
                // A refused connect returns at once: without a pause the loop would take a
                // whole CPU from the probes and the daemon on a small machine.
                if refused {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            samples
        })
        .unwrap()
}

/// Whether `outcome` is an answer from server `name`, in recovery or not as `recovering` says.
pub fn answered_by(outcome: &SqlOutcome, name: &str, recovering: bool) -> bool {
    matches!(outcome, SqlOutcome::Answered { server, in_recovery } if server == name && *in_recovery == recovering)
}

/// The numbers in `writes` on the server at `address`.
pub fn sql_rows(namespace: &Namespace, address: SocketAddr) -> BTreeSet<i64> {
    namespace
        .enter(|| {
            runtime().block_on(async {
                let (client, connection) = client_config(address, ANSWER_TIMEOUT).connect(NoTls).await.unwrap();
                let driver = tokio::spawn(connection);
                let rows = client.query("SELECT n FROM writes", &[]).await.unwrap();
                drop(client);
                driver.abort();
                rows.iter().map(|row| row.get(0)).collect()
            })
        })
        .unwrap()
}

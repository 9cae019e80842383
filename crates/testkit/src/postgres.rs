//! A private PostgreSQL server for tests, from Debian's packages: one
//! cluster per test binary, started on first use, and a fresh database per
//! test ([`database`]).
//!
//! The cluster lives in `/tmp/standby-pg-*` and belongs to the `postgres`
//! system user when the tests run as root (PostgreSQL refuses root), else
//! to the user running them. It listens on 127.0.0.1 on a free port, with
//! its socket in its own directory, trusts every local connection and
//! skips fsync. A shell run as the cluster's owner starts `postgres` and
//! waits on a pipe from the test binary: when the binary exits, however it
//! exits, the pipe closes, and the shell stops the server and deletes the
//! cluster.
//!
//! Missing binaries fail the test with the package that installs them.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where Debian's `postgresql-NN` packages put their programs.
const PACKAGES: &str = "/usr/lib/postgresql";

/// The superuser of the cluster, trusted without a password.
pub const SUPERUSER: &str = "postgres";

/// The cluster of this test binary.
pub struct Cluster {
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
    /// Kept open until the process exits: its end stops the server.
    _lifeline: ChildStdin,
    _shell: Child,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The URL of a new, empty database on this test binary's cluster
/// (`postgres://postgres@127.0.0.1:PORT/t_N`), starting the cluster on
/// first use.
pub fn database() -> String {
    let c = cluster();
    let name = format!("t_{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
    c.sql(&format!("CREATE DATABASE {name}"));
    c.url(&name)
}

/// The cluster of this test binary, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(Cluster::start)
}

impl Cluster {
    /// The URL of database `name` as the superuser.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Run `sql` in database `postgres`; panics with psql's output when it
    /// fails.
    pub fn sql(&self, sql: &str) {
        let out = self.psql(sql);
        assert!(
            out.status.success(),
            "psql -c {sql:?} on 127.0.0.1:{}: {}{}",
            self.port,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Run `sql` in database `db`; panics with psql's output when it fails.
    pub fn sql_in(&self, db: &str, sql: &str) {
        let out = self.psql_in(db, sql);
        assert!(
            out.status.success(),
            "psql -d {db} on 127.0.0.1:{}: {}{}",
            self.port,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn psql(&self, sql: &str) -> Output {
        self.psql_in("postgres", sql)
    }

    fn psql_in(&self, db: &str, sql: &str) -> Output {
        Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER, "-d", db])
            .args(["-c", sql])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .expect("run psql")
    }

    fn start() -> Cluster {
        let bin = bin_dir();
        let (uid, gid) = owner();
        let dir = tempfile::Builder::new()
            .prefix("standby-pg-")
            .tempdir_in("/tmp")
            .expect("create the cluster's directory in /tmp")
            .keep();
        nix::unistd::chown(&dir, Some(uid), Some(gid)).expect("give the cluster's directory away");
        let data = dir.join("data");
        let out = Command::new(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8"])
            .args(["--locale=C.UTF-8", "--no-sync", "--no-instructions"])
            .current_dir(&dir)
            .uid(uid.as_raw())
            .gid(gid.as_raw())
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb -D {} failed: {}{}",
            data.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = crate::free_port();
        // $0 postgres, $1 data, $2 port, $3 cluster directory. The server
        // runs in the background; `read` returns when the test binary's
        // end of stdin closes; then stop it and remove everything.
        let script = r#"trap '' INT TERM HUP
"$0" -D "$1" -p "$2" -k "$3" -c listen_addresses=127.0.0.1 \
  -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
  -c max_connections=200 -c shared_buffers=32MB >"$3/server.log" 2>&1 </dev/null &
pg=$!
read _
kill -INT "$pg"
wait "$pg"
rm -rf "$3""#;
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(bin.join("postgres"))
            .arg(&data)
            .arg(port.to_string())
            .arg(&dir)
            .current_dir(&dir)
            .uid(uid.as_raw())
            .gid(gid.as_raw())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run sh");
        let lifeline = shell.stdin.take().expect("piped stdin");
        let cluster = Cluster {
            port,
            bin,
            dir,
            _lifeline: lifeline,
            _shell: shell,
        };
        cluster.wait_ready();
        cluster
    }

    /// Wait until the server answers queries (up to 30 s).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.psql("SELECT 1");
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not answer on 127.0.0.1:{} within 30 s: {}\nserver log:\n{}",
                self.port,
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The `bin` directory of the newest PostgreSQL installed.
fn bin_dir() -> PathBuf {
    let newest = std::fs::read_dir(PACKAGES)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .max();
    match newest {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed ({PACKAGES}/*/bin/postgres is missing): these tests \
             start a real server; install the Debian package `postgresql` \
             (`apt-get install postgresql`; scripts/test does this)"
        ),
    }
}

/// Who runs the server: the `postgres` user when the tests run as root.
fn owner() -> (nix::unistd::Uid, nix::unistd::Gid) {
    if !nix::unistd::geteuid().is_root() {
        return (nix::unistd::geteuid(), nix::unistd::getegid());
    }
    match nix::unistd::User::from_name(SUPERUSER) {
        Ok(Some(u)) => (u.uid, u.gid),
        _ => panic!(
            "no user `{SUPERUSER}`: PostgreSQL refuses to run as root; the Debian package \
             `postgresql` creates the user (`apt-get install postgresql`)"
        ),
    }
}

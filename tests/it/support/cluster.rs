//! A throwaway PostgreSQL cluster with `wal_level=logical`, TLS (a test CA and a server
//! certificate for localhost/127.0.0.1, client certificates it signed for `certuser`) and roles
//! for each authentication method, over TCP and over the Unix socket. Started as
//! the `postgres` user when the tests run as root, because initdb refuses root.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Password of `md5user` (md5 authentication).
pub const MD5_PASSWORD: &str = "md5-pass";
/// Password of `pwuser` (cleartext `password` authentication).
pub const CLEARTEXT_PASSWORD: &str = "plain-pass";
/// Password of `scramuser` (scram-sha-256 authentication).
pub const SCRAM_PASSWORD: &str = "scräm pass";

pub struct Cluster {
    pub port: u16,
    pub dir: PathBuf,
    bindir: PathBuf,
    owned: bool,
}

fn is_root() -> bool {
    // The tests run as root in CI (services start that way); initdb needs another user then.
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0\n"))
            .unwrap_or(false)
}

fn bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("initdb").exists() {
            return p;
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.pop().expect(
        "PostgreSQL server binaries (initdb) not found: run scripts/test.sh, which installs them",
    )
}

/// A free port with nothing listening on it yet.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a command, as `postgres` when we are root; panics with its output on failure.
fn run_as_owner(program: &Path, args: &[&str]) {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let out = cmd.args(args).stdin(Stdio::null()).output().expect("spawn");
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sh(script: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    /// The cluster shared by the tests of this process; stopped and removed after the process
    /// exits (see `watch`).
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            let mut c = Cluster::init();
            c.owned = false;
            c
        })
    }

    /// A cluster of one's own (for tests that restart PostgreSQL); removed on drop.
    pub fn dedicated() -> Cluster {
        Cluster::init()
    }

    fn init() -> Cluster {
        let bindir = bindir();
        let dir = tempfile::Builder::new()
            .prefix("pglive-pg-")
            .tempdir()
            .unwrap()
            .keep();
        let port = free_port();
        let d = dir.display();
        // Test CA and a server certificate valid for localhost and 127.0.0.1.
        sh(&format!(
            "cd {d} && openssl req -x509 -newkey rsa:2048 -nodes -days 3 -subj '/CN=pglive test CA' \
               -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
               -keyout ca.key -out ca.crt 2>/dev/null && \
             openssl req -newkey rsa:2048 -nodes -subj '/CN=localhost' -keyout server.key -out server.csr 2>/dev/null && \
             printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext.cnf && \
             openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3 -sha256 \
               -extfile ext.cnf -out server.crt 2>/dev/null && \
             openssl req -x509 -newkey rsa:2048 -nodes -days 3 -subj '/CN=other CA' \
               -keyout other-ca.key -out other-ca.crt 2>/dev/null && chmod 600 server.key && \
             printf 'basicConstraints=CA:FALSE\\nextendedKeyUsage=clientAuth\\n' > client.cnf && \
             openssl req -newkey rsa:2048 -nodes -subj '/CN=certuser' -keyout certuser.key -out certuser.csr 2>/dev/null && \
             openssl x509 -req -in certuser.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3 -sha256 \
               -extfile client.cnf -out certuser.crt 2>/dev/null && \
             openssl rsa -in certuser.key -traditional -out certuser-pkcs1.key 2>/dev/null && \
             openssl ecparam -name prime256v1 -genkey -noout -out certuser-ec.key && \
             openssl req -new -key certuser-ec.key -subj '/CN=certuser' -out certuser-ec.csr 2>/dev/null && \
             openssl x509 -req -in certuser-ec.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3 -sha256 \
               -extfile client.cnf -out certuser-ec.crt 2>/dev/null && chmod 600 *.key"
        ));
        if is_root() {
            sh(&format!("chown -R postgres: {d}"));
        }
        let data = dir.join("data");
        run_as_owner(
            &bindir.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{d}'\n\
             wal_level = logical\nmax_wal_senders = 40\nmax_replication_slots = 60\nfsync = off\n\
             full_page_writes = off\nshared_buffers = 32MB\nssl = on\nssl_cert_file = '{d}/server.crt'\n\
             ssl_key_file = '{d}/server.key'\nssl_ca_file = '{d}/ca.crt'\nwal_sender_timeout = 20s\nmax_connections = 200\n"
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, conf.as_bytes()))
            .unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all pwuser password\n\
             local all md5user md5\n\
             local all all trust\n\
             hostssl all certuser 127.0.0.1/32 cert\n\
             host all certuser 127.0.0.1/32 reject\n\
             host all md5user 127.0.0.1/32 md5\n\
             host all pwuser 127.0.0.1/32 password\n\
             host all scramuser 127.0.0.1/32 scram-sha-256\n\
             host all all 127.0.0.1/32 trust\n\
             host all all ::1/128 trust\n",
        )
        .unwrap();
        let c = Cluster {
            port,
            dir,
            bindir,
            owned: true,
        };
        c.start();
        c.watch();
        c.psql(
            "postgres",
            &format!(
                "CREATE ROLE pwuser LOGIN REPLICATION PASSWORD '{CLEARTEXT_PASSWORD}';
                 SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN REPLICATION PASSWORD '{MD5_PASSWORD}';
                 SET password_encryption = 'scram-sha-256'; CREATE ROLE scramuser LOGIN REPLICATION PASSWORD '{SCRAM_PASSWORD}';
                 CREATE ROLE certuser LOGIN REPLICATION;"
            ),
        );
        c
    }

    /// Stops and removes the cluster once this process is gone, however it ends. The watchdog
    /// runs in a session of its own and ignores the usual signals, so that killing the test
    /// run's process group does not leave the server behind.
    fn watch(&self) {
        let stop = format!(
            "trap '' INT TERM HUP; while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {as_owner} {pg_ctl} -D {dir}/data -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            as_owner = if is_root() {
                "runuser -u postgres --"
            } else {
                ""
            },
            pg_ctl = self.bindir.join("pg_ctl").display(),
            dir = self.dir.display(),
        );
        // Not waited for on purpose: the watchdog outlives this process to clean up after it.
        #[allow(clippy::zombie_processes)]
        Command::new("setsid")
            .arg("sh")
            .arg("-c")
            .arg(stop)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the cluster watchdog");
    }

    pub fn start(&self) {
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        run_as_owner(
            &self.bindir.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    pub fn stop(&self) {
        let data = self.dir.join("data");
        run_as_owner(
            &self.bindir.join("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
    }

    /// Path of the CA certificate that signed the server certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// `certuser`'s client certificate and its private key: `kind` is `rsa` (a PKCS#8 key),
    /// `pkcs1` (the same RSA key as PKCS#1) or `ec` (a P-256 key in SEC1 form).
    pub fn client_cert(&self, kind: &str) -> (PathBuf, PathBuf) {
        let d = &self.dir;
        match kind {
            "rsa" => (d.join("certuser.crt"), d.join("certuser.key")),
            "pkcs1" => (d.join("certuser.crt"), d.join("certuser-pkcs1.key")),
            "ec" => (d.join("certuser-ec.crt"), d.join("certuser-ec.key")),
            other => panic!("no client certificate of kind {other}"),
        }
    }

    /// The directory of the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// A CA that did not sign the server certificate.
    pub fn other_ca_cert(&self) -> PathBuf {
        self.dir.join("other-ca.crt")
    }

    /// A superuser URL (trust authentication, no TLS).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Runs SQL through psql (statements from standard input, each in its own transaction
    /// unless grouped with BEGIN/COMMIT); returns unaligned, tuples-only output.
    #[track_caller]
    pub fn psql(&self, db: &str, sql: &str) -> String {
        match self.try_psql(db, sql) {
            Ok(out) => out,
            Err(e) => panic!("psql failed: {e}\nSQL: {sql}"),
        }
    }

    /// A psql session on `db` that runs each statement written to its standard input as it
    /// comes (each in its own transaction), stopping at the first error; for writers that
    /// commit steadily without starting a process per statement.
    pub fn psql_session(&self, db: &str) -> std::process::Child {
        Command::new(self.bindir.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-U", "postgres", "-p", &self.port.to_string(), "-d", db])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn psql")
    }

    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        use std::io::Write;
        let mut child = Command::new(self.bindir.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &self.port.to_string(), "-d", db])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sql.as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.owned {
            let data = self.dir.join("data");
            let mut cmd = if is_root() {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"])
                    .arg(self.bindir.join("pg_ctl"));
                c
            } else {
                Command::new(self.bindir.join("pg_ctl"))
            };
            let _ = cmd
                .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
                .output();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

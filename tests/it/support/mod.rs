//! Test harness: a real PostgreSQL (see `cluster`), a database/slot/publication per test, and
//! the real `pglive` binary run as a child process whose stdout events and stderr log are
//! collected for assertions. Waits are for conditions with deadlines, never fixed sleeps.

pub mod broker;
pub mod cluster;
// Used by the NATS, MQTT and Redis sink tests.
#[allow(dead_code)]
pub mod service;
pub mod swarm;
pub mod ws;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use cluster::Cluster;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_pglive");

/// Default deadline for something to happen.
pub const WAIT: Duration = Duration::from_secs(60);

/// A database of one's own in a cluster, with a slot and publication named after the test.
pub struct TestDb<'c> {
    pub cluster: &'c Cluster,
    pub name: String,
    pub slot: String,
    pub publication: String,
}

impl TestDb<'static> {
    pub fn new(name: &str) -> TestDb<'static> {
        TestDb::in_cluster(Cluster::shared(), name)
    }
}

impl<'c> TestDb<'c> {
    pub fn in_cluster(cluster: &'c Cluster, name: &str) -> TestDb<'c> {
        let db = TestDb {
            cluster,
            name: format!("t_{name}"),
            slot: format!("s_{name}"),
            publication: "pglive".into(),
        };
        db.drop_slot();
        cluster.psql(
            "postgres",
            &format!(
                "DROP DATABASE IF EXISTS {0} WITH (FORCE); CREATE DATABASE {0};",
                db.name
            ),
        );
        db
    }

    pub fn url(&self) -> String {
        self.cluster.url(&self.name)
    }

    #[track_caller]
    pub fn sql(&self, sql: &str) -> String {
        self.cluster.psql(&self.name, sql)
    }

    /// A configuration mapping `tables` (TOML `[[tables]]` bodies) with the stdout sink.
    pub fn config(&self, tables: &[&str], extra: &str) -> String {
        let mut c = format!(
            "[postgres]\nurl = \"{}\"\nslot = \"{}\"\npublication = \"{}\"\nstatus_interval = \"1s\"\n{extra}\n",
            self.url(),
            self.slot,
            self.publication
        );
        for t in tables {
            c.push_str(&format!("[[tables]]\n{t}\n"));
        }
        c.push_str("[[sinks]]\ntype = \"stdout\"\n");
        c
    }

    /// The slot's confirmed flush position, as a number.
    pub fn confirmed_flush(&self) -> Option<u64> {
        let out = self.cluster.psql(
            "postgres",
            &format!(
                "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = '{}'",
                self.slot
            ),
        );
        out.parse::<f64>().ok().map(|f| f as u64)
    }

    /// An `X/X` LSN as a number.
    pub fn lsn(&self, text: &str) -> u64 {
        self.sql(&format!("SELECT '{text}'::pg_lsn - '0/0'::pg_lsn"))
            .parse::<f64>()
            .unwrap() as u64
    }

    /// The server's current WAL insert position, as a number.
    pub fn current_wal(&self) -> u64 {
        self.sql("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
            .parse::<f64>()
            .unwrap() as u64
    }

    fn drop_slot(&self) {
        self.cluster.psql(
            "postgres",
            &format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{0}' AND active_pid IS NOT NULL;
                 SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{0}';",
                self.slot
            ),
        );
    }
}

impl Drop for TestDb<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return; // keep the evidence
        }
        let _ = self.cluster.try_psql(
            "postgres",
            &format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{0}' AND active_pid IS NOT NULL;",
                self.slot
            ),
        );
        let _ = self.cluster.try_psql(
            "postgres",
            &format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{}';
                 DROP DATABASE IF EXISTS {} WITH (FORCE);",
                self.slot, self.name
            ),
        );
    }
}

/// Output collected from a child process.
#[derive(Default)]
struct Output {
    stdout: Vec<String>,
    stderr: String,
    closed: usize,
}

/// A running `pglive` process.
pub struct Daemon {
    child: Child,
    output: Arc<(Mutex<Output>, Condvar)>,
    _config: tempfile::NamedTempFile,
}

impl Daemon {
    /// `pglive run` with this configuration.
    pub fn run(config: &str) -> Daemon {
        Self::spawn(config, &["run"])
    }

    pub fn spawn(config: &str, args: &[&str]) -> Daemon {
        Self::spawn_with_env(config, args, &[])
    }

    /// Like `spawn`, with extra environment variables.
    pub fn spawn_with_env(config: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::fs::write(file.path(), config).unwrap();
        let mut child = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(file.path())
            .env("RUST_LOG", "info,pglive=debug")
            .env_remove("PGLIVE_CONFIG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pglive");
        let output = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let out = child.stdout.take().unwrap();
        let o = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                o.0.lock().unwrap().stdout.push(line);
                o.1.notify_all();
            }
            o.0.lock().unwrap().closed += 1;
            o.1.notify_all();
        });
        let err = child.stderr.take().unwrap();
        let o = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut g = o.0.lock().unwrap();
                g.stderr.push_str(&line);
                g.stderr.push('\n');
                drop(g);
                o.1.notify_all();
            }
            o.0.lock().unwrap().closed += 1;
            o.1.notify_all();
        });
        Daemon {
            child,
            output,
            _config: file,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited (both its output pipes are closed).
    pub fn has_exited(&self) -> bool {
        self.output.0.lock().unwrap().closed >= 2
    }

    /// Every stdout line parsed as JSON.
    pub fn events(&self) -> Vec<Value> {
        let g = self.output.0.lock().unwrap();
        g.stdout
            .iter()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    pub fn raw_lines(&self) -> Vec<String> {
        self.output.0.lock().unwrap().stdout.clone()
    }

    pub fn stderr(&self) -> String {
        self.output.0.lock().unwrap().stderr.clone()
    }

    /// Waits until `cond` holds for the events seen so far.
    #[track_caller]
    pub fn wait_events(&self, what: &str, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let events = self.events();
            if cond(&events) {
                return events;
            }
            self.wait_change(deadline, what, &events);
        }
    }

    /// Waits until the log contains `needle`.
    #[track_caller]
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.stderr().contains(needle) {
            self.wait_change(deadline, &format!("log line {needle:?}"), &self.events());
        }
    }

    #[track_caller]
    fn wait_change(&self, deadline: Instant, what: &str, events: &[Value]) {
        let now = Instant::now();
        if self.output.0.lock().unwrap().closed >= 2 {
            panic!(
                "pglive exited while waiting for {what}\n--- stderr:\n{}",
                self.stderr()
            );
        }
        if now >= deadline {
            panic!(
                "timed out waiting for {what}\n--- {} events so far (last 5): {:#?}\n--- stderr:\n{}",
                events.len(),
                &events[events.len().saturating_sub(5)..],
                self.stderr()
            );
        }
        let (lock, cv) = &*self.output;
        let g = lock.lock().unwrap();
        let before = (g.stdout.len(), g.stderr.len(), g.closed);
        let _ = cv
            .wait_timeout_while(g, (deadline - now).min(Duration::from_millis(500)), |o| {
                (o.stdout.len(), o.stderr.len(), o.closed) == before
            })
            .unwrap();
    }

    /// Sends SIGKILL, reaps the process and reads what it had written.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.wait_output_closed();
    }

    /// Waits until both output pipes are fully read (they close when the process is gone).
    fn wait_output_closed(&self) {
        let (lock, cv) = &*self.output;
        let g = lock.lock().unwrap();
        let _ = cv
            .wait_timeout_while(g, Duration::from_secs(10), |o| o.closed < 2)
            .unwrap();
    }

    /// Sends a signal by name (TERM, INT, …).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits for the process to exit, and for its output to be fully read.
    #[track_caller]
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let (lock, cv) = &*self.output;
                let g = lock.lock().unwrap();
                let _ = cv
                    .wait_timeout_while(g, Duration::from_secs(10), |o| o.closed < 2)
                    .unwrap();
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "pglive did not exit within {within:?}\n--- stderr:\n{}",
                    self.stderr()
                );
            }
            let (lock, cv) = &*self.output;
            let g = lock.lock().unwrap();
            let _ = cv.wait_timeout(g, Duration::from_millis(50)).unwrap();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- pglive stderr:\n{}", self.stderr());
        }
        self.kill();
    }
}

/// Runs a `pglive` subcommand to completion; returns (exit code, stdout, stderr).
pub fn pglive(args: &[&str], config: &str) -> (i32, String, String) {
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), config).unwrap();
    let out = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(file.path())
        .env_remove("PGLIVE_CONFIG")
        .output()
        .expect("run pglive");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `pglive setup`, which must succeed.
#[track_caller]
pub fn setup(config: &str) {
    let (code, out, err) = pglive(&["setup"], config);
    assert_eq!(code, 0, "pglive setup failed: {out}{err}");
}

/// Polls `cond` until it holds or the deadline passes (for state outside the daemon, such as
/// the slot's position). Each poll is a real query, so the interval only limits load.
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET path` on 127.0.0.1:`port`; (status code, body). None if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// Opens `n` connections that send the start of a request and never finish it.
pub fn unfinished_requests(port: u16, n: usize) -> Vec<std::net::TcpStream> {
    use std::io::Write;
    (0..n)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /live HTTP/1.1\r\nHost: localhost\r\n")
                .unwrap();
            s
        })
        .collect()
}

/// What the server sent on `s` until it closed it; None if it was still open after `within`.
pub fn until_closed(s: &mut std::net::TcpStream, within: Duration) -> Option<String> {
    use std::io::Read;
    s.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&got).into_owned());
            }
            Err(_) => return None,
        }
    }
}

/// A named pipe in a directory of its own (removed when the guard drops).
pub fn named_pipe() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("events.pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo failed");
    (dir, fifo)
}

/// A sample's value in a Prometheus text page: `series` is the name with its labels as
/// rendered, e.g. `pglive_sink_healthy{sink="stdout"}`.
pub fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// All ids of all events, flattened.
pub fn all_ids(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .flat_map(|e| e["payload"]["ids"].as_array().cloned().unwrap_or_default())
        .collect()
}

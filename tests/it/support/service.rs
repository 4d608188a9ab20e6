//! A relay server of the tests' own (nats-server, mosquitto, redis-server, …): started on a free
//! port with a data directory of its own, killed and restarted on the same port and data, and
//! killed when dropped. The binaries come from Debian packages that `scripts/prereqs.sh`
//! installs.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::WAIT;
use super::cluster::free_port;

/// Builds the server's command line for a port and a data directory.
pub type Launch = Box<dyn Fn(u16, &Path) -> Command + Send + Sync>;

pub struct Service {
    name: String,
    launch: Launch,
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Service {
    /// Starts `name` (for messages) with `launch(port, dir)` and waits until it accepts TCP
    /// connections on the port. Its stdout and stderr go to `dir/server.log`.
    #[track_caller]
    pub fn start(name: &str, launch: Launch) -> Service {
        let dir = tempfile::Builder::new()
            .prefix(&format!("pglive-{name}-"))
            .tempdir()
            .unwrap();
        let mut service = Service {
            name: name.to_owned(),
            launch,
            child: None,
            port: free_port(),
            dir,
        };
        service.start_again();
        service
    }

    /// The server's data directory (kept across restarts).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// What the server has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGKILLs the server and waits until the port refuses connections.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.wait_closed();
    }

    /// Stops the server gracefully (SIGTERM), waits for it to exit and for the port to refuse
    /// connections. Unlike [`Service::kill`], a server that saves its state only on shutdown or
    /// now and then (Mosquitto's persistence file) gets to save it.
    #[track_caller]
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let ok = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -TERM {} failed", self.name);
            let deadline = Instant::now() + WAIT;
            while child.try_wait().unwrap().is_none() {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    panic!("{} did not stop on SIGTERM:\n{}", self.name, self.log());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.wait_closed();
    }

    /// Stops the server gracefully and starts it again on the same port and data directory.
    #[track_caller]
    pub fn restart_gracefully(&mut self) {
        self.stop();
        self.start_again();
    }

    fn wait_closed(&self) {
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "{} still accepts on {}",
                self.name,
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server and starts it again on the same port and data directory.
    #[track_caller]
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    /// Starts the server (after [`Service::kill`]) and waits until it accepts connections.
    #[track_caller]
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "{} is running already", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = (self.launch)(self.port, self.dir.path());
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); scripts/prereqs.sh installs it",
                    self.name
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited ({status}):\n{}", self.name, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} does not accept on port {}:\n{}",
                self.name,
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

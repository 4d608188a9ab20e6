//! The faults, and the pglive process they are aimed at.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::rng::Rng;
use crate::workload::TABLES;

type Result<T> = std::result::Result<T, String>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fault {
    PgliveKill,
    PostgresRestart,
    WalsenderKill,
    RabbitRestart,
    RabbitAlarm,
    RelayFlood,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::PgliveKill,
        Fault::PostgresRestart,
        Fault::WalsenderKill,
        Fault::RabbitRestart,
        Fault::RabbitAlarm,
        Fault::RelayFlood,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::PgliveKill => "pglive SIGKILL",
            Fault::PostgresRestart => "PostgreSQL restart (immediate)",
            Fault::WalsenderKill => "walsender terminated",
            Fault::RabbitRestart => "RabbitMQ restart",
            Fault::RabbitAlarm => "RabbitMQ memory alarm",
            Fault::RelayFlood => "relay client flood",
        }
    }
}

/// The pglive process: started, killed and restarted by the run.
pub struct Pglive {
    pub bin: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub pid_file: PathBuf,
    child: Option<Child>,
    /// The running process's pid (0: none), for the memory sampler.
    pub pid: Arc<AtomicU32>,
    pub starts: u32,
}

impl Pglive {
    pub fn new(bin: PathBuf, config: PathBuf, log: PathBuf, pid_file: PathBuf) -> Pglive {
        Pglive {
            bin,
            config,
            log,
            pid_file,
            child: None,
            pid: Arc::default(),
            starts: 0,
        }
    }

    pub fn start(&mut self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let child = Command::new(&self.bin)
            .arg("run")
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.bin.display()))?;
        std::fs::write(&self.pid_file, child.id().to_string()).map_err(|e| e.to_string())?;
        self.pid.store(child.id(), Ordering::Release);
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.pid.store(0, Ordering::Release);
    }

    /// Fails when pglive exited although nobody stopped it.
    pub fn check_alive(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Err("pglive is not running".into());
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                self.child = None;
                Err(format!(
                    "pglive exited by itself ({status}); the end of its log:\n{}",
                    self.log_tail(25)
                ))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// SIGTERM, then its exit status (SIGKILL after `within`).
    pub async fn terminate(&mut self, within: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err("pglive is not running".into());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                self.pid.store(0, Ordering::Release);
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.pid.store(0, Ordering::Release);
                return Err(format!(
                    "pglive did not stop within {within:?} of SIGTERM; the end of its log:\n{}",
                    self.log_tail(25)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// A memory figure of process `pid` from /proc (`VmRSS:`, `VmHWM:`), in KiB.
pub fn vm_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples pglive's resident memory every 200 ms until `stop`: `peak_kib` is the peak over
/// the whole run (VmHWM, across restarts), `window_kib` the largest VmRSS seen since the run
/// last reset it.
pub async fn sample_rss(
    pid: Arc<AtomicU32>,
    peak_kib: Arc<AtomicU64>,
    window_kib: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
) {
    while !stop.is_cancelled() {
        let p = pid.load(Ordering::Acquire);
        if p != 0 {
            if let Some(kib) = vm_kib(p, "VmHWM:") {
                peak_kib.fetch_max(kib, Ordering::Relaxed);
            }
            if let Some(kib) = vm_kib(p, "VmRSS:") {
                window_kib.fetch_max(kib, Ordering::Relaxed);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Runs a helper script (scripts/pg-cluster.sh, scripts/rabbitmq-node.sh), which must succeed.
pub async fn script(args: Vec<String>) -> Result<()> {
    script_output(args).await.map(drop)
}

/// Runs a helper script, which must succeed, and returns what it printed.
pub async fn script_output(args: Vec<String>) -> Result<String> {
    let what = args.join(" ");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Terminates the walsender streaming from `slot`, waiting (up to 30 s) for one to be there.
pub async fn kill_walsender(url: &str, slot: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(client) = crate::workload::connect(url).await {
            let row = client
                .query_opt(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                     WHERE slot_name = $1 AND active_pid IS NOT NULL",
                    &[&slot],
                )
                .await;
            if let Ok(Some(row)) = row
                && row.get::<_, bool>(0)
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no walsender streamed from slot {slot} for 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the hostile clients of a flood did and got.
#[derive(Default)]
pub struct FloodTally {
    /// WebSocket connections accepted / refused by status (503: over max_connections,
    /// 401/403: auth or origin), other failures.
    pub upgraded: AtomicU64,
    pub refused_full: AtomicU64,
    pub refused_auth: AtomicU64,
    pub failed: AtomicU64,
    /// Raw TCP connections (slow or garbage requests).
    pub raw: AtomicU64,
    /// Frames sent by hostile clients.
    pub frames_sent: AtomicU64,
    /// `error` replies and closes by the server.
    pub errors: AtomicU64,
    pub closed_by_server: AtomicU64,
    /// Upgrades that succeeded without a valid token (must stay 0).
    pub bad_token_accepted: AtomicU64,
}

#[derive(Clone, Copy, Debug)]
enum Hostile {
    /// Connect, subscribe, close, again and again.
    Churn,
    /// Bursts of subscribe/unsubscribe pairs on the mapped channels.
    SubscribeStorm,
    /// Malformed, unknown and forbidden requests.
    Junk,
    /// A message over the size limit.
    TooBig,
    /// Subscribe to everything, then never read.
    SlowReader,
    /// No token, an expired one, a forged one.
    BadAuth,
    /// An HTTP request that never ends.
    Slowloris,
    /// Bytes that are not HTTP.
    Garbage,
}

const HOSTILE: [(Hostile, usize); 8] = [
    (Hostile::Churn, 30),
    (Hostile::SubscribeStorm, 40),
    (Hostile::Junk, 40),
    (Hostile::TooBig, 10),
    (Hostile::SlowReader, 20),
    (Hostile::BadAuth, 30),
    (Hostile::Slowloris, 40),
    (Hostile::Garbage, 20),
];

/// Hostile relay clients for `hold`, 230 at once, each doing one kind of harm: 140 of them
/// WebSocket connections with a valid token (with the 50 regular clients, over the relay's
/// max_connections in scripts/chaos.sh, so some are refused), the others bad tokens and raw
/// TCP.
pub async fn flood(
    addr: String,
    path: String,
    secret: String,
    rng: &mut Rng,
    hold: Duration,
    tally: Arc<FloodTally>,
) {
    let until = tokio::time::Instant::now() + hold;
    let mut tasks = Vec::new();
    for (kind, n) in HOSTILE {
        for _ in 0..n {
            let r = Rng::stream(rng.next(), 0);
            tasks.push(tokio::spawn(hostile(
                kind,
                addr.clone(),
                path.clone(),
                secret.clone(),
                r,
                until,
                tally.clone(),
            )));
        }
    }
    for t in tasks {
        // Each ends at `until`; a stuck one is abandoned (and counted) after a grace period.
        if tokio::time::timeout_at(until + Duration::from_secs(10), t)
            .await
            .is_err()
        {
            tally.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub fn token(secret: &str, channels: &[&str], exp_in: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let claims = serde_json::json!({ "channels": channels, "exp": now + exp_in });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(url: &str, tally: &FloodTally) -> Option<Ws> {
    match tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    {
        Ok(Ok((ws, _))) => {
            tally.upgraded.fetch_add(1, Ordering::Relaxed);
            Some(ws)
        }
        Ok(Err(tungstenite::Error::Http(r))) if r.status().as_u16() == 503 => {
            tally.refused_full.fetch_add(1, Ordering::Relaxed);
            None
        }
        Ok(Err(tungstenite::Error::Http(r))) if matches!(r.status().as_u16(), 401 | 403) => {
            tally.refused_auth.fetch_add(1, Ordering::Relaxed);
            None
        }
        _ => {
            tally.failed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Reads what is waiting (without blocking for long), counting errors and closes; false once
/// the connection is gone.
async fn drain(ws: &mut Ws, tally: &FloodTally) -> bool {
    loop {
        match tokio::time::timeout(Duration::from_millis(5), ws.next()).await {
            Err(_) => return true,
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.contains("\"op\":\"error\"") {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                tally.closed_by_server.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

async fn send(ws: &mut Ws, m: Message, tally: &FloodTally) -> bool {
    tally.frames_sent.fetch_add(1, Ordering::Relaxed);
    ws.send(m).await.is_ok()
}

fn junk_frames(i: u64) -> Message {
    // Channel names come from a fixed set, so the relay holds a bounded number of them.
    let junk_channel = format!("junk/{}", i % 64);
    let long_channel = format!("resources/{}", "x".repeat(1000 + (i % 4) as usize));
    let texts = [
        "not json".to_owned(),
        "{}".to_owned(),
        r#"{"op":"subscribe"}"#.to_owned(),
        r#"{"op":"frobnicate","channel":"resources/chaos_a"}"#.to_owned(),
        r#"{"op":"subscribe","channel":"resources/chaos_a","since":"garbage"}"#.to_owned(),
        r#"{"op":"subscribe","channel":"resources/chaos_a","since":"FFFFFFFF/FFFFFFFF:99"}"#
            .to_owned(),
        serde_json::json!({"op":"subscribe","channel":junk_channel}).to_string(),
        serde_json::json!({"op":"unsubscribe","channel":junk_channel}).to_string(),
        serde_json::json!({"op":"subscribe","channel":long_channel}).to_string(),
        serde_json::json!({"op":"unsubscribe","channel":long_channel}).to_string(),
        r#"{"op":"subscribe","channel":"private/secrets"}"#.to_owned(),
        r#"{"op":"unsubscribe","channel":"resources/never_subscribed"}"#.to_owned(),
        "[1,2,3]".to_owned(),
        "\u{0}\u{1}\u{2}".to_owned(),
    ];
    match i % (texts.len() as u64 + 1) {
        n if n == texts.len() as u64 => Message::binary(vec![0u8, 159, 146, 150]),
        n => Message::text(texts[n as usize].clone()),
    }
}

async fn hostile(
    kind: Hostile,
    addr: String,
    path: String,
    secret: String,
    mut rng: Rng,
    until: tokio::time::Instant,
    tally: Arc<FloodTally>,
) {
    let all: Vec<&str> = TABLES.iter().map(|t| t.channel).collect();
    let good = format!("ws://{addr}{path}?token={}", token(&secret, &all, 3600));
    let narrow = format!(
        "ws://{addr}{path}?token={}",
        token(&secret, &["resources/chaos_a"], 3600)
    );
    let live = || tokio::time::Instant::now() < until;
    match kind {
        Hostile::Churn => {
            while live() {
                if let Some(mut ws) = open(&good, &tally).await {
                    let ch = all[rng.below(all.len() as u64) as usize];
                    let sub = serde_json::json!({"op":"subscribe","channel":ch}).to_string();
                    send(&mut ws, Message::text(sub), &tally).await;
                    if rng.percent(50) {
                        let _ = ws.close(None).await;
                    } // else: just drop the TCP connection
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Hostile::SubscribeStorm => {
            let Some(mut ws) = open(&good, &tally).await else {
                return;
            };
            while live() {
                for _ in 0..50 {
                    let ch = all[rng.below(all.len() as u64) as usize];
                    let since = rng.percent(30);
                    let sub = if since {
                        serde_json::json!({"op":"subscribe","channel":ch,"since":"0/1:0"})
                    } else {
                        serde_json::json!({"op":"subscribe","channel":ch})
                    };
                    let unsub = serde_json::json!({"op":"unsubscribe","channel":ch});
                    if !send(&mut ws, Message::text(sub.to_string()), &tally).await
                        || !send(&mut ws, Message::text(unsub.to_string()), &tally).await
                    {
                        return;
                    }
                }
                if !drain(&mut ws, &tally).await {
                    return;
                }
            }
            let _ = ws.close(None).await;
        }
        Hostile::Junk => {
            let url = if rng.percent(50) { &narrow } else { &good };
            let Some(mut ws) = open(url, &tally).await else {
                return;
            };
            let mut i = rng.next();
            while live() {
                for _ in 0..20 {
                    i += 1;
                    if !send(&mut ws, junk_frames(i), &tally).await {
                        return;
                    }
                }
                if !drain(&mut ws, &tally).await {
                    return;
                }
            }
            let _ = ws.close(None).await;
        }
        Hostile::TooBig => {
            while live() {
                let Some(mut ws) = open(&good, &tally).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let big = "x".repeat(4096 + 1 + rng.below(60_000) as usize);
                let sub = serde_json::json!({"op":"subscribe","channel":big}).to_string();
                send(&mut ws, Message::text(sub), &tally).await;
                // The server closes it (1009); wait for that, briefly.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while drain(&mut ws, &tally).await {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await;
            }
        }
        Hostile::SlowReader => {
            // A small receive window: the server's writes stall soon.
            let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                return;
            };
            let _ = socket.set_recv_buffer_size(4096);
            let Ok(sock_addr) = addr.parse() else { return };
            let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(5), socket.connect(sock_addr)).await
            else {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
            let Ok((mut ws, _)) = tokio_tungstenite::client_async(good.as_str(), stream).await
            else {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            tally.upgraded.fetch_add(1, Ordering::Relaxed);
            for ch in &all {
                let sub = serde_json::json!({"op":"subscribe","channel":ch}).to_string();
                send(&mut ws, Message::text(sub), &tally).await;
            }
            tokio::time::sleep_until(until).await;
            drop(ws);
        }
        Hostile::BadAuth => {
            while live() {
                let token = match rng.below(4) {
                    0 => String::new(),
                    1 => format!("?token={}", token(&secret, &all, -3600)),
                    2 => format!(
                        "?token={}",
                        token("a forged secret that is long enough!!", &all, 3600)
                    ),
                    _ => "?token=not.a.jwt".to_owned(),
                };
                if open(&format!("ws://{addr}{path}{token}"), &tally)
                    .await
                    .is_some()
                {
                    tally.bad_token_accepted.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Hostile::Slowloris => {
            let Ok(Ok(mut tcp)) = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(&addr),
            )
            .await
            else {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            tally.raw.fetch_add(1, Ordering::Relaxed);
            let _ = tcp
                .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n").as_bytes())
                .await;
            while live() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if tcp.write_all(b"X-a: b\r\n").await.is_err() {
                    tally.closed_by_server.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        Hostile::Garbage => {
            while live() {
                let Ok(Ok(mut tcp)) = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::net::TcpStream::connect(&addr),
                )
                .await
                else {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                tally.raw.fetch_add(1, Ordering::Relaxed);
                let bytes: Vec<u8> = (0..rng.range(1, 4096)).map(|_| rng.next() as u8).collect();
                let _ = tcp.write_all(&bytes).await;
                let mut buf = [0u8; 1024];
                let _ = tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut buf)).await;
            }
        }
    }
}

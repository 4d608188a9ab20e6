//! The load generator of `scripts/bench-fanout.sh`, a process of its own:
//!
//!   ws_fanout WS_URL DATABASE_URL PGLIVE_PID CLIENTS RATE SECONDS
//!
//! Connects CLIENTS WebSocket clients to the relay, each subscribed to `resources/fanout`;
//! then commits RATE one-row transactions per second into `fanout` for SECONDS, and waits for
//! every client to receive every event. Each delivery's latency is the client's clock at
//! receipt minus the event's `date` (the commit time; same machine, same clock). Prints one
//! line of `key=value` figures, including pglive's memory (from /proc) before and after the
//! clients connected, and its CPU time during the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [ws_url, db_url, pid, clients, rate, seconds] = args.as_slice() else {
        return Err("usage: ws_fanout WS_URL DATABASE_URL PGLIVE_PID CLIENTS RATE SECONDS".into());
    };
    let (pid, clients, rate, seconds): (u32, usize, u64, u64) = (
        pid.parse()?,
        clients.parse()?,
        rate.parse()?,
        seconds.parse()?,
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(ws_url, db_url, pid, clients, rate, seconds))
}

/// pglive's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// pglive's CPU time (user + system), in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command name: state is field 0, utime 11, stime 12; 100 ticks per second.
    (ticks(11) + ticks(12)) / 100.0
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// `2026-11-29T10:00:00.123456Z` → µs since 1970.
fn parse_date(s: &str) -> Option<i64> {
    let n = |a: usize, b: usize| s.get(a..b)?.parse::<i64>().ok();
    let (y, m, d) = (n(0, 4)?, n(5, 7)?, n(8, 10)?);
    let (hh, mm, ss) = (n(11, 13)?, n(14, 16)?, n(17, 19)?);
    let micros = n(20, 26).unwrap_or(0);
    // Days from civil (proleptic Gregorian).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + micros)
}

async fn client(
    url: String,
    delivered: Arc<AtomicU64>,
    resyncs: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
    ready: tokio::sync::mpsc::Sender<()>,
) -> Result<Vec<u32>> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    ws.send(Message::text(
        r#"{"op":"subscribe","channel":"resources/fanout"}"#,
    ))
    .await?;
    let mut latencies = Vec::new();
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => break,
            f = ws.next() => f,
        };
        let Some(Ok(Message::Text(text))) = frame else {
            if matches!(frame, Some(Ok(_))) {
                continue;
            }
            break;
        };
        if text.contains("\"op\":\"subscribed\"") {
            let _ = ready.send(()).await;
        } else if text.contains("\"op\":\"resync\"") {
            resyncs.fetch_add(1, Ordering::Relaxed);
        } else if let Some(at) = text.find("\"date\":\"") {
            let now = now_micros();
            if let Some(date) = parse_date(&text[at + 8..]) {
                latencies.push((now - date).clamp(0, u32::MAX as i64) as u32);
            }
            delivered.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = ws.close(None).await;
    Ok(latencies)
}

async fn run(
    ws_url: &str,
    db_url: &str,
    pid: u32,
    clients: usize,
    rate: u64,
    seconds: u64,
) -> Result<()> {
    let (db, conn) = tokio_postgres::connect(db_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    // Commits reach the WAL on disk (and the walsender) at once, as on a production server;
    // the throwaway cluster defaults to synchronous_commit = off, which delays them by up to
    // wal_writer_delay.
    db.batch_execute("SET synchronous_commit = on").await?;
    let rss_before = rss_kib(pid);
    let delivered = Arc::new(AtomicU64::new(0));
    let resyncs = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(clients.max(1));
    let mut tasks = Vec::with_capacity(clients);
    // Connect in waves, as a crowd of browsers would arrive, without overrunning the backlog.
    for wave in (0..clients).collect::<Vec<_>>().chunks(250) {
        for _ in wave {
            tasks.push(tokio::spawn(client(
                ws_url.to_owned(),
                delivered.clone(),
                resyncs.clone(),
                stop.clone(),
                ready_tx.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..clients {
        tokio::time::timeout(Duration::from_secs(120), ready.recv())
            .await
            .map_err(|_| "clients did not all subscribe within 120 s")?;
    }
    // Let the connection burst settle before measuring memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = rss_kib(pid);

    let cpu_start = cpu_secs(pid);
    let started = Instant::now();
    let total = rate * seconds;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    for i in 0..total {
        tick.tick().await;
        db.execute("INSERT INTO fanout (n) VALUES ($1)", &[&(i as i64)])
            .await?;
    }
    let expected = total * clients as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid) - cpu_start;
    stop.cancel();
    let mut all = Vec::new();
    let mut worst_p99 = 0u32;
    for t in tasks {
        let mut l = t.await??;
        l.sort_unstable();
        if let Some(p) = l.get((l.len() * 99 / 100).min(l.len().saturating_sub(1))) {
            worst_p99 = worst_p99.max(*p);
        }
        all.extend(l);
    }
    all.sort_unstable();
    let pct = |p: usize| {
        all.get((all.len() * p / 100).min(all.len().saturating_sub(1)))
            .map_or(0.0, |v| *v as f64 / 1000.0)
    };
    let got = delivered.load(Ordering::Relaxed);
    println!(
        "clients={clients} rate={rate} events={total} delivered={got} dropped={} resyncs={} \
         p50_ms={:.1} p99_ms={:.1} worst_client_p99_ms={:.1} frames_per_s={:.0} \
         pglive_cpu_pct={:.0} rss_base_kib={rss_before} rss_connected_kib={rss_connected} kib_per_1000_clients={:.0}",
        expected.saturating_sub(got),
        resyncs.load(Ordering::Relaxed),
        pct(50),
        pct(99),
        worst_p99 as f64 / 1000.0,
        got as f64 / elapsed,
        cpu / elapsed * 100.0,
        (rss_connected.saturating_sub(rss_before)) as f64 / clients as f64 * 1000.0,
    );
    Ok(())
}

//! One client process (`ws_fanout clients …`), started by the coordinator and driven over its
//! standard input and output, one line each way:
//!
//! 1. connects COUNT clients, client `FIRST + i` to `URLS[(FIRST + i) % len]`, each subscribed
//!    to `resources/fanout`, at most IN_FLIGHT of them connecting at a time (a crowd arriving
//!    as fast as the servers take it, without overrunning their listen backlogs); a client whose
//!    connection fails tries again, up to 5 times, as a browser would; prints `ready` once all
//!    are subscribed;
//! 2. reads `published N` (N events were published), waits until each client has N events (at
//!    most 30 s) and prints `done`;
//! 3. prints `result delivered=… resyncs=… retries=… worst_p99_us=… hist=…` (hist: stats.rs)
//!    and exits.
//!
//! A delivery's latency is the client's clock at receipt minus the event's `date`.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use super::Result;
use super::stats::{Histogram, percentile_sorted};

#[derive(clap::Args)]
pub struct Args {
    /// The number of this process's first client among all clients (for the round robin).
    #[arg(long)]
    first: usize,
    #[arg(long)]
    count: usize,
    /// Worker threads of this process's runtime.
    #[arg(long)]
    workers: usize,
    /// Clients of this process connecting at the same time, at most.
    #[arg(long)]
    in_flight: usize,
    #[arg(required = true)]
    urls: Vec<String>,
}

const SUBSCRIBE: &str = r#"{"op":"subscribe","channel":"resources/fanout"}"#;

pub fn main(args: Args) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()?
        .block_on(run(args))
}

/// Shared by the clients of this process.
#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    resyncs: AtomicU64,
    /// Connection attempts that failed and were tried again.
    retries: AtomicU64,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
/// Attempts at connecting and subscribing, per client.
const ATTEMPTS: u32 = 5;

async fn run(args: Args) -> Result<()> {
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let (ready_tx, mut ready) = mpsc::channel(args.count.max(1));
    let mut tasks = Vec::with_capacity(args.count);
    let gate = Arc::new(Semaphore::new(args.in_flight.max(1)));
    for i in 0..args.count {
        let url = args.urls[(args.first + i) % args.urls.len()].clone();
        let (tally, stop, ready) = (tally.clone(), stop.clone(), ready_tx.clone());
        tasks.push(tokio::spawn(client(url, tally, stop, ready, gate.clone())));
    }
    for _ in 0..args.count {
        match tokio::time::timeout(Duration::from_secs(120), ready.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(format!("a client failed to subscribe: {e}").into()),
            Ok(None) | Err(_) => return Err("clients did not all subscribe within 120 s".into()),
        }
    }
    say("ready")?;
    let events = published().await?;
    let expected = events * args.count as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while tally.delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    say("done")?;
    stop.cancel();
    report(tasks, &tally).await
}

/// Waits for the coordinator's `published N`.
async fn published() -> Result<u64> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let line = lines.next_line().await?.ok_or("stdin closed")?;
    let n = line
        .strip_prefix("published ")
        .ok_or("expected `published N`")?;
    Ok(n.trim().parse()?)
}

fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

async fn report(tasks: Vec<tokio::task::JoinHandle<Vec<u32>>>, tally: &Tally) -> Result<()> {
    let mut hist = Histogram::default();
    let mut worst_p99 = 0u32;
    for t in tasks {
        let mut latencies = t.await?;
        latencies.sort_unstable();
        if let Some(p) = percentile_sorted(&latencies, 99) {
            worst_p99 = worst_p99.max(p);
        }
        latencies.iter().for_each(|l| hist.add(*l));
    }
    say(&format!(
        "result delivered={} resyncs={} retries={} worst_p99_us={worst_p99} hist={}",
        tally.delivered.load(Ordering::Relaxed),
        tally.resyncs.load(Ordering::Relaxed),
        tally.retries.load(Ordering::Relaxed),
        hist.encode()
    ))
}

/// One client: connects and subscribes (holding a place at `gate` meanwhile), then records
/// the latency of every event until `stop`.
async fn client(
    url: String,
    tally: Arc<Tally>,
    stop: CancellationToken,
    ready: mpsc::Sender<std::result::Result<(), String>>,
    gate: Arc<Semaphore>,
) -> Vec<u32> {
    let Ok(place) = gate.acquire_owned().await else {
        return Vec::new();
    };
    let mut ws = match join_retrying(&url, &tally).await {
        Ok(ws) => ws,
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            return Vec::new();
        }
    };
    drop(place);
    let _ = ready.send(Ok(())).await;
    let mut latencies = Vec::new();
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => break,
            f = ws.next() => f,
        };
        match frame {
            Some(Ok(Message::Text(text))) => on_text(&text, &mut latencies, &tally),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    let _ = ws.close(None).await;
    latencies
}

/// `join`, tried again after a failure (a reset while the server's backlog overflows), after
/// 100 ms, 200 ms, … as a browser's reconnect would.
async fn join_retrying(url: &str, tally: &Tally) -> std::result::Result<Ws, String> {
    let mut attempt = 1;
    loop {
        match join(url).await {
            Ok(ws) => return Ok(ws),
            Err(e) if attempt >= ATTEMPTS => {
                return Err(format!("{url}: {e} ({attempt} attempts)"));
            }
            Err(_) => {
                tally.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                attempt += 1;
            }
        }
    }
}

/// Connects, subscribes and waits for `subscribed` (no event comes before it).
async fn join(url: &str) -> Result<Ws> {
    // Servers send small frames: a small read buffer (the default is 128 KiB per connection).
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
    ws.send(Message::text(SUBSCRIBE)).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.contains(r#""op":"subscribed""#) => {
                return Ok(ws);
            }
            Some(Ok(Message::Text(text))) => {
                return Err(format!("before subscribed: {text:.200}").into());
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err("closed before subscribed".into()),
        }
    }
}

/// Event frames hold `"date":"…"`; control frames carry `"op"` and no date (their keys may
/// come in any order).
fn on_text(text: &str, latencies: &mut Vec<u32>, tally: &Tally) {
    if let Some(at) = text.find(r#""date":""#) {
        let now = now_micros();
        if let Some(date) = parse_date(&text[at + 8..]) {
            latencies.push((now - date).clamp(0, i64::from(u32::MAX)) as u32);
        }
        tally.delivered.fetch_add(1, Ordering::Relaxed);
    } else if text.contains(r#""op":"resync""#) {
        tally.resyncs.fetch_add(1, Ordering::Relaxed);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_event_date() {
        // 2024-02-29T07:04:56.5Z, a leap day.
        assert_eq!(
            parse_date("2024-02-29T07:04:56.500000Z\""),
            Some(1_709_190_296_500_000)
        );
        assert_eq!(parse_date("2024-02-29"), None);
    }
}

//! The load generator of `scripts/bench-fanout.sh`:
//!
//!   ws_fanout run --clients N --rate R --seconds S --pids P[,P…] [--source-pid P]
//!                 (--db DATABASE_URL | --floor) URL…
//!
//! Spreads N WebSocket clients over the URLs (round robin), all subscribed to
//! `resources/fanout`, in client processes of at most `--per-process` clients each (this
//! binary again, `ws_fanout clients …`: clients.rs), since a process may open only so many
//! files. Once every client is subscribed, publishes R events per second for S seconds: with
//! `--db`, one-row transactions committed into `fanout`; with `--floor`, `{"op":"publish"}`
//! frames to the first URL (the broadcaster of examples/ws_floor.rs). Then waits for every
//! client to receive every event (at most 30 s). A delivery's latency is the client's clock at
//! receipt minus the event's `date` (the commit time; same machine, same clock).
//!
//! Prints one line of `key=value` figures: latency p50/p99 over all deliveries and the worst
//! client's p99, frames delivered per second, dropped frames, resyncs, connection attempts
//! tried again (clients.rs), the servers' CPU (the PIDs together, from /proc) and their memory
//! per 1,000 clients (resident after the clients connected minus before), the load
//! generator's own CPU and, with `--source-pid`, the source's CPU.

mod clients;
mod procfs;
mod stats;

use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::SinkExt;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use stats::Histogram;

/// Clients connecting at the same time, at most: half the listen backlog a tokio listener
/// has (1,024), so that a server that is slow to accept is not sent more than it can queue.
const IN_FLIGHT: usize = 512;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Parser)]
enum Cmd {
    /// Runs one load and prints its figures.
    Run(RunArgs),
    /// One client process (started by `run`).
    Clients(clients::Args),
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long)]
    clients: usize,
    /// Events per second.
    #[arg(long)]
    rate: u64,
    #[arg(long)]
    seconds: u64,
    /// The processes serving the clients, whose CPU and memory are measured together.
    #[arg(long, value_delimiter = ',', required = true)]
    pids: Vec<u32>,
    /// The process feeding the servers, if another (its CPU is reported apart).
    #[arg(long)]
    source_pid: Option<u32>,
    /// Commit the events into table `fanout` of this database.
    #[arg(long, required_unless_present = "floor", conflicts_with = "floor")]
    db: Option<String>,
    /// Ask the broadcaster at the first URL for the events (examples/ws_floor.rs).
    #[arg(long)]
    floor: bool,
    /// Clients per client process, at most.
    #[arg(long, default_value_t = 10_000)]
    per_process: usize,
    #[arg(required = true)]
    urls: Vec<String>,
}

fn main() -> Result<()> {
    match Cmd::parse() {
        Cmd::Clients(args) => clients::main(args),
        Cmd::Run(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(run(args)),
    }
}

/// Where the events come from.
enum Publisher {
    Db(tokio_postgres::Client),
    Floor(
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ),
}

impl Publisher {
    async fn open(args: &RunArgs) -> Result<Publisher> {
        if let Some(url) = &args.db {
            let (db, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            // Commits reach the WAL on disk (and the walsender) at once, as on a production
            // server; the throwaway cluster defaults to synchronous_commit = off, which delays
            // them by up to wal_writer_delay.
            db.batch_execute("SET synchronous_commit = on").await?;
            return Ok(Publisher::Db(db));
        }
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(args.urls[0].as_str(), None, true).await?;
        Ok(Publisher::Floor(ws))
    }

    async fn publish(&mut self, n: u64) -> Result<()> {
        match self {
            Publisher::Db(db) => {
                db.execute("INSERT INTO fanout (n) VALUES ($1)", &[&(n as i64)])
                    .await?;
            }
            Publisher::Floor(ws) => ws.send(Message::text(r#"{"op":"publish"}"#)).await?,
        }
        Ok(())
    }
}

/// A client process: its standard input, and its output's lines (read by a thread).
struct ClientProc {
    child: Child,
    pid: u32,
    stdin: ChildStdin,
    lines: mpsc::Receiver<std::io::Result<String>>,
}

impl ClientProc {
    /// Starts `ws_fanout clients ARGS…`.
    fn spawn(args: &[String]) -> Result<ClientProc> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("clients")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
            let _ = child.kill();
            return Err("a client process without its pipes".into());
        };
        let (tx, lines) = mpsc::channel(4);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        Ok(ClientProc {
            pid: child.id(),
            child,
            stdin,
            lines,
        })
    }

    /// The next line, which must start with `word`; its rest.
    async fn expect(&mut self, word: &str, within: Duration) -> Result<String> {
        let line = tokio::time::timeout(within, self.lines.recv())
            .await
            .map_err(|_| format!("client process {}: no `{word}` within {within:?}", self.pid))?
            .ok_or_else(|| format!("client process {} exited before `{word}`", self.pid))??;
        line.strip_prefix(word)
            .map(|rest| rest.trim().to_owned())
            .ok_or_else(|| {
                format!(
                    "client process {}: `{word}` expected, got {line:.80}",
                    self.pid
                )
                .into()
            })
    }

    fn say(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}")?;
        Ok(self.stdin.flush()?)
    }
}

impl Drop for ClientProc {
    fn drop(&mut self) {
        // Ends a process left behind by an error; one that exited is only reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the client processes: `per_process` clients each at most, the cores' worth of
/// worker threads between them, `IN_FLIGHT` clients connecting at a time between them.
fn spawn_clients(args: &RunArgs) -> Result<Vec<ClientProc>> {
    let procs = args.clients.div_ceil(args.per_process.max(1)).max(1);
    let cores = std::thread::available_parallelism()?.get();
    let mut out = Vec::with_capacity(procs);
    for p in 0..procs {
        let first = args.clients * p / procs;
        let count = args.clients * (p + 1) / procs - first;
        let mut child_args = vec![
            "--first".to_owned(),
            first.to_string(),
            "--count".to_owned(),
            count.to_string(),
            "--workers".to_owned(),
            (cores / procs).max(1).to_string(),
            "--in-flight".to_owned(),
            (IN_FLIGHT / procs).max(1).to_string(),
        ];
        child_args.extend(args.urls.iter().cloned());
        out.push(ClientProc::spawn(&child_args)?);
    }
    Ok(out)
}

/// CPU seconds of this process and its client processes.
fn generator_cpu(procs: &[ClientProc]) -> f64 {
    procfs::cpu_secs(std::process::id())
        + procs.iter().map(|p| procfs::cpu_secs(p.pid)).sum::<f64>()
}

/// CPU seconds over `secs` seconds, in percent of one core.
fn pct(cpu: f64, secs: f64) -> f64 {
    cpu / secs * 100.0
}

async fn run(args: RunArgs) -> Result<()> {
    let mut publisher = Publisher::open(&args).await?;
    let rss_before = procfs::total_rss_kib(&args.pids);
    let mut procs = spawn_clients(&args)?;
    for p in &mut procs {
        p.expect("ready", Duration::from_secs(300)).await?;
    }
    // Let the connection burst settle before measuring memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = procfs::total_rss_kib(&args.pids);

    let cpu_start = procfs::total_cpu_secs(&args.pids);
    let source_start = args.source_pid.map(procfs::cpu_secs);
    let gen_start = generator_cpu(&procs);
    let started = Instant::now();
    let total = args.rate * args.seconds;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    for i in 0..total {
        tick.tick().await;
        publisher.publish(i).await?;
    }
    for p in &mut procs {
        p.say(&format!("published {total}"))?;
    }
    for p in &mut procs {
        p.expect("done", Duration::from_secs(60)).await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = procfs::total_cpu_secs(&args.pids) - cpu_start;
    let source_cpu = args
        .source_pid
        .zip(source_start)
        .map(|(pid, start)| format!("{:.0}", pct(procfs::cpu_secs(pid) - start, elapsed)));
    let gen_cpu = generator_cpu(&procs) - gen_start;

    let tally = collect(&mut procs).await?;
    let expected = total * args.clients as u64;
    println!(
        "clients={} rate={} events={total} delivered={} dropped={} resyncs={} retries={} \
         p50_ms={:.1} p99_ms={:.1} worst_client_p99_ms={:.1} frames_per_s={:.0} \
         server_cpu_pct={:.0} source_cpu_pct={} generator_cpu_pct={:.0} \
         rss_base_kib={rss_before} rss_connected_kib={rss_connected} kib_per_1000_clients={:.0}",
        args.clients,
        args.rate,
        tally.delivered,
        expected.saturating_sub(tally.delivered),
        tally.resyncs,
        tally.retries,
        tally.hist.percentile_ms(50),
        tally.hist.percentile_ms(99),
        tally.worst_p99_us as f64 / 1000.0,
        tally.delivered as f64 / elapsed,
        pct(cpu, elapsed),
        source_cpu.as_deref().unwrap_or("-"),
        pct(gen_cpu, elapsed),
        rss_connected.saturating_sub(rss_before) as f64 / args.clients as f64 * 1000.0,
    );
    Ok(())
}

/// What the client processes reported, added up.
#[derive(Default)]
struct Tally {
    delivered: u64,
    resyncs: u64,
    retries: u64,
    worst_p99_us: u64,
    hist: Histogram,
}

async fn collect(procs: &mut [ClientProc]) -> Result<Tally> {
    let mut tally = Tally::default();
    for p in procs {
        let result = p.expect("result", Duration::from_secs(60)).await?;
        for field in result.split(' ') {
            match field.split_once('=') {
                Some(("delivered", v)) => tally.delivered += v.parse::<u64>()?,
                Some(("resyncs", v)) => tally.resyncs += v.parse::<u64>()?,
                Some(("retries", v)) => tally.retries += v.parse::<u64>()?,
                Some(("worst_p99_us", v)) => {
                    tally.worst_p99_us = tally.worst_p99_us.max(v.parse()?)
                }
                Some(("hist", v)) => tally.hist.merge(v)?,
                _ => return Err(format!("client process {}: unexpected {field:.80}", p.pid).into()),
            }
        }
        p.child.wait()?;
    }
    Ok(tally)
}

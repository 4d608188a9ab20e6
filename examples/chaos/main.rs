//! The chaos run of `scripts/chaos.sh` (which starts PostgreSQL and a RabbitMQ node of its own,
//! writes pglive's configuration and calls this with where everything is).
//!
//! Writers commit a mixed workload over the mapped tables and record every committed change
//! (workload.rs); observers record what the file sink wrote, what an AMQP consumer received
//! and what 50 WebSocket clients saw (observe.rs); meanwhile, cycle after cycle, a fault chosen
//! from the seed hits pglive, PostgreSQL, RabbitMQ or the relay (faults.rs), and the run waits
//! for pglive to recover before the next one. At the end every committed change must have
//! reached the file and AMQP sinks; the table (report.rs) says what happened.

mod faults;
mod observe;
mod report;
mod rng;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use faults::{Fault, Pglive};
use observe::{ClientView, Record, WsTally};
use rng::Rng;
use workload::{Change, Ledger, Linger, Writer};

type Result<T> = std::result::Result<T, String>;

const USAGE: &str = "usage: chaos --mode short|full --seed N --work DIR --pglive BIN --config FILE \
--events FILE --pg-url URL --pg-dir DIR --pg-port PORT --pg-cluster SCRIPT --rabbit SCRIPT \
--rabbit-dir DIR --amqp-url URL --ws HOST:PORT --ops HOST:PORT [--cycles N] [--deadline SECS] \
[--cycle-bound SECS] [--clients N] [--slot NAME] [--exchange NAME] [--ws-path PATH] \
[--self-test drop-amqp-message]   (the relay's JWT secret in CHAOS_JWT_SECRET)";

#[derive(Clone)]
pub struct Args {
    pub full: bool,
    pub seed: u64,
    pub cycles: usize,
    pub deadline: Duration,
    pub cycle_bound: Duration,
    pub clients: usize,
    pub work: PathBuf,
    pub pglive: PathBuf,
    pub config: PathBuf,
    pub events: PathBuf,
    pub pg_url: String,
    pub pg_dir: String,
    pub pg_port: String,
    pub pg_cluster: String,
    pub rabbit: String,
    pub rabbit_dir: String,
    pub amqp_url: String,
    pub exchange: String,
    pub slot: String,
    pub ws: String,
    pub ws_path: String,
    pub ops: String,
    pub secret: String,
    pub drop_amqp_message: bool,
}

impl Args {
    fn parse() -> Result<Args> {
        let raw: Vec<String> = std::env::args().skip(1).collect();
        let get = |name: &str| -> Option<String> {
            raw.iter()
                .position(|a| a == name)
                .and_then(|i| raw.get(i + 1).cloned())
        };
        let need = |name: &str| get(name).ok_or_else(|| format!("{name} is required\n{USAGE}"));
        let num = |name: &str, default: u64| -> Result<u64> {
            get(name).map_or(Ok(default), |v| {
                v.parse()
                    .map_err(|_| format!("{name}: {v:?} is not a number"))
            })
        };
        let full = match need("--mode")?.as_str() {
            "short" => false,
            "full" => true,
            other => return Err(format!("--mode: {other:?} is not short or full")),
        };
        let self_test = get("--self-test");
        if let Some(t) = self_test.as_deref()
            && t != "drop-amqp-message"
        {
            return Err(format!("--self-test: {t:?} is not drop-amqp-message"));
        }
        Ok(Args {
            full,
            seed: num("--seed", 1)?,
            cycles: num("--cycles", if full { 24 } else { 6 })? as usize,
            deadline: Duration::from_secs(num("--deadline", if full { 1200 } else { 300 })?),
            cycle_bound: Duration::from_secs(num("--cycle-bound", 90)?),
            clients: num("--clients", 50)? as usize,
            work: need("--work")?.into(),
            pglive: need("--pglive")?.into(),
            config: need("--config")?.into(),
            events: need("--events")?.into(),
            pg_url: need("--pg-url")?,
            pg_dir: need("--pg-dir")?,
            pg_port: need("--pg-port")?,
            pg_cluster: need("--pg-cluster")?,
            rabbit: need("--rabbit")?,
            rabbit_dir: need("--rabbit-dir")?,
            amqp_url: need("--amqp-url")?,
            exchange: get("--exchange").unwrap_or_else(|| "pglive".into()),
            slot: get("--slot").unwrap_or_else(|| "chaos".into()),
            ws: need("--ws")?,
            ws_path: get("--ws-path").unwrap_or_else(|| "/live".into()),
            ops: need("--ops")?,
            secret: std::env::var("CHAOS_JWT_SECRET")
                .map_err(|_| "CHAOS_JWT_SECRET (the relay's jwt_secret) is not set".to_owned())?,
            drop_amqp_message: self_test.is_some(),
        })
    }
}

/// A line on stderr with CHAOS_VERBOSE set.
pub fn note(msg: &str) {
    if std::env::var_os("CHAOS_VERBOSE").is_some() {
        eprintln!("chaos: {msg}");
    }
}

/// The pace of the workload and of the faults.
struct Pace {
    /// Between the recovery from one fault and the next fault, ms.
    calm: (u64, u64),
    /// Writers of small transactions, and their pause between transactions, ms.
    small_writers: i64,
    small_pause: (u64, u64),
    /// Between 10,000-row transactions, s.
    big_every: (u64, u64),
}

/// One planned cycle: all drawn from the seed before the run starts.
#[derive(Clone, Debug)]
pub struct Cycle {
    pub fault: Fault,
    /// How long the fault lasts (service down, alarm raised, flood going), ms.
    pub hold: u64,
    pub calm: u64,
    /// Wait for a 10,000-row transaction to be in flight before striking.
    pub aim_big: bool,
    /// RabbitMQ: SIGKILL rather than a clean stop.
    pub crash: bool,
    pub seed: u64,
}

fn schedule(seed: u64, cycles: usize, pace: &Pace) -> Vec<Cycle> {
    let mut rng = Rng::stream(seed, 1);
    // In rounds: every kind once per round, in a random order.
    let mut kinds = Vec::new();
    while kinds.len() < cycles {
        let mut round = Fault::ALL.to_vec();
        rng.shuffle(&mut round);
        kinds.extend(round);
    }
    kinds.truncate(cycles);
    kinds
        .into_iter()
        .map(|fault| {
            let hold = match fault {
                Fault::PgliveKill => rng.range(0, 1500),
                Fault::PostgresRestart => rng.range(500, 3000),
                Fault::WalsenderKill => 0,
                Fault::RabbitRestart => rng.range(500, 3000),
                Fault::RabbitAlarm => rng.range(2000, 6000),
                Fault::RelayFlood => rng.range(3000, 6000),
            };
            Cycle {
                fault,
                hold,
                calm: rng.range(pace.calm.0, pace.calm.1),
                aim_big: rng.percent(30),
                crash: rng.percent(50),
                seed: rng.next(),
            }
        })
        .collect()
}

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos: {e}");
            return ExitCode::FAILURE;
        }
    };
    let deadline = args.deadline;
    let outcome = rt.block_on(async { tokio::time::timeout(deadline, run(args)).await });
    rt.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => ExitCode::FAILURE,
        Ok(Err(e)) => {
            eprintln!("chaos: FAILED: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!(
                "chaos: FAILED: the run did not finish within its deadline of {} s",
                deadline.as_secs()
            );
            ExitCode::FAILURE
        }
    }
}

/// Everything running during the cycles, checked between steps.
struct Running {
    pglive: Pglive,
    writers: Vec<tokio::task::JoinHandle<Result<()>>>,
    /// Transactions whose COMMIT hangs until PostgreSQL is killed, then resolved.
    in_doubt: Vec<tokio::task::JoinHandle<Result<()>>>,
    ledger: Arc<Ledger>,
}

impl Running {
    /// Fails when pglive died by itself or a writer found the database inconsistent.
    async fn check(&mut self) -> Result<()> {
        self.pglive.check_alive()?;
        for w in &mut self.writers {
            if w.is_finished() {
                return match w.await {
                    Ok(Err(e)) => Err(format!("a writer stopped: {e}")),
                    Ok(Ok(())) => Err("a writer stopped early".into()),
                    Err(e) => Err(format!("a writer panicked: {e}")),
                };
            }
        }
        Ok(())
    }

    /// Waits `d`, checking all along.
    async fn hold(&mut self, d: Duration) -> Result<()> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.check().await?;
            tokio::time::sleep((until - Instant::now()).min(Duration::from_millis(100))).await;
        }
        Ok(())
    }
}

impl Drop for Pglive {
    fn drop(&mut self) {
        self.kill();
    }
}

/// pglive's `/readyz`: `Some(true)` for 200, else the status line (None: no answer).
async fn readyz(ops: &str) -> Option<std::result::Result<(), String>> {
    let text = http_get(ops, "/readyz").await?;
    Some(
        if text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(text.lines().last().unwrap_or_default().to_owned())
        },
    )
}

/// The whole answer (status line, headers, body) of pglive's ops listener to `GET path`,
/// within 2 s.
async fn http_get(ops: &str, path: &str) -> Option<String> {
    let work = async {
        let mut tcp = tokio::net::TcpStream::connect(ops).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: pglive\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        tcp.read_to_end(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), work)
        .await
        .ok()?
}

/// The outcome of one cycle.
pub struct CycleResult {
    pub cycle: Cycle,
    /// From the end of the fault to recovery.
    pub recovery: Duration,
    /// From the start of the fault to its end.
    pub lasted: Duration,
    /// pglive's largest resident memory from the fault to the recovery.
    pub rss_kib: u64,
}

async fn run(a: Args) -> Result<bool> {
    let started = Instant::now();
    let pace = if a.full {
        Pace {
            calm: (4000, 12000),
            small_writers: 2,
            small_pause: (5, 25),
            big_every: (8, 16),
        }
    } else {
        Pace {
            calm: (2000, 4000),
            small_writers: 2,
            small_pause: (5, 25),
            big_every: (5, 9),
        }
    };
    let plan = schedule(a.seed, a.cycles, &pace);
    eprintln!(
        "chaos: seed {}, {} cycles: {}",
        a.seed,
        plan.len(),
        plan.iter()
            .map(|c| c.fault.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let load_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    workload::create_tables(&a.pg_url).await?;

    // The observers.
    let stop_observers = CancellationToken::new();
    let file = Arc::new(Mutex::new(Record::default()));
    let amqp = Arc::new(Mutex::new(Record::default()));
    let tail = tokio::spawn(observe::tail_file(
        a.events.clone(),
        file.clone(),
        stop_observers.clone(),
    ));
    let (declared_tx, mut declared) = tokio::sync::mpsc::channel(1);
    let consumer = tokio::spawn(observe::consume_amqp(
        a.amqp_url.clone(),
        a.exchange.clone(),
        amqp.clone(),
        declared_tx,
        a.drop_amqp_message.then(|| observe::Dropper::new(10)),
        stop_observers.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(60), declared.recv())
        .await
        .map_err(|_| format!("could not declare the AMQP queue at {}", a.amqp_url))?;

    // pglive.
    let mut pglive = Pglive::new(
        a.pglive.clone(),
        a.config.clone(),
        a.work.join("pglive.log"),
        a.work.join("pglive.pid"),
    );
    pglive.start()?;
    let peak_rss = Arc::new(AtomicU64::new(0));
    let cycle_rss = Arc::new(AtomicU64::new(0));
    tokio::spawn(faults::sample_rss(
        pglive.pid.clone(),
        peak_rss.clone(),
        cycle_rss.clone(),
        stop_observers.clone(),
    ));
    let ledger = Arc::new(Ledger::default());
    let mut running = Running {
        pglive,
        writers: Vec::new(),
        in_doubt: Vec::new(),
        ledger: ledger.clone(),
    };
    wait_ready(
        &a,
        &mut running,
        Duration::from_secs(60),
        "pglive to become ready",
    )
    .await?;

    // The relay's clients.
    let channels: Vec<&str> = workload::TABLES.iter().map(|t| t.channel).collect();
    let ws_url = format!(
        "ws://{}{}?token={}",
        a.ws,
        a.ws_path,
        faults::token(&a.secret, &channels, 6 * 3600)
    );
    let tally = Arc::new(WsTally::default());
    let views: Vec<Arc<Mutex<ClientView>>> = (0..a.clients).map(|_| Arc::default()).collect();
    for v in &views {
        tokio::spawn(observe::ws_client(
            ws_url.clone(),
            tally.clone(),
            v.clone(),
            stop_observers.clone(),
        ));
    }
    let until = Instant::now() + Duration::from_secs(60);
    while !observe::all_subscribed(&views) {
        if Instant::now() > until {
            return Err("the WebSocket clients did not all subscribe within 60 s".into());
        }
        running.hold(Duration::from_millis(50)).await?;
    }

    // The writers.
    let stop_writers = CancellationToken::new();
    for id in 1..=pace.small_writers {
        let w = Writer::new(id, &a.pg_url, ledger.clone(), stop_writers.clone());
        let rng = Rng::stream(a.seed, 100 + id as u64);
        running
            .writers
            .push(tokio::spawn(workload::run_small(w, rng, pace.small_pause)));
    }
    let big = Writer::new(9, &a.pg_url, ledger.clone(), stop_writers.clone());
    let in_big: Arc<AtomicBool> = big.in_big.clone();
    running.writers.push(tokio::spawn(workload::run_big(
        big,
        Rng::stream(a.seed, 200),
        pace.big_every,
    )));
    let mut prober = Writer::new(10, &a.pg_url, ledger.clone(), CancellationToken::new());
    let flood = Arc::new(faults::FloodTally::default());

    // The cycles.
    let mut results = Vec::new();
    for (i, c) in plan.iter().enumerate() {
        running.hold(Duration::from_millis(c.calm)).await?;
        if c.aim_big {
            let until = Instant::now() + Duration::from_secs(30);
            while !in_big.load(Ordering::Acquire) && Instant::now() < until {
                running.hold(Duration::from_millis(10)).await?;
            }
        }
        let struck = Instant::now();
        cycle_rss.store(0, Ordering::Relaxed);
        inject(&a, i, c, &mut running, &flood)
            .await
            .map_err(|e| format!("cycle {} ({}): {e}", i + 1, c.fault.name()))?;
        let cleared = Instant::now();
        let recovery = recover(&a, i, c, &mut running, &mut prober, &file, &amqp).await?;
        // A cycle shorter than the sampling interval still gets a figure.
        if let Some(kib) = faults::vm_kib(running.pglive.pid.load(Ordering::Acquire), "VmRSS:") {
            cycle_rss.fetch_max(kib, Ordering::Relaxed);
        }
        eprintln!(
            "chaos: cycle {}/{}: {}{}{} for {:.1} s; recovered in {:.1} s; pglive RSS up to {:.1} MiB",
            i + 1,
            plan.len(),
            c.fault.name(),
            if c.fault == Fault::RabbitRestart && c.crash {
                " (SIGKILL)"
            } else {
                ""
            },
            if c.aim_big {
                ", during a 10,000-row transaction"
            } else {
                ""
            },
            (cleared - struck).as_secs_f64(),
            recovery.as_secs_f64(),
            cycle_rss.load(Ordering::Relaxed) as f64 / 1024.0
        );
        results.push(CycleResult {
            cycle: c.clone(),
            recovery,
            lasted: cleared - struck,
            rss_kib: cycle_rss.load(Ordering::Relaxed),
        });
    }

    // The end: stop writing, wait for everything to arrive.
    stop_writers.cancel();
    for w in running.writers.drain(..) {
        match tokio::time::timeout(Duration::from_secs(120), w).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(format!("a writer stopped: {e}")),
            Ok(Err(e)) => return Err(format!("a writer panicked: {e}")),
            Err(_) => return Err("a writer did not stop within 120 s".into()),
        }
    }
    let final_lsn = current_wal_lsn(&a.pg_url).await?;
    let expected: std::collections::HashSet<Change> =
        ledger.snapshot().changes.into_iter().collect();
    // Once the slot has confirmed the final position, every sink has acknowledged
    // everything: what the observers still lack can only be on its way to them.
    let stopped_writing = Instant::now();
    let confirmed = wait_confirmed(&a, final_lsn, &mut running).await?;
    let confirmed_in = stopped_writing.elapsed();
    let caught_up_in = wait_delivered(&expected, &file, &amqp, &mut running)
        .await?
        .map(|_| stopped_writing.elapsed());
    // The relay is best effort, but the clients get a moment to receive the last events.
    let until = Instant::now() + Duration::from_secs(30);
    let last_keys = file.lock().unwrap().keys_by_channel();
    while Instant::now() < until && !ws_caught_up(&views, &last_keys) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exit = running.pglive.terminate(Duration::from_secs(45)).await;
    stop_observers.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), tail).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), consumer).await;

    let facts = report::Facts {
        args: &a,
        duration: started.elapsed(),
        results: &results,
        ledger: ledger.snapshot(),
        expected: &expected,
        file: &file.lock().unwrap(),
        amqp: &amqp.lock().unwrap(),
        tally: &tally,
        views: &views,
        flood: &flood,
        peak_rss_kib: peak_rss.load(Ordering::Relaxed),
        final_lsn,
        confirmed,
        confirmed_in,
        caught_up_in,
        exit,
        pglive_starts: running.pglive.starts,
        load: (
            load_start,
            std::fs::read_to_string("/proc/loadavg").unwrap_or_default(),
        ),
    };
    Ok(report::print(&facts))
}

async fn wait_ready(a: &Args, running: &mut Running, within: Duration, what: &str) -> Result<()> {
    let until = Instant::now() + within;
    loop {
        running.check().await?;
        let r = readyz(&a.ops).await;
        if matches!(r, Some(Ok(()))) {
            return Ok(());
        }
        if Instant::now() > until {
            return Err(format!(
                "timed out waiting for {what} ({}); the end of its log:\n{}",
                match r {
                    Some(Err(why)) => why,
                    _ => "no answer on /readyz".into(),
                },
                running.pglive.log_tail(20)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn inject(
    a: &Args,
    i: usize,
    c: &Cycle,
    running: &mut Running,
    flood: &Arc<faults::FloodTally>,
) -> Result<()> {
    let hold = Duration::from_millis(c.hold);
    let rabbit = |args: &[&str]| {
        let mut v = vec![a.rabbit.clone()];
        v.extend(args.iter().map(|s| s.to_string()));
        faults::script(v)
    };
    match c.fault {
        Fault::PgliveKill => {
            running.pglive.kill();
            tokio::time::sleep(hold).await;
            running.pglive.start()?;
        }
        Fault::PostgresRestart => {
            // Two COMMITs the crash interrupts: one before its commit record (it must not be
            // delivered), one after (it must be).
            for (k, linger) in [Linger::BeforeCommitRecord, Linger::AfterCommitRecord]
                .into_iter()
                .enumerate()
            {
                let id = 100 + 2 * i as i64 + k as i64;
                let w = Writer::new(
                    id,
                    &a.pg_url,
                    running.ledger.clone(),
                    CancellationToken::new(),
                );
                running
                    .in_doubt
                    .push(tokio::spawn(workload::in_doubt(w, linger)));
            }
            wait_lingering(&a.pg_url).await?;
            faults::script(vec![a.pg_cluster.clone(), "crash".into(), a.pg_dir.clone()]).await?;
            running.hold(hold).await?;
            faults::script(vec![
                a.pg_cluster.clone(),
                "start".into(),
                a.pg_dir.clone(),
                a.pg_port.clone(),
            ])
            .await?;
        }
        Fault::WalsenderKill => faults::kill_walsender(&a.pg_url, &a.slot).await?,
        Fault::RabbitRestart => {
            rabbit(&[if c.crash { "kill" } else { "stop" }, &a.rabbit_dir]).await?;
            running.hold(hold).await?;
            rabbit(&["start", &a.rabbit_dir]).await?;
        }
        Fault::RabbitAlarm => {
            rabbit(&["ctl", &a.rabbit_dir, "set_vm_memory_high_watermark", "0"]).await?;
            running.hold(hold).await?;
            rabbit(&["ctl", &a.rabbit_dir, "set_vm_memory_high_watermark", "0.4"]).await?;
        }
        Fault::RelayFlood => {
            let mut rng = Rng::new(c.seed);
            let f = faults::flood(
                a.ws.clone(),
                a.ws_path.clone(),
                a.secret.clone(),
                &mut rng,
                hold,
                flood.clone(),
            );
            tokio::pin!(f);
            // pglive must live through it.
            loop {
                tokio::select! {
                    _ = &mut f => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => running.check().await?,
                }
            }
        }
    }
    Ok(())
}

/// Recovery: from the end of the fault until a change committed after it (the probe) has
/// reached the file sink and the AMQP consumer, and /readyz answers 200.
async fn recover(
    a: &Args,
    i: usize,
    c: &Cycle,
    running: &mut Running,
    prober: &mut Writer,
    file: &Mutex<Record>,
    amqp: &Mutex<Record>,
) -> Result<Duration> {
    let cleared = Instant::now();
    let until = cleared + a.cycle_bound;
    let failed = |what: String, running: &Running| {
        format!(
            "cycle {} ({}) did not recover within {} s: {what}; the end of pglive's log:\n{}",
            i + 1,
            c.fault.name(),
            a.cycle_bound.as_secs(),
            running.pglive.log_tail(25)
        )
    };
    let probe =
        match tokio::time::timeout_at(until.into(), workload::probe(prober, i as i64 + 1)).await {
            Ok(p) => p?,
            Err(_) => return Err(failed("the database took no commit".into(), running)),
        };
    let in_doubt: Vec<_> = running.in_doubt.drain(..).collect();
    for t in in_doubt {
        match tokio::time::timeout_at(until.into(), t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(format!("a transaction in doubt: {e}")),
            Ok(Err(e)) => return Err(format!("a transaction in doubt: {e}")),
            Err(_) => return Err(failed("a COMMIT in doubt was not resolved".into(), running)),
        }
    }
    loop {
        running.check().await?;
        let in_file = file.lock().unwrap().changes.contains(&probe);
        let in_amqp = amqp.lock().unwrap().changes.contains(&probe);
        let ready = readyz(&a.ops).await;
        if in_file && in_amqp && matches!(ready, Some(Ok(()))) {
            return Ok(cleared.elapsed());
        }
        if Instant::now() > until {
            let ready = match ready {
                Some(Ok(())) => "200".to_owned(),
                Some(Err(why)) => why,
                None => "no answer".into(),
            };
            let amqp_side = if in_amqp {
                String::new()
            } else {
                amqp_diagnosis(a, amqp).await
            };
            return Err(failed(
                format!(
                    "a change committed after the fault reached the file sink: {in_file}, \
                     the AMQP consumer: {in_amqp}; /readyz: {ready}{amqp_side}"
                ),
                running,
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where a change stopped on its way to the AMQP consumer: what the consumer went through, what
/// the broker holds in its queue, and pglive's AMQP sink metrics.
async fn amqp_diagnosis(a: &Args, amqp: &Mutex<Record>) -> String {
    let consumer = amqp.lock().unwrap().consumer_report();
    let args = [
        a.rabbit.as_str(),
        "ctl",
        &a.rabbit_dir,
        "list_queues",
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
    ];
    let queue = match faults::script_output(args.iter().map(|s| s.to_string()).collect()).await {
        Ok(out) => out.split_whitespace().collect::<Vec<_>>().join(" "),
        Err(e) => e,
    };
    let metrics = match http_get(&a.ops, "/metrics").await {
        Some(text) => text
            .lines()
            .filter(|l| l.starts_with("pglive_sink_") && l.contains("amqp"))
            .collect::<Vec<_>>()
            .join("; "),
        None => "no answer".into(),
    };
    format!(
        "; the AMQP consumer: {consumer}; the broker's queues (name ready unacked consumers): \
         {queue}; pglive's AMQP sink: {metrics}"
    )
}

/// Waits (up to 20 s) until one COMMIT sleeps in its deferred trigger and another waits for
/// the synchronous standby.
async fn wait_lingering(url: &str) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(20);
    let client = workload::connect(url).await?;
    loop {
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE wait_event = 'PgSleep'), \
                        count(*) FILTER (WHERE wait_event = 'SyncRep') \
                 FROM pg_stat_activity WHERE query = 'COMMIT'",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        if row.get::<_, i64>(0) >= 1 && row.get::<_, i64>(1) >= 1 {
            return Ok(());
        }
        if Instant::now() > until {
            return Err("the two COMMITs meant to be in doubt did not start within 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn current_wal_lsn(url: &str) -> Result<u64> {
    let client = workload::connect(url).await?;
    let row = client
        .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8", &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Waits (up to 30 s) until every committed change is in both records; returns how long it
/// took, or None if some never arrived.
async fn wait_delivered(
    expected: &std::collections::HashSet<Change>,
    file: &Mutex<Record>,
    amqp: &Mutex<Record>,
    running: &mut Running,
) -> Result<Option<Duration>> {
    let start = Instant::now();
    let until = start + Duration::from_secs(30);
    let complete = |r: &Mutex<Record>| {
        let r = r.lock().unwrap();
        r.changes.len() >= expected.len() && expected.iter().all(|c| r.changes.contains(c))
    };
    loop {
        running.check().await?;
        if complete(file) && complete(amqp) {
            return Ok(Some(start.elapsed()));
        }
        if Instant::now() > until {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits (up to 180 s) for the slot's confirmed_flush_lsn to reach `lsn`; returns the last
/// value seen.
async fn wait_confirmed(a: &Args, lsn: u64, running: &mut Running) -> Result<Option<u64>> {
    let until = Instant::now() + Duration::from_secs(180);
    let mut last = None;
    while Instant::now() < until {
        running.check().await?;
        if let Ok(client) = workload::connect(&a.pg_url).await
            && let Ok(Some(row)) = client
                .query_opt(
                    "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::int8 FROM pg_replication_slots \
                     WHERE slot_name = $1",
                    &[&a.slot],
                )
                .await
        {
            last = row.get::<_, Option<i64>>(0).map(|v| v as u64);
            if last.is_some_and(|l| l >= lsn) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(last)
}

fn ws_caught_up(views: &[Arc<Mutex<ClientView>>], last: &[Vec<observe::EventKey>]) -> bool {
    views.iter().all(|v| {
        let v = v.lock().unwrap();
        last.iter().enumerate().all(|(ch, keys)| {
            keys.last()
                .is_none_or(|k| v.last[ch].is_some_and(|l| l >= *k))
        })
    })
}

//! The `pglive` command: flags → config → logging → the chosen command → exit code
//! (0 ok, 2 configuration or usage error, 1 runtime failure).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use pglive::check::Level;
use pglive::config::{self, Config, LogFormat};
use pglive::lsn::Lsn;
use pglive::pipeline::Stopped;
use pglive::source::catalog;

#[derive(Parser)]
#[command(
    name = "pglive",
    version,
    about = "PostgreSQL logical replication → Refine LiveEvents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as `text` (default) or `json`; overrides ops.log_format.
    #[arg(long, global = true, value_name = "FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Configuration file (TOML); PGLIVE_<SECTION>__<KEY> environment variables override it.
    #[arg(short, long, env = "PGLIVE_CONFIG")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Stream changes to the configured sinks until stopped (SIGTERM/SIGINT).
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Stop cleanly once every change up to this LSN (X/X) is delivered and confirmed.
        #[arg(long, value_name = "LSN")]
        stop_at: Option<Lsn>,
    },
    /// Verify the configuration and every prerequisite on the server; say how to fix problems.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Create the publication (for the mapped tables) and the replication slot, if missing.
    Setup {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Serve WebSocket clients from a RabbitMQ stream as a relay node (no PostgreSQL); run any
    /// number of them behind a load balancer.
    Relay {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Drop the replication slot and the publication (frees the WAL the slot holds).
    Teardown {
        #[command(flatten)]
        config: ConfigArg,
        /// Also when another process streams from the slot: end that session first.
        #[arg(long)]
        force: bool,
    },
}

/// `RUST_LOG`, else `ops.log_level`, else `info`. The AMQP and NATS clients' own messages
/// repeat what the sinks report (and dump whole returned messages), so they are off unless the
/// filter names `lapin` or `async_nats`.
fn log_filter(configured: Option<&str>) -> tracing_subscriber::EnvFilter {
    let env = std::env::var("RUST_LOG").unwrap_or_default();
    let spec = if !env.trim().is_empty() {
        env.as_str()
    } else {
        configured.unwrap_or("info")
    };
    let mut spec = spec.to_owned();
    for client in ["lapin", "async_nats"] {
        if !spec.contains(client) {
            spec.push_str(&format!(",{client}=off"));
        }
    }
    tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,lapin=off,async_nats=off"))
}

/// Logs go to standard error (standard output may carry events), as text or JSON lines.
fn init_logging(format: LogFormat, level: Option<&str>) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(log_filter(level));
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Relay { config } => return relay_main(&config.config, false, cli.log_format),
        Command::Check { config } if config::is_relay_file(&config.config) => {
            return relay_main(&config.config, true, cli.log_format);
        }
        _ => {}
    }
    let path = match &cli.command {
        Command::Run { config, .. }
        | Command::Check { config }
        | Command::Setup { config }
        | Command::Teardown { config, .. }
        | Command::Relay { config } => config.config.clone(),
    };
    let config = match config::load(Some(&path)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pglive: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(
        log_format(cli.log_format.as_deref(), config.ops.log_format),
        config.ops.log_level.as_deref(),
    );
    // `check` lists them among its findings.
    if !matches!(cli.command, Command::Check { .. }) {
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
    }
    // One thread: the pipeline is a single stream, and the walsender it reads from is one
    // process too. Measured on a backlog drain, a multi-threaded runtime spent about 20% more
    // CPU (waking tasks across threads) for no gain in throughput. Blocking writes (stdout,
    // files) still run on tokio's blocking pool.
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::from(1);
    };
    let is_run = matches!(cli.command, Command::Run { .. });
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { stop_at, .. } => run(config, stop_at).await,
            Command::Check { .. } => check(&config).await,
            Command::Setup { .. } => setup(&config).await,
            Command::Teardown { force, .. } => teardown(&config, force).await,
            Command::Relay { .. } => unreachable!("handled by relay_main"),
        }
    });
    // Do not wait for a write stuck on a blocked stdout: what it held was not confirmed.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pglive: {e:#}");
            if is_run {
                eprintln!(
                    "pglive: `pglive check --config {}` verifies every prerequisite and says how to fix it",
                    path.display()
                );
            }
            ExitCode::from(1)
        }
    }
}

/// The async runtime `builder` makes (with I/O and timers); none when it cannot start (said).
fn runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    builder
        .enable_all()
        .build()
        .map_err(|e| eprintln!("pglive: cannot start the async runtime: {e}"))
        .ok()
}

/// `--log-format`, else the configured one.
fn log_format(flag: Option<&str>, configured: LogFormat) -> LogFormat {
    match flag {
        Some("json") => LogFormat::Json,
        Some(_) => LogFormat::Text,
        None => configured,
    }
}

/// `pglive relay`: a relay node on a multi-threaded runtime — it has no source to keep in
/// order, and fanning out to thousands of sockets uses every core. With `check`, `pglive
/// check` of a relay node's file.
fn relay_main(path: &std::path::Path, check: bool, log_flag: Option<String>) -> ExitCode {
    let config = match config::load_relay(Some(path)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pglive: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(
        log_format(log_flag.as_deref(), config.ops.log_format),
        config.ops.log_level.as_deref(),
    );
    if !check {
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
    }
    let Some(runtime) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::from(1);
    };
    if check {
        let findings = runtime.block_on(pglive::check::relay(&config));
        return report(&findings);
    }
    let result = runtime.block_on(async {
        let (shutdown, metrics) = serve_as_daemon(&config.ops)?;
        let listeners = pglive::relay::Listeners::bind(&config, metrics).await?;
        pglive::relay::run(config, listeners, shutdown).await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pglive: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(config: Config, stop_at: Option<Lsn>) -> anyhow::Result<ExitCode> {
    let (shutdown, metrics) = serve_as_daemon(&config.ops)?;
    let listeners = pglive::app::Listeners::bind(&config, metrics).await?;
    match pglive::app::run(config, listeners, stop_at, shutdown).await? {
        Stopped::Shutdown => tracing::info!("stopped"),
        Stopped::ReachedStopLsn(lsn) => tracing::info!(flush = %lsn, "reached the stop position"),
    }
    Ok(ExitCode::SUCCESS)
}

/// What `run` and `relay` share: the token the signals cancel, and the metrics recorder when
/// `ops.listen` serves `/metrics`. Runs inside the runtime.
fn serve_as_daemon(
    ops: &config::OpsConfig,
) -> anyhow::Result<(
    CancellationToken,
    Option<metrics_exporter_prometheus::PrometheusHandle>,
)> {
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone(), ops.shutdown_timeout));
    let metrics = match ops.listen {
        Some(_) => Some(pglive::ops::install_metrics().map_err(anyhow::Error::msg)?),
        None => None,
    };
    Ok((shutdown, metrics))
}

/// The first SIGTERM or SIGINT starts a graceful shutdown, which the pipeline keeps within
/// `limit`; past it, or at a second signal, the process exits at once (what was not
/// confirmed is replayed at the next start).
async fn watch_signals(shutdown: CancellationToken, limit: std::time::Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!(
        "shutting down: delivering what was read and confirming it (signal again to exit at once)"
    );
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = tokio::time::sleep(limit) => {
            tracing::error!(?limit, "not stopped within ops.shutdown_timeout; exiting (unconfirmed changes will be replayed)");
            std::process::exit(1);
        }
    }
    tracing::warn!("second signal: exiting without waiting");
    std::process::exit(130);
}

async fn check(config: &Config) -> anyhow::Result<ExitCode> {
    Ok(report(&pglive::check::run(config).await))
}

/// Prints `check`'s findings; fails when one failed.
fn report(findings: &[pglive::check::Finding]) -> ExitCode {
    for f in findings {
        println!("{f}");
    }
    let failed = findings.iter().filter(|f| f.level == Level::Fail).count();
    if failed == 0 {
        println!("all checks passed");
        ExitCode::SUCCESS
    } else {
        println!(
            "{failed} check{} failed",
            if failed == 1 { "" } else { "s" }
        );
        ExitCode::from(1)
    }
}

async fn setup(config: &Config) -> anyhow::Result<ExitCode> {
    let pg = &config.postgres;
    let client = catalog::connect(&pg.conn, pg.connect_timeout).await?;
    let done = catalog::ensure_setup(
        &client,
        &pg.publication,
        &pg.slot,
        &config.tables,
        catalog::MissingSlot::Create,
    )
    .await?;
    if done.is_empty() {
        println!(
            "publication {} and slot {} already in place",
            pg.publication, pg.slot
        );
    }
    for line in done {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn teardown(config: &Config, force: bool) -> anyhow::Result<ExitCode> {
    let pg = &config.postgres;
    let client = catalog::connect(&pg.conn, pg.connect_timeout).await?;
    let done = catalog::teardown(&client, &pg.publication, &pg.slot, force).await?;
    if done.is_empty() {
        println!(
            "neither publication {} nor slot {} exists",
            pg.publication, pg.slot
        );
    }
    for line in done {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

//! Wires the stages: one bounded queue and one driver per sink, the pipeline feeding them, the
//! acknowledgement board between them, the relay servers, and the shared [`Status`] that the
//! ops listener, the slot monitor and systemd read. Every task belongs to this function: the
//! sink drivers to a [`JoinSet`] (their results matter), everything else to a [`TaskTracker`],
//! each stopped by a child of one root token. Returns when the pipeline stops (shutdown, stop
//! LSN, a fatal source error, or a sink that failed for good, which stops the pipeline at once)
//! and every sink has drained its queue, within the [`ShutdownBudget`]; the error names the
//! failing sink.

use std::net::SocketAddr;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::checkpoint::AckBoard;
use crate::config::{Config, SinkConfig};
use crate::lsn::Lsn;
use crate::map::Mapper;
use crate::ops;
use crate::pipeline::outbox::{Outbox, Queue};
use crate::pipeline::{Parts, Pipeline, Stopped};
use crate::shutdown::ShutdownBudget;
use crate::sink::amqp::AmqpSink;
use crate::sink::file::FileSink;
use crate::sink::mqtt::MqttSink;
use crate::sink::nats::NatsSink;
use crate::sink::redis::RedisSink;
use crate::sink::stdout::StdoutSink;
use crate::sink::webhook::WebhookSink;
use crate::sink::websocket::Relay;
use crate::sink::{self, Lane, Sink, SinkError};
use crate::status::Status;

/// Batches each sink may have queued: with batches of at most 1 MiB, this bounds the memory a
/// slow sink can hold while the pipeline waits (PostgreSQL keeps the rest of the WAL).
pub const SINK_QUEUE_BATCHES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error("sinks[{index}] ({}): {}", error.sink, error.message)]
    Sink { index: usize, error: SinkError },
    #[error("a sink stopped unexpectedly: {0}")]
    SinkPanicked(String),
    #[error("{0}")]
    Ops(String),
}

/// The sockets the daemon serves on, bound before it starts (by `main` from the config, or by
/// a test on port 0).
#[derive(Default)]
pub struct Listeners {
    /// `ops.listen`, with the metrics recorder it renders.
    pub ops: Option<(TcpListener, PrometheusHandle)>,
    /// Each WebSocket sink's listener, by sink index.
    pub relays: Vec<(usize, TcpListener)>,
}

impl Listeners {
    /// Binds every listener `config` asks for; `metrics` is the installed recorder (needed
    /// when `ops.listen` is set).
    pub async fn bind(
        config: &Config,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Listeners, RunError> {
        let mut listeners = Listeners::default();
        if let (Some(listen), Some(handle)) = (config.ops.listen, metrics) {
            let listener = bind(listen)
                .await
                .map_err(|e| RunError::Ops(format!("ops.listen: {e}")))?;
            listeners.ops = Some((listener, handle));
        }
        for (index, sink) in config.sinks.iter().enumerate() {
            if let SinkConfig::WebSocket(ws) = sink {
                let listener = bind(ws.listen).await.map_err(|message| RunError::Sink {
                    index,
                    error: SinkError::fatal(sink::websocket::NAME, message),
                })?;
                listeners.relays.push((index, listener));
            }
        }
        Ok(listeners)
    }
}

async fn bind(listen: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))
}

/// Each sink's metric label (`type`, or `type-index` when several share a type) and, for sinks
/// that must connect first, why they are not ready yet.
fn sink_labels(sinks: &[SinkConfig]) -> Vec<(String, Option<String>)> {
    sinks
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let shared = sinks.iter().filter(|o| o.name() == s.name()).count() > 1;
            let label = if shared {
                format!("{}-{i}", s.name())
            } else {
                s.name().to_owned()
            };
            let starting = match s {
                SinkConfig::Amqp(_) => Some("connecting to the broker".to_owned()),
                SinkConfig::Webhook(_) => Some("connecting to the receiver".to_owned()),
                SinkConfig::Mqtt(_) => Some("connecting to the broker".to_owned()),
                SinkConfig::Redis(_) => Some("connecting to Redis".to_owned()),
                SinkConfig::Nats(_) => Some("connecting to the NATS server".to_owned()),
                SinkConfig::WebSocket(_) | SinkConfig::Stdout | SinkConfig::File { .. } => None,
            };
            (label, starting)
        })
        .collect()
}

/// The running sinks: their drivers, and the relay servers that outlive the drivers by their
/// close handshakes.
struct Sinks {
    drivers: JoinSet<Result<(), RunError>>,
    queues: Vec<Queue>,
    /// Stops the relay servers once the drivers are done.
    relays_stop: CancellationToken,
}

/// Starts one driver per sink (and each relay's server on its listener).
fn start_sinks(
    config: &Config,
    mut relays: Vec<(usize, TcpListener)>,
    board: &Arc<AckBoard>,
    status: &Arc<Status>,
    tasks: &TaskTracker,
    root: &CancellationToken,
) -> Sinks {
    let relays_stop = root.child_token();
    let mut drivers = JoinSet::new();
    let mut queues = Vec::new();
    for (index, sink_config) in config.sinks.iter().enumerate() {
        let (tx, rx) = mpsc::channel(SINK_QUEUE_BATCHES);
        let lane = Lane::new(index, board.clone(), status);
        let label = &status.sink(index).label;
        match sink_config {
            SinkConfig::Stdout => spawn(&mut drivers, StdoutSink::new(), lane, rx, None),
            SinkConfig::File { path, fsync } => {
                let sink = FileSink::new(path.clone(), *fsync);
                spawn(&mut drivers, sink, lane, rx, None)
            }
            SinkConfig::Amqp(amqp) => {
                let sink = AmqpSink::new((**amqp).clone(), lane.status().clone());
                spawn(&mut drivers, sink, lane, rx, None)
            }
            SinkConfig::Webhook(hook) => {
                let sink = WebhookSink::new((**hook).clone(), lane.status());
                spawn(&mut drivers, sink, lane, rx, None)
            }
            SinkConfig::Mqtt(mqtt) => {
                let sink = MqttSink::new((**mqtt).clone(), &config.postgres.slot);
                spawn(&mut drivers, sink, lane, rx, None)
            }
            SinkConfig::Redis(redis) => {
                let sink = RedisSink::new((**redis).clone());
                spawn(&mut drivers, sink, lane, rx, None)
            }
            SinkConfig::Nats(nats) => {
                let sink = NatsSink::new((**nats).clone());
                spawn(&mut drivers, sink, lane, rx, None)
            }
            SinkConfig::WebSocket(ws) => {
                // Its clients are closed as soon as it has published everything, while other
                // sinks may still be draining.
                let stop = relays_stop.child_token();
                let relay = Relay::new((**ws).clone(), label, stop.clone());
                spawn(&mut drivers, relay.sink(), lane, rx, Some(stop));
                let at = relays.iter().position(|(i, _)| *i == index);
                let listener = at.map(|at| relays.swap_remove(at).1);
                let listener = listener.expect("Listeners::bind binds every relay");
                let close_within = ShutdownBudget::new(config.ops.shutdown_timeout).relay_close();
                tasks.spawn(relay.serve(listener, close_within));
            }
        }
        queues.push(Queue {
            name: sink_config.name(),
            sender: tx,
        });
    }
    Sinks {
        drivers,
        queues,
        relays_stop,
    }
}

/// Runs `sink`'s driver; `done` is cancelled when it returns.
fn spawn<S: Sink>(
    drivers: &mut JoinSet<Result<(), RunError>>,
    sink: S,
    lane: Lane,
    queue: mpsc::Receiver<Arc<sink::Batch>>,
    done: Option<CancellationToken>,
) {
    let index = lane.index;
    drivers.spawn(async move {
        let _done = done.map(CancellationToken::drop_guard);
        sink::drive(sink, lane, queue)
            .await
            .map_err(|error| RunError::Sink { index, error })
    });
}

/// Starts the ops listener, systemd notifications and the slot monitor.
fn start_background(
    config: &Config,
    ops_listener: Option<(TcpListener, PrometheusHandle)>,
    status: &Arc<Status>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) {
    if let Some((listener, handle)) = ops_listener {
        ops::serve(listener, status.clone(), handle, tasks, stop.clone());
    }
    tasks.spawn(ops::notify::run(status.clone(), stop.clone()));
    tasks.spawn(ops::monitor::run(
        config.postgres.clone(),
        config.ops.clone(),
        config.tables.clone(),
        status.clone(),
        stop.clone(),
    ));
}

/// Runs the daemon until `shutdown` is cancelled, the flush position reaches `stop_at`, or a
/// failure that retrying cannot fix, serving on `listeners` meanwhile. After `shutdown`,
/// finishes within `ops.shutdown_timeout`.
pub async fn run(
    config: Config,
    listeners: Listeners,
    stop_at: Option<Lsn>,
    shutdown: CancellationToken,
) -> Result<Stopped, RunError> {
    let root = CancellationToken::new();
    // Ends every task however this function returns.
    let _root_guard = root.clone().drop_guard();
    let tasks = TaskTracker::new();
    let budget = ShutdownBudget::new(config.ops.shutdown_timeout);
    let status = Arc::new(Status::new(
        &format!("slot {}", config.postgres.slot),
        sink_labels(&config.sinks),
    ));
    start_background(&config, listeners.ops, &status, &tasks, &root);
    {
        let (status, shutdown, root) = (status.clone(), shutdown.clone(), root.clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => status.stopping(),
                _ = root.cancelled() => {}
            }
        });
    }
    let board = Arc::new(AckBoard::new(config.sinks.len()));
    let mut sinks = start_sinks(&config, listeners.relays, &board, &status, &tasks, &root);
    // Stopped by `shutdown`, or by a sink that failed for good.
    let stop = shutdown.child_token();
    let pipeline = Pipeline::new(
        Parts {
            mapper: Mapper::new(&config.tables, config.events),
            config: config.postgres,
            tables: config.tables,
            outbox: Outbox::new(std::mem::take(&mut sinks.queues), board, status.clone()),
            status: status.clone(),
            budget,
        },
        stop_at,
        stop.clone(),
    );
    // The pipeline owns the queue senders: when it returns they close, and the drivers finish
    // what is queued and stop. A sink that fails stops the pipeline at once (rather than at
    // its next batch), which confirms what every sink has delivered and returns.
    let mut sink_error = None;
    let running = pipeline.run();
    tokio::pin!(running);
    let result = loop {
        tokio::select! {
            result = &mut running => break result,
            Some(joined) = sinks.drivers.join_next() => {
                if let Some(failure) = failed(joined) {
                    // Reported by the caller, with the exit status.
                    sink_error.get_or_insert(failure);
                    stop.cancel();
                }
            }
        }
    };
    let deadline = Instant::now() + budget.sinks();
    if let Some(e) = drain(&mut sinks, deadline, &budget).await {
        sink_error.get_or_insert(e);
    }
    root.cancel();
    tasks.close();
    // The ops listener and the monitor end at once; relays close their clients within
    // `relay_close` of their own driver's end, or now.
    let relays_by = deadline.max(Instant::now() + budget.relay_close());
    let _ = tokio::time::timeout_at(relays_by, tasks.wait()).await;
    // A sink failure is the root cause of a pipeline stopping for "sink gone".
    match (result, sink_error) {
        (_, Some(e)) => Err(e),
        (r, None) => Ok(r?),
    }
}

/// A driver's failure, if it failed.
fn failed(joined: Result<Result<(), RunError>, tokio::task::JoinError>) -> Option<RunError> {
    match joined {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(e) => Some(RunError::SinkPanicked(e.to_string())),
    }
}

/// Lets the sink drivers finish what they hold until `deadline`, then stops the relays, which
/// close their clients by the same deadline. Returns the first failure.
async fn drain(sinks: &mut Sinks, deadline: Instant, budget: &ShutdownBudget) -> Option<RunError> {
    let mut first = None;
    loop {
        match tokio::time::timeout_at(deadline, sinks.drivers.join_next()).await {
            Ok(None) => break,
            Ok(Some(joined)) => {
                if let Some(e) = failed(joined) {
                    tracing::error!(error = %e, "sink failed");
                    first.get_or_insert(e);
                }
            }
            Err(_) => {
                // What they still hold was not confirmed; PostgreSQL will send it again.
                tracing::warn!(
                    "sinks did not drain within {:?}; stopping them (undelivered events will be replayed)",
                    budget.sinks()
                );
                sinks.drivers.abort_all();
                break;
            }
        }
    }
    sinks.relays_stop.cancel();
    first
}

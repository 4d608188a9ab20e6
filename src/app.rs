//! Wires the stages: config in; one bounded queue and one driver task per sink, the source
//! feeding them, the acknowledgement board between them, and the shared [`Status`] they report
//! to, which the ops listener, the slot monitor and systemd's watchdog read. Returns when the
//! source stops
//! (shutdown, stop LSN, a fatal source error, or a sink that failed for good, which stops the
//! source at once) and every sink has drained its queue; the error names the failing sink.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::AckBoard;
use crate::config::{Config, SinkConfig};
use crate::lsn::Lsn;
use crate::map::Mapper;
use crate::ops::{self, Status};
use crate::sink::{self, Lane, SinkError, file::FileSink, stdout::StdoutSink};
use crate::source::stream::{Outlets, Source, Stopped};

/// Batches each sink may have queued: with batches of at most 1 MiB, this bounds the memory a
/// slow sink can hold while the source waits (PostgreSQL keeps the rest of the WAL).
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

type Driver = std::pin::Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send>>;

/// Each sink's metric label (`type`, or `type-index` when several share a type) and, for sinks
/// that must connect or listen first, why they are not ready yet.
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
                SinkConfig::WebSocket(_) => Some("not listening yet".to_owned()),
                SinkConfig::Stdout | SinkConfig::File { .. } => None,
            };
            (label, starting)
        })
        .collect()
}

/// Runs the daemon until `shutdown` is cancelled, the flush position reaches `stop_at`, or a
/// failure that retrying cannot fix. With `metrics` (and `ops.listen`), serves the ops
/// endpoints meanwhile. After `shutdown`, finishes within `ops.shutdown_timeout`.
pub async fn run(
    config: Config,
    stop_at: Option<Lsn>,
    shutdown: CancellationToken,
    metrics: Option<PrometheusHandle>,
) -> Result<Stopped, RunError> {
    let stop = shutdown.child_token();
    let status = Arc::new(Status::new(
        &config.postgres.slot,
        sink_labels(&config.sinks),
    ));
    let ops_stop = CancellationToken::new();
    // Ends the ops tasks however this function returns.
    let _ops_guard = ops_stop.clone().drop_guard();
    if let (Some(listen), Some(handle)) = (config.ops.listen, metrics) {
        ops::serve(listen, status.clone(), handle, ops_stop.clone())
            .await
            .map_err(RunError::Ops)?;
    }
    tokio::spawn(ops::notify::watchdog(ops_stop.clone()));
    tokio::spawn(ops::monitor::run(
        config.postgres.clone(),
        config.ops.clone(),
        status.clone(),
        ops_stop.clone(),
    ));
    {
        let (status, shutdown, ops_stop) = (status.clone(), shutdown.clone(), ops_stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => status.stopping(),
                _ = ops_stop.cancelled() => {}
            }
        });
    }
    let budget = config.ops.shutdown_timeout;
    let board = Arc::new(AckBoard::new(config.sinks.len()));
    let mut drivers = JoinSet::new();
    let mut queues = Vec::new();
    for (index, sink_config) in config.sinks.iter().enumerate() {
        let (tx, rx) = mpsc::channel(SINK_QUEUE_BATCHES);
        let lane = Lane::new(index, board.clone(), status.clone());
        let driver: Driver = match sink_config {
            SinkConfig::Stdout => Box::pin(sink::drive(StdoutSink::new(), lane, rx)),
            SinkConfig::File { path, fsync } => {
                let sink = FileSink::new(path.clone(), *fsync);
                Box::pin(sink::drive(sink, lane, rx))
            }
            SinkConfig::Amqp(amqp) => Box::pin(sink::amqp::drive((**amqp).clone(), lane, rx)),
            SinkConfig::WebSocket(ws) => Box::pin(sink::websocket::drive((**ws).clone(), lane, rx)),
        };
        drivers.spawn(async move {
            driver
                .await
                .map_err(|error| RunError::Sink { index, error })
        });
        queues.push((sink_config.name(), tx));
    }
    let mapper = Mapper::new(&config.tables, config.events);
    let source = Source::new(
        config.postgres,
        config.tables,
        mapper,
        Outlets {
            queues,
            board,
            status: status.clone(),
            drain_timeout: budget.mul_f64(0.6),
        },
        stop_at,
        stop.clone(),
    );
    // The source owns the queue senders: when it returns they close, and the drivers finish
    // what is queued and stop. A sink that fails stops the source at once (rather than at its
    // next batch), which confirms what every sink has delivered and returns.
    let mut sink_error = None;
    let running = source.run();
    tokio::pin!(running);
    let result = loop {
        tokio::select! {
            result = &mut running => break result,
            Some(joined) = drivers.join_next() => {
                let failure = match joined {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => e,
                    Err(e) => RunError::SinkPanicked(e.to_string()),
                };
                // Reported by the caller, with the exit status.
                sink_error.get_or_insert(failure);
                stop.cancel();
            }
        }
    };
    // The source waited for the sinks already (0.6 of the budget, plus ending the stream):
    // what is left of 0.9 goes to sinks that still hold events or connections.
    let drain = budget.mul_f64(0.2).max(Duration::from_millis(500));
    let deadline = tokio::time::Instant::now() + drain;
    loop {
        match tokio::time::timeout_at(deadline, drivers.join_next()).await {
            Ok(None) => break,
            Ok(Some(Ok(Ok(())))) => {}
            Ok(Some(Ok(Err(e)))) => {
                tracing::error!(error = %e, "sink failed");
                sink_error.get_or_insert(e);
            }
            Ok(Some(Err(e))) => {
                tracing::error!(error = %e, "sink task panicked");
                sink_error.get_or_insert(RunError::SinkPanicked(e.to_string()));
            }
            Err(_) => {
                // What they still hold was not confirmed; PostgreSQL will send it again.
                tracing::warn!(
                    "sinks did not drain within {drain:?}; stopping them (undelivered events will be replayed)"
                );
                drivers.abort_all();
                break;
            }
        }
    }
    // A sink failure is the root cause of a source stopping for "sink gone".
    match (result, sink_error) {
        (_, Some(e)) => Err(e),
        (r, None) => Ok(r?),
    }
}

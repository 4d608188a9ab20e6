//! Wires the stages: config in; one bounded queue and one driver task per sink, the source
//! feeding them, and the acknowledgement board between them. Returns when the source stops
//! (shutdown, stop LSN, a fatal source error, or a sink that failed for good, which stops the
//! source at once) and every sink has drained its queue; the error names the failing sink.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::AckBoard;
use crate::config::{Config, SinkConfig};
use crate::lsn::Lsn;
use crate::map::Mapper;
use crate::sink::{self, SinkError, file::FileSink, stdout::StdoutSink};
use crate::source::stream::{Outlets, Source, Stopped};

/// Batches each sink may have queued: with batches of at most 1 MiB, this bounds the memory a
/// slow sink can hold while the source waits (PostgreSQL keeps the rest of the WAL).
pub const SINK_QUEUE_BATCHES: usize = 16;

/// After the source stops, how long sinks may take to deliver what is queued.
pub const SINK_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error("sinks[{index}] ({}): {}", error.sink, error.message)]
    Sink { index: usize, error: SinkError },
    #[error("a sink stopped unexpectedly: {0}")]
    SinkPanicked(String),
}

type Driver = std::pin::Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send>>;

/// Runs the daemon until `shutdown` is cancelled, the flush position reaches `stop_at`, or a
/// failure that retrying cannot fix.
pub async fn run(
    config: Config,
    stop_at: Option<Lsn>,
    shutdown: CancellationToken,
) -> Result<Stopped, RunError> {
    let stop = shutdown.child_token();
    let board = Arc::new(AckBoard::new(config.sinks.len()));
    let mut drivers = JoinSet::new();
    let mut queues = Vec::new();
    for (index, sink_config) in config.sinks.iter().enumerate() {
        let (tx, rx) = mpsc::channel(SINK_QUEUE_BATCHES);
        let board = board.clone();
        let driver: Driver = match sink_config {
            SinkConfig::Stdout => Box::pin(sink::drive(StdoutSink::new(), index, rx, board)),
            SinkConfig::File { path, fsync } => {
                let sink = FileSink::new(path.clone(), *fsync);
                Box::pin(sink::drive(sink, index, rx, board))
            }
            SinkConfig::Amqp(amqp) => {
                Box::pin(sink::amqp::drive((**amqp).clone(), index, rx, board))
            }
            SinkConfig::WebSocket(ws) => {
                Box::pin(sink::websocket::drive((**ws).clone(), index, rx, board))
            }
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
        Outlets { queues, board },
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
    let deadline = tokio::time::Instant::now() + SINK_DRAIN_TIMEOUT;
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
                    "sinks did not drain within {SINK_DRAIN_TIMEOUT:?}; stopping them (undelivered events will be replayed)"
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

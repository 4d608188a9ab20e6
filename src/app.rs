//! Wires the stages: one bounded queue and one driver task per sink, the source feeding them,
//! and the acknowledgement board between them. Returns when the source stops (shutdown, stop
//! LSN or a fatal error) and every sink has drained its queue.

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
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// Runs the daemon until `shutdown` is cancelled, the flush position reaches `stop_at`, or a
/// failure that retrying cannot fix.
pub async fn run(
    config: Config,
    stop_at: Option<Lsn>,
    shutdown: CancellationToken,
) -> Result<Stopped, RunError> {
    let board = Arc::new(AckBoard::new(config.sinks.len()));
    let mut drivers = JoinSet::new();
    let mut queues = Vec::new();
    for (index, sink_config) in config.sinks.iter().enumerate() {
        let (tx, rx) = mpsc::channel(SINK_QUEUE_BATCHES);
        match sink_config {
            SinkConfig::Stdout => {
                drivers.spawn(sink::drive(StdoutSink::new(), index, rx, board.clone()));
            }
            SinkConfig::File { path, fsync } => {
                let sink = FileSink::new(path.clone(), *fsync);
                drivers.spawn(sink::drive(sink, index, rx, board.clone()));
            }
        }
        queues.push((sink_config.name(), tx));
    }
    let mapper = Mapper::new(&config.tables, config.events);
    let source = Source::new(
        config.postgres,
        config.tables,
        mapper,
        Outlets { queues, board },
        stop_at,
        shutdown,
    );
    // The source owns the queue senders: when it returns they close, and the drivers finish
    // what is queued and stop.
    let result = source.run().await;
    let mut sink_error = None;
    let deadline = tokio::time::Instant::now() + SINK_DRAIN_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, drivers.join_next()).await {
            Ok(None) => break,
            Ok(Some(Ok(Ok(())))) => {}
            Ok(Some(Ok(Err(e)))) => {
                tracing::error!(error = %e, "sink failed");
                sink_error.get_or_insert(e);
            }
            Ok(Some(Err(e))) => tracing::error!(error = %e, "sink task panicked"),
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
        (_, Some(e)) => Err(e.into()),
        (r, None) => Ok(r?),
    }
}

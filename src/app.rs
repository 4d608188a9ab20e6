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
use crate::sink::{self, SinkError, stdout::StdoutSink};
use crate::source::stream::{Outlets, Source, Stopped};

/// Batches each sink may have queued: with batches of at most 1 MiB, this bounds the memory a
/// slow sink can hold while the source waits (PostgreSQL keeps the rest of the WAL).
pub const SINK_QUEUE_BATCHES: usize = 16;

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
    while let Some(joined) = drivers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "sink failed");
                sink_error.get_or_insert(e);
            }
            Err(e) => tracing::error!(error = %e, "sink task panicked"),
        }
    }
    // A sink failure is the root cause of a source stopping for "sink gone".
    match (result, sink_error) {
        (_, Some(e)) => Err(e.into()),
        (r, None) => Ok(r?),
    }
}

//! Sinks: where events go. Each sink implements the small [`Sink`] trait; one generic driver
//! ([`drive`]) feeds it batches from its bounded queue in order and acknowledges each batch it
//! has delivered on its [`Lane`] — which lets the checkpoint advance and counts it in the
//! metrics — and reports the sink's health there.
//!
//! The AMQP sink ([`amqp`]) keeps many messages awaiting confirmation across batches, which a
//! one-batch-at-a-time `send` cannot express: it has its own driver, [`amqp::drive`], with the
//! same contract (acknowledge each batch, in order, once delivered).

pub mod amqp;
pub mod file;
pub mod stdout;
pub mod websocket;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::checkpoint::{AckBoard, Seq};
use crate::event::LiveEvent;
use crate::ops::{SinkStatus, Status};

/// Events handed to the sinks together, numbered in source order.
#[derive(Debug)]
pub struct Batch {
    pub seq: Seq,
    pub events: Vec<LiveEvent>,
}

impl Batch {
    /// The events as newline-delimited JSON, into `out` (cleared first): the line format of
    /// the stdout and file sinks.
    pub fn write_lines(&self, out: &mut Vec<u8>) {
        out.clear();
        for event in &self.events {
            out.extend_from_slice(&event.json);
            out.push(b'\n');
        }
    }
}

/// A sink driver's connection to the rest of the pipeline: where it acknowledges batches (for
/// the checkpoint and the metrics) and reports its health.
#[derive(Clone)]
pub struct Lane {
    pub index: usize,
    board: Arc<AckBoard>,
    status: Arc<Status>,
}

impl Lane {
    pub fn new(index: usize, board: Arc<AckBoard>, status: Arc<Status>) -> Lane {
        Lane {
            index,
            board,
            status,
        }
    }

    /// A lane for one sink on a board of its own (tests and tools).
    pub fn single() -> Lane {
        let status = Status::new("test", vec![("test".into(), None)]);
        Lane::new(0, Arc::new(AckBoard::new(1)), Arc::new(status))
    }

    /// The sink has delivered `batch`, and every batch before it.
    pub fn ack(&self, batch: &Batch) {
        self.status.sink(self.index).acked(batch);
        self.board.ack(self.index, batch.seq);
    }

    pub fn status(&self) -> &SinkStatus {
        self.status.sink(self.index)
    }

    /// The highest batch every sink on the board has delivered.
    pub fn min_acked(&self) -> Seq {
        self.board.min_acked()
    }
}

/// A sink failed to deliver.
#[derive(Debug, thiserror::Error)]
#[error("sink {sink}: {message}")]
pub struct SinkError {
    pub sink: &'static str,
    pub message: String,
}

/// A destination for events.
///
/// Contract: `send` delivers the batch's events in order and resolves only once they are
/// acknowledged by the destination (stdout: written and flushed). If it fails, nothing about
/// the batch may be assumed delivered; the events will be replayed from the slot.
pub trait Sink: Send + 'static {
    fn name(&self) -> &'static str;

    fn send(&mut self, batch: &Batch) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Called once when the pipeline stops, after the last batch.
    fn close(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// Feeds `sink` every batch from `queue` and acknowledges each on `lane`. Returns when the
/// queue is closed and drained, or at the first error.
pub async fn drive<S: Sink>(
    mut sink: S,
    lane: Lane,
    mut queue: mpsc::Receiver<Arc<Batch>>,
) -> Result<(), SinkError> {
    while let Some(batch) = queue.recv().await {
        if let Err(e) = sink.send(&batch).await {
            lane.status().error();
            lane.status().unhealthy(e.message.clone());
            return Err(e);
        }
        lane.ack(&batch);
    }
    sink.close().await
}

/// The contract every sink must meet, run against each sink's own output.
#[cfg(test)]
pub(crate) mod contract {
    use std::sync::Arc;

    use tokio::sync::mpsc;

    use super::{Batch, Lane, Sink, drive};
    use crate::event::{EventId, EventKind, EventSource, Id, LiveEvent};
    use crate::lsn::Lsn;

    fn event(n: u64) -> LiveEvent {
        let source = EventSource {
            channel: "resources/t".into(),
            schema: "public".into(),
            table: "t".into(),
            data_provider_name: None,
        };
        let id = EventId {
            commit_lsn: Lsn(0x1000 + n),
            ordinal: 0,
        };
        LiveEvent::new(
            &source,
            EventKind::Created,
            Some(&[Id::Int(n as i64)]),
            id,
            7,
            0,
        )
    }

    /// Drives `sink` through three batches and checks that every batch is acknowledged, in
    /// order, and that `output()` then holds every event, once, in order, byte for byte.
    pub(crate) async fn check<S: Sink>(sink: S, output: impl Fn() -> Vec<Vec<u8>>) {
        let lane = Lane::single();
        let (tx, rx) = mpsc::channel(4);
        let driver = tokio::spawn(drive(sink, lane.clone(), rx));
        let mut expected = Vec::new();
        for seq in 1..=3u64 {
            let events: Vec<LiveEvent> = (0..seq * 2).map(|i| event(seq * 100 + i)).collect();
            expected.extend(events.iter().map(|e| e.json.to_vec()));
            tx.send(Arc::new(Batch { seq, events })).await.unwrap();
        }
        drop(tx);
        driver.await.unwrap().unwrap();
        assert_eq!(lane.min_acked(), 3, "every batch acknowledged");
        assert_eq!(output(), expected);
    }
}

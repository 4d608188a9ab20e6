//! Sinks: where events go. Each sink implements the small [`Sink`] contract — connect, take a
//! batch and hand back its [`Delivery`], close — and one generic driver ([`driver::drive`])
//! does the rest for every sink: it feeds the sink batches from its bounded queue in order,
//! keeps the batches taken but not yet delivered (the in-flight window), acknowledges each
//! delivered batch on the sink's [`Lane`] (which lets the checkpoint advance and counts it in
//! the metrics), reports the sink's health, and after a retryable failure reconnects with
//! backoff and sends every unacknowledged batch again; a fatal one stops the daemon.
//!
//! A new sink is a file here implementing [`Sink`], its config entry, and a line in `app`.

pub mod amqp;
pub mod driver;
pub mod file;
pub mod mqtt;
pub mod nats;
pub mod redis;
pub mod stdout;
pub mod template;
pub mod tls;
pub mod webhook;
pub mod websocket;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::checkpoint::{AckBoard, Seq};
use crate::event::LiveEvent;
use crate::status::{SinkStatus, Status};

pub use driver::drive;

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

/// A sink failed to deliver.
#[derive(Debug, Clone, thiserror::Error)]
#[error("sink {sink}: {message}")]
pub struct SinkError {
    pub sink: &'static str,
    pub message: String,
    /// Whether trying again (reconnecting, sending again) may succeed. Fatal errors need the
    /// operator: credentials, permissions, a destination that does not exist.
    pub retryable: bool,
}

impl SinkError {
    /// A failure that reconnecting and sending again may get past.
    pub fn retryable(sink: &'static str, message: impl Into<String>) -> SinkError {
        SinkError {
            sink,
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure that retrying cannot fix: the daemon stops and says why.
    pub fn fatal(sink: &'static str, message: impl Into<String>) -> SinkError {
        SinkError {
            sink,
            message: message.into(),
            retryable: false,
        }
    }
}

/// The rest of one batch's delivery, once the sink has taken it: resolves when the destination
/// has acknowledged every event of the batch. It borrows nothing from the sink, so the driver
/// can wait for many at once while the sink takes the next batch.
pub type Delivery = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send>>;

/// The delivery of a batch the sink delivered while taking it.
pub fn delivered() -> Delivery {
    Box::pin(std::future::ready(Ok(())))
}

/// A destination for events.
///
/// Contract: the driver calls [`connect`](Sink::connect), then [`send`](Sink::send) for every
/// batch in order; `send` publishes the batch's events in order, after the previous batch's,
/// and returns once the sink has taken the batch, with its [`Delivery`]. The driver polls
/// the deliveries (in order) while it waits for `send`, so `send` may wait for room that
/// earlier deliveries free. A batch counts as delivered only when its delivery and those of
/// every batch before it resolved `Ok`. After any error nothing unacknowledged is assumed
/// delivered: on a retryable one, the driver drops the deliveries, waits, calls `connect`
/// again and sends every unacknowledged batch again, in order (destinations may see an event
/// twice; its `meta.id` is the same both times); on a fatal one, the pipeline stops.
pub trait Sink: Send + 'static {
    /// The sink's type, in logs and errors.
    fn name(&self) -> &'static str;

    /// Gets ready to deliver: connects, opens, or checks the destination. Called before the
    /// first batch and after every retryable failure. Default: nothing to do.
    fn connect(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        std::future::ready(Ok(()))
    }

    /// Called after `connect`, once the driver has marked the sink healthy: a sink that
    /// reports health changes of its own (a broker's alarms) starts doing so here.
    fn connected(&mut self) {}

    /// Takes `batch`; see the trait's contract.
    fn send(
        &mut self,
        batch: Arc<Batch>,
    ) -> impl Future<Output = Result<Delivery, SinkError>> + Send;

    /// Batches whose deliveries may be pending at once. Default 1: the driver waits for each
    /// delivery before it sends the next batch.
    fn max_in_flight(&self) -> usize {
        1
    }

    /// What the log says when delivery failed and will be retried.
    fn interrupted(&self) -> &'static str {
        "delivery interrupted; will send unacknowledged events again"
    }

    /// The longest wait between reconnection attempts.
    fn max_backoff(&self) -> Duration {
        DEFAULT_MAX_BACKOFF
    }

    /// Called once when the pipeline stops, after the last batch is acknowledged.
    fn close(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        std::future::ready(Ok(()))
    }
}

/// The longest wait between a sink's reconnection attempts, unless it configures its own.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A sink driver's connection to the rest of the pipeline: where it acknowledges batches (for
/// the checkpoint and the metrics) and reports its health.
#[derive(Clone)]
pub struct Lane {
    pub index: usize,
    board: Arc<AckBoard>,
    status: Arc<SinkStatus>,
}

impl Lane {
    pub fn new(index: usize, board: Arc<AckBoard>, status: &Status) -> Lane {
        Lane {
            index,
            board,
            status: status.sink(index).clone(),
        }
    }

    /// A lane for one sink on a board of its own (tests and tools).
    pub fn single() -> Lane {
        let status = Status::new("test", vec![("test".into(), None)]);
        Lane::new(0, Arc::new(AckBoard::new(1)), &status)
    }

    /// The sink has delivered `batch`, and every batch before it.
    pub fn ack(&self, batch: &Batch) {
        self.status.acked(&batch.events);
        self.board.ack(self.index, batch.seq);
    }

    pub fn status(&self) -> &Arc<SinkStatus> {
        &self.status
    }

    /// The highest batch every sink on the board has delivered.
    pub fn min_acked(&self) -> Seq {
        self.board.min_acked()
    }
}

/// The contract every sink must meet, run against each sink's own output.
#[cfg(test)]
pub(crate) mod contract {
    use std::sync::Arc;

    use tokio::sync::mpsc;

    use super::{Batch, Lane, Sink, drive};
    use crate::event::{EventId, EventKind, EventSource, Id, LiveEvent};
    use crate::lsn::Lsn;

    pub(crate) fn event(n: u64) -> LiveEvent {
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

    /// Drives `sink` through three batches (and an empty one) and checks that every batch is
    /// acknowledged, in order, and that `output(n)` then holds every event (`n` of them),
    /// once, in order, byte for byte.
    pub(crate) async fn check<S: Sink>(sink: S, output: impl AsyncFnOnce(usize) -> Vec<Vec<u8>>) {
        let lane = Lane::single();
        let (tx, rx) = mpsc::channel(4);
        let driver = tokio::spawn(drive(sink, lane.clone(), rx));
        let mut expected = Vec::new();
        for seq in 1..=4u64 {
            let n = if seq == 3 { 0 } else { seq * 2 };
            let events: Vec<LiveEvent> = (0..n).map(|i| event(seq * 100 + i)).collect();
            expected.extend(events.iter().map(|e| e.json.to_vec()));
            tx.send(Arc::new(Batch { seq, events })).await.unwrap();
        }
        drop(tx);
        driver.await.unwrap().unwrap();
        assert_eq!(lane.min_acked(), 4, "every batch acknowledged");
        assert_eq!(output(expected.len()).await, expected);
    }
}

//! The outbox: where mapped events wait to leave. Events gather in the open batch; a batch is
//! sealed when it is full (or when nothing more is buffered), numbered, and handed to every
//! sink's bounded queue — a full queue blocks the outbox, and the pipeline stops reading
//! (PostgreSQL keeps the WAL). Each position the server may be told of (a transaction's end,
//! a keepalive between transactions) is recorded against the batch it depends on, and the
//! checkpoint advances over what every sink has acknowledged. No I/O but the queues: tested
//! without a socket.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::checkpoint::{AckBoard, Checkpoint, Seq};
use crate::event::LiveEvent;
use crate::lsn::Lsn;
use crate::sink::Batch;
use crate::source::SourceError;
use crate::status::Status;

/// Seal a batch at this many events…
pub const MAX_BATCH_EVENTS: usize = 1024;
/// …or this many bytes of JSON, whichever comes first.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// One sink's queue, as the outbox sees it.
pub struct Queue {
    pub name: &'static str,
    pub sender: mpsc::Sender<Arc<Batch>>,
}

/// A batch sealed but not yet in every sink's queue.
struct Sealed {
    batch: Arc<Batch>,
    next_sink: usize,
}

pub struct Outbox {
    queues: Vec<Queue>,
    board: Arc<AckBoard>,
    status: Arc<Status>,
    open: Vec<LiveEvent>,
    open_bytes: usize,
    sealed: Option<Sealed>,
    /// Sequence number the next sealed batch gets.
    next_seq: Seq,
    checkpoint: Checkpoint,
}

impl Outbox {
    pub fn new(queues: Vec<Queue>, board: Arc<AckBoard>, status: Arc<Status>) -> Outbox {
        Outbox {
            queues,
            board,
            status,
            open: Vec::with_capacity(MAX_BATCH_EVENTS),
            open_bytes: 0,
            sealed: None,
            next_seq: 1,
            checkpoint: Checkpoint::default(),
        }
    }

    /// Where the sinks post their acknowledgements.
    pub fn board(&self) -> Arc<AckBoard> {
        self.board.clone()
    }

    /// The open batch, for the mapper to append to; call [`Outbox::appended`] after.
    pub fn open_batch(&mut self) -> &mut Vec<LiveEvent> {
        &mut self.open
    }

    /// Events from `from` on were appended to the open batch: seals it when it is full.
    pub fn appended(&mut self, from: usize) {
        self.open_bytes += self.open[from..]
            .iter()
            .map(|e| e.json.len())
            .sum::<usize>();
        if self.open.len() >= MAX_BATCH_EVENTS || self.open_bytes >= MAX_BATCH_BYTES {
            self.seal();
        }
    }

    /// `lsn` may be confirmed once what was read before it is delivered. `commit_time`: when
    /// it ends a transaction, that transaction's commit time (for the lag metric).
    pub fn record(&mut self, lsn: Lsn, commit_time: Option<i64>) {
        // The batch it depends on: the open one if it holds events, else the last sealed one.
        let seq = if self.open.is_empty() {
            self.next_seq - 1
        } else {
            self.next_seq
        };
        self.checkpoint.record(seq, lsn, commit_time);
    }

    /// A sealed batch waits for room in a sink's queue: read nothing more until it is handed
    /// out.
    pub fn is_blocked(&self) -> bool {
        self.sealed.is_some()
    }

    /// Seals the open batch, if it holds events and nothing else waits: nothing more is
    /// buffered, so deliver now rather than wait for a full batch.
    pub fn flush(&mut self) {
        if self.sealed.is_none() && !self.open.is_empty() {
            self.seal();
        }
    }

    fn seal(&mut self) {
        debug_assert!(self.sealed.is_none(), "one sealed batch at a time");
        let seq = self.next_seq;
        self.next_seq += 1;
        let events = std::mem::replace(&mut self.open, Vec::with_capacity(MAX_BATCH_EVENTS));
        self.open_bytes = 0;
        self.sealed = Some(Sealed {
            batch: Arc::new(Batch { seq, events }),
            next_sink: 0,
        });
    }

    /// Waits for room in the next sink's queue that still needs the sealed batch and puts it
    /// there. Cancel-safe: a cancelled call hands out nothing. Pending when nothing is sealed.
    pub async fn hand_out(&mut self) -> Result<(), SourceError> {
        let Some(sealed) = self.sealed.as_mut() else {
            return std::future::pending().await;
        };
        let queue = &self.queues[sealed.next_sink];
        let permit = queue
            .sender
            .reserve()
            .await
            .map_err(|_| SourceError::SinkGone(queue.name.to_owned()))?;
        permit.send(sealed.batch.clone());
        self.status
            .sink(sealed.next_sink)
            .queued(sealed.batch.events.len());
        sealed.next_sink += 1;
        if sealed.next_sink == self.queues.len() {
            self.sealed = None;
        }
        Ok(())
    }

    /// Hands the sealed and the open batch to every sink. Returns false if a sink is gone or
    /// `deadline` passed first.
    pub async fn hand_out_all(&mut self, deadline: Option<Instant>) -> bool {
        let all = async {
            loop {
                if self.sealed.is_none() {
                    if self.open.is_empty() {
                        return true;
                    }
                    self.seal();
                }
                if self.hand_out().await.is_err() {
                    return false;
                }
            }
        };
        match deadline {
            Some(d) => tokio::time::timeout_at(d, all).await.unwrap_or(false),
            None => all.await,
        }
    }

    /// The last batch sealed (0: none yet).
    pub fn last_seq(&self) -> Seq {
        self.next_seq - 1
    }

    /// Whether every sink has acknowledged every sealed batch.
    pub fn all_acknowledged(&self) -> bool {
        self.board.min_acked() >= self.last_seq()
    }

    /// A sink stopped (failed): it will acknowledge nothing more.
    pub fn sink_gone(&self) -> bool {
        self.queues.iter().any(|q| q.sender.is_closed())
    }

    /// Whether nothing read waits to be handed out or confirmed.
    pub fn is_idle(&self) -> bool {
        self.sealed.is_none() && self.open.is_empty() && self.checkpoint.waiting() == 0
    }

    /// Moves the checkpoint over what every sink has acknowledged; publishes and returns the
    /// flush position.
    pub fn advance(&mut self) -> Lsn {
        let flush = self.checkpoint.advance(self.board.min_acked());
        self.status.set_flush(flush);
        self.status
            .set_oldest_unconfirmed(self.checkpoint.oldest_commit());
        flush
    }

    /// The slot was made anew: positions of the old one mean nothing for it, and reporting
    /// one would move its confirmed position backwards. Batches in flight are still
    /// delivered; their acknowledgements simply confirm nothing.
    pub fn forget_positions(&mut self) {
        self.checkpoint = Checkpoint::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::contract::event;

    fn outbox(sinks: usize, room: usize) -> (Outbox, Vec<mpsc::Receiver<Arc<Batch>>>) {
        let status = Arc::new(Status::new(
            "s",
            (0..sinks).map(|i| (format!("s{i}"), None)).collect(),
        ));
        let (queues, receivers) = (0..sinks)
            .map(|_| {
                let (tx, rx) = mpsc::channel(room);
                (
                    Queue {
                        name: "test",
                        sender: tx,
                    },
                    rx,
                )
            })
            .unzip();
        let board = Arc::new(AckBoard::new(sinks));
        (Outbox::new(queues, board, status), receivers)
    }

    fn add(outbox: &mut Outbox, n: u64) {
        let from = outbox.open_batch().len();
        for i in 0..n {
            outbox.open_batch().push(event(i));
        }
        outbox.appended(from);
    }

    #[tokio::test]
    async fn a_full_batch_blocks_until_every_sink_has_room() {
        let (mut out, mut rx) = outbox(2, 1);
        add(&mut out, MAX_BATCH_EVENTS as u64);
        assert!(out.is_blocked(), "sealed when full");
        out.hand_out().await.unwrap();
        out.hand_out().await.unwrap();
        assert!(!out.is_blocked());
        add(&mut out, 3);
        assert!(!out.is_blocked(), "not full: open");
        out.flush();
        assert_eq!(rx[0].recv().await.unwrap().seq, 1);
        out.hand_out().await.unwrap();
        // Sink 1's queue is full: the batch waits for it.
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(20), out.hand_out()).await;
        assert!(waiting.is_err(), "blocked by the slowest queue");
        assert!(out.is_blocked());
        assert_eq!(rx[1].recv().await.unwrap().seq, 1);
        out.hand_out().await.unwrap();
        assert!(!out.is_blocked());
        assert_eq!(rx[0].recv().await.unwrap().events.len(), 3);
        assert_eq!(rx[1].recv().await.unwrap().seq, 2);
    }

    #[tokio::test]
    async fn positions_are_confirmed_once_every_sink_acknowledged_their_batch() {
        let (mut out, _rx) = outbox(2, 4);
        let board = out.board();
        // Before any event: confirmable at once.
        out.record(Lsn(50), None);
        assert_eq!(out.advance(), Lsn(50));
        add(&mut out, 2);
        out.record(Lsn(100), Some(1));
        out.flush();
        out.hand_out().await.unwrap();
        out.hand_out().await.unwrap();
        // A keepalive after the batch depends on it too.
        out.record(Lsn(120), None);
        assert_eq!(out.advance(), Lsn(50));
        assert!(!out.is_idle());
        board.ack(0, 1);
        assert_eq!(out.advance(), Lsn(50), "sink 1 has not acknowledged");
        board.ack(1, 1);
        assert_eq!(out.advance(), Lsn(120));
        assert!(out.all_acknowledged() && out.is_idle());
    }

    #[tokio::test]
    async fn handing_out_everything_stops_at_a_gone_sink_or_the_deadline() {
        let (mut out, mut rx) = outbox(1, 1);
        add(&mut out, 1);
        out.flush();
        add(&mut out, 1);
        let soon = Instant::now() + std::time::Duration::from_millis(20);
        assert!(!out.hand_out_all(Some(soon)).await, "only one fits");
        rx[0].recv().await.unwrap();
        assert!(out.hand_out_all(None).await);
        assert_eq!(out.last_seq(), 2);
        drop(rx);
        add(&mut out, 1);
        assert!(out.sink_gone());
        assert!(!out.hand_out_all(None).await);
    }
}

//! Acknowledgements → the flush position confirmed to PostgreSQL. Sink drivers record the
//! sequence number of each batch they have delivered (the [`AckBoard`]); the pipeline's outbox
//! records which WAL position each batch makes safe (the [`Checkpoint`]); the flush LSN is the highest position whose batch, and every batch
//! before it, every sink has acknowledged.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

use crate::lsn::Lsn;

/// Batches are numbered from 1 in the order the source hands them to the sinks; 0 is "none".
pub type Seq = u64;

/// Where sink drivers post acknowledgements and the source reads them.
pub struct AckBoard {
    acked: Vec<AtomicU64>,
    changed: Notify,
}

impl AckBoard {
    pub fn new(sinks: usize) -> AckBoard {
        AckBoard {
            acked: (0..sinks).map(|_| AtomicU64::new(0)).collect(),
            changed: Notify::new(),
        }
    }

    /// Sink `sink` has delivered every batch up to and including `seq`.
    pub fn ack(&self, sink: usize, seq: Seq) {
        self.acked[sink].fetch_max(seq, Ordering::AcqRel);
        self.changed.notify_one();
    }

    /// The highest batch every sink has delivered.
    pub fn min_acked(&self) -> Seq {
        self.acked
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }

    /// Resolves after the next acknowledgement (or at once if one came since the last call).
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

/// The source's side: positions waiting for their batch to be acknowledged everywhere.
#[derive(Debug, Default)]
pub struct Checkpoint {
    /// (batch, position, commit time of the oldest transaction ending there, if any).
    waiting: VecDeque<(Seq, Lsn, Option<i64>)>,
    flushed: Lsn,
}

impl Checkpoint {
    /// `lsn` may be confirmed once every sink has acknowledged batch `seq`. `commit_time`:
    /// when `lsn` ends a transaction, its commit time (for the lag metric).
    pub fn record(&mut self, seq: Seq, lsn: Lsn, commit_time: Option<i64>) {
        match self.waiting.back_mut() {
            // Same batch: the later position supersedes the earlier one; the older commit
            // time stays.
            Some((s, l, t)) if *s == seq => {
                *l = (*l).max(lsn);
                *t = t.or(commit_time);
            }
            _ => self.waiting.push_back((seq, lsn, commit_time)),
        }
    }

    /// The commit time of the oldest transaction not yet confirmable.
    pub fn oldest_commit(&self) -> Option<i64> {
        self.waiting.iter().find_map(|(_, _, t)| *t)
    }

    /// Moves the flush position over every position whose batch is acknowledged by all sinks
    /// (`min_acked`), and returns it. Never moves backwards.
    pub fn advance(&mut self, min_acked: Seq) -> Lsn {
        while let Some(&(seq, lsn, _)) = self.waiting.front() {
            if seq > min_acked {
                break;
            }
            self.flushed = self.flushed.max(lsn);
            self.waiting.pop_front();
        }
        self.flushed
    }

    pub fn flushed(&self) -> Lsn {
        self.flushed
    }

    /// Positions still waiting for acknowledgements.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_slowest_sink_contiguously() {
        let board = AckBoard::new(2);
        let mut cp = Checkpoint::default();
        cp.record(1, Lsn(100), None);
        cp.record(2, Lsn(200), None);
        cp.record(3, Lsn(300), None);
        board.ack(0, 3);
        assert_eq!(
            cp.advance(board.min_acked()),
            Lsn(0),
            "sink 1 has acknowledged nothing"
        );
        board.ack(1, 2);
        assert_eq!(cp.advance(board.min_acked()), Lsn(200));
        board.ack(1, 3);
        assert_eq!(cp.advance(board.min_acked()), Lsn(300));
        assert_eq!(cp.waiting(), 0);
    }

    #[test]
    fn positions_of_acknowledged_batches_are_confirmable_at_once() {
        let mut cp = Checkpoint::default();
        cp.record(0, Lsn(50), None);
        assert_eq!(cp.advance(0), Lsn(50));
        cp.record(4, Lsn(70), None);
        cp.record(4, Lsn(90), None);
        assert_eq!(cp.waiting(), 1);
        assert_eq!(cp.advance(3), Lsn(50));
        assert_eq!(cp.advance(4), Lsn(90));
    }

    #[test]
    fn the_oldest_waiting_commit_time_is_kept_until_confirmed() {
        let mut cp = Checkpoint::default();
        cp.record(1, Lsn(100), None);
        cp.record(2, Lsn(200), Some(20));
        cp.record(2, Lsn(250), Some(25));
        cp.record(3, Lsn(300), Some(30));
        assert_eq!(cp.oldest_commit(), Some(20));
        cp.advance(2);
        assert_eq!(cp.oldest_commit(), Some(30));
        cp.advance(3);
        assert_eq!(cp.oldest_commit(), None);
    }

    #[test]
    fn never_moves_backwards() {
        let mut cp = Checkpoint::default();
        cp.record(1, Lsn(500), None);
        cp.record(2, Lsn(400), None);
        assert_eq!(cp.advance(2), Lsn(500));
        assert_eq!(cp.flushed(), Lsn(500));
    }
}

//! The one driver every sink runs under. It owns the in-flight window (batches the sink has
//! taken and not yet delivered, oldest first), acknowledges each batch on the sink's [`Lane`]
//! once it and every batch before it are delivered, reports the sink's health, and after a
//! retryable failure waits ([`Backoff`]) and sends every unacknowledged batch again, in order.

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::sync::mpsc;

use super::{Batch, Delivery, Lane, Sink, SinkError};
use crate::backoff::Backoff;

/// Batches taken by the sink and not yet acknowledged, and their pending deliveries.
struct Window {
    /// Oldest first; the first `deliveries.len()` have been sent in this session.
    unacked: VecDeque<Arc<Batch>>,
    deliveries: FuturesOrdered<Delivery>,
    /// Whether a batch was acknowledged since the last failure (to reset the backoff).
    progressed: bool,
}

impl Window {
    /// The oldest pending delivery resolved: acknowledge its batch, or pass on its error.
    fn delivered(&mut self, result: Result<(), SinkError>, lane: &Lane) -> Result<(), SinkError> {
        result?;
        let batch = self.unacked.pop_front().expect("a delivery per sent batch");
        lane.ack(&batch);
        self.progressed = true;
        Ok(())
    }

    /// The next batch to send again after a reconnection, if any.
    fn to_resend(&self) -> Option<Arc<Batch>> {
        self.unacked.get(self.deliveries.len()).cloned()
    }
}

/// Feeds `sink` every batch from `queue` and acknowledges each on `lane`. Returns when the
/// queue is closed and every batch is delivered (after closing the sink), or at the first
/// fatal error. Retryable errors are retried without limit: the slot keeps what is not
/// acknowledged.
pub async fn drive<S: Sink>(
    mut sink: S,
    lane: Lane,
    mut queue: mpsc::Receiver<Arc<Batch>>,
) -> Result<(), SinkError> {
    let mut window = Window {
        unacked: VecDeque::new(),
        deliveries: FuturesOrdered::new(),
        progressed: false,
    };
    let mut backoff = Backoff::new(sink.max_backoff());
    loop {
        let attempt = async {
            sink.connect().await?;
            lane.status().healthy();
            sink.connected();
            session(&mut sink, &lane, &mut queue, &mut window).await
        };
        let error = match attempt.await {
            Ok(()) => {
                let closed = sink.close().await;
                if let Err(e) = &closed {
                    tracing::warn!(sink = e.sink, error = %e.message, "closing the sink");
                }
                return closed;
            }
            Err(e) => e,
        };
        lane.status().error();
        lane.status().unhealthy(error.message.clone());
        if !error.retryable {
            return Err(error);
        }
        if std::mem::take(&mut window.progressed) {
            backoff.reset();
        }
        // Whatever was pending is not delivered: sent again after reconnecting.
        window.deliveries = FuturesOrdered::new();
        let retry_in = backoff.next_delay();
        tracing::warn!(sink = error.sink, error = %error.message, retry_in = ?retry_in,
            unacknowledged_batches = window.unacked.len(), "{}", sink.interrupted());
        tokio::time::sleep(retry_in).await;
    }
}

/// One connected session: sends what the last session left unacknowledged, then every batch
/// from the queue, until the queue is closed and everything is delivered, or an error.
async fn session<S: Sink>(
    sink: &mut S,
    lane: &Lane,
    queue: &mut mpsc::Receiver<Arc<Batch>>,
    window: &mut Window,
) -> Result<(), SinkError> {
    let max_in_flight = sink.max_in_flight().max(1);
    let mut open = !queue.is_closed() || !queue.is_empty();
    loop {
        // The next batch: one to send again, or the next from the queue once there is room;
        // deliveries are taken meanwhile.
        let batch = loop {
            if let Some(batch) = window.to_resend() {
                if window.deliveries.len() < max_in_flight {
                    break batch;
                }
            } else if !open && window.unacked.is_empty() {
                return Ok(());
            }
            let room = window.deliveries.len() < max_in_flight && window.to_resend().is_none();
            tokio::select! {
                biased;
                Some(result) = window.deliveries.next() => window.delivered(result, lane)?,
                next = queue.recv(), if open && room => match next {
                    Some(batch) => {
                        window.unacked.push_back(batch.clone());
                        break batch;
                    }
                    None => open = false,
                },
            }
        };
        // Taking a batch may wait for room that earlier deliveries free: keep taking them.
        let send = sink.send(batch);
        tokio::pin!(send);
        let delivery = loop {
            tokio::select! {
                biased;
                Some(result) = window.deliveries.next() => window.delivered(result, lane)?,
                taken = &mut send => break taken?,
            }
        };
        window.deliveries.push_back(delivery);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::sink::contract::event;

    /// Records what it was sent; fails as told.
    #[derive(Clone, Default)]
    struct Probe {
        log: Arc<Mutex<Vec<String>>>,
        /// Per call to `send` (in order): fail its delivery (retryable) instead of succeeding.
        fail_delivery_of: Arc<Mutex<Vec<u64>>>,
        fatal_on: Option<u64>,
        window: usize,
    }

    impl Sink for Probe {
        fn name(&self) -> &'static str {
            "probe"
        }

        async fn connect(&mut self) -> Result<(), SinkError> {
            self.log.lock().unwrap().push("connect".into());
            Ok(())
        }

        async fn send(&mut self, batch: Arc<Batch>) -> Result<Delivery, SinkError> {
            self.log.lock().unwrap().push(format!("send {}", batch.seq));
            if self.fatal_on == Some(batch.seq) {
                return Err(SinkError::fatal("probe", "refused for good"));
            }
            let fail = {
                let mut f = self.fail_delivery_of.lock().unwrap();
                match f.iter().position(|s| *s == batch.seq) {
                    Some(i) => {
                        f.remove(i);
                        true
                    }
                    None => false,
                }
            };
            Ok(Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if fail {
                    Err(SinkError::retryable("probe", "lost the connection"))
                } else {
                    Ok(())
                }
            }))
        }

        fn max_in_flight(&self) -> usize {
            self.window
        }

        fn max_backoff(&self) -> Duration {
            Duration::from_millis(1)
        }
    }

    fn batches(n: u64) -> Vec<Arc<Batch>> {
        (1..=n)
            .map(|seq| {
                Arc::new(Batch {
                    seq,
                    events: vec![event(seq)],
                })
            })
            .collect()
    }

    async fn run(probe: Probe, n: u64) -> (Result<(), SinkError>, Lane, Vec<String>) {
        let lane = Lane::single();
        let (tx, rx) = mpsc::channel(16);
        for b in batches(n) {
            tx.send(b).await.unwrap();
        }
        drop(tx);
        let result = drive(probe.clone(), lane.clone(), rx).await;
        let log = probe.log.lock().unwrap().clone();
        (result, lane, log)
    }

    #[tokio::test]
    async fn a_failed_delivery_sends_every_unacknowledged_batch_again_in_order() {
        let probe = Probe {
            window: 3,
            fail_delivery_of: Arc::new(Mutex::new(vec![2])),
            ..Probe::default()
        };
        let (result, lane, log) = run(probe, 5).await;
        result.unwrap();
        assert_eq!(lane.min_acked(), 5);
        // 1 is delivered; 2 fails after 3 (and perhaps 4) were sent; all from 2 go again.
        let again = log.iter().rposition(|l| l == "connect").unwrap();
        assert_eq!(log[0], "connect");
        assert_eq!(&log[1..4], ["send 1", "send 2", "send 3"]);
        assert_eq!(
            &log[again..],
            ["connect", "send 2", "send 3", "send 4", "send 5"]
        );
        assert!(lane.status().problem().is_none(), "healthy again");
    }

    #[tokio::test]
    async fn the_window_bounds_pending_deliveries() {
        // With a window of one, each batch is sent only after the previous one is delivered:
        // a failure of 2 resends 2 only.
        let probe = Probe {
            window: 1,
            fail_delivery_of: Arc::new(Mutex::new(vec![2])),
            ..Probe::default()
        };
        let (result, lane, log) = run(probe, 3).await;
        result.unwrap();
        assert_eq!(lane.min_acked(), 3);
        assert_eq!(
            log,
            ["connect", "send 1", "send 2", "connect", "send 2", "send 3"]
        );
    }

    #[tokio::test]
    async fn a_fatal_error_stops_the_driver_with_nothing_more_acknowledged() {
        let probe = Probe {
            window: 4,
            fatal_on: Some(3),
            ..Probe::default()
        };
        let (result, lane, _) = run(probe, 5).await;
        let e = result.unwrap_err();
        assert!(!e.retryable && e.message == "refused for good", "{e}");
        assert!(lane.min_acked() < 3);
        assert_eq!(lane.status().problem().as_deref(), Some("refused for good"));
    }
}

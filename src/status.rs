//! The state of the whole pipeline, shared by the source, the sinks and the ops listener: the
//! source's state (streaming, or why not), each sink's health and counts, the positions and
//! lag — and the name of every metric pglive exports, each a constant used where it is
//! described and where it is recorded. A leaf: it depends on nothing but [`crate::lsn`] and
//! [`crate::event`], so every stage can report here without knowing who reads it. The ops
//! listener renders it; systemd hears of its changes through [`Status::watch`].

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use metrics::{Counter, Gauge, Histogram};
use tokio::sync::watch;

use crate::event::{EventKind, LiveEvent, PG_EPOCH_UNIX_MICROS};
use crate::lsn::Lsn;

/// Metric names: every series pglive exports.
pub mod metric {
    pub const EVENTS_PUBLISHED: &str = "pglive_events_published_total";
    pub const SINK_ERRORS: &str = "pglive_sink_errors_total";
    pub const SINK_INFLIGHT: &str = "pglive_sink_inflight_events";
    pub const SINK_HEALTHY: &str = "pglive_sink_healthy";
    /// Requests a receiver rejected and the sink skipped (`on_rejected = "skip"`).
    pub const SINK_REJECTED: &str = "pglive_sink_rejected_total";
    /// The commit → acknowledged latency histogram.
    pub const COMMIT_TO_ACK: &str = "pglive_commit_to_ack_seconds";
    pub const STREAMING: &str = "pglive_streaming";
    pub const CONFIRMED_FLUSH_LSN: &str = "pglive_confirmed_flush_lsn";
    pub const SERVER_WAL_LSN: &str = "pglive_server_wal_lsn";
    pub const LAG_BYTES: &str = "pglive_replication_lag_bytes";
    pub const LAG_SECONDS: &str = "pglive_replication_lag_seconds";
    pub const LAG_WARNING: &str = "pglive_lag_warning";
    pub const SLOT_WAL_STATUS: &str = "pglive_slot_wal_status";
    /// Written by the ops listener itself, so that it disappears when PostgreSQL stops
    /// reporting it.
    pub const SLOT_SAFE_WAL_SIZE: &str = "pglive_slot_safe_wal_size_bytes";
    pub const WEBSOCKET_CLIENTS: &str = "pglive_websocket_clients";
    pub const HTTP_CONNECTIONS_REFUSED: &str = "pglive_http_connections_refused_total";
    pub const SLOT_RECREATED: &str = "pglive_slot_recreated_total";
    /// Mapped tables whose changes cannot stream: dropped, or missing from the publication.
    pub const TABLES_UNSTREAMED: &str = "pglive_tables_unstreamed";
    /// Row changes a channel template could not route (a column it names was not sent).
    pub const EVENTS_UNROUTABLE: &str = "pglive_events_unroutable_total";
    /// A relay node's events passed from the stream to its clients.
    pub const RELAY_EVENTS: &str = "pglive_relay_events_total";
    /// A relay node's events skipped as replays of ones it passed already.
    pub const RELAY_DUPLICATES: &str = "pglive_relay_duplicates_total";
    /// The offset of the last stream message a relay node read.
    pub const RELAY_STREAM_OFFSET: &str = "pglive_relay_stream_offset";

    /// Buckets of [`COMMIT_TO_ACK`], in seconds.
    pub const COMMIT_TO_ACK_BUCKETS: &[f64] = &[
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    ];
}

/// The slot's `wal_status` values, each a series of [`metric::SLOT_WAL_STATUS`].
pub const WAL_STATUSES: [&str; 4] = ["reserved", "extended", "unreserved", "lost"];

/// Describes every metric to the installed recorder (help text and unit).
pub fn describe_metrics() {
    use metric::*;
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        EVENTS_PUBLISHED,
        "Events the sink has delivered and acknowledged, by type."
    );
    describe_counter!(SINK_ERRORS, "Failed delivery attempts (retried, or fatal).");
    describe_gauge!(
        SINK_INFLIGHT,
        "Events handed to the sink and not yet acknowledged."
    );
    describe_gauge!(
        SINK_HEALTHY,
        "1 when the sink can deliver (connected, not blocked)."
    );
    describe_counter!(
        SINK_REJECTED,
        "Requests the receiver rejected and the sink skipped (on_rejected = \"skip\"): their events were not delivered there."
    );
    describe_histogram!(
        COMMIT_TO_ACK,
        Unit::Seconds,
        "From commit to the sink's acknowledgement, for the oldest event of each batch."
    );
    describe_gauge!(
        STREAMING,
        "1 while this instance streams from the slot (0: starting, reconnecting, standing by)."
    );
    describe_gauge!(
        CONFIRMED_FLUSH_LSN,
        Unit::Bytes,
        "The slot's confirmed flush position, as a byte offset in the WAL."
    );
    describe_gauge!(
        SERVER_WAL_LSN,
        Unit::Bytes,
        "The server's WAL end as last seen, as a byte offset."
    );
    describe_gauge!(
        LAG_BYTES,
        Unit::Bytes,
        "WAL written on the server and not yet confirmed by the slot."
    );
    describe_gauge!(
        LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest committed change not yet acknowledged by every sink (0: none)."
    );
    describe_gauge!(
        LAG_WARNING,
        "1 while lag is above ops.lag_warning_bytes or ops.lag_warning_age."
    );
    describe_gauge!(
        SLOT_WAL_STATUS,
        "The slot's wal_status: 1 for the current one."
    );
    describe_gauge!(WEBSOCKET_CLIENTS, "Connected WebSocket relay clients.");
    describe_counter!(
        RELAY_EVENTS,
        "Relay node: events read from the stream and passed to the clients' channels."
    );
    describe_counter!(
        RELAY_DUPLICATES,
        "Relay node: stream messages skipped because their meta.id was passed already (a source's replay)."
    );
    describe_gauge!(
        RELAY_STREAM_OFFSET,
        "Relay node: the offset of the last stream message read."
    );
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "Connections refused at accept because the listener was at its connection cap."
    );
    describe_gauge!(
        TABLES_UNSTREAMED,
        "Mapped tables whose changes cannot stream: dropped, or not in the publication (and not added back)."
    );
    describe_counter!(
        EVENTS_UNROUTABLE,
        "Row changes a channel template could not route: a column it names was not in the row PostgreSQL sent."
    );
    describe_counter!(
        SLOT_RECREATED,
        "Times the replication slot was invalidated and recreated (postgres.on_slot_lost = \"recreate\"): changes were lost and clients were told to refetch."
    );
}

/// Microseconds since 1970 now.
pub fn unix_micros_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Locks a mutex that holds plain values: a panic elsewhere cannot leave them inconsistent,
/// so a poisoned lock is taken as it is.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one sink reports.
pub struct SinkStatus {
    /// `type`, or `type-index` when several sinks share a type: the `sink` label.
    pub label: String,
    problem: Mutex<Option<String>>,
    /// Events handed to the sink, and acknowledged by it.
    queued: AtomicU64,
    acked: AtomicU64,
    /// By [`EventKind`], in the order of [`EventKind::ALL`].
    published: [Counter; 4],
    errors: Counter,
    latency: Histogram,
    inflight: Gauge,
    healthy_gauge: Gauge,
}

impl SinkStatus {
    fn new(label: String, problem: Option<String>) -> SinkStatus {
        let published = EventKind::ALL.map(|k| {
            metrics::counter!(metric::EVENTS_PUBLISHED, "sink" => label.clone(), "type" => k.as_str())
        });
        SinkStatus {
            errors: metrics::counter!(metric::SINK_ERRORS, "sink" => label.clone()),
            latency: metrics::histogram!(metric::COMMIT_TO_ACK, "sink" => label.clone()),
            inflight: metrics::gauge!(metric::SINK_INFLIGHT, "sink" => label.clone()),
            healthy_gauge: metrics::gauge!(metric::SINK_HEALTHY, "sink" => label.clone()),
            published,
            label,
            problem: Mutex::new(problem),
            queued: AtomicU64::new(0),
            acked: AtomicU64::new(0),
        }
    }

    /// The pipeline put `n` more events into this sink's queue.
    pub fn queued(&self, n: usize) {
        self.queued.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The sink has delivered `events` (one batch).
    pub fn acked(&self, events: &[LiveEvent]) {
        let mut counts = [0u64; EventKind::ALL.len()];
        for e in events {
            counts[e.kind as usize] += 1;
        }
        for (counter, n) in self.published.iter().zip(counts) {
            if n > 0 {
                counter.increment(n);
            }
        }
        self.acked.fetch_add(events.len() as u64, Ordering::Relaxed);
        // One sample per batch, for its oldest event: bounded cost at any rate.
        if let Some(first) = events.first() {
            let committed = first.commit_time + PG_EPOCH_UNIX_MICROS;
            let waited = (unix_micros_now() - committed).max(0);
            self.latency.record(waited as f64 / 1e6);
        }
    }

    /// Events handed to the sink and not yet acknowledged.
    pub fn inflight(&self) -> u64 {
        self.queued
            .load(Ordering::Relaxed)
            .saturating_sub(self.acked.load(Ordering::Relaxed))
    }

    pub fn healthy(&self) {
        *lock(&self.problem) = None;
    }

    /// Not ready, and why (one line, naming what the operator can check).
    pub fn unhealthy(&self, why: impl Into<String>) {
        *lock(&self.problem) = Some(why.into());
    }

    /// A failed attempt (retried, or fatal).
    pub fn error(&self) {
        self.errors.increment(1);
    }

    pub fn problem(&self) -> Option<String> {
        lock(&self.problem).clone()
    }

    /// Sets the gauges that are read off the state (before a scrape).
    pub fn update_gauges(&self) {
        self.inflight.set(self.inflight() as f64);
        self.healthy_gauge
            .set(if self.problem().is_none() { 1.0 } else { 0.0 });
    }
}

/// What the slot monitor last read from the server.
#[derive(Debug, Clone, Default)]
pub struct SlotStats {
    /// The slot's `wal_status`; none when the slot does not exist.
    pub wal_status: Option<String>,
    /// Bytes of WAL that may still be written before the slot is invalidated; none when
    /// `max_slot_wal_keep_size` is unlimited.
    pub safe_wal_size: Option<i64>,
}

/// The source's state, as systemd and `/readyz` hear of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceState {
    /// Streaming from the slot.
    Streaming,
    /// Not streaming, and why (starting, reconnecting, standing by, failed, stopped).
    NotStreaming(String),
    /// Shutting down: never ready again.
    Stopping,
}

/// The state of the whole pipeline.
pub struct Status {
    /// What the pipeline reads, for people: `slot pglive`, `stream pglive.live`.
    pub reading: String,
    /// Streaming or why not; the last reason before stopping is kept in `reason`.
    source: watch::Sender<SourceState>,
    reason: Mutex<Result<(), String>>,
    ever_streamed: AtomicBool,
    stopping: AtomicBool,
    sinks: Vec<Arc<SinkStatus>>,
    /// The flush position pglive last reported (and the slot's own, from the monitor).
    flush: AtomicU64,
    slot_flush: AtomicU64,
    /// The server's WAL end as last seen (stream headers, keepalives, the monitor).
    server_end: AtomicU64,
    /// Commit time (µs since 1970) of the oldest change read but not yet acknowledged by every
    /// sink; 0 when there is none.
    oldest_unconfirmed: AtomicI64,
    slot_stats: Mutex<SlotStats>,
    lag_warning: AtomicBool,
    /// Mapped tables whose changes cannot stream, and why (the first), from the table watch.
    tables: Mutex<(usize, Option<String>)>,
}

impl Status {
    /// `source`: what it reads, for people (`slot pglive`); `sinks`: each sink's label and,
    /// if it is not ready at start, why.
    pub fn new(source: &str, sinks: Vec<(String, Option<String>)>) -> Status {
        // Shown (as 0) before anything happens, so that an alert on it has a series to watch.
        metrics::counter!(metric::SLOT_RECREATED).increment(0);
        Status {
            reading: source.to_owned(),
            source: watch::Sender::new(SourceState::NotStreaming("starting".into())),
            reason: Mutex::new(Err("starting".to_owned())),
            ever_streamed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            sinks: sinks
                .into_iter()
                .map(|(label, problem)| Arc::new(SinkStatus::new(label, problem)))
                .collect(),
            flush: AtomicU64::new(0),
            slot_flush: AtomicU64::new(0),
            server_end: AtomicU64::new(0),
            oldest_unconfirmed: AtomicI64::new(0),
            slot_stats: Mutex::default(),
            lag_warning: AtomicBool::new(false),
            tables: Mutex::default(),
        }
    }

    pub fn sink(&self, index: usize) -> &Arc<SinkStatus> {
        &self.sinks[index]
    }

    pub fn sinks(&self) -> &[Arc<SinkStatus>] {
        &self.sinks
    }

    /// Every change of the source's state, for systemd.
    pub fn watch(&self) -> watch::Receiver<SourceState> {
        self.source.subscribe()
    }

    fn set_source(&self, state: Result<(), String>) {
        let next = match &state {
            Ok(()) => SourceState::Streaming,
            Err(why) => SourceState::NotStreaming(why.clone()),
        };
        *lock(&self.reason) = state;
        self.source.send_if_modified(|s| {
            // Streaming again after a reconnection is news; the same reason twice is not (a
            // standby says the same thing at every attempt).
            let changed = *s != next || next == SourceState::Streaming;
            *s = next;
            changed
        });
    }

    /// Replication is streaming: ready, if the sinks are.
    pub fn streaming(&self) {
        self.ever_streamed.store(true, Ordering::Release);
        self.set_source(Ok(()));
    }

    /// Whether replication has streamed at least once (systemd's READY=1).
    pub fn has_streamed(&self) -> bool {
        self.ever_streamed.load(Ordering::Acquire)
    }

    /// Replication is not streaming, and why.
    pub fn not_streaming(&self, why: impl Into<String>) {
        self.set_source(Err(why.into()));
    }

    /// Shutting down: never ready again.
    pub fn stopping(&self) {
        if !self.stopping.swap(true, Ordering::AcqRel) {
            self.source.send_replace(SourceState::Stopping);
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub fn is_streaming(&self) -> bool {
        lock(&self.reason).is_ok()
    }

    /// Ok when streaming and every sink is healthy; otherwise the first reason.
    pub fn readiness(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Acquire) {
            return Err("stopping".into());
        }
        lock(&self.reason).clone()?;
        if let (_, Some(why)) = &*lock(&self.tables) {
            return Err(why.clone());
        }
        for (i, s) in self.sinks.iter().enumerate() {
            if let Some(why) = s.problem() {
                return Err(format!("sinks[{i}] ({}): {why}", s.label));
            }
        }
        Ok(())
    }

    /// The replication slot was recreated after PostgreSQL invalidated it (changes were lost).
    pub fn slot_recreated(&self) {
        metrics::counter!(metric::SLOT_RECREATED).increment(1);
    }

    pub fn set_flush(&self, lsn: Lsn) {
        self.flush.fetch_max(lsn.0, Ordering::Relaxed);
    }

    pub fn saw_server_end(&self, lsn: Lsn) {
        self.server_end.fetch_max(lsn.0, Ordering::Relaxed);
    }

    pub fn server_end(&self) -> u64 {
        self.server_end.load(Ordering::Relaxed)
    }

    /// `commit_time`: PostgreSQL microseconds, of the oldest unconfirmed change, if any.
    pub fn set_oldest_unconfirmed(&self, commit_time: Option<i64>) {
        let unix = commit_time.map_or(0, |t| t + PG_EPOCH_UNIX_MICROS);
        self.oldest_unconfirmed.store(unix, Ordering::Relaxed);
    }

    pub fn set_slot(&self, confirmed_flush: Option<Lsn>, stats: SlotStats) {
        if let Some(l) = confirmed_flush {
            self.slot_flush.store(l.0, Ordering::Relaxed);
        }
        *lock(&self.slot_stats) = stats;
    }

    pub fn slot_stats(&self) -> SlotStats {
        lock(&self.slot_stats).clone()
    }

    /// The confirmed flush position: pglive's own report, or the slot's when that is newer (a
    /// standby sees the active instance's progress there).
    pub fn confirmed_flush(&self) -> u64 {
        self.flush
            .load(Ordering::Relaxed)
            .max(self.slot_flush.load(Ordering::Relaxed))
    }

    /// None until both positions are known (before the slot exists, or before the first
    /// reading): a lag against position 0 would be the whole WAL.
    pub fn lag_bytes(&self) -> Option<u64> {
        let (end, flush) = (self.server_end(), self.confirmed_flush());
        (end > 0 && flush > 0).then(|| end.saturating_sub(flush))
    }

    /// How long the oldest change not yet acknowledged by every sink has waited since its
    /// commit; zero when every change read is acknowledged.
    pub fn lag_seconds(&self) -> f64 {
        match self.oldest_unconfirmed.load(Ordering::Relaxed) {
            0 => 0.0,
            t => (unix_micros_now() - t).max(0) as f64 / 1e6,
        }
    }

    /// Sets whether lag is above the warning thresholds; returns the previous setting.
    pub fn set_lag_warning(&self, on: bool) -> bool {
        self.lag_warning.swap(on, Ordering::AcqRel)
    }

    pub fn lag_warning(&self) -> bool {
        self.lag_warning.load(Ordering::Relaxed)
    }

    /// Sets the mapped tables whose changes cannot stream: how many, and the first's reason
    /// (not ready while there is one).
    pub fn set_unstreamed_tables(&self, count: usize, first: Option<String>) {
        *lock(&self.tables) = (count, first);
    }

    pub fn unstreamed_tables(&self) -> usize {
        lock(&self.tables).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_streaming_and_every_sink_is_healthy() {
        let status = Status::new(
            "s",
            vec![
                ("stdout".into(), None),
                ("amqp".into(), Some("connecting".into())),
            ],
        );
        assert_eq!(status.readiness(), Err("starting".into()));
        status.streaming();
        assert_eq!(
            status.readiness(),
            Err("sinks[1] (amqp): connecting".into())
        );
        status.sink(1).healthy();
        assert_eq!(status.readiness(), Ok(()));
        status.not_streaming("waiting for slot s");
        assert_eq!(status.readiness(), Err("waiting for slot s".into()));
        status.streaming();
        status.stopping();
        assert_eq!(status.readiness(), Err("stopping".into()));
    }

    #[test]
    fn watchers_hear_each_change_once() {
        let status = Status::new("s", vec![]);
        let mut rx = status.watch();
        status.not_streaming("standing by");
        assert!(rx.has_changed().unwrap());
        assert_eq!(
            *rx.borrow_and_update(),
            SourceState::NotStreaming("standing by".into())
        );
        status.not_streaming("standing by");
        assert!(
            !rx.has_changed().unwrap(),
            "the same reason again is no news"
        );
        status.streaming();
        assert_eq!(*rx.borrow_and_update(), SourceState::Streaming);
        status.stopping();
        assert_eq!(*rx.borrow_and_update(), SourceState::Stopping);
        status.not_streaming("stopped");
        assert_eq!(
            *rx.borrow_and_update(),
            SourceState::NotStreaming("stopped".into())
        );
        assert!(status.is_stopping() && !status.is_streaming());
    }

    #[test]
    fn lag_counts_from_the_newest_confirmed_position() {
        let status = Status::new("s", vec![]);
        assert_eq!(status.lag_bytes(), None, "no positions yet");
        status.saw_server_end(Lsn(1000));
        assert_eq!(status.lag_bytes(), None, "no confirmed position yet");
        status.set_flush(Lsn(400));
        assert_eq!(status.lag_bytes(), Some(600));
        // A standby learns the slot's position from the server.
        status.set_slot(Some(Lsn(900)), SlotStats::default());
        assert_eq!(status.lag_bytes(), Some(100));
        assert_eq!(status.lag_seconds(), 0.0);
        let ten_s_ago = unix_micros_now() - PG_EPOCH_UNIX_MICROS - 10_000_000;
        status.set_oldest_unconfirmed(Some(ten_s_ago));
        assert!((9.0..60.0).contains(&status.lag_seconds()));
        status.set_oldest_unconfirmed(None);
        assert_eq!(status.lag_seconds(), 0.0);
    }
}

//! Running pglive as a service: the shared [`Status`] that the source and the sinks report
//! to, and the ops listener that serves it — `/healthz` (the process answers), `/readyz` (200
//! only while replication streams and every sink is healthy) and `/metrics` (Prometheus text).
//! Also the systemd notifications ([`notify`]) and the slot monitor ([`monitor`]).

pub mod monitor;
pub mod notify;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::event::EventKind;
use crate::lsn::Lsn;
use crate::sink::Batch;

/// The commit → acknowledged latency histogram.
const LATENCY_METRIC: &str = "pglive_commit_to_ack_seconds";
/// Its buckets, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Histogram samples are folded into buckets this often (and at each scrape), so their memory
/// stays bounded whether or not anyone scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Open connections to the ops listener at most: probes and a scraper or two need a handful,
/// and anyone who can reach the port must not be able to hold thousands of sockets there.
pub const MAX_CONNECTIONS: usize = 16;
/// Counts slots recreated after PostgreSQL invalidated them.
const SLOT_RECREATED_METRIC: &str = "pglive_slot_recreated_total";
/// The slot's `wal_status` values, each a series of `pglive_slot_wal_status`.
const WAL_STATUSES: [&str; 4] = ["reserved", "extended", "unreserved", "lost"];

/// Installs the process-wide metrics recorder; the handle renders `/metrics`.
pub fn install_metrics() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(LATENCY_METRIC.into()), LATENCY_BUCKETS)
        .and_then(|b| b.install_recorder())
        .map_err(|e| format!("cannot set up metrics: {e}"))?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "pglive_events_published_total",
        "Events the sink has delivered and acknowledged, by type."
    );
    describe_counter!(
        "pglive_sink_errors_total",
        "Failed delivery attempts (retried, or fatal)."
    );
    describe_gauge!(
        "pglive_sink_inflight_events",
        "Events handed to the sink and not yet acknowledged."
    );
    describe_gauge!(
        "pglive_sink_healthy",
        "1 when the sink can deliver (connected, not blocked)."
    );
    describe_histogram!(
        LATENCY_METRIC,
        Unit::Seconds,
        "From commit to the sink's acknowledgement, for the oldest event of each batch."
    );
    describe_gauge!(
        "pglive_streaming",
        "1 while this instance streams from the slot (0: starting, reconnecting, standing by)."
    );
    describe_gauge!(
        "pglive_confirmed_flush_lsn",
        Unit::Bytes,
        "The slot's confirmed flush position, as a byte offset in the WAL."
    );
    describe_gauge!(
        "pglive_server_wal_lsn",
        Unit::Bytes,
        "The server's WAL end as last seen, as a byte offset."
    );
    describe_gauge!(
        "pglive_replication_lag_bytes",
        Unit::Bytes,
        "WAL written on the server and not yet confirmed by the slot."
    );
    describe_gauge!(
        "pglive_replication_lag_seconds",
        Unit::Seconds,
        "Age of the oldest committed change not yet acknowledged by every sink (0: none)."
    );
    describe_gauge!(
        "pglive_lag_warning",
        "1 while lag is above ops.lag_warning_bytes or ops.lag_warning_age."
    );
    describe_gauge!(
        "pglive_slot_wal_status",
        "The slot's wal_status: 1 for the current one."
    );
    describe_gauge!(
        "pglive_websocket_clients",
        "Connected WebSocket relay clients."
    );
    describe_counter!(
        "pglive_http_connections_refused_total",
        "Connections refused at accept because the listener was at its connection cap."
    );
    describe_counter!(
        SLOT_RECREATED_METRIC,
        "Times the replication slot was invalidated and recreated (postgres.on_slot_lost = \"recreate\"): changes were lost and clients were told to refetch."
    );
}

/// Microseconds since 1970 now.
fn unix_micros_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// PostgreSQL timestamps count microseconds from 2000-01-01.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain values: a panic elsewhere cannot leave them inconsistent.
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
            metrics::counter!("pglive_events_published_total", "sink" => label.clone(), "type" => k.as_str())
        });
        SinkStatus {
            errors: metrics::counter!("pglive_sink_errors_total", "sink" => label.clone()),
            latency: metrics::histogram!(LATENCY_METRIC, "sink" => label.clone()),
            inflight: metrics::gauge!("pglive_sink_inflight_events", "sink" => label.clone()),
            healthy_gauge: metrics::gauge!("pglive_sink_healthy", "sink" => label.clone()),
            published,
            label,
            problem: Mutex::new(problem),
            queued: AtomicU64::new(0),
            acked: AtomicU64::new(0),
        }
    }

    /// The source put `n` more events into this sink's queue.
    pub fn queued(&self, n: usize) {
        self.queued.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The sink has delivered `batch`.
    pub fn acked(&self, batch: &Batch) {
        let mut counts = [0u64; EventKind::ALL.len()];
        for e in &batch.events {
            counts[e.kind as usize] += 1;
        }
        for (counter, n) in self.published.iter().zip(counts) {
            if n > 0 {
                counter.increment(n);
            }
        }
        self.acked
            .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
        // One sample per batch, for its oldest event: bounded cost at any rate.
        if let Some(first) = batch.events.first() {
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

    /// A failed attempt the sink will retry.
    pub fn error(&self) {
        self.errors.increment(1);
    }

    fn problem(&self) -> Option<String> {
        lock(&self.problem).clone()
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

/// The state of the whole pipeline, shared by the source, the sinks and the ops listener.
pub struct Status {
    slot: String,
    source: Mutex<Result<(), String>>,
    ever_streamed: AtomicBool,
    stopping: AtomicBool,
    sinks: Vec<SinkStatus>,
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
}

impl Status {
    /// `sinks`: each sink's label and, if it is not ready at start, why.
    pub fn new(slot: &str, sinks: Vec<(String, Option<String>)>) -> Status {
        // Shown (as 0) before anything happens, so that an alert on it has a series to watch.
        metrics::counter!(SLOT_RECREATED_METRIC).increment(0);
        Status {
            slot: slot.to_owned(),
            source: Mutex::new(Err("starting".to_owned())),
            ever_streamed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            sinks: sinks
                .into_iter()
                .map(|(label, problem)| SinkStatus::new(label, problem))
                .collect(),
            flush: AtomicU64::new(0),
            slot_flush: AtomicU64::new(0),
            server_end: AtomicU64::new(0),
            oldest_unconfirmed: AtomicI64::new(0),
            slot_stats: Mutex::default(),
            lag_warning: AtomicBool::new(false),
        }
    }

    pub fn sink(&self, index: usize) -> &SinkStatus {
        &self.sinks[index]
    }

    /// Replication is streaming: ready (if the sinks are), and systemd hears READY=1 the
    /// first time.
    pub fn streaming(&self) {
        *lock(&self.source) = Ok(());
        let line = format!("streaming from slot {}", self.slot);
        if !self.ever_streamed.swap(true, Ordering::AcqRel) {
            notify::ready(&line);
        } else {
            notify::status(&line);
        }
    }

    /// Replication is not streaming, and why. (systemd hears of a change only: a standby
    /// says the same thing at every attempt.)
    pub fn not_streaming(&self, why: impl Into<String>) {
        let why = Err(why.into());
        let mut source = lock(&self.source);
        if *source != why {
            if let Err(text) = &why {
                notify::status(text);
            }
            *source = why;
        }
    }

    /// Shutting down: never ready again.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Release);
        notify::stopping();
    }

    pub fn is_streaming(&self) -> bool {
        lock(&self.source).is_ok()
    }

    /// Ok when streaming and every sink is healthy; otherwise the first reason.
    pub fn readiness(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Acquire) {
            return Err("stopping".into());
        }
        lock(&self.source).clone()?;
        for (i, s) in self.sinks.iter().enumerate() {
            if let Some(why) = s.problem() {
                return Err(format!("sinks[{i}] ({}): {why}", s.label));
            }
        }
        Ok(())
    }

    /// The source recreated the invalidated slot (changes were lost).
    pub fn slot_recreated(&self) {
        metrics::counter!(SLOT_RECREATED_METRIC).increment(1);
    }

    pub fn set_flush(&self, lsn: Lsn) {
        self.flush.fetch_max(lsn.0, Ordering::Relaxed);
    }

    pub fn saw_server_end(&self, lsn: Lsn) {
        self.server_end.fetch_max(lsn.0, Ordering::Relaxed);
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
        let (end, flush) = (
            self.server_end.load(Ordering::Relaxed),
            self.confirmed_flush(),
        );
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

    pub fn set_lag_warning(&self, on: bool) -> bool {
        self.lag_warning.swap(on, Ordering::AcqRel)
    }

    /// Sets the gauges that are read off the state, then renders every metric.
    fn render(&self, handle: &PrometheusHandle) -> String {
        metrics::gauge!("pglive_streaming").set(if self.is_streaming() { 1.0 } else { 0.0 });
        metrics::gauge!("pglive_confirmed_flush_lsn").set(self.confirmed_flush() as f64);
        metrics::gauge!("pglive_server_wal_lsn")
            .set(self.server_end.load(Ordering::Relaxed) as f64);
        if let Some(lag) = self.lag_bytes() {
            metrics::gauge!("pglive_replication_lag_bytes").set(lag as f64);
        }
        metrics::gauge!("pglive_replication_lag_seconds").set(self.lag_seconds());
        metrics::gauge!("pglive_lag_warning").set(if self.lag_warning.load(Ordering::Relaxed) {
            1.0
        } else {
            0.0
        });
        let stats = lock(&self.slot_stats).clone();
        for s in WAL_STATUSES {
            let on = stats.wal_status.as_deref() == Some(s);
            metrics::gauge!("pglive_slot_wal_status", "status" => s).set(if on {
                1.0
            } else {
                0.0
            });
        }

        for s in &self.sinks {
            s.inflight.set(s.inflight() as f64);
            s.healthy_gauge
                .set(if s.problem().is_none() { 1.0 } else { 0.0 });
        }
        handle.run_upkeep();
        let mut page = handle.render();
        // Written here rather than kept in the recorder, so that it disappears when PostgreSQL
        // stops reporting it (unlimited retention, or a lost slot).
        if let Some(size) = stats.safe_wal_size {
            page.push_str(&format!(
                "# HELP pglive_slot_safe_wal_size_bytes WAL that may still be written before the slot is invalidated.\n\
                 # TYPE pglive_slot_safe_wal_size_bytes gauge\n\
                 pglive_slot_safe_wal_size_bytes {size}\n"
            ));
        }
        page
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listen` until `stop`.
pub async fn serve(
    listen: SocketAddr,
    status: Arc<Status>,
    metrics: PrometheusHandle,
    stop: CancellationToken,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("ops.listen: cannot listen on {listen}: {e}"))?;
    tracing::info!(%listen, "ops endpoints: /healthz /readyz /metrics");
    let upkeep = metrics.clone();
    let upkeep_stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => upkeep.run_upkeep(),
                _ = upkeep_stop.cancelled() => break,
            }
        }
    });
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .with_state((status, metrics));
    let limits = crate::http::Limits {
        max_connections: MAX_CONNECTIONS,
        header_timeout: crate::http::DEFAULT_HEADER_TIMEOUT,
    };
    tokio::spawn(crate::http::serve(
        listener,
        app,
        limits,
        "ops",
        stop,
        |_| {},
    ));
    Ok(())
}

type OpsState = (Arc<Status>, PrometheusHandle);

async fn readyz(State((status, _)): State<OpsState>) -> impl IntoResponse {
    match status.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics_page(State((status, handle)): State<OpsState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        status.render(&handle),
    )
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

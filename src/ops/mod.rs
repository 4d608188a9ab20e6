//! Running pglive as a service: the ops listener that serves the shared [`Status`] —
//! `/healthz` (the process answers), `/readyz` (200 only while replication streams and every
//! sink is healthy) and `/metrics` (Prometheus text) —, the systemd notifications
//! ([`notify`]) and the slot monitor ([`monitor`]).

pub mod monitor;
pub mod notify;
pub mod tables;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::status::{Status, WAL_STATUSES, metric};

/// Histogram samples are folded into buckets this often (and at each scrape), so their memory
/// stays bounded whether or not anyone scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Open connections to the ops listener at most: probes and a scraper or two need a handful,
/// and anyone who can reach the port must not be able to hold thousands of sockets there.
pub const MAX_CONNECTIONS: usize = 16;

/// Installs the process-wide metrics recorder; the handle renders `/metrics`.
pub fn install_metrics() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(metric::COMMIT_TO_ACK.into()),
            metric::COMMIT_TO_ACK_BUCKETS,
        )
        .and_then(|b| b.install_recorder())
        .map_err(|e| format!("cannot set up metrics: {e}"))?;
    crate::status::describe_metrics();
    Ok(handle)
}

/// Sets the gauges that are read off the state, then renders every metric.
fn render(status: &Status, handle: &PrometheusHandle) -> String {
    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    metrics::gauge!(metric::STREAMING).set(flag(status.is_streaming()));
    metrics::gauge!(metric::CONFIRMED_FLUSH_LSN).set(status.confirmed_flush() as f64);
    metrics::gauge!(metric::SERVER_WAL_LSN).set(status.server_end() as f64);
    if let Some(lag) = status.lag_bytes() {
        metrics::gauge!(metric::LAG_BYTES).set(lag as f64);
    }
    metrics::gauge!(metric::LAG_SECONDS).set(status.lag_seconds());
    metrics::gauge!(metric::LAG_WARNING).set(flag(status.lag_warning()));
    metrics::gauge!(metric::TABLES_UNSTREAMED).set(status.unstreamed_tables() as f64);
    let stats = status.slot_stats();
    for s in WAL_STATUSES {
        let on = stats.wal_status.as_deref() == Some(s);
        metrics::gauge!(metric::SLOT_WAL_STATUS, "status" => s).set(flag(on));
    }
    for s in status.sinks() {
        s.update_gauges();
    }
    handle.run_upkeep();
    let mut page = handle.render();
    // Written here rather than kept in the recorder, so that it disappears when PostgreSQL
    // stops reporting it (unlimited retention, or a lost slot).
    if let Some(size) = stats.safe_wal_size {
        let name = metric::SLOT_SAFE_WAL_SIZE;
        page.push_str(&format!(
            "# HELP {name} WAL that may still be written before the slot is invalidated.\n\
             # TYPE {name} gauge\n\
             {name} {size}\n"
        ));
    }
    page
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until `stop`, its tasks on
/// `tasks`.
pub fn serve(
    listener: TcpListener,
    status: Arc<Status>,
    metrics: PrometheusHandle,
    tasks: &TaskTracker,
    stop: CancellationToken,
) {
    if let Ok(listen) = listener.local_addr() {
        tracing::info!(%listen, "ops endpoints: /healthz /readyz /metrics");
    }
    let upkeep = metrics.clone();
    let upkeep_stop = stop.clone();
    tasks.spawn(async move {
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
    tasks.spawn(crate::http::serve(
        listener,
        app,
        limits,
        "ops",
        stop,
        |_| {},
    ));
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
        render(&status, &handle),
    )
}

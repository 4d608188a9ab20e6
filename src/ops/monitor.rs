//! The slot monitor: on a connection of its own, reads the server's WAL position and the slot's
//! `wal_status`, `safe_wal_size` and confirmed position every `postgres.status_interval`;
//! warns (log and `pglive_lag_warning`) when lag passes `ops.lag_warning_*` or the slot's WAL
//! is no longer reserved; watches the mapped tables (see [`super::tables`]); and, with
//! `postgres.heartbeat_interval`, writes a heartbeat message into the WAL so that the slot
//! advances on servers whose other writes it cannot see.

use std::sync::Arc;

use tokio::time::{Interval, MissedTickBehavior};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::{OnSlotLost, OpsConfig, PostgresConfig};
use crate::lsn::Lsn;
use crate::map::TableRule;
use crate::ops::tables::TableWatch;
use crate::source::SourceError;
use crate::source::catalog;
use crate::status::{SlotStats, Status};

const POSITIONS: &str = "
SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
             ELSE pg_current_wal_lsn() END)::text,
       s.confirmed_flush_lsn::text, s.wal_status, s.safe_wal_size
  FROM (SELECT 1) one LEFT JOIN pg_replication_slots s ON s.slot_name = $1";

/// The heartbeat: a non-transactional logical message (no transaction, no table).
const HEARTBEAT: &str = "SELECT pg_logical_emit_message(false, 'pglive.heartbeat', '')";

fn ticker(every: std::time::Duration) -> Interval {
    let mut t = tokio::time::interval(every);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

/// Runs until `stop`. Connection problems are logged at debug level and retried at the next
/// tick: the replication source reports them where they matter.
pub async fn run(
    pg: PostgresConfig,
    ops: OpsConfig,
    tables: Vec<TableRule>,
    status: Arc<Status>,
    stop: CancellationToken,
) {
    let mut poll = ticker(pg.status_interval);
    let mut heartbeat = pg.heartbeat_interval.map(ticker);
    let mut monitor = Monitor {
        tables: TableWatch::new(tables, pg.publication.clone(), pg.auto_setup),
        pg,
        ops,
        status,
        client: None,
        heartbeat_failed: false,
        last_wal_status: None,
    };
    loop {
        let beat = async {
            match heartbeat.as_mut() {
                Some(h) => h.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = poll.tick() => {
                monitor.poll().await;
                monitor.watch_tables().await;
            }
            _ = beat => monitor.heartbeat().await,
        }
    }
}

/// What the monitor keeps between ticks.
struct Monitor {
    pg: PostgresConfig,
    ops: OpsConfig,
    status: Arc<Status>,
    /// Its connection; `None` until (re)opened.
    client: Option<Client>,
    /// The last heartbeat failed: its warning is not repeated until one succeeds.
    heartbeat_failed: bool,
    tables: TableWatch,
    /// The slot's `wal_status` as last read, to log changes only.
    last_wal_status: Option<String>,
}

impl Monitor {
    /// Writes a heartbeat, if this instance is the one streaming.
    async fn heartbeat(&mut self) {
        // Only the instance that streams writes heartbeats (a standby would double them).
        if !self.status.is_streaming() {
            return;
        }
        let Some(c) = connected(&mut self.client, &self.pg).await else {
            return;
        };
        match within(&self.pg, c.execute(HEARTBEAT, &[])).await {
            Ok(_) => self.heartbeat_failed = false,
            Err(e) => {
                if !self.heartbeat_failed {
                    tracing::warn!(error = %e, "cannot write the heartbeat (pg_logical_emit_message); the role needs EXECUTE on it and a writable primary");
                }
                self.heartbeat_failed = true;
                self.client = None;
            }
        }
    }

    /// Reads the server's WAL position and the slot's state into `status`, and warns about
    /// what they show.
    async fn poll(&mut self) {
        let Some(c) = connected(&mut self.client, &self.pg).await else {
            return;
        };
        let row = match within(&self.pg, c.query_one(POSITIONS, &[&self.pg.slot])).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "slot monitor query failed");
                self.client = None;
                return;
            }
        };
        let lsn = |i: usize| {
            row.get::<_, Option<String>>(i)
                .and_then(|s| s.parse::<Lsn>().ok())
        };
        if let Some(end) = lsn(0) {
            self.status.saw_server_end(end);
        }
        let stats = SlotStats {
            wal_status: row.get(2),
            safe_wal_size: row.get(3),
        };
        self.report_wal_status(&stats);
        self.status.set_slot(lsn(1), stats);
        self.report_lag();
    }

    /// Checks the mapped tables (see [`TableWatch`]) on the instance that streams (a standby
    /// would race it fixing the publication); elsewhere only notes their relation OIDs.
    async fn watch_tables(&mut self) {
        let Some(c) = connected(&mut self.client, &self.pg).await else {
            return;
        };
        let watched = if self.status.is_streaming() {
            within_source(&self.pg, self.tables.poll(c, &self.status)).await
        } else {
            // What an earlier poll found is not news any more.
            self.status.set_unstreamed_tables(0, None);
            within_source(&self.pg, self.tables.remember(c)).await
        };
        if let Err(e) = watched {
            tracing::debug!(error = %e, "table watch query failed");
            self.client = None;
        }
    }

    /// Logs a change of the slot's `wal_status` to one that puts changes at risk.
    fn report_wal_status(&mut self, stats: &SlotStats) {
        if stats.wal_status == self.last_wal_status {
            return;
        }
        let pg = &self.pg;
        match stats.wal_status.as_deref() {
            Some("extended") => {
                tracing::warn!(slot = %pg.slot, "the slot holds more WAL than max_wal_size (wal_status extended): pglive is falling behind")
            }
            Some("unreserved") => {
                tracing::error!(slot = %pg.slot, safe_wal_size = ?stats.safe_wal_size, "the slot's WAL is about to be removed (wal_status unreserved): changes will be lost at the next checkpoint unless pglive catches up")
            }
            Some("lost") => match pg.on_slot_lost {
                OnSlotLost::Fail => {
                    tracing::error!(slot = %pg.slot, "the slot was invalidated (wal_status lost): changes were lost; pglive cannot stream from it (postgres.on_slot_lost = \"fail\")")
                }
                OnSlotLost::Recreate => {
                    tracing::error!(slot = %pg.slot, "the slot was invalidated (wal_status lost): changes were lost; pglive recreates it and tells clients to refetch (postgres.on_slot_lost = \"recreate\")")
                }
            },
            _ => {}
        }
        self.last_wal_status = stats.wal_status.clone();
    }

    /// Sets the lag warning from the thresholds, logging when it turns on or off.
    fn report_lag(&self) {
        let status = &self.status;
        let (bytes, secs) = (status.lag_bytes(), status.lag_seconds());
        let over = bytes.is_some_and(|b| b > self.ops.lag_warning_bytes)
            || secs > self.ops.lag_warning_age.as_secs_f64();
        let was = status.set_lag_warning(over);
        if over && !was {
            tracing::warn!(lag_bytes = ?bytes, lag_seconds = secs, slot = %self.pg.slot,
                "replication lag is above ops.lag_warning_bytes / ops.lag_warning_age: PostgreSQL keeps the WAL meanwhile");
        } else if was && !over {
            tracing::info!(
                lag_bytes = bytes,
                lag_seconds = secs,
                "replication lag is back under the warning thresholds"
            );
        }
    }
}

/// A query that takes longer than `connect_timeout` has a dead connection under it (a
/// half-open TCP session would otherwise hang until the kernel gives up, hours later).
async fn within<T>(
    pg: &PostgresConfig,
    query: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(pg.connect_timeout, query).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {:?}", pg.connect_timeout)),
    }
}

/// [`within`] for a step that fails with a [`SourceError`].
async fn within_source(
    pg: &PostgresConfig,
    step: impl Future<Output = Result<(), SourceError>>,
) -> Result<(), String> {
    match tokio::time::timeout(pg.connect_timeout, step).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {:?}", pg.connect_timeout)),
    }
}

/// The monitor's connection, (re)opened when needed.
async fn connected<'a>(client: &'a mut Option<Client>, pg: &PostgresConfig) -> Option<&'a Client> {
    if client.as_ref().is_some_and(Client::is_closed) {
        *client = None;
    }
    if client.is_none() {
        match catalog::connect(&pg.conn, pg.connect_timeout).await {
            Ok(c) => *client = Some(c),
            Err(e) => {
                tracing::debug!(error = %e, "slot monitor cannot connect");
                return None;
            }
        }
    }
    client.as_ref()
}

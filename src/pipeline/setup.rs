//! Opening a session: the control connection, the publication and slot as configured (made
//! when missing with `auto_setup`; an invalidated slot fails, or is made anew with
//! `on_slot_lost = "recreate"`), the status pacing the server's `wal_sender_timeout` allows,
//! and the replication stream from the slot. A standby first checks over the control
//! connection whether the slot is free.

use tokio_postgres::Client;

use crate::config::{OnSlotLost, PostgresConfig};
use crate::map::TableRule;
use crate::source::catalog::{self, MissingSlot};
use crate::source::conn::ReplicationConnection;
use crate::source::error::{NOT_IN_PREREQUISITE_STATE, SourceError};
use crate::source::stream::ReplicationStream;
use crate::status::Status;

/// A session ready to stream.
pub(super) struct Session {
    pub control: Client,
    pub stream: ReplicationStream,
    /// The mapped tables' relation OIDs as (OID, schema, name), so that one renamed during
    /// the session is still known as the same relation.
    pub tables: Vec<(u32, String, String)>,
}

/// What the pipeline knows of its slot across sessions.
#[derive(Debug, Default)]
pub(super) struct SlotState {
    /// The slot is known to exist (a session streamed from it, or another process holds it):
    /// from then on a missing slot is an error, not something to create.
    pub known: bool,
    /// The slot was made anew since the pipeline last looked: positions of the old one mean
    /// nothing for it (set even when the session then fails to start).
    pub made: bool,
}

/// What opening a session needs to know.
pub(super) struct Setup<'a> {
    pub pg: &'a PostgresConfig,
    pub tables: &'a [TableRule],
    pub status: &'a Status,
}

impl Setup<'_> {
    /// Connects both sessions and starts replication. `standing_by`: check first that the
    /// slot is free, so as not to open a replication session every few seconds only to be
    /// refused.
    pub async fn open(
        &self,
        slot: &mut SlotState,
        standing_by: bool,
    ) -> Result<Session, SourceError> {
        let pg = self.pg;
        let control = catalog::connect(&pg.conn, pg.connect_timeout).await?;
        if standing_by
            && let Some(pid) = catalog::slot(&control, &pg.slot)
                .await?
                .and_then(|s| s.active_pid)
        {
            return Err(SourceError::SlotHeld {
                slot: pg.slot.clone(),
                pid,
            });
        }
        self.ensure_slot(&control, slot).await?;
        let sender_timeout = catalog::wal_sender_timeout(&control).await?;
        let status_interval = match sender_timeout {
            Some(t) => pg.status_interval.min(t / 2),
            None => pg.status_interval,
        };
        // Silence longer than this means the server or the network is gone: we ask for a
        // keepalive at every status update, so a live server answers well within it.
        let read_timeout = status_interval
            .saturating_mul(3)
            .max(sender_timeout.unwrap_or_default().saturating_mul(2));
        let tables = catalog::table_oids(&control, self.tables).await?;
        let conn = self.start(&control).await?;
        slot.known = true;
        Ok(Session {
            control,
            stream: ReplicationStream::new(conn, status_interval, read_timeout),
            tables,
        })
    }

    /// The tables each session checks and sets up: all of them when the process starts (one
    /// that does not exist stops it); after that, those that exist under their configured
    /// name, since a table renamed or dropped while pglive runs is the table watch's to report
    /// (see `ops::tables`), not a reason to stop at the next reconnection.
    async fn tables_to_set_up(&self, control: &Client) -> Result<Vec<TableRule>, SourceError> {
        if !self.status.has_streamed() {
            return Ok(self.tables.to_vec());
        }
        let existing = catalog::table_oids(control, self.tables).await?;
        Ok(self
            .tables
            .iter()
            .filter(|t| {
                existing
                    .iter()
                    .any(|(_, s, n)| *s == t.schema && *n == t.name)
            })
            .cloned()
            .collect())
    }

    /// The publication and slot as configured.
    async fn ensure_slot(
        &self,
        control: &Client,
        state: &mut SlotState,
    ) -> Result<(), SourceError> {
        let pg = self.pg;
        let recreate = pg.on_slot_lost == OnSlotLost::Recreate;
        let tables = self.tables_to_set_up(control).await?;
        if pg.auto_setup {
            let missing_slot = match (state.known, recreate) {
                (true, _) => MissingSlot::Fail,
                // Made below with a refetch marker, so that a slot whose recreation failed
                // after its drop (killed, timed out) still starts with the `*` events.
                (false, true) => MissingSlot::Leave,
                (false, false) => MissingSlot::Create,
            };
            let changes =
                catalog::ensure_setup(control, &pg.publication, &pg.slot, &tables, missing_slot)
                    .await?;
            for change in changes {
                tracing::info!("{change}");
            }
        } else {
            catalog::require_setup(control, &pg.publication, &tables).await?;
        }
        match catalog::slot(control, &pg.slot).await? {
            Some(slot) if slot.is_lost() => {
                self.slot_lost(control, slot.confirmed_flush, state).await
            }
            None if pg.auto_setup && recreate && !state.known => {
                tracing::info!(slot = %pg.slot,
                    "creating the replication slot with a refetch marker (postgres.on_slot_lost = \"recreate\"): every mapped channel first gets an event of type \"*\"");
                self.make_slot(control, state).await
            }
            _ => Ok(()),
        }
    }

    /// Opens the replication connection and starts streaming from the slot.
    async fn start(&self, control: &Client) -> Result<ReplicationConnection, SourceError> {
        let pg = self.pg;
        let mut conn =
            ReplicationConnection::connect(&pg.conn, pg.connect_timeout, pg.max_message_bytes)
                .await?;
        let started = tokio::time::timeout(
            pg.connect_timeout,
            conn.start_replication(&pg.slot, &pg.publication, crate::lsn::Lsn::ZERO),
        )
        .await
        .map_err(|_| SourceError::Timeout {
            what: "starting replication",
            after: pg.connect_timeout,
        })?;
        let Err(e) = started else {
            return Ok(conn);
        };
        // Invalidated since it was looked at? Say so rather than pass on the server's terse
        // refusal (whose wording varies between versions).
        if matches!(&e, SourceError::Server(err) if err.code == NOT_IN_PREREQUISITE_STATE)
            && let Some(slot) = catalog::slot(control, &pg.slot).await?
            && slot.is_lost()
        {
            return Err(match pg.on_slot_lost {
                OnSlotLost::Fail => SourceError::SlotLost {
                    slot: pg.slot.clone(),
                    confirmed: slot.confirmed_flush,
                },
                OnSlotLost::Recreate => SourceError::SlotInvalidated(pg.slot.clone()),
            });
        }
        Err(e)
    }

    /// The slot was invalidated: with `on_slot_lost = "fail"`, the error that says so; with
    /// `"recreate"`, a new slot whose stream starts with the recreation marker (which becomes
    /// the `*` events).
    async fn slot_lost(
        &self,
        control: &Client,
        confirmed: Option<crate::lsn::Lsn>,
        state: &mut SlotState,
    ) -> Result<(), SourceError> {
        let slot = self.pg.slot.clone();
        if self.pg.on_slot_lost == OnSlotLost::Fail {
            return Err(SourceError::SlotLost { slot, confirmed });
        }
        let since = confirmed.map(|l| l.to_string()).unwrap_or_default();
        tracing::error!(slot = %slot, confirmed = %since,
            "replication slot was invalidated (wal_status lost: it held more WAL than max_slot_wal_keep_size); \
             the changes committed after its confirmed position are lost. Recreating it (postgres.on_slot_lost = \"recreate\") \
             and telling clients to refetch: every mapped channel gets an event of type \"*\" before any new event");
        self.status.not_streaming(format!(
            "recreating replication slot {slot}: it was invalidated (wal_status lost)"
        ));
        self.make_slot(control, state).await?;
        self.status.slot_recreated();
        Ok(())
    }

    /// Makes the slot anew (dropping it if it is lost), starting at the refetch marker.
    async fn make_slot(&self, control: &Client, state: &mut SlotState) -> Result<(), SourceError> {
        let slot = &self.pg.slot;
        let e = match catalog::recreate_slot(control, slot, &self.pg.publication).await {
            Ok(at) => {
                match at.marker {
                    Some(marker) => {
                        tracing::info!(slot = %slot, consistent_point = %at.consistent_point, marker = %marker,
                        "made the replication slot; it starts at the refetch marker")
                    }
                    // The refetch still comes, only perhaps after a few transactions that
                    // committed while the slot was being made.
                    None => tracing::warn!(slot = %slot, consistent_point = %at.consistent_point,
                        "made the replication slot, but could not move it to the refetch marker: the * events may follow a few transactions"),
                }
                state.made = true;
                return Ok(());
            }
            Err(e) => e,
        };
        match catalog::slot(control, slot).await? {
            // Another process (a standby pglive?) recreated it meanwhile, or only the advance
            // to the marker failed: the slot is usable, stream from it.
            Some(info) if !info.is_lost() => {
                tracing::warn!(slot = %slot, error = %e,
                    "recreating the replication slot did not finish here, but the slot is usable again; streaming from it");
                state.made = true;
                Ok(())
            }
            // Dropped, not made again (the creation timed out waiting for running
            // transactions, say): the next attempt makes it, marker included.
            None => {
                state.known = false;
                tracing::warn!(slot = %slot, error = %e,
                    "making the replication slot failed; trying again");
                Err(e)
            }
            _ => Err(e),
        }
    }
}

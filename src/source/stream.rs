//! The replication loop: reads the CopyBoth stream, decodes and maps each message, hands
//! batches of events to every sink's bounded queue (a full queue stops reading: PostgreSQL
//! keeps the WAL), and reports the checkpoint's flush position in status updates — proactively,
//! when asked, and while backpressured. Reconnects with backoff and resumes from the slot; while
//! another process holds the slot, stands by; a slot PostgreSQL invalidated ends the source or,
//! with `postgres.on_slot_lost = "recreate"`, is made anew and starts with `*` events. Reports
//! to the shared status: streaming or why not, the positions it sees and confirms, the events it
//! queues for each sink.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::catalog;
use super::conn::{ReplicationConnection, ReplicationMessage, Status};
use super::error::{NOT_IN_PREREQUISITE_STATE, SourceError};
use crate::checkpoint::{AckBoard, Checkpoint, Seq};
use crate::config::{OnSlotLost, PostgresConfig};
use crate::decode::{self, LogicalMessage};
use crate::event::LiveEvent;
use crate::lsn::Lsn;
use crate::map::{Mapper, Step, TableRule};
use crate::sink::Batch;

/// Seal a batch at this many events…
const MAX_BATCH_EVENTS: usize = 1024;
/// …or this many bytes of JSON, whichever comes first.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Status updates caused by acknowledgements are sent at most this often.
const MIN_STATUS_GAP: Duration = Duration::from_millis(100);
/// The first reconnection delay; it doubles up to `postgres.max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// A session that streamed this long resets the backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);
/// How long to wait for the server to end the stream after CopyDone.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);
/// While another process holds the slot, try again this often: a standby takes over within
/// about this long once the slot is free.
const SLOT_RETRY: Duration = Duration::from_secs(2);

/// The sinks' side of the pipeline, as the source sees it.
pub struct Outlets {
    pub queues: Vec<(&'static str, mpsc::Sender<Arc<Batch>>)>,
    pub board: Arc<AckBoard>,
    pub status: Arc<crate::ops::Status>,
    /// On shutdown, how long to wait for the sinks to acknowledge what was read.
    pub drain_timeout: Duration,
}

/// How the source ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Shutdown was requested.
    Shutdown,
    /// The flush position reached the requested stop LSN.
    ReachedStopLsn(Lsn),
}

pub struct Source {
    config: PostgresConfig,
    tables: Vec<TableRule>,
    mapper: Mapper,
    outlets: Outlets,
    checkpoint: Checkpoint,
    /// Sequence number the next sealed batch gets.
    next_seq: Seq,
    /// Highest WAL position received (reported as `write`).
    received: Lsn,
    stop_at: Option<Lsn>,
    shutdown: CancellationToken,
    /// Whether the slot is known to exist (a session streamed from it, or another process
    /// holds it): from then on a missing slot is an error, not something to create.
    slot_known: bool,
    /// Totals since start, for the log.
    transactions: u64,
    events: u64,
    /// Commit time of the transaction being read (from its BEGIN).
    txn_commit_time: i64,
}

/// A batch sealed but not yet in every sink's queue.
struct Pending {
    batch: Arc<Batch>,
    next_sink: usize,
}

impl Source {
    pub fn new(
        config: PostgresConfig,
        tables: Vec<TableRule>,
        mapper: Mapper,
        outlets: Outlets,
        stop_at: Option<Lsn>,
        shutdown: CancellationToken,
    ) -> Source {
        Source {
            config,
            tables,
            mapper,
            outlets,
            checkpoint: Checkpoint::default(),
            next_seq: 1,
            received: Lsn::ZERO,
            stop_at,
            shutdown,
            slot_known: false,
            transactions: 0,
            events: 0,
            txn_commit_time: 0,
        }
    }

    /// Streams until shutdown (or the stop LSN), reconnecting after transient failures.
    pub async fn run(mut self) -> Result<Stopped, SourceError> {
        let mut backoff = FIRST_BACKOFF;
        let mut waiting_for_slot = false;
        loop {
            let started = Instant::now();
            let err = match self.session(&mut waiting_for_slot).await {
                Ok(stopped) => {
                    self.outlets.status.not_streaming("stopped");
                    return Ok(stopped);
                }
                Err(e) => e,
            };
            if self.shutdown.is_cancelled() {
                self.outlets.status.not_streaming("stopped");
                return Ok(Stopped::Shutdown);
            }
            if !err.is_retryable() {
                self.outlets.status.not_streaming(format!("failed: {err}"));
                return Err(err);
            }
            if started.elapsed() >= HEALTHY_SESSION {
                backoff = FIRST_BACKOFF;
            }
            let retry_in = if err.is_slot_in_use() {
                if !waiting_for_slot {
                    tracing::warn!(slot = %self.config.slot, error = %err, retry_every = ?SLOT_RETRY,
                        "replication slot is in use by another process (another pglive?); standing by until it is released");
                }
                self.outlets.status.not_streaming(format!(
                    "standing by: replication slot {} is in use by another process ({err})",
                    self.config.slot
                ));
                waiting_for_slot = true;
                // The slot exists: should it disappear (teardown), that is an error, not
                // something to create again.
                self.slot_known = true;
                backoff = FIRST_BACKOFF;
                SLOT_RETRY
            } else {
                waiting_for_slot = false;
                tracing::warn!(error = %err, retry_in = ?backoff,
                    "replication interrupted; reconnecting and resuming from the slot");
                self.outlets
                    .status
                    .not_streaming(format!("reconnecting: {err}"));
                backoff
            };
            tokio::select! {
                _ = tokio::time::sleep(retry_in) => {}
                _ = self.shutdown.cancelled() => {
                    self.outlets.status.not_streaming("stopped");
                    return Ok(Stopped::Shutdown);
                }
            }
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    async fn session(&mut self, waiting_for_slot: &mut bool) -> Result<Stopped, SourceError> {
        // Nothing is confirmed before streaming starts: a shutdown meanwhile (a connection
        // attempt, slot creation waiting for open transactions) simply ends the session.
        let shutdown = self.shutdown.clone();
        let connected = tokio::select! {
            c = self.connect(*waiting_for_slot) => c?,
            _ = shutdown.cancelled() => return Ok(Stopped::Shutdown),
        };
        let (control, conn, status_interval, read_timeout) = connected;
        let cfg = &self.config;
        self.slot_known = true;
        if *waiting_for_slot {
            tracing::info!(slot = %cfg.slot, "replication slot released; taking over");
            *waiting_for_slot = false;
        }
        tracing::info!(slot = %cfg.slot, publication = %cfg.publication, server = %cfg.conn,
            version = conn.server_version(), "streaming");
        self.outlets.status.streaming();
        self.mapper.reset();
        self.stream_session(conn, &control, status_interval, read_timeout)
            .await
    }

    /// Connects both sessions and starts replication. A standby (`standing_by`) first checks
    /// that the slot is free over the control session, so that it does not open a
    /// replication session every few seconds only to be refused.
    async fn connect(
        &mut self,
        standing_by: bool,
    ) -> Result<(Client, ReplicationConnection, Duration, Duration), SourceError> {
        let cfg = &self.config;
        let control = catalog::connect(&cfg.conn, cfg.connect_timeout).await?;
        if standing_by
            && let Some(pid) = catalog::slot(&control, &cfg.slot)
                .await?
                .and_then(|s| s.active_pid)
        {
            return Err(SourceError::SlotHeld {
                slot: cfg.slot.clone(),
                pid,
            });
        }
        let recreate = cfg.on_slot_lost == OnSlotLost::Recreate;
        if cfg.auto_setup {
            let missing_slot = match (self.slot_known, recreate) {
                (true, _) => catalog::MissingSlot::Fail,
                // Made below with a refetch marker, so that a slot whose recreation failed
                // after its drop (killed, timed out) still starts with the `*` events.
                (false, true) => catalog::MissingSlot::Leave,
                (false, false) => catalog::MissingSlot::Create,
            };
            for change in catalog::ensure_setup(
                &control,
                &cfg.publication,
                &cfg.slot,
                &self.tables,
                missing_slot,
            )
            .await?
            {
                tracing::info!("{change}");
            }
        }
        match catalog::slot(&control, &self.config.slot).await? {
            Some(slot) if slot.is_lost() => {
                self.slot_lost(&control, slot.confirmed_flush).await?;
            }
            None if self.config.auto_setup && recreate && !self.slot_known => {
                tracing::info!(slot = %self.config.slot,
                    "creating the replication slot with a refetch marker (postgres.on_slot_lost = \"recreate\"): every mapped channel first gets an event of type \"*\"");
                self.make_slot(&control).await?;
            }
            _ => {}
        }
        let cfg = &self.config;
        let sender_timeout = catalog::wal_sender_timeout(&control).await?;
        let status_interval = match sender_timeout {
            Some(t) => cfg.status_interval.min(t / 2),
            None => cfg.status_interval,
        };
        // Silence longer than this means the server or the network is gone: we ask for a
        // keepalive at every status update, so a live server answers well within it.
        let read_timeout = status_interval
            .saturating_mul(3)
            .max(sender_timeout.unwrap_or_default().saturating_mul(2));

        let mut conn =
            ReplicationConnection::connect(&cfg.conn, cfg.connect_timeout, cfg.max_message_bytes)
                .await?;
        let started = tokio::time::timeout(
            cfg.connect_timeout,
            conn.start_replication(&cfg.slot, &cfg.publication, Lsn::ZERO),
        )
        .await
        .map_err(|_| SourceError::Timeout {
            what: "starting replication",
            after: cfg.connect_timeout,
        })?;
        if let Err(e) = started {
            // Invalidated since it was looked at? Say so rather than pass on the server's terse
            // refusal (whose wording varies between versions).
            if matches!(&e, SourceError::Server(pg) if pg.code == NOT_IN_PREREQUISITE_STATE)
                && let Some(slot) = catalog::slot(&control, &cfg.slot).await?
                && slot.is_lost()
            {
                // Invalidated between the check and START_REPLICATION.
                return Err(match cfg.on_slot_lost {
                    OnSlotLost::Fail => SourceError::SlotLost {
                        slot: cfg.slot.clone(),
                        confirmed: slot.confirmed_flush,
                    },
                    OnSlotLost::Recreate => SourceError::SlotInvalidated(cfg.slot.clone()),
                });
            }
            return Err(e);
        }
        Ok((control, conn, status_interval, read_timeout))
    }

    /// The slot was invalidated: with `on_slot_lost = "fail"`, the error that says so; with
    /// `"recreate"`, a new slot whose stream starts with the recreation marker (which becomes
    /// the `*` events, see [`Source::handle_xlog`]).
    async fn slot_lost(
        &mut self,
        control: &Client,
        confirmed: Option<Lsn>,
    ) -> Result<(), SourceError> {
        let slot = self.config.slot.clone();
        if self.config.on_slot_lost == OnSlotLost::Fail {
            return Err(SourceError::SlotLost { slot, confirmed });
        }
        let since = confirmed.map(|l| l.to_string()).unwrap_or_default();
        tracing::error!(slot = %slot, confirmed = %since,
            "replication slot was invalidated (wal_status lost: it held more WAL than max_slot_wal_keep_size); \
             the changes committed after its confirmed position are lost. Recreating it (postgres.on_slot_lost = \"recreate\") \
             and telling clients to refetch: every mapped channel gets an event of type \"*\" before any new event");
        self.outlets.status.not_streaming(format!(
            "recreating replication slot {slot}: it was invalidated (wal_status lost)"
        ));
        self.make_slot(control).await?;
        self.outlets.status.slot_recreated();
        Ok(())
    }

    /// Makes the slot anew (dropping it if it is lost), starting at the refetch marker.
    async fn make_slot(&mut self, control: &Client) -> Result<(), SourceError> {
        let slot = self.config.slot.clone();
        match catalog::recreate_slot(control, &slot, &self.config.publication).await {
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
            }
            Err(e) => match catalog::slot(control, &slot).await? {
                // Another process (a standby pglive?) recreated it meanwhile, or only the
                // advance to the marker failed: the slot is usable, stream from it.
                Some(info) if !info.is_lost() => {
                    tracing::warn!(slot = %slot, error = %e,
                        "recreating the replication slot did not finish here, but the slot is usable again; streaming from it");
                }
                // Dropped, not made again (the creation timed out waiting for running
                // transactions, say): the next attempt makes it, marker included.
                None => {
                    self.slot_known = false;
                    tracing::warn!(slot = %slot, error = %e,
                        "making the replication slot failed; trying again");
                    return Err(e);
                }
                _ => return Err(e),
            },
        }
        // Positions of the old slot mean nothing for the new one, and reporting one would move
        // its confirmed position backwards. Batches in flight are still delivered; their
        // acknowledgements simply confirm nothing.
        self.checkpoint = Checkpoint::default();
        self.received = Lsn::ZERO;
        Ok(())
    }

    /// Streams one session until shutdown, the stop position or an error.
    async fn stream_session(
        &mut self,
        mut conn: ReplicationConnection,
        control: &Client,
        status_interval: Duration,
        read_timeout: Duration,
    ) -> Result<Stopped, SourceError> {
        let mut batch: Vec<LiveEvent> = Vec::with_capacity(MAX_BATCH_EVENTS);
        let mut batch_bytes = 0usize;
        let mut pending: Option<Pending> = None;
        let result = self
            .stream(
                &mut conn,
                control,
                &mut batch,
                &mut batch_bytes,
                &mut pending,
                status_interval,
                read_timeout,
            )
            .await;
        match result {
            Ok(stopped) => {
                // Hand over what was read, wait for the sinks, confirm, end the stream cleanly.
                self.outlets.status.not_streaming("stopping");
                let deadline = Instant::now() + self.outlets.drain_timeout;
                let delivered = self
                    .deliver_rest(&mut batch, &mut pending, Some(deadline))
                    .await;
                let last = self.next_seq - 1;
                // A sink that stopped (failed) will acknowledge nothing more.
                let sink_gone = |o: &Outlets| o.queues.iter().any(|(_, q)| q.is_closed());
                while delivered
                    && self.outlets.board.min_acked() < last
                    && !sink_gone(&self.outlets)
                    && Instant::now() < deadline
                {
                    // Keep the session alive (and the position current) while sinks drain.
                    let step = deadline.min(Instant::now() + status_interval);
                    let board = self.outlets.board.clone();
                    if tokio::time::timeout_at(step, board.changed())
                        .await
                        .is_err()
                    {
                        self.send_status(&mut conn, false).await?;
                    }
                }
                let flush = self.advance();
                let finish = FINISH_TIMEOUT.min(self.outlets.drain_timeout / 6);
                let last_status = conn.send_status(Status {
                    write: self.received,
                    flush,
                    reply_requested: false,
                });
                tokio::time::timeout(finish, last_status)
                    .await
                    .map_err(|_| SourceError::Timeout {
                        what: "sending the final status update",
                        after: finish,
                    })??;
                if let Err(e) = conn.finish(finish).await {
                    tracing::debug!(error = %e, "ending the replication stream");
                }
                tracing::info!(flush = %flush, transactions = self.transactions, events = self.events,
                    "replication stopped; final position confirmed");
                Ok(stopped)
            }
            Err(e) => {
                self.outlets
                    .status
                    .not_streaming(format!("reconnecting: {e}"));
                // Everything read belongs to committed transactions: hand it to the sinks so the
                // batch numbering stays contiguous for every sink, then reconnect.
                let shutdown = self.shutdown.clone();
                tokio::select! {
                    _ = self.deliver_rest(&mut batch, &mut pending, None) => {}
                    // Stopping: nothing more will be confirmed, so nothing is lost by dropping.
                    _ = shutdown.cancelled() => {}
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn stream(
        &mut self,
        conn: &mut ReplicationConnection,
        control: &Client,
        batch: &mut Vec<LiveEvent>,
        batch_bytes: &mut usize,
        pending: &mut Option<Pending>,
        status_interval: Duration,
        read_timeout: Duration,
    ) -> Result<Stopped, SourceError> {
        let mut tick = tokio::time::interval(status_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_rx = Instant::now();
        let mut last_status = Instant::now();
        let mut reported = Lsn::ZERO;
        // A status update to send at a time (and whether to ask for a keepalive back).
        let mut status_due: Option<(Instant, bool)> = None;
        // Owned handles, so the select below borrows none of `self`.
        let shutdown = self.shutdown.clone();
        let board = self.outlets.board.clone();
        let queues = self.outlets.queues.clone();
        loop {
            // Work through whatever is buffered, unless a batch is waiting for queue space.
            while pending.is_none() {
                let Some(frame) = conn.buffered_frame()? else {
                    break;
                };
                match ReplicationConnection::parse_replication(frame)? {
                    None => {}
                    Some(ReplicationMessage::XLogData {
                        wal_start,
                        wal_end,
                        data,
                    }) => {
                        self.outlets.status.saw_server_end(wal_end);
                        let before = batch.len();
                        self.handle_xlog(&data, wal_start, control, batch).await?;
                        *batch_bytes += batch[before..].iter().map(|e| e.json.len()).sum::<usize>();
                    }
                    Some(ReplicationMessage::Keepalive {
                        wal_end,
                        reply_requested,
                    }) => {
                        self.received = self.received.max(wal_end);
                        self.outlets.status.saw_server_end(wal_end);
                        // Between transactions, everything up to the walsender's position has
                        // been received: confirmable once what came before it is delivered.
                        if !self.mapper.in_transaction() {
                            let seq = self.boundary_seq(batch);
                            self.checkpoint.record(seq, wal_end, None);
                        }
                        if reply_requested {
                            reported = self.send_status(conn, false).await?;
                            last_status = Instant::now();
                            status_due = None;
                        }
                    }
                }
                if batch.len() >= MAX_BATCH_EVENTS || *batch_bytes >= MAX_BATCH_BYTES {
                    *pending = Some(self.seal(batch));
                    *batch_bytes = 0;
                }
            }
            if pending.is_none() && !batch.is_empty() {
                // Nothing more is buffered: deliver now rather than wait for a full batch.
                *pending = Some(self.seal(batch));
                *batch_bytes = 0;
            }
            if let Some(stop) = self.stop_at {
                let flushed = self.advance();
                if flushed >= stop {
                    return Ok(Stopped::ReachedStopLsn(flushed));
                }
                // Caught up with everything received but short of the stop position: ask the
                // server where it is (its keepalive carries the position it has sent up to).
                let idle = pending.is_none()
                    && !self.mapper.in_transaction()
                    && self.checkpoint.waiting() == 0;
                if idle && status_due.is_none() {
                    status_due = Some((last_status + MIN_STATUS_GAP, true));
                }
            }

            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(Stopped::Shutdown),
                sent = reserve(&queues, pending.as_ref()), if pending.is_some() => {
                    let p = pending.as_mut().expect("guarded by the select condition");
                    sent?.send(p.batch.clone());
                    self.outlets.status.sink(p.next_sink).queued(p.batch.events.len());
                    p.next_sink += 1;
                    if p.next_sink == queues.len() {
                        *pending = None;
                    }
                }
                _ = board.changed() => {
                    let flush = self.advance();
                    if flush > reported && status_due.is_none() {
                        // Report promptly, but at most every MIN_STATUS_GAP.
                        status_due = Some((last_status + MIN_STATUS_GAP, false));
                    }
                }
                _ = tokio::time::sleep_until(status_due.map(|(at, _)| at).unwrap_or(last_status)), if status_due.is_some() => {
                    let reply = status_due.take().is_some_and(|(_, reply)| reply);
                    reported = self.send_status(conn, reply).await?;
                    last_status = Instant::now();
                }
                _ = tick.tick() => {
                    // Also asks for a keepalive: its position lets an idle slot advance, and
                    // its arrival proves the connection is alive.
                    reported = self.send_status(conn, true).await?;
                    last_status = Instant::now();
                }
                read = conn.fill(), if pending.is_none() => {
                    read?;
                    last_rx = Instant::now();
                }
                _ = tokio::time::sleep_until(last_rx + read_timeout), if pending.is_none() => {
                    return Err(SourceError::Timeout { what: "waiting for data from the server", after: read_timeout });
                }
            }
        }
    }

    async fn handle_xlog(
        &mut self,
        data: &[u8],
        wal_start: Lsn,
        control: &Client,
        out: &mut Vec<LiveEvent>,
    ) -> Result<(), SourceError> {
        let msg = decode::decode(data).map_err(|source| SourceError::Decode {
            lsn: wal_start,
            source,
        })?;
        if let LogicalMessage::Begin(b) = &msg {
            self.txn_commit_time = b.commit_time;
        }
        if let LogicalMessage::Relation(rel) = &msg {
            let pk = if self.mapper.needs_primary_key(rel) {
                let timeout = self.config.connect_timeout;
                let lookup = catalog::primary_key(control, &rel.namespace, &rel.name);
                Some(tokio::time::timeout(timeout, lookup).await.map_err(|_| {
                    SourceError::Timeout {
                        what: "looking up a primary key",
                        after: timeout,
                    }
                })??)
            } else {
                None
            };
            self.mapper.relation(rel, pk.as_deref());
            return Ok(());
        }
        let before = out.len();
        if let LogicalMessage::Message {
            transactional: true,
            prefix: catalog::SLOT_RECREATED_PREFIX,
            content,
            ..
        } = &msg
            && *content == self.config.slot.as_bytes()
        {
            self.mapper
                .refetch(out)
                .map_err(|source| SourceError::Map {
                    lsn: wal_start,
                    source,
                })?;
            tracing::info!(slot = %self.config.slot, channels = out.len() - before,
                "the slot was recreated: sending every mapped channel an event of type \"*\" (refetch)");
        }
        let step = self
            .mapper
            .handle(&msg, out)
            .map_err(|source| SourceError::Map {
                lsn: wal_start,
                source,
            })?;
        self.events += (out.len() - before) as u64;
        if let Step::Committed { end_lsn } = step {
            self.transactions += 1;
            self.received = self.received.max(end_lsn);
            let seq = self.boundary_seq(out);
            self.checkpoint
                .record(seq, end_lsn, Some(self.txn_commit_time));
        }
        Ok(())
    }

    /// The batch a position recorded now depends on: the open batch if it holds events,
    /// otherwise the last sealed one.
    fn boundary_seq(&self, open: &[LiveEvent]) -> Seq {
        if open.is_empty() {
            self.next_seq - 1
        } else {
            self.next_seq
        }
    }

    fn seal(&mut self, batch: &mut Vec<LiveEvent>) -> Pending {
        let seq = self.next_seq;
        self.next_seq += 1;
        Pending {
            batch: Arc::new(Batch {
                seq,
                events: std::mem::replace(batch, Vec::with_capacity(MAX_BATCH_EVENTS)),
            }),
            next_sink: 0,
        }
    }

    /// Puts the open and pending batches into every sink's queue. Returns false if a sink is
    /// gone or the deadline passed first.
    async fn deliver_rest(
        &mut self,
        batch: &mut Vec<LiveEvent>,
        pending: &mut Option<Pending>,
        deadline: Option<Instant>,
    ) -> bool {
        if !batch.is_empty() {
            if let Some(p) = pending.take()
                && !self.deliver(p, deadline).await
            {
                return false;
            }
            *pending = Some(self.seal(batch));
        }
        match pending.take() {
            Some(p) => self.deliver(p, deadline).await,
            None => true,
        }
    }

    async fn deliver(&self, mut p: Pending, deadline: Option<Instant>) -> bool {
        while p.next_sink < self.outlets.queues.len() {
            let reserve = reserve(&self.outlets.queues, Some(&p));
            let permit = match deadline {
                Some(d) => match tokio::time::timeout_at(d, reserve).await {
                    Ok(r) => r,
                    Err(_) => return false,
                },
                None => reserve.await,
            };
            match permit {
                Ok(permit) => {
                    permit.send(p.batch.clone());
                    self.outlets
                        .status
                        .sink(p.next_sink)
                        .queued(p.batch.events.len());
                }
                Err(_) => return false,
            }
            p.next_sink += 1;
        }
        true
    }

    /// Moves the checkpoint over what every sink has acknowledged; publishes the result.
    fn advance(&mut self) -> Lsn {
        let flush = self.checkpoint.advance(self.outlets.board.min_acked());
        let status = &self.outlets.status;
        status.set_flush(flush);
        status.set_oldest_unconfirmed(self.checkpoint.oldest_commit());
        flush
    }

    async fn send_status(
        &mut self,
        conn: &mut ReplicationConnection,
        reply_requested: bool,
    ) -> Result<Lsn, SourceError> {
        let flush = self.advance();
        conn.send_status(Status {
            write: self.received.max(flush),
            flush,
            reply_requested,
        })
        .await?;
        tracing::trace!(flush = %flush, write = %self.received, "status update");
        Ok(flush)
    }
}

/// Waits for room in the queue of the next sink that still needs `pending`.
async fn reserve<'a>(
    queues: &'a [(&'static str, mpsc::Sender<Arc<Batch>>)],
    pending: Option<&Pending>,
) -> Result<mpsc::Permit<'a, Arc<Batch>>, SourceError> {
    let Some(p) = pending else {
        return std::future::pending().await;
    };
    let (name, queue) = &queues[p.next_sink];
    queue
        .reserve()
        .await
        .map_err(|_| SourceError::SinkGone((*name).to_owned()))
}

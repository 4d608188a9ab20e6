//! The pipeline: reads the replication stream, decodes and maps each message into the
//! [`Outbox`](outbox::Outbox), which hands batches to every sink's bounded queue (a full queue
//! stops reading: PostgreSQL keeps the WAL), and reports the checkpoint's flush position in
//! status updates — promptly after acknowledgements, when the server asks, and periodically.
//! Reconnects with backoff and resumes from the slot; while another process holds the slot,
//! stands by; a slot PostgreSQL invalidated ends the pipeline or, with
//! `postgres.on_slot_lost = "recreate"`, is made anew and starts with `*` events
//! ([`setup`]). Reports to the shared status: streaming or why not, the positions it sees and
//! confirms, the events it queues for each sink.
//!
//! One batch's path: [`source::stream`](crate::source::stream) yields a message →
//! [`Pipeline::apply`] decodes it and the [`Mapper`] appends its events to the outbox's open
//! batch → the outbox seals the batch and hands it to each sink's queue → each sink's
//! [driver](crate::sink::driver) delivers it and acknowledges it on the
//! [`AckBoard`](crate::checkpoint::AckBoard) → the outbox's checkpoint advances → the stream
//! sends the new flush position to PostgreSQL.

pub mod outbox;
mod setup;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::PostgresConfig;
use crate::decode::{LogicalMessage, Relation};
use crate::lsn::Lsn;
use crate::map::{Catalogued, Mapper, Step, TableRule};
use crate::shutdown::ShutdownBudget;
use crate::source::SourceError;
use crate::source::catalog;
use crate::source::stream::{Message, ReplicationStream, Wake};
use crate::status::Status;
use outbox::Outbox;
use setup::{Setup, SlotState};

/// A session that streamed this long resets the backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);
/// While another process holds the slot, try again this often: a standby takes over within
/// about this long once the slot is free.
const SLOT_RETRY: Duration = Duration::from_secs(2);

/// How the pipeline ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Shutdown was requested.
    Shutdown,
    /// The flush position reached the requested stop LSN.
    ReachedStopLsn(Lsn),
}

pub struct Pipeline {
    config: PostgresConfig,
    tables: Vec<TableRule>,
    mapper: Mapper,
    outbox: Outbox,
    status: Arc<Status>,
    budget: ShutdownBudget,
    stop_at: Option<Lsn>,
    shutdown: CancellationToken,
    slot: SlotState,
    /// Totals since start, for the log.
    transactions: u64,
    events: u64,
    /// Commit time of the transaction being read (from its BEGIN).
    txn_commit_time: i64,
}

/// What the pipeline is made of.
pub struct Parts {
    pub config: PostgresConfig,
    pub tables: Vec<TableRule>,
    pub mapper: Mapper,
    pub outbox: Outbox,
    pub status: Arc<Status>,
    pub budget: ShutdownBudget,
}

impl Pipeline {
    pub fn new(parts: Parts, stop_at: Option<Lsn>, shutdown: CancellationToken) -> Pipeline {
        Pipeline {
            config: parts.config,
            tables: parts.tables,
            mapper: parts.mapper,
            outbox: parts.outbox,
            status: parts.status,
            budget: parts.budget,
            stop_at,
            shutdown,
            slot: SlotState::default(),
            transactions: 0,
            events: 0,
            txn_commit_time: 0,
        }
    }

    /// Streams until shutdown (or the stop LSN), reconnecting after transient failures.
    pub async fn run(mut self) -> Result<Stopped, SourceError> {
        let mut backoff = Backoff::new(self.config.max_backoff);
        let mut standing_by = false;
        loop {
            let started = Instant::now();
            let err = match self.session(&mut standing_by).await {
                Ok(stopped) => return Ok(self.stopped(stopped)),
                Err(e) => e,
            };
            if self.shutdown.is_cancelled() {
                return Ok(self.stopped(Stopped::Shutdown));
            }
            if !err.is_retryable() {
                self.status.not_streaming(format!("failed: {err}"));
                return Err(err);
            }
            if started.elapsed() >= HEALTHY_SESSION {
                backoff.reset();
            }
            let retry_in = if err.is_slot_in_use() {
                self.stand_by(&err, &mut standing_by);
                backoff.reset();
                SLOT_RETRY
            } else {
                standing_by = false;
                let retry_in = backoff.next_delay();
                tracing::warn!(error = %err, retry_in = ?retry_in,
                    "replication interrupted; reconnecting and resuming from the slot");
                self.status.not_streaming(format!("reconnecting: {err}"));
                retry_in
            };
            tokio::select! {
                _ = tokio::time::sleep(retry_in) => {}
                _ = self.shutdown.cancelled() => return Ok(self.stopped(Stopped::Shutdown)),
            }
        }
    }

    fn stopped(&self, stopped: Stopped) -> Stopped {
        self.status.not_streaming("stopped");
        stopped
    }

    /// Another process holds the slot: say so (once), and wait for it.
    fn stand_by(&mut self, err: &SourceError, standing_by: &mut bool) {
        let slot = &self.config.slot;
        if !*standing_by {
            tracing::warn!(slot = %slot, error = %err, retry_every = ?SLOT_RETRY,
                "replication slot is in use by another process (another pglive?); standing by until it is released");
        }
        self.status.not_streaming(format!(
            "standing by: replication slot {slot} is in use by another process ({err})"
        ));
        *standing_by = true;
        // The slot exists: should it disappear (teardown), that is an error, not something
        // to create again.
        self.slot.known = true;
    }

    /// One session: connect, stream until shutdown, the stop position or an error.
    async fn session(&mut self, standing_by: &mut bool) -> Result<Stopped, SourceError> {
        let setup = Setup {
            pg: &self.config,
            tables: &self.tables,
            status: &self.status,
        };
        // Nothing is confirmed before streaming starts: a shutdown meanwhile (a connection
        // attempt, slot creation waiting for open transactions) simply ends the session.
        let shutdown = self.shutdown.clone();
        let opened = tokio::select! {
            s = setup.open(&mut self.slot, *standing_by) => s,
            _ = shutdown.cancelled() => return Ok(Stopped::Shutdown),
        };
        if std::mem::take(&mut self.slot.made) {
            self.outbox.forget_positions();
        }
        let session = opened?;
        let cfg = &self.config;
        if std::mem::take(standing_by) {
            tracing::info!(slot = %cfg.slot, "replication slot released; taking over");
        }
        tracing::info!(slot = %cfg.slot, publication = %cfg.publication, server = %cfg.conn,
            version = session.stream.server_version(), "streaming");
        self.status.streaming();
        self.mapper.reset();
        for (oid, schema, name) in &session.tables {
            self.mapper.knows(*oid, schema, name);
        }
        let mut stream = session.stream;
        match self.stream(&mut stream, &session.control).await {
            Ok(stopped) => self.finish(stream, stopped).await,
            Err(e) => {
                self.status.not_streaming(format!("reconnecting: {e}"));
                // Everything read belongs to committed transactions: hand it to the sinks so
                // the batch numbering stays contiguous for every sink, then reconnect.
                tokio::select! {
                    _ = self.outbox.hand_out_all(None) => {}
                    // Stopping: nothing more will be confirmed, so nothing is lost by dropping.
                    _ = shutdown.cancelled() => {}
                }
                Err(e)
            }
        }
    }

    /// The streaming loop of one session.
    async fn stream(
        &mut self,
        stream: &mut ReplicationStream,
        control: &Client,
    ) -> Result<Stopped, SourceError> {
        let shutdown = self.shutdown.clone();
        let board = self.outbox.board();
        loop {
            // Work through whatever is buffered, unless a batch waits for queue space.
            while !self.outbox.is_blocked() {
                let Some(message) = stream.buffered()? else {
                    break;
                };
                self.apply(message, stream, control).await?;
            }
            self.outbox.flush();
            if let Some(stop) = self.stop_at {
                let flushed = self.outbox.advance();
                if flushed >= stop {
                    return Ok(Stopped::ReachedStopLsn(flushed));
                }
                // Caught up with everything received but short of the stop position: ask the
                // server where it is.
                if self.outbox.is_idle() && !self.mapper.in_transaction() {
                    stream.ask_position();
                }
            }
            let blocked = self.outbox.is_blocked();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(Stopped::Shutdown),
                handed = self.outbox.hand_out(), if blocked => handed?,
                _ = board.changed() => stream.flush_moved(self.outbox.advance()),
                wake = stream.wait(!blocked) => match wake? {
                    Wake::Read => {}
                    Wake::StatusDue { reply } => {
                        stream.send_status(self.outbox.advance(), reply).await?;
                    }
                },
            }
        }
    }

    /// Takes in one message from the server.
    async fn apply(
        &mut self,
        message: Message,
        stream: &mut ReplicationStream,
        control: &Client,
    ) -> Result<(), SourceError> {
        match message {
            Message::Wal {
                wal_start,
                wal_end,
                data,
            } => {
                self.status.saw_server_end(wal_end);
                let msg = Message::decode(wal_start, &data)?;
                if let Some(end_lsn) = self.map(&msg, wal_start, control).await? {
                    stream.received(end_lsn);
                    self.outbox.record(end_lsn, Some(self.txn_commit_time));
                }
            }
            Message::Keepalive {
                wal_end,
                reply_requested,
            } => {
                self.status.saw_server_end(wal_end);
                // Between transactions, everything up to the walsender's position has been
                // received: confirmable once what came before it is delivered.
                if !self.mapper.in_transaction() {
                    self.outbox.record(wal_end, None);
                }
                if reply_requested {
                    stream.send_status(self.outbox.advance(), false).await?;
                }
            }
        }
        Ok(())
    }

    /// Maps one decoded message into the outbox. Returns the end of the transaction it
    /// commits, if it is a COMMIT.
    async fn map(
        &mut self,
        msg: &LogicalMessage<'_>,
        wal_start: Lsn,
        control: &Client,
    ) -> Result<Option<Lsn>, SourceError> {
        let map_error = |source| SourceError::Map {
            lsn: wal_start,
            source,
        };
        match msg {
            LogicalMessage::Begin(b) => self.txn_commit_time = b.commit_time,
            LogicalMessage::Relation(rel) => {
                let catalogued = if self.mapper.is_mapped(rel) {
                    Some(self.catalogued(control, rel).await?)
                } else {
                    None
                };
                if let Some(r) = self.mapper.relation(rel, catalogued.as_ref()) {
                    tracing::warn!(table = %r.configured, now = %r.now, channel = %r.channel,
                        "a mapped table was renamed (ALTER TABLE … RENAME): its changes still stream to its channel, as the same relation; the configuration names the old name, which will not exist when pglive next starts: update the table's `name`");
                }
                return Ok(None);
            }
            _ => {}
        }
        let from = self.outbox.open_batch().len();
        if self.is_refetch_marker(msg) {
            self.mapper
                .refetch(self.outbox.open_batch())
                .map_err(map_error)?;
            tracing::info!(slot = %self.config.slot, channels = self.outbox.open_batch().len() - from,
                "the slot was recreated: sending every mapped channel an event of type \"*\" (refetch)");
        }
        let step = self
            .mapper
            .handle(msg, self.outbox.open_batch())
            .map_err(map_error)?;
        self.events += (self.outbox.open_batch().len() - from) as u64;
        self.outbox.appended(from);
        match step {
            Step::Committed { end_lsn } => {
                self.transactions += 1;
                Ok(Some(end_lsn))
            }
            Step::Continue => Ok(None),
        }
    }

    /// The marker a recreated slot starts at: its stream begins with the `*` events.
    fn is_refetch_marker(&self, msg: &LogicalMessage<'_>) -> bool {
        matches!(msg, LogicalMessage::Message {
            transactional: true,
            prefix: catalog::SLOT_RECREATED_PREFIX,
            content,
            ..
        } if *content == self.config.slot.as_bytes())
    }

    /// A mapped relation's keys and domains, from the catalog.
    async fn catalogued(
        &self,
        control: &Client,
        rel: &Relation,
    ) -> Result<Catalogued, SourceError> {
        let timeout = self.config.connect_timeout;
        let types: Vec<u32> = rel.columns.iter().map(|c| c.type_oid).collect();
        tokio::time::timeout(timeout, catalog::relation_keys(control, rel.oid, &types))
            .await
            .map_err(|_| SourceError::Timeout {
                what: "looking up a table's keys",
                after: timeout,
            })?
    }

    /// Stopping: hands over what was read, waits (within the budget) for the sinks to
    /// acknowledge it, confirms, and ends the stream cleanly.
    async fn finish(
        &mut self,
        mut stream: ReplicationStream,
        stopped: Stopped,
    ) -> Result<Stopped, SourceError> {
        self.status.not_streaming("stopping");
        let deadline = Instant::now() + self.budget.source_drain();
        let board = self.outbox.board();
        let mut waiting = self.outbox.hand_out_all(Some(deadline)).await;
        // A sink that stopped (failed) will acknowledge nothing more.
        while waiting && !self.outbox.all_acknowledged() && !self.outbox.sink_gone() {
            // Keep the session alive (and the position current) while sinks drain.
            tokio::select! {
                _ = board.changed() => {}
                wake = stream.wait(false) => {
                    if let Wake::StatusDue { reply } = wake? {
                        stream.send_status(self.outbox.advance(), reply).await?;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => waiting = false,
            }
        }
        let flush = self.outbox.advance();
        stream.finish(flush, self.budget.stream_end()).await?;
        tracing::info!(flush = %flush, transactions = self.transactions, events = self.events,
            "replication stopped; final position confirmed");
        Ok(stopped)
    }
}

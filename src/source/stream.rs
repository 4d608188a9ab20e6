//! The replication stream of one session: the messages the server sends, and the status
//! updates pglive sends back. Reading is cancel-safe (so it may sit in a `select!`), a server
//! silent for longer than the read timeout is an error, and status updates are throttled and
//! never move the confirmed position backwards.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::SourceError;
use super::conn::{ReplicationConnection, ReplicationMessage, Status};
use crate::decode::{self, LogicalMessage};
use crate::lsn::Lsn;

/// Status updates caused by progress are sent at most this often.
const MIN_STATUS_GAP: Duration = Duration::from_millis(100);

/// A message from the server.
pub enum Message {
    /// One pgoutput message, at `wal_start`.
    Wal {
        wal_start: Lsn,
        wal_end: Lsn,
        data: Bytes,
    },
    /// The server's keepalive: it has sent everything up to `wal_end`.
    Keepalive { wal_end: Lsn, reply_requested: bool },
}

/// Why [`ReplicationStream::wait`] returned.
pub enum Wake {
    /// More was read: see [`ReplicationStream::buffered`].
    Read,
    /// A status update is due: send one, asking for a keepalive back if `reply`.
    StatusDue { reply: bool },
}

impl Message {
    /// Decodes a WAL message's pgoutput contents.
    pub fn decode(wal_start: Lsn, data: &[u8]) -> Result<LogicalMessage<'_>, SourceError> {
        decode::decode(data).map_err(|source| SourceError::Decode {
            lsn: wal_start,
            source,
        })
    }
}

pub struct ReplicationStream {
    conn: ReplicationConnection,
    /// Highest WAL position received (reported as `write`).
    received: Lsn,
    /// Highest flush position reported.
    reported: Lsn,
    last_rx: Instant,
    last_status: Instant,
    read_timeout: Duration,
    /// The periodic status update, which also asks for a keepalive: its position lets an idle
    /// slot advance, and its arrival proves the connection is alive.
    tick: Interval,
    /// A status update to send at a time, and whether to ask for a keepalive back.
    due: Option<(Instant, bool)>,
}

impl ReplicationStream {
    /// A started stream: `status_interval` paces the status updates; silence longer than
    /// `read_timeout` ends the session.
    pub fn new(
        conn: ReplicationConnection,
        status_interval: Duration,
        read_timeout: Duration,
    ) -> ReplicationStream {
        let mut tick = tokio::time::interval(status_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ReplicationStream {
            conn,
            received: Lsn::ZERO,
            reported: Lsn::ZERO,
            last_rx: Instant::now(),
            last_status: Instant::now(),
            read_timeout,
            tick,
            due: None,
        }
    }

    pub fn server_version(&self) -> &str {
        self.conn.server_version()
    }

    /// The next message already received, if any.
    pub fn buffered(&mut self) -> Result<Option<Message>, SourceError> {
        while let Some(frame) = self.conn.buffered_frame()? {
            match ReplicationConnection::parse_replication(frame)? {
                None => {}
                Some(ReplicationMessage::XLogData {
                    wal_start,
                    wal_end,
                    data,
                }) => {
                    return Ok(Some(Message::Wal {
                        wal_start,
                        wal_end,
                        data,
                    }));
                }
                Some(ReplicationMessage::Keepalive {
                    wal_end,
                    reply_requested,
                }) => {
                    self.received = self.received.max(wal_end);
                    return Ok(Some(Message::Keepalive {
                        wal_end,
                        reply_requested,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// Everything up to `lsn` (a transaction's end) is received.
    pub fn received(&mut self, lsn: Lsn) {
        self.received = self.received.max(lsn);
    }

    /// The confirmable position moved to `flush`: report it soon, at most every
    /// [`MIN_STATUS_GAP`].
    pub fn flush_moved(&mut self, flush: Lsn) {
        if flush > self.reported && self.due.is_none() {
            self.due = Some((self.last_status + MIN_STATUS_GAP, false));
        }
    }

    /// Asks the server, soon, where it is (its keepalive carries the position it has sent up
    /// to).
    pub fn ask_position(&mut self) {
        if self.due.is_none() {
            self.due = Some((self.last_status + MIN_STATUS_GAP, true));
        }
    }

    /// Waits until more has been read from the server (when `read`), or a status update is
    /// due. Cancel-safe: a cancelled wait loses nothing. Fails when the server has been
    /// silent for the read timeout.
    pub async fn wait(&mut self, read: bool) -> Result<Wake, SourceError> {
        let due = self.due.map(|(at, _)| at);
        let silent_until = self.last_rx + self.read_timeout;
        tokio::select! {
            biased;
            _ = tokio::time::sleep_until(due.unwrap_or(self.last_status)), if due.is_some() => {
                let reply = self.due.take().is_some_and(|(_, reply)| reply);
                Ok(Wake::StatusDue { reply })
            }
            _ = self.tick.tick() => Ok(Wake::StatusDue { reply: true }),
            filled = tokio::time::timeout_at(silent_until, self.conn.fill()), if read => match filled {
                Ok(filled) => {
                    filled?;
                    self.last_rx = Instant::now();
                    Ok(Wake::Read)
                }
                Err(_) => Err(SourceError::Timeout {
                    what: "waiting for data from the server",
                    after: self.read_timeout,
                }),
            },
        }
    }

    /// Sends a status update confirming `flush` (never less than before).
    pub async fn send_status(
        &mut self,
        flush: Lsn,
        reply_requested: bool,
    ) -> Result<(), SourceError> {
        let flush = flush.max(self.reported);
        self.conn
            .send_status(Status {
                write: self.received.max(flush),
                flush,
                reply_requested,
            })
            .await?;
        tracing::trace!(flush = %flush, write = %self.received, "status update");
        self.reported = flush;
        self.last_status = Instant::now();
        self.due = None;
        Ok(())
    }

    /// Confirms `flush` one last time and ends the stream cleanly, each step within `within`.
    pub async fn finish(mut self, flush: Lsn, within: Duration) -> Result<(), SourceError> {
        tokio::time::timeout(within, self.send_status(flush, false))
            .await
            .map_err(|_| SourceError::Timeout {
                what: "sending the final status update",
                after: within,
            })??;
        if let Err(e) = self.conn.finish(within).await {
            tracing::debug!(error = %e, "ending the replication stream");
        }
        Ok(())
    }
}

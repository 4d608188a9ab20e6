//! The replication connection, on `postgres-protocol` + tokio, over the stream `transport`
//! sets up (socket, TLS): the startup message with `replication=database` and pinned text
//! formats, trust/cleartext/md5 (under the password rule)/SCRAM-SHA-256(-PLUS)
//! authentication, `START_REPLICATION`, and cancel-safe framing of the CopyBoth stream that
//! follows, its buffer growing with the bytes that arrive.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod auth;

use self::auth::Authenticator;
use super::conninfo::ConnInfo;
use super::error::{PgError, SourceError};
use super::transport::{self, Io, Link};
// `sql` is where quoting lives; callers that name it here keep working.
use super::sql::{quote_ident, quote_literal};
use crate::lsn::Lsn;

/// Session settings sent in the startup packet. The walsender honours them, and they decide the
/// text form of values in pgoutput (ISO dates, UTC, ISO intervals, exact floats, hex bytea).
pub const SESSION_OPTIONS: &str = "-c datestyle=ISO -c intervalstyle=iso_8601 -c timezone=UTC \
     -c extra_float_digits=3 -c bytea_output=hex";

/// Read in chunks of at least this much: one syscall per many replication messages.
const READ_CHUNK: usize = 128 * 1024;

/// A read smaller than this, right after another, means the stream is trickling in.
const SMALL_READ: usize = 16 * 1024;
/// How long to let a busy stream gather before reading again.
const READ_GATHER_PAUSE: Duration = Duration::from_millis(1);

/// A backend message: its tag and its body (without the tag and length).
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// One message of the CopyBoth replication stream.
pub enum ReplicationMessage {
    /// WAL data: for logical replication, one pgoutput message.
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        data: Bytes,
    },
    /// The server's keepalive: `wal_end` is the position the walsender has sent up to.
    Keepalive { wal_end: Lsn, reply_requested: bool },
}

pub struct ReplicationConnection {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    max_message: usize,
    server_version: String,
    /// When the last read returned data (see `fill`).
    last_read: Option<std::time::Instant>,
}

/// What a status update reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub write: Lsn,
    pub flush: Lsn,
    pub reply_requested: bool,
}

impl ReplicationConnection {
    /// Connects, secures, authenticates and waits for the server to be ready.
    pub async fn connect(
        info: &ConnInfo,
        timeout: Duration,
        max_message: usize,
    ) -> Result<ReplicationConnection, SourceError> {
        let timeout = info.connect_timeout.unwrap_or(timeout);
        tokio::time::timeout(timeout, Self::connect_inner(info, max_message))
            .await
            .map_err(|_| SourceError::Timeout {
                what: "connecting to PostgreSQL",
                after: timeout,
            })?
    }

    async fn connect_inner(
        info: &ConnInfo,
        max_message: usize,
    ) -> Result<ReplicationConnection, SourceError> {
        let transport = transport::connect(info).await?;
        let mut conn = ReplicationConnection {
            io: transport.io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(256),
            max_message,
            server_version: String::new(),
            last_read: None,
        };
        conn.startup(info, transport.link, transport.binding)
            .await?;
        Ok(conn)
    }

    /// Sends the startup message, authenticates, and reads the session's parameters until
    /// the server is ready for queries.
    async fn startup(
        &mut self,
        info: &ConnInfo,
        link: Link,
        binding: Option<Vec<u8>>,
    ) -> Result<(), SourceError> {
        let params = [
            ("user", info.user.as_str()),
            ("database", info.dbname.as_str()),
            ("replication", "database"),
            ("client_encoding", "UTF8"),
            ("application_name", info.application_name.as_str()),
            ("options", SESSION_OPTIONS),
        ];
        frontend::startup_message(params.iter().copied(), &mut self.wbuf)
            .map_err(protocol_error)?;
        self.flush_wbuf().await?;
        let mut auth = Authenticator::new(info, link, binding);
        loop {
            let frame = self.read_frame().await?;
            match startup_message(&frame)? {
                Message::ParameterStatus(body) => {
                    if body.name().ok() == Some("server_version") {
                        self.server_version = body.value().unwrap_or_default().to_owned();
                    }
                }
                Message::BackendKeyData(_) | Message::NoticeResponse(_) => {}
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ErrorResponse(_) => return Err(PgError::from_body(&frame.body).into()),
                msg => {
                    auth.answer(msg, frame.tag, &mut self.wbuf)?;
                    if !self.wbuf.is_empty() {
                        self.flush_wbuf().await?;
                    }
                }
            }
        }
    }

    /// The server's `server_version` parameter.
    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    /// Runs a simple-protocol query (the only kind a walsender accepts) and returns its rows
    /// as text.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, SourceError> {
        frontend::query(sql, &mut self.wbuf).map_err(protocol_error)?;
        self.flush_wbuf().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'D' => {
                    let mut b = frame.body.clone();
                    let n = checked_get(&mut b, 2)?.get_u16();
                    let mut row = Vec::with_capacity(n.into());
                    for _ in 0..n {
                        let len = checked_get(&mut b, 4)?.get_i32();
                        if len < 0 {
                            row.push(None);
                        } else {
                            let v = checked_get(&mut b, len as usize)?.split_to(len as usize);
                            row.push(Some(String::from_utf8_lossy(&v).into_owned()));
                        }
                    }
                    rows.push(row);
                }
                b'E' => error = Some(PgError::from_body(&frame.body)),
                b'Z' => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e.into()),
            None => Ok(rows),
        }
    }

    /// Starts logical replication from `slot` with pgoutput protocol version 1.
    pub async fn start_replication(
        &mut self,
        slot: &str,
        publication: &str,
        from: Lsn,
    ) -> Result<(), SourceError> {
        let sql = format!(
            // `messages`: logical messages too, for the slot's recreation marker (PostgreSQL 14+).
            "START_REPLICATION SLOT {} LOGICAL {from} (\"proto_version\" '1', \"publication_names\" {}, \"messages\" 'true')",
            quote_ident(slot),
            quote_literal(&quote_ident(publication)),
        );
        frontend::query(&sql, &mut self.wbuf).map_err(protocol_error)?;
        self.flush_wbuf().await?;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'W' => return Ok(()),
                b'E' => return Err(PgError::from_body(&frame.body).into()),
                b'N' => {}
                other => {
                    return Err(SourceError::Protocol(format!(
                        "unexpected message {:?} in answer to START_REPLICATION",
                        char::from(other)
                    )));
                }
            }
        }
    }

    /// Reads more bytes from the server into the buffer. Cancel-safe: a cancelled read loses
    /// nothing, so this may sit in a `select!`.
    pub async fn fill(&mut self) -> Result<(), SourceError> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 2 {
            self.rbuf.reserve(self.growth());
        }
        let n = self
            .io
            .read_buf(&mut self.rbuf)
            .await
            .map_err(|e| SourceError::Io {
                what: "reading from the server",
                source: e,
            })?;
        if n == 0 {
            return Err(SourceError::Closed);
        }
        // The walsender writes every message as it is produced. When small reads come back to
        // back, the stream is busy and we are waking up once per few messages: pausing a
        // moment lets a bigger chunk gather, for far fewer wakeups (and less CPU taken from
        // the walsender) at the cost of a millisecond. An isolated change is not delayed.
        let busy = self
            .last_read
            .is_some_and(|t| t.elapsed() < READ_GATHER_PAUSE * 2);
        self.last_read = Some(std::time::Instant::now());
        if n < SMALL_READ && busy {
            tokio::time::sleep(READ_GATHER_PAUSE).await;
        }
        Ok(())
    }

    /// How much room to make before the next read. The buffer grows with what has arrived, at
    /// most doubling, and never past the message being read: a header that announces a huge
    /// message reserves nothing until its bytes come.
    fn growth(&self) -> usize {
        let have = self.rbuf.len();
        let announced = (have >= 5)
            .then(|| i32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]))
            .and_then(|len| usize::try_from(len).ok())
            .map(|len| len.saturating_add(1));
        match announced {
            Some(total) if total > have => (total - have).min(have.max(READ_CHUNK)).max(READ_CHUNK),
            _ => READ_CHUNK,
        }
    }

    /// The read buffer's capacity: what the connection holds in memory for messages.
    pub fn buffer_capacity(&self) -> usize {
        self.rbuf.capacity()
    }

    /// The next complete frame already in the buffer, if any.
    pub fn buffered_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.rbuf.len() < 5 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]);
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l >= 4)
            .ok_or_else(|| SourceError::Protocol(format!("invalid message length {len}")))?;
        if len > self.max_message {
            return Err(SourceError::Fatal(format!(
                "a replication message of {len} bytes exceeds postgres.max_message_bytes ({})",
                self.max_message
            )));
        }
        if self.rbuf.len() < len + 1 {
            // Room is made as the bytes arrive (see `growth`), not from the header's word.
            return Ok(None);
        }
        let mut frame = self.rbuf.split_to(len + 1);
        let tag = frame[0];
        frame.advance(5);
        Ok(Some(Frame {
            tag,
            body: frame.freeze(),
        }))
    }

    async fn read_frame(&mut self) -> Result<Frame, SourceError> {
        loop {
            if let Some(f) = self.buffered_frame()? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    /// Interprets a frame of the CopyBoth stream. `Ok(None)` for frames that need no action
    /// (notices).
    pub fn parse_replication(frame: Frame) -> Result<Option<ReplicationMessage>, SourceError> {
        match frame.tag {
            b'd' => {
                let mut b = frame.body;
                let kind = checked_get(&mut b, 1)?.get_u8();
                match kind {
                    b'w' => {
                        checked_get(&mut b, 24)?;
                        let wal_start = Lsn(b.get_u64());
                        let wal_end = Lsn(b.get_u64());
                        let _send_time = b.get_i64();
                        Ok(Some(ReplicationMessage::XLogData {
                            wal_start,
                            wal_end,
                            data: b,
                        }))
                    }
                    b'k' => {
                        checked_get(&mut b, 17)?;
                        let wal_end = Lsn(b.get_u64());
                        let _send_time = b.get_i64();
                        let reply_requested = b.get_u8() == 1;
                        Ok(Some(ReplicationMessage::Keepalive {
                            wal_end,
                            reply_requested,
                        }))
                    }
                    other => Err(SourceError::Protocol(format!(
                        "unknown CopyData message {:?}",
                        char::from(other)
                    ))),
                }
            }
            b'E' => Err(PgError::from_body(&frame.body).into()),
            b'N' => Ok(None),
            b'c' => Err(SourceError::Closed),
            other => Err(SourceError::Protocol(format!(
                "unexpected message {:?} during replication",
                char::from(other)
            ))),
        }
    }

    /// Sends a standby status update: `write` received, `flush` = `apply` durably delivered.
    pub async fn send_status(&mut self, status: Status) -> Result<(), SourceError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0)
            - crate::event::PG_EPOCH_UNIX_MICROS;
        self.wbuf.put_u8(b'd');
        self.wbuf.put_i32(4 + 34);
        self.wbuf.put_u8(b'r');
        self.wbuf.put_u64(status.write.0);
        self.wbuf.put_u64(status.flush.0);
        self.wbuf.put_u64(status.flush.0);
        self.wbuf.put_i64(now);
        self.wbuf.put_u8(u8::from(status.reply_requested));
        self.flush_wbuf().await
    }

    /// Ends the stream cleanly: CopyDone, drain until ReadyForQuery, Terminate.
    pub async fn finish(mut self, timeout: Duration) -> Result<(), SourceError> {
        frontend::copy_done(&mut self.wbuf);
        self.flush_wbuf().await?;
        let drain = async {
            loop {
                let frame = self.read_frame().await?;
                match frame.tag {
                    b'Z' => return Ok(()),
                    b'E' => return Err(SourceError::from(PgError::from_body(&frame.body))),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(timeout, drain)
            .await
            .map_err(|_| SourceError::Timeout {
                what: "ending the replication stream",
                after: timeout,
            })??;
        frontend::terminate(&mut self.wbuf);
        self.flush_wbuf().await?;
        let _ = self.io.shutdown().await;
        Ok(())
    }

    async fn flush_wbuf(&mut self) -> Result<(), SourceError> {
        self.io
            .write_all(&self.wbuf)
            .await
            .map_err(|e| SourceError::Io {
                what: "writing to the server",
                source: e,
            })?;
        self.wbuf.clear();
        self.io.flush().await.map_err(|e| SourceError::Io {
            what: "writing to the server",
            source: e,
        })
    }
}

/// A frame of the startup phase as a typed backend message.
fn startup_message(frame: &Frame) -> Result<Message, SourceError> {
    let mut raw = BytesMut::with_capacity(frame.body.len() + 5);
    raw.put_u8(frame.tag);
    raw.put_i32(frame.body.len() as i32 + 4);
    raw.put_slice(&frame.body);
    Message::parse(&mut raw)
        .map_err(protocol_error)?
        .ok_or_else(|| SourceError::Protocol("incomplete startup message".into()))
}

fn protocol_error(e: impl ToString) -> SourceError {
    SourceError::Protocol(e.to_string())
}

fn checked_get(b: &mut Bytes, n: usize) -> Result<&mut Bytes, SourceError> {
    if b.remaining() < n {
        return Err(SourceError::Protocol(
            "truncated message from the server".into(),
        ));
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection past startup, over an in-memory stream; the other end plays the server.
    fn over(io: tokio::io::DuplexStream, max_message: usize) -> ReplicationConnection {
        ReplicationConnection {
            io: Box::new(io),
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::new(),
            max_message,
            server_version: String::new(),
            last_read: None,
        }
    }

    fn header(tag: u8, len: i32) -> Vec<u8> {
        let mut h = vec![tag];
        h.extend_from_slice(&len.to_be_bytes());
        h
    }

    /// Regression: a header announcing 1 GiB reserved 1 GiB at once.
    #[tokio::test]
    async fn memory_follows_the_bytes_that_arrive_not_the_announced_length() {
        let (mut server, client) = tokio::io::duplex(64 * 1024);
        let mut conn = over(client, 1 << 30);
        let announced = (1 << 30) - 16;
        server.write_all(&header(b'd', announced)).await.unwrap();
        conn.fill().await.unwrap();
        assert!(conn.buffered_frame().unwrap().is_none());
        // Trickle 4 MiB of the body: the buffer stays near what arrived.
        let piece = vec![b'x'; 16 * 1024];
        let mut sent = 0;
        let writer = tokio::spawn(async move {
            for _ in 0..256 {
                server.write_all(&piece).await.unwrap();
            }
            server
        });
        while sent < 256 * 16 * 1024 {
            let before = conn.rbuf.len();
            conn.fill().await.unwrap();
            sent += conn.rbuf.len() - before;
            assert!(conn.buffered_frame().unwrap().is_none());
            assert!(
                conn.buffer_capacity() <= 2 * conn.rbuf.len() + 2 * READ_CHUNK,
                "{} bytes reserved for {} received",
                conn.buffer_capacity(),
                conn.rbuf.len()
            );
        }
        assert!(
            conn.buffer_capacity() < 16 << 20,
            "{}",
            conn.buffer_capacity()
        );
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_large_message_arrives_whole_and_one_over_the_limit_is_refused() {
        let (mut server, client) = tokio::io::duplex(64 * 1024);
        let mut conn = over(client, 8 << 20);
        let body = vec![7u8; 5 << 20];
        let mut message = header(b'd', body.len() as i32 + 4);
        message.extend_from_slice(&body);
        message.extend(header(b'd', (8 << 20) + 5));
        tokio::spawn(async move {
            server.write_all(&message).await.unwrap();
            server
        });
        let frame = conn.read_frame().await.unwrap();
        assert_eq!((frame.tag, frame.body.len()), (b'd', 5 << 20));
        assert!(frame.body.iter().all(|&b| b == 7));
        let err = match conn.read_frame().await {
            Err(e) => e,
            Ok(_) => panic!("a message over the limit must be refused"),
        };
        assert!(
            err.to_string().contains("postgres.max_message_bytes") && !err.is_retryable(),
            "{err}"
        );
    }
}

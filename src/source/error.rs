//! Errors of the source: what went wrong talking to PostgreSQL, and whether trying again
//! (reconnecting with backoff) can help.

use std::fmt;
use std::time::Duration;

/// An ErrorResponse from the server, with its SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    /// Parses the body of an ErrorResponse or NoticeResponse (fields until a NUL).
    pub fn from_body(body: &[u8]) -> PgError {
        let mut e = PgError {
            severity: "ERROR".into(),
            code: String::new(),
            message: String::new(),
            detail: None,
            hint: None,
        };
        let mut rest = body;
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            let value = String::from_utf8_lossy(&tail[..end]).into_owned();
            match kind {
                b'V' => e.severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                _ => {}
            }
            rest = tail.get(end + 1..).unwrap_or_default();
        }
        e
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (detail: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the server closed the connection")]
    Closed,
    #[error("timed out {what} after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    /// The TLS handshake failed; `certificate`: because the server's certificate did not
    /// verify (which trying again cannot fix).
    #[error("TLS: {message}")]
    Tls { message: String, certificate: bool },
    #[error(transparent)]
    TlsSetup(#[from] super::tls::TlsSetupError),
    #[error("server error: {0}")]
    Server(PgError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Fatal(String),
    /// Its message already includes the cause (see `describe_control`), so it is not
    /// chained as a source, which would print it twice.
    #[error("control connection: {}", describe_control(.0))]
    Control(tokio_postgres::Error),
    #[error("cannot decode replication message at {lsn}: {source}")]
    Decode {
        lsn: crate::lsn::Lsn,
        #[source]
        source: crate::decode::DecodeError,
    },
    #[error("replication stream out of order at {lsn}: {source}")]
    Map {
        lsn: crate::lsn::Lsn,
        #[source]
        source: crate::map::MapError,
    },
    #[error("sink {0} stopped")]
    SinkGone(String),
    /// Seen in the catalog before asking to stream: the slot is active for that process.
    #[error("replication slot {slot} is active for PID {pid}")]
    SlotHeld { slot: String, pid: i32 },
    /// PostgreSQL invalidated the slot (`wal_status = 'lost'`) and `postgres.on_slot_lost` is
    /// `fail`. Retrying cannot help: the WAL is gone.
    #[error(
        "replication slot {slot} was invalidated (wal_status lost): PostgreSQL removed WAL it still \
         needed because it held more than max_slot_wal_keep_size, so the changes committed after \
         its confirmed position{} are lost and cannot be streamed. Fix: `pglive teardown` then \
         `pglive setup` create the slot anew (clients keep stale data until they refetch), or set \
         postgres.on_slot_lost = \"recreate\" and start pglive again: it recreates the slot and \
         tells every mapped channel to refetch (an event of type \"*\"). To keep it from \
         happening again, raise max_slot_wal_keep_size or keep pglive from stopping or falling \
         behind for that long",
        confirmed.map(|l| format!(" {l}")).unwrap_or_default()
    )]
    SlotLost {
        slot: String,
        confirmed: Option<crate::lsn::Lsn>,
    },
    /// As [`SourceError::SlotLost`], found when asking to stream, with `postgres.on_slot_lost`
    /// `recreate`: the next attempt recreates the slot.
    #[error(
        "replication slot {0} was invalidated (wal_status lost) just before streaming from it; \
         recreating it (postgres.on_slot_lost = \"recreate\")"
    )]
    SlotInvalidated(String),
}

/// tokio-postgres shows only "db error" for server errors; name the server's message instead.
fn describe_control(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// SQLSTATE classes and codes that no amount of retrying fixes: bad credentials, a missing
/// database, missing privileges, an invalid or missing slot or publication.
const FATAL_SQLSTATES: [&str; 6] = ["28000", "28P01", "3D000", "42501", "42704", "55000"];

/// `55006 object_in_use`: the slot is active for another process.
pub const SLOT_IN_USE: &str = "55006";
/// `55000 object_not_in_prerequisite_state`: among others, what `START_REPLICATION` answers
/// for an invalidated slot.
pub const NOT_IN_PREREQUISITE_STATE: &str = "55000";

impl From<tokio_postgres::Error> for SourceError {
    fn from(e: tokio_postgres::Error) -> Self {
        SourceError::Control(e)
    }
}

impl From<PgError> for SourceError {
    fn from(e: PgError) -> Self {
        SourceError::Server(e)
    }
}

impl SourceError {
    /// Whether reconnecting (after a backoff) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            SourceError::Server(e) => !FATAL_SQLSTATES.contains(&e.code.as_str()),
            SourceError::Control(e) => match e.code() {
                Some(code) => !FATAL_SQLSTATES.contains(&code.code()),
                // The library's own authentication and configuration errors (no SQLSTATE,
                // known only by their text), such as a server that would not use channel
                // binding: trying again cannot fix them.
                None => {
                    let text = e.to_string();
                    !(text.starts_with("authentication error")
                        || text.starts_with("invalid configuration"))
                }
            },
            SourceError::Config(_)
            | SourceError::Fatal(_)
            | SourceError::TlsSetup(_)
            | SourceError::Decode { .. }
            | SourceError::Map { .. }
            | SourceError::SinkGone(_)
            | SourceError::SlotLost { .. } => false,
            // A certificate that does not verify will not verify next time either.
            SourceError::Tls { certificate, .. } => !certificate,
            SourceError::Io { .. }
            | SourceError::Closed
            | SourceError::Timeout { .. }
            | SourceError::Protocol(_)
            | SourceError::SlotHeld { .. }
            | SourceError::SlotInvalidated(_) => true,
        }
    }

    /// The replication slot is held by another process.
    pub fn is_slot_in_use(&self) -> bool {
        matches!(self, SourceError::Server(e) if e.code == SLOT_IN_USE)
            || matches!(self, SourceError::SlotHeld { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_error_fields() {
        let body =
            b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"x\"\0Ffile.c\0\0";
        let e = PgError::from_body(body);
        assert_eq!(e.code, "28P01");
        assert_eq!(e.severity, "FATAL");
        assert!(e.to_string().contains("password authentication failed"));
        assert!(!SourceError::Server(e).is_retryable());
        let busy =
            PgError::from_body(b"VERROR\0C55006\0Mreplication slot \"s\" is active for PID 7\0\0");
        let busy = SourceError::Server(busy);
        assert!(busy.is_retryable() && busy.is_slot_in_use());
    }

    #[test]
    fn a_lost_slot_is_final_and_names_the_cause_and_the_fix() {
        let e = SourceError::SlotLost {
            slot: "pglive".into(),
            confirmed: Some(crate::lsn::Lsn(0x16B3748)),
        };
        assert!(!e.is_retryable());
        let text = e.to_string();
        for needle in [
            "replication slot pglive was invalidated",
            "max_slot_wal_keep_size",
            "after its confirmed position 0/16B3748 are lost",
            "`pglive teardown` then `pglive setup`",
            "postgres.on_slot_lost = \"recreate\"",
        ] {
            assert!(text.contains(needle), "{needle:?} in {text}");
        }
    }

    #[test]
    fn tolerates_truncated_bodies() {
        let e = PgError::from_body(b"C12345\0Mno terminator");
        assert_eq!(e.code, "12345");
        assert_eq!(e.message, "no terminator");
        PgError::from_body(b"");
    }
}

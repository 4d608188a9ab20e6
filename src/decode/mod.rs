//! pgoutput (protocol version 1) bytes → typed logical replication messages.
//! Input is the payload of one XLogData frame; output borrows from it (no copies of row data).
//! Pure and total: malformed input is an error, never a panic. Driven by `source::stream`.

mod reader;
mod relation;

pub use relation::{Column, Relation, RelationCache};

use crate::lsn::Lsn;
use reader::Reader;

/// A pgoutput message could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("pgoutput message truncated while reading {what}")]
    Truncated { what: &'static str },
    #[error("unknown pgoutput message tag {0:?}")]
    UnknownTag(char),
    #[error("unknown tuple column kind {0:?}")]
    UnknownColumnKind(char),
    #[error("unexpected tuple marker {0:?} (expected 'K', 'O' or 'N')")]
    UnexpectedTupleMarker(char),
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 { what: &'static str },
    #[error("string {what} is not NUL-terminated")]
    UnterminatedString { what: &'static str },
    #[error("negative length {len} for {what}")]
    NegativeLength { what: &'static str, len: i32 },
    #[error("{0} trailing bytes after a complete message")]
    TrailingBytes(usize),
    #[error("empty pgoutput message")]
    Empty,
}

/// One decoded pgoutput message.
#[derive(Debug, PartialEq)]
pub enum LogicalMessage<'a> {
    Begin(Begin),
    Commit(Commit),
    Origin {
        commit_lsn: Lsn,
        name: &'a str,
    },
    Relation(Relation),
    Type {
        oid: u32,
        namespace: &'a str,
        name: &'a str,
    },
    Insert {
        relation: u32,
        new: Tuple<'a>,
    },
    Update {
        relation: u32,
        /// The old key (`'K'`: the key changed) or the whole old row (`'O'`: REPLICA IDENTITY FULL).
        old: Option<OldTuple<'a>>,
        new: Tuple<'a>,
    },
    Delete {
        relation: u32,
        old: OldTuple<'a>,
    },
    Truncate {
        /// Bit 1: CASCADE, bit 2: RESTART IDENTITY.
        options: u8,
        relations: Vec<u32>,
    },
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: &'a str,
        content: &'a [u8],
    },
}

/// Start of a transaction. pgoutput sends whole transactions at commit, so the commit LSN and
/// time are already known here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    pub final_lsn: Lsn,
    /// Microseconds since 2000-01-01 UTC.
    pub commit_time: i64,
    pub xid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    pub flags: u8,
    pub commit_lsn: Lsn,
    /// The end of the commit record: the position to acknowledge once the transaction is delivered.
    pub end_lsn: Lsn,
    pub commit_time: i64,
}

/// The old row of an UPDATE or DELETE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldTuple<'a> {
    /// Only the replica-identity key columns carry values; every other column is `'n'` filler.
    Key(Tuple<'a>),
    /// The whole old row (REPLICA IDENTITY FULL).
    Full(Tuple<'a>),
}

impl<'a> OldTuple<'a> {
    pub fn tuple(&self) -> Tuple<'a> {
        match *self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// One column value of a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Null,
    /// An unchanged TOASTed value: not sent, and not NULL.
    Unchanged,
    Text(&'a [u8]),
    Binary(&'a [u8]),
}

/// Tuple data, validated when decoded; iterating it cannot fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple<'a> {
    len: u16,
    raw: &'a [u8],
}

impl<'a> Tuple<'a> {
    /// Number of columns.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn values(&self) -> TupleValues<'a> {
        TupleValues {
            reader: Reader::new(self.raw),
            remaining: self.len,
        }
    }

    /// The value of column `index`, if the tuple has that many columns.
    pub fn get(&self, index: usize) -> Option<Value<'a>> {
        self.values().nth(index)
    }

    /// Reads the column count and validates every column, leaving `r` after the tuple.
    fn read(r: &mut Reader<'a>) -> Result<Tuple<'a>, DecodeError> {
        let len = r.u16("tuple column count")?;
        let start = r.position();
        for _ in 0..len {
            read_value(r)?;
        }
        Ok(Tuple {
            len,
            raw: r.since(start),
        })
    }
}

pub struct TupleValues<'a> {
    reader: Reader<'a>,
    remaining: u16,
}

impl<'a> Iterator for TupleValues<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // The tuple was validated by `Tuple::read`, so this cannot fail; stop rather than panic.
        read_value(&mut self.reader).ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(usize::from(self.remaining)))
    }
}

fn read_value<'a>(r: &mut Reader<'a>) -> Result<Value<'a>, DecodeError> {
    match r.u8("column kind")? {
        b'n' => Ok(Value::Null),
        b'u' => Ok(Value::Unchanged),
        b't' => Ok(Value::Text(r.counted("column value")?)),
        b'b' => Ok(Value::Binary(r.counted("column value")?)),
        other => Err(DecodeError::UnknownColumnKind(char::from(other))),
    }
}

/// Decodes one pgoutput message (the payload of an XLogData frame).
pub fn decode(buf: &[u8]) -> Result<LogicalMessage<'_>, DecodeError> {
    let mut r = Reader::new(buf);
    let tag = r.u8("message tag").map_err(|_| DecodeError::Empty)?;
    let msg = match tag {
        b'B' => LogicalMessage::Begin(Begin::read(&mut r)?),
        b'C' => LogicalMessage::Commit(Commit::read(&mut r)?),
        b'O' => LogicalMessage::Origin {
            commit_lsn: Lsn(r.u64("origin commit LSN")?),
            name: r.cstr("origin name")?,
        },
        b'R' => LogicalMessage::Relation(relation::read(&mut r)?),
        b'Y' => LogicalMessage::Type {
            oid: r.u32("type OID")?,
            namespace: r.cstr("type namespace")?,
            name: r.cstr("type name")?,
        },
        b'I' => read_insert(&mut r)?,
        b'U' => read_update(&mut r)?,
        b'D' => read_delete(&mut r)?,
        b'T' => read_truncate(&mut r)?,
        b'M' => read_message(&mut r)?,
        other => return Err(DecodeError::UnknownTag(char::from(other))),
    };
    match r.remaining() {
        0 => Ok(msg),
        n => Err(DecodeError::TrailingBytes(n)),
    }
}

impl Begin {
    fn read(r: &mut Reader<'_>) -> Result<Begin, DecodeError> {
        Ok(Begin {
            final_lsn: Lsn(r.u64("begin final LSN")?),
            commit_time: r.i64("begin commit time")?,
            xid: r.u32("begin xid")?,
        })
    }
}

impl Commit {
    fn read(r: &mut Reader<'_>) -> Result<Commit, DecodeError> {
        Ok(Commit {
            flags: r.u8("commit flags")?,
            commit_lsn: Lsn(r.u64("commit LSN")?),
            end_lsn: Lsn(r.u64("commit end LSN")?),
            commit_time: r.i64("commit time")?,
        })
    }
}

fn read_insert<'a>(r: &mut Reader<'a>) -> Result<LogicalMessage<'a>, DecodeError> {
    let relation = r.u32("insert relation OID")?;
    expect_marker(r, b'N')?;
    Ok(LogicalMessage::Insert {
        relation,
        new: Tuple::read(r)?,
    })
}

/// An UPDATE: the old key or row when the server sends one (`'K'`, `'O'`), then the new row.
fn read_update<'a>(r: &mut Reader<'a>) -> Result<LogicalMessage<'a>, DecodeError> {
    let relation = r.u32("update relation OID")?;
    let (old, marker) = match r.u8("update tuple marker")? {
        b'K' => (Some(OldTuple::Key(Tuple::read(r)?)), None),
        b'O' => (Some(OldTuple::Full(Tuple::read(r)?)), None),
        other => (None, Some(other)),
    };
    let marker = match marker {
        Some(m) => m,
        None => r.u8("update new tuple marker")?,
    };
    if marker != b'N' {
        return Err(DecodeError::UnexpectedTupleMarker(char::from(marker)));
    }
    Ok(LogicalMessage::Update {
        relation,
        old,
        new: Tuple::read(r)?,
    })
}

fn read_delete<'a>(r: &mut Reader<'a>) -> Result<LogicalMessage<'a>, DecodeError> {
    let relation = r.u32("delete relation OID")?;
    let old = match r.u8("delete tuple marker")? {
        b'K' => OldTuple::Key(Tuple::read(r)?),
        b'O' => OldTuple::Full(Tuple::read(r)?),
        other => return Err(DecodeError::UnexpectedTupleMarker(char::from(other))),
    };
    Ok(LogicalMessage::Delete { relation, old })
}

fn read_truncate<'a>(r: &mut Reader<'a>) -> Result<LogicalMessage<'a>, DecodeError> {
    let count = r.u32("truncate relation count")?;
    let options = r.u8("truncate options")?;
    // Bound the allocation by what the buffer can hold, not by the claimed count.
    let mut relations = Vec::with_capacity((count as usize).min(r.remaining() / 4));
    for _ in 0..count {
        relations.push(r.u32("truncate relation OID")?);
    }
    Ok(LogicalMessage::Truncate { options, relations })
}

/// A logical message (`pg_logical_emit_message`).
fn read_message<'a>(r: &mut Reader<'a>) -> Result<LogicalMessage<'a>, DecodeError> {
    let flags = r.u8("message flags")?;
    let lsn = Lsn(r.u64("message LSN")?);
    let prefix = r.cstr("message prefix")?;
    let content = r.counted("message content")?;
    Ok(LogicalMessage::Message {
        transactional: flags & 1 == 1,
        lsn,
        prefix,
        content,
    })
}

fn expect_marker(r: &mut Reader<'_>, want: u8) -> Result<(), DecodeError> {
    let got = r.u8("tuple marker")?;
    if got == want {
        Ok(())
    } else {
        Err(DecodeError::UnexpectedTupleMarker(char::from(got)))
    }
}

#[cfg(test)]
mod tests;

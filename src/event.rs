//! The LiveEvent: what `map` produces and every sink carries, byte for byte.
//! An event is encoded to JSON once; sinks share the bytes. Its `meta.id` is derived from the
//! commit LSN and the event's ordinal in its transaction, so a replayed event has the same id.

use std::fmt::Write as _;
use std::sync::Arc;

use serde::Serialize;

use crate::lsn::Lsn;

/// What happened to the rows: INSERT → `created`, UPDATE → `updated`, DELETE/TRUNCATE → `deleted`;
/// `*` when the slot was recreated and every row of the channel may have changed.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Created,
    Updated,
    Deleted,
    /// Changes were lost (the slot was recreated): refetch everything. Refine refetches on
    /// any event; `*` is also the type a Refine subscription names to receive every type.
    #[serde(rename = "*")]
    Refetch,
}

impl EventKind {
    /// Every kind, in the order of their discriminants (metric series are indexed by it).
    pub const ALL: [EventKind; 4] = [
        EventKind::Created,
        EventKind::Updated,
        EventKind::Deleted,
        EventKind::Refetch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Updated => "updated",
            EventKind::Deleted => "deleted",
            EventKind::Refetch => "*",
        }
    }
}

/// One row's key, typed as an API would return it.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize)]
#[serde(untagged)]
pub enum Id {
    /// int2, int4, int8, oid keys: an exact JSON number (int8 beyond 2^53 stays exact).
    Int(i64),
    /// Every other key type (uuid, text, …), or any key when the table asks for string ids.
    Text(Box<str>),
    /// A composite key: its columns in key order, as one JSON array per row.
    Composite(Box<[Id]>),
}

/// The stable identity of an event: the commit LSN of its transaction and its ordinal in it.
/// Ordered as the events are: by commit, then within the transaction.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct EventId {
    pub commit_lsn: Lsn,
    pub ordinal: u64,
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.commit_lsn, self.ordinal)
    }
}

impl std::str::FromStr for EventId {
    type Err = String;

    /// Parses `<commit LSN>:<ordinal>`, as `meta.id` shows it.
    fn from_str(s: &str) -> Result<EventId, String> {
        let (lsn, ordinal) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not an event id like 0/16B3748:0"))?;
        Ok(EventId {
            commit_lsn: lsn.parse().map_err(|_| format!("{s:?}: bad LSN"))?,
            ordinal: ordinal.parse().map_err(|_| format!("{s:?}: bad ordinal"))?,
        })
    }
}

/// The prefix of the transactional logical message that names a transaction's origin:
/// `SELECT pg_logical_emit_message(true, 'pglive.origin', '<client id>')` in a transaction
/// puts the client id into `meta.origin` of its events, so that the client that made the
/// change can skip them.
pub const ORIGIN_PREFIX: &str = "pglive.origin";

/// The longest origin carried into `meta.origin`; a longer one is ignored.
pub const MAX_ORIGIN_BYTES: usize = 256;

/// A LiveEvent as the pipeline sees it, with its JSON encoding already made.
#[derive(Debug)]
pub struct LiveEvent {
    pub channel: Arc<str>,
    pub kind: EventKind,
    pub id: EventId,
    pub xid: u32,
    /// Commit time, microseconds since 2000-01-01 UTC (PostgreSQL's epoch).
    pub commit_time: i64,
    pub schema: Arc<str>,
    pub table: Arc<str>,
    /// The encoded event: one JSON object, no trailing newline.
    pub json: Box<[u8]>,
}

/// Table-level facts that every event of a table repeats.
#[derive(Debug)]
pub struct EventSource {
    pub channel: Arc<str>,
    pub schema: Arc<str>,
    pub table: Arc<str>,
    pub data_provider_name: Option<Arc<str>>,
}

/// A row payload (`payload = "row"`): the encoded objects and what they leave out.
#[derive(Debug, Default)]
pub struct RowPayload {
    /// `payload.data`: the new row, a JSON object (none for a delete).
    pub data: Option<Vec<u8>>,
    /// `payload.previous`: the old row, or its key, as the replica identity sent it.
    pub previous: Option<Vec<u8>>,
    /// `meta.unchanged`: columns whose unchanged TOASTed values the server did not send.
    pub unchanged: Vec<Box<str>>,
}

/// What an event may carry besides its ids.
#[derive(Debug, Default, Clone, Copy)]
pub struct Extras<'a> {
    /// `meta.origin`: see [`ORIGIN_PREFIX`].
    pub origin: Option<&'a str>,
    pub row: Option<&'a RowPayload>,
    /// An event with a row payload larger than this is sent with its ids only and
    /// `meta.truncated = true` (0: no limit).
    pub max_bytes: usize,
}

impl LiveEvent {
    /// Builds and encodes an event. `ids` of `None` (or empty) means "no key known: refetch all".
    pub fn new(
        source: &EventSource,
        kind: EventKind,
        ids: Option<&[Id]>,
        id: EventId,
        xid: u32,
        commit_time: i64,
    ) -> LiveEvent {
        LiveEvent::with_extras(source, kind, ids, id, xid, commit_time, Extras::default())
    }

    /// [`LiveEvent::new`] with an origin, a row payload and a size limit.
    pub fn with_extras(
        source: &EventSource,
        kind: EventKind,
        ids: Option<&[Id]>,
        id: EventId,
        xid: u32,
        commit_time: i64,
        extras: Extras<'_>,
    ) -> LiveEvent {
        let wire = Wire {
            source,
            kind,
            ids: ids.filter(|ids| !ids.is_empty()),
            date: format_pg_timestamp(commit_time),
            meta_id: id.to_string(),
            lsn: id.commit_lsn.to_string(),
            xid,
            origin: extras.origin,
        };
        let mut json = Vec::with_capacity(256);
        wire.write(&mut json, extras.row, false);
        if extras.row.is_some() && extras.max_bytes > 0 && json.len() > extras.max_bytes {
            json.clear();
            wire.write(&mut json, None, true);
        }
        LiveEvent {
            channel: source.channel.clone(),
            kind,
            id,
            xid,
            commit_time,
            schema: source.schema.clone(),
            table: source.table.clone(),
            json: json.into_boxed_slice(),
        }
    }

    /// The commit time in whole seconds since 1970-01-01 UTC.
    pub fn commit_unix_secs(&self) -> i64 {
        self.commit_time.div_euclid(1_000_000) + PG_EPOCH_UNIX_SECS
    }
}

/// An event's fields, written as JSON in the contract's order: `channel`, `type`, `payload`
/// (`ids`, `data`, `previous`), `date`, `meta` (`id`, `lsn`, `xid`, `schema`, `table`,
/// `dataProviderName`, `origin`, `unchanged`, `truncated`).
struct Wire<'a> {
    source: &'a EventSource,
    kind: EventKind,
    ids: Option<&'a [Id]>,
    date: String,
    meta_id: String,
    lsn: String,
    xid: u32,
    origin: Option<&'a str>,
}

impl Wire<'_> {
    fn write(&self, out: &mut Vec<u8>, row: Option<&RowPayload>, truncated: bool) {
        // Writing strings and ids into a Vec cannot fail.
        let string = |out: &mut Vec<u8>, s: &str| {
            serde_json::to_writer(&mut *out, s).expect("writing JSON to memory")
        };
        out.extend_from_slice(b"{\"channel\":");
        string(out, &self.source.channel);
        out.extend_from_slice(b",\"type\":\"");
        out.extend_from_slice(self.kind.as_str().as_bytes());
        out.extend_from_slice(b"\",\"payload\":{");
        let mut first = true;
        let mut field = |out: &mut Vec<u8>, name: &[u8]| {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(name);
        };
        if let Some(ids) = self.ids {
            field(out, b"\"ids\":");
            serde_json::to_writer(&mut *out, ids).expect("writing JSON to memory");
        }
        if let Some(data) = row.and_then(|r| r.data.as_deref()) {
            field(out, b"\"data\":");
            out.extend_from_slice(data);
        }
        if let Some(previous) = row.and_then(|r| r.previous.as_deref()) {
            field(out, b"\"previous\":");
            out.extend_from_slice(previous);
        }
        out.extend_from_slice(b"},\"date\":\"");
        out.extend_from_slice(self.date.as_bytes());
        out.extend_from_slice(b"\",\"meta\":{\"id\":\"");
        out.extend_from_slice(self.meta_id.as_bytes());
        out.extend_from_slice(b"\",\"lsn\":\"");
        out.extend_from_slice(self.lsn.as_bytes());
        out.extend_from_slice(b"\",\"xid\":");
        out.extend_from_slice(self.xid.to_string().as_bytes());
        out.extend_from_slice(b",\"schema\":");
        string(out, &self.source.schema);
        out.extend_from_slice(b",\"table\":");
        string(out, &self.source.table);
        if let Some(name) = &self.source.data_provider_name {
            out.extend_from_slice(b",\"dataProviderName\":");
            string(out, name);
        }
        if let Some(origin) = self.origin {
            out.extend_from_slice(b",\"origin\":");
            string(out, origin);
        }
        if let Some(row) = row.filter(|r| !r.unchanged.is_empty()) {
            out.extend_from_slice(b",\"unchanged\":");
            serde_json::to_writer(&mut *out, &row.unchanged).expect("writing JSON to memory");
        }
        if truncated {
            out.extend_from_slice(b",\"truncated\":true");
        }
        out.extend_from_slice(b"}}");
    }
}

/// Microseconds from 1970-01-01 to 2000-01-01, PostgreSQL's epoch: PostgreSQL timestamps
/// count from there.
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
const PG_EPOCH_UNIX_SECS: i64 = PG_EPOCH_UNIX_MICROS / 1_000_000;

/// Formats a PostgreSQL timestamp (µs since 2000-01-01 UTC) as RFC 3339 UTC with microseconds:
/// `2026-11-29T10:00:00.123456Z`.
pub fn format_pg_timestamp(pg_micros: i64) -> String {
    let unix_micros = pg_micros.saturating_add(PG_EPOCH_UNIX_SECS * 1_000_000);
    let secs = unix_micros.div_euclid(1_000_000);
    let micros = unix_micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut out = String::with_capacity(27);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    );
    out
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> EventSource {
        EventSource {
            channel: "resources/products".into(),
            schema: "public".into(),
            table: "products".into(),
            data_provider_name: None,
        }
    }

    #[test]
    fn formats_commit_time_as_rfc3339_utc() {
        assert_eq!(format_pg_timestamp(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(format_pg_timestamp(-1), "1999-12-31T23:59:59.999999Z");
        // 2024-02-29T07:04:56.5Z: leap day.
        let unix = 1_709_190_296_500_000i64;
        assert_eq!(
            format_pg_timestamp(unix - PG_EPOCH_UNIX_SECS * 1_000_000),
            "2024-02-29T07:04:56.500000Z"
        );
    }

    #[test]
    fn encodes_the_contract_shape() {
        let ids = [Id::Int(42), Id::Int(9_007_199_254_740_993)];
        let ev = LiveEvent::new(
            &source(),
            EventKind::Updated,
            Some(&ids),
            EventId {
                commit_lsn: Lsn(0x16B3748),
                ordinal: 2,
            },
            1234,
            0,
        );
        assert_eq!(
            std::str::from_utf8(&ev.json).unwrap(),
            r#"{"channel":"resources/products","type":"updated","payload":{"ids":[42,9007199254740993]},"date":"2000-01-01T00:00:00.000000Z","meta":{"id":"0/16B3748:2","lsn":"0/16B3748","xid":1234,"schema":"public","table":"products"}}"#
        );
    }

    #[test]
    fn no_ids_means_an_empty_payload() {
        let id = EventId {
            commit_lsn: Lsn(1),
            ordinal: 0,
        };
        for ids in [None, Some(&[][..])] {
            let ev = LiveEvent::new(&source(), EventKind::Deleted, ids, id, 1, 0);
            let v: serde_json::Value = serde_json::from_slice(&ev.json).unwrap();
            assert_eq!(v["payload"], serde_json::json!({}));
        }
    }

    #[test]
    fn a_refetch_event_has_type_star_and_an_empty_payload() {
        let id = EventId {
            commit_lsn: Lsn(0x16B3748),
            ordinal: 1,
        };
        let ev = LiveEvent::new(&source(), EventKind::Refetch, None, id, 7, 0);
        assert_eq!(
            std::str::from_utf8(&ev.json).unwrap(),
            r#"{"channel":"resources/products","type":"*","payload":{},"date":"2000-01-01T00:00:00.000000Z","meta":{"id":"0/16B3748:1","lsn":"0/16B3748","xid":7,"schema":"public","table":"products"}}"#
        );
        for (i, kind) in EventKind::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, i, "ALL is in discriminant order");
        }
    }

    #[test]
    fn composite_and_text_ids() {
        let ids = [Id::Composite(
            vec![Id::Int(1), Id::Text("a\"b".into())].into_boxed_slice(),
        )];
        let mut src = source();
        src.data_provider_name = Some("second".into());
        let ev = LiveEvent::new(
            &src,
            EventKind::Created,
            Some(&ids),
            EventId {
                commit_lsn: Lsn(1),
                ordinal: 0,
            },
            1,
            0,
        );
        let v: serde_json::Value = serde_json::from_slice(&ev.json).unwrap();
        assert_eq!(v["payload"]["ids"], serde_json::json!([[1, "a\"b"]]));
        assert_eq!(v["meta"]["dataProviderName"], "second");
    }
}

//! Decoded changes → LiveEvents: picks the mapped tables, names each change's channels (fixed,
//! or rendered from the row by a [`channel::Template`]), turns replica-identity key values into
//! typed ids and coalesces them per (transaction, channel, table, type), splitting past
//! `max_ids_per_event` and holding at most [`MAX_GROUPS`] groups, so memory stays bounded on any
//! transaction; a table with `payload = "row"` gets one event per row with the row as JSON
//! ([`row`]). Pure; driven by `source::stream`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::decode::{LogicalMessage, OldTuple, Relation, RelationCache, Tuple, Value};
use crate::event::{
    EventId, EventKind, EventSource, Extras, Id, LiveEvent, MAX_ORIGIN_BYTES, ORIGIN_PREFIX,
    RowPayload,
};
use crate::lsn::Lsn;

pub mod channel;
pub mod row;

use channel::Template;
use row::{Columns, Holds, RowShape, TypeInfo};

/// Type OIDs whose text form becomes a JSON number: int2, int4, int8, oid.
const INT_TYPE_OIDS: [u32; 4] = [21, 23, 20, 26];

/// A mapped table, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct TableRule {
    pub schema: String,
    pub name: String,
    /// Where its events go: one event per channel. A template takes segments from the row.
    pub channels: Vec<Template>,
    /// Emit every id as a JSON string (for clients that cannot hold int8 exactly).
    pub ids_as_strings: bool,
    pub data_provider_name: Option<String>,
    /// `where`: the publication row filter (PostgreSQL 15+), as written.
    pub row_filter: Option<String>,
    /// `payload = "row"`: events carry the row (`payload.data`, `payload.previous`).
    pub row_payload: bool,
    /// `columns` / `exclude_columns`: the publication column list (PostgreSQL 15+).
    pub columns: Columns,
    /// `numeric_as_number`: numeric values in row payloads as JSON numbers, not strings.
    pub numeric_as_number: bool,
}

impl TableRule {
    /// `schema.table` as a user writes it in `name` (see [`qualified`]).
    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.name)
    }

    /// Its first channel (as written), to name it by.
    pub fn channel(&self) -> &str {
        self.channels.first().map_or("", Template::as_str)
    }

    /// The columns its channel templates take values from.
    pub fn template_columns(&self) -> Vec<&str> {
        let mut columns: Vec<&str> = Vec::new();
        for c in self.channels.iter().flat_map(Template::columns) {
            if !columns.contains(&c) {
                columns.push(c);
            }
        }
        columns
    }

    /// A channel name each of its channels can be: itself when fixed, a sample rendering of a
    /// template (for checking what a sink accepts).
    pub fn channel_samples(&self) -> Vec<String> {
        self.channels.iter().map(Template::sample).collect()
    }
}

/// `schema.table` as a user writes it in a table's `name`: a part that is not a plain
/// lower-case identifier in double quotes, so that `"edge_b.dotted"` (one table) and
/// `edge_b.dotted` (a schema and a table) read differently.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", display_part(schema), display_part(table))
}

/// A mapped table whose relation was renamed: still streamed, under its configured name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renamed {
    pub configured: String,
    pub now: String,
    pub channel: String,
}

fn display_part(part: &str) -> String {
    let plain = part.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && part
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        part.to_owned()
    } else {
        format!("\"{}\"", part.replace('"', "\"\""))
    }
}

/// How changes become events.
#[derive(Debug, Clone, Copy)]
pub struct MapOptions {
    /// One event per (transaction, table, type) carrying all ids; otherwise one event per row.
    pub coalesce: bool,
    /// Split a coalesced event once it holds this many ids.
    pub max_ids_per_event: usize,
    /// An event with a row payload larger than this goes out with its ids only (0: no limit).
    pub max_event_bytes: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    #[error("{what} arrived outside a transaction")]
    NoTransaction { what: &'static str },
    #[error("BEGIN arrived inside transaction {xid}")]
    NestedBegin { xid: u32 },
    #[error("change for relation OID {0} arrived before its Relation message")]
    UnknownRelation(u32),
    #[error("COMMIT at {commit} does not match BEGIN at {begin}")]
    CommitMismatch { begin: Lsn, commit: Lsn },
}

/// What a message meant for the pipeline.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to acknowledge yet.
    Continue,
    /// A transaction ended; once its events (already emitted) are delivered, `end_lsn` may be
    /// confirmed to the server.
    Committed { end_lsn: Lsn },
}

/// How to find a mapped table's ids in its tuples.
#[derive(Debug)]
struct Binding {
    /// Where its events go.
    routes: Vec<Route>,
    /// Which of the relation's columns the replica identity holds (an old key tuple has values
    /// for these only).
    identity: Vec<bool>,
    /// Positions of the key columns in the relation, in key order; empty: no usable key.
    key: Vec<KeyColumn>,
    /// With `payload = "row"`: how its tuples become JSON objects. Such a table's events are
    /// one per row change, never coalesced.
    row: Option<RowShape>,
}

/// One of a table's channels.
#[derive(Debug)]
enum Route {
    Fixed(Arc<EventSource>),
    /// A template, with the position in the relation of each column it names (`None`: the
    /// relation has no such column, so no row can be routed by it).
    Template {
        template: Template,
        columns: Vec<(String, Option<usize>)>,
        /// The table's facts, with the template as the channel.
        base: Arc<EventSource>,
    },
}

#[derive(Debug, Clone, Copy)]
struct KeyColumn {
    index: usize,
    as_number: bool,
}

struct Txn {
    header: TxnHeader,
    groups: Vec<Group>,
    /// Where each (type, channel, table) has its group in `groups`.
    index: HashMap<GroupKey, usize>,
}

type GroupKey = (EventKind, Arc<str>, Arc<str>, Arc<str>);

/// Groups one transaction may hold before all of them leave as events: channel templates can
/// give a transaction as many channels as it has rows.
const MAX_GROUPS: usize = 1024;

/// What every event of a transaction shares, and the ordinal of its next event.
struct TxnHeader {
    commit_lsn: Lsn,
    xid: u32,
    commit_time: i64,
    next_ordinal: u64,
    /// What the transaction named as its origin (see [`ORIGIN_PREFIX`]), for the events made
    /// after it did.
    origin: Option<Box<str>>,
}

struct Group {
    source: Arc<EventSource>,
    kind: EventKind,
    /// Ids in order of first appearance, without repeats (since the last split).
    ids: Vec<Id>,
    seen: HashSet<Id>,
    /// Some row had no resolvable key, or the table was truncated: the event carries no ids,
    /// which tells clients to refetch everything.
    whole_table: bool,
}

/// One of a mapped table's channels, with its event source.
type TableChannel = (Template, Arc<EventSource>);

/// A mapped table's settings beyond its channel.
#[derive(Debug, Clone)]
struct TableSettings {
    ids_as_strings: bool,
    /// `Some` with `payload = "row"`: which columns, and numeric as numbers.
    row: Option<(Columns, bool)>,
}

pub struct Mapper {
    /// Each mapped table's channels, in order, each with its event source (a template's with
    /// the template as its channel).
    rules: HashMap<(String, String), Vec<TableChannel>>,
    settings: HashMap<(String, String), TableSettings>,
    options: MapOptions,
    relations: RelationCache<Option<Arc<Binding>>>,
    /// The mapped tables' relation OIDs, as Relation messages named them: a table renamed
    /// (`ALTER TABLE … RENAME`) is still the same relation, and stays mapped. Kept across
    /// sessions.
    mapped_oids: HashMap<u32, (String, String)>,
    txn: Option<Txn>,
    /// Each distinct fixed channel once, in configuration order, with the first table mapped
    /// to it: where [`Mapper::refetch`] sends its events.
    channels: Vec<Arc<EventSource>>,
    /// Changes whose template channels could not be rendered.
    unroutable: metrics::Counter,
    /// When that was last logged.
    unroutable_logged: Option<std::time::Instant>,
}

/// Which rows of a change go to one of its channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Both,
    /// The channel of the new row only (the row moved here): `data`, no `previous`.
    New,
    /// The channel of the old row only (the row moved away): `previous`, no `data`.
    Old,
}

/// The longest channel a template may render: the relay's limit on channel names, and AMQP's on
/// routing keys.
const MAX_RENDERED_CHANNEL_BYTES: usize = 255;

/// How often an unroutable change is logged at most.
const UNROUTABLE_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Mapper {
    pub fn new(rules: &[TableRule], options: MapOptions) -> Mapper {
        let mut map = HashMap::new();
        let mut strings = HashMap::new();
        let mut channels: Vec<Arc<EventSource>> = Vec::new();
        for r in rules {
            let key = (r.schema.clone(), r.name.clone());
            let mut sources = Vec::new();
            for template in &r.channels {
                let source = Arc::new(EventSource {
                    channel: template.as_str().into(),
                    schema: r.schema.as_str().into(),
                    table: r.name.as_str().into(),
                    data_provider_name: r.data_provider_name.as_deref().map(Into::into),
                });
                if template.is_fixed() && !channels.iter().any(|c| c.channel == source.channel) {
                    channels.push(source.clone());
                }
                sources.push((template.clone(), source));
            }
            map.insert(key.clone(), sources);
            let settings = TableSettings {
                ids_as_strings: r.ids_as_strings,
                row: r
                    .row_payload
                    .then(|| (r.columns.clone(), r.numeric_as_number)),
            };
            strings.insert(key, settings);
        }
        Mapper {
            channels,
            rules: map,
            settings: strings,
            options: MapOptions {
                max_ids_per_event: options.max_ids_per_event.max(1),
                ..options
            },
            relations: RelationCache::default(),
            mapped_oids: HashMap::new(),
            txn: None,
            unroutable: metrics::counter!(crate::status::metric::EVENTS_UNROUTABLE),
            unroutable_logged: None,
        }
    }

    /// Forgets session state; call when a new replication session starts.
    pub fn reset(&mut self) {
        self.relations.clear();
        self.txn = None;
    }

    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// Appends one `*` event with an empty payload to `out` for every mapped channel (each
    /// once, in configuration order): everything on it may have changed, refetch. The events
    /// belong to the open transaction — the slot's recreation marker — so their ids are its
    /// commit LSN and their ordinals in it, as for any event: stable when replayed, and no row
    /// change shares that transaction (see `source::catalog::recreate_slot`).
    pub fn refetch(&mut self, out: &mut Vec<LiveEvent>) -> Result<(), MapError> {
        let txn = self.txn.as_mut().ok_or(MapError::NoTransaction {
            what: "the slot's recreation marker",
        })?;
        for source in &self.channels {
            txn.header.emit(source, EventKind::Refetch, &[], true, out);
        }
        Ok(())
    }

    /// Records that relation `oid` is the table `schema.name` (looked up when a session
    /// starts): if it is mapped, it stays mapped when renamed before its first change.
    pub fn knows(&mut self, oid: u32, schema: &str, name: &str) {
        let key = (schema.to_owned(), name.to_owned());
        if self.rules.contains_key(&key) {
            self.mapped_oids.insert(oid, key);
        }
    }

    /// Whether `rel` is a mapped table (by its name, or as a mapped relation since renamed):
    /// the caller looks it up in the catalog and passes what it found to
    /// [`Mapper::relation`].
    pub fn is_mapped(&self, rel: &Relation) -> bool {
        self.rules
            .contains_key(&(rel.namespace.clone(), rel.name.clone()))
            || self.mapped_oids.contains_key(&rel.oid)
    }

    /// Records a Relation message, with what the catalog says of it (see
    /// [`Mapper::is_mapped`]; `None` when it was not looked up). Returns the mapped table's
    /// configured name when the relation now has another one (it was renamed).
    pub fn relation(&mut self, rel: &Relation, catalogued: Option<&Catalogued>) -> Option<Renamed> {
        let named = (rel.namespace.clone(), rel.name.clone());
        let (key, renamed) = if self.rules.contains_key(&named) {
            // A relation that had this name before (renamed away, then another took the name)
            // is no longer the mapped table: the name is what the configuration means.
            let before: Vec<u32> = self
                .mapped_oids
                .iter()
                .filter(|(oid, key)| **oid != rel.oid && **key == named)
                .map(|(oid, _)| *oid)
                .collect();
            for oid in before {
                self.mapped_oids.remove(&oid);
                if self.relations.get(oid).is_some() {
                    self.relations.insert(oid, None);
                }
            }
            self.mapped_oids.insert(rel.oid, named.clone());
            (named, None)
        } else if let Some(configured) = self.mapped_oids.get(&rel.oid) {
            let renamed = Renamed {
                configured: qualified(&configured.0, &configured.1),
                now: qualified(&rel.namespace, &rel.name),
                channel: self.rules[configured][0].0.as_str().to_owned(),
            };
            (configured.clone(), Some(renamed))
        } else {
            self.relations.insert(rel.oid, None);
            return None;
        };
        let sources = &self.rules[&key];
        let settings = &self.settings[&key];
        let no_types = HashMap::new();
        let types = catalogued.map_or(&no_types, |c| &c.types);
        let column = |index: usize| {
            let base = row::base_type(rel.columns[index].type_oid, types);
            KeyColumn {
                index,
                as_number: !settings.ids_as_strings && INT_TYPE_OIDS.contains(&base),
            }
        };
        let key_columns = key_order(rel, catalogued).into_iter().map(column).collect();
        let row = settings
            .row
            .as_ref()
            .map(|(columns, numeric)| RowShape::new(rel, columns, types, *numeric));
        let routes = sources
            .iter()
            .map(|(template, source)| {
                if template.is_fixed() {
                    return Route::Fixed(source.clone());
                }
                let columns = template
                    .columns()
                    .map(|c| (c.to_owned(), rel.columns.iter().position(|rc| rc.name == c)))
                    .collect();
                Route::Template {
                    template: template.clone(),
                    columns,
                    base: source.clone(),
                }
            })
            .collect();
        self.relations.insert(
            rel.oid,
            Some(Arc::new(Binding {
                routes,
                identity: rel.columns.iter().map(|c| c.key).collect(),
                key: key_columns,
                row,
            })),
        );
        renamed
    }

    /// Maps one message, appending any events it completes to `out`.
    /// Relation messages must go through [`Mapper::relation`] instead.
    pub fn handle(
        &mut self,
        msg: &LogicalMessage<'_>,
        out: &mut Vec<LiveEvent>,
    ) -> Result<Step, MapError> {
        match msg {
            LogicalMessage::Begin(b) => {
                if let Some(t) = &self.txn {
                    return Err(MapError::NestedBegin { xid: t.header.xid });
                }
                self.txn = Some(Txn {
                    header: TxnHeader {
                        commit_lsn: b.final_lsn,
                        xid: b.xid,
                        commit_time: b.commit_time,
                        next_ordinal: 0,
                        origin: None,
                    },
                    groups: Vec::new(),
                    index: HashMap::new(),
                });
            }
            LogicalMessage::Commit(c) => {
                let Txn {
                    mut header, groups, ..
                } = self
                    .txn
                    .take()
                    .ok_or(MapError::NoTransaction { what: "COMMIT" })?;
                if header.commit_lsn != c.commit_lsn {
                    return Err(MapError::CommitMismatch {
                        begin: header.commit_lsn,
                        commit: c.commit_lsn,
                    });
                }
                for g in groups {
                    if g.whole_table || !g.ids.is_empty() {
                        header.emit(&g.source, g.kind, &g.ids, g.whole_table, out);
                    }
                }
                return Ok(Step::Committed { end_lsn: c.end_lsn });
            }
            LogicalMessage::Insert { relation, new } => {
                if let Some(b) = self.binding(*relation)? {
                    let id = key_of(&b, *new, None);
                    let row = b
                        .row
                        .as_ref()
                        .map(|shape| row_payload(shape, Some(*new), None));
                    for (source, _) in self.sources(&b, Some(*new), None) {
                        match &row {
                            Some(row) => self.emit_row(
                                &source,
                                EventKind::Created,
                                std::slice::from_ref(&id),
                                row,
                                out,
                            )?,
                            None => self.add(&source, EventKind::Created, [id.clone()], out)?,
                        }
                    }
                }
            }
            LogicalMessage::Update { relation, old, new } => {
                if let Some(b) = self.binding(*relation)? {
                    let old_tuple = old.as_ref().map(OldTuple::tuple);
                    let new_id = key_of(&b, *new, old_tuple);
                    // The old key, when the update changed it.
                    let old_id = old_tuple
                        .map(|t| key_of(&b, t, None))
                        .filter(|old_id| *old_id != new_id);
                    let row = b
                        .row
                        .as_ref()
                        .map(|shape| row_payload(shape, Some(*new), *old));
                    // A row that moved to another channel (a template's column changed) goes
                    // to both, each with its side of the row only.
                    for (source, side) in self.sources(&b, Some(*new), *old) {
                        match (&row, &old_id) {
                            (Some(row), _) => {
                                let ids: Vec<Option<Id>> =
                                    old_id.iter().cloned().chain([new_id.clone()]).collect();
                                let one_side;
                                let row = match side {
                                    Side::Both => row,
                                    Side::New => {
                                        one_side = RowPayload {
                                            data: row.data.clone(),
                                            previous: None,
                                            unchanged: row.unchanged.clone(),
                                        };
                                        &one_side
                                    }
                                    Side::Old => {
                                        one_side = RowPayload {
                                            data: None,
                                            previous: row.previous.clone(),
                                            unchanged: Vec::new(),
                                        };
                                        &one_side
                                    }
                                };
                                self.emit_row(&source, EventKind::Updated, &ids, row, out)?
                            }
                            (None, Some(old_id)) => self.add(
                                &source,
                                EventKind::Updated,
                                [old_id.clone(), new_id.clone()],
                                out,
                            )?,
                            (None, None) => {
                                self.add(&source, EventKind::Updated, [new_id.clone()], out)?
                            }
                        }
                    }
                }
            }
            LogicalMessage::Delete { relation, old } => {
                if let Some(b) = self.binding(*relation)? {
                    let id = key_of(&b, old.tuple(), None);
                    let row = b
                        .row
                        .as_ref()
                        .map(|shape| row_payload(shape, None, Some(*old)));
                    for (source, _) in self.sources(&b, None, Some(*old)) {
                        match &row {
                            Some(row) => self.emit_row(
                                &source,
                                EventKind::Deleted,
                                std::slice::from_ref(&id),
                                row,
                                out,
                            )?,
                            None => self.add(&source, EventKind::Deleted, [id.clone()], out)?,
                        }
                    }
                }
            }
            LogicalMessage::Truncate { relations, .. } => {
                for rel in relations {
                    if let Some(b) = self.binding(*rel)? {
                        // Every row of every channel: the fixed ones only (a template's
                        // channels are not known: counted as unroutable). A table with row
                        // payloads sends its events as the rows come, so its TRUNCATE leaves
                        // at once too, in its place among them.
                        for route in &b.routes {
                            match route {
                                Route::Fixed(source) if b.row.is_some() => {
                                    let none = RowPayload::default();
                                    self.emit_row(source, EventKind::Deleted, &[None], &none, out)?;
                                }
                                Route::Fixed(source) => {
                                    self.add(source, EventKind::Deleted, [None], out)?
                                }
                                Route::Template { template, base, .. } => {
                                    self.unroutable(base, template.as_str())
                                }
                            }
                        }
                    }
                }
            }
            LogicalMessage::Message {
                transactional: true,
                prefix: ORIGIN_PREFIX,
                content,
                ..
            } => self.origin(content),
            // Relations are recorded through `relation`; types, replication origins and other
            // messages carry no row changes.
            LogicalMessage::Relation(_)
            | LogicalMessage::Type { .. }
            | LogicalMessage::Origin { .. }
            | LogicalMessage::Message { .. } => {}
        }
        Ok(Step::Continue)
    }

    /// A transaction named its origin: its events from here on carry it. One that is not
    /// UTF-8, empty or longer than [`MAX_ORIGIN_BYTES`] is ignored.
    fn origin(&mut self, content: &[u8]) {
        let Some(txn) = self.txn.as_mut() else {
            return;
        };
        match std::str::from_utf8(content) {
            Ok(origin) if !origin.is_empty() && origin.len() <= MAX_ORIGIN_BYTES => {
                txn.header.origin = Some(origin.into());
            }
            _ => tracing::debug!(
                xid = txn.header.xid,
                bytes = content.len(),
                "ignoring a pglive.origin message that is empty, too long or not UTF-8"
            ),
        }
    }

    /// The channels one row change goes to: each fixed channel, and each template rendered
    /// from the new row and from the old one (once when both give the same). A template that
    /// cannot be rendered (a column it names is not in the row, or is in an old key tuple
    /// only as filler) is counted and logged as unroutable.
    fn sources<'t>(
        &mut self,
        b: &Binding,
        new: Option<Tuple<'t>>,
        old: Option<OldTuple<'t>>,
    ) -> Vec<(Arc<EventSource>, Side)> {
        let mut out: Vec<(Arc<EventSource>, Side)> = Vec::with_capacity(b.routes.len());
        for route in &b.routes {
            let (template, columns, base) = match route {
                Route::Fixed(source) => {
                    out.push((source.clone(), Side::Both));
                    continue;
                }
                Route::Template {
                    template,
                    columns,
                    base,
                } => (template, columns, base),
            };
            let old_row = old.map(|o| o.tuple());
            let key_only = matches!(old, Some(OldTuple::Key(_)));
            let value_in = |tuple: Tuple<'t>,
                            identity_only: bool,
                            name: &str|
             -> Result<Option<&'t [u8]>, ()> {
                let (_, index) = columns.iter().find(|(c, _)| c == name).ok_or(())?;
                let index = index.ok_or(())?;
                if identity_only && !b.identity.get(index).copied().unwrap_or(false) {
                    return Err(());
                }
                match tuple.get(index) {
                    Some(Value::Text(t)) => Ok(Some(t)),
                    Some(Value::Null) => Ok(None),
                    _ => Err(()),
                }
            };
            // A channel longer than any relay takes cannot be delivered: not routable.
            let fits = |c: &String| c.len() <= MAX_RENDERED_CHANNEL_BYTES;
            let from_new = new
                .and_then(|new| {
                    template
                        .render(|c| {
                            value_in(new, false, c).or_else(|()| match old_row {
                                Some(o) => value_in(o, key_only, c),
                                None => Err(()),
                            })
                        })
                        .ok()
                })
                .filter(fits);
            let from_old = old_row
                .and_then(|o| template.render(|c| value_in(o, key_only, c)).ok())
                .filter(fits);
            // A row that moved (the template's column changed) reaches both channels: the new
            // one with the new row only, the old one with the old row only.
            let rendered = match (from_new, from_old) {
                (Some(n), Some(o)) if n != o => vec![(n, Side::New), (o, Side::Old)],
                (Some(c), _) | (None, Some(c)) => vec![(c, Side::Both)],
                (None, None) => Vec::new(),
            };
            if rendered.is_empty() {
                self.unroutable(base, template.as_str());
            }
            for (channel, side) in rendered {
                let source = Arc::new(EventSource {
                    channel: channel.into(),
                    schema: base.schema.clone(),
                    table: base.table.clone(),
                    data_provider_name: base.data_provider_name.clone(),
                });
                out.push((source, side));
            }
        }
        out
    }

    /// Counts a change that a channel template could not route, and says so (at most every
    /// [`UNROUTABLE_LOG_EVERY`], however many rows a transaction has).
    fn unroutable(&mut self, base: &EventSource, template: &str) {
        self.unroutable.increment(1);
        let now = std::time::Instant::now();
        if self
            .unroutable_logged
            .is_some_and(|at| now.duration_since(at) < UNROUTABLE_LOG_EVERY)
        {
            return;
        }
        self.unroutable_logged = Some(now);
        tracing::warn!(
            schema = %base.schema, table = %base.table, channel = %template,
            "a change could not be routed to a channel template: a column it names is not in \
             the row PostgreSQL sent (a DELETE gives only the replica identity's columns: put \
             the template's columns in it, or set REPLICA IDENTITY FULL), its value makes a \
             channel over {MAX_RENDERED_CHANNEL_BYTES} bytes, or it was a TRUNCATE (whose \
             rows' channels are not known); pglive_events_unroutable_total counts them"
        );
    }

    fn binding(&self, oid: u32) -> Result<Option<Arc<Binding>>, MapError> {
        match self.relations.get(oid) {
            Some(b) => Ok(b.clone()),
            None => Err(MapError::UnknownRelation(oid)),
        }
    }

    /// Emits the event of one row change of a table with row payloads, at once (such events
    /// are never coalesced). `ids` with a `None`: the row's key is unknown.
    fn emit_row(
        &mut self,
        source: &EventSource,
        kind: EventKind,
        ids: &[Option<Id>],
        row: &RowPayload,
        out: &mut Vec<LiveEvent>,
    ) -> Result<(), MapError> {
        let txn = self.txn.as_mut().ok_or(MapError::NoTransaction {
            what: "a row change",
        })?;
        let whole_table = ids.iter().any(Option::is_none);
        let ids: Vec<Id> = ids.iter().flatten().cloned().collect();
        let max_bytes = self.options.max_event_bytes;
        txn.header
            .emit_with(source, kind, &ids, whole_table, Some(row), max_bytes, out);
        Ok(())
    }

    /// Adds the ids of one row change (`None`: the row's key is unknown).
    /// Adds the ids of one row change (`None`: the row's key is unknown) to the event of its
    /// (type, channel, table).
    fn add<const N: usize>(
        &mut self,
        source: &Arc<EventSource>,
        kind: EventKind,
        ids: [Option<Id>; N],
        out: &mut Vec<LiveEvent>,
    ) -> Result<(), MapError> {
        let max = self.options.max_ids_per_event;
        let txn = self.txn.as_mut().ok_or(MapError::NoTransaction {
            what: "a row change",
        })?;
        let whole_table = ids.iter().any(Option::is_none);
        let Txn {
            header,
            groups,
            index,
        } = txn;
        if !self.options.coalesce {
            let ids: Vec<Id> = ids.into_iter().flatten().collect();
            header.emit(source, kind, &ids, whole_table, out);
            return Ok(());
        }
        // By channel and table, not by binding: a Relation message mid-transaction (after DDL)
        // replaces the binding but must not split the table's coalesced event.
        let key: GroupKey = (
            kind,
            source.channel.clone(),
            source.schema.clone(),
            source.table.clone(),
        );
        let pos = match index.get(&key) {
            Some(&pos) => pos,
            None => {
                if groups.len() >= MAX_GROUPS {
                    // Too many channels at once: what every group holds leaves now, in order.
                    for g in groups.drain(..) {
                        if g.whole_table || !g.ids.is_empty() {
                            header.emit(&g.source, g.kind, &g.ids, g.whole_table, out);
                        }
                    }
                    index.clear();
                }
                groups.push(Group {
                    source: source.clone(),
                    kind,
                    ids: Vec::new(),
                    seen: HashSet::new(),
                    whole_table: false,
                });
                index.insert(key, groups.len() - 1);
                groups.len() - 1
            }
        };
        let group = &mut groups[pos];
        if whole_table || group.whole_table {
            // One id-less event will cover every row; holding ids would only cost memory.
            group.whole_table = true;
            group.ids = Vec::new();
            group.seen = HashSet::new();
            return Ok(());
        }
        for id in ids.into_iter().flatten() {
            let group = &mut groups[pos];
            if !group.seen.insert(id.clone()) {
                continue;
            }
            group.ids.push(id);
            if group.ids.len() >= max {
                // Keep the order of first appearance: what earlier groups hold leaves first.
                for g in groups[..=pos].iter_mut() {
                    if g.whole_table || g.ids.is_empty() {
                        continue;
                    }
                    header.emit(&g.source, g.kind, &g.ids, false, out);
                    g.ids.clear();
                    g.seen.clear();
                }
            }
        }
        Ok(())
    }
}

impl TxnHeader {
    fn emit(
        &mut self,
        source: &EventSource,
        kind: EventKind,
        ids: &[Id],
        whole_table: bool,
        out: &mut Vec<LiveEvent>,
    ) {
        self.emit_with(source, kind, ids, whole_table, None, 0, out);
    }

    #[allow(clippy::too_many_arguments)]
    fn emit_with(
        &mut self,
        source: &EventSource,
        kind: EventKind,
        ids: &[Id],
        whole_table: bool,
        row: Option<&RowPayload>,
        max_bytes: usize,
        out: &mut Vec<LiveEvent>,
    ) {
        let id = EventId {
            commit_lsn: self.commit_lsn,
            ordinal: self.next_ordinal,
        };
        self.next_ordinal += 1;
        let ids = (!whole_table).then_some(ids);
        let extras = Extras {
            origin: self.origin.as_deref(),
            row,
            max_bytes,
        };
        out.push(LiveEvent::with_extras(
            source,
            kind,
            ids,
            id,
            self.xid,
            self.commit_time,
            extras,
        ));
    }
}

/// The row payload of one change: `new` becomes `data` (unchanged TOASTed values filled from
/// the old row when it is whole), `old` becomes `previous` (the whole old row under REPLICA
/// IDENTITY FULL, else only its key columns).
fn row_payload(shape: &RowShape, new: Option<Tuple<'_>>, old: Option<OldTuple<'_>>) -> RowPayload {
    let mut row = RowPayload::default();
    let whole_old = match old {
        Some(OldTuple::Full(t)) => Some(t),
        _ => None,
    };
    if let Some(new) = new {
        let mut data = Vec::with_capacity(128);
        shape.write(new, Holds::Row, whole_old, &mut data, &mut row.unchanged);
        row.data = Some(data);
    }
    if let Some(old) = old {
        let holds = match old {
            OldTuple::Full(_) => Holds::Row,
            OldTuple::Key(_) => Holds::Key,
        };
        let mut previous = Vec::with_capacity(64);
        let mut ignored = Vec::new();
        shape.write(old.tuple(), holds, None, &mut previous, &mut ignored);
        row.previous = Some(previous);
    }
    row
}

/// What the catalog says of a mapped relation, looked up when its Relation message arrives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalogued {
    /// The primary key's columns, in key order (empty: none).
    pub primary_key: Vec<String>,
    /// The columns of the index named by `REPLICA IDENTITY USING INDEX`, in key order (empty:
    /// none, or it is the primary key).
    pub identity_index: Vec<String>,
    /// The relation's column types that are domains or arrays, and the types those are over
    /// (from `pg_type`).
    pub types: HashMap<u32, TypeInfo>,
}

/// The positions of `rel`'s key columns in key order (empty: no usable key). The key is what
/// the replica identity sends (the columns the Relation message flags), or the primary key
/// under FULL identity; either way in the key's own order, which the Relation message does not
/// give (it flags columns in table order): that of the catalog's index with exactly the flagged
/// columns. A catalog that no longer has such an index (the table changed since) leaves table
/// order.
fn key_order(rel: &Relation, catalogued: Option<&Catalogued>) -> Vec<usize> {
    let by_names = |names: &Vec<String>| {
        names
            .iter()
            .map(|name| rel.columns.iter().position(|c| &c.name == name))
            .collect::<Option<Vec<_>>>()
            .filter(|cols| !cols.is_empty())
    };
    let flagged: Vec<usize> = (0..rel.columns.len())
        .filter(|&i| rel.columns[i].key)
        .collect();
    if rel.replica_identity == b'f' || flagged.is_empty() {
        return catalogued
            .and_then(|c| by_names(&c.primary_key))
            .unwrap_or_default();
    }
    let is_flagged_set = |cols: &Vec<usize>| {
        let mut sorted = cols.clone();
        sorted.sort_unstable();
        sorted == flagged
    };
    catalogued
        .into_iter()
        .flat_map(|c| [&c.identity_index, &c.primary_key])
        .filter_map(by_names)
        .find(is_flagged_set)
        .unwrap_or(flagged)
}

/// The key of one row, or `None` when a key column has no value in this tuple (filler, NULL,
/// or an unchanged TOASTed value that `fallback` does not hold either).
fn key_of(binding: &Binding, tuple: Tuple<'_>, fallback: Option<Tuple<'_>>) -> Option<Id> {
    if binding.key.is_empty() {
        return None;
    }
    let value = |col: &KeyColumn| -> Option<Id> {
        let text = match tuple.get(col.index)? {
            Value::Text(t) => t,
            Value::Unchanged => match fallback?.get(col.index)? {
                Value::Text(t) => t,
                _ => return None,
            },
            Value::Null | Value::Binary(_) => return None,
        };
        let text = std::str::from_utf8(text).ok()?;
        if col.as_number
            && let Ok(n) = text.parse::<i64>()
        {
            return Some(Id::Int(n));
        }
        Some(Id::Text(text.into()))
    };
    match binding.key.as_slice() {
        [single] => value(single),
        many => many
            .iter()
            .map(value)
            .collect::<Option<Vec<_>>>()
            .map(|v| Id::Composite(v.into_boxed_slice())),
    }
}

#[cfg(test)]
mod tests;

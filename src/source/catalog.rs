//! The control connection: an ordinary `tokio-postgres` session for catalog work the walsender
//! cannot do — creating and inspecting the slot and publication, looking up primary keys,
//! reading `wal_sender_timeout`. Used by `run`, `check`, `setup` and `teardown`.

use std::time::Duration;

use tokio_postgres::Client;

use super::conninfo::ConnInfo;
use super::error::SourceError;
use super::row_filter;
use super::sql::{quote_ident, quote_literal};
use super::transport::{self, AuthGuard, Established};
use crate::lsn::Lsn;
use crate::map::row::TypeInfo;
use crate::map::{Catalogued, TableRule};

/// Connects the control session; its connection task runs until the client is dropped. The
/// socket and TLS are set up as for the replication connection (see `transport`), and the
/// session reads through an [`AuthGuard`], so the password rule holds here too.
pub async fn connect(info: &ConnInfo, timeout: Duration) -> Result<Client, SourceError> {
    let timeout = info.connect_timeout.unwrap_or(timeout);
    let connect = async {
        let t = transport::connect(info).await?;
        let config = info.tokio_postgres_config(t.link.is_tls());
        let guarded = AuthGuard::new(t.io, info, t.link);
        let (client, conn) = config
            .connect_raw(guarded, Established { binding: t.binding })
            .await
            .map_err(|e| match transport::refusal_in(&e) {
                Some(refused) => SourceError::Fatal(refused),
                None => SourceError::Control(e),
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "control connection ended");
            }
        });
        Ok::<_, SourceError>(client)
    };
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| SourceError::Timeout {
            what: "connecting to PostgreSQL",
            after: timeout,
        })?
}

/// `wal_sender_timeout`, or `None` when disabled (0).
pub async fn wal_sender_timeout(client: &Client) -> Result<Option<Duration>, SourceError> {
    let row = client
        .query_one(
            "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_sender_timeout'",
            &[],
        )
        .await?;
    let ms: i64 = row.get(0);
    Ok((ms > 0).then(|| Duration::from_millis(ms as u64)))
}

/// The primary-key column names of `schema.table`, in key order (empty: no primary key).
pub async fn primary_key(
    client: &Client,
    schema: &str,
    table: &str,
) -> Result<Vec<String>, SourceError> {
    index_columns(client, schema, table, false).await
}

/// The key columns of `schema.table`'s primary key, or (`replica_identity`) of the index
/// `REPLICA IDENTITY USING INDEX` names, in key order (empty: no such index).
async fn index_columns(
    client: &Client,
    schema: &str,
    table: &str,
    replica_identity: bool,
) -> Result<Vec<String>, SourceError> {
    let rows = client
        .query(
            "SELECT a.attname::text
               FROM pg_index i
               JOIN pg_class c ON c.oid = i.indrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
              WHERE CASE WHEN $3 THEN i.indisreplident ELSE i.indisprimary END
                AND n.nspname = $1 AND c.relname = $2 AND k.ord <= i.indnkeyatts
              ORDER BY k.ord",
            &[&schema, &table, &replica_identity],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// What the catalog says of relation `oid` (as a Relation message names it) for mapping its
/// changes: its primary key and replica-identity index in key order, and which of
/// `type_oids` are domains or arrays, and over what (down to types that are neither).
pub async fn relation_keys(
    client: &Client,
    oid: u32,
    type_oids: &[u32],
) -> Result<Catalogued, SourceError> {
    let rows = client
        .query(
            "SELECT i.indisprimary, a.attname::text
               FROM pg_index i
               CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indrelid = $1 AND (i.indisprimary OR i.indisreplident)
                AND k.ord <= i.indnkeyatts
              ORDER BY i.indisprimary, k.ord",
            &[&oid],
        )
        .await?;
    let mut keys = Catalogued::default();
    for row in rows {
        let (primary, name): (bool, String) = (row.get(0), row.get(1));
        if primary {
            keys.primary_key.push(name);
        } else {
            keys.identity_index.push(name);
        }
    }
    // The column types, and what the domains, arrays and composites among them are made of,
    // to the bottom.
    let rows = client
        .query(
            "WITH RECURSIVE t(oid) AS (
                 SELECT unnest($1::oid[])
               UNION
                 SELECT n.oid FROM t JOIN pg_type p ON p.oid = t.oid
                 CROSS JOIN LATERAL (
                     SELECT p.typbasetype WHERE p.typtype = 'd'
                   UNION ALL
                     SELECT p.typelem WHERE p.typtype <> 'd' AND p.typelem <> 0 AND p.typlen = -1
                   UNION ALL
                     SELECT a.atttypid FROM pg_attribute a
                      WHERE p.typtype = 'c' AND a.attrelid = p.typrelid AND a.attnum > 0
                        AND NOT a.attisdropped) n(oid))
             SELECT p.oid,
                    CASE WHEN p.typtype = 'd' THEN p.typbasetype ELSE 0::oid END,
                    CASE WHEN p.typtype <> 'd' AND p.typelem <> 0 AND p.typlen = -1
                         THEN p.typelem ELSE 0::oid END,
                    ascii(p.typdelim::text),
                    coalesce(f.names, ARRAY[]::text[]),
                    coalesce(f.types, ARRAY[]::oid[])
               FROM t JOIN pg_type p ON p.oid = t.oid
               LEFT JOIN LATERAL (
                   SELECT array_agg(a.attname::text ORDER BY a.attnum) AS names,
                          array_agg(a.atttypid ORDER BY a.attnum) AS types
                     FROM pg_attribute a
                    WHERE p.typtype = 'c' AND a.attrelid = p.typrelid AND a.attnum > 0
                      AND NOT a.attisdropped) f ON true",
            &[&type_oids],
        )
        .await?;
    keys.types = rows
        .iter()
        .map(|r| {
            let delimiter: i32 = r.get(3);
            let names: Vec<String> = r.get(4);
            let types: Vec<u32> = r.get(5);
            let info = TypeInfo {
                base: r.get(1),
                element: r.get(2),
                delimiter: u8::try_from(delimiter).unwrap_or(b','),
                fields: names.into_iter().zip(types).collect(),
            };
            (r.get::<_, u32>(0), info)
        })
        .filter(|(_, info)| info.base != 0 || info.element != 0 || !info.fields.is_empty())
        .collect();
    Ok(keys)
}

/// What the server says about a replication slot.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    pub slot_type: String,
    pub database: Option<String>,
    pub active_pid: Option<i32>,
    pub confirmed_flush: Option<Lsn>,
    pub wal_status: Option<String>,
}

impl SlotInfo {
    /// PostgreSQL invalidated the slot (or removed WAL it needs): it can never stream again.
    pub fn is_lost(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }
}

pub async fn slot(client: &Client, name: &str) -> Result<Option<SlotInfo>, SourceError> {
    let row = client
        .query_opt(
            "SELECT plugin::text, slot_type, database::text, active_pid,
                    confirmed_flush_lsn::text, wal_status
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await?;
    Ok(row.map(|r| SlotInfo {
        plugin: r.get(0),
        slot_type: r.get(1),
        database: r.get(2),
        active_pid: r.get(3),
        confirmed_flush: r.get::<_, Option<String>>(4).and_then(|s| s.parse().ok()),
        wal_status: r.get(5),
    }))
}

/// Prefix of the logical message that marks where a recreated slot starts; its content is the
/// slot's name (every slot of the database decodes it, and only that slot's pglive acts on it).
pub const SLOT_RECREATED_PREFIX: &str = "pglive.slot_recreated";

/// Positions of a slot made anew by [`recreate_slot`].
#[derive(Debug, Clone, Copy)]
pub struct Recreated {
    /// Where the new slot's decoding became consistent.
    pub consistent_point: Lsn,
    /// The commit LSN of the recreation marker's transaction, where the slot now starts; none
    /// if the slot could not be advanced to it (then it starts at the consistent point).
    pub marker: Option<Lsn>,
}

/// Drops `slot_name` if it is still lost, creates it again, and writes the recreation marker
/// (a transactional `pg_logical_emit_message` with prefix [`SLOT_RECREATED_PREFIX`]) into the
/// new slot's stream. Its events are the `*` refetch events (see `Mapper::refetch`); the slot
/// moves past them only once every sink has acknowledged them, so a crash before that sends
/// them again, with the same ids.
///
/// Then the slot is advanced to the marker's commit: transactions that committed between the
/// slot's consistent point and the marker are skipped — the refetch covers them — so that the
/// marker's transaction is the first thing the slot sends. (Its commit LSN is found by
/// decoding that short stretch of WAL once.)
///
/// One query string, so that the server runs every step even if pglive dies halfway: it does
/// not look at the client connection while it works (unless `client_connection_check_interval`
/// is set), and the small results wait in its send buffer until the end. A failure between the
/// drop and the commit (a server crash, a `statement_timeout` while the creation waits for
/// running transactions) leaves the slot missing: with `on_slot_lost = "recreate"`, `run` then
/// creates it through here too (nothing to drop), marker included. Also used for a slot that
/// does not exist yet, under that policy.
pub async fn recreate_slot(
    client: &Client,
    slot_name: &str,
    publication: &str,
) -> Result<Recreated, SourceError> {
    let slot = quote_literal(slot_name);
    let prefix = quote_literal(SLOT_RECREATED_PREFIX);
    let publication = quote_literal(&quote_ident(publication));
    // Decoding and advancing read only flushed WAL, so they come after COMMIT; a session
    // setting carries the marker's transaction id there. In the decoded stream, the marker's
    // BEGIN ('B', byte 66) carries its commit LSN in bytes 2 to 9.
    let sql = format!(
        "BEGIN;
         SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
          WHERE slot_name = {slot} AND wal_status = 'lost';
         SELECT lsn::text AS consistent_point
           FROM pg_create_logical_replication_slot({slot}, 'pgoutput');
         SELECT pg_logical_emit_message(true, {prefix}, {slot}),
                set_config('pglive.slot_marker_xid', pg_current_xact_id()::xid::text, false);
         COMMIT;
         SELECT end_lsn::text AS marker FROM pg_replication_slot_advance({slot}, (
           SELECT '0/0'::pg_lsn + ('x' || encode(substring(data FROM 2 FOR 8), 'hex'))::bit(64)::bigint
             FROM pg_logical_slot_peek_binary_changes({slot}, NULL, NULL,
                    'proto_version', '1', 'publication_names', {publication}, 'messages', 'true')
            WHERE xid = current_setting('pglive.slot_marker_xid')::xid AND get_byte(data, 0) = 66
            LIMIT 1));"
    );
    let messages = match client.simple_query(&sql).await {
        Ok(m) => m,
        Err(e) => {
            // A failed step leaves the transaction block aborted: end it, so that the
            // connection stays usable.
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e.into());
        }
    };
    let mut consistent_point = None;
    let mut marker = None;
    for m in &messages {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
            let lsn = |name: &str| row.try_get(name).ok().flatten()?.parse::<Lsn>().ok();
            consistent_point = consistent_point.or_else(|| lsn("consistent_point"));
            marker = marker.or_else(|| lsn("marker"));
        }
    }
    let consistent_point = consistent_point.ok_or_else(|| {
        SourceError::Protocol(format!(
            "recreating replication slot {slot_name}: the server did not return its position"
        ))
    })?;
    Ok(Recreated {
        consistent_point,
        marker,
    })
}

/// Tables in the publication, as (schema, table); `None` when the publication does not exist.
/// A publication `FOR ALL TABLES` lists every table.
pub async fn publication_tables(
    client: &Client,
    publication: &str,
) -> Result<Option<Vec<(String, String)>>, SourceError> {
    if client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await?;
    Ok(Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
}

/// The relation OIDs of the mapped tables that exist, as (OID, schema, name).
pub async fn table_oids(
    client: &Client,
    tables: &[TableRule],
) -> Result<Vec<(u32, String, String)>, SourceError> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let rows = client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text
               FROM unnest($1::text[], $2::text[]) AS t(s, r)
               JOIN pg_namespace n ON n.nspname = t.s
               JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.r
                              AND c.relkind IN ('r', 'p')",
            &[&schemas, &names],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Where a mapped table is now, as (OID, schema, name): the table called `schema.name` if
/// there is one (also a new one, after the old was renamed away: the name is what the
/// configuration means), else the relation `oid` if it still exists (renamed); `None`: neither
/// exists.
pub async fn locate_table(
    client: &Client,
    oid: Option<u32>,
    schema: &str,
    name: &str,
) -> Result<Option<(u32, String, String)>, SourceError> {
    let row = client
        .query_opt(
            "SELECT c.oid, n.nspname::text, c.relname::text
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p')
                AND (c.oid = $1 OR (n.nspname = $2 AND c.relname = $3))
              ORDER BY (n.nspname = $2 AND c.relname = $3) DESC LIMIT 1",
            &[&oid.unwrap_or(0), &schema, &name],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
}

/// Whether the publication publishes partitions under their root; `None` if it does not exist.
pub async fn publication_via_root(
    client: &Client,
    publication: &str,
) -> Result<Option<bool>, SourceError> {
    Ok(client
        .query_opt(
            "SELECT pubviaroot FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .map(|r| r.get(0)))
}

/// What [`ensure_setup`] does about a slot that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingSlot {
    /// Create it.
    Create,
    /// Leave it to the caller (who creates it with a refetch marker, see [`recreate_slot`]).
    Leave,
    /// An error: a slot that vanished while pglive ran must not be silently replaced, as the
    /// changes in between would be lost.
    Fail,
}

/// Creates what is missing: the publication (for the mapped tables, or with them added), then
/// the slot as `missing_slot` says. Idempotent. Returns a line per change made.
pub async fn ensure_setup(
    client: &Client,
    publication: &str,
    slot_name: &str,
    tables: &[TableRule],
    missing_slot: MissingSlot,
) -> Result<Vec<String>, SourceError> {
    let mut done = Vec::new();
    let any_partitioned = check_tables(client, tables).await?;
    ensure_publication(client, publication, tables, any_partitioned, &mut done).await?;
    ensure_slot(client, slot_name, missing_slot, &mut done).await?;
    Ok(done)
}

/// Without `auto_setup`: fails unless every mapped table exists and the publication covers
/// each of them, naming the SQL that fixes it. A table the publication lacks would otherwise
/// stream nothing while the others do.
pub async fn require_setup(
    client: &Client,
    publication: &str,
    tables: &[TableRule],
) -> Result<(), SourceError> {
    check_tables(client, tables).await?;
    let quoted = |t: &&TableRule| format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name));
    let Some(present) = publication_tables(client, publication).await? else {
        let all: Vec<String> = tables.iter().map(|t| quoted(&t)).collect();
        return Err(SourceError::Fatal(format!(
            "publication {publication} does not exist (postgres.auto_setup is off); create it: \
             CREATE PUBLICATION {} FOR TABLE {};",
            quote_ident(publication),
            all.join(", ")
        )));
    };
    let absent: Vec<&TableRule> = tables
        .iter()
        .filter(|t| !present.iter().any(|(s, n)| *s == t.schema && *n == t.name))
        .collect();
    if absent.is_empty() {
        return require_row_filters(client, publication, tables).await;
    }
    let names: Vec<String> = absent.iter().map(|t| t.qualified()).collect();
    let mut fix: Vec<String> = Vec::new();
    for t in &absent {
        let i = tables.iter().position(|x| std::ptr::eq(x, *t)).unwrap_or(0);
        let columns = row_filter::column_list(client, i, t).await?;
        fix.push(row_filter::table_spec(t, columns.as_deref()));
    }
    Err(SourceError::Fatal(format!(
        "publication {publication} does not include {}, so no change of {} would be streamed \
         (postgres.auto_setup is off); fix: ALTER PUBLICATION {} ADD TABLE {};",
        names.join(", "),
        if absent.len() == 1 { "it" } else { "them" },
        quote_ident(publication),
        fix.join(", ")
    )))
}

/// Without `auto_setup`: fails unless each table with `where` has a row filter in the
/// publication (the server's wording differs from the configuration's, so which filter is not
/// compared; `setup` sets the configured one), and unless the publication leaves out the
/// columns each table's `columns` / `exclude_columns` leave out.
async fn require_row_filters(
    client: &Client,
    publication: &str,
    tables: &[TableRule],
) -> Result<(), SourceError> {
    for (i, t) in tables.iter().enumerate() {
        let leaked = row_filter::leaked_columns(client, publication, i, t).await?;
        if !leaked.is_empty() {
            let columns = row_filter::column_list(client, i, t).await?;
            let table = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name));
            let quoted = quote_ident(publication);
            return Err(SourceError::Fatal(format!(
                "tables[{i}]: publication {publication} publishes column(s) {} of {}, which the \
                 configuration leaves out: their values would leave the server \
                 (postgres.auto_setup is off); fix: `pglive setup`, or ALTER PUBLICATION \
                 {quoted} DROP TABLE {table}; ALTER PUBLICATION {quoted} ADD TABLE {};",
                leaked.join(", "),
                t.qualified(),
                row_filter::table_spec(t, columns.as_deref())
            )));
        }
        let Some(filter) = &t.row_filter else {
            continue;
        };
        if row_filter::current(client, publication, t).await? == Some(None) {
            let table = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name));
            let publication = quote_ident(publication);
            return Err(SourceError::Fatal(format!(
                "tables[{i}].where: publication {publication} publishes every row of {} \
                 (postgres.auto_setup is off); fix: `pglive setup`, or ALTER PUBLICATION \
                 {publication} DROP TABLE {table}; ALTER PUBLICATION {publication} ADD TABLE \
                 {table} WHERE ({filter});",
                t.qualified()
            )));
        }
    }
    Ok(())
}

/// Why table `t`'s channel templates cannot route its DELETEs, and the fix.
pub fn unroutable(t: &TableRule, id: &TableIdentity) -> String {
    let columns = id.unroutable_columns(t);
    format!(
        "table {}: its channel templates take {} from outside its replica identity, so a \
         DELETE (which sends only the identity's columns) could not say which channel its row \
         was on; fix: ALTER TABLE {}.{} REPLICA IDENTITY FULL; (or a primary key or \
         REPLICA IDENTITY USING INDEX that holds {})",
        t.qualified(),
        columns
            .iter()
            .map(|c| format!("{{{c}}}"))
            .collect::<Vec<_>>()
            .join(", "),
        quote_ident(&t.schema),
        quote_ident(&t.name),
        columns.join(", ")
    )
}

/// Fails unless every mapped table exists and can publish UPDATE and DELETE; returns whether
/// any of them is partitioned.
async fn check_tables(client: &Client, tables: &[TableRule]) -> Result<bool, SourceError> {
    let mut any_partitioned = false;
    for t in tables {
        let identity = table_identity(client, &t.schema, &t.name).await?;
        any_partitioned |= identity.as_ref().is_some_and(|i| i.partitioned);
        let problem = match identity {
            None => Some(format!(
                "table {} does not exist (looked up: table {:?} in schema {:?})",
                t.qualified(),
                t.name,
                t.schema
            )),
            Some(id) if !id.usable() => Some(format!(
                "table {} has no primary key or usable REPLICA IDENTITY, so adding it to the \
                 publication would make UPDATE and DELETE on it fail; fix: {}",
                t.qualified(),
                id.fix(&t.schema, &t.name)
            )),
            Some(id) if !id.unroutable_columns(t).is_empty() => Some(unroutable(t, &id)),
            Some(_) => None,
        };
        if let Some(problem) = problem {
            return Err(SourceError::Fatal(problem));
        }
    }
    Ok(any_partitioned)
}

/// Creates the publication for `tables`, or adds those it lacks. A partitioned table's
/// changes must be published under its own name, not its partitions': then the publication
/// publishes via the partition root.
async fn ensure_publication(
    client: &Client,
    publication: &str,
    tables: &[TableRule],
    any_partitioned: bool,
    done: &mut Vec<String>,
) -> Result<(), SourceError> {
    let names: Vec<String> = tables
        .iter()
        .map(|t| format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name)))
        .collect();
    let via_root = if any_partitioned {
        " WITH (publish_via_partition_root = true)"
    } else {
        ""
    };
    if any_partitioned && publication_via_root(client, publication).await? == Some(false) {
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
                quote_ident(publication)
            ))
            .await?;
        done.push(format!(
            "set publish_via_partition_root on publication {publication} (a mapped table is partitioned)"
        ));
    }
    match publication_tables(client, publication).await? {
        None => {
            client
                .batch_execute(&format!(
                    "CREATE PUBLICATION {} FOR TABLE {}{via_root}",
                    quote_ident(publication),
                    names.join(", ")
                ))
                .await?;
            done.push(format!(
                "created publication {publication} for {}",
                names.join(", ")
            ));
        }
        Some(present) => {
            let missing: Vec<&str> = tables
                .iter()
                .zip(&names)
                .filter(|(t, _)| !present.iter().any(|(s, n)| *s == t.schema && *n == t.name))
                .map(|(_, n)| n.as_str())
                .collect();
            add_tables(client, publication, &missing, done).await?;
        }
    }
    for (i, t) in tables.iter().enumerate() {
        if let Some(now) = row_filter::apply(client, publication, i, t).await? {
            done.push(format!(
                "set {} in publication {publication} to {now}",
                t.qualified()
            ));
        }
    }
    Ok(())
}

/// Adds `missing` (quoted names) to an existing publication, unless it is `FOR ALL TABLES`.
async fn add_tables(
    client: &Client,
    publication: &str,
    missing: &[&str],
    done: &mut Vec<String>,
) -> Result<(), SourceError> {
    let all_tables: bool = client
        .query_one(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .get(0);
    if !missing.is_empty() && !all_tables {
        let list = missing.join(", ");
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {} ADD TABLE {list}",
                quote_ident(publication)
            ))
            .await?;
        done.push(format!("added {list} to publication {publication}"));
    }
    Ok(())
}

/// Creates the slot if it does not exist, as `missing_slot` says.
async fn ensure_slot(
    client: &Client,
    slot_name: &str,
    missing_slot: MissingSlot,
    done: &mut Vec<String>,
) -> Result<(), SourceError> {
    if missing_slot == MissingSlot::Leave || slot(client, slot_name).await?.is_some() {
        return Ok(());
    }
    if missing_slot == MissingSlot::Fail {
        return Err(SourceError::Fatal(format!(
            "replication slot {slot_name} no longer exists: it was dropped while pglive was \
             running, so changes since then may be lost; recreate it with `pglive setup` \
             (changes from then on) and restart"
        )));
    }
    client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot_name],
        )
        .await?;
    done.push(format!("created replication slot {slot_name} (pgoutput)"));
    Ok(())
}

/// Drops the slot and the publication, whichever exist. Returns a line per change made. A slot
/// another process streams from is refused, unless `force`: then that session is ended (again,
/// should the process reconnect at once) until the slot can be dropped. A pglive that loses
/// its slot this way stops with an error; stop every instance first so that none is restarted
/// and, with `auto_setup`, creates the slot anew.
pub async fn teardown(
    client: &Client,
    publication: &str,
    slot_name: &str,
    force: bool,
) -> Result<Vec<String>, SourceError> {
    let mut done = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut ended = Vec::new();
    while let Some(info) = slot(client, slot_name).await? {
        if let Some(pid) = info.active_pid {
            if !force {
                return Err(SourceError::Fatal(format!(
                    "replication slot {slot_name} is in use by process {pid} (a running pglive?); \
                     stop that consumer first, or pass --force to end its session"
                )));
            }
            client
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await?;
            if !ended.contains(&pid) {
                ended.push(pid);
                done.push(format!(
                    "ended the session of process {pid}, which held slot {slot_name}"
                ));
            }
        }
        match client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot_name])
            .await
        {
            Ok(_) => {
                done.push(format!("dropped replication slot {slot_name}"));
                break;
            }
            // A terminated session releases the slot a moment later; the process behind it
            // may also have reconnected.
            Err(e)
                if force
                    && e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if publication_tables(client, publication).await?.is_some() {
        client
            .batch_execute(&format!("DROP PUBLICATION {}", quote_ident(publication)))
            .await?;
        done.push(format!("dropped publication {publication}"));
    }
    Ok(done)
}

/// A table's replica identity setting and primary key.
#[derive(Debug, Clone)]
pub struct TableIdentity {
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub primary_key: Vec<String>,
    /// The columns of the index `REPLICA IDENTITY USING INDEX` names (empty: none).
    pub identity_index: Vec<String>,
    /// A partitioned table: its changes are published under its name only with
    /// `publish_via_partition_root`.
    pub partitioned: bool,
}

impl TableIdentity {
    /// Whether UPDATE and DELETE can be published (PostgreSQL rejects them otherwise).
    pub fn usable(&self) -> bool {
        match self.replica_identity {
            b'd' => !self.primary_key.is_empty(),
            b'f' | b'i' => true,
            _ => false,
        }
    }

    /// Whether the old row of an UPDATE or DELETE holds `column`: a column of the replica
    /// identity.
    pub fn identity_holds(&self, column: &str) -> bool {
        let named = |cols: &[String]| cols.iter().any(|c| c == column);
        match self.replica_identity {
            b'f' => true,
            b'd' => named(&self.primary_key),
            b'i' => named(&self.identity_index),
            _ => false,
        }
    }

    /// The template columns of `t` that the replica identity lacks: a DELETE would not say
    /// which channel its row was on.
    pub fn unroutable_columns<'t>(&self, t: &'t TableRule) -> Vec<&'t str> {
        t.template_columns()
            .into_iter()
            .filter(|c| !self.identity_holds(c))
            .collect()
    }

    /// Whether events will carry ids: a primary key, or a replica identity index.
    pub fn has_ids(&self) -> bool {
        !self.primary_key.is_empty() || self.replica_identity == b'i'
    }

    /// The SQL that makes the table usable.
    pub fn fix(&self, schema: &str, table: &str) -> String {
        let t = format!("{}.{}", quote_ident(schema), quote_ident(table));
        if self.primary_key.is_empty() {
            format!(
                "ALTER TABLE {t} ADD PRIMARY KEY (<key columns>);  -- or, to publish without ids: ALTER TABLE {t} REPLICA IDENTITY FULL;"
            )
        } else {
            format!("ALTER TABLE {t} REPLICA IDENTITY DEFAULT;")
        }
    }
}

/// The replica identity and primary key of `schema.table`; `None` if it is not a table.
pub async fn table_identity(
    client: &Client,
    schema: &str,
    table: &str,
) -> Result<Option<TableIdentity>, SourceError> {
    let row = client
        .query_opt(
            "SELECT c.relreplident::text, c.relkind = 'p' FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &table],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let ident: String = row.get(0);
    let identity_index = index_columns(client, schema, table, true).await?;
    Ok(Some(TableIdentity {
        replica_identity: ident.bytes().next().unwrap_or(b'd'),
        primary_key: primary_key(client, schema, table).await?,
        identity_index,
        partitioned: row.get(1),
    }))
}

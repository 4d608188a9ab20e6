//! The control connection: an ordinary `tokio-postgres` session for catalog work the walsender
//! cannot do — creating and inspecting the slot and publication, looking up primary keys,
//! reading `wal_sender_timeout`. Used by `run`, `check`, `setup` and `teardown`.

use std::time::Duration;

use tokio_postgres::Client;

use super::conn::quote_ident;
use super::conninfo::ConnInfo;
use super::error::SourceError;
use super::transport::{self, AuthGuard, Established};
use crate::lsn::Lsn;
use crate::map::TableRule;

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
    let rows = client
        .query(
            "SELECT a.attname::text
               FROM pg_index i
               JOIN pg_class c ON c.oid = i.indrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
              WHERE i.indisprimary AND n.nspname = $1 AND c.relname = $2
              ORDER BY k.ord",
            &[&schema, &table],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
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

/// Creates what is missing: the publication (for the mapped tables, or with them added), then
/// the slot, unless `create_slot` is false (a slot that vanished while pglive ran must not be
/// silently replaced: the changes in between would be lost). Idempotent. Returns a line per
/// change made.
pub async fn ensure_setup(
    client: &Client,
    publication: &str,
    slot_name: &str,
    tables: &[TableRule],
    create_slot: bool,
) -> Result<Vec<String>, SourceError> {
    let mut done = Vec::new();
    let mut any_partitioned = false;
    for t in tables {
        let identity = table_identity(client, &t.schema, &t.name).await?;
        any_partitioned |= identity.as_ref().is_some_and(|i| i.partitioned);
        let problem = match identity {
            None => Some(format!("table {}.{} does not exist", t.schema, t.name)),
            Some(id) if !id.usable() => Some(format!(
                "table {}.{} has no primary key or usable REPLICA IDENTITY, so adding it to the \
                 publication would make UPDATE and DELETE on it fail; fix: {}",
                t.schema,
                t.name,
                id.fix(&t.schema, &t.name)
            )),
            Some(_) => None,
        };
        if let Some(problem) = problem {
            return Err(SourceError::Fatal(problem));
        }
    }
    let names: Vec<String> = tables
        .iter()
        .map(|t| format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name)))
        .collect();
    // A partitioned table's changes must be published under its own name, not its partitions'.
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
            let all_tables: bool = client
                .query_one(
                    "SELECT puballtables FROM pg_publication WHERE pubname = $1",
                    &[&publication],
                )
                .await?
                .get(0);
            let missing: Vec<&String> = tables
                .iter()
                .zip(&names)
                .filter(|(t, _)| !present.iter().any(|(s, n)| *s == t.schema && *n == t.name))
                .map(|(_, n)| n)
                .collect();
            if !missing.is_empty() && !all_tables {
                let list = missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                client
                    .batch_execute(&format!(
                        "ALTER PUBLICATION {} ADD TABLE {list}",
                        quote_ident(publication)
                    ))
                    .await?;
                done.push(format!("added {list} to publication {publication}"));
            }
        }
    }
    if slot(client, slot_name).await?.is_none() {
        if !create_slot {
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
    }
    Ok(done)
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
    Ok(Some(TableIdentity {
        replica_identity: ident.bytes().next().unwrap_or(b'd'),
        primary_key: primary_key(client, schema, table).await?,
        partitioned: row.get(1),
    }))
}

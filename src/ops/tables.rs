//! The table watch: at every poll of the slot monitor, on its connection, checks that each
//! mapped table still exists and is in the publication. PostgreSQL says nothing of DDL in the
//! replication stream, so without it a dropped table, or one dropped and created again (which
//! leaves the publication), would go quiet with nothing logged.
//!
//! - renamed (the same relation under another name): it still streams; a warning says the
//!   configuration names the old name;
//! - dropped: an error in the log, `pglive_tables_unstreamed` and a `/readyz` reason, until a
//!   table of that name exists again;
//! - not in the publication (created again after a drop): with `postgres.auto_setup`, added
//!   back (rows written before that are not delivered: PostgreSQL decodes a table's changes
//!   only from when it is published); without, an error, the metric and a `/readyz` reason
//!   naming the `ALTER PUBLICATION` that fixes it.

use std::sync::Arc;

use tokio_postgres::Client;

use crate::map::{TableRule, qualified};
use crate::source::SourceError;
use crate::source::catalog;
use crate::source::row_filter;
use crate::source::sql::quote_ident;
use crate::status::Status;

/// What the watch found of one mapped table.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    Streams,
    Renamed(String),
    Dropped,
    Unpublished(String),
}

pub struct TableWatch {
    tables: Vec<TableRule>,
    publication: String,
    auto_setup: bool,
    /// Each table's relation OID when last seen.
    oids: Vec<Option<u32>>,
    /// What each table was found in at the last poll, to log changes only.
    last: Vec<Found>,
}

impl TableWatch {
    pub fn new(tables: Vec<TableRule>, publication: String, auto_setup: bool) -> TableWatch {
        let n = tables.len();
        TableWatch {
            tables,
            publication,
            auto_setup,
            oids: vec![None; n],
            last: vec![Found::Streams; n],
        }
    }

    /// Notes the relation OIDs of the mapped tables it does not know yet (while this instance
    /// is not streaming: at start, or standing by), so that a rename is told from a drop.
    pub async fn remember(&mut self, client: &Client) -> Result<(), SourceError> {
        if self.oids.iter().all(Option::is_some) {
            return Ok(());
        }
        for (oid, schema, name) in catalog::table_oids(client, &self.tables).await? {
            for (i, t) in self.tables.iter().enumerate() {
                if self.oids[i].is_none() && t.schema == schema && t.name == name {
                    self.oids[i] = Some(oid);
                }
            }
        }
        Ok(())
    }

    /// Looks at every mapped table, fixes what `auto_setup` allows, and reports the rest.
    pub async fn poll(&mut self, client: &Client, status: &Arc<Status>) -> Result<(), SourceError> {
        // A missing publication stops the stream itself, which says so.
        let Some(published) = catalog::publication_tables(client, &self.publication).await? else {
            status.set_unstreamed_tables(0, None);
            return Ok(());
        };
        let mut problems = Vec::new();
        for i in 0..self.tables.len() {
            let found = self.look(client, i, &published).await?;
            if found != self.last[i] {
                self.report(i, &found);
            }
            match &found {
                Found::Dropped => problems.push(format!(
                    "table {} (tables[{i}]) was dropped: its changes cannot stream",
                    self.tables[i].qualified()
                )),
                Found::Unpublished(fix) => problems.push(format!(
                    "table {} (tables[{i}]) is not in publication {}: {fix}",
                    self.tables[i].qualified(),
                    self.publication
                )),
                Found::Streams | Found::Renamed(_) => {}
            }
            self.last[i] = found;
        }
        status.set_unstreamed_tables(problems.len(), problems.into_iter().next());
        Ok(())
    }

    /// Where table `i` is now, adding it back to the publication when it is not in it.
    async fn look(
        &mut self,
        client: &Client,
        i: usize,
        published: &[(String, String)],
    ) -> Result<Found, SourceError> {
        let t = &self.tables[i];
        let Some((oid, schema, name)) =
            catalog::locate_table(client, self.oids[i], &t.schema, &t.name).await?
        else {
            self.oids[i] = None;
            return Ok(Found::Dropped);
        };
        self.oids[i] = Some(oid);
        let in_publication = published.iter().any(|(s, n)| *s == schema && *n == name);
        if !in_publication {
            if !self.auto_setup {
                let filter = match &t.row_filter {
                    Some(f) => format!(" WHERE ({f})"),
                    None => String::new(),
                };
                return Ok(Found::Unpublished(format!(
                    "ALTER PUBLICATION {} ADD TABLE {}.{}{filter};",
                    quote_ident(&self.publication),
                    quote_ident(&schema),
                    quote_ident(&name)
                )));
            }
            if let Some(refused) = self.add_back(client, i, &schema, &name).await? {
                return Ok(Found::Unpublished(refused));
            }
        }
        if (schema.as_str(), name.as_str()) != (t.schema.as_str(), t.name.as_str()) {
            return Ok(Found::Renamed(qualified(&schema, &name)));
        }
        Ok(Found::Streams)
    }

    /// Adds table `i`, now `schema.name`, back to the publication, with its row filter; or
    /// says why not: without a usable key (UPDATE and DELETE on it would fail once it is
    /// published), or a row filter the server refuses.
    async fn add_back(
        &self,
        client: &Client,
        i: usize,
        schema: &str,
        name: &str,
    ) -> Result<Option<String>, SourceError> {
        let identity = catalog::table_identity(client, schema, name).await?;
        if let Some(id) = identity.filter(|id| !id.usable()) {
            return Ok(Some(format!(
                "it has no primary key or usable REPLICA IDENTITY, so adding it would make \
                 UPDATE and DELETE on it fail; fix: {}",
                id.fix(schema, name)
            )));
        }
        let rule = TableRule {
            schema: schema.to_owned(),
            name: name.to_owned(),
            ..self.tables[i].clone()
        };
        match row_filter::add(client, &self.publication, i, &rule).await {
            Ok(()) => {}
            Err(SourceError::Fatal(why)) => return Ok(Some(why)),
            Err(e) => return Err(e),
        }
        tracing::warn!(table = %rule.qualified(), publication = %self.publication,
            "a mapped table was not in the publication (dropped and created again?): added it back (postgres.auto_setup); rows written to it before now were not delivered, as PostgreSQL publishes a table's changes only from when it is in the publication");
        Ok(None)
    }

    /// Logs what changed for table `i`.
    fn report(&self, i: usize, found: &Found) {
        let table = self.tables[i].qualified();
        let channel = self.tables[i].channel();
        match found {
            Found::Streams => {
                tracing::info!(%table, %channel, "the mapped table is back: its changes stream")
            }
            Found::Renamed(now) => {
                tracing::warn!(%table, %now, %channel, "a mapped table was renamed (ALTER TABLE … RENAME): its changes still stream, as the same relation; the configuration names the old name, which will not exist when pglive next starts: update tables[{i}].name")
            }
            Found::Dropped => {
                tracing::error!(%table, %channel, "a mapped table was dropped: its changes cannot stream; create it again (with postgres.auto_setup it is added back to the publication), or remove tables[{i}] from the configuration")
            }
            Found::Unpublished(fix) => {
                tracing::error!(%table, %channel, publication = %self.publication, %fix, "a mapped table is not in the publication (postgres.auto_setup is off): its changes are not streamed")
            }
        }
    }
}

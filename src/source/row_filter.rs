//! Row filters (`[[tables]] where = "…"`): PostgreSQL 15's publication row filters, so that rows
//! a filter leaves out never leave the server. The server is the judge of a filter: it is set
//! (and read back in the server's own wording) in a transaction that also asks the planner to
//! set up an UPDATE and a DELETE of the table, which fail when the filter uses a column outside
//! the replica identity — PostgreSQL's rule, since an UPDATE or DELETE must be matched against
//! the filter from the old row the identity sends. The transaction commits only when the
//! filter changed.

use tokio_postgres::Client;

use super::error::SourceError;
use super::sql::quote_ident;
use crate::map::TableRule;

/// The server version from which publications filter rows.
const MIN_SERVER_VERSION: i32 = 150_000;

/// What a table's row filter in the publication is: `None`, the table is not in it; `Some(None)`,
/// in it without a filter.
pub async fn current(
    client: &Client,
    publication: &str,
    t: &TableRule,
) -> Result<Option<Option<String>>, SourceError> {
    // Before PostgreSQL 15 the view has no `rowfilter`: nothing is filtered.
    let filter = if server_version(client).await? >= MIN_SERVER_VERSION {
        "rowfilter"
    } else {
        "NULL::text"
    };
    let row = client
        .query_opt(
            &format!(
                "SELECT {filter} FROM pg_publication_tables
                  WHERE pubname = $1 AND schemaname = $2 AND tablename = $3"
            ),
            &[&publication, &t.schema, &t.name],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

async fn server_version(client: &Client) -> Result<i32, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0))
}

/// Adds table `index` (`t`, not in the publication) to it, with its row filter if it has one
/// (in one transaction that also checks UPDATE and DELETE still work, as [`apply`] does).
pub async fn add(
    client: &Client,
    publication: &str,
    index: usize,
    t: &TableRule,
) -> Result<(), SourceError> {
    if t.row_filter.is_some() {
        require_server(client, index).await?;
    }
    client.batch_execute("BEGIN").await?;
    match set_and_read(client, publication, t, false).await {
        Ok(_) => {
            client.batch_execute("COMMIT").await?;
            Ok(())
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(refused(index, t, &e))
        }
    }
}

/// Gives table `index` (`t`, in the publication) its configured row filter, unless it has it
/// already; returns the filter in the server's wording when it was changed. A filter that the
/// server refuses, or that would make UPDATE or DELETE of the table fail, is an error naming
/// `tables[index].where`.
pub async fn apply(
    client: &Client,
    publication: &str,
    index: usize,
    t: &TableRule,
) -> Result<Option<String>, SourceError> {
    if t.row_filter.is_none() {
        return Ok(None);
    }
    require_server(client, index).await?;
    let before = current(client, publication, t).await?.flatten();
    client.batch_execute("BEGIN").await?;
    match set_and_read(client, publication, t, true).await {
        Ok(after) if Some(&after) == before.as_ref() => {
            client.batch_execute("ROLLBACK").await?;
            Ok(None)
        }
        Ok(after) => {
            client.batch_execute("COMMIT").await?;
            Ok(Some(after))
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(refused(index, t, &e))
        }
    }
}

pub async fn require_server(client: &Client, index: usize) -> Result<(), SourceError> {
    let version = server_version(client).await?;
    if version < MIN_SERVER_VERSION {
        return Err(SourceError::Fatal(format!(
            "tables[{index}].where: row filters need PostgreSQL 15 or later (publication row \
             filters); this server is {version}"
        )));
    }
    Ok(())
}

/// In the open transaction: adds the table to the publication with its row filter (`replace`:
/// in place of its entry there), plans an UPDATE and a DELETE of the table (which fail when the
/// filter breaks them), and reads the filter back.
async fn set_and_read(
    client: &Client,
    publication: &str,
    t: &TableRule,
    replace: bool,
) -> Result<String, tokio_postgres::Error> {
    let table = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name));
    let publication_q = quote_ident(publication);
    if replace {
        client
            .execute(
                &format!("ALTER PUBLICATION {publication_q} DROP TABLE {table}"),
                &[],
            )
            .await?;
    }
    // One statement: the extended protocol takes no more. (The filter is the operator's
    // configuration, trusted as such: text that closes the parenthesis could name more.)
    let filter = match &t.row_filter {
        Some(f) => format!(" WHERE ({f})"),
        None => String::new(),
    };
    client
        .execute(
            &format!("ALTER PUBLICATION {publication_q} ADD TABLE {table}{filter}"),
            &[],
        )
        .await?;
    let column = first_column(client, &table).await?;
    client
        .batch_execute(&format!(
            "EXPLAIN UPDATE {table} SET {column} = DEFAULT; EXPLAIN DELETE FROM {table}"
        ))
        .await?;
    if t.row_filter.is_none() {
        // Nothing to read back (and before PostgreSQL 15 nothing to read it from).
        return Ok(String::new());
    }
    let row = client
        .query_one(
            "SELECT rowfilter FROM pg_publication_tables
              WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
            &[&publication, &t.schema, &t.name],
        )
        .await?;
    Ok(row.get::<_, Option<String>>(0).unwrap_or_default())
}

/// Whether UPDATE or DELETE of table `t` fails under the publications it is in (a row filter
/// using columns outside its replica identity): the server's reason, or `None`. Plans them
/// only (EXPLAIN), which changes nothing and fires no trigger.
pub async fn breaks_writes(client: &Client, t: &TableRule) -> Result<Option<String>, SourceError> {
    let table = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name));
    let column = first_column(client, &table).await?;
    let plan =
        format!("EXPLAIN UPDATE {table} SET {column} = DEFAULT; EXPLAIN DELETE FROM {table}");
    match client.batch_execute(&plan).await {
        Ok(()) => Ok(None),
        // A role that may not write the table cannot tell: not a broken filter.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            Ok(None)
        }
        Err(e) if e.as_db_error().is_some() => Ok(Some(server_text(&e))),
        Err(e) => Err(e.into()),
    }
}

/// The table's first column, quoted (any column does for planning `UPDATE … SET c = DEFAULT`,
/// which identity and generated columns accept too).
async fn first_column(client: &Client, table: &str) -> Result<String, tokio_postgres::Error> {
    let column: String = client
        .query_one(
            "SELECT attname::text FROM pg_attribute
              WHERE attrelid = ($1::text)::regclass AND attnum > 0 AND NOT attisdropped
              ORDER BY attnum LIMIT 1",
            &[&table],
        )
        .await?
        .get(0);
    Ok(quote_ident(&column))
}

/// A server error's message and detail.
fn server_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_owned(),
        },
        None => e.to_string(),
    }
}

/// The error for a filter the server refused, with what to do about the common cases.
fn refused(index: usize, t: &TableRule, e: &tokio_postgres::Error) -> SourceError {
    let server = server_text(e);
    let hint = if server.contains("replica identity") {
        format!(
            "; UPDATE and DELETE need every column the filter uses in the table's replica \
             identity: filter on key columns, or ALTER TABLE {}.{} REPLICA IDENTITY FULL",
            quote_ident(&t.schema),
            quote_ident(&t.name)
        )
    } else if server.contains("FOR ALL TABLES") {
        "; a publication FOR ALL TABLES cannot filter rows: give pglive a publication of its own"
            .to_owned()
    } else {
        String::new()
    };
    SourceError::Fatal(format!(
        "tables[{index}].where ({}): the server refused the row filter: {server}{hint}",
        t.qualified()
    ))
}

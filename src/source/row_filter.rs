//! Row filters (`[[tables]] where = "…"`) and column lists (`columns`, `exclude_columns`):
//! PostgreSQL 15's publication row filters and column lists, so that rows a filter leaves out,
//! and values of columns left out, never leave the server. The server is the judge of a filter: it is set
//! (and read back in the server's own wording) in a transaction that also asks the planner to
//! set up an UPDATE and a DELETE of the table, which fail when the filter uses a column outside
//! the replica identity — PostgreSQL's rule, since an UPDATE or DELETE must be matched against
//! the filter from the old row the identity sends (and a column list must hold the identity's
//! columns). The transaction commits only when the table's entry changed.

use tokio_postgres::Client;

use super::error::SourceError;
use super::sql::quote_ident;
use crate::map::TableRule;
use crate::map::row::Columns;

/// The server version from which publications filter rows.
const MIN_SERVER_VERSION: i32 = 150_000;

/// A table's entry in a publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its row filter, in the server's wording.
    pub filter: Option<String>,
    /// The columns it publishes, in table order (every column without a column list; none
    /// before PostgreSQL 15, which has no column lists).
    pub columns: Vec<String>,
}

/// The table's entry in the publication, or `None` when it is not in it.
pub async fn entry(
    client: &Client,
    publication: &str,
    t: &TableRule,
) -> Result<Option<Entry>, SourceError> {
    // Before PostgreSQL 15 the view has no `rowfilter` or `attnames`: nothing is filtered.
    let columns = if server_version(client).await? >= MIN_SERVER_VERSION {
        "rowfilter, attnames::text[]"
    } else {
        "NULL::text, ARRAY[]::text[]"
    };
    let row = client
        .query_opt(
            &format!(
                "SELECT {columns} FROM pg_publication_tables
                  WHERE pubname = $1 AND schemaname = $2 AND tablename = $3"
            ),
            &[&publication, &t.schema, &t.name],
        )
        .await?;
    Ok(row.map(|r| Entry {
        filter: r.get(0),
        columns: r.get(1),
    }))
}

/// What a table's row filter in the publication is: `None`, the table is not in it; `Some(None)`,
/// in it without a filter.
pub async fn current(
    client: &Client,
    publication: &str,
    t: &TableRule,
) -> Result<Option<Option<String>>, SourceError> {
    Ok(entry(client, publication, t).await?.map(|e| e.filter))
}

/// The columns table `index` (`t`) is to publish: `None` for all of them (no column list), or
/// the list its `columns` / `exclude_columns` make of the table's columns now. A named column
/// the table lacks is an error naming the setting.
pub async fn column_list(
    client: &Client,
    index: usize,
    t: &TableRule,
) -> Result<Option<Vec<String>>, SourceError> {
    let (setting, named) = match &t.columns {
        Columns::All => return Ok(None),
        Columns::Only(names) => ("columns", names),
        Columns::Except(names) => ("exclude_columns", names),
    };
    let columns = table_columns(client, t).await?;
    for (k, name) in named.iter().enumerate() {
        let problem = match columns.iter().find(|(c, _)| c == name) {
            None => "has no such column",
            Some((_, true)) if setting == "columns" => {
                "is a generated column, which PostgreSQL does not publish"
            }
            Some(_) => continue,
        };
        return Err(SourceError::Fatal(format!(
            "tables[{index}].{setting}[{k}]: table {} {problem}: `{name}` (its columns: {})",
            t.qualified(),
            columns
                .iter()
                .map(|(c, _)| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let list: Vec<String> = columns
        .into_iter()
        .filter(|(name, generated)| !generated && t.columns.includes(name))
        .map(|(name, _)| name)
        .collect();
    if list.is_empty() {
        return Err(SourceError::Fatal(format!(
            "tables[{index}].exclude_columns leaves no column of table {} to publish",
            t.qualified()
        )));
    }
    Ok(Some(list))
}

/// The table's columns in table order, each with whether it is generated (generated columns
/// are never published, and a column list may not name them).
async fn table_columns(client: &Client, t: &TableRule) -> Result<Vec<(String, bool)>, SourceError> {
    let table = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name));
    let rows = client
        .query(
            "SELECT attname::text, attgenerated <> '' FROM pg_attribute
              WHERE attrelid = ($1::text)::regclass AND attnum > 0 AND NOT attisdropped
              ORDER BY attnum",
            &[&table],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The columns a publication leaves out of table `t` by a column list that the configuration
/// does not set (`t` has neither `columns` nor `exclude_columns`): empty when it sends them all,
/// or when `t` is not in it.
pub async fn unconfigured_column_list(
    client: &Client,
    publication: &str,
    t: &TableRule,
) -> Result<Vec<String>, SourceError> {
    let Some(entry) = entry(client, publication, t).await? else {
        return Ok(Vec::new());
    };
    if entry.columns.is_empty() {
        // Before PostgreSQL 15: no column lists.
        return Ok(Vec::new());
    }
    Ok(table_columns(client, t)
        .await?
        .into_iter()
        .filter(|(c, generated)| !generated && !entry.columns.contains(c))
        .map(|(c, _)| c)
        .collect())
}

/// The columns the publication sends of table `index` that its `columns` / `exclude_columns`
/// leave out (their values leave the server): empty when there are none, or when it is not
/// in the publication.
pub async fn leaked_columns(
    client: &Client,
    publication: &str,
    index: usize,
    t: &TableRule,
) -> Result<Vec<String>, SourceError> {
    let Some(wanted) = column_list(client, index, t).await? else {
        return Ok(Vec::new());
    };
    let Some(entry) = entry(client, publication, t).await? else {
        return Ok(Vec::new());
    };
    Ok(entry
        .columns
        .into_iter()
        .filter(|c| !wanted.contains(c))
        .collect())
}

/// `ADD TABLE` text for table `t` with its column list and row filter.
pub fn table_spec(t: &TableRule, columns: Option<&[String]>) -> String {
    let mut spec = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name));
    if let Some(columns) = columns {
        let quoted: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        spec.push_str(&format!(" ({})", quoted.join(", ")));
    }
    if let Some(f) = &t.row_filter {
        spec.push_str(&format!(" WHERE ({f})"));
    }
    spec
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
    let columns = if t.row_filter.is_some() || t.columns != Columns::All {
        require_server(client, index, t).await?;
        column_list(client, index, t).await?
    } else {
        None
    };
    client.batch_execute("BEGIN").await?;
    match set_and_read(client, publication, t, false, columns.as_deref()).await {
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

/// Gives table `index` (`t`, in the publication) its configured row filter and column list,
/// unless it has them already; returns what its entry is now, in the server's wording, when it
/// was changed. A filter or list that the server refuses, or that would make UPDATE or DELETE
/// of the table fail, is an error naming the setting.
pub async fn apply(
    client: &Client,
    publication: &str,
    index: usize,
    t: &TableRule,
) -> Result<Option<String>, SourceError> {
    if t.row_filter.is_none() && t.columns == Columns::All {
        return Ok(None);
    }
    require_server(client, index, t).await?;
    let columns = column_list(client, index, t).await?;
    let before = entry(client, publication, t).await?;
    client.batch_execute("BEGIN").await?;
    match set_and_read(client, publication, t, true, columns.as_deref()).await {
        Ok(after) if Some(&after) == before.as_ref() => {
            client.batch_execute("ROLLBACK").await?;
            Ok(None)
        }
        Ok(after) => {
            client.batch_execute("COMMIT").await?;
            let mut now = Vec::new();
            if let Some(filter) = &after.filter {
                now.push(format!("row filter {filter}"));
            }
            if columns.is_some() {
                now.push(format!("columns ({})", after.columns.join(", ")));
            }
            Ok(Some(now.join(", ")))
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(refused(index, t, &e))
        }
    }
}

/// Fails when table `index` (`t`) has a row filter or a column list and the server is older
/// than PostgreSQL 15, naming the setting.
pub async fn require_server(
    client: &Client,
    index: usize,
    t: &TableRule,
) -> Result<(), SourceError> {
    let version = server_version(client).await?;
    if version >= MIN_SERVER_VERSION {
        return Ok(());
    }
    let (setting, what) = if t.row_filter.is_some() {
        ("where", "row filters")
    } else if matches!(t.columns, Columns::Only(_)) {
        ("columns", "column lists")
    } else {
        ("exclude_columns", "column lists")
    };
    Err(SourceError::Fatal(format!(
        "tables[{index}].{setting}: {what} need PostgreSQL 15 or later (publication {what}); \
         this server is {version}"
    )))
}

/// In the open transaction: adds the table to the publication with its row filter and column
/// list (`replace`: in place of its entry there), plans an UPDATE and a DELETE of the table
/// (which fail when the filter or the list breaks them), and reads the entry back.
async fn set_and_read(
    client: &Client,
    publication: &str,
    t: &TableRule,
    replace: bool,
    columns: Option<&[String]>,
) -> Result<Entry, tokio_postgres::Error> {
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
    let spec = table_spec(t, columns);
    client
        .execute(
            &format!("ALTER PUBLICATION {publication_q} ADD TABLE {spec}"),
            &[],
        )
        .await?;
    let column = first_column(client, &table).await?;
    client
        .batch_execute(&format!(
            "EXPLAIN UPDATE {table} SET {column} = DEFAULT; EXPLAIN DELETE FROM {table}"
        ))
        .await?;
    if t.row_filter.is_none() && columns.is_none() {
        // Nothing to read back (and before PostgreSQL 15 nothing to read it from).
        return Ok(Entry {
            filter: None,
            columns: Vec::new(),
        });
    }
    let row = client
        .query_one(
            "SELECT rowfilter, attnames::text[] FROM pg_publication_tables
              WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
            &[&publication, &t.schema, &t.name],
        )
        .await?;
    Ok(Entry {
        filter: row.get(0),
        columns: row.get(1),
    })
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
    let about_columns = server.to_lowercase().contains("column list");
    let setting = match &t.columns {
        Columns::Only(_) if about_columns || t.row_filter.is_none() => "columns",
        Columns::Except(_) if about_columns || t.row_filter.is_none() => "exclude_columns",
        _ => "where",
    };
    let hint = if about_columns {
        format!(
            "; UPDATE and DELETE need the replica identity's columns published: keep the key \
             columns in tables[{index}].{setting}, or ALTER TABLE {}.{} REPLICA IDENTITY FULL \
             and publish every column",
            quote_ident(&t.schema),
            quote_ident(&t.name)
        )
    } else if server.contains("replica identity") {
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
    let what = if setting == "where" {
        "row filter"
    } else {
        "column list"
    };
    SourceError::Fatal(format!(
        "tables[{index}].{setting} ({}): the server refused the {what}: {server}{hint}",
        t.qualified()
    ))
}

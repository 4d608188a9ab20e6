//! `[[tables]]` and `[events]`: which tables become which channels, and how their changes
//! become events (what `map` is given).

use serde::{Deserialize, Serialize};

use super::DEFAULT_MAX_IDS_PER_EVENT;
use super::issues::Issues;
use super::raw::at_least_one;
use crate::map::channel::Template;
use crate::map::row::Columns;
use crate::map::{MapOptions, TableRule};

/// Row payloads larger than this go out as ids only: 1 MiB, NATS's default `max_payload`
/// and far above what a Refine list row needs.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;
use crate::sink::websocket;

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEvents {
    coalesce: Option<bool>,
    max_ids_per_event: Option<u64>,
    max_event_bytes: Option<u64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTable {
    name: String,
    channel: Option<String>,
    channels: Option<Vec<String>>,
    ids_as_strings: Option<bool>,
    data_provider_name: Option<String>,
    #[serde(rename = "where")]
    row_filter: Option<String>,
    payload: Option<String>,
    columns: Option<Vec<String>>,
    exclude_columns: Option<Vec<String>>,
    numeric_as_number: Option<bool>,
}

/// Resolves `[events]`; a missing section gives the defaults.
pub(super) fn resolve_events(issues: &mut Issues, raw: RawEvents) -> MapOptions {
    let max_ids_per_event = at_least_one(
        issues,
        "events.max_ids_per_event",
        raw.max_ids_per_event,
        DEFAULT_MAX_IDS_PER_EVENT,
    );
    let max_event_bytes = match raw.max_event_bytes {
        None => DEFAULT_MAX_EVENT_BYTES,
        Some(n) if (MIN_EVENT_BYTES as u64..=MAX_EVENT_BYTES as u64).contains(&n) => n as usize,
        Some(_) => {
            issues.push(
                "events.max_event_bytes",
                format!("must be from {MIN_EVENT_BYTES} to {MAX_EVENT_BYTES} (bytes)"),
            );
            DEFAULT_MAX_EVENT_BYTES
        }
    };
    MapOptions {
        coalesce: raw.coalesce.unwrap_or(true),
        max_ids_per_event,
        max_event_bytes,
    }
}

/// The smallest `max_event_bytes`: an event's envelope and ids alone take a few hundred.
const MIN_EVENT_BYTES: usize = 1024;
/// The largest `max_event_bytes`: the largest replication message pglive reads.
const MAX_EVENT_BYTES: usize = super::DEFAULT_MAX_MESSAGE_BYTES;

/// Resolves the `[[tables]]` entries that parsed; `present` says whether the file has the
/// section at all (an empty one was reported already).
pub(super) fn resolve_tables(
    issues: &mut Issues,
    tables: Vec<(usize, RawTable)>,
    present: bool,
) -> Vec<TableRule> {
    let mut rules: Vec<TableRule> = Vec::new();
    if tables.is_empty() && !present {
        issues.push(
            "tables",
            "no tables mapped; add at least one [[tables]] entry with a `name`",
        );
    }
    for (i, t) in tables {
        let key = format!("tables[{i}]");
        let (schema, name) = match parse_table_name(&t.name) {
            Ok(parsed) => parsed,
            Err(e) => {
                issues.push(format!("{key}.name"), e);
                continue;
            }
        };
        if let Some(earlier) = rules.iter().find(|r| r.schema == schema && r.name == name) {
            issues.push(
                format!("{key}.name"),
                format!("table {} is mapped more than once", earlier.qualified()),
            );
        }
        let channels = channels(issues, &key, t.channel, t.channels, &name);
        if t.data_provider_name.as_deref() == Some("") {
            issues.push(format!("{key}.data_provider_name"), "must not be empty");
        }
        if let Some(filter) = &t.row_filter
            && let Err(e) = check_row_filter(filter)
        {
            issues.push(format!("{key}.where"), e);
        }
        let row_payload = match t.payload.as_deref() {
            None | Some("ids") => false,
            Some("row") => true,
            Some(other) => {
                issues.push(
                    format!("{key}.payload"),
                    format!("`{other}` is not \"ids\" (the default) or \"row\""),
                );
                false
            }
        };
        let columns = column_list(issues, &key, t.columns, t.exclude_columns);
        for (i, template) in channels.iter().enumerate() {
            for column in template.columns() {
                if !columns.includes(column) {
                    issues.push(
                        format!("{key}.channels[{i}]"),
                        format!(
                            "takes {{{column}}} from a column the column list leaves out: \
                             publish `{column}`"
                        ),
                    );
                }
            }
        }
        if t.numeric_as_number.is_some() && !row_payload {
            issues.push(
                format!("{key}.numeric_as_number"),
                "applies to row payloads only: set payload = \"row\" too",
            );
        }
        rules.push(TableRule {
            schema,
            name,
            channels,
            ids_as_strings: t.ids_as_strings.unwrap_or(false),
            data_provider_name: t.data_provider_name,
            row_filter: t.row_filter,
            row_payload,
            columns,
            numeric_as_number: t.numeric_as_number.unwrap_or(false),
        });
    }
    // A fixed channel that a template could render would mix a tenant's rows into it.
    for (i, r) in rules.iter().enumerate() {
        for fixed in r.channels.iter().filter(|c| c.is_fixed()) {
            let clash = rules
                .iter()
                .flat_map(|o| o.channels.iter())
                .find(|t| !t.is_fixed() && t.matches(fixed.as_str()));
            if let Some(template) = clash {
                issues.push(
                    format!("tables[{i}].channel"),
                    format!(
                        "`{}` is a channel that template `{}` renders for some row: clients of \
                         one would get the other's events; give one of them another path",
                        fixed.as_str(),
                        template.as_str()
                    ),
                );
            }
        }
    }
    rules
}

/// `channel` or `channels` (not both; default `resources/<table>`), each a channel or a
/// template (`tenants/{org_id}/resources/posts`), each once.
fn channels(
    issues: &mut Issues,
    key: &str,
    one: Option<String>,
    several: Option<Vec<String>>,
    table: &str,
) -> Vec<Template> {
    let (setting, texts) = match (one, several) {
        (Some(_), Some(_)) => {
            issues.push(
                format!("{key}.channels"),
                "give `channel` (one) or `channels` (several), not both",
            );
            return Vec::new();
        }
        (Some(one), None) => ("channel".to_owned(), vec![one]),
        (None, Some(several)) if several.is_empty() => {
            issues.push(format!("{key}.channels"), "must name at least one channel");
            return Vec::new();
        }
        (None, Some(several)) => ("channels".to_owned(), several),
        (None, None) => ("channel".to_owned(), vec![format!("resources/{table}")]),
    };
    let mut out: Vec<Template> = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let at = if setting == "channel" {
            format!("{key}.channel")
        } else {
            format!("{key}.channels[{i}]")
        };
        if text.is_empty() {
            issues.push(at, "must not be empty");
            continue;
        }
        if text.len() > websocket::MAX_CHANNEL_BYTES {
            issues.push(
                at,
                format!("must be at most {} bytes", websocket::MAX_CHANNEL_BYTES),
            );
            continue;
        }
        match Template::parse(text) {
            Ok(t) if out.contains(&t) => issues.push(at, format!("`{text}` is named twice")),
            Ok(t) => out.push(t),
            Err(e) => issues.push(at, e),
        }
    }
    out
}

/// `columns` or `exclude_columns` (not both): column names as in the catalog, each once.
fn column_list(
    issues: &mut Issues,
    key: &str,
    only: Option<Vec<String>>,
    except: Option<Vec<String>>,
) -> Columns {
    let (setting, names, columns): (_, _, fn(Vec<String>) -> Columns) = match (only, except) {
        (None, None) => return Columns::All,
        (Some(_), Some(_)) => {
            issues.push(
                format!("{key}.exclude_columns"),
                "give `columns` (the columns to publish) or `exclude_columns` (those to leave \
                 out), not both",
            );
            return Columns::All;
        }
        (Some(names), None) => ("columns", names, Columns::Only),
        (None, Some(names)) => ("exclude_columns", names, Columns::Except),
    };
    if names.is_empty() {
        let why = if setting == "columns" {
            "must name at least one column (the key's among them)"
        } else {
            "must name at least one column; leave it out to publish every column"
        };
        issues.push(format!("{key}.{setting}"), why);
        return Columns::All;
    }
    for (i, name) in names.iter().enumerate() {
        if name.is_empty() || name.len() > 63 || name.contains('\0') {
            issues.push(
                format!("{key}.{setting}[{i}]"),
                "must be a column name of 1 to 63 bytes, as in the catalog",
            );
            return Columns::All;
        }
        if names[..i].contains(name) {
            issues.push(
                format!("{key}.{setting}[{i}]"),
                format!("column `{name}` is named twice"),
            );
            return Columns::All;
        }
    }
    columns(names)
}

/// `schema.table` or `table` (schema `public`). Unquoted parts are taken literally, as in the
/// catalog (no case folding); a part in double quotes may hold anything but NUL, with `""` for
/// a quote — `"edge_b.dotted"` is one table name, `edge_b.dotted` a schema and a table.
fn parse_table_name(text: &str) -> Result<(String, String), String> {
    let parts = split_identifiers(text)?;
    let (schema, name) = match parts.as_slice() {
        [name] => ("public".to_owned(), name.clone()),
        [schema, name] => (schema.clone(), name.clone()),
        _ => {
            return Err(format!(
                "`{text}` is not `schema.table` or `table` (a name holding a dot is written in \
                 double quotes: name = '\"my.table\"')"
            ));
        }
    };
    for part in [&schema, &name] {
        if part.is_empty() || part.len() > 63 || part.contains('\0') {
            return Err(format!(
                "`{text}`: each part must be 1 to 63 bytes (schema.table or table)"
            ));
        }
    }
    Ok((schema, name))
}

/// The dot-separated parts of `text`, each unquoted or in double quotes.
fn split_identifiers(text: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(format!("`{text}`: a quoted name is not closed")),
                }
            }
            if chars.peek().is_some_and(|&c| c != '.') {
                return Err(format!(
                    "`{text}`: a quoted name must be followed by `.` or end"
                ));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if c == '"' {
                    return Err(format!(
                        "`{text}`: a quote may only open a part (quote the whole name)"
                    ));
                }
                part.push(c);
                chars.next();
            }
        }
        parts.push(part);
        if chars.next().is_none() {
            return Ok(parts);
        }
    }
}

/// The longest row filter accepted: far more than a filter needs.
const MAX_ROW_FILTER_BYTES: usize = 4096;

/// What can be told of a row filter without the server: it is an expression of its own (the
/// server judges the rest when `setup` or `run` sets it).
fn check_row_filter(filter: &str) -> Result<(), String> {
    if filter.trim().is_empty() {
        return Err("must not be empty; leave `where` out to publish every row".to_owned());
    }
    if filter.len() > MAX_ROW_FILTER_BYTES || filter.contains('\0') {
        return Err(format!(
            "must be at most {MAX_ROW_FILTER_BYTES} bytes, without NUL"
        ));
    }
    Ok(())
}

//! `[[tables]]` and `[events]`: which tables become which channels, and how their changes
//! become events (what `map` is given).

use serde::{Deserialize, Serialize};

use super::DEFAULT_MAX_IDS_PER_EVENT;
use super::issues::Issues;
use super::raw::at_least_one;
use crate::map::{MapOptions, TableRule};
use crate::sink::websocket;

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEvents {
    coalesce: Option<bool>,
    max_ids_per_event: Option<u64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTable {
    name: String,
    channel: Option<String>,
    ids_as_strings: Option<bool>,
    data_provider_name: Option<String>,
    #[serde(rename = "where")]
    row_filter: Option<String>,
}

/// Resolves `[events]`; a missing section gives the defaults.
pub(super) fn resolve_events(issues: &mut Issues, raw: RawEvents) -> MapOptions {
    let max_ids_per_event = at_least_one(
        issues,
        "events.max_ids_per_event",
        raw.max_ids_per_event,
        DEFAULT_MAX_IDS_PER_EVENT,
    );
    MapOptions {
        coalesce: raw.coalesce.unwrap_or(true),
        max_ids_per_event,
    }
}

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
        let channel = t.channel.unwrap_or_else(|| format!("resources/{name}"));
        if channel.is_empty() {
            issues.push(format!("{key}.channel"), "must not be empty");
        } else if channel.len() > websocket::MAX_CHANNEL_BYTES {
            issues.push(
                format!("{key}.channel"),
                format!("must be at most {} bytes", websocket::MAX_CHANNEL_BYTES),
            );
        }
        if t.data_provider_name.as_deref() == Some("") {
            issues.push(format!("{key}.data_provider_name"), "must not be empty");
        }
        if let Some(filter) = &t.row_filter
            && let Err(e) = check_row_filter(filter)
        {
            issues.push(format!("{key}.where"), e);
        }
        rules.push(TableRule {
            schema,
            name,
            channel,
            ids_as_strings: t.ids_as_strings.unwrap_or(false),
            data_provider_name: t.data_provider_name,
            row_filter: t.row_filter,
        });
    }
    rules
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

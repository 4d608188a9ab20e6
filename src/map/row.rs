//! Row payloads (`payload = "row"`): a tuple's text values as the JSON object PostgreSQL's own
//! `to_jsonb(row)` gives for the same row, in a session with the settings the replication
//! connection pins (`source::conn::SESSION_OPTIONS`): booleans and numbers as JSON literals
//! (int8 exact, `NaN`/`Infinity` as strings), `numeric` as a string unless asked for as a
//! number, json and jsonb embedded, arrays as nested JSON arrays of their converted elements,
//! timestamps in the XSD form `to_jsonb` uses (`2024-02-29T07:04:56.5+00:00`), everything else
//! (dates, enums, ranges, bytea, intervals, uuids, …) as its text in a string; composite
//! values as objects of their fields, converted the same way.
//! Domains convert as their base type. Writes JSON text directly: no intermediate values.

use std::collections::HashMap;

use crate::decode::{Relation, Tuple, Value};

/// How a column's text becomes JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Bool,
    /// Integers and floats: a JSON number when the text is one, else a string (`NaN`, …).
    Number,
    /// `numeric`: a string (exact, keeps its scale), or with `as_number` a number like
    /// [`Kind::Number`].
    Numeric {
        as_number: bool,
    },
    /// json and jsonb: embedded (without the insignificant whitespace json keeps).
    Json,
    Timestamp,
    TimestampTz,
    /// An array of elements of the inner kind, separated by the element type's delimiter.
    Array(Box<Kind>, u8),
    /// A composite value: its fields (`"name":` encoded, and kind), in order.
    Composite(Vec<(Box<[u8]>, Kind)>),
    Text,
}

/// What the catalog says of a type that is not simply a built-in scalar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// The type a domain is over (0: not a domain).
    pub base: u32,
    /// The element type of an array type (0: not an array).
    pub element: u32,
    /// The delimiter between array elements (`,` for nearly every type; `;` for box).
    pub delimiter: u8,
    /// A composite type's fields: name and type, in order (empty: not a composite).
    pub fields: Vec<(String, u32)>,
}

/// Arrays of arrays of … deeper than this are not PostgreSQL's (it allows 6 dimensions); the
/// bound also stops a cycle in a catalog that changed under us.
const MAX_TYPE_DEPTH: usize = 8;

/// The kind of type `oid`, following domains to their base and arrays to their elements
/// through `types` (built-in array types are known without it).
pub fn kind_of(oid: u32, types: &HashMap<u32, TypeInfo>, numeric_as_number: bool) -> Kind {
    kind_at(oid, types, numeric_as_number, 0)
}

fn kind_at(oid: u32, types: &HashMap<u32, TypeInfo>, numeric: bool, depth: usize) -> Kind {
    if depth > MAX_TYPE_DEPTH {
        return Kind::Text;
    }
    match oid {
        16 => return Kind::Bool,
        20 | 21 | 23 | 700 | 701 => return Kind::Number,
        1700 => return Kind::Numeric { as_number: numeric },
        114 | 3802 => return Kind::Json,
        1114 => return Kind::Timestamp,
        1184 => return Kind::TimestampTz,
        _ => {}
    }
    if let Some(info) = types.get(&oid) {
        if info.base != 0 {
            return kind_at(info.base, types, numeric, depth + 1);
        }
        if info.element != 0 {
            let element = kind_at(info.element, types, numeric, depth + 1);
            return Kind::Array(Box::new(element), info.delimiter);
        }
        if !info.fields.is_empty() {
            let fields = info
                .fields
                .iter()
                .map(|(name, oid)| {
                    let mut key = Vec::with_capacity(name.len() + 3);
                    write_string(&mut key, name.as_bytes());
                    key.push(b':');
                    let kind = kind_at(*oid, types, numeric, depth + 1);
                    (key.into_boxed_slice(), kind)
                })
                .collect();
            return Kind::Composite(fields);
        }
        return Kind::Text;
    }
    match builtin_array_element(oid) {
        Some(element) => Kind::Array(Box::new(kind_at(element, types, numeric, depth + 1)), b','),
        None => Kind::Text,
    }
}

/// The type `oid` is, through any domains over it.
pub fn base_type(oid: u32, types: &HashMap<u32, TypeInfo>) -> u32 {
    let mut oid = oid;
    for _ in 0..MAX_TYPE_DEPTH {
        match types.get(&oid) {
            Some(info) if info.base != 0 => oid = info.base,
            _ => break,
        }
    }
    oid
}

/// The element type of the built-in array types whose elements are not plain text.
fn builtin_array_element(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => 16,
        1005 => 21,
        1007 => 23,
        1016 => 20,
        1021 => 700,
        1022 => 701,
        1231 => 1700,
        199 => 114,
        3807 => 3802,
        1115 => 1114,
        1185 => 1184,
        _ => return None,
    })
}

/// One column of a row payload.
#[derive(Debug)]
struct Field {
    /// `"name":`, encoded once.
    key: Box<[u8]>,
    name: Box<str>,
    kind: Kind,
    /// Part of the replica identity key (sent in an old key tuple).
    identity: bool,
}

/// How a mapped table's tuples become JSON objects: one entry per column of the Relation
/// message, `None` for a column the configuration leaves out.
#[derive(Debug)]
pub struct RowShape {
    fields: Vec<Option<Field>>,
}

/// Which of a relation's columns a row payload holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Columns {
    All,
    Only(Vec<String>),
    Except(Vec<String>),
}

impl Columns {
    pub fn includes(&self, name: &str) -> bool {
        match self {
            Columns::All => true,
            Columns::Only(names) => names.iter().any(|n| n == name),
            Columns::Except(names) => !names.iter().any(|n| n == name),
        }
    }
}

/// Which old values a tuple holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
    /// Every column (a new row, or the old row under REPLICA IDENTITY FULL).
    Row,
    /// Only the replica identity's columns; the others are filler.
    Key,
}

impl RowShape {
    pub fn new(
        rel: &Relation,
        columns: &Columns,
        types: &HashMap<u32, TypeInfo>,
        numeric_as_number: bool,
    ) -> RowShape {
        let fields = rel
            .columns
            .iter()
            .map(|c| {
                columns.includes(&c.name).then(|| {
                    let mut key = Vec::with_capacity(c.name.len() + 3);
                    write_string(&mut key, c.name.as_bytes());
                    key.push(b':');
                    Field {
                        key: key.into_boxed_slice(),
                        name: c.name.as_str().into(),
                        kind: kind_of(c.type_oid, types, numeric_as_number),
                        identity: c.key,
                    }
                })
            })
            .collect();
        RowShape { fields }
    }

    /// Writes `tuple` as a JSON object into `out`. An unchanged TOASTed value is taken from
    /// `fill` (the old row under REPLICA IDENTITY FULL) when it has it; otherwise the column
    /// is left out and its name pushed to `unchanged`.
    pub fn write(
        &self,
        tuple: Tuple<'_>,
        holds: Holds,
        fill: Option<Tuple<'_>>,
        out: &mut Vec<u8>,
        unchanged: &mut Vec<Box<str>>,
    ) {
        let mut fill_values: Option<Vec<Value<'_>>> = None;
        out.push(b'{');
        let mut first = true;
        for (i, value) in tuple.values().enumerate() {
            let Some(Some(field)) = self.fields.get(i) else {
                continue;
            };
            if holds == Holds::Key && !field.identity {
                continue;
            }
            let value = match value {
                Value::Unchanged => {
                    let filled = fill.and_then(|f| {
                        fill_values
                            .get_or_insert_with(|| f.values().collect())
                            .get(i)
                            .copied()
                    });
                    match filled {
                        Some(v @ (Value::Text(_) | Value::Null)) => v,
                        _ => {
                            unchanged.push(field.name.clone());
                            continue;
                        }
                    }
                }
                v => v,
            };
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&field.key);
            match value {
                Value::Text(text) => write_value(&field.kind, text, out),
                // Binary values are never asked for; the bytes as a hex string, to stay JSON.
                Value::Binary(bytes) => write_hex(bytes, out),
                Value::Null | Value::Unchanged => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'}');
    }
}

/// Writes one value's text as JSON of `kind`.
pub fn write_value(kind: &Kind, text: &[u8], out: &mut Vec<u8>) {
    match kind {
        Kind::Bool => match text {
            b"t" => out.extend_from_slice(b"true"),
            b"f" => out.extend_from_slice(b"false"),
            other => write_string(out, other),
        },
        Kind::Number | Kind::Numeric { as_number: true } => {
            if text == b"-0" {
                // to_jsonb goes through numeric, which has no negative zero.
                out.push(b'0');
            } else if is_json_number(text) {
                out.extend_from_slice(text);
            } else {
                write_string(out, text);
            }
        }
        Kind::Numeric { as_number: false } | Kind::Text => write_string(out, text),
        Kind::Json => write_minified(text, out),
        Kind::Timestamp => write_timestamp(text, false, out),
        Kind::TimestampTz => write_timestamp(text, true, out),
        Kind::Array(element, delimiter) => {
            let start = out.len();
            if write_array(text, element, *delimiter, out).is_none() {
                // Not an array literal as expected: its text, rather than broken JSON.
                out.truncate(start);
                write_string(out, text);
            }
        }
        Kind::Composite(fields) => {
            let start = out.len();
            if write_record(text, fields, out).is_none() {
                out.truncate(start);
                write_string(out, text);
            }
        }
    }
}

/// A JSON string of `text` (UTF-8 from the server; anything else replaced).
pub fn write_string(out: &mut Vec<u8>, text: &[u8]) {
    let text = String::from_utf8_lossy(text);
    // Writing a string into a Vec cannot fail.
    serde_json::to_writer(&mut *out, text.as_ref()).expect("writing JSON to memory");
}

fn write_hex(bytes: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"\"\\\\x");
    for b in bytes {
        let _ = std::io::Write::write_fmt(out, format_args!("{b:02x}"));
    }
    out.push(b'"');
}

/// Whether `text` is a JSON number (RFC 8259's grammar), as `to_jsonb` decides for numbers.
fn is_json_number(text: &[u8]) -> bool {
    let mut i = 0;
    let n = text.len();
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < n && text[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    if i < n && text[i] == b'-' {
        i += 1;
    }
    if i < n && text[i] == b'0' {
        i += 1;
    } else if !digits(&mut i) {
        return false;
    }
    if i < n && text[i] == b'.' {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if i < n && (text[i] == b'e' || text[i] == b'E') {
        i += 1;
        if i < n && (text[i] == b'+' || text[i] == b'-') {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == n
}

/// json text without the whitespace between tokens (json keeps what was written, newlines
/// included, and an event is one line). The server validated it as JSON.
fn write_minified(text: &[u8], out: &mut Vec<u8>) {
    if std::str::from_utf8(text).is_err() {
        write_string(out, text);
        return;
    }
    out.reserve(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            in_string = b == b'"';
            out.push(b);
        }
    }
}

/// A timestamp in the form `to_jsonb` gives: `T` between date and time, and with a zone the
/// offset as `+HH:MM`; infinities and anything unexpected as they are.
fn write_timestamp(text: &[u8], zoned: bool, out: &mut Vec<u8>) {
    let Ok(text) = std::str::from_utf8(text) else {
        return write_string(out, text);
    };
    let Some(space) = text.find(' ') else {
        return write_string(out, text.as_bytes());
    };
    let (date, rest) = (&text[..space], &text[space + 1..]);
    if !rest.starts_with(|c: char| c.is_ascii_digit()) {
        return write_string(out, text.as_bytes());
    }
    // `rest` is `HH:MM:SS[.ffffff][±HH[:MM[:SS]]][ BC]`.
    let (time, era) = match rest.find(' ') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let mut s = String::with_capacity(text.len() + 4);
    s.push_str(date);
    s.push('T');
    if zoned && let Some(sign) = time.rfind(['+', '-']) {
        let (clock, offset) = time.split_at(sign);
        s.push_str(clock);
        s.push_str(offset);
        if offset.len() == 3 {
            s.push_str(":00");
        }
    } else {
        s.push_str(time);
    }
    s.push_str(era);
    write_string(out, s.as_bytes());
}

/// An array literal (`{1,2}`, `{{1,2},{3,4}}`, `[0:1]={1,2}`, `{"a b",NULL,"NULL"}`) as nested
/// JSON arrays of converted elements; `None` when the text is not one.
fn write_array(text: &[u8], element: &Kind, delimiter: u8, out: &mut Vec<u8>) -> Option<()> {
    let mut i = 0;
    // Dimension bounds other than 1 come first (`[0:1][1:2]=`); to_jsonb drops them too.
    if text.first() == Some(&b'[') {
        i = text.iter().position(|&b| b == b'=')? + 1;
    }
    let mut depth = 0usize;
    let mut item = Vec::new();
    // After an element or a closing brace, only a delimiter or a closing brace may follow.
    let mut after_value = false;
    while i < text.len() {
        let b = text[i];
        match b {
            b'{' if !after_value => {
                if depth > 0 && out.last() != Some(&b'[') {
                    out.push(b',');
                }
                depth += 1;
                out.push(b'[');
                i += 1;
            }
            b'}' if depth > 0 => {
                depth -= 1;
                out.push(b']');
                after_value = true;
                i += 1;
                if depth == 0 {
                    return (i == text.len()).then_some(());
                }
            }
            b if b == delimiter && after_value => {
                after_value = false;
                i += 1;
            }
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            _ if depth > 0 && !after_value => {
                if out.last() != Some(&b'[') {
                    out.push(b',');
                }
                item.clear();
                if b == b'"' {
                    i += 1;
                    loop {
                        match *text.get(i)? {
                            b'\\' => {
                                item.push(*text.get(i + 1)?);
                                i += 2;
                            }
                            b'"' => {
                                i += 1;
                                break;
                            }
                            c => {
                                item.push(c);
                                i += 1;
                            }
                        }
                    }
                    write_value(element, &item, out);
                } else {
                    while i < text.len() && text[i] != delimiter && text[i] != b'}' {
                        if text[i] == b'\\' {
                            i += 1;
                        }
                        item.push(*text.get(i)?);
                        i += 1;
                    }
                    while item.last().is_some_and(|c| c.is_ascii_whitespace()) {
                        item.pop();
                    }
                    if item.eq_ignore_ascii_case(b"NULL") {
                        out.extend_from_slice(b"null");
                    } else {
                        write_value(element, &item, out);
                    }
                }
                after_value = true;
            }
            _ => return None,
        }
    }
    None
}

/// A record literal (`(1,"a b",,"x""y")`: an empty field is NULL, a quoted one may hold
/// anything, `""` and `\` escaping) as a JSON object of `fields`; `None` when the text is not
/// one with that many fields.
fn write_record(text: &[u8], fields: &[(Box<[u8]>, Kind)], out: &mut Vec<u8>) -> Option<()> {
    let inner = text.strip_prefix(b"(")?.strip_suffix(b")")?;
    out.push(b'{');
    if fields.is_empty() {
        out.push(b'}');
        return inner.is_empty().then_some(());
    }
    let mut i = 0;
    let mut item = Vec::new();
    for (n, (key, kind)) in fields.iter().enumerate() {
        if n > 0 {
            // Fields are separated by one comma each.
            if inner.get(i) != Some(&b',') {
                return None;
            }
            i += 1;
            out.push(b',');
        }
        item.clear();
        let mut quoted = false;
        while i < inner.len() && inner[i] != b',' {
            if inner[i] == b'"' {
                quoted = true;
                i += 1;
                loop {
                    match *inner.get(i)? {
                        b'"' if inner.get(i + 1) == Some(&b'"') => {
                            item.push(b'"');
                            i += 2;
                        }
                        b'"' => {
                            i += 1;
                            break;
                        }
                        b'\\' => {
                            item.push(*inner.get(i + 1)?);
                            i += 2;
                        }
                        c => {
                            item.push(c);
                            i += 1;
                        }
                    }
                }
            } else {
                item.push(inner[i]);
                i += 1;
            }
        }
        out.extend_from_slice(key);
        if item.is_empty() && !quoted {
            out.extend_from_slice(b"null");
        } else {
            write_value(kind, &item, out);
        }
    }
    if i != inner.len() {
        return None;
    }
    out.push(b'}');
    Some(())
}

#[cfg(test)]
mod tests;

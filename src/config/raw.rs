//! The file as written: each section deserialized on its own, one key set aside at a time so
//! that one typo does not hide the others; and the kinds of value every section shares
//! (durations, counts, secrets kept in files).

use std::path::Path;
use std::time::Duration;

use figment::value::{Dict, Value};
use serde::{Deserialize, Serialize};

use super::MAX_DURATION;
use super::issues::Issues;

/// A duration written as `"500ms"`, `"10s"`, `"5m"`, `"1h"` or a number of seconds.
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(untagged)]
pub(super) enum RawDuration {
    Seconds(u64),
    Text(String),
}

impl RawDuration {
    pub(super) fn resolve(&self) -> Result<Duration, String> {
        match self {
            RawDuration::Seconds(s) => Ok(Duration::from_secs(*s)),
            RawDuration::Text(t) => parse_duration(t),
        }
    }
}

/// Parses `"250ms"`, `"10s"`, `"5m"`, `"1h"`, `"7d"` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like \"500ms\", \"10s\" or \"5m\""))?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => return Err(format!("{text:?}: unknown unit (use ms, s, m, h or d)")),
    };
    Ok(d)
}

/// A secret kept in a file (a mounted Kubernetes secret, a systemd credential): its text without
/// the trailing newline. The error names the file, never its content.
pub(super) fn read_secret_file(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|text| text.trim_end_matches(['\r', '\n']).to_owned())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// A count setting: `default` when absent; at least 1.
pub(super) fn at_least_one(
    issues: &mut Issues,
    key: &str,
    value: Option<u64>,
    default: usize,
) -> usize {
    match value {
        None => default,
        Some(0) => {
            issues.push(key, "must be at least 1");
            default
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    }
}

/// A duration setting: `default` when absent; greater than zero and at most [`MAX_DURATION`].
pub(super) fn duration(
    issues: &mut Issues,
    key: &str,
    raw: &Option<RawDuration>,
    default: Duration,
) -> Duration {
    match raw.as_ref().map(RawDuration::resolve) {
        None => default,
        Some(Ok(d)) if d > MAX_DURATION => {
            issues.push(key, "must be at most 1h");
            default
        }
        Some(Ok(d)) if !d.is_zero() => d,
        Some(Ok(_)) => {
            issues.push(key, "must be greater than zero");
            default
        }
        Some(Err(e)) => {
            issues.push(key, e);
            default
        }
    }
}

/// Deserializes `value`, reporting every problem under `prefix`: after each failure the
/// offending key is set aside and the rest tried again, so one typo does not hide the others.
/// Returns the value built from the keys that were fine (if any such value exists) and the
/// keys set aside.
fn collect<T: for<'de> Deserialize<'de>>(
    value: &Value,
    issues: &mut Issues,
    prefix: &str,
) -> (Option<T>, Vec<String>) {
    let mut value = value.clone();
    let mut removed = Vec::new();
    // Each round removes a key, so this ends; the bound only guards against surprises.
    for _ in 0..64 {
        let err = match Value::deserialize::<T>(&value) {
            Ok(v) => return (Some(v), removed),
            Err(e) => e,
        };
        use figment::error::Kind;
        let mut culprits = Vec::new();
        let mut report = Vec::new();
        for e in err {
            match &e.kind {
                // A consequence of a key set aside earlier (a misspelt required key).
                Kind::MissingField(f) if removed.iter().any(|r| r == f.as_ref()) => continue,
                Kind::UnknownField(field, _) => culprits.push(field.clone()),
                Kind::InvalidType(..) | Kind::InvalidValue(..) | Kind::InvalidLength(..) => {
                    culprits.extend(e.path.first().cloned())
                }
                _ => {}
            }
            report.push(e);
        }
        for e in report {
            issues.figment_error(prefix, e);
        }
        let Value::Dict(_, dict) = &mut value else {
            return (None, removed);
        };
        let before = dict.len();
        for c in &culprits {
            if dict.remove(c).is_some() {
                removed.push(c.clone());
            }
        }
        if dict.len() == before {
            return (None, removed);
        }
    }
    (None, removed)
}

/// Deserializes one `[section]`; a missing section gives the defaults.
pub(super) fn section<T: for<'de> Deserialize<'de> + Default>(
    top: &Dict,
    issues: &mut Issues,
    name: &str,
) -> (T, Vec<String>) {
    match top.get(name) {
        None => (T::default(), Vec::new()),
        Some(value) => {
            let (v, removed) = collect(value, issues, name);
            (v.unwrap_or_default(), removed)
        }
    }
}

/// Deserializes each element of an array section on its own, so one bad entry does not hide
/// the problems of the others.
pub(super) fn array<T: for<'de> Deserialize<'de>>(
    top: &Dict,
    issues: &mut Issues,
    name: &str,
) -> Vec<(usize, T)> {
    let Some(value) = top.get(name) else {
        return Vec::new();
    };
    let Some(items) = value.as_array() else {
        issues.push(
            name,
            format!("must be an array of tables ([[{name}]] entries)"),
        );
        return Vec::new();
    };
    if items.is_empty() {
        issues.push(name, "must not be empty");
    }
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("{name}[{i}]");
        let (v, removed) = collect::<T>(item, issues, &key);
        // An entry that parsed only after setting keys aside is reported, not used.
        if let (Some(v), true) = (v, removed.is_empty()) {
            out.push((i, v));
        }
    }
    out
}

//! Configuration problems: each [`Issue`] names its key, and the environment variable that set
//! it when one did; [`Issues`] collects them from every section, so that all are reported at
//! once. Values are never quoted: any of them may be a secret.

use std::fmt;

use figment::Figment;

use super::{ENV_PREFIX, RAW_ENV_KEYS};

/// One configuration problem, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Dotted key path, e.g. `postgres.url` or `tables[1].name`; empty for the whole file.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// The configuration could not be used; lists every problem found.
#[derive(Debug)]
pub struct ConfigError {
    pub issues: Vec<Issue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        write!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for issue in &self.issues {
            write!(f, "\n  - {issue}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The problems found so far, and what is needed to say where each setting came from.
pub(super) struct Issues {
    list: Vec<Issue>,
    figment: Figment,
    /// Whether the environment was consulted (to name variables in messages).
    env: bool,
}

impl Issues {
    pub(super) fn new(figment: Figment, env: bool) -> Issues {
        Issues {
            list: Vec::new(),
            figment,
            env,
        }
    }

    /// The layered sources, to find where a value came from.
    pub(super) fn figment(&self) -> &Figment {
        &self.figment
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(super) fn into_error(self) -> ConfigError {
        ConfigError { issues: self.list }
    }

    pub(super) fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        let mut message = message.into();
        if let Some(var) = self.env_var_for(&key) {
            message.push_str(&format!(" (set by {var})"));
        }
        self.list.push(Issue { key, message });
    }

    /// The environment variable a top-level section key came from, if it came from one.
    fn env_var_for(&self, key: &str) -> Option<String> {
        if !self.env {
            return None;
        }
        let var = env_var_name(key);
        let from_env = if RAW_ENV_KEYS.contains(&key) {
            // Merged raw (see `load`), so its metadata does not name the environment.
            std::env::var_os(&var).is_some()
        } else {
            let meta = self.figment.find_metadata(key)?;
            meta.name.contains("environment")
        };
        from_env.then_some(var)
    }

    pub(super) fn figment_error(&mut self, prefix: &str, err: figment::Error) {
        for e in err {
            let mut key = prefix.to_owned();
            for part in &e.path {
                push_part(&mut key, part);
            }
            let message = match &e.kind {
                figment::error::Kind::UnknownField(field, expected) => {
                    if e.path.last().map(String::as_str) != Some(field.as_str()) {
                        push_part(&mut key, field);
                    }
                    let allowed: Vec<&str> =
                        expected.iter().copied().filter(|k| *k != "type").collect();
                    if allowed.is_empty() {
                        "unknown key; this entry takes no keys besides `type`".to_owned()
                    } else {
                        format!("unknown key; expected one of: {}", allowed.join(", "))
                    }
                }
                figment::error::Kind::MissingField(field) => {
                    if e.path.last().map(String::as_str) != Some(field.as_ref()) {
                        push_part(&mut key, field);
                    }
                    "missing required key".to_owned()
                }
                kind => describe_kind(kind),
            };
            self.push(key, message);
        }
    }
}

/// A file that could not be read as TOML at all. A syntax error quotes the offending line,
/// which may hold a password: keep only the position and the reason.
pub(super) fn unreadable(error: figment::Error) -> ConfigError {
    let issues = error
        .into_iter()
        .map(|err| Issue {
            key: err.path.join("."),
            message: without_quoted_source(&err.to_string()),
        })
        .collect();
    ConfigError { issues }
}

/// A figment error without the value it found: the value may be a secret (`jwt_secret = 123`)
/// or a URL holding one, so only its type is named.
fn describe_kind(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        Kind::InvalidType(found, expected) => {
            format!(
                "invalid type: found {}, expected {expected}",
                type_of(found)
            )
        }
        Kind::InvalidValue(found, expected) => {
            format!(
                "invalid value: found {}, expected {expected}",
                type_of(found)
            )
        }
        Kind::Unsupported(found) => format!("unsupported value: {}", type_of(found)),
        Kind::UnsupportedKey(found, _) => format!("unsupported key: {}", type_of(found)),
        Kind::UnknownVariant(found, expected) => {
            let expected = expected.join(", ");
            // A name like `kafka` is shown; anything else might be a mistyped secret.
            let shown = (1..=40).contains(&found.len())
                && found.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            if shown {
                format!("unknown variant {found:?}; expected one of: {expected}")
            } else {
                format!("unknown variant; expected one of: {expected}")
            }
        }
        Kind::ISizeOutOfRange(_) | Kind::USizeOutOfRange(_) => "number out of range".to_owned(),
        other => other.to_string(),
    }
}

/// What kind of value was found, never the value.
fn type_of(found: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match found {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) => "a character",
        Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Unit => "an empty value",
        Actual::Seq => "an array",
        Actual::Map => "a table",
        _ => "a value of another type",
    }
}

/// `postgres.slot` → `PGLIVE_POSTGRES__SLOT`.
pub(super) fn env_var_name(key: &str) -> String {
    let parts: Vec<String> = key.split('.').map(str::to_uppercase).collect();
    format!("{ENV_PREFIX}{}", parts.join("__"))
}

/// Drops the source excerpt (`2 | url = "…"` and its `|` gutter lines) from a parse error.
fn without_quoted_source(message: &str) -> String {
    message
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            let gutter = t
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start();
            !gutter.starts_with('|')
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn push_part(key: &mut String, part: &str) {
    if part.is_empty() {
        return;
    }
    if !key.is_empty() {
        key.push('.');
    }
    key.push_str(part);
}

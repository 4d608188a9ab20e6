//! Configuration: a TOML file layered with `PGLIVE_<SECTION>__<KEY>` environment variables,
//! deserialized strictly (unknown keys are errors), then validated once into a resolved
//! [`Config`]. Every problem is reported with its key path, all of them at once where possible.
//! Secrets (the URL's password, `password_file`) are never printed.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Value};
use serde::{Deserialize, Serialize};

use crate::map::{MapOptions, TableRule};
use crate::sink::amqp::{self, AmqpSinkConfig, AmqpUrl, OnReject, RoutingKey};
use crate::sink::websocket::{self, Auth, WsSinkConfig};
use crate::source::conninfo::ConnInfo;

/// Default replication slot name.
pub const DEFAULT_SLOT: &str = "pglive";
/// Default publication name.
pub const DEFAULT_PUBLICATION: &str = "pglive";
/// Status updates this often at least: well inside PostgreSQL's default 60 s `wal_sender_timeout`,
/// and often enough that an idle slot's confirmed position follows the server promptly.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// Give up on one connection attempt after this long (then back off and retry).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between reconnection attempts.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Ids per coalesced event: keeps one event near 10–40 KB of JSON for typical keys, so a
/// million-row transaction becomes a thousand modest events rather than one huge one.
pub const DEFAULT_MAX_IDS_PER_EVENT: usize = 1000;
/// Largest replication message accepted (one row's change, its values as text): 64 MiB.
/// Reading one costs about its size in memory (measured: a 60 MiB row raised the peak RSS by
/// 62 MiB), so this keeps a huge row, or a hostile server, well inside the Kubernetes
/// deployment's 256 MiB limit next to the relay's clients and the sinks' queues. Raise both
/// for tables with larger values (PostgreSQL allows up to 1 GiB per value).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Longest `jwt_leeway`: clock skew beyond this is a broken clock, not skew.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// Upper bound for the durations above: longer ones are mistakes, and would overflow timers.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// How long a graceful stop may take: drain the sinks, confirm, close connections.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Warn (log and metric) when the slot holds more WAL than this behind the server…
pub const DEFAULT_LAG_WARNING_BYTES: u64 = 1 << 30;
/// …or when a committed change has waited this long for every sink.
pub const DEFAULT_LAG_WARNING_AGE: Duration = Duration::from_secs(300);
/// Text settings taken from the environment as written (never parsed as numbers or booleans).
const RAW_ENV_KEYS: &[&str] = &[
    "postgres.url",
    "postgres.password_file",
    "postgres.slot",
    "postgres.publication",
    "ops.listen",
    "ops.log_level",
];
/// Environment variables with this prefix (and a `__` section separator) override the file.
pub const ENV_PREFIX: &str = "PGLIVE_";

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub postgres: PostgresConfig,
    pub events: MapOptions,
    pub tables: Vec<TableRule>,
    pub sinks: Vec<SinkConfig>,
    pub ops: OpsConfig,
    /// Problems that do not stop pglive but weaken it (a secret file others can read, a
    /// server certificate nobody verifies): `run` logs them at start, `check` lists them.
    pub warnings: Vec<Issue>,
}

/// `[ops]`: running pglive as a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsConfig {
    /// Where `/healthz`, `/readyz` and `/metrics` are served; none when absent.
    pub listen: Option<SocketAddr>,
    /// A graceful stop (SIGTERM/SIGINT) ends within this long.
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    /// A tracing filter (`info`, `pglive=debug`); `RUST_LOG` overrides it.
    pub log_level: Option<String>,
    /// Replication lag that logs a warning and sets `pglive_lag_warning`.
    pub lag_warning_bytes: u64,
    pub lag_warning_age: Duration,
}

impl Default for OpsConfig {
    fn default() -> OpsConfig {
        OpsConfig {
            listen: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            log_format: LogFormat::Text,
            log_level: None,
            lag_warning_bytes: DEFAULT_LAG_WARNING_BYTES,
            lag_warning_age: DEFAULT_LAG_WARNING_AGE,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "{other:?} is not a log format: use \"text\" or \"json\""
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub conn: ConnInfo,
    pub slot: String,
    pub publication: String,
    /// `run` creates a missing publication and slot, and adds mapped tables to the publication.
    pub auto_setup: bool,
    pub status_interval: Duration,
    pub connect_timeout: Duration,
    pub max_backoff: Duration,
    pub max_message_bytes: usize,
    /// Write a `pg_logical_emit_message` this often, so that a server whose only writes are
    /// invisible to the slot's database still lets the slot advance; none when absent.
    pub heartbeat_interval: Option<Duration>,
    /// What `run` does when PostgreSQL has invalidated the slot (`wal_status = 'lost'`).
    pub on_slot_lost: OnSlotLost,
}

/// `postgres.on_slot_lost`: what to do with a slot PostgreSQL invalidated because it held
/// more WAL than `max_slot_wal_keep_size` (the changes since its position are gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnSlotLost {
    /// Exit 1 naming the cause and the fix: losing changes is the operator's call.
    #[default]
    Fail,
    /// Drop the slot, create it again, and send every mapped channel a `*` event (refetch)
    /// before any new event.
    Recreate,
}

impl std::str::FromStr for OnSlotLost {
    type Err = String;
    fn from_str(s: &str) -> Result<OnSlotLost, String> {
        match s {
            "fail" => Ok(OnSlotLost::Fail),
            "recreate" => Ok(OnSlotLost::Recreate),
            other => Err(format!(
                "{other:?} is not a policy: use \"fail\" or \"recreate\""
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkConfig {
    /// One JSON event per line on standard output.
    Stdout,
    /// One JSON event per line appended to `path`; synced to disk per batch when `fsync`.
    File { path: PathBuf, fsync: bool },
    /// Persistent messages to a RabbitMQ exchange, with publisher confirms.
    Amqp(Box<AmqpSinkConfig>),
    /// A WebSocket relay served by pglive.
    WebSocket(Box<WsSinkConfig>),
}

impl SinkConfig {
    pub fn name(&self) -> &'static str {
        match self {
            SinkConfig::Stdout => "stdout",
            SinkConfig::File { .. } => "file",
            SinkConfig::Amqp(_) => amqp::NAME,
            SinkConfig::WebSocket(_) => websocket::NAME,
        }
    }
}

// ---- raw, as written ----

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    url: Option<String>,
    password_file: Option<PathBuf>,
    slot: Option<String>,
    publication: Option<String>,
    auto_setup: Option<bool>,
    status_interval: Option<RawDuration>,
    connect_timeout: Option<RawDuration>,
    max_backoff: Option<RawDuration>,
    max_message_bytes: Option<u64>,
    heartbeat_interval: Option<RawDuration>,
    allow_insecure_password: Option<bool>,
    on_slot_lost: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOps {
    listen: Option<String>,
    shutdown_timeout: Option<RawDuration>,
    log_format: Option<String>,
    log_level: Option<String>,
    lag_warning_bytes: Option<u64>,
    lag_warning_age: Option<RawDuration>,
}

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    coalesce: Option<bool>,
    max_ids_per_event: Option<u64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    name: String,
    channel: Option<String>,
    ids_as_strings: Option<bool>,
    data_provider_name: Option<String>,
}

// Parsed once at start-up; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum RawSink {
    Stdout {},
    File {
        path: PathBuf,
        fsync: Option<bool>,
    },
    Amqp {
        url: String,
        password_file: Option<PathBuf>,
        exchange: Option<String>,
        declare: Option<bool>,
        routing_key: Option<String>,
        mandatory: Option<bool>,
        on_reject: Option<String>,
        max_inflight: Option<u64>,
        max_inflight_bytes: Option<u64>,
        connect_timeout: Option<RawDuration>,
        max_backoff: Option<RawDuration>,
        ca_file: Option<PathBuf>,
    },
    Websocket {
        listen: String,
        path: Option<String>,
        jwt_secret: Option<String>,
        jwt_secret_file: Option<PathBuf>,
        jwt_public_key_file: Option<PathBuf>,
        jwt_audience: Option<String>,
        jwt_issuer: Option<String>,
        jwt_leeway: Option<RawDuration>,
        anonymous: Option<bool>,
        allowed_origins: Option<Vec<String>>,
        history: Option<u64>,
        history_age: Option<RawDuration>,
        client_queue: Option<u64>,
        max_connections: Option<u64>,
        max_subscriptions: Option<u64>,
        max_message_bytes: Option<u64>,
        ping_interval: Option<RawDuration>,
        header_timeout: Option<RawDuration>,
    },
}

/// A duration written as `"500ms"`, `"10s"`, `"5m"`, `"1h"` or a number of seconds.
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(untagged)]
enum RawDuration {
    Seconds(u64),
    Text(String),
}

impl RawDuration {
    fn resolve(&self) -> Result<Duration, String> {
        match self {
            RawDuration::Seconds(s) => Ok(Duration::from_secs(*s)),
            RawDuration::Text(t) => parse_duration(t),
        }
    }
}

/// Parses `"250ms"`, `"10s"`, `"5m"`, `"1h"` or a bare number of seconds.
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
        _ => return Err(format!("{text:?}: unknown unit (use ms, s, m or h)")),
    };
    Ok(d)
}

// ---- errors ----

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

struct Issues {
    list: Vec<Issue>,
    figment: Figment,
    /// Whether the environment was consulted (to name variables in messages).
    env: bool,
}

impl Issues {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
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

    fn figment_error(&mut self, prefix: &str, err: figment::Error) {
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
fn env_var_name(key: &str) -> String {
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

// ---- loading ----

/// Loads `path` (if given) and the `PGLIVE_*` environment, and validates the result.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let mut figment = Figment::new();
    if let Some(path) = path {
        if !path.exists() {
            return Err(ConfigError {
                issues: vec![Issue {
                    key: String::new(),
                    message: format!("configuration file {} does not exist", path.display()),
                }],
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(
        Env::prefixed(ENV_PREFIX)
            // Only `SECTION__KEY` variables configure; `PGLIVE_CONFIG` and the like do not.
            .filter(|k| k.as_str().contains("__"))
            .split("__")
            // Taken raw below: figment would read `007` as the number 7.
            .ignore(RAW_ENV_KEYS),
    );
    for key in RAW_ENV_KEYS {
        if let Ok(value) = std::env::var(env_var_name(key)) {
            figment = figment.merge(Serialized::default(key, value));
        }
    }
    from_figment(figment, true)
}

/// Parses a configuration from TOML text alone (no environment); for tests and examples.
pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
    from_figment(Figment::from(Toml::string(text)), false)
}

fn from_figment(figment: Figment, env: bool) -> Result<Config, ConfigError> {
    let mut issues = Issues {
        list: Vec::new(),
        figment: figment.clone(),
        env,
    };
    let top: Dict = match figment.extract() {
        Ok(d) => d,
        Err(e) => {
            // A syntax error quotes the offending line, which may hold a password: keep only
            // the position and the reason.
            for err in e {
                let message = without_quoted_source(&err.to_string());
                issues.list.push(Issue {
                    key: err.path.join("."),
                    message,
                });
            }
            return Err(ConfigError {
                issues: issues.list,
            });
        }
    };
    for key in top.keys() {
        if !["postgres", "events", "tables", "sinks", "ops"].contains(&key.as_str()) {
            issues.push(
                key.clone(),
                "unknown section; expected one of: postgres, events, tables, sinks, ops",
            );
        }
    }

    // Keys set aside as invalid were reported; do not report them again as missing.
    let (postgres, postgres_removed): (RawPostgres, _) = section(&top, &mut issues, "postgres");
    let (events, _): (RawEvents, _) = section(&top, &mut issues, "events");
    let (raw_ops, _): (RawOps, _) = section(&top, &mut issues, "ops");
    let tables: Vec<(usize, RawTable)> = array(&top, &mut issues, "tables");
    let sinks: Vec<(usize, RawSink)> = array(&top, &mut issues, "sinks");

    let mut url_has_password = false;
    let conn = match &postgres.url {
        None if postgres_removed.iter().any(|k| k == "url") => None,
        None => {
            issues.push(
                "postgres.url",
                format!("missing; set it in the file or with {ENV_PREFIX}POSTGRES__URL"),
            );
            None
        }
        Some(url) => match ConnInfo::parse(url) {
            Ok(mut c) => {
                url_has_password = c.password.is_some();
                c.allow_insecure_password = postgres.allow_insecure_password.unwrap_or(false);
                if let Some(file) = &postgres.password_file {
                    match read_secret_file(file) {
                        Ok(pw) => c.password = Some(pw),
                        Err(e) => issues.push("postgres.password_file", e),
                    }
                }
                if c.sslmode.verifies_certificate() && !crate::source::tls::has_root_cert(&c) {
                    issues.push(
                        "postgres.url",
                        crate::source::tls::TlsSetupError::NoRootCert(c.sslmode.name()).to_string(),
                    );
                }
                Some(c)
            }
            Err(e) => {
                issues.push("postgres.url", e.to_string());
                None
            }
        },
    };
    let slot = postgres.slot.clone().unwrap_or_else(|| DEFAULT_SLOT.into());
    if !valid_slot_name(&slot) {
        issues.push(
            "postgres.slot",
            format!("{slot:?} is not a valid slot name: use 1 to 63 lower-case letters, digits and underscores"),
        );
    }
    let publication = postgres
        .publication
        .clone()
        .unwrap_or_else(|| DEFAULT_PUBLICATION.into());
    if publication.is_empty() || publication.len() > 63 || publication.contains('\0') {
        issues.push(
            "postgres.publication",
            format!("{publication:?} is not a valid publication name (1 to 63 bytes)"),
        );
    }
    let status_interval = duration(
        &mut issues,
        "postgres.status_interval",
        &postgres.status_interval,
        DEFAULT_STATUS_INTERVAL,
    );
    let connect_timeout = duration(
        &mut issues,
        "postgres.connect_timeout",
        &postgres.connect_timeout,
        DEFAULT_CONNECT_TIMEOUT,
    );
    let max_backoff = duration(
        &mut issues,
        "postgres.max_backoff",
        &postgres.max_backoff,
        DEFAULT_MAX_BACKOFF,
    );
    let max_message_bytes = match postgres.max_message_bytes {
        None => DEFAULT_MAX_MESSAGE_BYTES,
        Some(n) if n >= 1024 => usize::try_from(n).unwrap_or(usize::MAX),
        Some(_) => {
            issues.push("postgres.max_message_bytes", "must be at least 1024");
            DEFAULT_MAX_MESSAGE_BYTES
        }
    };

    let heartbeat_interval = postgres.heartbeat_interval.as_ref().map(|_| {
        duration(
            &mut issues,
            "postgres.heartbeat_interval",
            &postgres.heartbeat_interval,
            DEFAULT_STATUS_INTERVAL,
        )
    });
    let on_slot_lost = match postgres.on_slot_lost.as_deref().map(str::parse) {
        None => OnSlotLost::default(),
        Some(Ok(policy)) => policy,
        Some(Err(e)) => {
            issues.push("postgres.on_slot_lost", e);
            OnSlotLost::default()
        }
    };
    let ops = ops_config(&mut issues, raw_ops);

    let max_ids = at_least_one(
        &mut issues,
        "events.max_ids_per_event",
        events.max_ids_per_event,
        DEFAULT_MAX_IDS_PER_EVENT,
    );

    let mut rules: Vec<TableRule> = Vec::new();
    if tables.is_empty() && !top.contains_key("tables") {
        issues.push(
            "tables",
            "no tables mapped; add at least one [[tables]] entry with a `name`",
        );
    }
    for (i, t) in tables {
        let key = format!("tables[{i}]");
        match parse_table_name(&t.name) {
            Err(e) => issues.push(format!("{key}.name"), e),
            Ok((schema, name)) => {
                if rules.iter().any(|r| r.schema == schema && r.name == name) {
                    issues.push(
                        format!("{key}.name"),
                        format!("table {schema}.{name} is mapped more than once"),
                    );
                }
                let channel = t
                    .channel
                    .clone()
                    .unwrap_or_else(|| format!("resources/{name}"));
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
                rules.push(TableRule {
                    schema,
                    name,
                    channel,
                    ids_as_strings: t.ids_as_strings.unwrap_or(false),
                    data_provider_name: t.data_provider_name.clone(),
                });
            }
        }
    }

    let mut sink_configs = Vec::new();
    if sinks.is_empty() && !top.contains_key("sinks") {
        issues.push(
            "sinks",
            "no sinks configured; add at least one [[sinks]] entry, e.g. type = \"stdout\"",
        );
    }
    for (i, s) in sinks {
        let sink = match s {
            RawSink::Stdout {} => SinkConfig::Stdout,
            RawSink::File { path, fsync } => {
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
                if path.as_os_str().is_empty() {
                    issues.push(format!("sinks[{i}].path"), "must not be empty");
                } else if let Some(dir) = dir.filter(|d| !d.is_dir()) {
                    issues.push(
                        format!("sinks[{i}].path"),
                        format!("directory {} does not exist", dir.display()),
                    );
                }
                SinkConfig::File {
                    path,
                    fsync: fsync.unwrap_or(true),
                }
            }
            RawSink::Amqp {
                url,
                password_file,
                exchange,
                declare,
                routing_key,
                mandatory,
                on_reject,
                max_inflight,
                max_inflight_bytes,
                connect_timeout,
                max_backoff,
                ca_file,
            } => {
                let key = |k: &str| format!("sinks[{i}].{k}");
                let password = password_file.as_deref().and_then(|file| {
                    read_secret_file(file)
                        .map_err(|e| issues.push(key("password_file"), e))
                        .ok()
                });
                let url = match AmqpUrl::parse(&url, password.as_deref()) {
                    Ok(u) => Some(u),
                    Err(e) => {
                        issues.push(key("url"), e);
                        None
                    }
                };
                let exchange = exchange.unwrap_or_else(|| amqp::DEFAULT_EXCHANGE.into());
                if exchange.len() > 255 {
                    issues.push(key("exchange"), "must be at most 255 bytes");
                }
                let routing_key = match RoutingKey::parse(
                    routing_key.as_deref().unwrap_or(amqp::DEFAULT_TEMPLATE),
                ) {
                    Ok(rk) => {
                        for rule in &rules {
                            if let Err(e) = rk.check(&rule.channel, &rule.schema, &rule.name) {
                                issues.push(key("routing_key"), e);
                            }
                        }
                        Some(rk)
                    }
                    Err(e) => {
                        issues.push(key("routing_key"), e);
                        None
                    }
                };
                let mut positive = |k: &str, v: Option<u64>, default: usize| {
                    at_least_one(&mut issues, &key(k), v, default)
                };
                let max_inflight =
                    positive("max_inflight", max_inflight, amqp::DEFAULT_MAX_INFLIGHT);
                let max_inflight_bytes = positive(
                    "max_inflight_bytes",
                    max_inflight_bytes,
                    amqp::DEFAULT_MAX_INFLIGHT_BYTES,
                );
                let connect_timeout = duration(
                    &mut issues,
                    &key("connect_timeout"),
                    &connect_timeout,
                    DEFAULT_CONNECT_TIMEOUT,
                );
                let max_backoff = duration(
                    &mut issues,
                    &key("max_backoff"),
                    &max_backoff,
                    DEFAULT_MAX_BACKOFF,
                );
                if let Some(ca) = ca_file.as_ref().filter(|p| !p.is_file()) {
                    issues.push(
                        key("ca_file"),
                        format!("{} is not a readable file", ca.display()),
                    );
                }
                let on_reject = match on_reject.as_deref() {
                    None | Some("retry") => OnReject::Retry,
                    Some("skip") => OnReject::Skip,
                    Some(other) => {
                        issues.push(
                            key("on_reject"),
                            format!("{other:?} is not a policy; use \"retry\" or \"skip\""),
                        );
                        OnReject::Retry
                    }
                };
                let (Some(url), Some(routing_key)) = (url, routing_key) else {
                    continue;
                };
                SinkConfig::Amqp(Box::new(AmqpSinkConfig {
                    url,
                    exchange,
                    declare: declare.unwrap_or(true),
                    routing_key,
                    mandatory: mandatory.unwrap_or(true),
                    on_reject,
                    max_inflight,
                    max_inflight_bytes,
                    connect_timeout,
                    max_backoff,
                    ca_file,
                }))
            }
            RawSink::Websocket {
                listen,
                path,
                jwt_secret,
                jwt_secret_file,
                jwt_public_key_file,
                jwt_audience,
                jwt_issuer,
                jwt_leeway,
                anonymous,
                allowed_origins,
                history,
                history_age,
                client_queue,
                max_connections,
                max_subscriptions,
                max_message_bytes,
                ping_interval,
                header_timeout,
            } => {
                let key = |k: &str| format!("sinks[{i}].{k}");
                let listen = match listen.parse::<std::net::SocketAddr>() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        issues.push(
                            key("listen"),
                            format!("{listen:?} is not an address like \"127.0.0.1:8080\""),
                        );
                        None
                    }
                };
                let path = path.unwrap_or_else(|| websocket::DEFAULT_PATH.into());
                if !path.starts_with('/') || path.contains(['?', '#']) {
                    issues.push(
                        key("path"),
                        format!("{path:?} must be a path starting with /"),
                    );
                }
                let anonymous = anonymous.unwrap_or(false);
                let auth = ws_auth(
                    anonymous,
                    jwt_secret.as_deref(),
                    jwt_secret_file.as_deref(),
                    jwt_public_key_file.as_deref(),
                )
                .map_err(|(k, e)| issues.push(key(k), e))
                .ok();
                let allowed_origins = allowed_origins.unwrap_or_default();
                if matches!(auth, Some(Auth::Anonymous)) && allowed_origins.is_empty() {
                    issues.push(
                        key("allowed_origins"),
                        "anonymous = true requires allowed_origins: the origins of the web \
                         applications whose pages may connect, e.g. [\"https://app.example.com\"] \
                         (otherwise any web page could read every channel through its visitors' browsers)",
                    );
                }
                for (k, value) in [("jwt_audience", &jwt_audience), ("jwt_issuer", &jwt_issuer)] {
                    if value.as_deref() == Some("") {
                        issues.push(key(k), "must not be empty");
                    }
                    if anonymous && value.is_some() {
                        issues.push(key(k), "needs a JWT key; anonymous = true checks no token");
                    }
                }
                let leeway = match jwt_leeway.as_ref().map(RawDuration::resolve) {
                    None => websocket::auth::DEFAULT_LEEWAY,
                    Some(Ok(d)) if d <= MAX_LEEWAY => d,
                    Some(Ok(_)) => {
                        issues.push(key("jwt_leeway"), "must be at most 5m");
                        websocket::auth::DEFAULT_LEEWAY
                    }
                    Some(Err(e)) => {
                        issues.push(key("jwt_leeway"), e);
                        websocket::auth::DEFAULT_LEEWAY
                    }
                };
                let auth = auth.map(|a| a.with_claims(jwt_audience, jwt_issuer, leeway));
                let mut positive = |k: &str, v: Option<u64>, default: usize| {
                    at_least_one(&mut issues, &key(k), v, default)
                };
                let client_queue = positive(
                    "client_queue",
                    client_queue,
                    websocket::DEFAULT_CLIENT_QUEUE,
                );
                let max_connections = positive(
                    "max_connections",
                    max_connections,
                    websocket::DEFAULT_MAX_CONNECTIONS,
                );
                let max_message_bytes = positive(
                    "max_message_bytes",
                    max_message_bytes,
                    websocket::DEFAULT_MAX_MESSAGE_BYTES,
                );
                let max_subscriptions = positive(
                    "max_subscriptions",
                    max_subscriptions,
                    websocket::DEFAULT_MAX_SUBSCRIPTIONS,
                );
                let history = history.map_or(websocket::DEFAULT_HISTORY, |n| {
                    usize::try_from(n).unwrap_or(usize::MAX)
                });
                let history_age = duration(
                    &mut issues,
                    &key("history_age"),
                    &history_age,
                    websocket::DEFAULT_HISTORY_AGE,
                );
                let ping_interval = duration(
                    &mut issues,
                    &key("ping_interval"),
                    &ping_interval,
                    websocket::DEFAULT_PING_INTERVAL,
                );
                let header_timeout = duration(
                    &mut issues,
                    &key("header_timeout"),
                    &header_timeout,
                    crate::http::DEFAULT_HEADER_TIMEOUT,
                );
                let mut channels: Vec<String> = Vec::new();
                for rule in &rules {
                    if !channels.contains(&rule.channel) {
                        channels.push(rule.channel.clone());
                    }
                }
                let (Some(listen), Some(auth)) = (listen, auth) else {
                    continue;
                };
                SinkConfig::WebSocket(Box::new(WsSinkConfig {
                    listen,
                    path,
                    auth,
                    allowed_origins,
                    channels,
                    history,
                    history_age,
                    client_queue,
                    max_connections,
                    max_subscriptions,
                    max_message_bytes,
                    ping_interval,
                    header_timeout,
                }))
            }
        };
        let duplicate = sink_configs.iter().find_map(|other| match (&sink, other) {
            (SinkConfig::Stdout, SinkConfig::Stdout) => {
                Some("only one stdout sink is allowed".to_owned())
            }
            (SinkConfig::File { path: a, .. }, SinkConfig::File { path: b, .. }) if a == b => Some(
                format!("another file sink already writes to {}", a.display()),
            ),
            (SinkConfig::WebSocket(a), SinkConfig::WebSocket(b)) if a.listen == b.listen => Some(
                format!("another websocket sink already listens on {}", a.listen),
            ),
            _ => None,
        });
        if let Some(what) = duplicate {
            issues.push(format!("sinks[{i}].type"), what);
        }
        if let (SinkConfig::WebSocket(ws), Some(ops)) = (&sink, ops.listen)
            && ws.listen == ops
        {
            issues.push(
                format!("sinks[{i}].listen"),
                format!("{ops} is also ops.listen; use another port for one of them"),
            );
        }
        sink_configs.push(sink);
    }

    let mut warnings = conn
        .as_ref()
        .map(|conn| {
            let mut w = connection_warnings(conn);
            w.extend(secret_warnings(
                &issues.figment,
                conn,
                url_has_password,
                postgres.password_file.as_deref(),
            ));
            w
        })
        .unwrap_or_default();
    warnings.extend(relay_warnings(&sink_configs));
    match (issues.list.is_empty(), conn) {
        (true, Some(conn)) => Ok(Config {
            postgres: PostgresConfig {
                conn,
                slot,
                publication,
                auto_setup: postgres.auto_setup.unwrap_or(true),
                status_interval,
                connect_timeout,
                max_backoff,
                max_message_bytes,
                heartbeat_interval,
                on_slot_lost,
            },
            events: MapOptions {
                coalesce: events.coalesce.unwrap_or(true),
                max_ids_per_event: max_ids,
            },
            tables: rules,
            sinks: sink_configs,
            ops,
            warnings,
        }),
        _ => Err(ConfigError {
            issues: issues.list,
        }),
    }
}

/// The relay's authentication from its keys: anonymous (alone), or exactly one JWT key.
/// An error names the key it concerns.
fn ws_auth(
    anonymous: bool,
    secret: Option<&str>,
    secret_file: Option<&Path>,
    public_key_file: Option<&Path>,
) -> Result<Auth, (&'static str, String)> {
    match (anonymous, secret, secret_file, public_key_file) {
        (true, None, None, None) => Ok(Auth::Anonymous),
        (true, ..) => Err((
            "anonymous",
            "anonymous = true takes no jwt_* key; remove one or the other".into(),
        )),
        (false, Some(s), None, None) => Auth::secret(s.as_bytes()).map_err(|e| ("jwt_secret", e)),
        (false, None, Some(f), None) => read_secret_file(f)
            .and_then(|secret| Auth::secret(secret.as_bytes()))
            .map_err(|e| ("jwt_secret_file", e)),
        (false, None, None, Some(f)) => std::fs::read(f)
            .map_err(|e| format!("cannot read {}: {e}", f.display()))
            .and_then(|pem| Auth::public_key(&pem))
            .map_err(|e| ("jwt_public_key_file", e)),
        (false, None, None, None) => Err((
            "jwt_secret",
            "set jwt_secret, jwt_secret_file or jwt_public_key_file (or anonymous = true, for development only)".into(),
        )),
        (false, ..) => Err((
            "jwt_secret",
            "set only one of jwt_secret, jwt_secret_file and jwt_public_key_file".into(),
        )),
    }
}

fn ops_config(issues: &mut Issues, raw: RawOps) -> OpsConfig {
    let defaults = OpsConfig::default();
    let listen = raw.listen.as_deref().and_then(|l| match l.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            issues.push(
                "ops.listen",
                format!("{l:?} is not an address like \"127.0.0.1:9187\" or \"[::]:9187\""),
            );
            None
        }
    });
    let log_format = match raw.log_format.as_deref().map(str::parse) {
        None => defaults.log_format,
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            issues.push("ops.log_format", e);
            defaults.log_format
        }
    };
    if let Some(level) = &raw.log_level
        && let Err(e) = tracing_subscriber::EnvFilter::try_new(level)
    {
        issues.push(
            "ops.log_level",
            format!("{level:?} is not a log filter like \"info\" or \"pglive=debug,warn\": {e}"),
        );
    }
    let lag_warning_bytes = match raw.lag_warning_bytes {
        None => defaults.lag_warning_bytes,
        Some(0) => {
            issues.push("ops.lag_warning_bytes", "must be greater than zero");
            defaults.lag_warning_bytes
        }
        Some(n) => n,
    };
    OpsConfig {
        listen,
        shutdown_timeout: duration(
            issues,
            "ops.shutdown_timeout",
            &raw.shutdown_timeout,
            defaults.shutdown_timeout,
        ),
        log_format,
        log_level: raw.log_level,
        lag_warning_bytes,
        lag_warning_age: duration(
            issues,
            "ops.lag_warning_age",
            &raw.lag_warning_age,
            defaults.lag_warning_age,
        ),
    }
}

/// A warning for each relay that accepts any browser `Origin`: a page on any web site could then
/// use a token its visitor's browser holds (anonymous relays must list origins).
fn relay_warnings(sinks: &[SinkConfig]) -> Vec<Issue> {
    sinks
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            SinkConfig::WebSocket(ws) if ws.allowed_origins.is_empty() => Some(Issue {
                key: format!("sinks[{i}].allowed_origins"),
                message: "empty: a page on any web site may open connections to the relay \
                          from its visitors' browsers; list your application's origins"
                    .into(),
            }),
            _ => None,
        })
        .collect()
}

/// A warning when a man in the middle could read or alter the replication connection: TCP
/// without a verified server certificate.
fn connection_warnings(conn: &ConnInfo) -> Vec<Issue> {
    use crate::source::conninfo::{Host, SslMode};
    if matches!(conn.host, Host::Unix(_)) {
        return Vec::new();
    }
    let mode = crate::source::tls::effective_mode(conn);
    let what = match mode {
        SslMode::VerifyCa | SslMode::VerifyFull => return Vec::new(),
        SslMode::Disable => "the connection to PostgreSQL is not encrypted (sslmode=disable)",
        SslMode::Prefer => {
            "the server's certificate is not verified (sslmode=prefer, and a server without TLS \
             gets a connection that is not even encrypted)"
        }
        SslMode::Require => {
            "the server's certificate is not verified (sslmode=require without a root certificate)"
        }
    };
    let mut message = format!(
        "{what}: a man in the middle could read and alter the changes pglive receives; verify \
         the server with sslmode=verify-full&sslrootcert=<the CA's certificate file>"
    );
    if conn.allow_insecure_password {
        message.push_str(
            "; and postgres.allow_insecure_password = true lets a cleartext or MD5 password go \
             over it",
        );
    }
    vec![Issue {
        key: "postgres.url".into(),
        message,
    }]
}

/// Warnings for secrets that other users may read: a secret file (`password_file`,
/// `jwt_secret_file`, `sslkey`), or a configuration file holding an inline password or
/// `jwt_secret`, with permissions for group or others. A file that does not exist is not
/// warned about (reading it is an error of its own).
fn secret_warnings(
    figment: &Figment,
    conn: &ConnInfo,
    url_has_password: bool,
    password_file: Option<&Path>,
) -> Vec<Issue> {
    let mut out = Vec::new();
    let mut file = |key: String, path: &Path| {
        if let Some(mode) = exposed_mode(path) {
            out.push(Issue {
                key,
                message: format!(
                    "{} holds a secret and is readable by group or others (mode {mode:04o}); \
                     restrict it: chmod 600 {}",
                    path.display(),
                    shell_quote(path)
                ),
            });
        }
    };
    if let Some(path) = password_file {
        file("postgres.password_file".into(), path);
    }
    if let Some(key) = &conn.sslkey {
        file("postgres.url".into(), key);
    }
    // Configuration files holding secrets inline, with the keys that hold them.
    let mut inline: Vec<(PathBuf, Vec<String>)> = Vec::new();
    let mut holds = |key: String, value: &Value| {
        let Some(path) = figment
            .get_metadata(value.tag())
            .and_then(|m| m.source.as_ref())
            .and_then(|s| s.file_path())
        else {
            return;
        };
        match inline.iter_mut().find(|(p, _)| p == path) {
            Some((_, keys)) => keys.push(key),
            None => inline.push((path.to_path_buf(), vec![key])),
        }
    };
    if url_has_password && let Ok(v) = figment.find_value("postgres.url") {
        holds("postgres.url".into(), &v);
    }
    if let Ok(Value::Array(_, sinks)) = figment.find_value("sinks") {
        for (i, sink) in sinks.iter().enumerate() {
            let Value::Dict(_, d) = sink else { continue };
            let key = |k: &str| format!("sinks[{i}].{k}");
            for k in ["password_file", "jwt_secret_file"] {
                if let Some(path) = d.get(k).and_then(Value::as_str) {
                    file(key(k), Path::new(path));
                }
            }
            if let Some(v @ Value::String(_, url)) = d.get("url")
                && url::Url::parse(url).is_ok_and(|u| u.password().is_some())
            {
                holds(key("url"), v);
            }
            if let Some(v @ Value::String(..)) = d.get("jwt_secret") {
                holds(key("jwt_secret"), v);
            }
        }
    }
    for (path, keys) in inline {
        if let Some(mode) = exposed_mode(&path) {
            out.push(Issue {
                key: String::new(),
                message: format!(
                    "configuration file {} holds secrets ({}) and is readable by group or \
                     others (mode {mode:04o}); restrict it: chmod 600 {}, or move the secrets \
                     to files of their own (password_file, jwt_secret_file)",
                    path.display(),
                    keys.join(", "),
                    shell_quote(&path)
                ),
            });
        }
    }
    out
}

/// The permission bits of `path` when they let others than its owner read it, by libpq's rule
/// for key files: no access for group or others, except that a file owned by root may be
/// group-readable (a Kubernetes secret volume with `fsGroup` and mode 0440). `None` for a
/// file that is private enough, or that cannot be examined.
fn exposed_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.mode() & 0o7777;
    let forbidden = if meta.uid() == 0 { 0o037 } else { 0o077 };
    (mode & forbidden != 0).then_some(mode & 0o777)
}

/// `path` as a shell word.
fn shell_quote(path: &Path) -> String {
    let text = path.display().to_string();
    if text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@".contains(&b))
    {
        text
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// A secret kept in a file (a mounted Kubernetes secret, a systemd credential): its text without
/// the trailing newline. The error names the file, never its content.
fn read_secret_file(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|text| text.trim_end_matches(['\r', '\n']).to_owned())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// A count setting: `default` when absent; at least 1.
fn at_least_one(issues: &mut Issues, key: &str, value: Option<u64>, default: usize) -> usize {
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
fn duration(
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
fn section<T: for<'de> Deserialize<'de> + Default>(
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
fn array<T: for<'de> Deserialize<'de>>(
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

/// `schema.table` or `table` (schema `public`). Names are taken literally, as in the catalog.
fn parse_table_name(text: &str) -> Result<(String, String), String> {
    let parts: Vec<&str> = text.split('.').collect();
    let (schema, name) = match parts.as_slice() {
        [name] => ("public", *name),
        [schema, name] => (*schema, *name),
        _ => return Err(format!("{text:?} is not `schema.table` or `table`")),
    };
    for part in [schema, name] {
        if part.is_empty() || part.len() > 63 || part.contains('\0') {
            return Err(format!(
                "{text:?}: each part must be 1 to 63 bytes (schema.table or table)"
            ));
        }
    }
    Ok((schema.to_owned(), name.to_owned()))
}

fn valid_slot_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests;

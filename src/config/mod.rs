//! Configuration: a TOML file layered with `PGLIVE_<SECTION>__<KEY>` environment variables,
//! deserialized strictly (unknown keys are errors), then validated once into a resolved
//! [`Config`]. Every problem is reported with its key path, all of them at once where possible.
//! Secrets (the URL's password, `password_file`) are never printed.
//!
//! `from_figment` reads every section leniently (`raw`), then hands each to its resolver:
//! `postgres`, `ops`, `tables` (with `[events]`) and `sinks`, which gives each sink type a file
//! of its own. All of them report into one list (`issues`); `warnings` then looks for what
//! weakens a configuration that is otherwise valid.

mod issues;
mod ops;
mod postgres;
mod raw;
mod relay;
mod sinks;
mod tables;
mod warnings;

use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::Dict;

use crate::map::{MapOptions, TableRule};

pub use issues::{ConfigError, Issue};
pub use ops::{LogFormat, OpsConfig};
pub use postgres::{OnSlotLost, PostgresConfig};
pub use raw::parse_duration;
pub use relay::{DEFAULT_PREFETCH, DEFAULT_STREAM, MAX_PREFETCH, StreamConfig};
pub use sinks::SinkConfig;

use issues::{Issues, env_var_name};

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
    "relay.url",
    "relay.password_file",
    "relay.stream",
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

// ---- loading ----

/// Loads `path` (if given) and the `PGLIVE_*` environment, and validates the result.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    from_figment(layered(path)?, true)
}

/// The file at `path` (if given) under the `PGLIVE_*` environment.
fn layered(path: Option<&Path>) -> Result<Figment, ConfigError> {
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
    Ok(figment)
}

/// The resolved configuration of a relay node (`pglive relay`).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The RabbitMQ stream the node reads.
    pub stream: StreamConfig,
    /// The WebSocket server it runs: the in-process relay's settings.
    pub websocket: crate::sink::websocket::WsSinkConfig,
    pub tables: Vec<TableRule>,
    pub ops: OpsConfig,
    pub warnings: Vec<Issue>,
}

/// Loads a relay node's `path` (if given) and the `PGLIVE_*` environment, and validates it.
pub fn load_relay(path: Option<&Path>) -> Result<RelayConfig, ConfigError> {
    relay_from_figment(layered(path)?, true)
}

/// Parses a relay node's configuration from TOML text alone (no environment).
pub fn relay_from_toml(text: &str) -> Result<RelayConfig, ConfigError> {
    relay_from_figment(Figment::from(Toml::string(text)), false)
}

/// Resolves a relay node's sections: `[relay]`, its one `[[sinks]]` (a websocket server),
/// `[[tables]]` (for the channel names; `[events]` is accepted and unused) and `[ops]`.
fn relay_from_figment(figment: Figment, env: bool) -> Result<RelayConfig, ConfigError> {
    let top: Dict = figment.extract().map_err(issues::unreadable)?;
    let mut issues = Issues::new(figment, env);
    for key in top.keys() {
        match key.as_str() {
            "relay" | "sinks" | "tables" | "events" | "ops" => {}
            "postgres" => issues.push(
                "postgres",
                "a relay node reads the RabbitMQ stream, never PostgreSQL; remove [postgres] \
                 (it belongs in the configuration of `pglive run`)",
            ),
            _ => issues.push(
                key.clone(),
                "unknown section; a relay node reads: relay, sinks, tables, events, ops",
            ),
        }
    }
    let (raw_relay, _) = raw::section(&top, &mut issues, "relay");
    let (raw_events, _) = raw::section::<tables::RawEvents>(&top, &mut issues, "events");
    let (raw_ops, _) = raw::section(&top, &mut issues, "ops");
    let raw_tables = raw::array(&top, &mut issues, "tables");
    let raw_sinks = raw::array(&top, &mut issues, "sinks");

    let stream = relay::resolve_relay(&mut issues, raw_relay, top.contains_key("relay"));
    let ops = ops::resolve_ops(&mut issues, raw_ops);
    tables::resolve_events(&mut issues, raw_events);
    let tables = tables::resolve_tables(&mut issues, raw_tables, top.contains_key("tables"));
    let websocket = sinks::resolve_relay_server(
        &mut issues,
        raw_sinks,
        top.contains_key("sinks"),
        &tables,
        &ops,
    );
    let (Some(stream), Some(websocket)) = (stream, websocket) else {
        return Err(issues.into_error());
    };
    if !issues.is_empty() {
        return Err(issues.into_error());
    }
    let warnings = sinks::warnings(&[SinkConfig::WebSocket(Box::new(websocket.clone()))]);
    Ok(RelayConfig {
        stream,
        websocket,
        tables,
        ops,
        warnings,
    })
}

/// Parses a configuration from TOML text alone (no environment); for tests and examples.
pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
    from_figment(Figment::from(Toml::string(text)), false)
}

/// Resolves every section of `figment`, reporting all of their problems at once; `env` says
/// whether the environment was consulted (so that messages name the variables).
fn from_figment(figment: Figment, env: bool) -> Result<Config, ConfigError> {
    let top: Dict = figment.extract().map_err(issues::unreadable)?;
    let mut issues = Issues::new(figment, env);
    for key in top.keys() {
        if key == "relay" {
            issues.push(
                key.clone(),
                "[relay] configures a relay node and is read by `pglive relay`; give the \
                 node a file of its own",
            );
        } else if !["postgres", "events", "tables", "sinks", "ops"].contains(&key.as_str()) {
            issues.push(
                key.clone(),
                "unknown section; expected one of: postgres, events, tables, sinks, ops",
            );
        }
    }
    // Every section is read before any is resolved: problems are listed section by section,
    // parsing ones first.
    let (raw_postgres, postgres_removed) = raw::section(&top, &mut issues, "postgres");
    let (raw_events, _) = raw::section(&top, &mut issues, "events");
    let (raw_ops, _) = raw::section(&top, &mut issues, "ops");
    let raw_tables = raw::array(&top, &mut issues, "tables");
    let raw_sinks = raw::array(&top, &mut issues, "sinks");

    let postgres = postgres::resolve_postgres(&mut issues, raw_postgres, &postgres_removed);
    let ops = ops::resolve_ops(&mut issues, raw_ops);
    let events = tables::resolve_events(&mut issues, raw_events);
    let tables = tables::resolve_tables(&mut issues, raw_tables, top.contains_key("tables"));
    let sinks = sinks::resolve_sinks(
        &mut issues,
        raw_sinks,
        top.contains_key("sinks"),
        &tables,
        &ops,
    );

    let Some(pg) = postgres.config.filter(|_| issues.is_empty()) else {
        return Err(issues.into_error());
    };
    let mut warnings = warnings::connection_warnings(&pg.conn);
    warnings.extend(warnings::secret_warnings(
        issues.figment(),
        &pg.conn,
        postgres.url_has_password,
        postgres.password_file.as_deref(),
    ));
    warnings.extend(sinks::warnings(&sinks));
    Ok(Config {
        postgres: pg,
        events,
        tables,
        sinks,
        ops,
        warnings,
    })
}

#[cfg(test)]
mod tests;

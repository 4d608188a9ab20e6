//! `[ops]`: running pglive as a service (the ops listener, logging, graceful stop, lag warnings).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::issues::Issues;
use super::raw::{RawDuration, duration};
use super::{DEFAULT_LAG_WARNING_AGE, DEFAULT_LAG_WARNING_BYTES, DEFAULT_SHUTDOWN_TIMEOUT};

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

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOps {
    listen: Option<String>,
    shutdown_timeout: Option<RawDuration>,
    log_format: Option<String>,
    log_level: Option<String>,
    lag_warning_bytes: Option<u64>,
    lag_warning_age: Option<RawDuration>,
}

/// Resolves `[ops]`; a missing section gives the defaults.
pub(super) fn resolve_ops(issues: &mut Issues, raw: RawOps) -> OpsConfig {
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

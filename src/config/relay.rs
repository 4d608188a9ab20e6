//! `pglive relay`'s file: `[relay]` (the RabbitMQ stream the node reads), exactly one
//! `[[sinks]] type = "websocket"` (the server it runs, with the in-process relay's keys),
//! `[[tables]]` (the channels clients may subscribe to) and `[ops]`. A relay node never
//! connects to PostgreSQL, so `[postgres]` is refused rather than ignored.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::issues::Issues;
use super::raw::{RawDuration, at_least_one, duration, read_secret_file};
use super::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_BACKOFF};
use crate::sink::amqp::AmqpUrl;

/// The stream a relay node reads unless told otherwise (and the name the docs use).
pub const DEFAULT_STREAM: &str = "pglive.live";
/// Deliveries the broker may send ahead of the node's acknowledgements.
pub const DEFAULT_PREFETCH: usize = 1000;
/// `basic.qos` takes a 16-bit count.
pub const MAX_PREFETCH: usize = u16::MAX as usize;

/// `[relay]`: the RabbitMQ stream a node reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    pub url: AmqpUrl,
    /// PEM certificates to trust for `amqps://`, besides the system's.
    pub ca_file: Option<PathBuf>,
    pub stream: String,
    pub prefetch: u16,
    pub connect_timeout: Duration,
    pub max_backoff: Duration,
}

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelay {
    url: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    stream: Option<String>,
    prefetch: Option<u64>,
    connect_timeout: Option<RawDuration>,
    max_backoff: Option<RawDuration>,
}

/// Resolves `[relay]`; `present` says whether the file has the section at all.
pub(super) fn resolve_relay(
    issues: &mut Issues,
    raw: RawRelay,
    present: bool,
) -> Option<StreamConfig> {
    if !present {
        issues.push(
            "relay",
            "missing: a relay node reads a RabbitMQ stream; add [relay] with url and stream",
        );
        return None;
    }
    let password = raw.password_file.as_deref().and_then(|file| {
        read_secret_file(file)
            .map_err(|e| issues.push("relay.password_file", e))
            .ok()
    });
    let url = match raw.url.as_deref() {
        None => {
            issues.push("relay.url", "missing: the broker's amqp:// or amqps:// URL");
            None
        }
        Some(text) => AmqpUrl::parse(text, password.as_deref())
            .map_err(|e| issues.push("relay.url", e))
            .ok(),
    };
    let stream = raw.stream.unwrap_or_else(|| DEFAULT_STREAM.into());
    if stream.is_empty() || stream.len() > 255 {
        issues.push("relay.stream", "must be 1 to 255 bytes");
    }
    let prefetch = at_least_one(issues, "relay.prefetch", raw.prefetch, DEFAULT_PREFETCH);
    if prefetch > MAX_PREFETCH {
        issues.push("relay.prefetch", format!("must be at most {MAX_PREFETCH}"));
    }
    if let Some(ca) = raw.ca_file.as_ref().filter(|p| !p.is_file()) {
        issues.push(
            "relay.ca_file",
            format!("{} is not a readable file", ca.display()),
        );
    }
    let connect_timeout = duration(
        issues,
        "relay.connect_timeout",
        &raw.connect_timeout,
        DEFAULT_CONNECT_TIMEOUT,
    );
    let max_backoff = duration(
        issues,
        "relay.max_backoff",
        &raw.max_backoff,
        DEFAULT_MAX_BACKOFF,
    );
    Some(StreamConfig {
        url: url?,
        ca_file: raw.ca_file,
        stream,
        prefetch: u16::try_from(prefetch).unwrap_or(u16::MAX),
        connect_timeout,
        max_backoff,
    })
}

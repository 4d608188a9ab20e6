//! `type = "amqp"`: a RabbitMQ exchange, its routing keys, and how many messages may await
//! their confirms.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::SinkConfig;
use crate::config::issues::Issues;
use crate::config::raw::{RawDuration, at_least_one, duration, read_secret_file};
use crate::config::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_BACKOFF};
use crate::map::TableRule;
use crate::sink::amqp::StreamQueue;
use crate::sink::amqp::{self, AmqpSinkConfig, AmqpUrl, OnReject, RoutingKey};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawAmqp {
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
    stream: Option<String>,
    stream_max_age: Option<RawDuration>,
    stream_max_bytes: Option<u64>,
}

impl RawAmqp {
    /// The sink of `sinks[index]`, whose routing key must suit every mapped table; none when
    /// its URL or routing key is unusable (reported).
    pub(super) fn resolve(
        self,
        issues: &mut Issues,
        index: usize,
        tables: &[TableRule],
    ) -> Option<SinkConfig> {
        let key = |k: &str| format!("sinks[{index}].{k}");
        let password = self.password_file.as_deref().and_then(|file| {
            read_secret_file(file)
                .map_err(|e| issues.push(key("password_file"), e))
                .ok()
        });
        let url = AmqpUrl::parse(&self.url, password.as_deref())
            .map_err(|e| issues.push(key("url"), e))
            .ok();
        let exchange = self
            .exchange
            .unwrap_or_else(|| amqp::DEFAULT_EXCHANGE.into());
        if exchange.len() > 255 {
            issues.push(key("exchange"), "must be at most 255 bytes");
        }
        let routing_key = routing_key(issues, &key("routing_key"), self.routing_key, tables);
        let mut positive =
            |k: &str, v: Option<u64>, default: usize| at_least_one(issues, &key(k), v, default);
        let max_inflight = positive(
            "max_inflight",
            self.max_inflight,
            amqp::DEFAULT_MAX_INFLIGHT,
        );
        let max_inflight_bytes = positive(
            "max_inflight_bytes",
            self.max_inflight_bytes,
            amqp::DEFAULT_MAX_INFLIGHT_BYTES,
        );
        let connect_timeout = duration(
            issues,
            &key("connect_timeout"),
            &self.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        );
        let max_backoff = duration(
            issues,
            &key("max_backoff"),
            &self.max_backoff,
            DEFAULT_MAX_BACKOFF,
        );
        if let Some(ca) = self.ca_file.as_ref().filter(|p| !p.is_file()) {
            issues.push(
                key("ca_file"),
                format!("{} is not a readable file", ca.display()),
            );
        }
        let on_reject = on_reject(issues, &key("on_reject"), self.on_reject.as_deref());
        let stream = stream(
            issues,
            key,
            self.stream,
            self.stream_max_age.as_ref(),
            self.stream_max_bytes,
        );
        Some(SinkConfig::Amqp(Box::new(AmqpSinkConfig {
            url: url?,
            exchange,
            declare: self.declare.unwrap_or(true),
            routing_key: routing_key?,
            mandatory: self.mandatory.unwrap_or(true),
            on_reject,
            max_inflight,
            max_inflight_bytes,
            connect_timeout,
            max_backoff,
            ca_file: self.ca_file,
            stream,
        })))
    }
}

/// The routing-key template (at `key`), checked against every mapped table.
fn routing_key(
    issues: &mut Issues,
    key: &str,
    template: Option<String>,
    tables: &[TableRule],
) -> Option<RoutingKey> {
    match RoutingKey::parse(template.as_deref().unwrap_or(amqp::DEFAULT_TEMPLATE)) {
        Ok(rk) => {
            for rule in tables {
                for channel in rule.channel_samples() {
                    if let Err(e) = rk.check(&channel, &rule.schema, &rule.name) {
                        issues.push(key, e);
                    }
                }
            }
            Some(rk)
        }
        Err(e) => {
            issues.push(key, e);
            None
        }
    }
}

/// What to do with a message no queue takes (at `key`).
fn on_reject(issues: &mut Issues, key: &str, policy: Option<&str>) -> OnReject {
    match policy {
        None | Some("retry") => OnReject::Retry,
        Some("skip") => OnReject::Skip,
        Some(other) => {
            issues.push(
                key,
                format!("{other:?} is not a policy; use \"retry\" or \"skip\""),
            );
            OnReject::Retry
        }
    }
}

/// The stream queue to declare and bind (`stream`), with its retention; the retention keys
/// need `stream`.
fn stream(
    issues: &mut Issues,
    key: impl Fn(&str) -> String,
    name: Option<String>,
    max_age: Option<&RawDuration>,
    max_bytes: Option<u64>,
) -> Option<StreamQueue> {
    let Some(name) = name else {
        for (k, set) in [
            ("stream_max_age", max_age.is_some()),
            ("stream_max_bytes", max_bytes.is_some()),
        ] {
            if set {
                issues.push(key(k), "needs `stream`: the stream queue it applies to");
            }
        }
        return None;
    };
    if name.is_empty() || name.len() > 255 || name.starts_with("amq.") {
        issues.push(
            key("stream"),
            "must be 1 to 255 bytes, not starting with \"amq.\" (reserved by RabbitMQ)",
        );
    }
    let max_age = match max_age.map(RawDuration::resolve) {
        None => amqp::DEFAULT_STREAM_MAX_AGE,
        Some(Ok(d)) if d >= std::time::Duration::from_secs(1) => d,
        Some(Ok(_)) => {
            issues.push(key("stream_max_age"), "must be at least 1s");
            amqp::DEFAULT_STREAM_MAX_AGE
        }
        Some(Err(e)) => {
            issues.push(key("stream_max_age"), e);
            amqp::DEFAULT_STREAM_MAX_AGE
        }
    };
    let max_bytes = match max_bytes {
        None => amqp::DEFAULT_STREAM_MAX_BYTES,
        Some(n) if n >= amqp::MIN_STREAM_MAX_BYTES => n,
        Some(_) => {
            issues.push(
                key("stream_max_bytes"),
                format!("must be at least {} (1 MiB)", amqp::MIN_STREAM_MAX_BYTES),
            );
            amqp::DEFAULT_STREAM_MAX_BYTES
        }
    };
    Some(StreamQueue {
        name,
        max_age,
        max_bytes,
    })
}

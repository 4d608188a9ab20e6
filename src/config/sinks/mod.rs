//! `[[sinks]]`: where events go. Each sink type has a file of its own with its raw keys and
//! the resolver that checks them; this one dispatches on `type` and checks what concerns
//! several sinks at once (two sinks writing to the same place, a relay on the ops port).

mod amqp;
mod file;
mod mqtt;
mod nats;
mod redis;
mod webhook;
mod websocket;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::OpsConfig;
use super::issues::{Issue, Issues};
use crate::map::TableRule;
use crate::sink::amqp::AmqpSinkConfig;
use crate::sink::mqtt::MqttSinkConfig;
use crate::sink::nats::NatsSinkConfig;
use crate::sink::redis::RedisSinkConfig;
use crate::sink::webhook::WebhookSinkConfig;
use crate::sink::websocket::WsSinkConfig;

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
    /// Signed HTTP POSTs to a URL.
    Webhook(Box<WebhookSinkConfig>),
    /// QoS 1 messages to an MQTT broker, on the topic of each channel.
    Mqtt(Box<MqttSinkConfig>),
    /// Redis streams, or the Socket.IO emitter protocol.
    Redis(Box<RedisSinkConfig>),
    /// Messages to a NATS JetStream stream, acknowledged by its PubAcks.
    Nats(Box<NatsSinkConfig>),
}

impl SinkConfig {
    pub fn name(&self) -> &'static str {
        match self {
            SinkConfig::Stdout => "stdout",
            SinkConfig::File { .. } => "file",
            SinkConfig::Amqp(_) => crate::sink::amqp::NAME,
            SinkConfig::WebSocket(_) => crate::sink::websocket::NAME,
            SinkConfig::Webhook(_) => crate::sink::webhook::NAME,
            SinkConfig::Mqtt(_) => crate::sink::mqtt::NAME,
            SinkConfig::Redis(_) => crate::sink::redis::NAME,
            SinkConfig::Nats(_) => crate::sink::nats::NAME,
        }
    }
}

/// A `[[sinks]]` entry as written, by its `type`.
// Parsed once at start-up; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum RawSink {
    Stdout {},
    File(file::RawFile),
    Amqp(amqp::RawAmqp),
    Websocket(websocket::RawWebsocket),
    Webhook(webhook::RawWebhook),
    Mqtt(mqtt::RawMqtt),
    Redis(redis::RawRedis),
    Nats(nats::RawNats),
}

impl RawSink {
    /// The sink of `sinks[index]`; none when it cannot be built (reported).
    fn resolve(
        self,
        issues: &mut Issues,
        index: usize,
        tables: &[TableRule],
    ) -> Option<SinkConfig> {
        match self {
            RawSink::Stdout {} => Some(SinkConfig::Stdout),
            RawSink::File(raw) => Some(raw.resolve(issues, index)),
            RawSink::Amqp(raw) => raw.resolve(issues, index, tables),
            RawSink::Websocket(raw) => raw.resolve(issues, index, tables),
            RawSink::Webhook(raw) => raw.resolve(issues, index, tables),
            RawSink::Mqtt(raw) => raw.resolve(issues, index, tables),
            RawSink::Redis(raw) => raw.resolve(issues, index),
            RawSink::Nats(raw) => raw.resolve(issues, index, tables),
        }
    }
}

/// Resolves the `[[sinks]]` entries that parsed; `present` says whether the file has the
/// section at all (an empty one was reported already).
pub(super) fn resolve_sinks(
    issues: &mut Issues,
    sinks: Vec<(usize, RawSink)>,
    present: bool,
    tables: &[TableRule],
    ops: &OpsConfig,
) -> Vec<SinkConfig> {
    let mut resolved: Vec<SinkConfig> = Vec::new();
    if sinks.is_empty() && !present {
        issues.push(
            "sinks",
            "no sinks configured; add at least one [[sinks]] entry, e.g. type = \"stdout\"",
        );
    }
    for (i, raw) in sinks {
        let Some(sink) = raw.resolve(issues, i, tables) else {
            continue;
        };
        if let Some(what) = resolved.iter().find_map(|other| conflict(&sink, other)) {
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
        resolved.push(sink);
    }
    resolved
}

/// Why `sink` cannot go with `other`, configured before it: both write to the same place.
fn conflict(sink: &SinkConfig, other: &SinkConfig) -> Option<String> {
    match (sink, other) {
        (SinkConfig::Stdout, SinkConfig::Stdout) => {
            Some("only one stdout sink is allowed".to_owned())
        }
        (SinkConfig::File { path: a, .. }, SinkConfig::File { path: b, .. }) if a == b => Some(
            format!("another file sink already writes to {}", a.display()),
        ),
        (SinkConfig::WebSocket(a), SinkConfig::WebSocket(b)) if a.listen == b.listen => Some(
            format!("another websocket sink already listens on {}", a.listen),
        ),
        // One session per client id: the broker would disconnect each for the other in turn.
        (SinkConfig::Mqtt(a), SinkConfig::Mqtt(b))
            if (&a.url.host, a.url.port, &a.client_id)
                == (&b.url.host, b.url.port, &b.client_id) =>
        {
            Some(format!(
                "another mqtt sink already publishes to {} with the same client_id; set a different client_id",
                a.url
            ))
        }
        _ => None,
    }
}

/// What weakens sinks that are otherwise valid.
pub(super) fn warnings(sinks: &[SinkConfig]) -> Vec<Issue> {
    sinks
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            SinkConfig::WebSocket(ws) => websocket::warning(i, ws),
            _ => None,
        })
        .collect()
}

/// A relay node's `[[sinks]]`: exactly one entry, of type `websocket` (its server), resolved;
/// none when there is no usable one (reported).
pub(super) fn resolve_relay_server(
    issues: &mut Issues,
    sinks: Vec<(usize, RawSink)>,
    present: bool,
    tables: &[TableRule],
    ops: &OpsConfig,
) -> Option<WsSinkConfig> {
    if sinks.is_empty() && !present {
        issues.push(
            "sinks",
            "a relay node serves WebSocket clients: add one [[sinks]] entry with \
             type = \"websocket\" and its listen address",
        );
    }
    let mut server = Vec::new();
    for (i, raw) in sinks {
        match raw {
            RawSink::Websocket(_) if server.is_empty() => server.push((i, raw)),
            RawSink::Websocket(_) => issues.push(
                format!("sinks[{i}].type"),
                "a relay node serves one websocket sink; run another node for another port",
            ),
            _ => issues.push(
                format!("sinks[{i}].type"),
                "a relay node only serves WebSocket clients; other sinks belong in the \
                 configuration of `pglive run`",
            ),
        }
    }
    match resolve_sinks(issues, server, true, tables, ops).pop() {
        Some(SinkConfig::WebSocket(ws)) => Some(*ws),
        _ => None,
    }
}

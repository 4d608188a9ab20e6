//! `type = "redis"`: a Redis server, and either stream keys (`mode = "stream"`) or the
//! Socket.IO emitter protocol (`mode = "socketio"`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::SinkConfig;
use crate::config::DEFAULT_MAX_BACKOFF;
use crate::config::issues::Issues;
use crate::config::raw::{RawDuration, duration, read_secret_file};
use crate::sink::redis::{self, KeyTemplate, Mode, RedisSinkConfig, RedisUrl, SocketIo};

/// Event names Socket.IO reserves, which `emit` refuses.
const RESERVED_EVENTS: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawRedis {
    url: String,
    password_file: Option<PathBuf>,
    mode: Option<String>,
    key: Option<String>,
    max_len: Option<u64>,
    channel_prefix: Option<String>,
    namespace: Option<String>,
    room_prefix: Option<String>,
    event: Option<String>,
    require_subscribers: Option<bool>,
    timeout: Option<RawDuration>,
    max_backoff: Option<RawDuration>,
}

impl RawRedis {
    /// The sink of `sinks[index]`; none when its URL or mode is unusable (reported).
    pub(super) fn resolve(self, issues: &mut Issues, index: usize) -> Option<SinkConfig> {
        let key = |k: &str| format!("sinks[{index}].{k}");
        let password = self.password_file.as_deref().and_then(|file| {
            read_secret_file(file)
                .map_err(|e| issues.push(key("password_file"), e))
                .ok()
        });
        let url = RedisUrl::parse(&self.url, password.as_deref())
            .map_err(|e| issues.push(key("url"), e))
            .ok();
        let mode = match self.mode.as_deref() {
            Some("stream") => self.stream(issues, &key),
            Some("socketio") => self.socketio(issues, &key),
            other => {
                let what = other.map_or("required".to_owned(), |m| format!("{m:?} is not a mode"));
                issues.push(
                    key("mode"),
                    format!("{what}; use \"stream\" or \"socketio\""),
                );
                None
            }
        };
        let timeout = duration(
            issues,
            &key("timeout"),
            &self.timeout,
            redis::DEFAULT_TIMEOUT,
        );
        let max_backoff = duration(
            issues,
            &key("max_backoff"),
            &self.max_backoff,
            DEFAULT_MAX_BACKOFF,
        );
        Some(SinkConfig::Redis(Box::new(RedisSinkConfig {
            url: url?,
            mode: mode?,
            timeout,
            max_backoff,
        })))
    }

    /// Reports each key set here that only the other mode takes.
    fn other_mode(&self, issues: &mut Issues, key: &impl Fn(&str) -> String, mode: &str) {
        let stream = [
            ("key", self.key.is_some()),
            ("max_len", self.max_len.is_some()),
        ];
        let socketio = [
            ("channel_prefix", self.channel_prefix.is_some()),
            ("namespace", self.namespace.is_some()),
            ("room_prefix", self.room_prefix.is_some()),
            ("event", self.event.is_some()),
            ("require_subscribers", self.require_subscribers.is_some()),
        ];
        let (others, other) = match mode {
            "stream" => (&socketio[..], "socketio"),
            _ => (&stream[..], "stream"),
        };
        for (name, _) in others.iter().filter(|(_, set)| *set) {
            issues.push(
                key(name),
                format!("only for mode = \"{other}\" (this sink's mode is \"{mode}\")"),
            );
        }
    }

    fn stream(&self, issues: &mut Issues, key: &impl Fn(&str) -> String) -> Option<Mode> {
        self.other_mode(issues, key, "stream");
        let template = KeyTemplate::parse(self.key.as_deref().unwrap_or(redis::DEFAULT_KEY))
            .map_err(|e| issues.push(key("key"), e))
            .ok()?;
        let max_len = match self.max_len {
            None => Some(redis::DEFAULT_MAX_LEN),
            Some(0) => None,
            Some(n) => Some(n),
        };
        Some(Mode::Stream {
            key: template,
            max_len,
        })
    }

    fn socketio(&self, issues: &mut Issues, key: &impl Fn(&str) -> String) -> Option<Mode> {
        self.other_mode(issues, key, "socketio");
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| redis::DEFAULT_NAMESPACE.into());
        let mut ok = true;
        if !namespace.starts_with('/') {
            issues.push(
                key("namespace"),
                "must start with / (the main one is \"/\")",
            );
            ok = false;
        }
        let channel_prefix = self
            .channel_prefix
            .clone()
            .unwrap_or_else(|| redis::DEFAULT_CHANNEL_PREFIX.into());
        if channel_prefix.is_empty() {
            issues.push(
                key("channel_prefix"),
                "must not be empty (the adapter's key option; its default is \"socket.io\")",
            );
            ok = false;
        }
        match self.event.as_deref() {
            Some("") => {
                issues.push(key("event"), "must not be empty");
                ok = false;
            }
            Some(name) if RESERVED_EVENTS.contains(&name) => {
                issues.push(key("event"), format!("{name:?} is reserved by Socket.IO"));
                ok = false;
            }
            _ => {}
        }
        ok.then(|| {
            Mode::SocketIo(SocketIo {
                channel_prefix,
                namespace,
                room_prefix: self.room_prefix.clone().unwrap_or_default(),
                event: self.event.clone(),
                require_subscribers: self.require_subscribers.unwrap_or(true),
            })
        })
    }
}

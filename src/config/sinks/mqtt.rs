//! `type = "mqtt"`: an MQTT broker, the session's client id, and the topics (checked against
//! every mapped table).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::SinkConfig;
use crate::config::DEFAULT_MAX_BACKOFF;
use crate::config::issues::Issues;
use crate::config::raw::{RawDuration, duration, read_secret_file};
use crate::map::TableRule;
use crate::sink::mqtt::{self, MqttSinkConfig, MqttUrl, check_topic};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawMqtt {
    url: String,
    password_file: Option<PathBuf>,
    client_id: Option<String>,
    topic_prefix: Option<String>,
    keep_alive: Option<RawDuration>,
    max_inflight: Option<u64>,
    max_packet_size: Option<u64>,
    timeout: Option<RawDuration>,
    max_backoff: Option<RawDuration>,
    ca_file: Option<PathBuf>,
}

impl RawMqtt {
    /// The sink of `sinks[index]`, whose topics must suit every mapped table; none when its
    /// URL is unusable (reported).
    pub(super) fn resolve(
        self,
        issues: &mut Issues,
        index: usize,
        tables: &[TableRule],
    ) -> Option<SinkConfig> {
        let key = |k: &str| format!("sinks[{index}].{k}");
        let url = self.url(issues, &key);
        if let Some(Err(e)) = self.client_id.as_deref().map(check_client_id) {
            issues.push(key("client_id"), e);
        }
        let topic_prefix = self
            .topic_prefix
            .map(|p| p.trim_end_matches('/').to_owned());
        let keep_alive = duration(
            issues,
            &key("keep_alive"),
            &self.keep_alive,
            mqtt::DEFAULT_KEEP_ALIVE,
        );
        let keep_alive = whole_seconds(issues, &key("keep_alive"), keep_alive);
        let max_inflight = max_inflight(issues, &key("max_inflight"), self.max_inflight);
        let max_packet_size =
            max_packet_size(issues, &key("max_packet_size"), self.max_packet_size);
        let timeout = duration(
            issues,
            &key("timeout"),
            &self.timeout,
            mqtt::DEFAULT_TIMEOUT,
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
        let config = MqttSinkConfig {
            url: url?,
            client_id: self.client_id,
            topic_prefix,
            keep_alive,
            max_inflight,
            max_packet_size,
            timeout,
            max_backoff,
            ca_file: self.ca_file,
        };
        if let Some(Err(e)) = config.topic_prefix.as_deref().map(check_topic) {
            issues.push(key("topic_prefix"), e);
            return None;
        }
        check_topics(issues, &format!("sinks[{index}]"), &config, tables);
        Some(SinkConfig::Mqtt(Box::new(config)))
    }
}

impl RawMqtt {
    /// The broker URL, with the password from `password_file` when set.
    fn url(&self, issues: &mut Issues, key: &impl Fn(&str) -> String) -> Option<MqttUrl> {
        let password = self.password_file.as_deref().and_then(|file| {
            read_secret_file(file)
                .map_err(|e| issues.push(key("password_file"), e))
                .ok()
        });
        MqttUrl::parse(&self.url, password.as_deref())
            .map_err(|e| issues.push(key("url"), e))
            .ok()
    }
}

/// Checks the topic of every mapped table's channel.
fn check_topics(issues: &mut Issues, key: &str, config: &MqttSinkConfig, tables: &[TableRule]) {
    for rule in tables {
        for channel in rule.channel_samples() {
            if let Err(e) = check_topic(&config.topic(&channel)) {
                issues.push(
                    key,
                    format!(
                        "{e}: the topic of table {}.{} (channel {:?}); change the table's channel or topic_prefix",
                        rule.schema,
                        rule.name,
                        channel.replace('\0', "\\0")
                    ),
                );
            }
        }
    }
}

/// A client identifier MQTT can carry: a non-empty UTF-8 string without NUL, at most 65535
/// bytes. (Brokers must accept 1 to 23 letters and digits; most take far more.)
fn check_client_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty (a persistent session needs an identifier)".into());
    }
    if id.contains('\0') {
        return Err("must not contain NUL".into());
    }
    if id.len() > mqtt::MAX_TOPIC_BYTES {
        return Err("must be at most 65535 bytes".into());
    }
    Ok(())
}

/// The keep-alive interval: whole seconds (MQTT counts it in seconds), at least one.
fn whole_seconds(issues: &mut Issues, key: &str, d: Duration) -> Duration {
    if d < Duration::from_secs(1) {
        issues.push(key, "must be at least 1s (MQTT counts it in seconds)");
        return mqtt::DEFAULT_KEEP_ALIVE;
    }
    Duration::from_secs(d.as_secs())
}

/// Messages awaiting their PUBACKs at once: 1 to 65535 (packet ids are 16 bits).
fn max_inflight(issues: &mut Issues, key: &str, value: Option<u64>) -> u16 {
    match value {
        None => mqtt::DEFAULT_MAX_IN_FLIGHT,
        Some(n @ 1..=65_535) => n as u16,
        Some(_) => {
            issues.push(key, "must be 1 to 65535 (MQTT packet ids are 16 bits)");
            mqtt::DEFAULT_MAX_IN_FLIGHT
        }
    }
}

/// The largest packet the broker takes: up to MQTT's own limit.
fn max_packet_size(issues: &mut Issues, key: &str, value: Option<u64>) -> usize {
    let max = mqtt::MAX_PACKET_SIZE;
    match value {
        None => max,
        Some(n) if (128..=max as u64).contains(&n) => n as usize,
        Some(_) => {
            issues.push(
                key,
                format!("must be 128 to {max} bytes (MQTT's largest packet)"),
            );
            max
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Issue, SinkConfig, from_toml};

    /// A file with table `products` (channel `channel`) and an MQTT sink with `sink`'s keys.
    fn text(channel: &str, sink: &str) -> String {
        format!(
            "[postgres]\nurl = \"postgres://u@h/db\"\n\n[[tables]]\nname = \"products\"\nchannel = {channel:?}\n\n\
             [[sinks]]\ntype = \"mqtt\"\n{sink}\n"
        )
    }

    fn mqtt(config: Config) -> crate::sink::mqtt::MqttSinkConfig {
        match config.sinks.into_iter().next() {
            Some(SinkConfig::Mqtt(c)) => *c,
            other => panic!("expected an mqtt sink, got {other:?}"),
        }
    }

    fn issues(text: &str) -> Vec<Issue> {
        match from_toml(text) {
            Ok(c) => panic!("expected issues, got {c:?}"),
            Err(e) => e.issues,
        }
    }

    #[test]
    fn an_mqtt_sink_takes_the_documented_defaults_and_every_key() {
        let c = mqtt(from_toml(&text("resources/products", "url = \"mqtt://h\"")).unwrap());
        assert_eq!(c.client_id("s1"), "pglive-s1");
        assert_eq!(c.topic("resources/products"), "resources/products");
        assert_eq!(c.max_inflight, 100);
        assert_eq!(c.keep_alive, crate::sink::mqtt::DEFAULT_KEEP_ALIVE);
        assert_eq!(c.max_packet_size, crate::sink::mqtt::MAX_PACKET_SIZE);

        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "from-file\n").unwrap();
        let c = mqtt(
            from_toml(&text(
                "resources/products",
                &format!(
                    "url = \"mqtts://pub@h:8884\"\npassword_file = \"{}\"\nclient_id = \"cat\"\n\
                     topic_prefix = \"pglive/\"\nkeep_alive = \"10s\"\nmax_inflight = 7\n\
                     max_packet_size = 1024\ntimeout = \"3s\"\nmax_backoff = \"5s\"",
                    pw.display()
                ),
            ))
            .unwrap(),
        );
        assert_eq!(c.client_id("s1"), "cat");
        assert_eq!(c.topic("resources/products"), "pglive/resources/products");
        assert_eq!((c.max_inflight, c.max_packet_size), (7, 1024));
        assert_eq!(c.url.to_string(), "mqtts://pub:********@h:8884");
        assert!(!format!("{c:?}").contains("from-file"));
    }

    #[test]
    fn mqtt_problems_name_their_keys_and_tables() {
        let list = issues(&text(
            "resources/#",
            "url = \"mqtt://u:SECRET?x@h\"\nclient_id = \"\"\nkeep_alive = \"500ms\"\n\
             max_inflight = 70000\nmax_packet_size = 10",
        ));
        let keys: Vec<&str> = list.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "sinks[0].url",
                "sinks[0].client_id",
                "sinks[0].keep_alive",
                "sinks[0].max_inflight",
                "sinks[0].max_packet_size"
            ],
            "{list:#?}"
        );
        assert!(!list.iter().any(|i| i.message.contains("SECRET")));

        let list = issues(&text("resources/+", "url = \"mqtt://h\""));
        assert_eq!(list.len(), 1, "{list:#?}");
        assert_eq!(list[0].key, "sinks[0]");
        assert!(
            list[0].message.contains("public.products") && list[0].message.contains("'+'"),
            "{}",
            list[0]
        );
        let list = issues(&text(
            "resources/p",
            "url = \"mqtt://h\"\ntopic_prefix = \"a/#\"",
        ));
        assert_eq!(list[0].key, "sinks[0].topic_prefix", "{list:#?}");
    }

    #[test]
    fn two_mqtt_sinks_may_not_share_a_session() {
        let two = |second: &str| {
            format!(
                "{}\n[[sinks]]\ntype = \"mqtt\"\n{second}\n",
                text("resources/products", "url = \"mqtt://h\"")
            )
        };
        let list = issues(&two("url = \"mqtt://h:1883\""));
        assert_eq!(list[0].key, "sinks[1].type", "{list:#?}");
        assert!(list[0].message.contains("client_id"));
        assert!(from_toml(&two("url = \"mqtt://h\"\nclient_id = \"other\"")).is_ok());
    }
}

//! The `preset` of a webhook sink: which keys it takes, its URL, credentials and channel
//! names.

use std::path::PathBuf;

use super::{RawWebhook, parse_url};
use crate::config::issues::Issues;
use crate::config::raw::read_secret_file;
use crate::map::TableRule;
use crate::sink::webhook::{self, ChannelMap, Format, Key, Pusher, Secret};

/// The presets, and `webhook` for none (Standard Webhooks).
const PRESETS: [&str; 4] = ["webhook", "ably", "centrifugo", "pusher"];

impl RawWebhook {
    /// The URL and format of `preset`, every problem reported (keys it does not take, missing
    /// credentials, channel names the relay would refuse).
    pub(super) fn preset(
        &self,
        issues: &mut Issues,
        key: &impl Fn(&str) -> String,
        preset: &str,
        tables: &[TableRule],
    ) -> (Option<url::Url>, Option<Format>) {
        for k in self.irrelevant(preset) {
            issues.push(key(k), format!("not a key of {}", described(preset)));
        }
        let url = self.url(issues, key, preset);
        let format = self.format(issues, key, preset);
        if let Some(format) = &format {
            check_channels(issues, key, format, tables);
        }
        (url, format)
    }

    /// The keys set that `preset` does not take.
    fn irrelevant(&self, preset: &str) -> Vec<&'static str> {
        let set = [
            ("key", self.key.is_some()),
            ("key_file", self.key_file.is_some()),
            ("app_id", self.app_id.is_some()),
            ("cluster", self.cluster.is_some()),
            ("channel_prefix", self.channel_prefix.is_some()),
            ("channel_separator", self.channel_separator.is_some()),
            ("secret", self.secret.is_some()),
            ("secret_file", self.secret_file.is_some()),
            ("headers", self.headers.is_some()),
            ("header_files", self.header_files.is_some()),
        ];
        let takes: &[&str] = match preset {
            "ably" => &["key", "key_file"],
            "centrifugo" => &["key", "key_file", "channel_prefix", "channel_separator"],
            "pusher" => &[
                "key",
                "app_id",
                "cluster",
                "secret",
                "secret_file",
                "channel_prefix",
                "channel_separator",
            ],
            "webhook" => &["secret", "secret_file", "headers", "header_files"],
            _ => return vec![],
        };
        set.iter()
            .filter(|(k, on)| *on && !takes.contains(k))
            .map(|(k, _)| *k)
            .collect()
    }

    /// The URL: required for Standard Webhooks and Centrifugo; Ably's by default; Pusher's
    /// from `cluster` unless given.
    fn url(
        &self,
        issues: &mut Issues,
        key: &impl Fn(&str) -> String,
        preset: &str,
    ) -> Option<url::Url> {
        if !PRESETS.contains(&preset) {
            return None; // reported by `format`
        }
        let text = match (preset, &self.url, &self.cluster) {
            ("pusher", Some(_), Some(_)) => {
                issues.push(key("url"), "set url or cluster, not both");
                return None;
            }
            (_, Some(url), _) => url.clone(),
            ("ably", None, _) => webhook::ABLY_URL.to_owned(),
            ("pusher", None, Some(cluster)) if valid_cluster(cluster) => {
                format!("https://api-{cluster}.pusher.com")
            }
            ("pusher", None, Some(_)) => {
                issues.push(
                    key("cluster"),
                    "must be letters, digits and -, like \"eu\" or \"mt1\"",
                );
                return None;
            }
            ("pusher", None, None) => {
                issues.push(key("cluster"), "required (like \"eu\" or \"mt1\"), or url");
                return None;
            }
            _ => {
                issues.push(key("url"), "required");
                return None;
            }
        };
        parse_url(&text)
            .map_err(|e| issues.push(key("url"), e))
            .ok()
    }

    /// What the requests look like, by `preset`.
    fn format(
        &self,
        issues: &mut Issues,
        key: &impl Fn(&str) -> String,
        preset: &str,
    ) -> Option<Format> {
        let api_key = |issues: &mut Issues, what: &str| {
            one_of(
                issues,
                key,
                (&self.key, "key"),
                (&self.key_file, "key_file"),
                what,
            )
        };
        match preset {
            "webhook" => {
                let headers = self.headers(issues, key);
                let (text, at) = one_of(
                    issues,
                    key,
                    (&self.secret, "secret"),
                    (&self.secret_file, "secret_file"),
                    "the Standard Webhooks signing secret (whsec_…)",
                )?;
                let secret = Secret::parse(&text).map_err(|e| issues.push(at, e)).ok()?;
                Some(Format::Standard { secret, headers })
            }
            "ably" => {
                let (text, at) = api_key(issues, "the Ably API key (appId.keyId:secret)")?;
                if !text.contains(':') || !text.contains('.') {
                    issues.push(at, "not an Ably API key (appId.keyId:secret; not shown)");
                    return None;
                }
                Some(Format::Ably { key: Key(text) })
            }
            "centrifugo" => {
                let (text, _) = api_key(issues, "Centrifugo's HTTP API key")?;
                Some(Format::Centrifugo {
                    key: Key(text),
                    channels: self.channels(webhook::CENTRIFUGO_SEPARATOR),
                })
            }
            "pusher" => self.pusher(issues, key),
            other => {
                issues.push(
                    key("preset"),
                    format!(
                        "{other:?} is not a preset; use \"ably\", \"centrifugo\" or \"pusher\" (or none: Standard Webhooks)"
                    ),
                );
                None
            }
        }
    }

    /// `channel_prefix` and `channel_separator` (`default` when unset).
    fn channels(&self, default: &str) -> ChannelMap {
        ChannelMap {
            prefix: self.channel_prefix.clone().unwrap_or_default(),
            separator: self
                .channel_separator
                .clone()
                .unwrap_or_else(|| default.to_owned()),
        }
    }

    /// Pusher's app id, key and secret.
    fn pusher(&self, issues: &mut Issues, key: &impl Fn(&str) -> String) -> Option<Format> {
        let mut required =
            |k: &str, value: &Option<String>, ok: fn(char) -> bool, what: &str| match value {
                Some(v) if !v.is_empty() && v.chars().all(ok) => Some(v.clone()),
                Some(_) => {
                    issues.push(key(k), format!("must be {what}"));
                    None
                }
                None => {
                    issues.push(key(k), format!("required: {what}"));
                    None
                }
            };
        let app_id = required(
            "app_id",
            &self.app_id,
            |c| c.is_ascii_digit(),
            "the app's numeric id",
        );
        let app_key = required(
            "key",
            &self.key,
            |c| c.is_ascii_alphanumeric(),
            "the app key (letters and digits)",
        );
        let secret = one_of(
            issues,
            key,
            (&self.secret, "secret"),
            (&self.secret_file, "secret_file"),
            "the Pusher app secret",
        );
        Some(Format::Pusher(Pusher {
            app_id: app_id?,
            key: app_key?,
            secret: Key(secret?.0),
            channels: self.channels(webhook::PUSHER_SEPARATOR),
        }))
    }
}

/// What `preset` stands for, in messages.
fn described(preset: &str) -> String {
    match preset {
        "webhook" => "a Standard Webhooks sink (no preset)".into(),
        other => format!("preset {other:?}"),
    }
}

fn valid_cluster(cluster: &str) -> bool {
    !cluster.is_empty()
        && cluster
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Exactly one of an inline secret and a file holding it: its text and the key it came from.
fn one_of(
    issues: &mut Issues,
    key: &impl Fn(&str) -> String,
    (inline, inline_key): (&Option<String>, &str),
    (file, file_key): (&Option<PathBuf>, &str),
    what: &str,
) -> Option<(String, String)> {
    match (inline, file) {
        (Some(s), None) => Some((s.clone(), key(inline_key))),
        (None, Some(path)) => read_secret_file(path)
            .map(|s| (s, key(file_key)))
            .map_err(|e| issues.push(key(file_key), e))
            .ok(),
        (Some(_), Some(_)) => {
            issues.push(
                key(inline_key),
                format!("set {inline_key} or {file_key}, not both"),
            );
            None
        }
        (None, None) => {
            issues.push(key(inline_key), format!("required: {what}, or {file_key}"));
            None
        }
    }
}

/// Every mapped table's channel, as the preset names it, is one the relay accepts.
fn check_channels(
    issues: &mut Issues,
    key: &impl Fn(&str) -> String,
    format: &Format,
    tables: &[TableRule],
) {
    let at = match format {
        Format::Ably { .. } => "preset",
        _ => "channel_separator",
    };
    // A template's values keep letters, digits, `_` and `-`: a separator made of those would
    // let two channels map to one name (`tenants/7-admin/posts` and `tenants/7/admin/posts`).
    let separator = match format {
        Format::Centrifugo { channels, .. } => Some(&channels.separator),
        Format::Pusher(p) => Some(&p.channels.separator),
        _ => None,
    };
    if let Some(separator) = separator
        && tables.iter().any(|t| !t.template_columns().is_empty())
        && (separator.is_empty()
            || separator
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        issues.push(
            key("channel_separator"),
            format!(
                "{separator:?} with channel templates would let two tenants' channels map to \
                 one name (values keep letters, digits, `_` and `-`): use another, such as \
                 \".\""
            ),
        );
    }
    for t in tables {
        for channel in t.channel_samples() {
            if let Err(e) = format.check_channel(&channel) {
                let (schema, name) = (&t.schema, &t.name);
                issues.push(
                    key(at),
                    format!("table {schema}.{name} (channel {channel:?}): {e}"),
                );
            }
        }
    }
}

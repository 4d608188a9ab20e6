//! `type = "webhook"`: signed HTTP POSTs to a URL, or with `preset` a relay's publish API
//! (`ably`, `centrifugo`, `pusher`), each with the keys it needs and no others.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hyper::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use super::SinkConfig;
use crate::config::DEFAULT_MAX_BACKOFF;
use crate::config::issues::Issues;
use crate::config::raw::{RawDuration, at_least_one, duration, read_secret_file};
use crate::map::TableRule;
use crate::sink::webhook::{self, Header, OnRejected, WebhookSinkConfig};

mod presets;

/// Headers pglive sets itself, which `headers` may not replace.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawWebhook {
    /// `ably`, `centrifugo` or `pusher`; none: Standard Webhooks.
    preset: Option<String>,
    url: Option<String>,
    /// Ably's or Centrifugo's API key, Pusher's app key.
    key: Option<String>,
    key_file: Option<PathBuf>,
    app_id: Option<String>,
    cluster: Option<String>,
    channel_prefix: Option<String>,
    channel_separator: Option<String>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    headers: Option<BTreeMap<String, String>>,
    /// Header values kept in files (tokens).
    header_files: Option<BTreeMap<String, PathBuf>>,
    timeout: Option<RawDuration>,
    ca_file: Option<PathBuf>,
    batch_max_events: Option<u64>,
    batch_max_bytes: Option<u64>,
    on_rejected: Option<String>,
    max_backoff: Option<RawDuration>,
}

impl RawWebhook {
    /// The sink of `sinks[index]`, whose channel mapping must suit every mapped table; none
    /// when its URL or credentials are unusable (reported).
    pub(super) fn resolve(
        self,
        issues: &mut Issues,
        index: usize,
        tables: &[TableRule],
    ) -> Option<SinkConfig> {
        let key = |k: &str| format!("sinks[{index}].{k}");
        let preset = self.preset.as_deref().unwrap_or("webhook");
        let (url, format) = self.preset(issues, &key, preset, tables);
        let channels: Vec<String> = tables.iter().flat_map(|t| t.channel_samples()).collect();
        let timeout = duration(
            issues,
            &key("timeout"),
            &self.timeout,
            webhook::DEFAULT_TIMEOUT,
        );
        let max_backoff = duration(
            issues,
            &key("max_backoff"),
            &self.max_backoff,
            DEFAULT_MAX_BACKOFF,
        );
        let batch_max_events = at_least_one(
            issues,
            &key("batch_max_events"),
            self.batch_max_events,
            webhook::DEFAULT_BATCH_MAX_EVENTS,
        );
        if preset == "pusher" && batch_max_events > webhook::PUSHER_MAX_BATCH {
            issues.push(
                key("batch_max_events"),
                "Pusher takes at most 10 events per request",
            );
        }
        let batch_max_bytes = at_least_one(
            issues,
            &key("batch_max_bytes"),
            self.batch_max_bytes,
            webhook::DEFAULT_BATCH_MAX_BYTES,
        );
        if let Some(ca) = self.ca_file.as_ref().filter(|p| !p.is_file()) {
            issues.push(
                key("ca_file"),
                format!("{} is not a readable file", ca.display()),
            );
        }
        let on_rejected = on_rejected(issues, &key("on_rejected"), self.on_rejected.as_deref());
        Some(SinkConfig::Webhook(Box::new(WebhookSinkConfig {
            url: url?,
            format: format?,
            channels,
            timeout,
            ca_file: self.ca_file,
            batch_max_events,
            batch_max_bytes,
            on_rejected,
            max_backoff,
        })))
    }

    /// `headers` and `header_files`, checked; the values are never quoted.
    fn headers(&self, issues: &mut Issues, key: &impl Fn(&str) -> String) -> Vec<Header> {
        let mut out = Vec::new();
        let inline = self
            .headers
            .iter()
            .flatten()
            .map(|(n, v)| (n, Ok(v.clone()), "headers"));
        let files = self
            .header_files
            .iter()
            .flatten()
            .map(|(n, p)| (n, read_secret_file(p), "header_files"));
        for (name, value, section) in inline.chain(files) {
            let at = key(&format!("{section}.{name}"));
            let Ok(header) = HeaderName::try_from(name.as_str()) else {
                issues.push(at, "not a valid HTTP header name");
                continue;
            };
            if RESERVED_HEADERS.contains(&header.as_str()) {
                issues.push(at, "pglive sets this header itself");
                continue;
            }
            let value = match value {
                Ok(v) => v,
                Err(e) => {
                    issues.push(at, e);
                    continue;
                }
            };
            let Ok(value) = HeaderValue::try_from(value) else {
                issues.push(at, "the value is not a valid HTTP header value (not shown)");
                continue;
            };
            if out.iter().any(|h: &Header| h.name == header) {
                issues.push(at, "set twice (in headers and header_files)");
                continue;
            }
            out.push(Header {
                name: header,
                value,
            });
        }
        out
    }
}

/// What to do with a rejected request (at `key`).
fn on_rejected(issues: &mut Issues, key: &str, policy: Option<&str>) -> OnRejected {
    match policy {
        None | Some("fail") => OnRejected::Fail,
        Some("skip") => OnRejected::Skip,
        Some(other) => {
            issues.push(
                key,
                format!("{other:?} is not a policy; use \"fail\" or \"skip\""),
            );
            OnRejected::Fail
        }
    }
}

/// An `http://` or `https://` URL with a host and no user info. Errors never quote it.
fn parse_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a valid URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "scheme {:?} is not supported; use http:// or https://",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "the URL has user info (not shown); send credentials with headers or header_files"
                .into(),
        );
    }
    if url.fragment().is_some() {
        return Err("the URL has a #fragment, which HTTP requests do not send".into());
    }
    Ok(url)
}

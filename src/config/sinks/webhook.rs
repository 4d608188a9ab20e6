//! `type = "webhook"`: signed HTTP POSTs to a URL.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hyper::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use super::SinkConfig;
use crate::config::DEFAULT_MAX_BACKOFF;
use crate::config::issues::Issues;
use crate::config::raw::{RawDuration, at_least_one, duration, read_secret_file};
use crate::sink::webhook::{self, Header, OnRejected, Secret, WebhookSinkConfig};

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
    url: String,
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
    /// The sink of `sinks[index]`; none when its URL or secret is unusable (reported).
    pub(super) fn resolve(self, issues: &mut Issues, index: usize) -> Option<SinkConfig> {
        let key = |k: &str| format!("sinks[{index}].{k}");
        let url = parse_url(&self.url)
            .map_err(|e| issues.push(key("url"), e))
            .ok();
        let secret = self.secret(issues, &key);
        let headers = self.headers(issues, &key);
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
        let on_rejected = match self.on_rejected.as_deref() {
            None | Some("fail") => OnRejected::Fail,
            Some("skip") => OnRejected::Skip,
            Some(other) => {
                issues.push(
                    key("on_rejected"),
                    format!("{other:?} is not a policy; use \"fail\" or \"skip\""),
                );
                OnRejected::Fail
            }
        };
        Some(SinkConfig::Webhook(Box::new(WebhookSinkConfig {
            url: url?,
            secret: secret?,
            headers,
            timeout,
            ca_file: self.ca_file,
            batch_max_events,
            batch_max_bytes,
            on_rejected,
            max_backoff,
        })))
    }

    /// `secret` or `secret_file`: exactly one.
    fn secret(&self, issues: &mut Issues, key: &impl Fn(&str) -> String) -> Option<Secret> {
        let (text, at) = match (&self.secret, &self.secret_file) {
            (Some(s), None) => (s.clone(), key("secret")),
            (None, Some(file)) => match read_secret_file(file) {
                Ok(s) => (s, key("secret_file")),
                Err(e) => {
                    issues.push(key("secret_file"), e);
                    return None;
                }
            },
            (Some(_), Some(_)) => {
                issues.push(key("secret"), "set secret or secret_file, not both");
                return None;
            }
            (None, None) => {
                issues.push(
                    key("secret"),
                    "required: the Standard Webhooks signing secret (whsec_…), or secret_file",
                );
                return None;
            }
        };
        Secret::parse(&text).map_err(|e| issues.push(at, e)).ok()
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

//! What the webhook sink sends: the [`Format`] of its requests (Standard Webhooks, or a
//! relay's publish API), planned once per batch and authorized per attempt. The connection,
//! retries and resume-skip are the sink's, whatever the format.

use std::fmt;
use std::ops::Range;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};

use super::pusher::Pusher;
use super::{Failure, Header, Secret, ably, centrifugo};
use crate::event::LiveEvent;

/// A credential (an API key, an app secret); never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(pub String);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(********)")
    }
}

/// How a LiveEvent's channel (`resources/posts`) becomes a relay's channel name: `prefix`,
/// then the channel with every `/` replaced by `separator`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelMap {
    pub prefix: String,
    pub separator: String,
}

impl ChannelMap {
    pub fn map(&self, channel: &str) -> String {
        format!("{}{}", self.prefix, channel.replace('/', &self.separator))
    }
}

/// The requests' format: a preset for a relay's HTTP API, or Standard Webhooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// Signed per Standard Webhooks, to `url` as it is, with extra headers.
    Standard {
        secret: Secret,
        headers: Vec<Header>,
    },
    /// Ably's REST publish, `Authorization: Basic` with the API key.
    Ably { key: Key },
    /// Centrifugo's server API (`publish`, `batch`), `X-API-Key`.
    Centrifugo { key: Key, channels: ChannelMap },
    /// Pusher Channels' HTTP API (`events`, `batch_events`), signed query.
    Pusher(Pusher),
}

/// One request of a batch, planned once: sent again, it has the same path and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// The `meta.id` of its first event, for logs (and `webhook-id`).
    pub id: String,
    /// Path and query, before authorization.
    pub path: String,
    pub body: Bytes,
    /// How many events it carries.
    pub events: usize,
    /// Why the relay would refuse it (too large): rejected without being sent.
    pub refused: Option<String>,
}

/// What a request needs on top of its plan, per attempt.
pub type Authorized = (String, Vec<(HeaderName, HeaderValue)>);

impl Format {
    /// The preset's name, in messages (`webhook` for Standard Webhooks).
    pub fn preset(&self) -> &'static str {
        match self {
            Format::Standard { .. } => "webhook",
            Format::Ably { .. } => "ably",
            Format::Centrifugo { .. } => "centrifugo",
            Format::Pusher(_) => "pusher",
        }
    }

    /// Whether the relay accepts the name that LiveEvent channel `channel` maps to.
    pub fn check_channel(&self, channel: &str) -> Result<(), String> {
        match self {
            Format::Standard { .. } => Ok(()),
            Format::Ably { .. } => ably::check_channel(channel),
            Format::Centrifugo { channels, .. } => {
                centrifugo::check_channel(&channels.map(channel))
            }
            Format::Pusher(p) => super::pusher::check_channel(&p.channels.map(channel)),
        }
    }

    /// The requests of `events`, in order: runs of at most `max_events` events and about
    /// `max_bytes` of JSON. `url` is the receiver (Standard) or the API's base URL.
    pub fn plan(
        &self,
        url: &url::Url,
        events: &[LiveEvent],
        max_events: usize,
        max_bytes: usize,
    ) -> Vec<Planned> {
        let base = url.path().trim_end_matches('/');
        match self {
            Format::Standard { .. } => {
                let target = &url[url::Position::BeforePath..];
                runs(events, max_events, max_bytes, |_, _| true)
                    .map(|r| standard(target, &events[r], max_events))
                    .collect()
            }
            Format::Ably { .. } => runs(events, max_events, max_bytes, same_channel)
                .map(|r| ably::plan(base, &events[r]))
                .collect(),
            Format::Centrifugo { channels, .. } => runs(events, max_events, max_bytes, |_, _| true)
                .map(|r| centrifugo::plan(base, channels, &events[r]))
                .collect(),
            Format::Pusher(p) => runs(
                events,
                max_events.min(super::pusher::MAX_BATCH),
                max_bytes,
                |_, _| true,
            )
            .map(|r| p.plan(base, &events[r]))
            .collect(),
        }
    }

    /// The request target and headers of one attempt at `planned`, at Unix time `now`.
    pub fn authorize(&self, planned: &Planned, now: u64) -> Authorized {
        match self {
            Format::Standard { secret, headers } => {
                let mut out = vec![
                    header("webhook-id", &planned.id),
                    header("webhook-timestamp", &now.to_string()),
                    header(
                        "webhook-signature",
                        &secret.sign(&planned.id, now, &planned.body),
                    ),
                ];
                out.extend(headers.iter().map(|h| (h.name.clone(), h.value.clone())));
                (planned.path.clone(), out)
            }
            Format::Ably { key } => (planned.path.clone(), vec![basic(key)]),
            Format::Centrifugo { key, .. } => (planned.path.clone(), vec![api_key(key)]),
            Format::Pusher(p) => (p.sign("POST", &planned.path, &planned.body, now), vec![]),
        }
    }

    /// Whether the answer acknowledges `planned`. Every format: 2xx delivered; 408, 429 and
    /// 5xx retried; anything else rejected. Centrifugo also reports errors in a 200's body.
    pub(super) fn judge(
        &self,
        status: hyper::StatusCode,
        retry_after: Option<std::time::Duration>,
        body: &[u8],
        planned: &Planned,
    ) -> Result<(), Failure> {
        let verdict = super::judge(status, retry_after, body);
        match (self, verdict) {
            (Format::Centrifugo { .. }, Ok(())) => centrifugo::judge(body, planned.events),
            (Format::Standard { .. }, v) => v,
            (_, Err(Failure::Rejected(why))) if matches!(status.as_u16(), 401 | 403) => Err(
                Failure::Rejected(format!("{} refused the credentials: {why}", self.preset())),
            ),
            (_, v) => v,
        }
    }

    /// A request that proves the credentials without publishing (`pglive check`): method,
    /// target and headers; none for Standard Webhooks, whose receivers take only events.
    pub fn probe(&self, url: &url::Url, first_channel: Option<&str>, now: u64) -> Option<Probe> {
        let base = url.path().trim_end_matches('/');
        match self {
            Format::Standard { .. } => None,
            Format::Ably { key } => Some(Probe {
                method: hyper::Method::GET,
                target: ably::probe_path(base, first_channel.unwrap_or("pglive")),
                headers: vec![basic(key)],
                body: Bytes::new(),
            }),
            Format::Centrifugo { key, .. } => Some(Probe {
                method: hyper::Method::POST,
                target: format!("{base}/api/info"),
                headers: vec![api_key(key)],
                body: Bytes::from_static(b"{}"),
            }),
            Format::Pusher(p) => Some(Probe {
                method: hyper::Method::GET,
                target: p.sign(
                    "GET",
                    &format!("{base}/apps/{}/channels", p.app_id),
                    b"",
                    now,
                ),
                headers: vec![],
                body: Bytes::new(),
            }),
        }
    }

    /// Whether a probe's answer shows the credentials accepted; what it verified, or why not.
    pub fn probe_verdict(&self, status: hyper::StatusCode, body: &[u8]) -> Result<String, String> {
        let quoted = super::quote(body);
        let what = format!("answered {status}: {quoted:?}");
        if status.is_success() {
            return Ok(format!("{} accepted the credentials", self.preset()));
        }
        if let Format::Ably { .. } = self
            && ably::capability_denied(body)
        {
            // The key is genuine but may not read channel metadata (publish-only keys).
            return Ok("ably accepted the key (it may not read channel metadata)".into());
        }
        match status.as_u16() {
            401 | 403 => Err(format!("{} refused the credentials: {what}", self.preset())),
            _ => Err(what),
        }
    }
}

/// A `pglive check` request.
pub struct Probe {
    pub method: hyper::Method,
    pub target: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

fn header(name: &'static str, value: &str) -> (HeaderName, HeaderValue) {
    let value = HeaderValue::try_from(value).unwrap_or(HeaderValue::from_static(""));
    (HeaderName::from_static(name), value)
}

/// Centrifugo's `X-API-Key`.
fn api_key(key: &Key) -> (HeaderName, HeaderValue) {
    let (name, mut value) = header("x-api-key", &key.0);
    value.set_sensitive(true);
    (name, value)
}

/// Ably's `Authorization: Basic`.
fn basic(key: &Key) -> (HeaderName, HeaderValue) {
    let mut value = HeaderValue::try_from(format!("Basic {}", BASE64.encode(&key.0)))
        .unwrap_or(HeaderValue::from_static(""));
    value.set_sensitive(true);
    (hyper::header::AUTHORIZATION, value)
}

fn same_channel(a: &LiveEvent, b: &LiveEvent) -> bool {
    a.channel == b.channel
}

/// Consecutive runs of `events`: at most `max_events` each and about `max_bytes` of event
/// JSON (a single larger event goes alone), and only events that `together` with the run's
/// first.
fn runs<'a>(
    events: &'a [LiveEvent],
    max_events: usize,
    max_bytes: usize,
    together: impl Fn(&LiveEvent, &LiveEvent) -> bool + 'a,
) -> impl Iterator<Item = Range<usize>> + 'a {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= events.len() {
            return None;
        }
        let mut end = start + 1;
        let mut bytes = events[start].json.len() + 2;
        while end < events.len()
            && end - start < max_events
            && bytes + events[end].json.len() < max_bytes
            && together(&events[start], &events[end])
        {
            bytes += events[end].json.len() + 1;
            end += 1;
        }
        let run = start..end;
        start = end;
        Some(run)
    })
}

/// A Standard Webhooks request: the LiveEvent itself, or a JSON array of them.
fn standard(target: &str, run: &[LiveEvent], max_events: usize) -> Planned {
    let body = if max_events == 1 {
        Bytes::copy_from_slice(&run[0].json)
    } else {
        json_array(run.iter().map(|e| e.json.to_vec()))
    };
    Planned {
        id: run[0].id.to_string(),
        path: target.to_owned(),
        body,
        events: run.len(),
        refused: None,
    }
}

/// `[a,b,…]` of JSON values.
pub(super) fn json_array(items: impl Iterator<Item = Vec<u8>>) -> Bytes {
    let mut body = vec![b'['];
    for (i, item) in items.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&item);
    }
    body.push(b']');
    Bytes::from(body)
}

/// A JSON string literal.
pub(super) fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

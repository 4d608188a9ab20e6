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
use crate::event::{EventId, LiveEvent};

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
    /// Its id, for logs (and `webhook-id`): see [`request_id`].
    pub id: String,
    /// Path and query, before authorization.
    pub path: String,
    pub body: Bytes,
    /// How many events it carries.
    pub events: usize,
    /// Why the relay would refuse it (too large): rejected without being sent.
    pub refused: Option<String>,
    /// Its events sent without their ids (see [`refetch_form`]): over the relay's limit.
    pub refetch: Vec<EventId>,
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
    /// `max_bytes` of JSON. `url` is the receiver (Standard) or the API's base URL. An event
    /// over the relay's size limit goes in its [`refetch_form`].
    pub fn plan(
        &self,
        url: &url::Url,
        events: &[LiveEvent],
        max_events: usize,
        max_bytes: usize,
    ) -> Vec<Planned> {
        let trimmed: Vec<usize> = (0..events.len())
            .filter(|&i| self.too_large(&events[i]))
            .collect();
        let replaced: Option<Vec<LiveEvent>> = (!trimmed.is_empty()).then(|| {
            let copy = |(i, e)| match trimmed.binary_search(&i).is_ok() {
                true => refetch_form(e),
                false => with_json(e, e.json.clone()),
            };
            events.iter().enumerate().map(copy).collect()
        });
        let events = replaced.as_deref().unwrap_or(events);
        let mut plans = self.plan_runs(url, events, max_events, max_bytes);
        let mut start = 0;
        for p in &mut plans {
            let run = start..start + p.events;
            p.refetch = trimmed
                .iter()
                .filter(|i| run.contains(i))
                .map(|&i| events[i].id)
                .collect();
            start = run.end;
        }
        plans
    }

    /// Whether `event` is over what the relay accepts (Ably: a request body of 64 KiB;
    /// Pusher: `data` of 10 KB).
    fn too_large(&self, event: &LiveEvent) -> bool {
        match self {
            Format::Ably { .. } => ably::too_large(event),
            Format::Pusher(_) => event.json.len() > super::pusher::MAX_DATA_BYTES,
            Format::Standard { .. } | Format::Centrifugo { .. } => false,
        }
    }

    fn plan_runs(
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
            Format::Ably { .. } => {
                let mut plans = Vec::new();
                let max_bytes = max_bytes.min(ably::MAX_BODY);
                for r in runs(events, max_events, max_bytes, same_channel) {
                    ably::plan_within_limit(base, &events[r], &mut plans);
                }
                plans
            }
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
    /// 5xx retried; 401 and 403 fatal; anything else rejected. Centrifugo also reports errors
    /// in a 200's body; `body` is `None` when it is longer than the sink reads.
    pub(super) fn judge(
        &self,
        status: hyper::StatusCode,
        retry_after: Option<std::time::Duration>,
        body: Option<&[u8]>,
        planned: &Planned,
    ) -> Result<(), Failure> {
        let verdict = super::judge(status, retry_after, body.unwrap_or_default());
        match (self, verdict, body) {
            (Format::Centrifugo { .. }, Ok(()), Some(body)) => {
                centrifugo::judge(body, planned.events)
            }
            (Format::Centrifugo { .. }, Ok(()), None) => Err(Failure::Retry(
                format!("the answer to a {status} is longer than Centrifugo's replies"),
                None,
            )),
            (Format::Standard { .. }, v, _) => v,
            (_, Err(Failure::Fatal(why)), _) if matches!(status.as_u16(), 401 | 403) => Err(
                Failure::Fatal(format!("{} refused the credentials: {why}", self.preset())),
            ),
            (_, v, _) => v,
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
        id: request_id(run),
        path: target.to_owned(),
        body,
        events: run.len(),
        refused: None,
        refetch: Vec::new(),
    }
}

/// The id of a request carrying `run`: its one event's `meta.id`, or for several
/// `<first meta.id>..<last meta.id>` with `:` as `.`. It names the content, so a batch cut
/// differently after a restart (`[A,B,C]` after an accepted `[A,B]`) gets another id: a
/// receiver that drops repeated ids then sees a duplicate, never a loss.
pub fn request_id(run: &[LiveEvent]) -> String {
    match run {
        [one] => one.id.to_string(),
        [first, .., last] => format!("{}..{}", first.id, last.id).replace(':', "."),
        [] => String::new(),
    }
}

/// `event` without its ids: the same LiveEvent with `"payload":{}`, which means "refetch
/// everything" (as a TRUNCATE's), and the same `meta.id`. For an event over a relay's size
/// limit (a bulk UPDATE's thousand ids), which subscribers then refetch instead.
pub fn refetch_form(event: &LiveEvent) -> LiveEvent {
    with_json(event, without_payload(&event.json))
}

fn with_json(event: &LiveEvent, json: Box<[u8]>) -> LiveEvent {
    LiveEvent {
        channel: event.channel.clone(),
        kind: event.kind,
        id: event.id,
        xid: event.xid,
        commit_time: event.commit_time,
        schema: event.schema.clone(),
        table: event.table.clone(),
        json,
    }
}

/// The event's JSON with its `payload` object replaced by `{}`. The key's first occurrence
/// is the key itself: `channel` and `type` come before it, and a quote inside a string is
/// escaped.
fn without_payload(json: &[u8]) -> Box<[u8]> {
    let key = b",\"payload\":";
    let Some(at) = json.windows(key.len()).position(|w| w == key) else {
        return json.into();
    };
    let start = at + key.len();
    let mut values =
        serde_json::Deserializer::from_slice(&json[start..]).into_iter::<serde::de::IgnoredAny>();
    if !matches!(values.next(), Some(Ok(_))) {
        return json.into();
    }
    let end = start + values.byte_offset();
    [&json[..start], b"{}", &json[end..]].concat().into()
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

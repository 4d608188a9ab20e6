//! `preset = "pusher"`: Pusher Channels' HTTP API, `POST /apps/{app_id}/events` for one
//! event and `POST /apps/{app_id}/batch_events` (at most 10) for several.
//!
//! An event is `{"name":<type>,"channels":[<mapped>],"data":"<the LiveEvent as a JSON
//! string>"}` (`"channel":<mapped>` in a batch); pusher-js parses the string back. Pusher
//! has no idempotency key: a repeat reaches subscribers, with the same `meta.id`. Every request is signed: the query holds
//! `auth_key`, `auth_timestamp`, `auth_version=1.0`, `body_md5` (when there is a body, as
//! Pusher's Node.js library does) and `auth_signature`, the hex HMAC-SHA256 of
//! `METHOD\nPATH\nQUERY` (sorted, unescaped) with the app secret. Pusher refuses `data` over
//! 10 KB: such an event goes without its ids (refetch); only one still over it is rejected
//! without being sent.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use md5::Digest as _;
use sha2::Sha256;

use super::format::{ChannelMap, Key, Planned, json_string, request_id};
use crate::event::LiveEvent;

/// `/` becomes `-`: `resources/posts` → `resources-posts` (`/` is not allowed).
pub const DEFAULT_SEPARATOR: &str = "-";
/// Events per `batch_events` request, as Pusher allows.
pub const MAX_BATCH: usize = 10;
/// The largest `data` Pusher accepts.
pub const MAX_DATA_BYTES: usize = 10 * 1024;
/// The longest channel name Pusher accepts.
pub const MAX_CHANNEL: usize = 164;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pusher {
    pub app_id: String,
    /// The app key (public: browsers use it too).
    pub key: String,
    pub secret: Key,
    pub channels: ChannelMap,
}

impl Pusher {
    /// The `events` or `batch_events` request of `run`, under the URL's path `base`.
    pub(super) fn plan(&self, base: &str, run: &[LiveEvent]) -> Planned {
        let event = |e: &LiveEvent, one: bool| {
            let data = String::from_utf8_lossy(&e.json);
            let channel = json_string(&self.channels.map(&e.channel));
            let to = match one {
                true => format!("\"channels\":[{channel}]"),
                false => format!("\"channel\":{channel}"),
            };
            let name = json_string(e.kind.as_str());
            format!("{{\"name\":{name},{to},\"data\":{}}}", json_string(&data))
        };
        let (path, body) = match run {
            [one] => ("events", event(one, true)),
            _ => {
                let all: Vec<String> = run.iter().map(|e| event(e, false)).collect();
                ("batch_events", format!("{{\"batch\":[{}]}}", all.join(",")))
            }
        };
        let refused = run.iter().find(|e| e.json.len() > MAX_DATA_BYTES).map(|e| {
            format!(
                "event {} is {} bytes; Pusher refuses data over {MAX_DATA_BYTES} bytes",
                e.id,
                e.json.len()
            )
        });
        Planned {
            id: request_id(run),
            path: format!("{base}/apps/{}/{path}", self.app_id),
            body: Bytes::from(body),
            events: run.len(),
            refused,
            refetch: Vec::new(),
        }
    }

    /// `path?query` signed for `method` with `body` at Unix time `now`; without `body_md5`
    /// when the body is empty (a GET).
    pub fn sign(&self, method: &str, path: &str, body: &[u8], now: u64) -> String {
        let mut query = format!(
            "auth_key={}&auth_timestamp={now}&auth_version=1.0",
            self.key
        );
        if !body.is_empty() {
            query.push_str(&format!(
                "&body_md5={}",
                hex::encode(md5::Md5::digest(body))
            ));
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.0.as_bytes())
            .expect("HMAC takes any key length");
        mac.update(format!("{method}\n{path}\n{query}").as_bytes());
        let signature = hex::encode(mac.finalize().into_bytes());
        format!("{path}?{query}&auth_signature={signature}")
    }
}

/// Whether `name` is a Pusher channel name: 1 to 164 of `[A-Za-z0-9_\-=@,.;]`.
pub fn check_channel(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_-=@,.;".contains(c);
    if name.is_empty() || name.len() > MAX_CHANNEL || !name.chars().all(allowed) {
        return Err(format!(
            "{name:?} is not a Pusher channel name: 1 to {MAX_CHANNEL} of A-Z a-z 0-9 _ - = @ , . ;"
        ));
    }
    Ok(())
}

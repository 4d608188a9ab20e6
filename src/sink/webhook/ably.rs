//! `preset = "ably"`: Ably's REST publish, `POST /channels/{channel}/messages`.
//!
//! A request carries consecutive events of one channel as an array of messages
//! `{"id","name":<type>,"data":<the LiveEvent>}`; `@refinedev/ably` hands `message.data` to
//! Refine as the LiveEvent. Ably publishes an array atomically and requires its ids to be
//! `<base>:<index>`; the base is the first event's `meta.id` with `:` turned into `.`
//! (`0/16B3748.0:0`, `0/16B3748.0:1`, …), the form the Ably SDKs use for every publish. A
//! request sent again is the same array with the same ids, which Ably delivers once.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::format::{Planned, json_array, json_string};
use crate::event::LiveEvent;

/// The REST endpoint when `url` is not set.
pub const DEFAULT_URL: &str = "https://main.realtime.ably.net";

/// What `encodeURIComponent` leaves alone: letters, digits and `-_.!~*'()`.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// A channel name as a path segment, as ably-js encodes it.
pub fn encode(channel: &str) -> String {
    utf8_percent_encode(channel, COMPONENT).to_string()
}

/// The id base of a request whose first event has `meta.id` `id`.
pub fn id_base(id: &str) -> String {
    id.replace(':', ".")
}

/// The publish of `run` (events of one channel), under the URL's path `base`.
pub(super) fn plan(base: &str, run: &[LiveEvent]) -> Planned {
    let first = run[0].id.to_string();
    let id_base = id_base(&first);
    let messages = run.iter().enumerate().map(|(i, e)| {
        let mut m = format!(
            "{{\"id\":{},\"name\":{},\"data\":",
            json_string(&format!("{id_base}:{i}")),
            json_string(e.kind.as_str())
        )
        .into_bytes();
        m.extend_from_slice(&e.json);
        m.push(b'}');
        m
    });
    Planned {
        id: first,
        path: format!("{base}/channels/{}/messages", encode(&run[0].channel)),
        body: json_array(messages),
        events: run.len(),
        refused: None,
    }
}

/// `pglive check`'s request: the channel's status, which needs a genuine key.
pub(super) fn probe_path(base: &str, channel: &str) -> String {
    format!("{base}/channels/{}", encode(channel))
}

/// Whether an error answer says the key is genuine but lacks a capability (40160).
pub(super) fn capability_denied(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_u64())
        == Some(40160)
}

/// Whether `name` is a channel Ably accepts: not empty, no newline, not starting with `[`
/// or `:`.
pub fn check_channel(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('\n') || name.starts_with(['[', ':']) {
        return Err(format!(
            "{name:?} is not an Ably channel name (empty, a newline, or a leading [ or :)"
        ));
    }
    Ok(())
}

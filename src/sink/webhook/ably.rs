//! `preset = "ably"`: Ably's REST publish, `POST /channels/{channel}/messages`.
//!
//! A request carries consecutive events of one channel as an array of messages
//! `{"id","name":<type>,"data":<the LiveEvent>}`; `@refinedev/ably` hands `message.data` to
//! Refine as the LiveEvent. Ably publishes an array atomically and requires its ids to be
//! `<base>:<index>`, the form the Ably SDKs use for every publish. The base is the request's
//! id with `:` turned into `.`: the event's `meta.id` for one (`0/16B3748.0:0`), else
//! `<first>..<last>` (`0/16B3748.0..0/16B3748.2:0`, `…:1`, `…:2`), so a request sent again is
//! the same array with the same ids, which Ably delivers once, and a run cut differently
//! after a restart has other ids (a repeat, never a loss).
//!
//! A request body stays within [`MAX_BODY`] (Ably's message size limit): a run over it is
//! split, and an event over it alone goes without its ids (refetch).

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::format::{Planned, json_array, json_string, request_id};
use crate::event::LiveEvent;

/// The REST endpoint when `url` is not set.
pub const DEFAULT_URL: &str = "https://main.realtime.ably.net";
/// The largest request body sent: Ably's message size limit (Free and Standard accounts).
pub const MAX_BODY: usize = 64 * 1024;

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

/// The id base of a request with id `id` (see [`request_id`]).
pub fn id_base(id: &str) -> String {
    id.replace(':', ".")
}

/// Whether a publish of `event` alone is over [`MAX_BODY`] (its wrapping, the id and name,
/// is well under 200 bytes: only a larger event is planned to measure).
pub(super) fn too_large(event: &LiveEvent) -> bool {
    event.json.len() + 200 > MAX_BODY && plan("", std::slice::from_ref(event)).body.len() > MAX_BODY
}

/// The publishes of `run` (events of one channel) into `out`: one, or halves of it while
/// over [`MAX_BODY`]. An event over it alone (even without its ids) is refused.
pub(super) fn plan_within_limit(base: &str, run: &[LiveEvent], out: &mut Vec<Planned>) {
    let mut planned = plan(base, run);
    if planned.body.len() <= MAX_BODY {
        out.push(planned);
    } else if let [one] = run {
        planned.refused = Some(format!(
            "event {} is a {} byte publish; Ably refuses messages over {MAX_BODY} bytes",
            one.id,
            planned.body.len()
        ));
        out.push(planned);
    } else {
        let (first, second) = run.split_at(run.len() / 2);
        plan_within_limit(base, first, out);
        plan_within_limit(base, second, out);
    }
}

/// The publish of `run` (events of one channel), under the URL's path `base`.
fn plan(base: &str, run: &[LiveEvent]) -> Planned {
    let id = request_id(run);
    let id_base = id_base(&id);
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
        id,
        path: format!("{base}/channels/{}/messages", encode(&run[0].channel)),
        body: json_array(messages),
        events: run.len(),
        refused: None,
        refetch: Vec::new(),
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

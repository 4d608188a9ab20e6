//! `preset = "centrifugo"`: Centrifugo's server API, `POST /api/publish` for one event and
//! `POST /api/batch` for several, with `X-API-Key`.
//!
//! Each publish is `{"channel":<mapped>,"data":<the LiveEvent>,"idempotency_key":<meta.id>}`,
//! so an event sent again within Centrifugo's idempotency window (5 minutes) is not
//! delivered twice. Centrifugo reports errors in a 200's body (`{"error":{"code","message"}}`,
//! one per reply of a batch): codes 100 (internal) and 111 (too many requests) are
//! temporary: any of them retries the whole request (the idempotency keys drop what went
//! through). Only when every error is another code is the request rejected.

use bytes::Bytes;

use super::Failure;
use super::format::{ChannelMap, Planned, json_string, request_id};
use crate::event::LiveEvent;

/// `/` becomes `:`: `resources/posts` → `resources:posts`, in the `resources` namespace.
pub const DEFAULT_SEPARATOR: &str = ":";
/// Error codes Centrifugo marks temporary.
const TEMPORARY: [u64; 2] = [100, 111];

/// The publish (one event) or batch of `run`, under the URL's path `base`.
pub(super) fn plan(base: &str, channels: &ChannelMap, run: &[LiveEvent]) -> Planned {
    let publish = |e: &LiveEvent| {
        let mut p = format!(
            "{{\"channel\":{},\"data\":",
            json_string(&channels.map(&e.channel))
        )
        .into_bytes();
        p.extend_from_slice(&e.json);
        p.extend_from_slice(
            format!(",\"idempotency_key\":{}}}", json_string(&e.id.to_string())).as_bytes(),
        );
        p
    };
    let (path, body) = if run.len() == 1 {
        ("publish", publish(&run[0]))
    } else {
        let mut body = b"{\"commands\":[".to_vec();
        for (i, e) in run.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(b"{\"publish\":");
            body.extend_from_slice(&publish(e));
            body.push(b'}');
        }
        body.extend_from_slice(b"]}");
        ("batch", body)
    };
    Planned {
        id: request_id(run),
        path: format!("{base}/api/{path}"),
        body: Bytes::from(body),
        events: run.len(),
        refused: None,
        refetch: Vec::new(),
    }
}

/// The errors in a 200's body: the reply's, or each of a batch's `events` replies.
pub(super) fn judge(body: &[u8], events: usize) -> Result<(), Failure> {
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Err(Failure::Rejected(format!(
            "the answer is not Centrifugo's JSON: {:?}",
            super::quote(body)
        )));
    };
    let replies = match (events, answer.get("replies")) {
        (1, _) => vec![&answer],
        (_, Some(serde_json::Value::Array(replies))) if replies.len() == events => {
            replies.iter().collect()
        }
        _ => {
            return Err(Failure::Rejected(format!(
                "expected {events} replies in the batch answer: {:?}",
                super::quote(body)
            )));
        }
    };
    let (mut temporary, mut permanent) = (None, None);
    for (i, reply) in replies.iter().enumerate() {
        let Some(error) = reply.get("error") else {
            continue;
        };
        let code = error["code"].as_u64().unwrap_or(0);
        let what = format!(
            "Centrifugo error {code} ({}) on publish {i}",
            error["message"]
        );
        match TEMPORARY.contains(&code) {
            true => temporary.get_or_insert(what),
            false => permanent.get_or_insert(what),
        };
    }
    match (temporary, permanent) {
        (Some(what), _) => Err(Failure::Retry(what, None)),
        (None, Some(what)) => Err(Failure::Rejected(what)),
        (None, None) => Ok(()),
    }
}

/// Whether `name` is a channel Centrifugo accepts without special meaning: ASCII, at most
/// 255 bytes, none of `# $ * & /`, and a namespace (before `:`) of at least two of
/// `[-a-zA-Z0-9_]`, which must be configured in Centrifugo.
pub fn check_channel(name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{name:?} is not a Centrifugo channel: {why}"));
    if name.is_empty() || name.len() > 255 || !name.is_ascii() {
        return bad("it must be 1 to 255 ASCII characters");
    }
    if let Some(c) = name.chars().find(|c| "#$*&/".contains(*c)) {
        return bad(&format!("{c:?} has a special meaning"));
    }
    if let Some((namespace, _)) = name.split_once(':')
        && (namespace.len() < 2
            || !namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        return bad("the namespace (before ':') must be at least 2 of [-a-zA-Z0-9_]");
    }
    Ok(())
}

//! `type = "redis"`: defaults, every key, and problems named by key.

use super::*;

use crate::sink::redis::{self, KeyTemplate, Mode, RedisSinkConfig};

fn redis_sink(keys: &str) -> String {
    minimal(&format!("\n[[sinks]]\ntype = \"redis\"\n{keys}\n"))
}

fn resolved(keys: &str) -> RedisSinkConfig {
    match ok(&redis_sink(keys)).sinks.pop() {
        Some(SinkConfig::Redis(c)) => *c,
        other => panic!("expected a redis sink, got {other:?}"),
    }
}

#[test]
fn a_redis_sink_takes_the_documented_defaults() {
    let c = resolved("url = \"redis://127.0.0.1\"\nmode = \"stream\"");
    assert_eq!(c.timeout, redis::DEFAULT_TIMEOUT);
    assert_eq!(c.max_backoff, crate::config::DEFAULT_MAX_BACKOFF);
    assert_eq!(
        c.mode,
        Mode::Stream {
            key: KeyTemplate::parse("pglive:{channel}").unwrap(),
            max_len: Some(100_000)
        }
    );
    let c = resolved("url = \"redis://127.0.0.1\"\nmode = \"socketio\"");
    let Mode::SocketIo(sio) = c.mode else {
        panic!("socketio mode")
    };
    assert_eq!(
        (sio.channel_prefix.as_str(), sio.namespace.as_str()),
        ("socket.io", "/")
    );
    assert_eq!((sio.room_prefix.as_str(), sio.event), ("", None));
    assert!(sio.require_subscribers);
}

#[test]
fn every_redis_key_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "from-file\n").unwrap();
    let c = resolved(&format!(
        "url = \"redis://app@cache:6380/3\"\npassword_file = \"{}\"\nmode = \"stream\"\n\
         key = \"pglive:events\"\nmax_len = 0\ntimeout = \"2s\"\nmax_backoff = \"5s\"",
        pw.display()
    ));
    assert_eq!(c.url.to_string(), "redis://app:********@cache:6380/3");
    assert!(!format!("{c:?}").contains("from-file"));
    assert_eq!(
        c.mode,
        Mode::Stream {
            key: KeyTemplate::parse("pglive:events").unwrap(),
            max_len: None
        }
    );
    assert_eq!(
        (c.timeout, c.max_backoff),
        (Duration::from_secs(2), Duration::from_secs(5))
    );
    let c = resolved(
        "url = \"rediss://cache\"\nmode = \"socketio\"\nchannel_prefix = \"app\"\n\
         namespace = \"/live\"\nroom_prefix = \"pg:\"\nevent = \"live\"\nrequire_subscribers = false",
    );
    let Mode::SocketIo(sio) = c.mode else {
        panic!("socketio mode")
    };
    assert_eq!(
        (
            sio.channel_prefix,
            sio.namespace,
            sio.room_prefix,
            sio.event
        ),
        (
            "app".into(),
            "/live".into(),
            "pg:".into(),
            Some("live".into())
        )
    );
    assert!(!sio.require_subscribers);
}

#[test]
fn redis_problems_name_their_keys_all_at_once() {
    let list = issues(&redis_sink(
        "url = \"redis://u:SECRET@h/x\"\nmode = \"stream\"\nkey = \"a{b}\"\nevent = \"live\"\n\
         require_subscribers = true\ntimeout = \"soon\"",
    ));
    assert_eq!(
        keys(&list),
        [
            "sinks[1].url",
            "sinks[1].event",
            "sinks[1].require_subscribers",
            "sinks[1].key",
            "sinks[1].timeout"
        ],
        "{list:#?}"
    );
    assert!(
        list.iter().all(|i| !i.message.contains("SECRET")),
        "{list:#?}"
    );
    assert!(
        list[1].message.contains("only for mode = \"socketio\""),
        "{list:#?}"
    );

    let list = issues(&redis_sink(
        "url = \"redis://h\"\nmode = \"socketio\"\nkey = \"k\"\nmax_len = 5\nnamespace = \"live\"\n\
         event = \"connect\"\nchannel_prefix = \"\"",
    ));
    assert_eq!(
        keys(&list),
        [
            "sinks[1].key",
            "sinks[1].max_len",
            "sinks[1].namespace",
            "sinks[1].channel_prefix",
            "sinks[1].event"
        ],
        "{list:#?}"
    );
    let issue = only_issue(&redis_sink("url = \"redis://h\""), "sinks[1].mode");
    assert!(
        issue.message.contains("\"stream\" or \"socketio\""),
        "{issue}"
    );
    only_issue(
        &redis_sink("url = \"redis://h\"\nmode = \"pubsub\""),
        "sinks[1].mode",
    );
}

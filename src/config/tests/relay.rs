//! `pglive relay`'s file (`[relay]`, one websocket sink, `[[tables]]`, `[ops]`) and the amqp
//! sink's stream keys: defaults, every key, and problems named by key.

use super::*;

use crate::config::{DEFAULT_PREFETCH, DEFAULT_STREAM, StreamConfig};
use crate::sink::amqp::{AmqpUrl, StreamQueue};

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A relay node's file with `relay` as the body of `[relay]` and `rest` appended.
fn node(relay: &str, rest: &str) -> String {
    format!(
        r#"
[relay]
{relay}

[[sinks]]
type = "websocket"
listen = "127.0.0.1:8080"
anonymous = true
allowed_origins = ["https://app.example"]

[[tables]]
name = "posts"
{rest}"#
    )
}

fn node_ok(text: &str) -> RelayConfig {
    match relay_from_toml(text) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid relay config, got:\n{e}\n--- for:\n{text}"),
    }
}

/// The single issue of a relay node's `text`, which must concern `key`.
fn node_issue(text: &str, key: &str) -> Issue {
    match relay_from_toml(text) {
        Ok(c) => panic!("expected issues, got a valid config: {c:?}\n--- for:\n{text}"),
        Err(e) => {
            assert_eq!(keys(&e.issues), [key], "{:#?}", e.issues);
            e.issues.into_iter().next().unwrap()
        }
    }
}

fn stream_of(text: &str) -> StreamConfig {
    node_ok(text).stream
}

#[test]
fn a_relay_node_takes_the_documented_defaults() {
    let c = node_ok(&node(&format!("url = \"{BROKER}\""), ""));
    assert_eq!(c.stream.url, AmqpUrl::parse(BROKER, None).unwrap());
    assert_eq!(
        c.stream.url.to_string(),
        "amqp://guest:********@127.0.0.1:5672/%2f"
    );
    assert_eq!(c.stream.stream, "pglive.live");
    assert_eq!(DEFAULT_STREAM, "pglive.live");
    assert_eq!(c.stream.prefetch, 1000);
    assert_eq!(usize::from(c.stream.prefetch), DEFAULT_PREFETCH);
    assert_eq!(c.stream.ca_file, None);
    assert_eq!(c.stream.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(c.stream.max_backoff, DEFAULT_MAX_BACKOFF);
    // The node's server: the in-process relay's keys and defaults.
    let ws = &c.websocket;
    assert_eq!(ws.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(ws.auth, websocket::Auth::Anonymous);
    assert_eq!(ws.history, websocket::DEFAULT_HISTORY);
    assert_eq!(ws.history_age, websocket::DEFAULT_HISTORY_AGE);
    assert_eq!(ws.channels, ["resources/posts"]);
    assert_eq!(c.tables.len(), 1);
    assert_eq!(c.ops.listen, None);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn every_relay_key_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "from-file\n").unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "pem").unwrap();
    let c = node_ok(&node(
        &format!(
            r#"url = "amqps://app@mq.example/prod?heartbeat=20"
password_file = "{}"
ca_file = "{}"
stream = "events.live"
prefetch = 65535
connect_timeout = "3s"
max_backoff = "5m""#,
            pw.display(),
            ca.display()
        ),
        "\n[ops]\nlisten = \"127.0.0.1:9187\"\nshutdown_timeout = \"5s\"\n",
    ));
    let s = &c.stream;
    // The password comes from the file and is shown masked.
    assert_eq!(
        s.url,
        AmqpUrl::parse(
            "amqps://app@mq.example/prod?heartbeat=20",
            Some("from-file")
        )
        .unwrap()
    );
    assert_eq!(
        s.url.to_string(),
        "amqps://app:********@mq.example/prod?heartbeat=20"
    );
    assert!(!format!("{c:?}").contains("from-file"));
    assert_eq!(s.ca_file.as_deref(), Some(ca.as_path()));
    assert_eq!(s.stream, "events.live");
    assert_eq!(s.prefetch, 65535);
    assert_eq!(s.connect_timeout, Duration::from_secs(3));
    assert_eq!(s.max_backoff, Duration::from_secs(300));
    assert_eq!(c.ops.listen.unwrap().to_string(), "127.0.0.1:9187");
    assert_eq!(c.ops.shutdown_timeout, Duration::from_secs(5));
    // The websocket sink's own keys, such as how far back its history reaches.
    let c = node_ok(&node(&format!("url = \"{BROKER}\""), "").replace(
        "anonymous = true",
        "anonymous = true\nhistory_age = \"7m\"\nhistory = 50",
    ));
    assert_eq!(c.websocket.history_age, Duration::from_secs(420));
    assert_eq!(c.websocket.history, 50);
}

#[test]
fn postgres_has_no_place_in_a_relay_file() {
    let text = node(
        &format!("url = \"{BROKER}\""),
        "\n[postgres]\nurl = \"postgres://u@db/app\"\n",
    );
    let issue = node_issue(&text, "postgres");
    assert!(issue.message.contains("never PostgreSQL"), "{issue}");
    assert!(issue.message.contains("pglive run"), "{issue}");
}

#[test]
fn a_relay_node_serves_exactly_one_websocket_sink() {
    let base = node(&format!("url = \"{BROKER}\""), "");
    let issue = node_issue(
        &format!("{base}\n[[sinks]]\ntype = \"stdout\"\n"),
        "sinks[1].type",
    );
    assert!(
        issue.message.contains("only serves WebSocket clients"),
        "{issue}"
    );
    let second =
        "\n[[sinks]]\ntype = \"websocket\"\nlisten = \"127.0.0.1:8081\"\nanonymous = true\n";
    let issue = node_issue(&format!("{base}{second}"), "sinks[1].type");
    assert!(issue.message.contains("one websocket sink"), "{issue}");
    let alone = format!("\n[relay]\nurl = \"{BROKER}\"\n\n[[tables]]\nname = \"posts\"\n");
    let issue = node_issue(&alone, "sinks");
    assert!(issue.message.contains("type = \"websocket\""), "{issue}");
}

#[test]
fn relay_and_its_url_are_required() {
    let text = node("", "");
    let without = text.replace("[relay]\n", "");
    let issue = node_issue(&without, "relay");
    assert!(issue.message.contains("add [relay]"), "{issue}");
    let issue = node_issue(&text, "relay.url");
    assert!(issue.message.contains("missing"), "{issue}");
    let issue = node_issue(&node("url = \"http://mq.example/\"", ""), "relay.url");
    assert!(issue.message.contains("amqp://"), "{issue}");
}

#[test]
fn prefetch_is_from_1_to_65535() {
    let with = |n: u64| node(&format!("url = \"{BROKER}\"\nprefetch = {n}"), "");
    let issue = node_issue(&with(0), "relay.prefetch");
    assert!(issue.message.contains("at least 1"), "{issue}");
    let issue = node_issue(&with(65536), "relay.prefetch");
    assert!(issue.message.contains("at most 65535"), "{issue}");
    assert_eq!(stream_of(&with(1)).prefetch, 1);
}

#[test]
fn other_relay_problems_are_named_by_key() {
    let issue = node_issue(
        &node(&format!("url = \"{BROKER}\"\nstream = \"\""), ""),
        "relay.stream",
    );
    assert!(issue.message.contains("1 to 255 bytes"), "{issue}");
    let issue = node_issue(
        &node(&format!("url = \"{BROKER}\"\nmax_backoff = \"2h\""), ""),
        "relay.max_backoff",
    );
    assert!(issue.message.contains("at most 1h"), "{issue}");
    let issue = node_issue(
        &node(&format!("url = \"{BROKER}\"\nstreem = \"x\""), ""),
        "relay.streem",
    );
    assert!(!issue.message.is_empty());
}

#[test]
fn relay_belongs_to_a_relay_node_not_to_pglive_run() {
    let issue = only_issue(
        &minimal(&format!("\n[relay]\nurl = \"{BROKER}\"\n")),
        "relay",
    );
    assert!(issue.message.contains("pglive relay"), "{issue}");
}

// ---- the amqp sink's stream ----

#[test]
fn a_stream_takes_the_documented_retention() {
    assert_eq!(amqp_config(&format!("url = \"{BROKER}\"")).stream, None);
    let c = amqp_config(&format!("url = \"{BROKER}\"\nstream = \"pglive.live\""));
    assert_eq!(
        c.stream,
        Some(StreamQueue {
            name: "pglive.live".into(),
            max_age: Duration::from_secs(3600),
            max_bytes: 1 << 30,
        })
    );
    let c = amqp_config(&format!(
        "url = \"{BROKER}\"\nstream = \"s\"\nstream_max_age = \"2d\"\nstream_max_bytes = 1048576"
    ));
    assert_eq!(
        c.stream,
        Some(StreamQueue {
            name: "s".into(),
            max_age: Duration::from_secs(2 * 86_400),
            max_bytes: 1 << 20,
        })
    );
}

#[test]
fn stream_problems_are_named_by_key() {
    let found = issues(&amqp(&format!(
        "url = \"{BROKER}\"\nstream_max_age = \"1h\"\nstream_max_bytes = 2000000"
    )));
    assert_eq!(
        keys(&found),
        ["sinks[1].stream_max_age", "sinks[1].stream_max_bytes"]
    );
    assert!(
        found.iter().all(|i| i.message.contains("needs `stream`")),
        "{found:?}"
    );
    let issue = only_issue(
        &amqp(&format!("url = \"{BROKER}\"\nstream = \"amq.live\"")),
        "sinks[1].stream",
    );
    assert!(issue.message.contains("amq."), "{issue}");
    let issue = only_issue(
        &amqp(&format!(
            "url = \"{BROKER}\"\nstream = \"s\"\nstream_max_bytes = 1048575"
        )),
        "sinks[1].stream_max_bytes",
    );
    assert!(issue.message.contains("1 MiB"), "{issue}");
    let issue = only_issue(
        &amqp(&format!(
            "url = \"{BROKER}\"\nstream = \"s\"\nstream_max_age = \"500ms\""
        )),
        "sinks[1].stream_max_age",
    );
    assert!(issue.message.contains("at least 1s"), "{issue}");
    let issue = only_issue(
        &amqp(&format!(
            "url = \"{BROKER}\"\nstream = \"s\"\nstream_max_age = \"soon\""
        )),
        "sinks[1].stream_max_age",
    );
    assert!(issue.message.contains("soon"), "{issue}");
}

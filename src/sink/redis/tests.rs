//! The emitter's bytes against the reference emitter's, key templates, URLs, and the shared
//! sink contract in both modes against a redis-server of the test's own.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use futures_util::StreamExt;

use super::*;
use crate::sink::contract;

/// `emitter.to("resources/posts").emit("created", event)` with `@socket.io/redis-emitter`
/// 5.1.0 (notepack.io 3): its PUBLISH channel and message.
const EMITTED_EVENT: (&str, &str, &str) = (
    r#"{"channel":"resources/posts","type":"created","payload":{"ids":[1,-5,300,-200,70000,5000000000,-40000]},"date":"2026-11-29T10:00:00.123456Z","meta":{"id":"0/16B3748:0","lsn":"0/16B3748","xid":1234,"schema":"public","table":"posts"}}"#,
    "socket.io#/#resources/posts#",
    "93a7656d697474657283a47479706502a46461746192a76372656174656485a76368616e6e656caf7265736f75726365732f706f737473a474797065a763726561746564a77061796c6f616481a36964739701fbcd012cd1ff38ce00011170cf000000012a05f200d2ffff63c0a464617465bb323032362d31312d32395431303a30303a30302e3132333435365aa46d65746185a26964ab302f313642333734383a30a36c736ea9302f31364233373438a3786964cd04d2a6736368656d61a67075626c6963a57461626c65a5706f737473a36e7370a12f83a5726f6f6d7391af7265736f75726365732f706f737473a5666c61677380a665786365707490",
);

/// `new Emitter(redis, {key: "app"}).to("r").emit("deleted", {})`.
const EMITTED_EMPTY: (&str, &str) = (
    "app#/#r#",
    "93a7656d697474657283a47479706502a46461746192a764656c6574656480a36e7370a12f83a5726f6f6d7391a172a5666c61677380a665786365707490",
);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn channel_of(prefix: &str, namespace: &str, room_prefix: &str, channel: &str) -> String {
    let mut out = String::new();
    emitter::channel(&mut out, prefix, namespace, room_prefix, channel);
    out
}

#[test]
fn the_emitter_message_is_the_reference_emitters_byte_for_byte() {
    let (json, channel, expected) = EMITTED_EVENT;
    assert_eq!(channel_of("socket.io", "/", "", "resources/posts"), channel);
    let mut out = Vec::new();
    emitter::message(
        &mut out,
        "created",
        json.as_bytes(),
        "/",
        ["", "resources/posts"],
    )
    .unwrap();
    assert_eq!(hex(&out), expected);

    let (channel, expected) = EMITTED_EMPTY;
    assert_eq!(channel_of("app", "/", "", "r"), channel);
    emitter::message(&mut out, "deleted", b"{}", "/", ["", "r"]).unwrap();
    assert_eq!(hex(&out), expected);
}

#[test]
fn json_becomes_messagepack_as_notepack_writes_it() {
    // `emitter.of("/live").to("tenants/7/resources/posts").emit("live", value)`: long strings,
    // multibyte text, 16+ element arrays and maps, floats, null and booleans.
    let value = format!(
        r#"{{"s":"{}","l":"{}","a":[{}],"f":1.5,"n":null,"t":true,"u":false,"neg":-1,"m":{{{}}}}}"#,
        "x".repeat(40),
        "é".repeat(200),
        (0..20).map(|i| i.to_string()).collect::<Vec<_>>().join(","),
        (0..17)
            .map(|i| format!("\"k{i}\":{i}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut out = Vec::new();
    let room = ["tenants/7/", "resources/posts"];
    emitter::message(&mut out, "live", value.as_bytes(), "/live", room).unwrap();
    let expected = concat!(
        "93a7656d697474657283a47479706502a46461746192a46c69766589a173d92878787878787878787878787878787878",
        "787878787878787878787878787878787878787878787878a16cda0190c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3",
        "a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3",
        "a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3",
        "a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3",
        "a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3",
        "a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3",
        "a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3",
        "a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3",
        "a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9a161dc",
        "0014000102030405060708090a0b0c0d0e0f10111213a166cb3ff8000000000000a16ec0a174c3a175c2a36e6567ffa1",
        "6dde0011a26b3000a26b3101a26b3202a26b3303a26b3404a26b3505a26b3606a26b3707a26b3808a26b3909a36b3130",
        "0aa36b31310ba36b31320ca36b31330da36b31340ea36b31350fa36b313610a36e7370a52f6c69766583a5726f6f6d73",
        "91b974656e616e74732f372f7265736f75726365732f706f737473a5666c61677380a665786365707490",
    );
    assert_eq!(hex(&out), expected);
    assert_eq!(
        channel_of("socket.io", "/live", "tenants/7/", "resources/posts"),
        "socket.io#/live#tenants/7/resources/posts#"
    );

    // Integral numbers are integers, as in JavaScript; others float 64.
    for (json, packed) in [
        ("1.0", "01"),
        ("-0.0", "00"),
        ("-33", "d0df"),
        ("1e3", "cd03e8"),
        ("-9007199254740993", "d3ffdfffffffffffff"),
        ("18446744073709551615", "cfffffffffffffffff"),
        ("0.1", "cb3fb999999999999a"),
        ("\"\\u00e9\\n\"", "a3c3a90a"),
    ] {
        out.clear();
        emitter::from_json(json.as_bytes(), &mut out).unwrap();
        assert_eq!(hex(&out), packed, "{json}");
    }
    assert!(emitter::from_json(b"{\"a\":", &mut out).is_err());
    assert!(emitter::from_json(b"1 2", &mut out).is_err());
}

#[test]
fn key_templates_put_the_channel_schema_and_table_in_place() {
    let event = contract::event(1);
    let mut key = String::new();
    let t = KeyTemplate::parse(DEFAULT_KEY).unwrap();
    t.render(&mut key, &event);
    assert_eq!(key, "pglive:resources/t");
    assert_eq!(t.fixed(), None);
    let t = KeyTemplate::parse("{schema}.{table}|{channel}!").unwrap();
    t.render(&mut key, &event);
    assert_eq!(key, "public.t|resources/t!");
    let t = KeyTemplate::parse("pglive:events").unwrap();
    assert_eq!(t.fixed(), Some("pglive:events"));
    for (bad, why) in [
        ("", "empty"),
        ("a{chanel}", "unknown placeholder {chanel}"),
        ("a{type}", "unknown placeholder {type}"),
        ("a{channel", "unmatched `{`"),
        ("a}b", "unmatched `}`"),
    ] {
        let e = KeyTemplate::parse(bad).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn urls_never_show_the_password() {
    let url = RedisUrl::parse("redis://app:s3cret@cache.example:6380/2", None).unwrap();
    assert_eq!(url.to_string(), "redis://app:********@cache.example:6380/2");
    assert!(!format!("{url:?}").contains("s3cret"));
    let url = RedisUrl::parse("rediss://cache.example", Some("p@ss/w#rd")).unwrap();
    assert_eq!(url.to_string(), "rediss://:********@cache.example");
    assert!(url.full.contains("p%40ss%2Fw%23rd"), "percent-encoded");
    for (bad, why) in [
        ("http://h", "scheme \"http\""),
        ("redis://u:SECRET#x@h", "not a valid"),
        ("redis://h/#SECRET", "#fragment"),
        ("redis://h?SECRET=1", "?query"),
        ("redis://h/db", "database number"),
        ("redis://u:SE/CRET@h", "not a valid"),
        ("redis://", "no host"),
    ] {
        let e = RedisUrl::parse(bad, None).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
        assert!(!e.contains("SE"), "{bad}: {e}");
    }
}

/// A redis-server of the test's own on a free port, without persistence; killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    pub(crate) fn start(extra: &[&str]) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the Redis tests need redis-server (scripts/prereqs.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server does not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child,
            port,
            _dir: dir,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(url: &str, mode: Mode) -> RedisSinkConfig {
    RedisSinkConfig {
        url: RedisUrl::parse(url, None).unwrap(),
        mode,
        timeout: Duration::from_secs(5),
        max_backoff: Duration::from_millis(50),
    }
}

fn stream_mode(key: &str) -> Mode {
    Mode::Stream {
        key: KeyTemplate::parse(key).unwrap(),
        max_len: Some(DEFAULT_MAX_LEN),
    }
}

fn socketio_mode() -> Mode {
    Mode::SocketIo(SocketIo {
        channel_prefix: DEFAULT_CHANNEL_PREFIX.into(),
        namespace: "/".into(),
        room_prefix: String::new(),
        event: None,
        require_subscribers: true,
    })
}

async fn client(server: &Server) -> MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// An XRANGE entry: its ID and its fields.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

#[tokio::test]
async fn stream_mode_meets_the_sink_contract() {
    let server = Server::start(&[]);
    let sink = RedisSink::new(config(&server.url(), stream_mode(DEFAULT_KEY)));
    contract::check(sink, async |_| {
        let mut conn = client(&server).await;
        let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
            .arg("pglive:resources/t")
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        entries
            .into_iter()
            .map(|(_, fields)| {
                let names: Vec<&str> = fields.iter().map(|(f, _)| f.as_str()).collect();
                assert_eq!(names, ["event", "id"]);
                let event = fields[0].1.clone();
                let id: serde_json::Value = serde_json::from_slice(&event).unwrap();
                assert_eq!(
                    id["meta"]["id"].as_str().unwrap().as_bytes(),
                    &fields[1].1[..]
                );
                event
            })
            .collect()
    })
    .await;
}

/// Decodes an emitter message: its namespace, rooms, event name and payload (as JSON text, in
/// the message's key order).
pub(crate) fn decode(message: &[u8]) -> (String, Vec<String>, String, Vec<u8>) {
    use rmpv::Value as V;
    let value = rmpv::decode::read_value(&mut &message[..]).unwrap();
    let field = |m: &V, k: &str| -> V {
        let map = m.as_map().unwrap();
        map.iter()
            .find(|(key, _)| key.as_str() == Some(k))
            .unwrap()
            .1
            .clone()
    };
    let parts = value.as_array().unwrap();
    assert_eq!(parts[0].as_str(), Some("emitter"));
    assert_eq!(field(&parts[1], "type").as_u64(), Some(2));
    let data = field(&parts[1], "data");
    let data = data.as_array().unwrap();
    let rooms = field(&parts[2], "rooms");
    let rooms = rooms.as_array().unwrap().iter();
    let mut json = String::new();
    to_json(&data[1], &mut json);
    (
        field(&parts[1], "nsp").as_str().unwrap().to_owned(),
        rooms.map(|r| r.as_str().unwrap().to_owned()).collect(),
        data[0].as_str().unwrap().to_owned(),
        json.into_bytes(),
    )
}

fn to_json(v: &rmpv::Value, out: &mut String) {
    use rmpv::Value as V;
    let text = |s: &str| serde_json::to_string(s).unwrap();
    match v {
        V::Nil => out.push_str("null"),
        V::Boolean(b) => out.push_str(&b.to_string()),
        V::Integer(i) => out.push_str(&i.to_string()),
        V::F64(f) => out.push_str(&serde_json::to_string(f).unwrap()),
        V::String(s) => out.push_str(&text(s.as_str().unwrap())),
        V::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                to_json(item, out);
            }
            out.push(']');
        }
        V::Map(entries) => {
            out.push('{');
            for (i, (k, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&text(k.as_str().unwrap()));
                out.push(':');
                to_json(item, out);
            }
            out.push('}');
        }
        other => panic!("not in an emitter message: {other:?}"),
    }
}

/// Subscribes as a Socket.IO server's adapter does; yields (channel, message).
async fn adapter(server: &Server) -> impl futures_util::Stream<Item = (String, Vec<u8>)> {
    let mut pubsub = redis::Client::open(server.url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    pubsub.psubscribe("socket.io#/#*").await.unwrap();
    pubsub.into_on_message().map(|m| {
        let channel = m.get_channel_name().to_owned();
        (channel, m.get_payload_bytes().to_vec())
    })
}

#[tokio::test]
async fn socketio_mode_meets_the_sink_contract() {
    let server = Server::start(&[]);
    let messages = adapter(&server).await;
    let sink = RedisSink::new(config(&server.url(), socketio_mode()));
    contract::check(sink, async |n| {
        let got: Vec<_> = tokio::time::timeout(Duration::from_secs(10), messages.take(n).collect())
            .await
            .expect("every message published");
        got.into_iter()
            .map(|(channel, message)| {
                assert_eq!(channel, "socket.io#/#resources/t#");
                let (nsp, rooms, event, payload) = decode(&message);
                assert_eq!(
                    (nsp.as_str(), rooms, event.as_str()),
                    ("/", vec!["resources/t".to_owned()], "created")
                );
                payload
            })
            .collect()
    })
    .await;
}

#[tokio::test]
async fn a_key_of_another_type_stops_the_sink_naming_the_key() {
    let server = Server::start(&[]);
    let mut conn = client(&server).await;
    let () = redis::cmd("SET")
        .arg("pglive:resources/t")
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut sink = RedisSink::new(config(&server.url(), stream_mode(DEFAULT_KEY)));
    sink.connect().await.unwrap();
    let batch = Arc::new(Batch {
        seq: 1,
        events: vec![contract::event(1)],
    });
    let e = sink.send(batch).await.unwrap().await.unwrap_err();
    assert!(!e.retryable, "{e}");
    assert!(
        e.message.contains("\"pglive:resources/t\"") && e.message.contains("WRONGTYPE"),
        "{e}"
    );
}

#[tokio::test]
async fn refused_credentials_are_fatal_and_never_shown() {
    let server = Server::start(&["--requirepass", "right-one"]);
    let url = format!("redis://:wrong-one@127.0.0.1:{}", server.port);
    for url in [url, server.url()] {
        let mut sink = RedisSink::new(config(&url, stream_mode(DEFAULT_KEY)));
        let e = sink.connect().await.unwrap_err();
        assert!(!e.retryable, "{e}");
        assert!(!e.message.contains("wrong-one"), "{e}");
    }
    let right = format!("redis://:right-one@127.0.0.1:{}", server.port);
    let (found, _) = probe(&config(&right, stream_mode("pglive:events")))
        .await
        .unwrap();
    assert!(found.contains("will be created"), "{found}");
}

#[tokio::test]
async fn no_server_is_retryable() {
    let server = Server::start(&[]);
    let url = server.url();
    drop(server);
    let mut sink = RedisSink::new(config(&url, stream_mode(DEFAULT_KEY)));
    let e = sink.connect().await.unwrap_err();
    assert!(e.retryable, "{e}");
}

#[tokio::test]
async fn with_require_subscribers_a_message_nobody_received_is_retried() {
    let server = Server::start(&[]);
    let mut sink = RedisSink::new(config(&server.url(), socketio_mode()));
    sink.connect().await.unwrap();
    let batch = Arc::new(Batch {
        seq: 1,
        events: vec![contract::event(1)],
    });
    let e = sink.send(batch.clone()).await.unwrap().await.unwrap_err();
    assert!(
        e.retryable && e.message.contains("no Socket.IO server"),
        "{e}"
    );
    let (_, warning) = probe(&sink.config).await.unwrap();
    assert!(warning.is_some());

    let Mode::SocketIo(mut sio) = socketio_mode() else {
        unreachable!()
    };
    sio.require_subscribers = false;
    let mut sink = RedisSink::new(config(&server.url(), Mode::SocketIo(sio)));
    sink.connect().await.unwrap();
    sink.send(batch).await.unwrap().await.unwrap();
}

/// The one-event batch's delivery on a fresh connection to `url`.
async fn deliver_one(url: &str) -> Result<(), SinkError> {
    let mut sink = RedisSink::new(config(url, stream_mode(DEFAULT_KEY)));
    sink.connect().await?;
    let batch = Arc::new(Batch {
        seq: 1,
        events: vec![contract::event(1)],
    });
    sink.send(batch).await?.await
}

#[tokio::test]
async fn a_refused_transaction_is_retried_when_memory_is_full_and_fatal_without_permission() {
    // maxmemory 1 byte: every write is refused (OOM) while queued, so nothing of the batch ran.
    let server = Server::start(&["--maxmemory", "1", "--maxmemory-policy", "noeviction"]);
    let e = deliver_one(&server.url()).await.unwrap_err();
    assert!(e.retryable && e.message.contains("OOM"), "{e}");
    assert!(
        e.message
            .contains("XADD of event 0/1001:0 to key \"pglive:resources/t\""),
        "{e}"
    );

    let server = Server::start(&[]);
    let mut conn = client(&server).await;
    let () = redis::cmd("ACL")
        .arg(&["SETUSER", "reader", "on", ">pw", "~*", "+@all", "-xadd"])
        .query_async(&mut conn)
        .await
        .unwrap();
    let e = deliver_one(&format!("redis://reader:pw@127.0.0.1:{}", server.port))
        .await
        .unwrap_err();
    assert!(
        !e.retryable
            && e.message
                .contains("no permissions to run the 'xadd' command"),
        "{e}"
    );
    assert!(e.message.contains("redis://reader:********@"), "{e}");
}

#[tokio::test]
async fn batches_in_flight_together_reach_the_stream_in_order() {
    let server = Server::start(&[]);
    let sink = RedisSink::new(config(&server.url(), stream_mode("pglive:events")));
    let lane = crate::sink::Lane::single();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let driver = tokio::spawn(crate::sink::drive(sink, lane.clone(), rx));
    let mut expected = Vec::new();
    for seq in 1..=300u64 {
        let events: Vec<LiveEvent> = (0..7).map(|i| contract::event(seq * 10 + i)).collect();
        expected.extend(events.iter().map(|e| e.id.to_string()));
        tx.send(Arc::new(Batch { seq, events })).await.unwrap();
    }
    drop(tx);
    driver.await.unwrap().unwrap();
    assert_eq!(lane.min_acked(), 300);
    let mut conn = client(&server).await;
    let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
        .arg("pglive:events")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let ids: Vec<String> = entries
        .into_iter()
        .map(|(_, fields)| String::from_utf8(fields[1].1.clone()).unwrap())
        .collect();
    assert_eq!(ids, expected);
}

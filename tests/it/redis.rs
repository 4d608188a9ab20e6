//! The Redis sink against a redis-server of the test's own. Stream mode: every committed change
//! arrives in order, each entry with its `event` and `id` fields, across a SIGKILL of pglive
//! and restarts of Redis (append-only file synced per write, so acknowledged entries survive).
//! Socket.IO mode: the messages a Socket.IO adapter would receive (PSUBSCRIBE as it does),
//! decoded, and events held while no subscriber listens.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::mpsc;

use serde_json::Value;

use crate::support::cluster::free_port;
use crate::support::service::Service;
use crate::support::{Daemon, TestDb, WAIT, http_get, pglive, setup, wait_until};

/// A redis-server on a free port of its own; `persistent`: append-only file, fsync per write.
fn redis_server(persistent: bool) -> Service {
    Service::start(
        "redis-server",
        Box::new(move |port, dir| {
            let mut cmd = Command::new("/usr/bin/redis-server");
            cmd.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir);
            match persistent {
                true => cmd.args(["--appendonly", "yes", "--appendfsync", "always"]),
                false => cmd.args(["--appendonly", "no"]),
            };
            cmd
        }),
    )
}

fn connection(redis: &Service) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{}", redis.port))
        .unwrap()
        .get_connection()
        .unwrap()
}

/// A database with table `t`, one event per row, to stdout (sinks[0]) and Redis (sinks[1])
/// with `keys`; `top`: more top-level sections.
fn per_row(name: &str, redis: &Service, keys: &str, top: &str) -> (TestDb<'static>, String) {
    let db = TestDb::new(name);
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let config = format!(
        "{}[[sinks]]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\nmax_backoff = \"500ms\"\n{keys}\n",
        db.config(
            &["name = \"t\""],
            &format!("[events]\ncoalesce = false\n{top}")
        ),
        redis.port
    );
    (db, config)
}

fn insert(db: &TestDb, from: i64, to: i64) {
    db.sql(&format!(
        "INSERT INTO t SELECT generate_series({from}, {to})"
    ));
}

/// The stream's entries as (event, id) fields; an empty list while Redis is down.
fn entries(redis: &Service, key: &str) -> Vec<(Value, String)> {
    let Ok(mut conn) = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port))
        .and_then(|c| c.get_connection())
    else {
        return Vec::new();
    };
    let raw: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap_or_default();
    raw.into_iter()
        .map(|(entry, fields)| {
            let names: Vec<&str> = fields.iter().map(|(f, _)| f.as_str()).collect();
            assert_eq!(names, ["event", "id"], "entry {entry}");
            let event: Value = serde_json::from_str(&fields[0].1).unwrap();
            assert_eq!(event["meta"]["id"], fields[1].1, "entry {entry}");
            (event, fields[1].1.clone())
        })
        .collect()
}

/// The events, each id's first entry only, in stream order.
fn first_entries(entries: &[(Value, String)]) -> Vec<Value> {
    let mut seen = BTreeSet::new();
    entries
        .iter()
        .filter(|(_, id)| seen.insert(id.clone()))
        .map(|(e, _)| e.clone())
        .collect()
}

fn row_ids(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["payload"]["ids"][0].as_i64().unwrap())
        .collect()
}

#[track_caller]
fn wait_rows(redis: &Service, key: &str, n: i64) -> Vec<Value> {
    let mut events = Vec::new();
    wait_until(&format!("rows 1..={n} in stream {key}"), || {
        events = first_entries(&entries(redis, key));
        events.len() as i64 >= n
    });
    events
}

#[test]
fn stream_mode_delivers_every_change_in_order_across_a_kill_of_pglive_and_redis_restarts() {
    let mut redis = redis_server(true);
    let key = "pglive:resources/t";
    let (db, config) = per_row("redis_stream", &redis, "mode = \"stream\"", "");
    setup(&config);
    let mut d = Daemon::run(&config);
    for (from, to) in [(1, 5), (6, 40), (41, 41), (42, 100)] {
        insert(&db, from, to);
    }
    wait_rows(&redis, key, 100);

    // pglive dies at once; changes committed meanwhile; Redis restarts from its append-only
    // file, keeping every entry it acknowledged.
    d.kill();
    insert(&db, 101, 150);
    redis.restart();
    assert!(
        entries(&redis, key).len() >= 100,
        "acknowledged entries survive"
    );
    let d = Daemon::run(&config);
    wait_rows(&redis, key, 150);

    // Redis restarts under a running pglive, which reconnects and sends what was not
    // acknowledged.
    insert(&db, 151, 175);
    redis.restart();
    insert(&db, 176, 200);
    let events = wait_rows(&redis, key, 200);
    d.wait_log("Redis delivery interrupted");

    assert_eq!(
        row_ids(&events),
        (1..=200).collect::<Vec<_>>(),
        "in commit order"
    );
    let last = d.wait_events("row 200 on stdout", |e| {
        e.last().is_some_and(|e| e["payload"]["ids"][0] == 200)
    });
    assert_eq!(
        events[events.len() - last.len()..],
        last[..],
        "the same events as stdout, byte for byte as JSON"
    );
    assert_eq!(
        entries(&redis, key)
            .iter()
            .filter(|(e, _)| e["channel"] != "resources/t")
            .count(),
        0
    );
}

#[test]
fn stream_mode_writes_one_fixed_key_trimmed_to_about_max_len() {
    let redis = redis_server(false);
    let (db, config) = per_row(
        "redis_fixed",
        &redis,
        "mode = \"stream\"\nkey = \"pglive:events\"\nmax_len = 100",
        "",
    );
    setup(&config);
    let d = Daemon::run(&config);
    insert(&db, 1, 2000);
    d.wait_events("2000 events on stdout", |e| e.len() >= 2000);
    wait_until("the last row in the stream", || {
        entries(&redis, "pglive:events")
            .last()
            .is_some_and(|(e, _)| e["payload"]["ids"][0] == 2000)
    });
    let n = entries(&redis, "pglive:events").len();
    assert!((100..1000).contains(&n), "trimmed to about 100: {n}");
}

/// Subscribes as a Socket.IO server's Redis adapter does (once this returns); messages as
/// (channel, payload) from a thread holding the subscription.
fn adapter(redis: &Service) -> mpsc::Receiver<(String, Vec<u8>)> {
    let mut conn = connection(redis);
    let (tx, rx) = mpsc::sync_channel(1024);
    let (subscribed, ready) = mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut pubsub = conn.as_pubsub();
        pubsub.psubscribe("socket.io#/#*").unwrap();
        subscribed.send(()).unwrap();
        while let Ok(msg) = pubsub.get_message() {
            let item = (
                msg.get_channel_name().to_owned(),
                msg.get_payload_bytes().to_vec(),
            );
            if tx.send(item).is_err() {
                break;
            }
        }
    });
    ready.recv_timeout(WAIT).expect("subscribed");
    rx
}

/// The next message: (channel, namespace, rooms, event name, payload).
fn next_message(
    messages: &mpsc::Receiver<(String, Vec<u8>)>,
    d: &Daemon,
) -> (String, String, Vec<String>, String, Value) {
    let (channel, payload) = messages
        .recv_timeout(WAIT)
        .unwrap_or_else(|e| panic!("no message ({e})\n--- pglive's stderr:\n{}", d.stderr()));
    let value = rmpv::decode::read_value(&mut &payload[..]).unwrap();
    let json = to_json(&value);
    assert_eq!(json[0], "emitter");
    assert_eq!(json[1]["type"], 2);
    assert_eq!(json[2]["except"], serde_json::json!([]));
    assert_eq!(json[2]["flags"], serde_json::json!({}));
    let rooms = json[2]["rooms"].as_array().unwrap();
    (
        channel,
        json[1]["nsp"].as_str().unwrap().to_owned(),
        rooms
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect(),
        json[1]["data"][0].as_str().unwrap().to_owned(),
        json[1]["data"][1].clone(),
    )
}

fn to_json(v: &rmpv::Value) -> Value {
    use rmpv::Value as V;
    match v {
        V::Nil => Value::Null,
        V::Boolean(b) => Value::Bool(*b),
        V::Integer(i) => match i.as_u64() {
            Some(u) => u.into(),
            None => i.as_i64().unwrap().into(),
        },
        V::F64(f) => serde_json::json!(f),
        V::String(s) => s.as_str().unwrap().into(),
        V::Array(items) => items.iter().map(to_json).collect(),
        V::Map(entries) => entries
            .iter()
            .map(|(k, v)| (k.as_str().unwrap().to_owned(), to_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        other => panic!("not in an emitter message: {other:?}"),
    }
}

#[test]
fn socketio_mode_emits_to_the_channels_room_and_holds_events_while_no_server_listens() {
    let redis = redis_server(false);
    let ops = free_port();
    let (db, config) = per_row(
        "redis_socketio",
        &redis,
        "mode = \"socketio\"\nevent = \"live\"\nroom_prefix = \"pg:\"",
        &format!("[ops]\nlisten = \"127.0.0.1:{ops}\"\n"),
    );
    setup(&config);
    let d = Daemon::run(&config);
    d.wait_log("publishing to Redis");

    // No Socket.IO server: the event reaches nobody, so it waits and the sink is not ready.
    insert(&db, 1, 1);
    d.wait_log("no Socket.IO server subscribes: PUBLISH of event");
    assert!(
        d.stderr()
            .contains("to \"socket.io#/#pg:resources/t#\" reached nobody"),
        "{}",
        d.stderr()
    );
    wait_until("/readyz → 503 naming the redis sink", || {
        http_get(ops, "/readyz").is_some_and(|(code, body)| code == 503 && body.contains("(redis)"))
    });

    // A server subscribes: the held event arrives, then every later one, in order.
    let sub = adapter(&redis);
    insert(&db, 2, 20);
    let stdout = d.wait_events("20 events on stdout", |e| e.len() >= 20);
    let mut got = Vec::new();
    while got.len() < 20 {
        let (channel, nsp, rooms, event, payload) = next_message(&sub, &d);
        assert_eq!(channel, "socket.io#/#pg:resources/t#");
        assert_eq!((nsp.as_str(), event.as_str()), ("/", "live"));
        assert_eq!(rooms, ["pg:resources/t"]);
        // The held event may arrive twice (sent again while the subscriber came).
        if got.last() != Some(&payload) {
            got.push(payload);
        }
    }
    assert_eq!(got, stdout, "every event, in order, as stdout printed it");
    wait_until("/readyz → 200", || {
        http_get(ops, "/readyz").is_some_and(|(code, _)| code == 200)
    });
}

#[test]
fn check_authenticates_and_reports_the_key_or_the_socketio_servers() {
    let redis = redis_server(false);
    let mut conn = connection(&redis);
    let () = redis::cmd("SET")
        .arg("taken")
        .arg("x")
        .query(&mut conn)
        .unwrap();
    let (_db, config) = per_row(
        "redis_check",
        &redis,
        "mode = \"stream\"\nkey = \"pglive:events\"",
        "",
    );
    setup(&config);
    let (code, out, err) = pglive(&["check"], &config);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("stream \"pglive:events\" will be created"),
        "{out}"
    );

    let taken = config.replace("pglive:events", "taken");
    let (code, out, _) = pglive(&["check"], &taken);
    assert_ne!(code, 0);
    assert!(
        out.contains("key \"taken\" holds a string, not a stream"),
        "{out}"
    );

    let wrong = config.replace("redis://127.0.0.1", "redis://:nope@127.0.0.1");
    let (code, out, _) = pglive(&["check"], &wrong);
    assert_ne!(code, 0);
    assert!(
        out.contains("FAIL  sinks[1]: Redis at redis://:********@127.0.0.1"),
        "{out}"
    );
    assert!(!out.contains("nope"), "{out}");

    let socketio = config.replace(
        "mode = \"stream\"\nkey = \"pglive:events\"",
        "mode = \"socketio\"",
    );
    let (code, out, _) = pglive(&["check"], &socketio);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warn  sinks[1]") && out.contains("0 pattern subscription(s)"),
        "{out}"
    );
    let _sub = adapter(&redis);
    let (_, out, _) = pglive(&["check"], &socketio);
    assert!(
        out.contains("ok    sinks[1]") && out.contains("1 pattern subscription(s)"),
        "{out}"
    );
}

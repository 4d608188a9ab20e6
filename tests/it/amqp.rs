//! The AMQP sink against the real RabbitMQ: message format, confirms holding the slot, and
//! nothing lost across a killed daemon, a restarted broker or a memory alarm.

use std::collections::BTreeSet;
use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::Value;

use crate::support::broker::{HOST, Message, Relay, Vhost, message_ids, rabbitmqctl, tls_front};
use crate::support::{Daemon, TestDb, pglive, setup, wait_until};

/// `n` one-row transactions into `table`, ids `from..from+n`.
fn insert_rows(db: &TestDb, table: &str, from: i64, n: i64) {
    let mut sql = String::new();
    for id in from..from + n {
        sql.push_str(&format!("INSERT INTO {table} VALUES ({id});\n"));
    }
    db.sql(&sql);
}

/// A database of one's own with a table `t` (integer key).
fn table_t(name: &str) -> TestDb<'static> {
    let db = TestDb::new(name);
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    db
}

/// Table `t`, one event per row, to stdout and to an amqp sink into `mq`.
fn per_row_config(db: &TestDb, mq: &Vhost) -> String {
    format!(
        "{}{}",
        db.config(&["name = \"t\""], "[events]\ncoalesce = false"),
        mq.sink("")
    )
}

fn distinct_ids(messages: &[Message]) -> BTreeSet<i64> {
    message_ids(messages)
        .iter()
        .map(|v| v.as_i64().expect("integer id"))
        .collect()
}

fn distinct_message_ids(messages: &[Message]) -> BTreeSet<String> {
    messages
        .iter()
        .map(|m| {
            m.properties
                .message_id()
                .as_ref()
                .expect("message_id")
                .to_string()
        })
        .collect()
}

fn commit_lsn(db: &TestDb, event: &Value) -> u64 {
    db.lsn(event["meta"]["lsn"].as_str().unwrap())
}

fn text(v: Option<AMQPValue>) -> String {
    match v {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        Some(AMQPValue::ShortString(s)) => s.to_string(),
        other => panic!("expected a string header, got {other:?}"),
    }
}

#[test]
fn messages_carry_the_event_its_routing_key_and_every_property() {
    let db = TestDb::new("amqp_format");
    db.sql(
        "CREATE TABLE products (id int PRIMARY KEY, name text);
         CREATE TABLE orders (id int PRIMARY KEY);",
    );
    let mq = Vhost::new("format");
    mq.queue("pglive", "all", "#");
    mq.queue("cdc", "cdc", "cdc.public.#");
    let config = format!(
        "{}{}{}",
        db.config(
            &[
                "name = \"products\"",
                "name = \"orders\"\nchannel = \"live/orders\""
            ],
            ""
        ),
        mq.sink(""),
        mq.sink("exchange = \"cdc\"\nrouting_key = \"cdc.{schema}.{table}.{type}\"")
    );
    setup(&config);
    let d = Daemon::run(&config);
    db.sql(
        "INSERT INTO products VALUES (1, 'a');
         UPDATE products SET name = 'b' WHERE id = 1;
         INSERT INTO orders VALUES (7);
         DELETE FROM products WHERE id = 1;",
    );
    let events = d.wait_events("four events on stdout", |e| e.len() >= 4);
    let all = mq.wait_messages("all", "four messages", |m| m.len() >= 4);
    assert_eq!(all.len(), 4, "one message per event");

    // The body is exactly the line stdout printed, in the same order.
    let lines = d.raw_lines();
    let bodies: Vec<String> = all
        .iter()
        .map(|m| String::from_utf8(m.body.clone()).unwrap())
        .collect();
    assert_eq!(bodies, lines);

    let keys: Vec<&str> = all.iter().map(|m| m.routing_key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "resources.products",
            "resources.products",
            "live.orders",
            "resources.products"
        ]
    );
    for (m, e) in all.iter().zip(&events) {
        let p = &m.properties;
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(*p.delivery_mode(), Some(2), "persistent");
        assert_eq!(
            p.message_id().as_ref().unwrap().as_str(),
            e["meta"]["id"].as_str().unwrap()
        );
        assert_eq!(
            p.kind().as_ref().unwrap().as_str(),
            e["type"].as_str().unwrap()
        );
        assert_eq!(p.app_id().as_ref().unwrap().as_str(), "pglive");
        let date = e["date"].as_str().unwrap();
        let epoch: u64 = db
            .sql(&format!(
                "SELECT floor(extract(epoch FROM '{date}'::timestamptz))::bigint"
            ))
            .parse()
            .unwrap();
        assert_eq!(*p.timestamp(), Some(epoch), "commit time in seconds");
        assert_eq!(text(m.header("lsn")), e["meta"]["lsn"].as_str().unwrap());
        assert_eq!(text(m.header("schema")), "public");
        assert_eq!(
            text(m.header("table")),
            e["meta"]["table"].as_str().unwrap()
        );
        assert_eq!(
            m.header("xid"),
            Some(AMQPValue::LongUInt(
                e["meta"]["xid"].as_u64().unwrap() as u32
            ))
        );
    }

    // The second sink's template, by schema, table and type.
    let cdc = mq.wait_messages("cdc", "four messages", |m| m.len() >= 4);
    let keys: Vec<&str> = cdc.iter().map(|m| m.routing_key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "cdc.public.products.created",
            "cdc.public.products.updated",
            "cdc.public.orders.created",
            "cdc.public.products.deleted"
        ]
    );

    // SIGTERM: the sinks finish, the connections close, the slot is past the last commit.
    let last = commit_lsn(&db, events.last().unwrap());
    let mut d = d;
    d.signal("TERM");
    assert_eq!(
        d.wait_exit(Duration::from_secs(30)).code(),
        Some(0),
        "{}",
        d.stderr()
    );
    assert!(db.confirmed_flush().unwrap() > last);
}

#[test]
fn a_nacked_message_holds_the_slot_until_the_broker_takes_it() {
    let db = table_t("amqp_nack");
    let mq = Vhost::new("nack");
    // A queue that refuses (nacks) what does not fit: the slow sink of this test.
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(5));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    mq.queue_with("pglive", "small", "#", args);
    let config = per_row_config(&db, &mq);
    setup(&config);
    let d = Daemon::run(&config);
    insert_rows(&db, "t", 1, 20);
    let events = d.wait_events("stdout to get all 20 events", |e| e.len() >= 20);
    d.wait_log("rejected by the broker (nack)");
    assert_eq!(mq.depth("small"), 5, "the queue holds what fits");
    // The sixth transaction was refused: the slot must not pass it, though stdout has it all.
    assert!(
        db.confirmed_flush().unwrap() < commit_lsn(&db, &events[5]),
        "the slot moved past a message the broker refused"
    );

    // Taking messages makes room; pglive publishes the refused ones again, in order.
    let got = mq.wait_messages("small", "every row", |m| distinct_ids(m).len() >= 20);
    assert_eq!(distinct_ids(&got), (1..=20).collect());
    let firsts: Vec<i64> = {
        let mut seen = BTreeSet::new();
        message_ids(&got)
            .iter()
            .map(|v| v.as_i64().unwrap())
            .filter(|id| seen.insert(*id))
            .collect()
    };
    assert_eq!(
        firsts,
        (1..=20).collect::<Vec<_>>(),
        "first deliveries in commit order"
    );
    let last = commit_lsn(&db, events.last().unwrap());
    wait_until("the slot to pass the last transaction", || {
        db.confirmed_flush().unwrap_or(0) >= last
    });
}

#[test]
fn unroutable_messages_are_retried_until_a_queue_is_bound_or_skipped_when_asked() {
    let db = table_t("amqp_unroutable");
    let mq = Vhost::new("unroutable");
    let config = per_row_config(&db, &mq);
    setup(&config);
    let d = Daemon::run(&config);
    insert_rows(&db, "t", 1, 3);
    let events = d.wait_events("stdout to get the events", |e| e.len() >= 3);
    d.wait_log("returned unroutable");
    assert!(
        db.confirmed_flush().unwrap() < commit_lsn(&db, &events[0]),
        "the slot moved past a message no queue took"
    );
    mq.queue("pglive", "late", "resources.*");
    let got = mq.wait_messages("late", "the held messages", |m| distinct_ids(m).len() >= 3);
    assert_eq!(distinct_ids(&got), (1..=3).collect());
    drop(d);

    // With on_reject = "skip", the message is logged and the slot moves on.
    let skip = config.replace(
        "max_backoff = \"1s\"",
        "max_backoff = \"1s\"\non_reject = \"skip\"",
    );
    let skip = skip.replace(
        "[[tables]]\nname = \"t\"",
        "[[tables]]\nname = \"t\"\nchannel = \"nowhere/t\"",
    );
    let d = Daemon::run(&skip);
    insert_rows(&db, "t", 4, 1);
    d.wait_log("skipped (on_reject = \"skip\")");
    let end = db.current_wal();
    wait_until("the slot to pass the skipped message", || {
        db.confirmed_flush().unwrap_or(0) >= end
    });
}

#[test]
fn a_killed_daemon_loses_nothing_on_restart() {
    let db = table_t("amqp_kill");
    let mq = Vhost::new("kill");
    mq.queue("pglive", "q", "#");
    let config = per_row_config(&db, &mq).replace("[[sinks]]\ntype = \"stdout\"\n", "");
    setup(&config);
    // 4,000 rows waiting, and 4,000 more written while the daemon runs and is killed.
    insert_rows(&db, "t", 1, 4000);
    let mut d = Daemon::run(&config);
    let writer = {
        let url = db.url();
        std::thread::spawn(move || {
            let status = std::process::Command::new("psql")
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &url, "-c"])
                .arg(
                    (4001..=8000)
                        .map(|i| format!("INSERT INTO t VALUES ({i});"))
                        .collect::<String>(),
                )
                .status()
                .unwrap();
            assert!(status.success());
        })
    };
    mq.wait_messages("q", "some messages before the kill", |m| m.len() >= 1000);
    d.kill();
    writer.join().unwrap();
    let d = Daemon::run(&config);
    let got = mq.wait_messages("q", "every row", |m| distinct_ids(m).len() >= 8000);
    assert_eq!(distinct_ids(&got), (1..=8000).collect());
    assert_eq!(
        distinct_message_ids(&got).len(),
        8000,
        "one meta.id per row"
    );
    drop(d);
}

#[test]
fn broker_restarted_mid_stream_loses_nothing() {
    let db = table_t("amqp_restart");
    let mq = Vhost::exclusive("restart");
    mq.queue("pglive", "q", "#");
    let config = per_row_config(&db, &mq);
    setup(&config);
    let d = Daemon::run(&config);
    insert_rows(&db, "t", 1, 2000);
    mq.wait_messages("q", "messages before the restart", |m| !m.is_empty());
    let app = AppRestart::stop();
    insert_rows(&db, "t", 2001, 2000);
    d.wait_log("AMQP publishing interrupted");
    drop(app);
    mq.reconnect();
    insert_rows(&db, "t", 4001, 1000);
    let got = mq.wait_messages("q", "every row", |m| distinct_ids(m).len() >= 5000);
    assert_eq!(distinct_ids(&got), (1..=5000).collect());
}

#[test]
fn a_memory_alarm_holds_every_sink_and_the_slot_until_it_clears() {
    let db = table_t("amqp_alarm");
    let mq = Vhost::exclusive("alarm");
    mq.queue("pglive", "q", "#");
    let config = per_row_config(&db, &mq);
    setup(&config);
    let d = Daemon::run(&config);
    d.wait_log("publishing to AMQP");
    let alarm = MemoryAlarm::raise();
    insert_rows(&db, "t", 1, 2000);
    d.wait_log("the broker blocked publishing");
    // The blocked sink holds the pipeline: stdout gets at most what the queues hold.
    let first = d.wait_events("the first event on stdout", |e| !e.is_empty());
    let first = commit_lsn(&db, &first[0]);
    assert!(
        mq.messages("q").is_empty(),
        "nothing gets through a memory alarm"
    );
    assert!(
        db.confirmed_flush().unwrap() < first,
        "the slot moved past messages the broker has not confirmed"
    );
    drop(alarm);
    d.wait_log("the broker unblocked publishing");
    let got = mq.wait_messages("q", "every row", |m| distinct_ids(m).len() >= 2000);
    assert_eq!(distinct_ids(&got), (1..=2000).collect());
    let events = d.wait_events("stdout to get every row", |e| e.len() >= 2000);
    let bodies: BTreeSet<Vec<u8>> = got.iter().map(|m| m.body.clone()).collect();
    let lines: BTreeSet<Vec<u8>> = d.raw_lines().into_iter().map(String::into_bytes).collect();
    assert_eq!(bodies, lines, "both sinks carry the same events");
    let last = commit_lsn(&db, events.last().unwrap());
    wait_until("the slot to pass the last transaction", || {
        db.confirmed_flush().unwrap_or(0) >= last
    });
}

#[test]
fn wrong_credentials_or_vhost_stop_with_a_clear_error() {
    let db = table_t("amqp_auth");
    let mq = Vhost::new("auth");
    let good = format!("{}{}", db.config(&["name = \"t\""], ""), mq.sink(""));
    setup(&good);
    for (bad, expect) in [
        (
            good.replace("guest:guest@", "guest:wrong-secret@"),
            "user name, password",
        ),
        (
            good.replace(&format!("/{}\"", mq.name), "/no_such_vhost\""),
            "vhost",
        ),
    ] {
        let mut d = Daemon::run(&bad);
        let status = d.wait_exit(Duration::from_secs(30));
        assert_eq!(status.code(), Some(1), "{}", d.stderr());
        let err = d.stderr();
        assert!(
            err.contains("sinks[1] (amqp)") && err.contains(expect),
            "{err}"
        );
        assert!(
            !err.contains("wrong-secret"),
            "the password is never shown: {err}"
        );
        assert_eq!(
            err.matches("AMQP publishing interrupted").count(),
            0,
            "no retries: {err}"
        );
        let (code, out, _) = pglive(&["check"], &bad);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("FAIL  sinks[1]: cannot use the broker"),
            "{out}"
        );
        assert!(!out.contains("wrong-secret"), "{out}");
    }
    let (code, out, _) = pglive(&["check"], &good);
    assert!(
        out.contains("ok    sinks[1]: connected to amqp://guest:********@"),
        "{code} {out}"
    );
}

#[test]
fn an_unreachable_broker_is_retried_and_a_cut_connection_resumed() {
    let db = table_t("amqp_unreachable");
    let mq = Vhost::new("unreachable");
    mq.queue("pglive", "q", "#");
    let port = crate::support::cluster::free_port();
    let config = format!(
        "{}{}",
        db.config(&["name = \"t\""], "[events]\ncoalesce = false"),
        mq.sink("").replace(HOST, &format!("127.0.0.1:{port}"))
    );
    setup(&config);
    let (code, out, _) = pglive(&["check"], &config);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  sinks[1]: cannot use the broker"),
        "{out}"
    );
    let d = Daemon::run(&config);
    insert_rows(&db, "t", 1, 100);
    d.wait_log("Connection refused");
    // The broker appears: everything waiting is delivered.
    let relay = Relay::start(port);
    mq.wait_messages("q", "the first rows", |m| distinct_ids(m).len() >= 100);
    // The connection drops mid-stream: pglive reconnects and publishes what was unconfirmed.
    relay.cut();
    insert_rows(&db, "t", 101, 400);
    let got = mq.wait_messages("q", "every row", |m| distinct_ids(m).len() >= 500);
    assert_eq!(distinct_ids(&got), (1..=500).collect());
    assert!(
        d.stderr().matches("publishing to AMQP").count() >= 2,
        "it reconnected"
    );
}

#[test]
fn amqps_verifies_the_broker_against_ca_file() {
    let db = table_t("amqp_tls");
    let mq = Vhost::new("tls");
    mq.queue("pglive", "q", "#");
    let certs = &db.cluster.dir;
    let port = tls_front(&certs.join("server.crt"), &certs.join("server.key"));
    let sink = |ca: &std::path::Path| {
        mq.sink(&format!("ca_file = \"{}\"", ca.display())).replace(
            &format!("amqp://guest:guest@{HOST}/"),
            &format!("amqps://guest:guest@localhost:{port}/"),
        )
    };
    let config = format!(
        "{}{}",
        db.config(&["name = \"t\""], ""),
        sink(&db.cluster.ca_cert())
    );
    setup(&config);
    let (code, out, _) = pglive(&["check"], &config);
    assert!(
        out.contains("ok    sinks[1]: connected to amqps://"),
        "{code} {out}"
    );
    let d = Daemon::run(&config);
    insert_rows(&db, "t", 1, 3);
    let got = mq.wait_messages("q", "the rows over TLS", |m| distinct_ids(m).len() >= 3);
    assert_eq!(distinct_ids(&got), (1..=3).collect());
    drop(d);

    // A broker whose certificate the configured CA did not sign is refused.
    let untrusted = format!(
        "{}{}",
        db.config(&["name = \"t\""], ""),
        sink(&db.cluster.other_ca_cert())
    );
    let (code, out, _) = pglive(&["check"], &untrusted);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("invalid peer certificate"), "{out}");
    let mut d = Daemon::run(&untrusted);
    let status = d.wait_exit(Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(1),
        "a certificate problem is not retried"
    );
    let err = d.stderr();
    assert!(
        err.contains("sinks[1] (amqp)") && err.contains("set ca_file"),
        "{err}"
    );
}

/// `rabbitmqctl stop_app` until dropped (then `start_app`).
struct AppRestart;

impl AppRestart {
    fn stop() -> AppRestart {
        rabbitmqctl(&["stop_app"]);
        AppRestart
    }
}

impl Drop for AppRestart {
    fn drop(&mut self) {
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    }
}

/// A memory alarm (high watermark 0) until dropped, then the watermark as it was.
struct MemoryAlarm {
    was: String,
}

impl MemoryAlarm {
    fn raise() -> MemoryAlarm {
        let was = rabbitmqctl(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."]);
        let was = was.trim().to_owned();
        assert!(was.parse::<f64>().is_ok(), "watermark {was:?}");
        rabbitmqctl(&["set_vm_memory_high_watermark", "0"]);
        MemoryAlarm { was }
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        rabbitmqctl(&["set_vm_memory_high_watermark", &self.was]);
    }
}

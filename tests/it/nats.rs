//! The NATS sink against a nats-server of the tests' own (JetStream, file storage): messages
//! and subjects, and every change stored once per `Nats-Msg-Id`, in order per subject, across
//! a killed daemon and a server restarted while writes go on.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::thread::JoinHandle;
use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt;
use serde_json::Value;

use crate::support::service::Service;
use crate::support::{Daemon, TestDb, pglive, setup, wait_until};

const STREAM: &str = "PGLIVE";

/// nats-server with JetStream on a free port, its store in the service's directory.
fn nats_server(extra: &[&str]) -> Service {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    Service::start(
        "nats-server",
        Box::new(move |port, dir| {
            let mut c = Command::new("/usr/sbin/nats-server");
            c.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(dir)
                .args(&extra);
            c
        }),
    )
}

/// A `[[sinks]]` entry for `server` that creates the stream, with `extra` keys.
fn sink(server: &Service, extra: &str) -> String {
    format!(
        "[[sinks]]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:{}\"\nstream = \"{STREAM}\"\n\
         create_stream = true\ntimeout = \"2s\"\nmax_backoff = \"1s\"\n{extra}\n",
        server.port
    )
}

/// A stored message.
struct Stored {
    subject: String,
    msg_id: String,
    body: String,
    event: Value,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn context(port: u16) -> jetstream::Context {
    let client = async_nats::connect(format!("127.0.0.1:{port}"))
        .await
        .expect("connect to the test's nats-server");
    jetstream::new(client)
}

/// How many messages the stream holds (0 before it exists).
fn count(port: u16) -> u64 {
    runtime().block_on(async {
        match context(port).await.get_stream(STREAM).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        }
    })
}

/// Every message of the stream, in stream order.
fn stored(port: u16) -> Vec<Stored> {
    runtime().block_on(async {
        let js = context(port).await;
        let mut stream = js.get_stream(STREAM).await.unwrap();
        let total = stream.info().await.unwrap().state.messages as usize;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap().take(total);
        let mut out = Vec::new();
        while let Some(m) = messages.next().await {
            let m = m.unwrap();
            let msg_id = m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id"));
            let body = String::from_utf8(m.payload.to_vec()).unwrap();
            out.push(Stored {
                subject: m.subject.to_string(),
                msg_id: msg_id.map(|v| v.to_string()).unwrap_or_default(),
                event: serde_json::from_str(&body).unwrap(),
                body,
            });
        }
        out
    })
}

/// Waits until the stream holds `n` messages, and returns them all.
fn wait_stored(server: &Service, n: u64) -> Vec<Stored> {
    wait_until(&format!("{n} messages in the stream"), || {
        count(server.port) >= n
    });
    stored(server.port)
}

/// One-row transactions into `table`, ids `from..=to`, on a thread of their own.
fn writer(db: &TestDb, table: &str, from: i64, to: i64) -> JoinHandle<()> {
    let url = db.url();
    let sql: String = (from..=to)
        .map(|i| format!("INSERT INTO {table} VALUES ({i});"))
        .collect();
    std::thread::spawn(move || {
        let status = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &url, "-c", &sql])
            .status()
            .unwrap();
        assert!(status.success());
    })
}

/// The stream holds each change once per `Nats-Msg-Id` (its `meta.id`), and each subject's
/// row ids in order without gaps: `expected` maps subject → last id (ids from 1).
fn assert_once_in_order(messages: &[Stored], expected: &[(&str, i64)]) {
    let ids: BTreeSet<&str> = messages.iter().map(|m| m.msg_id.as_str()).collect();
    assert_eq!(ids.len(), messages.len(), "one message per Nats-Msg-Id");
    let mut by_subject: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for m in messages {
        assert_eq!(m.event["meta"]["id"].as_str(), Some(m.msg_id.as_str()));
        let row = m.event["payload"]["ids"][0]
            .as_i64()
            .expect("one integer id");
        by_subject.entry(&m.subject).or_default().push(row);
    }
    for (subject, last) in expected {
        let got = by_subject.remove(subject).unwrap_or_default();
        assert_eq!(
            got,
            (1..=*last).collect::<Vec<_>>(),
            "{subject}: every row once, in commit order"
        );
    }
    assert!(by_subject.is_empty(), "no other subjects");
}

/// A database with tables `t` and `u` (integer keys).
fn two_tables(name: &str) -> TestDb<'static> {
    let db = TestDb::new(name);
    db.sql("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE u (id int PRIMARY KEY);");
    db
}

/// Tables `t` and `u`, one event per row, to the nats sink only.
fn per_row(db: &TestDb, server: &Service) -> String {
    let c = db.config(
        &["name = \"t\"", "name = \"u\""],
        "[events]\ncoalesce = false",
    );
    c.replace("[[sinks]]\ntype = \"stdout\"\n", &sink(server, ""))
}

#[test]
fn messages_carry_the_event_on_its_channels_subject_with_its_id() {
    let server = nats_server(&[]);
    let db = TestDb::new("nats_format");
    db.sql("CREATE TABLE posts (id int PRIMARY KEY); CREATE TABLE orders (id int PRIMARY KEY);");
    let config = format!(
        "{}{}",
        db.config(
            &[
                "name = \"posts\"",
                "name = \"orders\"\nchannel = \"live/app.orders\""
            ],
            ""
        ),
        sink(&server, "")
    );
    setup(&config);
    let (code, out, _) = pglive(&["check"], &config);
    assert!(
        out.contains(&format!(
            "ok    sinks[1]: connected to nats://127.0.0.1:{}; stream \"PGLIVE\" will be created",
            server.port
        )),
        "{code} {out}"
    );
    let d = Daemon::run(&config);
    db.sql(
        "INSERT INTO posts VALUES (1);
         INSERT INTO orders VALUES (7);
         DELETE FROM posts WHERE id = 1;",
    );
    d.wait_events("three events on stdout", |e| e.len() >= 3);
    let got = wait_stored(&server, 3);
    let subjects: Vec<&str> = got.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(
        subjects,
        [
            "pglive.resources.posts",
            "pglive.live.app_orders",
            "pglive.resources.posts"
        ]
    );
    let bodies: Vec<String> = got.iter().map(|m| m.body.clone()).collect();
    assert_eq!(
        bodies,
        d.raw_lines(),
        "the body is the event stdout printed"
    );
    for m in &got {
        assert_eq!(m.event["meta"]["id"].as_str(), Some(m.msg_id.as_str()));
    }
    let (_, out, _) = pglive(&["check"], &config);
    assert!(out.contains("stream \"PGLIVE\" exists"), "{out}");
}

#[test]
fn a_killed_daemon_replays_and_the_stream_keeps_each_change_once() {
    let server = nats_server(&[]);
    let db = two_tables("nats_kill");
    let config = per_row(&db, &server);
    setup(&config);
    // 2,000 rows in each table waiting, and 2,000 more in each written while pglive runs and
    // is killed.
    db.sql("INSERT INTO t SELECT generate_series(1, 2000); INSERT INTO u SELECT generate_series(1, 2000);");
    let mut d = Daemon::run(&config);
    let writers = [writer(&db, "t", 2001, 4000), writer(&db, "u", 2001, 4000)];
    wait_until("some messages before the kill", || {
        count(server.port) >= 1000
    });
    d.kill();
    for w in writers {
        w.join().unwrap();
    }
    let d = Daemon::run(&config);
    let got = wait_stored(&server, 8000);
    assert_once_in_order(
        &got,
        &[("pglive.resources.t", 4000), ("pglive.resources.u", 4000)],
    );
    drop(d);
}

#[test]
fn a_server_restarted_mid_stream_loses_nothing() {
    let mut server = nats_server(&[]);
    let db = two_tables("nats_restart");
    let config = per_row(&db, &server);
    setup(&config);
    let d = Daemon::run(&config);
    let writers = [writer(&db, "t", 1, 3000), writer(&db, "u", 1, 3000)];
    wait_until("some messages before the restart", || {
        count(server.port) >= 500
    });
    // SIGKILL: nats-server writes a message to its file store before it acknowledges it, so
    // a killed server keeps every acknowledged message (it syncs to disk only periodically: a
    // machine that loses power may not).
    server.kill();
    d.wait_log("NATS publishing interrupted");
    server.start_again();
    for w in writers {
        w.join().unwrap();
    }
    let got = wait_stored(&server, 6000);
    assert_once_in_order(
        &got,
        &[("pglive.resources.t", 3000), ("pglive.resources.u", 3000)],
    );
    assert!(
        d.stderr().matches("publishing to NATS JetStream").count() >= 2,
        "it reconnected"
    );
}

#[test]
fn wrong_credentials_or_a_missing_stream_stop_with_a_clear_error() {
    let server = nats_server(&["--user", "pglive", "--pass", "right-secret"]);
    let db = TestDb::new("nats_auth");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let base = db.config(&["name = \"t\""], "");
    let at = format!("nats://127.0.0.1:{}", server.port);
    let with = |url: &str, extra: &str| format!("{base}{}", sink(&server, extra).replace(&at, url));
    let good = with(
        &format!("nats://pglive:right-secret@127.0.0.1:{}", server.port),
        "",
    );
    setup(&good);
    let (code, out, _) = pglive(&["check"], &good);
    assert!(
        out.contains(&format!("ok    sinks[1]: connected to {at}")),
        "{code} {out}"
    );
    let cases = [
        (
            with(
                &format!("nats://pglive:wrong-secret@127.0.0.1:{}", server.port),
                "",
            ),
            "user name and password",
        ),
        (
            with(
                &format!("nats://pglive:right-secret@127.0.0.1:{}", server.port),
                "create_stream = false",
            )
            .replace("create_stream = true\n", ""),
            "no JetStream stream takes subject \"pglive.resources.t\"",
        ),
    ];
    for (bad, expect) in cases {
        let mut d = Daemon::run(&bad);
        let status = d.wait_exit(Duration::from_secs(30));
        assert_eq!(status.code(), Some(1), "{}", d.stderr());
        let err = d.stderr();
        assert!(
            err.contains("sinks[1] (nats)") && err.contains(expect),
            "{err}"
        );
        assert!(!err.contains("-secret"), "no password is shown: {err}");
        assert_eq!(
            err.matches("NATS publishing interrupted").count(),
            0,
            "no retries: {err}"
        );
        let (code, out, _) = pglive(&["check"], &bad);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("FAIL  sinks[1]: cannot use the NATS server"),
            "{out}"
        );
        assert!(out.contains(expect) && !out.contains("-secret"), "{out}");
    }
}

#[test]
fn tls_verifies_the_server_against_ca_file() {
    let db = TestDb::new("nats_tls");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let certs = &db.cluster.dir;
    let path = |f: &str| certs.join(f).display().to_string();
    let (crt, key) = (path("server.crt"), path("server.key"));
    let server = nats_server(&["--tls", "--tlscert", &crt, "--tlskey", &key]);
    let config = |ca: &std::path::Path| {
        let entry = sink(&server, &format!("ca_file = \"{}\"", ca.display())).replace(
            &format!("nats://127.0.0.1:{}", server.port),
            &format!("tls://localhost:{}", server.port),
        );
        format!("{}{entry}", db.config(&["name = \"t\""], ""))
    };
    let trusted = config(&db.cluster.ca_cert());
    setup(&trusted);
    let (code, out, _) = pglive(&["check"], &trusted);
    assert!(
        out.contains(&format!(
            "ok    sinks[1]: connected to tls://localhost:{}",
            server.port
        )),
        "{code} {out}"
    );
    let d = Daemon::run(&trusted);
    d.wait_log("publishing to NATS JetStream");
    db.sql("INSERT INTO t VALUES (1)");
    let events = d.wait_events("the event on stdout", |e| !e.is_empty());
    // The slot passes it only once the stream acknowledged it, over TLS.
    let commit = db.lsn(events[0]["meta"]["lsn"].as_str().unwrap());
    wait_until("the slot to pass the event", || {
        db.confirmed_flush().unwrap_or(0) >= commit
    });
    drop(d);

    // A server whose certificate the configured CA did not sign is refused, and not retried.
    let untrusted = config(&db.cluster.other_ca_cert());
    let (code, out, _) = pglive(&["check"], &untrusted);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  sinks[1]: cannot use the NATS server"),
        "{out}"
    );
    let mut d = Daemon::run(&untrusted);
    let status = d.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", d.stderr());
    let err = d.stderr();
    assert!(
        err.contains("sinks[1] (nats)") && err.contains("set ca_file"),
        "{err}"
    );
}

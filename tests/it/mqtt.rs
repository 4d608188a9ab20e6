//! The MQTT sink against a Mosquitto of the test's own, read by a persistent-session QoS 1
//! subscriber: every committed change arrives, in order per channel (duplicates only as
//! repeats of one meta.id), while the broker restarts and pglive is SIGKILLed; and refused
//! credentials stop pglive and fail `pglive check`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

use crate::support::service::Service;
use crate::support::{Daemon, TestDb, WAIT, pglive, setup, wait_until};

/// A Mosquitto on a free port, persisting its sessions and queues to its data directory, with
/// `auth` as its authentication settings.
fn mosquitto(auth: &'static str) -> Service {
    mosquitto_with(auth.to_owned())
}

/// A Mosquitto as [`mosquitto`] makes, with `settings` after its `listener` line.
fn mosquitto_with(settings: String) -> Service {
    Service::start(
        "mosquitto",
        Box::new(move |port: u16, dir: &Path| {
            let conf = dir.join("mosquitto.conf");
            let text = format!(
                "listener {port} 127.0.0.1\n{settings}\npersistence true\npersistence_location {}/\n\
                 # Queue everything for offline subscribers (the default keeps 1000).\n\
                 max_queued_messages 0\n\
                 # Keep root when run as root, so that the data directory stays writable.\n\
                 user root\nlog_dest stdout\n",
                dir.display()
            );
            std::fs::write(&conf, text).unwrap();
            let mut cmd = Command::new("/usr/sbin/mosquitto");
            cmd.arg("-c").arg(conf);
            cmd
        }),
    )
}

/// What a subscriber received: (topic, payload) in arrival order.
type Received = Arc<Mutex<Vec<(String, Value)>>>;

/// A subscriber with a persistent session (clean_session = false) to `resources/#` at QoS 1,
/// subscribed when this returns. It reconnects whenever the broker goes away; the broker keeps
/// its subscription and queues its messages meanwhile.
struct Subscriber {
    received: Received,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    fn start(port: u16) -> Subscriber {
        let received: Received = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let subscribed = Arc::new(AtomicBool::new(false));
        let (r, s, sub) = (received.clone(), stop.clone(), subscribed.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(read(port, r, s, sub));
        });
        wait_until("the subscriber to be subscribed", || {
            subscribed.load(Ordering::SeqCst)
        });
        Subscriber {
            received,
            stop,
            thread: Some(thread),
        }
    }

    fn received(&self) -> Vec<(String, Value)> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until the messages received hold rows `1..=last` of table `t` (and of `u`).
    #[track_caller]
    fn wait_rows(&self, last: i64) -> Vec<(String, Value)> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.received();
            if rows(&got, "t").range(..=last).count() == last as usize
                && rows(&got, "u").range(..=last).count() == last as usize
            {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for rows 1..={last} of t and u; got {} messages",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn read(port: u16, received: Received, stop: Arc<AtomicBool>, subscribed: Arc<AtomicBool>) {
    let mut options = MqttOptions::new("it-reader", "127.0.0.1", port);
    options.set_clean_session(false);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .subscribe("resources/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    while !stop.load(Ordering::SeqCst) {
        let polled = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
        match polled {
            Err(_) => {}
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => subscribed.store(true, Ordering::SeqCst),
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let event: Value = serde_json::from_slice(&p.payload).unwrap();
                received.lock().unwrap().push((p.topic, event));
            }
            Ok(Ok(_)) => {}
            // The broker is away: poll again after a pause (polling reconnects).
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The row ids received of table `table`.
fn rows(got: &[(String, Value)], table: &str) -> BTreeSet<i64> {
    got.iter()
        .filter(|(_, e)| e["meta"]["table"] == table)
        .flat_map(|(_, e)| e["payload"]["ids"].as_array().cloned().unwrap_or_default())
        .map(|id| id.as_i64().unwrap())
        .collect()
}

/// Each message is on its channel's topic; a meta.id seen twice carried the same event both
/// times; and per channel, events first arrive in commit order (row ids grow, as each
/// transaction inserts the next ids).
#[track_caller]
fn assert_ordered_without_stray_duplicates(got: &[(String, Value)]) {
    let mut by_id: BTreeMap<String, &Value> = BTreeMap::new();
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for (topic, event) in got {
        assert_eq!(event["channel"], topic.as_str(), "topic of {event}");
        let id = event["meta"]["id"].as_str().unwrap().to_owned();
        if let Some(earlier) = by_id.insert(id.clone(), event) {
            assert_eq!(earlier, event, "meta.id {id} came with two events");
            continue;
        }
        let row = event["payload"]["ids"][0].as_i64().unwrap();
        let before = last.insert(topic.clone(), row).unwrap_or(0);
        assert!(
            row > before,
            "on {topic}, row {row} first arrived after row {before}"
        );
    }
}

/// Rows `from..=to` of both tables, one transaction per row.
fn insert(db: &TestDb, from: i64, to: i64) {
    for id in from..=to {
        db.sql(&format!(
            "BEGIN; INSERT INTO t VALUES ({id}); INSERT INTO u VALUES ({id}); COMMIT"
        ));
    }
}

/// Tables `t` and `u` (channels resources/t and resources/u), one event per row, to stdout
/// and to the broker at `url` with `extra` keys.
fn per_row(name: &str, url: &str, extra: &str) -> (TestDb<'static>, String) {
    let db = TestDb::new(name);
    db.sql("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE u (id int PRIMARY KEY)");
    let config = format!(
        "{}[[sinks]]\ntype = \"mqtt\"\nurl = \"{url}\"\nmax_backoff = \"1s\"\n\
         timeout = \"5s\"\n{extra}\n",
        db.config(
            &["name = \"t\"", "name = \"u\""],
            "[events]\ncoalesce = false"
        ),
    );
    (db, config)
}

#[test]
fn every_change_arrives_in_order_across_a_broker_restart_and_a_killed_pglive() {
    let mut broker = mosquitto("allow_anonymous true");
    let reader = Subscriber::start(broker.port);
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let (db, config) = per_row("mqtt_order", &url, "max_inflight = 8");
    setup(&config);
    let (code, out, err) = pglive(&["check"], &config);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("authenticated"), "{out}");

    let mut d = Daemon::run(&config);
    insert(&db, 1, 20);
    reader.wait_rows(20);

    // The broker restarts while writes go on. It stops on SIGTERM, which makes Mosquitto write
    // its persistence file (the subscriber's session and queued messages); a SIGKILLed
    // Mosquitto would lose what it acknowledged since its last autosave, which no publisher
    // can prevent.
    let written = std::thread::scope(|s| {
        let writer = s.spawn(|| insert(&db, 21, 80));
        reader.wait_rows(30);
        broker.restart_gracefully();
        writer.join().unwrap();
        80
    });
    d.wait_log("MQTT publishing interrupted");
    reader.wait_rows(written);

    // pglive is SIGKILLed with writes behind it, and started again: it publishes from the
    // slot's position, so some messages may come twice.
    insert(&db, 81, 100);
    d.kill();
    insert(&db, 101, 120);
    let d = Daemon::run(&config);
    insert(&db, 121, 140);
    let got = reader.wait_rows(140);

    assert_ordered_without_stray_duplicates(&got);
    assert_eq!(rows(&got, "t"), (1..=140).collect());
    assert_eq!(rows(&got, "u"), (1..=140).collect());
    let events = d.wait_events("the last row on stdout", |e| {
        e.iter().any(|e| e["payload"]["ids"][0] == 140)
    });
    let last = db.lsn(events.last().unwrap()["meta"]["lsn"].as_str().unwrap());
    wait_until("the slot to pass the last transaction", || {
        db.confirmed_flush().unwrap_or(0) >= last
    });
}

#[test]
fn refused_credentials_stop_pglive_and_fail_the_check() {
    let broker = mosquitto("allow_anonymous false\npassword_file /dev/null");
    let url = format!("mqtt://pglive:WRONGPW@127.0.0.1:{}", broker.port);
    let (db, config) = per_row("mqtt_auth", &url, "");
    setup(&config);

    let (code, out, err) = pglive(&["check"], &config);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        out.contains("sinks[1]") && out.contains("refused the connection"),
        "{out}"
    );
    assert!(!out.contains("WRONGPW"), "{out}");

    let mut d = Daemon::run(&config);
    insert(&db, 1, 1);
    let status = d.wait_exit(WAIT);
    let err = d.stderr();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("sinks[1] (mqtt)"), "{err}");
    assert!(err.contains("refused the connection"), "{err}");
    assert!(!err.contains("WRONGPW"), "{err}");
}

#[test]
fn mqtts_verifies_the_broker_against_ca_file() {
    // The harness cluster's certificate (CN and SAN localhost), signed by its test CA.
    let cluster = crate::support::Cluster::shared();
    let broker = mosquitto_with(format!(
        "allow_anonymous true\ncertfile {}\nkeyfile {}",
        cluster.dir.join("server.crt").display(),
        cluster.dir.join("server.key").display()
    ));
    let url = format!("mqtts://localhost:{}", broker.port);
    let ca = |path: std::path::PathBuf| format!("ca_file = \"{}\"", path.display());
    let (db, trusted) = per_row("mqtt_tls", &url, &ca(cluster.ca_cert()));
    setup(&trusted);
    let (code, out, err) = pglive(&["check"], &trusted);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok    sinks[1]: connected to mqtts://"),
        "{out}"
    );
    let d = Daemon::run(&trusted);
    insert(&db, 1, 3);
    // The slot passes the rows only once the broker has acknowledged them over TLS.
    let events = d.wait_events("three rows of t and u", |e| e.len() >= 6);
    let last = db.lsn(events.last().unwrap()["meta"]["lsn"].as_str().unwrap());
    wait_until("the slot to pass the last row", || {
        db.confirmed_flush().unwrap_or(0) >= last
    });
    drop(d);

    // A broker whose certificate the configured CA did not sign is refused, and not retried.
    let untrusted = trusted.replace(&ca(cluster.ca_cert()), &ca(cluster.other_ca_cert()));
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
        err.contains("sinks[1] (mqtt)") && err.contains("set ca_file"),
        "{err}"
    );
}

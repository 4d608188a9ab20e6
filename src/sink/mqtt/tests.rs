//! Broker URLs, topics, packet sizes, matching PUBACKs, and the shared sink contract against a
//! Mosquitto of the test's own.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use futures_util::FutureExt;
use tokio::sync::mpsc;

use super::*;

#[test]
fn urls_are_checked_and_shown_without_their_password() {
    let u = MqttUrl::parse("mqtt://u%40x:p%40ss@10.1.2.3:1884", None).unwrap();
    assert_eq!(u.to_string(), "mqtt://u%40x:********@10.1.2.3:1884");
    assert_eq!((u.host.as_str(), u.port, u.tls), ("10.1.2.3", 1884, false));
    assert_eq!(u.username.as_deref(), Some("u@x"));
    assert_eq!(u.password.as_deref(), Some("p@ss"));
    let u = MqttUrl::parse("mqtts://pub@[::1]", Some("from file")).unwrap();
    assert_eq!((u.host.as_str(), u.port, u.tls), ("::1", 8883, true));
    assert_eq!(u.password.as_deref(), Some("from file"));
    assert!(!format!("{u} {u:?}").contains("from file"));
    let u = MqttUrl::parse("mqtt://broker/", None).unwrap();
    assert_eq!((u.to_string().as_str(), u.port), ("mqtt://broker", 1883));
    assert!(u.username.is_none() && u.password.is_none());

    for bad in [
        "mqtt://u:sec#ret@h",
        "mqtt://u:sec/ret@h",
        "mqtt://u:sec?ret@h",
        "mqtt://:secret@h",
        "mqtt://u:secret@/",
    ] {
        let err = MqttUrl::parse(bad, None).unwrap_err();
        assert!(!err.contains("ret"), "{bad}: {err}");
    }
    assert!(
        MqttUrl::parse("ws://h:9001", None)
            .unwrap_err()
            .contains("mqtt://")
    );
}

#[test]
fn topics_are_the_channels_after_the_prefix_and_checked() {
    let mut c = config(1883);
    assert_eq!(c.topic("resources/posts"), "resources/posts");
    c.topic_prefix = Some("pglive".into());
    assert_eq!(c.topic("resources/posts"), "pglive/resources/posts");
    assert!(check_topic("pglive/resources/posts").is_ok());
    for (bad, why) in [
        ("a/+/b", "'+'"),
        ("a/#", "'#'"),
        ("a\0b", "'\\0'"),
        ("", "empty"),
        ("$SYS/x", "starts with $"),
    ] {
        let err = check_topic(bad).unwrap_err();
        assert!(err.contains(why), "{bad:?}: {err}");
    }
    assert!(check_topic(&"a".repeat(MAX_TOPIC_BYTES)).is_ok());
    assert!(
        check_topic(&"a".repeat(MAX_TOPIC_BYTES + 1))
            .unwrap_err()
            .contains("65535")
    );
}

#[test]
fn packet_sizes_are_counted_as_the_client_counts_them() {
    for (topic, payload) in [(5, 0), (10, 100), (10, 200), (20, 20_000), (3, 3_000_000)] {
        let mut p = rumqttc::Publish::new("t".repeat(topic), QoS::AtLeastOnce, vec![0; payload]);
        p.pkid = 7;
        assert_eq!(packet_size(topic, payload), p.size(), "{topic} {payload}");
    }
}

#[test]
fn pubacks_are_matched_by_packet_id_in_any_order() {
    let mut t = Tracker::default();
    for pkid in [1, 2, 3] {
        t.written(pkid);
    }
    assert_eq!(t.acked(2), None, "message 1 is still pending");
    assert_eq!(t.acked(9), None, "an unknown packet id is ignored");
    assert_eq!(t.acked(1), Some(2));
    // Packet id 1 comes round again for message 4.
    t.written(1);
    assert_eq!(t.acked(3), Some(3));
    assert_eq!(t.acked(1), Some(4));
    assert!(t.pending.is_empty() && t.early.is_empty());
}

#[tokio::test]
async fn deliveries_resolve_once_their_last_message_is_acknowledged() {
    let progress = Arc::new(Mutex::new((0, 0)));
    let acks = Acks::new(progress.clone());
    let mut a = acks.wait(1, 0, 1, 2);
    let mut b = acks.wait(2, 3, 3, 5);
    acks.advance(1);
    assert_eq!(*lock(&progress), (1, 1));
    assert!((&mut a).now_or_never().is_none());
    acks.advance(4);
    assert!(a.await.is_ok());
    assert_eq!(*lock(&progress), (2, 3 + 2), "skipped, then 3 and 4");
    acks.fail(SinkError::retryable(NAME, "gone"));
    assert_eq!(b.as_mut().await.unwrap_err().message, "gone");
    assert!(acks.wait(3, 0, 6, 6).await.is_err(), "later ones fail too");
}

#[test]
fn refusals_for_credentials_and_authorisation_are_fatal() {
    let message = |code| match classify(ConnectionError::ConnectionRefused(code)) {
        Failure::Fatal(m) => m,
        Failure::Retry(m) => panic!("{code:?} retried: {m}"),
    };
    assert!(message(ConnectReturnCode::BadUserNamePassword).contains("bad user name or password"));
    assert!(message(ConnectReturnCode::NotAuthorized).contains("not authorised"));
    assert!(matches!(
        classify(ConnectionError::ConnectionRefused(
            ConnectReturnCode::ServiceUnavailable
        )),
        Failure::Retry(_)
    ));
}

fn config(port: u16) -> MqttSinkConfig {
    MqttSinkConfig {
        url: MqttUrl::parse(&format!("mqtt://127.0.0.1:{port}"), None).unwrap(),
        client_id: None,
        topic_prefix: None,
        keep_alive: DEFAULT_KEEP_ALIVE,
        max_inflight: 3,
        max_packet_size: MAX_PACKET_SIZE,
        timeout: Duration::from_secs(5),
        max_backoff: Duration::from_secs(1),
        ca_file: None,
    }
}

/// A Mosquitto of the test's own on a free port; killed when dropped.
struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// `auth`: the authentication settings (anonymous when empty).
    fn start(auth: &str) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n{}\n",
                if auth.is_empty() {
                    "allow_anonymous true"
                } else {
                    auth
                }
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the MQTT tests need /usr/sbin/mosquitto (scripts/prereqs.sh installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A subscriber to `filter` at QoS 1, subscribed when this returns; its messages' payloads
/// arrive on the receiver.
async fn subscribe(port: u16, filter: &str) -> (mpsc::Receiver<Vec<u8>>, AbortOnDropHandle<()>) {
    let options = MqttOptions::new("contract-reader", "127.0.0.1", port);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = mpsc::channel(1000);
    let (subscribed, ready) = oneshot::channel();
    let task = tokio::spawn(async move {
        let _client = client;
        let mut subscribed = Some(subscribed);
        loop {
            match eventloop.poll().await.unwrap() {
                Event::Incoming(Packet::SubAck(_)) => {
                    subscribed.take().map(|s| s.send(()));
                }
                Event::Incoming(Packet::Publish(p)) => tx.send(p.payload.to_vec()).await.unwrap(),
                _ => {}
            }
        }
    });
    ready.await.unwrap();
    (rx, AbortOnDropHandle::new(task))
}

#[tokio::test]
async fn meets_the_sink_contract_with_a_window_smaller_than_a_batch() {
    let broker = Mosquitto::start("");
    let (mut rx, _reader) = subscribe(broker.port, "resources/#").await;
    let sink = MqttSink::new(config(broker.port), "contract");
    let read = async |n| {
        let mut out = Vec::new();
        while out.len() < n {
            let next = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
            out.push(next.expect("every message arrives").unwrap());
        }
        out
    };
    crate::sink::contract::check(sink, read).await;
}

#[tokio::test]
async fn an_event_larger_than_max_packet_size_stops_the_sink_naming_it() {
    let broker = Mosquitto::start("");
    let mut c = config(broker.port);
    c.max_packet_size = 128;
    let mut sink = MqttSink::new(c, "big");
    sink.connect().await.unwrap();
    let event = crate::sink::contract::event(1);
    let batch = Arc::new(Batch {
        seq: 1,
        events: vec![event],
    });
    let err = match sink.send(batch).await {
        Err(e) => e,
        Ok(_) => panic!("an event over max_packet_size is refused"),
    };
    assert!(!err.retryable);
    assert!(
        err.message.contains("public.t") && err.message.contains("max_packet_size (128)"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_credentials_are_fatal_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let passwords = dir.path().join("passwords");
    // mosquitto_passwd's format; the hash is of "right" (PBKDF2-SHA512).
    std::fs::write(&passwords, "").unwrap();
    let broker = Mosquitto::start(&format!(
        "allow_anonymous false\npassword_file {}",
        passwords.display()
    ));
    let mut c = config(broker.port);
    c.url = MqttUrl::parse(&format!("mqtt://pub:wrong@127.0.0.1:{}", broker.port), None).unwrap();
    let mut sink = MqttSink::new(c.clone(), "auth");
    let err = sink.connect().await.unwrap_err();
    assert!(!err.retryable, "{err}");
    assert!(err.message.contains("refused the connection"), "{err}");
    assert!(!err.message.contains("wrong"), "{err}");
    let err = probe(&c).await.unwrap_err();
    assert!(err.contains("refused the connection"), "{err}");
}

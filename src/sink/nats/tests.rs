//! Subjects and URLs; the shared sink contract, stream creation,
//! deduplication and a missing stream against a nats-server of the tests' own.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::subject::{check_prefix, subject};
use super::*;
use crate::sink::contract;

#[test]
fn channels_become_subjects_token_by_token() {
    assert_eq!(
        subject("pglive", "resources/posts").unwrap(),
        "pglive.resources.posts"
    );
    assert_eq!(subject("app.live", "a/b/c").unwrap(), "app.live.a.b.c");
    // A dot inside a segment would add a token: it becomes `_`.
    assert_eq!(
        subject("pglive", "resources/app.posts").unwrap(),
        "pglive.resources.app_posts"
    );
    // Other characters are kept.
    assert_eq!(
        subject("pglive", "resources/café-1").unwrap(),
        "pglive.resources.café-1"
    );
    for bad in [
        "resources/my posts",
        "resources/*",
        "resources/>",
        "resources//posts",
        "/posts",
        "resources/",
        "a/b\0",
        "a/b\tc",
    ] {
        let err = subject("pglive", bad).expect_err(bad);
        assert!(err.contains("cannot become a NATS subject"), "{err}");
    }
    for bad in ["", "a..b", ".a", "a.", "$JS", "a b", "a.*", "a.>"] {
        assert!(check_prefix(bad).is_err(), "{bad:?}");
    }
    assert!(check_prefix("app.live_1").is_ok());
}

#[test]
fn urls_keep_credentials_apart_and_never_show_them() {
    let p = NatsUrl::parse("nats://u:p%40ss@10.1.2.3").unwrap();
    assert_eq!(p.url.to_string(), "nats://10.1.2.3:4222");
    assert_eq!(p.user.as_deref(), Some("u"));
    assert_eq!(p.password.as_deref(), Some("p@ss"));
    let p = NatsUrl::parse("tls://s3cret-token@[::1]:4443").unwrap();
    assert_eq!(p.url.to_string(), "tls://[::1]:4443");
    assert!(p.url.tls());
    for bad in [
        "nats://u:1234?SECRET@h",
        "nats://u:1234#SECRET@h",
        "nats://u:1234/SECRET@h",
        "http://u:SECRET@h",
        "nats://u:SECRET@/",
    ] {
        let err = NatsUrl::parse(bad).map(|_| ()).expect_err(bad);
        assert!(!err.contains("SECRET"), "{bad}: {err}");
    }
}

/// A nats-server with JetStream of the tests' own, on a free port; killed when dropped.
struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("/usr/sbin/nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the NATS tests need nats-server (scripts/prereqs.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server does not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child,
            port,
            _dir: dir,
        }
    }

    fn config(&self, stream: Option<&str>, create: bool) -> NatsSinkConfig {
        NatsSinkConfig {
            url: NatsUrl::parse(&format!("nats://127.0.0.1:{}", self.port))
                .unwrap()
                .url,
            auth: NatsAuth::None,
            subjects: Subjects::new("pglive", ["resources/t"]).unwrap(),
            stream: stream.map(str::to_owned),
            create_stream: create,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            max_inflight: 3,
            timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(1),
            tls: false,
            ca_file: None,
        }
    }

    async fn js(&self) -> jetstream::Context {
        let client = async_nats::connect(format!("127.0.0.1:{}", self.port))
            .await
            .unwrap();
        jetstream::new(client)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every message of `stream`, in order: (Nats-Msg-Id, body).
async fn read_stream(js: &jetstream::Context, stream: &str) -> Vec<(String, Vec<u8>)> {
    let stream = js.get_stream(stream).await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let total = stream.get_info().await.unwrap().state.messages as usize;
    let mut messages = consumer.messages().await.unwrap().take(total);
    let mut out = Vec::new();
    while let Some(m) = messages.next().await {
        let m = m.unwrap();
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.to_string())
            .unwrap_or_default();
        out.push((id, m.payload.to_vec()));
    }
    out
}

#[tokio::test]
async fn meets_the_sink_contract_with_a_window_smaller_than_a_batch() {
    let server = Server::start();
    let sink = NatsSink::new(server.config(Some("PGLIVE"), true));
    let js = server.js().await;
    let read = async |_| {
        read_stream(&js, "PGLIVE")
            .await
            .into_iter()
            .map(|(_, body)| body)
            .collect()
    };
    contract::check(sink, read).await;

    // The same events again (a restart replaying from the slot): the stream keeps one of each,
    // and each carries its meta.id as Nats-Msg-Id.
    let sink = NatsSink::new(server.config(Some("PGLIVE"), false));
    let again = async |_| {
        read_stream(&js, "PGLIVE")
            .await
            .into_iter()
            .map(|(_, b)| b)
            .collect()
    };
    contract::check(sink, again).await;
    let stored = read_stream(&js, "PGLIVE").await;
    for (id, body) in &stored {
        let event: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(event["meta"]["id"].as_str(), Some(id.as_str()));
    }
    let info = js.get_stream("PGLIVE").await.unwrap();
    let config = &info.cached_info().config;
    assert_eq!(config.subjects, ["pglive.>"]);
    assert_eq!(config.storage, StorageType::File);
    assert_eq!(config.duplicate_window, DEFAULT_DUPLICATE_WINDOW);
}

#[tokio::test]
async fn a_missing_stream_stops_with_an_error_naming_the_subject() {
    let server = Server::start();
    let mut sink = NatsSink::new(server.config(None, false));
    let err = sink.connect().await.unwrap_err();
    assert!(!err.retryable, "{err}");
    assert!(err.to_string().contains("\"pglive.resources.t\""), "{err}");
    let err = probe(&server.config(None, false)).await.unwrap_err();
    assert!(err.contains("no JetStream stream takes subject"), "{err}");
    assert!(
        probe(&server.config(Some("NEW"), true))
            .await
            .unwrap()
            .contains("will be created")
    );

    // A stream of another name holding the subjects is refused when a stream is named.
    let js = server.js().await;
    js.create_stream(StreamConfig {
        name: "OTHER".into(),
        subjects: vec!["pglive.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let err = probe(&server.config(Some("MINE"), false))
        .await
        .unwrap_err();
    assert!(err.contains("taken by stream \"OTHER\""), "{err}");
    assert!(probe(&server.config(None, false)).await.is_ok());
}

#[tokio::test]
async fn a_lost_connection_fails_the_delivery_at_once() {
    let mut server = Server::start();
    let mut sink = NatsSink::new(server.config(Some("PGLIVE"), true));
    sink.connect().await.unwrap();
    let batch = Arc::new(Batch {
        seq: 1,
        events: (0..2).map(contract::event).collect(),
    });
    let delivery = sink.send(batch.clone()).await.unwrap();
    delivery.await.unwrap();
    let _ = server.child.kill();
    let _ = server.child.wait();
    let batch = Arc::new(Batch {
        seq: 2,
        events: (2..4).map(contract::event).collect(),
    });
    let failed = async {
        sink.send(batch).await?.await?;
        Ok::<(), SinkError>(())
    };
    let err = tokio::time::timeout(Duration::from_secs(4), failed)
        .await
        .expect("fails before the PubAck timeout")
        .unwrap_err();
    assert!(err.retryable, "{err}");
}

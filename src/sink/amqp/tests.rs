//! The publishing window, the shared sink contract against the local broker, and broker
//! URLs.

use std::sync::Arc;

use super::*;

fn config(max_inflight: usize, max_inflight_bytes: usize) -> AmqpSinkConfig {
    AmqpSinkConfig {
        url: AmqpUrl::parse("amqp://guest:guest@127.0.0.1:5672/%2f", None).unwrap(),
        exchange: "pglive".into(),
        declare: true,
        routing_key: RoutingKey::parse(DEFAULT_TEMPLATE).unwrap(),
        mandatory: true,
        on_reject: OnReject::Retry,
        max_inflight,
        max_inflight_bytes,
        connect_timeout: Duration::from_secs(1),
        max_backoff: Duration::from_secs(1),
        ca_file: None,
        stream: None,
    }
}

#[test]
fn the_window_bounds_messages_and_bytes_in_flight_until_confirmed() {
    let w = Arc::new(Window::new(2, 1 << 20));
    let a = w.try_take(10).unwrap();
    let b = w.try_take(10).unwrap();
    assert!(w.try_take(10).is_none(), "two messages at most");
    drop(a);
    let c = w.try_take(10).unwrap();
    drop((b, c));
    assert_eq!(*lock(&w.used), (0, 0), "every place given back");

    // One message may pass the byte limit, but nothing starts while it is over.
    let w = Arc::new(Window::new(100, 100));
    let big = w.try_take(150).unwrap();
    assert!(w.try_take(1).is_none());
    drop(big);
    assert!(w.try_take(1).is_some());
}

/// A queue bound to a new exchange on the local broker, for the sink's output.
async fn broker_queue(name: &str) -> (AmqpSinkConfig, lapin::Channel) {
    let mut c = config(4, 1 << 20);
    c.exchange = name.to_owned();
    let conn = connect(&c)
        .await
        .map_err(failure_message)
        .expect("the contract test needs RabbitMQ on 127.0.0.1:5672 (scripts/test.sh starts it)");
    let ch = conn.create_channel().await.unwrap();
    let opts = lapin::options::QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    ch.exchange_declare(
        name.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(name.into(), opts, FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(
        name.into(),
        name.into(),
        "#".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    c.declare = false;
    (c, ch)
}

#[tokio::test]
async fn meets_the_sink_contract_with_a_window_smaller_than_a_batch() {
    let name = format!("pglive-contract-{}", std::process::id());
    let (c, ch) = broker_queue(&name).await;
    let sink = AmqpSink::new(c, crate::sink::Lane::single().status().clone());
    let read = async |_| {
        let mut out = Vec::new();
        while let Some(m) = ch
            .basic_get(
                name.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            out.push(m.delivery.data.clone());
        }
        out
    };
    crate::sink::contract::check(sink, read).await;
}

#[test]
fn urls_are_checked_and_shown_without_their_password() {
    let u = AmqpUrl::parse("amqp://u:p%40ss@10.1.2.3:5673/v?heartbeat=5", None).unwrap();
    assert_eq!(
        u.to_string(),
        "amqp://u:********@10.1.2.3:5673/v?heartbeat=5"
    );
    let uri = u.uri();
    assert_eq!(
        uri.authority.host, "10.1.2.3",
        "an IP address is kept as the host"
    );
    assert_eq!(uri.authority.userinfo.password, "p@ss");
    assert_eq!(uri.vhost, "v");
    let u = AmqpUrl::parse("amqp://u@[::1]/", Some("from file")).unwrap();
    assert_eq!(u.uri().authority.host, "::1");
    assert_eq!(u.uri().authority.userinfo.password, "from file");
    let err = AmqpUrl::parse("amqp://u:secret@/x", None).unwrap_err();
    assert!(!err.contains("secret"), "{err}");
    assert!(
        AmqpUrl::parse("redis://h/", None)
            .unwrap_err()
            .contains("amqp://")
    );
}

#[test]
fn an_unencoded_password_is_never_echoed_and_the_error_says_to_encode_it() {
    for url in [
        "amqp://u:1234?SECRET@h/",
        "amqp://u:1234#SECRET@h/",
        "amqp://u:1234/SECRET@h/",
        "amqp://u:ab?SECRET@h/",
        "amqp://u:12%zSECRET?x@h/",
    ] {
        let err = AmqpUrl::parse(url, None).expect_err(url);
        assert!(!err.contains("SECRET"), "{url}: {err}");
        assert!(err.contains("percent-encoded"), "{url}: {err}");
    }
    // Encoded, the same password is fine.
    let u = AmqpUrl::parse("amqp://u:1234%3FSECRET@h/", None).unwrap();
    assert_eq!(u.uri().authority.userinfo.password, "1234?SECRET");
    assert!(!u.to_string().contains("SECRET"));
}

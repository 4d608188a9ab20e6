//! The publishing window: which event goes out next, when a batch may be acknowledged, and
//! what is published again after a failed session.

use std::sync::Arc;

use super::*;
use crate::event::{EventKind, EventSource, Id};
use crate::lsn::Lsn;

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
    }
}

/// Batch `seq` holding events with the given ids.
fn batch(seq: u64, ids: &[i64]) -> Arc<Batch> {
    let source = EventSource {
        channel: "resources/t".into(),
        schema: "public".into(),
        table: "t".into(),
        data_provider_name: None,
    };
    let events = ids
        .iter()
        .map(|&n| {
            let id = EventId {
                commit_lsn: Lsn(0x1000 + n as u64),
                ordinal: 0,
            };
            LiveEvent::new(&source, EventKind::Created, Some(&[Id::Int(n)]), id, 1, 0)
        })
        .collect();
    Arc::new(Batch { seq, events })
}

/// Publishes what the window allows; returns the ids published, in order.
fn publish(w: &mut Window, c: &AmqpSinkConfig) -> Vec<u64> {
    std::iter::from_fn(|| w.next_to_publish(c))
        .map(|(b, i)| b.events[i].id.commit_lsn.0 - 0x1000)
        .collect()
}

fn confirm(w: &mut Window, n: usize, board: &Lane) {
    for _ in 0..n {
        let bytes = w.batches[0].events[w.confirmed].json.len();
        w.confirm(bytes, board);
    }
}

#[test]
fn a_batch_is_acknowledged_only_when_all_its_messages_are_confirmed() {
    let c = config(100, 1 << 20);
    let board = Lane::single();
    let mut w = Window::default();
    w.push(batch(1, &[1, 2]), &board);
    w.push(batch(2, &[3]), &board);
    assert_eq!(publish(&mut w, &c), [1, 2, 3]);
    confirm(&mut w, 1, &board);
    assert_eq!(board.min_acked(), 0, "half of batch 1 is not batch 1");
    confirm(&mut w, 1, &board);
    assert_eq!(board.min_acked(), 1);
    confirm(&mut w, 1, &board);
    assert_eq!(board.min_acked(), 2);
    assert!(w.batches.is_empty() && w.inflight == 0 && w.inflight_bytes == 0);
}

#[test]
fn an_empty_batch_waits_for_the_batches_before_it() {
    let c = config(100, 1 << 20);
    let board = Lane::single();
    let mut w = Window::default();
    w.push(batch(1, &[1]), &board);
    w.push(batch(2, &[]), &board);
    assert_eq!(board.min_acked(), 0);
    assert_eq!(publish(&mut w, &c), [1]);
    confirm(&mut w, 1, &board);
    assert_eq!(board.min_acked(), 2);
    w.push(batch(3, &[]), &board);
    assert_eq!(
        board.min_acked(),
        3,
        "nothing before it: acknowledged at once"
    );
}

#[test]
fn the_window_bounds_messages_and_bytes_in_flight() {
    let board = Lane::single();
    let c = config(2, 1 << 20);
    let mut w = Window::default();
    w.push(batch(1, &[1, 2, 3]), &board);
    assert_eq!(publish(&mut w, &c), [1, 2]);
    assert!(
        !w.wants_batch(&c),
        "no new batch while this one is unpublished"
    );
    confirm(&mut w, 1, &board);
    assert_eq!(publish(&mut w, &c), [3]);
    assert!(!w.wants_batch(&c), "the window is full");
    confirm(&mut w, 1, &board);
    assert!(w.wants_batch(&c));

    // One event's bytes fill a window of one byte: one message at a time.
    let c = config(100, 1);
    let mut w = Window::default();
    w.push(batch(1, &[1, 2]), &board);
    assert_eq!(publish(&mut w, &c), [1]);
    confirm(&mut w, 1, &board);
    assert_eq!(publish(&mut w, &c), [2]);
}

#[test]
fn after_a_failure_everything_unconfirmed_is_published_again_in_order() {
    let c = config(100, 1 << 20);
    let board = Lane::single();
    let mut w = Window::default();
    w.push(batch(1, &[1, 2, 3]), &board);
    w.push(batch(2, &[4, 5]), &board);
    assert_eq!(publish(&mut w, &c), [1, 2, 3, 4, 5]);
    confirm(&mut w, 1, &board);
    assert_eq!(w.unconfirmed(), 4);
    w.rewind();
    assert_eq!(publish(&mut w, &c), [2, 3, 4, 5]);
    confirm(&mut w, 4, &board);
    assert_eq!(board.min_acked(), 2);
    assert_eq!(w.unconfirmed(), 0);
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

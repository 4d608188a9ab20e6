//! Signing, splitting a batch into requests, judging answers, and the shared sink contract
//! against a receiver in the test.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

use super::*;
use crate::event::LiveEvent;
use crate::sink::contract::event;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[test]
fn signs_the_specification_test_vector() {
    let secret = Secret::parse(SECRET).unwrap();
    assert_eq!(
        secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#
        ),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
    assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
    assert!(
        Secret::parse("whsec_c2hvcnQ=")
            .unwrap_err()
            .contains("24 to 64")
    );
    assert!(!format!("{secret:?}").contains("MfKQ"));
}

/// A Standard Webhooks format and its receiver's URL.
fn standard() -> (Format, url::Url) {
    let format = Format::Standard {
        secret: Secret::parse(SECRET).unwrap(),
        headers: vec![],
    };
    (format, "http://h/hook?t=1".parse().unwrap())
}

/// (webhook-id, body) of each request.
fn requests(events: &[LiveEvent], max_events: usize, max_bytes: usize) -> Vec<(String, Bytes)> {
    let (format, url) = standard();
    format
        .plan(&url, events, max_events, max_bytes)
        .into_iter()
        .map(|p| {
            assert_eq!(p.path, "/hook?t=1");
            (p.id, p.body)
        })
        .collect()
}

#[test]
fn a_batch_becomes_requests_within_both_limits() {
    let events: Vec<LiveEvent> = (1..=5).map(event).collect();
    let one = requests(&events, 1, 1 << 20);
    assert_eq!(one.len(), 5);
    assert_eq!(
        one[0].1.as_ref(),
        events[0].json.as_ref(),
        "one event: the object itself"
    );
    assert_eq!(one[2].0, events[2].id.to_string());
    let arrays = requests(&events, 2, 1 << 20);
    assert_eq!(arrays.len(), 3);
    let first: serde_json::Value = serde_json::from_slice(&arrays[0].1).unwrap();
    assert_eq!(first.as_array().unwrap().len(), 2);
    assert_eq!(
        arrays[1].0,
        format!("{}..{}", events[2].id, events[3].id).replace(':', "."),
        "a batch's id names its first and last events"
    );
    // A byte limit below one event: each goes alone.
    assert_eq!(requests(&events, 100, 10).len(), 5);
    let all = requests(&events, 100, 1 << 20);
    assert_eq!(all.len(), 1);
}

#[test]
fn a_batch_cut_differently_gets_another_webhook_id() {
    let events: Vec<LiveEvent> = (1..=3).map(event).collect();
    let two = requests(&events[..2], 10, 1 << 20);
    let three = requests(&events, 10, 1 << 20);
    assert_ne!(two[0].0, three[0].0, "[A,B,C] must not repeat [A,B]'s id");
    assert_eq!(three[0].0, "0/1001.0..0/1003.0");
    // One event: its meta.id exactly, also in an array.
    let one = requests(&events[..1], 10, 1 << 20);
    assert_eq!(one[0].0, events[0].id.to_string());
}

#[test]
fn answers_are_delivered_retried_or_rejected() {
    assert!(judge(StatusCode::NO_CONTENT, None, b"").is_ok());
    for code in [408, 429, 500, 503] {
        let status = StatusCode::from_u16(code).unwrap();
        assert!(
            matches!(judge(status, None, b""), Err(Failure::Retry(..))),
            "{code}"
        );
    }
    let long = "x".repeat(500);
    match judge(StatusCode::BAD_REQUEST, None, long.as_bytes()) {
        Err(Failure::Rejected(m)) => {
            assert!(
                m.contains("400") && m.contains(&"x".repeat(200)) && !m.contains(&long),
                "{m}"
            )
        }
        _ => panic!("a 400 is a rejection"),
    }
    assert!(matches!(
        judge(StatusCode::FOUND, None, b""),
        Err(Failure::Rejected(_))
    ));
    // Refused credentials refuse every request: fatal, never skipped.
    for code in [401, 403] {
        let status = StatusCode::from_u16(code).unwrap();
        match judge(status, None, b"bad signature") {
            Err(Failure::Fatal(m)) => assert!(m.contains("whatever on_rejected says"), "{m}"),
            _ => panic!("{code} is fatal"),
        }
    }
    let mut headers = hyper::HeaderMap::new();
    headers.insert(hyper::header::RETRY_AFTER, "7".parse().unwrap());
    assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
    headers.insert(hyper::header::RETRY_AFTER, "999999".parse().unwrap());
    assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
}

/// Bodies received, after checking each request's signature.
type Received = Arc<Mutex<Vec<Vec<u8>>>>;

async fn receive(State(got): State<Received>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let secret = Secret::parse(SECRET).unwrap();
    let header = |n: &str| headers.get(n).unwrap().to_str().unwrap().to_owned();
    let ts: u64 = header("webhook-timestamp").parse().unwrap();
    assert_eq!(
        header("webhook-signature"),
        secret.sign(&header("webhook-id"), ts, &body)
    );
    assert_eq!(header("x-extra"), "yes");
    got.lock().unwrap().push(body.to_vec());
    StatusCode::NO_CONTENT
}

#[tokio::test]
async fn meets_the_sink_contract_against_a_receiver() {
    let got: Received = Arc::default();
    let app = axum::Router::new()
        .route("/hook", post(receive))
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let config = WebhookSinkConfig {
        url: format!("http://{addr}/hook?token=t").parse().unwrap(),
        format: Format::Standard {
            secret: Secret::parse(SECRET).unwrap(),
            headers: vec![Header {
                name: HeaderName::from_static("x-extra"),
                value: HeaderValue::from_static("yes"),
            }],
        },
        channels: vec![],
        timeout: Duration::from_secs(5),
        ca_file: None,
        batch_max_events: 1,
        batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
        on_rejected: OnRejected::Fail,
        max_backoff: Duration::from_millis(10),
    };
    let lane = crate::sink::Lane::single();
    let sink = WebhookSink::new(config, lane.status());
    crate::sink::contract::check(sink, async |_| got.lock().unwrap().clone()).await;
    server.abort();
}

#[test]
fn logs_and_errors_show_the_receiver_without_its_path_or_query() {
    let url: url::Url = "https://hooks.example.com/services/T0/B0/SECRETPATH?token=SECRETQ"
        .parse()
        .unwrap();
    assert_eq!(shown(&url), "https://hooks.example.com/…");
    let bare: url::Url = "http://127.0.0.1:8080/".parse().unwrap();
    assert_eq!(shown(&bare), "http://127.0.0.1:8080");
}

mod presets;

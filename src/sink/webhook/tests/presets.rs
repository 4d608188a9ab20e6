//! The presets: bodies, paths, authentication and signatures, Centrifugo's answers, channel
//! names, and the sink contract against an in-process receiver per preset.

use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::super::*;
use crate::event::{EventId, EventKind, EventSource, Id, LiveEvent};
use crate::lsn::Lsn;
use crate::sink::contract::event;

fn ably() -> Format {
    Format::Ably {
        key: Key("app.key:secret".into()),
    }
}

fn centrifugo() -> Format {
    Format::Centrifugo {
        key: Key("api-key".into()),
        channels: ChannelMap {
            prefix: String::new(),
            separator: ":".into(),
        },
    }
}

fn pusher(app_id: &str, key: &str, secret: &str) -> Pusher {
    Pusher {
        app_id: app_id.into(),
        key: key.into(),
        secret: Key(secret.into()),
        channels: ChannelMap {
            prefix: "p-".into(),
            separator: "-".into(),
        },
    }
}

fn base() -> url::Url {
    "http://relay/prefix/".parse().unwrap()
}

fn events_on(channels: &[&str]) -> Vec<LiveEvent> {
    channels
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut e = event(i as u64 + 1);
            e.channel = (*c).into();
            e
        })
        .collect()
}

fn body(p: &Planned) -> Value {
    serde_json::from_slice(&p.body).unwrap()
}

fn event_json(e: &LiveEvent) -> Value {
    serde_json::from_slice(&e.json).unwrap()
}

#[test]
fn pusher_signs_the_documented_test_vector() {
    let p = pusher("3", "278d425bdf160c739803", "7ad3773142a6692b25b8");
    let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
    let signed = p.sign("POST", "/apps/3/events", body, 1353088179);
    assert_eq!(
        signed,
        "/apps/3/events?auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
         &body_md5=ec365a775a4cd0599faeb73354201b6f\
         &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
    );
    assert!(
        !format!("{p:?}").contains("7ad377"),
        "the secret is not shown"
    );
}

#[test]
fn ably_publishes_runs_of_one_channel_with_indexed_ids() {
    let events = events_on(&["resources/a", "resources/a", "resources/b c", "resources/a"]);
    let plans = ably().plan(&base(), &events, 10, 1 << 20);
    assert_eq!(plans.len(), 3, "a request per run of one channel");
    assert_eq!(plans[0].path, "/prefix/channels/resources%2Fa/messages");
    assert_eq!(plans[1].path, "/prefix/channels/resources%2Fb%20c/messages");
    let first = body(&plans[0]);
    let base_id = format!("{}..{}", events[0].id, events[1].id).replace(':', ".");
    assert_eq!(
        first,
        json!([
            {"id": format!("{base_id}:0"), "name": "created", "data": event_json(&events[0])},
            {"id": format!("{base_id}:1"), "name": "created", "data": event_json(&events[1])},
        ])
    );
    assert_eq!(plans[0].events, 2);
    // One event per request by default: an array of one.
    let one = ably().plan(&base(), &events, 1, 1 << 20);
    assert_eq!(one.len(), 4);
    assert_eq!(
        body(&one[3])[0]["id"],
        format!("{}:0", ably::id_base(&events[3].id.to_string()))
    );
    let (target, headers) = ably().authorize(&one[0], 0);
    assert_eq!(target, one[0].path);
    assert_eq!(headers[0].0, hyper::header::AUTHORIZATION);
    assert_eq!(headers[0].1, "Basic YXBwLmtleTpzZWNyZXQ=");
    assert_eq!(ably::encode("a/b c!~*'()é"), "a%2Fb%20c!~*'()%C3%A9");
}

#[test]
fn centrifugo_publishes_one_event_or_a_batch() {
    let events = events_on(&["resources/a", "resources/b"]);
    let one = centrifugo().plan(&base(), &events, 1, 1 << 20);
    assert_eq!(one[0].path, "/prefix/api/publish");
    assert_eq!(
        body(&one[0]),
        json!({"channel": "resources:a", "data": event_json(&events[0]),
               "idempotency_key": events[0].id.to_string()})
    );
    let batch = centrifugo().plan(&base(), &events, 10, 1 << 20);
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].path, "/prefix/api/batch");
    let commands = body(&batch[0])["commands"].clone();
    assert_eq!(commands[1]["publish"]["channel"], "resources:b");
    assert_eq!(commands[1]["publish"]["data"], event_json(&events[1]));
    let (_, headers) = centrifugo().authorize(&batch[0], 0);
    assert_eq!(headers[0].0.as_str(), "x-api-key");
    assert_eq!(headers[0].1, "api-key");
}

#[test]
fn centrifugo_errors_in_a_200_are_retried_or_rejected() {
    let ok = StatusCode::OK;
    let plan = |events| Planned {
        id: "x".into(),
        path: "/api/batch".into(),
        body: Bytes::new(),
        events,
        refused: None,
        refetch: vec![],
    };
    let judge = |text: &str, n| centrifugo().judge(ok, None, Some(text.as_bytes()), &plan(n));
    assert!(judge(r#"{"result":{}}"#, 1).is_ok());
    assert!(matches!(
        judge(r#"{"error":{"code":100,"message":"internal"}}"#, 1),
        Err(Failure::Retry(..))
    ));
    assert!(matches!(
        judge(r#"{"error":{"code":111,"message":"too many"}}"#, 1),
        Err(Failure::Retry(..))
    ));
    assert!(matches!(
        judge(r#"{"error":{"code":102,"message":"unknown channel"}}"#, 1),
        Err(Failure::Rejected(_))
    ));
    let batch_ok = r#"{"replies":[{"publish":{}},{"publish":{}}]}"#;
    assert!(judge(batch_ok, 2).is_ok());
    let last_failed = r#"{"replies":[{"publish":{}},{"error":{"code":100,"message":"internal"}}]}"#;
    assert!(
        matches!(judge(last_failed, 2), Err(Failure::Retry(..))),
        "every reply is checked"
    );
    assert!(
        matches!(judge(batch_ok, 3), Err(Failure::Rejected(_))),
        "a reply missing"
    );
    let temporary_first = r#"{"replies":[{"error":{"code":111,"message":"too many"}},
        {"error":{"code":102,"message":"unknown channel"}}]}"#;
    assert!(
        matches!(judge(temporary_first, 2), Err(Failure::Retry(..))),
        "a temporary error retries the request, whatever comes after it"
    );
    let permanent_first = r#"{"replies":[{"error":{"code":102,"message":"unknown channel"}},
        {"error":{"code":100,"message":"internal"}}]}"#;
    assert!(matches!(judge(permanent_first, 2), Err(Failure::Retry(..))));
    assert!(matches!(judge("<html>", 1), Err(Failure::Rejected(_))));
    assert!(
        matches!(
            centrifugo().judge(ok, None, None, &plan(1)),
            Err(Failure::Retry(..))
        ),
        "a 200 whose body is over the read limit"
    );
    for preset in [ably(), centrifugo(), Format::Pusher(pusher("1", "k", "s"))] {
        let unauthorized = preset.judge(StatusCode::UNAUTHORIZED, None, Some(b"no"), &plan(1));
        match unauthorized {
            Err(Failure::Fatal(m)) => {
                assert!(m.contains("refused the credentials"), "{m}")
            }
            _ => panic!("a 401 is fatal"),
        }
    }
}

#[test]
fn pusher_sends_data_as_a_string_in_batches_of_at_most_10() {
    let p = pusher("42", "k", "s");
    let channels = vec!["resources/a"; 12];
    let events = events_on(&channels);
    let plans = Format::Pusher(p.clone()).plan(&base(), &events, 50, 1 << 20);
    assert_eq!(plans.iter().map(|p| p.events).collect::<Vec<_>>(), [10, 2]);
    assert_eq!(plans[0].path, "/prefix/apps/42/batch_events");
    let first = &body(&plans[0])["batch"][0];
    assert_eq!(first["channel"], "p-resources-a");
    assert_eq!(first["name"], "created");
    assert_eq!(
        first["data"],
        String::from_utf8(events[0].json.to_vec()).unwrap()
    );
    let one = Format::Pusher(p.clone()).plan(&base(), &events[..1], 1, 1 << 20);
    assert_eq!(one[0].path, "/prefix/apps/42/events");
    assert_eq!(body(&one[0])["channels"], json!(["p-resources-a"]));
    let (target, headers) = Format::Pusher(p.clone()).authorize(&one[0], 7);
    assert!(
        target.starts_with("/prefix/apps/42/events?auth_key=k&auth_timestamp=7&"),
        "{target}"
    );
    assert!(headers.is_empty());

    let mut big = event(1);
    big.json = format!("{{\"x\":\"{}\"}}", "y".repeat(11 * 1024))
        .into_bytes()
        .into();
    let refused = Format::Pusher(p).plan(&base(), &[big], 1, 1 << 20);
    assert!(
        refused[0]
            .refused
            .as_deref()
            .is_some_and(|m| m.contains("10240")),
        "only an event still over the limit without ids is refused: {refused:?}"
    );
}

/// A coalesced event of `n` uuid ids (about 39 bytes each) on `resources/t`.
fn bulk_update(n: usize, lsn: u64) -> LiveEvent {
    let source = EventSource {
        channel: "resources/t".into(),
        schema: "public".into(),
        table: "t".into(),
        data_provider_name: None,
    };
    let ids: Vec<Id> = (0..n)
        .map(|i| Id::Text(format!("00000000-0000-4000-8000-{i:012}").into()))
        .collect();
    let id = EventId {
        commit_lsn: Lsn(lsn),
        ordinal: 0,
    };
    LiveEvent::new(&source, EventKind::Updated, Some(&ids), id, 9, 0)
}

/// `event` as sent without its ids: `payload` empty, everything else the same.
#[track_caller]
fn assert_refetch_form_of(sent: &Value, event: &LiveEvent) {
    let mut expected = event_json(event);
    expected["payload"] = json!({});
    assert_eq!(*sent, expected);
}

#[test]
fn an_event_over_pushers_limit_goes_without_its_ids() {
    let events = [event(1), bulk_update(1000, 0x2000), event(3)];
    assert!(events[1].json.len() > 30_000);
    let plans = Format::Pusher(pusher("1", "k", "s")).plan(&base(), &events, 10, 1 << 20);
    assert_eq!(plans.len(), 1, "still batched with the others");
    let p = &plans[0];
    assert_eq!(
        (p.refused.as_ref(), &p.refetch[..]),
        (None, &[events[1].id][..])
    );
    let batch = body(p)["batch"].clone();
    let data = |i: usize| serde_json::from_str::<Value>(batch[i]["data"].as_str().unwrap());
    assert_refetch_form_of(&data(1).unwrap(), &events[1]);
    assert_eq!(data(1).unwrap()["meta"]["id"], events[1].id.to_string());
    assert_eq!(
        data(0).unwrap(),
        event_json(&events[0]),
        "the others keep their ids"
    );
    assert_eq!(data(2).unwrap(), event_json(&events[2]));
}

#[test]
fn ably_requests_stay_within_64_kib() {
    // Three events of ~25 KB: never more than two in a request.
    let events: Vec<LiveEvent> = (0..3).map(|i| bulk_update(600, 0x2000 + i)).collect();
    let plans = ably().plan(&base(), &events, 10, 1 << 20);
    assert!(plans.len() >= 2, "{}", plans.len());
    assert_eq!(plans.iter().map(|p| p.events).sum::<usize>(), 3);
    for p in &plans {
        assert!(p.body.len() <= ably::MAX_BODY, "{}", p.body.len());
        assert!(p.refetch.is_empty() && p.refused.is_none());
    }
    // An event over the limit alone goes without its ids, in order among the others.
    let events = [event(1), bulk_update(2000, 0x3000), event(3)];
    let plans = ably().plan(&base(), &events, 10, 1 << 20);
    let sent: Vec<Value> = plans
        .iter()
        .flat_map(|p| body(p).as_array().unwrap().clone())
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(sent.len(), 3);
    assert_refetch_form_of(&sent[1], &events[1]);
    assert_eq!(sent[0], event_json(&events[0]));
    let marked: Vec<EventId> = plans.iter().flat_map(|p| p.refetch.clone()).collect();
    assert_eq!(marked, [events[1].id]);
}

#[test]
fn ably_ids_name_the_runs_content() {
    let events = events_on(&["resources/a"; 3]);
    let two = ably().plan(&base(), &events[..2], 10, 1 << 20);
    let three = ably().plan(&base(), &events, 10, 1 << 20);
    let first_id = |p: &Planned| body(p)[0]["id"].as_str().unwrap().to_owned();
    assert_ne!(
        first_id(&two[0]),
        first_id(&three[0]),
        "[A,B,C] after [A,B] must not look like a repeat to Ably"
    );
    assert_eq!(body(&three[0])[2]["id"], "0/1001.0..0/1003.0:2");
    let one = ably().plan(&base(), &events[..1], 10, 1 << 20);
    assert_eq!(
        first_id(&one[0]),
        format!("{}:0", ably::id_base(&events[0].id.to_string()))
    );
}

#[test]
fn channel_names_are_checked_per_relay() {
    assert!(pusher::check_channel("resources-posts").is_ok());
    assert!(pusher::check_channel("resources/posts").is_err());
    assert!(pusher::check_channel(&"a".repeat(165)).is_err());
    assert!(centrifugo::check_channel("resources:posts").is_ok());
    assert!(centrifugo::check_channel("resources/posts").is_err());
    assert!(
        centrifugo::check_channel("r:posts").is_err(),
        "a one-letter namespace"
    );
    assert!(ably::check_channel("resources/posts").is_ok());
    assert!(ably::check_channel(":x").is_err());
}

#[test]
fn probes_authenticate_without_publishing() {
    let url = base();
    let p = ably().probe(&url, Some("resources/a"), 0).unwrap();
    assert_eq!(
        (p.method, p.target.as_str()),
        (hyper::Method::GET, "/prefix/channels/resources%2Fa")
    );
    let p = centrifugo().probe(&url, None, 0).unwrap();
    assert_eq!(p.target, "/prefix/api/info");
    let p = Format::Pusher(pusher("3", "k", "s"))
        .probe(&url, None, 5)
        .unwrap();
    assert!(
        p.target.starts_with(
            "/prefix/apps/3/channels?auth_key=k&auth_timestamp=5&auth_version=1.0&auth_signature="
        ),
        "no body_md5 without a body, as Pusher's libraries sign a GET: {}",
        p.target
    );
    let denied = br#"{"error":{"code":40160,"statusCode":401,"message":"no capability"}}"#;
    assert!(
        ably()
            .probe_verdict(StatusCode::UNAUTHORIZED, denied)
            .is_ok()
    );
    let bad = br#"{"error":{"code":40101,"statusCode":401,"message":"invalid credentials"}}"#;
    let err = ably()
        .probe_verdict(StatusCode::UNAUTHORIZED, bad)
        .unwrap_err();
    assert!(
        err.contains("ably refused the credentials") && err.contains("40101"),
        "{err}"
    );
}

/// The JSON object after each `"data":` in `body`, byte for byte.
fn raw_data(body: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let key = b"\"data\":{";
    let mut i = 0;
    while let Some(at) = body[i..].windows(key.len()).position(|w| w == key) {
        let start = i + at + key.len() - 1;
        let (mut depth, mut in_string, mut escaped, mut end) = (0, false, false, start);
        for (j, &b) in body[start..].iter().enumerate() {
            match (in_string, escaped, b) {
                (true, true, _) => escaped = false,
                (true, false, b'\\') => escaped = true,
                (_, false, b'"') => in_string = !in_string,
                (false, _, b'{') => depth += 1,
                (false, _, b'}') => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = start + j + 1;
                break;
            }
        }
        out.push(body[start..end].to_vec());
        i = end;
    }
    out
}

type Got = Arc<Mutex<Vec<Vec<u8>>>>;

/// A receiver for `format` at `/…` that keeps the events of every request it accepts.
async fn contract(format: Format, extract: fn(&[u8]) -> Vec<Vec<u8>>, batch: usize) {
    let got: Got = Arc::default();
    let handler = move |State(got): State<Got>, request: Request| async move {
        let bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
            .await
            .unwrap();
        got.lock().unwrap().extend(extract(&bytes));
        (StatusCode::OK, r#"{"result":{}}"#)
    };
    let app = axum::Router::new()
        .fallback(handler)
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let config = WebhookSinkConfig {
        url: format!("http://{addr}").parse().unwrap(),
        format,
        channels: vec![],
        timeout: Duration::from_secs(5),
        ca_file: None,
        batch_max_events: batch,
        batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
        on_rejected: OnRejected::Fail,
        max_backoff: Duration::from_millis(10),
    };
    let lane = crate::sink::Lane::single();
    let sink = WebhookSink::new(config, lane.status());
    crate::sink::contract::check(sink, async |_| got.lock().unwrap().clone()).await;
    server.abort();
}

#[tokio::test]
async fn each_preset_meets_the_sink_contract() {
    contract(ably(), raw_data, 1).await;
    contract(ably(), raw_data, 3).await;
    contract(centrifugo(), raw_data, 1).await;
    let pusher_data = |body: &[u8]| {
        let v: Value = serde_json::from_slice(body).unwrap();
        let events = match v.get("batch") {
            Some(Value::Array(all)) => all.clone(),
            _ => vec![v],
        };
        events
            .iter()
            .map(|e| e["data"].as_str().unwrap().as_bytes().to_vec())
            .collect()
    };
    contract(Format::Pusher(pusher("1", "k", "s")), pusher_data, 1).await;
    contract(Format::Pusher(pusher("1", "k", "s")), pusher_data, 4).await;
}

/// A server that reads one request per connection, writes `answer` and closes.
async fn answering(answer: Vec<u8>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                let complete = |got: &[u8]| {
                    let text = String::from_utf8_lossy(got);
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        return false;
                    };
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|n| n.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    body.len() >= length
                };
                while !complete(&got) {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket.write_all(&answer).await;
            });
        }
    });
    addr
}

/// What sending one event to a Centrifugo that answers `answer` gives.
async fn centrifugo_answering(answer: Vec<u8>) -> SinkError {
    let addr = answering(answer).await;
    let config = WebhookSinkConfig {
        url: format!("http://{addr}").parse().unwrap(),
        format: centrifugo(),
        channels: vec![],
        timeout: Duration::from_secs(5),
        ca_file: None,
        batch_max_events: 1,
        batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
        on_rejected: OnRejected::Fail,
        max_backoff: Duration::from_millis(10),
    };
    let lane = crate::sink::Lane::single();
    let mut sink = WebhookSink::new(config, lane.status());
    sink.connect().await.unwrap();
    let batch = Arc::new(crate::sink::Batch {
        seq: 1,
        events: vec![event(1)],
    });
    match sink.send(batch).await {
        Ok(_) => panic!("the answer was taken as an acknowledgement"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn an_answer_that_cannot_be_read_is_retried() {
    // The connection closes in the middle of the body.
    let cut = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"res".to_vec();
    let e = centrifugo_answering(cut).await;
    assert!(e.retryable, "{}", e.message);
    assert!(e.message.contains("reading the answer"), "{}", e.message);
    // A 200 longer than the sink reads: Centrifugo's replies cannot be checked.
    let mut long = b"HTTP/1.1 200 OK\r\ncontent-length: 2000000\r\n\r\n".to_vec();
    long.extend(std::iter::repeat_n(b' ', 2_000_000));
    let e = centrifugo_answering(long).await;
    assert!(e.retryable, "{}", e.message);
    assert!(e.message.contains("longer than"), "{}", e.message);
}

//! The WebSocket relay with real WebSocket clients: authentication, subscriptions, ordering,
//! resuming with `since`, slow clients, shutdown.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::cluster::free_port;
use crate::support::ws::{SECRET, WsClient, token};
use crate::support::{Daemon, TestDb, setup, unfinished_requests, until_closed};

/// A config with stdout and a relay on a free port; returns it and the relay's URL.
fn relay(db: &TestDb, extra: &str) -> (String, String) {
    let port = free_port();
    let config = format!(
        "{}[[sinks]]\ntype = \"websocket\"\nlisten = \"127.0.0.1:{port}\"\njwt_secret = \"{SECRET}\"\n{extra}\n",
        db.config(
            &["name = \"posts\"", "name = \"secrets\""],
            "[events]\ncoalesce = false"
        )
    );
    (config, format!("ws://127.0.0.1:{port}/live"))
}

fn with_token(url: &str, channels: &[&str]) -> String {
    format!("{url}?token={}", token(channels, 3600, SECRET))
}

fn connect(url: &str) -> WsClient {
    WsClient::connect(url, &[]).unwrap_or_else(|status| panic!("refused with {status}"))
}

fn tables(db: &TestDb) {
    db.sql("CREATE TABLE posts (id int PRIMARY KEY); CREATE TABLE secrets (id int PRIMARY KEY);");
}

fn inserts(db: &TestDb, table: &str, ids: std::ops::RangeInclusive<i64>) {
    let sql: String = ids
        .map(|i| format!("INSERT INTO {table} VALUES ({i});\n"))
        .collect();
    db.sql(&sql);
}

fn ids(frames: &[Value]) -> Vec<i64> {
    frames
        .iter()
        .filter(|f| f.get("op").is_none())
        .flat_map(|f| f["payload"]["ids"].as_array().unwrap().clone())
        .map(|v| v.as_i64().unwrap())
        .collect()
}

#[test]
fn the_upgrade_needs_a_valid_unexpired_token() {
    let db = TestDb::new("ws_auth");
    tables(&db);
    let (config, url) = relay(&db, "");
    setup(&config);
    let d = Daemon::run(&config);
    d.wait_log("WebSocket relay listening");
    assert_eq!(WsClient::connect(&url, &[]).err(), Some(401), "no token");
    let forged = token(
        &["resources/*"],
        3600,
        "another secret, also at least 32 bytes",
    );
    assert_eq!(
        WsClient::connect(&format!("{url}?token={forged}"), &[]).err(),
        Some(401),
        "bad signature"
    );
    let expired = token(&["resources/*"], -3600, SECRET);
    assert_eq!(
        WsClient::connect(&format!("{url}?token={expired}"), &[]).err(),
        Some(401),
        "expired"
    );
    // A valid token in the query, or as a bearer header.
    connect(&with_token(&url, &["resources/*"]));
    let bearer = format!("Bearer {}", token(&["resources/*"], 3600, SECRET));
    assert!(WsClient::connect(&url, &[("authorization", &bearer)]).is_ok());
}

#[test]
fn subscribers_get_their_channels_events_in_order_and_nothing_they_may_not_read() {
    let db = TestDb::new("ws_sub");
    tables(&db);
    let (config, url) = relay(&db, "");
    setup(&config);
    let d = Daemon::run(&config);
    d.wait_log("WebSocket relay listening");
    let mut c = connect(&with_token(&url, &["resources/posts"]));
    c.subscribe("resources/posts");
    assert_eq!(
        c.next(),
        json!({"op": "subscribed", "channel": "resources/posts"})
    );
    c.subscribe("resources/secrets");
    let refused = c.next();
    assert_eq!(refused["op"], "error");
    assert_eq!(refused["code"], "forbidden");
    assert_eq!(refused["channel"], "resources/secrets");

    inserts(&db, "secrets", 1..=3);
    inserts(&db, "posts", 1..=50);
    let frames = c.until_events(50);
    assert_eq!(
        ids(&frames),
        (1..=50).collect::<Vec<_>>(),
        "in commit order"
    );
    // Exactly the events stdout carries, byte for byte.
    let stdout = d.wait_events("stdout", |e| e.len() >= 53);
    let posts: Vec<&Value> = stdout
        .iter()
        .filter(|e| e["channel"] == "resources/posts")
        .collect();
    assert_eq!(frames.iter().collect::<Vec<_>>(), posts);

    // Unsubscribed: nothing more arrives (a second client shows that events did flow).
    c.send(json!({"op": "unsubscribe", "channel": "resources/posts"}));
    let mut other = connect(&with_token(&url, &["resources/*"]));
    other.subscribe("resources/posts");
    assert_eq!(other.next()["op"], "subscribed");
    inserts(&db, "posts", 51..=51);
    assert_eq!(ids(&other.until_events(1)), [51]);
    assert_eq!(c.next_within(Duration::from_millis(500)), None);

    // Requests that make no sense get an error, and the connection stays usable.
    c.send(json!({"op": "dance"}));
    assert_eq!(c.next()["code"], "bad_request");
}

#[test]
fn resuming_with_since_replays_what_was_missed_or_asks_for_a_resync() {
    let db = TestDb::new("ws_resume");
    tables(&db);
    let (config, url) = relay(&db, "history = 20");
    setup(&config);
    let d = Daemon::run(&config);
    d.wait_log("WebSocket relay listening");
    let url = with_token(&url, &["resources/*"]);
    let mut c = connect(&url);
    c.subscribe("resources/posts");
    c.next();
    inserts(&db, "posts", 1..=5);
    let frames = c.until_events(5);
    let last_seen = frames.last().unwrap()["meta"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(c);

    // Missed 6..=10, still held: replayed after `subscribed`, then live events follow.
    inserts(&db, "posts", 6..=10);
    d.wait_events("stdout to pass row 10", |e| e.len() >= 10);
    let mut c = connect(&url);
    c.send(json!({"op": "subscribe", "channel": "resources/posts", "since": last_seen}));
    assert_eq!(c.next()["op"], "subscribed");
    inserts(&db, "posts", 11..=11);
    assert_eq!(ids(&c.until_events(6)), (6..=11).collect::<Vec<_>>());
    drop(c);

    // Missed more than the history holds: resync, and the subscription goes on.
    inserts(&db, "posts", 12..=60);
    d.wait_events("stdout to pass row 60", |e| e.len() >= 60);
    let mut c = connect(&url);
    c.send(json!({"op": "subscribe", "channel": "resources/posts", "since": last_seen}));
    assert_eq!(c.next()["op"], "subscribed");
    assert_eq!(
        c.next(),
        json!({"op": "resync", "channel": "resources/posts"})
    );
    inserts(&db, "posts", 61..=61);
    assert_eq!(ids(&c.until_events(1)), [61]);
}

#[test]
fn a_client_that_stops_reading_delays_no_one_and_is_told_to_resync() {
    let db = TestDb::new("ws_slow");
    tables(&db);
    let (config, url) = relay(&db, "client_queue = 2000");
    setup(&config);
    let d = Daemon::run(&config);
    d.wait_log("WebSocket relay listening");
    let url = with_token(&url, &["resources/*"]);
    let mut slow = WsClient::connect_small_buffer(&url);
    slow.subscribe("resources/posts");
    assert_eq!(slow.next()["op"], "subscribed");
    let mut fast = connect(&url);
    fast.subscribe("resources/posts");
    assert_eq!(fast.next()["op"], "subscribed");
    // The slow client reads nothing while 10,000 events go by, in bursts the fast client's
    // queue holds.
    let mut got = Vec::new();
    for burst in 0..10 {
        let from = burst * 1000 + 1;
        db.sql(&format!(
            "INSERT INTO posts SELECT generate_series({from}, {})",
            from + 999
        ));
        got.extend(ids(&fast.until_events(1000)));
    }
    assert_eq!(got, (1..=10_000).collect::<Vec<_>>());
    d.wait_events("stdout to get every event", |e| e.len() >= 10_000);
    // When it reads again: what it got, then a resync in place of what it could not take.
    let mut frames = Vec::new();
    while let Some(f) = slow.next_within(Duration::from_secs(2)) {
        frames.push(f);
    }
    assert!(
        frames.contains(&json!({"op": "resync", "channel": "resources/posts"})),
        "{} frames, no resync",
        frames.len()
    );
    assert!(
        ids(&frames).len() < 10_000,
        "the slow client's queue was bounded"
    );
}

#[test]
fn sigterm_closes_every_connection_with_going_away() {
    let db = TestDb::new("ws_term");
    tables(&db);
    let (config, url) = relay(&db, "");
    setup(&config);
    let mut d = Daemon::run(&config);
    d.wait_log("WebSocket relay listening");
    let mut a = connect(&with_token(&url, &["resources/*"]));
    a.subscribe("resources/posts");
    a.next();
    let mut b = connect(&with_token(&url, &["resources/*"]));
    d.signal("TERM");
    assert_eq!(a.close_code(), Some(1001));
    assert_eq!(b.close_code(), Some(1001));
    assert_eq!(d.wait_exit(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn anonymous_access_is_an_explicit_opt_in() {
    let db = TestDb::new("ws_anon");
    tables(&db);
    let port = free_port();
    let config = format!(
        "{}[[sinks]]\ntype = \"websocket\"\nlisten = \"127.0.0.1:{port}\"\nanonymous = true\nallowed_origins = [\"http://app.example\"]\n",
        db.config(&["name = \"posts\""], "")
    );
    setup(&config);
    let d = Daemon::run(&config);
    d.wait_log("WebSocket relay listening");
    let url = format!("ws://127.0.0.1:{port}/live");
    let mut c = connect(&url);
    c.subscribe("resources/posts");
    assert_eq!(c.next()["op"], "subscribed");
    assert!(WsClient::connect(&url, &[("origin", "http://app.example")]).is_ok());
    assert_eq!(
        WsClient::connect(&url, &[("origin", "http://evil.example")]).err(),
        Some(403)
    );
}

#[test]
fn limits_refuse_extra_connections_and_oversized_messages() {
    let db = TestDb::new("ws_limits");
    tables(&db);
    let (config, url) = relay(&db, "max_connections = 2\nmax_message_bytes = 256");
    setup(&config);
    let d = Daemon::run(&config);
    d.wait_log("WebSocket relay listening");
    let url = with_token(&url, &["resources/*"]);
    let mut a = connect(&url);
    let mut b = connect(&url);
    assert_eq!(
        WsClient::connect(&url, &[]).err(),
        Some(503),
        "a third connection"
    );
    // A message over the limit ends that connection, and only that one.
    a.send(json!({"op": "subscribe", "channel": "x".repeat(1000)}));
    assert_eq!(a.close_code(), Some(1009), "message too big");
    b.subscribe("resources/posts");
    assert_eq!(b.next()["op"], "subscribed");
    // Its place is free again (once the server has noticed it closed).
    let mut c = None;
    crate::support::wait_until("a free connection slot", || {
        c = WsClient::connect(&url, &[]).ok();
        c.is_some()
    });
    let mut c = c.unwrap();
    c.subscribe("resources/posts");
    assert_eq!(c.next()["op"], "subscribed");
}

#[test]
fn a_client_that_answers_no_ping_is_closed() {
    let db = TestDb::new("ws_ping");
    tables(&db);
    let (config, url) = relay(&db, "ping_interval = \"1s\"");
    setup(&config);
    let d = Daemon::run(&config);
    d.wait_log("WebSocket relay listening");
    let url = with_token(&url, &["resources/*"]);
    let mut quiet = connect(&url);
    let mut alive = connect(&url);
    alive.subscribe("resources/posts");
    // `alive` keeps reading (and so answers pings); `quiet` reads nothing.
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    while !d.stderr().contains("reason=\"no pong\"") {
        assert!(
            std::time::Instant::now() < deadline,
            "no client was closed for want of a pong"
        );
        alive.next_within(Duration::from_millis(200));
    }
    // The close frame (1008) may be lost to the reset that follows it, as `quiet` never read.
    let code = quiet.close_code();
    assert!(matches!(code, Some(1008) | None), "{code:?}");
    assert_eq!(
        d.stderr().matches("no pong").count(),
        1,
        "only the quiet client"
    );
    inserts(&db, "posts", 1..=1);
    assert_eq!(
        ids(&alive.until_events(1)),
        [1],
        "a client that answers stays"
    );
}

#[test]
fn a_key_that_could_verify_no_token_stops_pglive_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("p384.pub");
    let made = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 2>/dev/null | openssl pkey -pubout -out {}",
            key.display()
        ))
        .status()
        .unwrap();
    assert!(made.success());
    let config = format!(
        "[postgres]\nurl = \"postgres://u@127.0.0.1:1/d\"\n[[tables]]\nname = \"t\"\n\
         [[sinks]]\ntype = \"websocket\"\nlisten = \"127.0.0.1:{}\"\njwt_public_key_file = \"{}\"\n",
        free_port(),
        key.display()
    );
    for command in ["run", "check"] {
        let (code, _, stderr) = crate::support::pglive(&[command], &config);
        assert_eq!(code, 2, "{command}: {stderr}");
        assert!(
            stderr.contains("sinks[0].jwt_public_key_file") && stderr.contains("P-384"),
            "{command}: {stderr}"
        );
    }
}

#[test]
fn rs256_and_es256_tokens_verify_against_a_public_key() {
    let dir = tempfile::tempdir().unwrap();
    for (alg, genkey) in [
        (
            jsonwebtoken::Algorithm::RS256,
            "-algorithm RSA -pkeyopt rsa_keygen_bits:2048",
        ),
        (
            jsonwebtoken::Algorithm::ES256,
            "-algorithm EC -pkeyopt ec_paramgen_curve:P-256",
        ),
    ] {
        let private = dir.path().join(format!("{alg:?}.key"));
        let public = dir.path().join(format!("{alg:?}.pub"));
        let made = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl genpkey {genkey} -out {0} 2>/dev/null && openssl pkey -in {0} -pubout -out {1}",
                private.display(),
                public.display()
            ))
            .status()
            .unwrap();
        assert!(made.success(), "openssl made a {alg:?} key pair");
        let pem = std::fs::read(&private).unwrap();
        let key = match alg {
            jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(&pem),
            _ => jsonwebtoken::EncodingKey::from_ec_pem(&pem),
        }
        .unwrap();
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(alg),
            &json!({"channels": ["resources/*"], "exp": exp}),
            &key,
        )
        .unwrap();

        // The private key in place of the public one is refused when the config is loaded.
        let db = TestDb::new(&format!("ws_{alg:?}").to_lowercase());
        let wrong = format!(
            "{}[[sinks]]\ntype = \"websocket\"\nlisten = \"127.0.0.1:{}\"\njwt_public_key_file = \"{}\"\n",
            db.config(&["name = \"posts\""], ""),
            free_port(),
            private.display()
        );
        let (code, _, stderr) = crate::support::pglive(&["run"], &wrong);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains("sinks[1].jwt_public_key_file") && stderr.contains("private key"),
            "{stderr}"
        );
        tables(&db);
        let port = free_port();
        let config = format!(
            "{}[[sinks]]\ntype = \"websocket\"\nlisten = \"127.0.0.1:{port}\"\njwt_public_key_file = \"{}\"\n",
            db.config(&["name = \"posts\""], ""),
            public.display()
        );
        setup(&config);
        let d = Daemon::run(&config);
        d.wait_log("WebSocket relay listening");
        let url = format!("ws://127.0.0.1:{port}/live");
        let mut c = connect(&format!("{url}?token={token}"));
        c.subscribe("resources/posts");
        assert_eq!(c.next()["op"], "subscribed", "{alg:?}");
        // An HS256 token is not accepted by a public-key relay.
        let hs = crate::support::ws::token(&["resources/*"], 3600, SECRET);
        assert_eq!(
            WsClient::connect(&format!("{url}?token={hs}"), &[]).err(),
            Some(401),
            "{alg:?}"
        );
    }
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[test]
fn only_mapped_channels_can_be_subscribed_and_a_connection_holds_a_bounded_number() {
    let db = TestDb::new("ws_bounds");
    tables(&db);
    let (config, url) = relay(&db, "max_subscriptions = 1");
    setup(&config);
    let d = Daemon::run(&config);
    d.wait_log("WebSocket relay listening");
    let mut c = connect(&with_token(&url, &["resources/*"]));
    c.subscribe("resources/nothing_maps_here");
    let refused = c.next();
    assert_eq!(refused["code"], "unknown_channel", "{refused}");
    assert_eq!(refused["channel"], "resources/nothing_maps_here");
    c.subscribe(&format!("resources/{}", "x".repeat(300)));
    assert_eq!(c.next()["code"], "bad_request", "a name over 255 bytes");

    c.subscribe("resources/posts");
    assert_eq!(c.next()["op"], "subscribed");
    c.subscribe("resources/secrets");
    let refused = c.next();
    assert_eq!(refused["code"], "too_many_subscriptions", "{refused}");
    // Subscribing again to a channel it holds is a resume, not one more.
    c.subscribe("resources/posts");
    assert_eq!(c.next()["op"], "subscribed");
    c.send(json!({"op": "unsubscribe", "channel": "resources/posts"}));
    c.subscribe("resources/secrets");
    assert_eq!(c.next()["op"], "subscribed", "a place was free again");
    // The connection stayed open through every refusal.
    inserts(&db, "secrets", 1..=1);
    assert_eq!(ids(&c.until_events(1)), [1]);
}

#[test]
fn a_flood_of_subscriptions_to_made_up_channels_leaves_no_memory_behind() {
    let db = TestDb::new("ws_flood");
    tables(&db);
    let (config, url) = relay(&db, "");
    setup(&config);
    let d = Daemon::run(&config);
    d.wait_log("WebSocket relay listening");
    let url = with_token(&url, &["resources/*"]);
    // Warm up: the first connection's buffers are not what is being measured.
    let mut c = connect(&url);
    c.subscribe("resources/posts");
    assert_eq!(c.next()["op"], "subscribed");
    let before = rss_kib(d.pid());
    // Names under the length cap, so that each reaches the lookup: ~250 bytes each.
    let pad = "p".repeat(230);
    const PAIRS: usize = 20_000;
    // Two rounds, the second on a new socket: nothing the first left may pile up.
    for round in 0..2 {
        let mut c = connect(&url);
        for n in 0..PAIRS {
            let channel = format!("resources/{pad}{round}_{n}");
            c.subscribe(&channel);
            c.send(json!({"op": "unsubscribe", "channel": channel}));
            if n % 1000 == 999 {
                // Read the replies as they come, so that neither side's buffers fill.
                for _ in 0..1000 {
                    assert_eq!(c.next()["code"], "unknown_channel");
                }
            }
        }
        c.subscribe("resources/posts");
        assert_eq!(c.next()["op"], "subscribed", "all requests handled");
    }
    let grown = rss_kib(d.pid()).saturating_sub(before);
    // Kept, these names would be about 10 MiB each round.
    assert!(
        grown < 4 * 1024,
        "RSS grew by {grown} KiB over 2 × {PAIRS} made-up subscriptions"
    );
}

#[test]
fn unfinished_requests_count_against_the_cap_and_are_cut_off() {
    let db = TestDb::new("ws_slowloris");
    tables(&db);
    let (config, url) = relay(&db, "max_connections = 10\nheader_timeout = \"2s\"");
    setup(&config);
    let d = Daemon::run(&config);
    d.wait_log("WebSocket relay listening");
    let port: u16 = url
        .trim_start_matches("ws://127.0.0.1:")
        .trim_end_matches("/live")
        .parse()
        .unwrap();
    let started = std::time::Instant::now();
    let mut held = unfinished_requests(port, 10);
    // The cap counts them although none has authenticated: the next is refused at once.
    let mut over = unfinished_requests(port, 5);
    for s in &mut over {
        let answer = until_closed(s, Duration::from_secs(5)).expect("refused at once");
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    }
    assert_eq!(
        WsClient::connect(&with_token(&url, &["resources/*"]), &[]).err(),
        Some(503)
    );
    // The unfinished ones are closed when their headers are overdue.
    for s in &mut held {
        assert!(
            until_closed(s, crate::support::WAIT).is_some(),
            "an unfinished request was still open after {:?}",
            started.elapsed()
        );
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2),
        "not before the timeout: {elapsed:?}"
    );
    // And their places are free again.
    let mut c = connect(&with_token(&url, &["resources/*"]));
    c.subscribe("resources/posts");
    assert_eq!(c.next()["op"], "subscribed");
}

#[test]
fn a_token_stops_working_at_its_expiry_unless_renewed_in_band() {
    let db = TestDb::new("ws_expiry");
    tables(&db);
    let (config, url) = relay(&db, "jwt_leeway = \"0s\"");
    setup(&config);
    let d = Daemon::run(&config);
    d.wait_log("WebSocket relay listening");
    // Long enough for the steps below on a loaded machine; the close comes at its expiry.
    let short = |channels: &[&str]| format!("{url}?token={}", token(channels, 10, SECRET));
    let mut lapsing = connect(&short(&["resources/*"]));
    lapsing.subscribe("resources/posts");
    assert_eq!(lapsing.next()["op"], "subscribed");
    let mut renewing = connect(&short(&["resources/*"]));
    renewing.subscribe("resources/posts");
    assert_eq!(renewing.next()["op"], "subscribed");
    renewing.subscribe("resources/secrets");
    assert_eq!(renewing.next()["op"], "subscribed");

    // A refused renewal changes nothing.
    renewing.send(json!({"op": "auth", "token": token(&["*"], 3600, "another secret, also at least 32 bytes")}));
    let refused = renewing.next();
    assert_eq!(refused["code"], "unauthorized", "{refused}");
    // A fresh token that allows less: what it does not allow ends.
    renewing.send(json!({"op": "auth", "token": token(&["resources/posts"], 3600, SECRET)}));
    let dropped = renewing.next();
    assert_eq!(dropped["code"], "forbidden", "{dropped}");
    assert_eq!(dropped["channel"], "resources/secrets");
    let renewed = renewing.next();
    assert_eq!(renewed["op"], "authenticated", "{renewed}");
    assert!(renewed["expires"].as_u64().unwrap() > 1_000_000_000);

    // At its expiry the other connection is closed with 1008.
    assert_eq!(lapsing.close_code(), Some(1008));
    inserts(&db, "secrets", 1..=1);
    inserts(&db, "posts", 1..=1);
    let frames = renewing.until_events(1);
    assert_eq!(ids(&frames), [1]);
    assert!(
        frames.iter().all(|f| f["channel"] != "resources/secrets"),
        "{frames:?}"
    );
    assert!(
        d.stderr().contains("token expired"),
        "the closing reason is logged"
    );
}

#[test]
fn audience_issuer_and_grant_shapes_are_enforced_at_the_upgrade() {
    let db = TestDb::new("ws_claims");
    tables(&db);
    let (config, url) = relay(
        &db,
        "jwt_audience = \"pglive\"\njwt_issuer = \"https://auth.example\"\nallowed_origins = [\"http://app.example\"]",
    );
    setup(&config);
    let d = Daemon::run(&config);
    d.wait_log("WebSocket relay listening");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign = |claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let good = json!({"channels": ["resources/*"], "exp": now + 3600, "aud": "pglive", "iss": "https://auth.example"});
    let mut c = connect(&format!("{url}?token={}", sign(good.clone())));
    c.subscribe("resources/posts");
    assert_eq!(c.next()["op"], "subscribed");
    let variant = |key: &str, value: Value| {
        let mut claims = good.clone();
        match value {
            Value::Null => {
                claims.as_object_mut().unwrap().remove(key);
            }
            v => claims[key] = v,
        }
        format!("{url}?token={}", sign(claims))
    };
    for (what, url) in [
        ("another audience", variant("aud", json!("someone-else"))),
        ("no audience", variant("aud", Value::Null)),
        (
            "another issuer",
            variant("iss", json!("https://evil.example")),
        ),
        ("not yet valid", variant("nbf", json!(now + 600))),
        (
            "a star inside a segment",
            variant("channels", json!(["resources/post*"])),
        ),
    ] {
        assert_eq!(WsClient::connect(&url, &[]).err(), Some(401), "{what}");
    }
    // A malformed grant is logged as the error it is (the log may trail the 401 a little).
    d.wait_log("the grant \"resources/post*\" uses `*`");
    assert!(!d.stderr().contains("allowed_origins: empty"));
}

#[test]
fn an_empty_allowed_origins_is_warned_about() {
    let db = TestDb::new("ws_origins");
    tables(&db);
    let (config, _url) = relay(&db, "");
    setup(&config);
    let d = Daemon::run(&config);
    d.wait_log("WebSocket relay listening");
    d.wait_log("sinks[1].allowed_origins: empty: a page on any web site");
    let (code, out, _) = crate::support::pglive(&["check"], &config);
    assert_eq!(code, 0, "a warning, not a failure: {out}");
    assert!(out.contains("sinks[1].allowed_origins: empty"), "{out}");
}

#[test]
fn oversized_request_headers_are_refused_without_holding_memory() {
    use std::io::Write;
    let db = TestDb::new("ws_bigheaders");
    tables(&db);
    let (config, url) = relay(&db, "");
    setup(&config);
    let d = Daemon::run(&config);
    d.wait_log("WebSocket relay listening");
    let port: u16 = url
        .trim_start_matches("ws://127.0.0.1:")
        .trim_end_matches("/live")
        .parse()
        .unwrap();
    let before = rss_kib(d.pid());
    // Each sends 100 KiB of headers and never ends them; a write may fail once pglive has
    // answered and closed.
    let line = format!("x-pad: {}\r\n", "a".repeat(1000));
    let mut sockets: Vec<std::net::TcpStream> = (0..300)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(b"GET /live HTTP/1.1\r\nHost: localhost\r\n");
            for _ in 0..100 {
                if s.write_all(line.as_bytes()).is_err() {
                    break;
                }
            }
            s
        })
        .collect();
    let grown = rss_kib(d.pid()).saturating_sub(before);
    for s in &mut sockets {
        let answer = until_closed(s, crate::support::WAIT).expect("closed, not held");
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "{answer:?}"
        );
    }
    // Held whole, 300 × 100 KiB would be 30 MiB.
    assert!(grown < 8 * 1024, "RSS grew by {grown} KiB");
}

/// The daemon run in-process (`app::run`) on a relay listener the test bound to port 0: no
/// binary, no free-port probe. Events reach a client; cancelling the shutdown token closes it
/// with 1001 and `run` returns `Shutdown`.
#[test]
fn the_daemon_runs_in_process_on_listeners_bound_by_the_caller() {
    use pglive::app::{Listeners, run};
    use pglive::pipeline::Stopped;
    use tokio_util::sync::CancellationToken;

    let db = TestDb::new("ws_inprocess");
    tables(&db);
    let text = db.config(&["name = \"posts\""], "[events]\ncoalesce = false");
    // The relay alone: the stdout sink would write into the test's output.
    let text = text.replace(
        "[[sinks]]\ntype = \"stdout\"\n",
        &format!(
            "[[sinks]]\ntype = \"websocket\"\nlisten = \"127.0.0.1:1\"\njwt_secret = \"{SECRET}\"\n"
        ),
    );
    setup(&text);
    let config = pglive::config::from_toml(&text).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("ws://{}/live", listener.local_addr().unwrap());
    let listeners = Listeners {
        ops: None,
        relays: vec![(0, listener)],
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let daemon = std::thread::spawn(move || runtime.block_on(run(config, listeners, None, stop)));
    let mut client = connect(&with_token(&url, &["resources/posts"]));
    client.subscribe("resources/posts");
    assert_eq!(client.next()["op"], "subscribed");
    // The slot holds what is written from its creation on, whenever streaming starts.
    inserts(&db, "posts", 1..=3);
    assert_eq!(ids(&client.until_events(3)), [1, 2, 3]);
    shutdown.cancel();
    assert_eq!(client.close_code(), Some(1001));
    let stopped = daemon.join().unwrap().expect("a clean stop");
    assert_eq!(stopped, Stopped::Shutdown);
}

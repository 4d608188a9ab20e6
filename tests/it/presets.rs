//! The webhook sink's presets against `scripts/webhook-receiver.py --preset …`, a stand-in
//! for each relay's publish API that checks the documented paths, bodies and authentication
//! (Pusher's signature with the official `pusher` library) and fails on a schedule: `check`
//! proves the credentials, every change arrives in commit order through retried failures
//! with each retry identical to the request it repeats, and a refused key stops pglive.

use serde_json::Value;

use crate::support::{Daemon, TestDb, WAIT, pglive, setup, wait_until};
use crate::webhook::{Receiver, accepted_ids, first_deliveries, insert_txn, summary};

const ABLY_KEY: &str = "appid.keyid:keysecret";
const CENTRIFUGO_KEY: &str = "centrifugo-api-key";
const PUSHER: (&str, &str, &str) = ("7", "pusherkey", "pushersecret");

/// A stand-in for `preset` that answers by `schedule`.
fn relay(preset: &str, schedule: &str) -> Receiver {
    let (app_id, key, secret) = PUSHER;
    let mut args = vec!["--preset", preset, "--schedule", schedule];
    args.extend(match preset {
        "ably" => vec!["--key", ABLY_KEY],
        "centrifugo" => vec!["--key", CENTRIFUGO_KEY],
        _ => vec!["--app-id", app_id, "--key", key, "--secret", secret],
    });
    Receiver::spawn(&args)
}

/// A `[[sinks]]` entry for `preset` at `relay`, with the right credentials or a wrong one.
fn sink(preset: &str, relay: &Receiver, right: bool, extra: &str) -> String {
    let (app_id, key, secret) = PUSHER;
    let pick = |good: &str| {
        if right {
            good.to_owned()
        } else {
            "wrong".to_owned()
        }
    };
    let credentials = match preset {
        "ably" => format!("key = \"appid.keyid:{}\"", pick("keysecret")),
        "centrifugo" => format!("key = \"{}\"", pick(CENTRIFUGO_KEY)),
        _ => format!(
            "app_id = \"{app_id}\"\nkey = \"{key}\"\nsecret = \"{}\"",
            pick(secret)
        ),
    };
    format!(
        "[[sinks]]\ntype = \"webhook\"\npreset = \"{preset}\"\nurl = \"http://127.0.0.1:{}\"\n\
         {credentials}\nmax_backoff = \"1s\"\n{extra}\n",
        relay.port
    )
}

/// A database with tables `t` and `u` (integer keys), one event per row, to stdout
/// (sinks[0]) and to the relay (sinks[1]).
fn database(name: &str, sink: &str) -> (TestDb<'static>, String) {
    let db = TestDb::new(name);
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    db.sql("CREATE TABLE u (id int PRIMARY KEY)");
    let tables = ["name = \"t\"", "name = \"u\""];
    let config = format!("{}{sink}", db.config(&tables, "[events]\ncoalesce = false"));
    (db, config)
}

/// Every failed request is followed by the same request again (path aside, whose signature
/// changes with the time): same body, same events.
#[track_caller]
fn retries_repeat_the_request(requests: &[Value]) {
    let sends: Vec<&Value> = requests.iter().filter(|r| r["method"] == "POST").collect();
    for pair in sends.windows(2) {
        if pair[0]["accepted"] != true && !pair[0]["events"].as_array().unwrap().is_empty() {
            assert_eq!(
                pair[0]["body"],
                pair[1]["body"],
                "a retry differs: {:#?}",
                summary(&[pair[0].clone(), pair[1].clone()])
            );
        }
    }
}

/// `check` proves the credentials; rows of two tables in transactions of one and of many
/// arrive in commit order through the schedule's failures, batched up to 4.
fn delivers_in_order_through_failures(preset: &str, schedule: &str) {
    let hook = relay(preset, schedule);
    let (db, config) = database(
        &format!("preset_{preset}"),
        &sink(
            preset,
            &hook,
            true,
            "batch_max_events = 4\ntimeout = \"2s\"",
        ),
    );
    setup(&config);
    let (code, out, _) = pglive(&["check"], &config);
    assert!(
        code == 0 && out.contains(&format!("ok    sinks[1]: {preset} accepted the ")),
        "{code} {out}"
    );
    let d = Daemon::run(&config);
    insert_txn(&db, 1, 1);
    db.sql("BEGIN; INSERT INTO u VALUES (1001); INSERT INTO t VALUES (2); COMMIT");
    for (from, to) in [(3, 20), (21, 21), (22, 40)] {
        insert_txn(&db, from, to);
    }
    db.sql("INSERT INTO u SELECT generate_series(1002, 1009)");
    let events = d.wait_events("49 events on stdout", |e| e.len() >= 49);
    let requests = hook.wait("every row accepted", |r| accepted_ids(r).len() >= 49);

    let mut expected: std::collections::BTreeSet<i64> = (1..=40).collect();
    expected.extend(1001..=1009);
    assert_eq!(accepted_ids(&requests), expected);
    assert_eq!(
        first_deliveries(&requests),
        events,
        "first deliveries are the events stdout printed, in commit order"
    );
    retries_repeat_the_request(&requests);
    let most = requests
        .iter()
        .map(|r| r["events"].as_array().unwrap().len())
        .max();
    assert_eq!(most, Some(4), "batches of up to 4 events");
    for s in schedule.split(',').filter(|s| *s != "ok") {
        let status = s.split(':').next().unwrap();
        assert!(
            requests
                .iter()
                .any(|r| r["status"].to_string().trim_matches('"') == status),
            "the schedule's {s} was not played: {:#?}",
            summary(&requests)
        );
    }
    let last = db.lsn(events.last().unwrap()["meta"]["lsn"].as_str().unwrap());
    wait_until("the slot to pass the last transaction", || {
        db.confirmed_flush().unwrap_or(0) >= last
    });
}

#[test]
fn ably_delivers_in_order_through_failures() {
    delivers_in_order_through_failures("ably", "ok,500,ok,429:1,ok,ok,503,ok");
}

#[test]
fn centrifugo_delivers_in_order_through_failures_and_errors_in_a_200() {
    delivers_in_order_through_failures("centrifugo", "ok,500,ok,cerr:100,ok,429:1,ok,cerr:111,ok");
}

#[test]
fn pusher_delivers_in_order_through_failures() {
    delivers_in_order_through_failures("pusher", "ok,500,ok,429:1,ok,ok,503,ok");
}

/// A wrong key: `check` fails naming the relay's refusal, and the first publish stops pglive
/// with an error naming the sink; the slot does not pass the event.
#[test]
fn a_refused_key_fails_check_and_stops_pglive() {
    for preset in ["ably", "centrifugo", "pusher"] {
        let hook = relay(preset, "");
        let (db, config) = database(
            &format!("preset_refused_{preset}"),
            &sink(preset, &hook, false, ""),
        );
        setup(&config);
        let (code, out, _) = pglive(&["check"], &config);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("FAIL  sinks[1]:")
                && out.contains(&format!("{preset} refused the credentials")),
            "{out}"
        );
        let mut d = Daemon::run(&config);
        insert_txn(&db, 1, 1);
        let status = d.wait_exit(WAIT);
        let err = d.stderr();
        assert_eq!(status.code(), Some(1), "{err}");
        assert!(
            err.contains("sinks[1] (webhook)")
                && err.contains(&format!("{preset} refused the credentials"))
                && err.contains("401"),
            "{err}"
        );
        let posts = hook
            .requests()
            .into_iter()
            .filter(|r| r["method"] == "POST" && r["path"] != "/api/info")
            .count();
        assert!(posts >= 1, "{preset}: nothing was sent");
        let end = db.current_wal();
        assert!(
            db.confirmed_flush().unwrap_or(0) < end,
            "the slot moved past a refused event"
        );
    }
}

/// Pusher refuses `data` over 10 KB: a bulk UPDATE's event (3001 ids) goes without its ids
/// (`payload: {}`, refetch) with its `meta.id`, batched with the next event, and is logged.
#[test]
fn pusher_sends_an_event_over_10_kb_without_its_ids() {
    let hook = relay("pusher", "");
    let db = TestDb::new("preset_pusher_big");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let config = format!(
        "{}{}",
        db.config(&["name = \"t\""], "[events]\nmax_ids_per_event = 5000"),
        sink("pusher", &hook, true, "batch_max_events = 10")
    );
    setup(&config);
    let d = Daemon::run(&config);
    insert_txn(&db, 100_000, 103_000);
    insert_txn(&db, 1, 1);
    let events = d.wait_events("2 events on stdout", |e| e.len() >= 2);
    let requests = hook.wait("row 1 accepted", |r| accepted_ids(r).contains(&1));
    d.wait_log("sent without its ids");
    assert_eq!(
        accepted_ids(&requests),
        [1].into(),
        "{:#?}",
        summary(&requests)
    );
    let sent: Vec<Value> = requests
        .iter()
        .filter(|r| r["accepted"] == true)
        .flat_map(crate::webhook::events_of)
        .collect();
    let mut refetch = events[0].clone();
    refetch["payload"] = serde_json::json!({});
    assert_eq!(
        sent,
        [refetch, events[1].clone()],
        "{:#?}",
        summary(&requests)
    );
    let end = db.current_wal();
    wait_until("the slot to pass both events", || {
        db.confirmed_flush().unwrap_or(0) >= end
    });
}

//! The webhook sink against `scripts/webhook-receiver.py`, a receiver that checks every request
//! with the reference Standard Webhooks library and fails on a schedule: every change arrives
//! signed and in commit order through retried failures, one event or a batch per request, and
//! a rejected request stops pglive or, when asked, is skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Daemon, TestDb, WAIT, setup, wait_until};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The secret the sink signs with and the receiver verifies with (32 bytes).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A running `scripts/webhook-receiver.sh`, which installs the reference library on first use.
pub(crate) struct Receiver {
    child: Child,
    pub(crate) port: u16,
    dir: tempfile::TempDir,
}

impl Receiver {
    /// A receiver that answers by `schedule` (see the script) and then always 200; `body` is
    /// the response body of its scheduled failures.
    fn start(schedule: &str, body: &str) -> Receiver {
        Receiver::spawn(&["--secret", SECRET, "--schedule", schedule, "--body", body])
    }

    /// A receiver started with `args` (see the script).
    pub(crate) fn spawn(args: &[&str]) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let stderr = std::fs::File::create(dir.path().join("receiver.err")).unwrap();
        let mut child = Command::new(Path::new(ROOT).join("scripts/webhook-receiver.sh"))
            .args(["--port", "0"])
            .args(args)
            .arg("--log")
            .arg(dir.path().join("requests.jsonl"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start scripts/webhook-receiver.sh");
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        let Ok(port) = line.trim().parse() else {
            let _ = child.kill();
            let _ = child.wait();
            let err = std::fs::read_to_string(dir.path().join("receiver.err")).unwrap();
            panic!("the webhook receiver printed no port ({line:?})\n--- its stderr:\n{err}");
        };
        Receiver { child, port, dir }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// A `[[sinks]]` entry for this receiver, with `extra` keys.
    fn sink(&self, extra: &str) -> String {
        format!(
            "[[sinks]]\ntype = \"webhook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nmax_backoff = \"1s\"\n{extra}\n",
            self.url()
        )
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("requests.jsonl")
    }

    /// Every request so far, in arrival order (complete lines only).
    pub(crate) fn requests(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        text.split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line ({e}): {l}")))
            .collect()
    }

    /// Waits until `cond` holds for the requests so far; fails at once on a request that did
    /// not verify.
    #[track_caller]
    pub(crate) fn wait(&self, what: &str, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let requests = self.requests();
            if let Some(bad) = requests.iter().find(|r| r["verified"] != true) {
                panic!(
                    "a request failed verification: {:#?}",
                    summary(std::slice::from_ref(bad))
                );
            }
            if cond(&requests) {
                return requests;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out waiting for {what}\n--- {} requests, the last 5: {:#?}",
                    requests.len(),
                    summary(&requests[requests.len().saturating_sub(5)..])
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let err = std::fs::read_to_string(self.dir.path().join("receiver.err"));
            eprintln!("--- webhook receiver stderr:\n{}", err.unwrap_or_default());
        }
    }
}

/// The requests without their headers, for failure messages.
pub(crate) fn summary(requests: &[Value]) -> Vec<Value> {
    requests
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.as_object_mut().unwrap().remove("headers");
            r
        })
        .collect()
}

/// The id pglive names a request by: its one event's `meta.id`, or `<first>..<last>` of
/// several with `:` as `.`.
pub(crate) fn request_id(events: &[Value]) -> String {
    let id = |e: &Value| e["meta"]["id"].as_str().unwrap().to_owned();
    match events {
        [one] => id(one),
        [first, .., last] => format!("{}..{}", id(first), id(last)).replace(':', "."),
        [] => String::new(),
    }
}

/// The events a request carried (the receiver finds them in its body).
pub(crate) fn events_of(request: &Value) -> Vec<Value> {
    request["events"].as_array().cloned().unwrap_or_default()
}

/// The events of the accepted requests, each webhook-id's first acceptance only, in order.
pub(crate) fn first_deliveries(requests: &[Value]) -> Vec<Value> {
    let mut seen = BTreeSet::new();
    requests
        .iter()
        .filter(|r| r["accepted"] == true)
        .filter(|r| seen.insert(r["webhook_id"].as_str().unwrap().to_owned()))
        .flat_map(events_of)
        .collect()
}

/// The row ids the accepted requests carried, each once.
pub(crate) fn accepted_ids(requests: &[Value]) -> BTreeSet<i64> {
    requests
        .iter()
        .filter(|r| r["accepted"] == true)
        .flat_map(events_of)
        .flat_map(|e| e["payload"]["ids"].as_array().cloned().unwrap_or_default())
        .map(|id| id.as_i64().expect("integer id"))
        .collect()
}

/// A database with table `t` (integer key) and the configuration: one event per row, to
/// stdout (sinks[0]) and to the receiver (sinks[1]) with `extra` keys.
fn per_row(name: &str, hook: &Receiver, extra: &str) -> (TestDb<'static>, String) {
    let db = TestDb::new(name);
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let config = format!(
        "{}{}",
        db.config(&["name = \"t\""], "[events]\ncoalesce = false"),
        hook.sink(extra)
    );
    (db, config)
}

/// Rows `from..=to` in one transaction.
pub(crate) fn insert_txn(db: &TestDb, from: i64, to: i64) {
    db.sql(&format!(
        "INSERT INTO t SELECT generate_series({from}, {to})"
    ));
}

/// Every request passed the reference verification, is a JSON POST to the sink's path with
/// the configured extra header, and has its events' [`request_id`] as its webhook-id; a
/// failed request is sent again next, with the same id and body; and no two webhook-ids
/// carried the same body.
#[track_caller]
fn assert_well_formed(requests: &[Value]) {
    let mut bodies: BTreeMap<String, String> = BTreeMap::new();
    for (i, r) in requests.iter().enumerate() {
        let what = || format!("request {i}: {:#?}", summary(std::slice::from_ref(r)));
        assert_eq!(r["verified"], true, "{}", what());
        assert_eq!(r["path"], "/hook", "{}", what());
        let h = &r["headers"];
        assert!(
            h["content-type"]
                .as_str()
                .is_some_and(|c| c.starts_with("application/json")),
            "{}",
            what()
        );
        assert_eq!(h["x-extra"], "v", "{}", what());
        let id = r["webhook_id"].as_str().unwrap();
        assert_eq!(request_id(&events_of(r)), id, "{}", what());
        let body = r["body"].to_string();
        let earlier = bodies.entry(id.to_owned()).or_insert_with(|| body.clone());
        assert_eq!(*earlier, body, "webhook-id {id} came with two bodies");
        if r["accepted"] != true {
            let next = requests.get(i + 1);
            if let Some(next) = next {
                assert_eq!(next["webhook_id"], id, "after a failure: {}", what());
            }
        }
    }
    let distinct: BTreeSet<&String> = bodies.values().collect();
    assert_eq!(
        distinct.len(),
        bodies.len(),
        "one body under two webhook-ids"
    );
}

#[test]
fn every_change_arrives_in_order_through_failures_and_duplicates_only_repeat_a_webhook_id() {
    let hook = Receiver::start(
        "ok,500,ok,ok,429:1,ok,timeout:3,ok,ok,500,500,ok,503,ok,timeout:3,ok",
        "try again later",
    );
    let (db, config) = per_row(
        "webhook_order",
        &hook,
        "timeout = \"1s\"\nheaders = { \"X-Extra\" = \"v\" }",
    );
    setup(&config);
    let d = Daemon::run(&config);
    for (from, to) in [(1, 5), (6, 40), (41, 41), (42, 100), (101, 160), (161, 200)] {
        insert_txn(&db, from, to);
    }
    let events = d.wait_events("200 events on stdout", |e| e.len() >= 200);
    let requests = hook.wait("every row accepted", |r| accepted_ids(r).len() >= 200);

    assert_eq!(accepted_ids(&requests), (1..=200).collect());
    assert_well_formed(&requests);
    assert!(
        requests.iter().all(|r| r["body"].is_object()),
        "one event per request"
    );
    assert_eq!(
        first_deliveries(&requests),
        events,
        "first deliveries are the events stdout printed, in commit order"
    );

    // The schedule was played: each kind of failure was retried.
    let statuses: Vec<String> = requests.iter().map(|r| r["status"].to_string()).collect();
    for s in ["500", "503", "429", "\"timeout\""] {
        assert!(statuses.iter().any(|t| t == s), "no {s} in {statuses:?}");
    }
    // The retry after 429 waited for its Retry-After (1 s).
    for (i, r) in requests
        .iter()
        .enumerate()
        .filter(|(_, r)| r["status"] == 429)
    {
        let next = &requests[i + 1];
        let waited = next["time"].as_f64().unwrap() - r["time"].as_f64().unwrap();
        assert!(
            waited >= 0.9,
            "retried {waited:.3} s after a 429 with Retry-After: 1"
        );
    }

    let last = db.lsn(events.last().unwrap()["meta"]["lsn"].as_str().unwrap());
    wait_until("the slot to pass the last transaction", || {
        db.confirmed_flush().unwrap_or(0) >= last
    });
}

#[test]
fn batches_are_arrays_named_after_their_first_and_last_events() {
    let hook = Receiver::start("ok,500,ok,429:1,ok,ok,500,ok", "try again later");
    let (db, config) = per_row(
        "webhook_batch",
        &hook,
        "batch_max_events = 50\nheaders = { \"X-Extra\" = \"v\" }",
    );
    setup(&config);
    let d = Daemon::run(&config);
    insert_txn(&db, 1, 1);
    for (from, to) in [(2, 120), (121, 130), (131, 300)] {
        insert_txn(&db, from, to);
    }
    let events = d.wait_events("300 events on stdout", |e| e.len() >= 300);
    let requests = hook.wait("every row accepted", |r| accepted_ids(r).len() >= 300);

    assert_eq!(accepted_ids(&requests), (1..=300).collect());
    assert_well_formed(&requests);
    for r in &requests {
        let n = r["body"].as_array().map(Vec::len);
        assert!(
            n.is_some_and(|n| (1..=50).contains(&n)),
            "a body that is not an array of 1 to 50 events: {:#?}",
            summary(std::slice::from_ref(r))
        );
    }
    assert!(
        requests
            .iter()
            .any(|r| r["body"].as_array().unwrap().len() > 1),
        "no request carried more than one event"
    );
    assert_eq!(
        first_deliveries(&requests),
        events,
        "first deliveries are the events stdout printed, in commit order"
    );

    let last = db.lsn(events.last().unwrap()["meta"]["lsn"].as_str().unwrap());
    wait_until("the slot to pass the last transaction", || {
        db.confirmed_flush().unwrap_or(0) >= last
    });
}

/// A response body longer than the 200 bytes the error quotes.
fn long_body() -> String {
    format!("no such tenant: acme {} END-OF-BODY", "x".repeat(300))
}

#[test]
fn a_rejected_request_stops_pglive_with_the_status_and_body() {
    let hook = Receiver::start("ok,400", &long_body());
    let (db, config) = per_row("webhook_reject", &hook, "");
    setup(&config);
    let mut d = Daemon::run(&config);
    insert_txn(&db, 1, 1);
    insert_txn(&db, 2, 2);
    let status = d.wait_exit(WAIT);
    let err = d.stderr();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("sinks[1] (webhook)"), "{err}");
    assert!(err.contains("400"), "{err}");
    assert!(err.contains("no such tenant: acme xxxx"), "{err}");
    assert!(
        !err.contains("END-OF-BODY"),
        "more than 200 bytes of the body: {err}"
    );

    // The rejected event was sent once, and the slot did not pass it.
    let requests = hook.requests();
    let rejected: Vec<&Value> = requests.iter().filter(|r| r["status"] == 400).collect();
    assert_eq!(rejected.len(), 1, "{:#?}", summary(&requests));
    assert_eq!(rejected[0]["body"]["payload"]["ids"][0], 2);
    let lsn = db.lsn(rejected[0]["body"]["meta"]["lsn"].as_str().unwrap());
    assert!(
        db.confirmed_flush().unwrap() < lsn,
        "the slot moved past a rejected event"
    );
}

#[test]
fn on_rejected_skip_logs_and_goes_on() {
    let hook = Receiver::start("ok,400,ok", "no such tenant: acme");
    let (db, config) = per_row("webhook_skip", &hook, "on_rejected = \"skip\"");
    setup(&config);
    let d = Daemon::run(&config);
    for id in 1..=5 {
        insert_txn(&db, id, id);
    }
    let requests = hook.wait("rows 1, 3, 4 and 5 accepted", |r| {
        accepted_ids(r).len() >= 4
    });
    assert_eq!(accepted_ids(&requests), BTreeSet::from([1, 3, 4, 5]));
    let for_row_2: Vec<&Value> = requests
        .iter()
        .filter(|r| r["body"]["payload"]["ids"][0] == 2)
        .collect();
    assert_eq!(for_row_2.len(), 1, "a skipped request is not sent again");
    assert_eq!(for_row_2[0]["status"], 400);
    d.wait_log("no such tenant: acme");
    assert!(d.stderr().contains("400"), "{}", d.stderr());

    let end = db.current_wal();
    wait_until("the slot to pass the skipped event and the rest", || {
        db.confirmed_flush().unwrap_or(0) >= end
    });
}

/// 401 and 403 mean refused credentials, which every request would meet: pglive stops even
/// with `on_rejected = "skip"`, and the slot does not pass the event.
#[test]
fn a_401_stops_pglive_even_with_on_rejected_skip() {
    let hook = Receiver::start("ok,401", "bad signature");
    let (db, config) = per_row("webhook_401", &hook, "on_rejected = \"skip\"");
    setup(&config);
    let mut d = Daemon::run(&config);
    insert_txn(&db, 1, 1);
    insert_txn(&db, 2, 2);
    let status = d.wait_exit(WAIT);
    let err = d.stderr();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("sinks[1] (webhook)") && err.contains("401") && err.contains("bad signature"),
        "{err}"
    );
    let requests = hook.requests();
    assert_eq!(accepted_ids(&requests), BTreeSet::from([1]));
    let refused = requests.iter().find(|r| r["status"] == 401).unwrap();
    let lsn = db.lsn(refused["body"]["meta"]["lsn"].as_str().unwrap());
    assert!(
        db.confirmed_flush().unwrap() < lsn,
        "the slot moved past a refused event"
    );
}

/// `https://`: the receiver's certificate is verified against `ca_file`; `check` says whether
/// the receiver is reachable; a certificate the CA did not sign stops pglive with a clear error.
#[test]
fn https_verifies_the_receiver_against_ca_file() {
    use crate::support::broker::tls_front_to;
    use crate::support::pglive;

    let hook = Receiver::start("", "");
    let db = TestDb::new("webhook_tls");
    db.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let certs = &db.cluster.dir;
    let port = tls_front_to(
        &certs.join("server.crt"),
        &certs.join("server.key"),
        format!("127.0.0.1:{}", hook.port),
    );
    let config = |ca: &std::path::Path| {
        let sink = hook
            .sink(&format!("ca_file = \"{}\"", ca.display()))
            .replace(&hook.url(), &format!("https://localhost:{port}/hook"));
        format!("{}{sink}", db.config(&["name = \"t\""], ""))
    };
    let trusted = config(&db.cluster.ca_cert());
    setup(&trusted);
    let (code, out, _) = pglive(&["check"], &trusted);
    assert!(
        out.contains("ok    sinks[1]: reached the receiver at https://localhost:"),
        "{code} {out}"
    );
    let d = Daemon::run(&trusted);
    insert_txn(&db, 1, 3);
    let requests = hook.wait("the rows over TLS", |r| accepted_ids(r).len() >= 3);
    assert_eq!(accepted_ids(&requests), (1..=3).collect());
    drop(d);

    let untrusted = config(&db.cluster.other_ca_cert());
    let (code, out, _) = pglive(&["check"], &untrusted);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  sinks[1]: cannot reach the receiver"),
        "{out}"
    );
    let mut d = Daemon::run(&untrusted);
    let status = d.wait_exit(std::time::Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(1),
        "a certificate problem is not retried"
    );
    let err = d.stderr();
    assert!(
        err.contains("sinks[1] (webhook)") && err.contains("set ca_file"),
        "{err}"
    );
}

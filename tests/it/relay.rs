//! Relay nodes (`pglive relay`) fed by a real `pglive run` through a RabbitMQ stream, with
//! real WebSocket clients: clients of a killed or restarted node resume on another with
//! `since` and miss nothing, a node that loses the broker keeps its clients and resumes where
//! it was, a node started late serves `since` from the stream's history; and the amqp sink's
//! stream queue itself.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

use crate::support::broker::{Relay, Vhost, rabbitmqctl};
use crate::support::cluster::free_port;
use crate::support::swarm::{Seen, Swarm, summary};
use crate::support::ws::WsClient;
use crate::support::{Daemon, TestDb, WAIT, http_get, metric, setup, wait_until};

const STREAM: &str = "pglive.live";
const POSTS: &str = "resources/posts";
const COMMENTS: &str = "resources/comments";
const CLIENTS: usize = 200;
const CLIENTS_SERIES: &str = r#"pglive_websocket_clients{sink="websocket"}"#;

/// The source: tables `posts` and `comments`, one event per row, to stdout and into the
/// stream `pglive.live` of a vhost of its own.
struct Source {
    // Dropped first: the daemon stops before its database and vhost go.
    daemon: Daemon,
    mq: Vhost,
    db: TestDb<'static>,
}

fn source(name: &str) -> Source {
    source_into(name, Vhost::new(name))
}

/// [`source`], into the vhost `mq`.
fn source_into(name: &str, mq: Vhost) -> Source {
    let db = TestDb::new(name);
    db.sql("CREATE TABLE posts (id int PRIMARY KEY); CREATE TABLE comments (id int PRIMARY KEY);");
    let config = format!(
        "{}{}",
        db.config(
            &["name = \"posts\"", "name = \"comments\""],
            "[events]\ncoalesce = false"
        ),
        mq.sink(&format!("stream = \"{STREAM}\""))
    );
    setup(&config);
    let daemon = Daemon::run(&config);
    // Logged once the exchange and the stream are declared.
    daemon.wait_log("publishing to AMQP");
    Source { daemon, mq, db }
}

impl Source {
    /// Per channel, the `meta.id` of every event, once stdout shows all `total` of them.
    #[track_caller]
    fn reference(&self, total: usize) -> HashMap<String, Vec<String>> {
        let events = self
            .daemon
            .wait_events(&format!("{total} events"), |e| e.len() >= total);
        assert_eq!(events.len(), total, "one event per row");
        let mut by_channel: HashMap<String, Vec<String>> = HashMap::new();
        for e in &events {
            by_channel
                .entry(e["channel"].as_str().unwrap().to_owned())
                .or_default()
                .push(e["meta"]["id"].as_str().unwrap().to_owned());
        }
        by_channel
    }
}

/// A relay node reading the stream at `amqp_url`, serving anonymous clients on a port of its
/// own, with its ops listener on another.
struct Node {
    ws_port: u16,
    ops_port: u16,
    config: String,
    daemon: Option<Daemon>,
}

impl Node {
    /// `websocket`: extra keys for the node's websocket sink.
    fn new(amqp_url: &str, websocket: &str) -> Node {
        let (ws_port, ops_port) = (free_port(), free_port());
        let config = format!(
            "[relay]\nurl = \"{amqp_url}\"\nstream = \"{STREAM}\"\nmax_backoff = \"1s\"\n\n\
             [[sinks]]\ntype = \"websocket\"\nlisten = \"127.0.0.1:{ws_port}\"\nanonymous = true\n\
             allowed_origins = [\"http://localhost\"]\n\
             {websocket}\n\n[[tables]]\nname = \"posts\"\n\n[[tables]]\nname = \"comments\"\n\n\
             [ops]\nlisten = \"127.0.0.1:{ops_port}\"\n"
        );
        Node {
            ws_port,
            ops_port,
            config,
            daemon: None,
        }
    }

    fn start(&mut self) {
        assert!(self.daemon.is_none(), "the node runs already");
        self.daemon = Some(Daemon::spawn(&self.config, &["relay"]));
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/live", self.ws_port)
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("the node runs")
    }

    /// Waits until `/readyz` answers 200 (connected and caught up with the stream).
    #[track_caller]
    fn wait_ready(&self) {
        self.wait_readyz(200, "");
    }

    /// Waits until `/readyz` answers `code` with a body containing `needle`; returns the body.
    #[track_caller]
    fn wait_readyz(&self, code: u16, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = http_get(self.ops_port, "/readyz");
            if let Some((c, body)) = &got
                && *c == code
                && body.contains(needle)
            {
                return body.clone();
            }
            let d = self.daemon();
            assert!(
                Instant::now() < deadline && !d.has_exited(),
                "no /readyz → {code} {needle:?}; last answer {got:?}\n--- stderr:\n{}",
                d.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn metrics(&self) -> String {
        http_get(self.ops_port, "/metrics").map_or_else(String::new, |(_, body)| body)
    }

    /// Waits until the sample `series` of `/metrics` has `value`.
    #[track_caller]
    fn wait_metric(&self, series: &str, value: f64) {
        let mut last = None;
        let deadline = Instant::now() + WAIT;
        while last != Some(value) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {series} = {value}: {last:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
            last = metric(&self.metrics(), series);
        }
    }

    fn kill(&mut self) {
        self.daemon.take().expect("the node runs").kill();
    }

    /// SIGTERM: the node closes its clients (1001) and exits with status 0.
    #[track_caller]
    fn stop(&mut self) {
        let mut d = self.daemon.take().expect("the node runs");
        d.signal("TERM");
        let status = d.wait_exit(WAIT);
        assert!(status.success(), "{status}\n--- stderr:\n{}", d.stderr());
    }
}

/// Commits one row per transaction, alternately into `comments` and `posts` (row k has id k),
/// one every `every`, on a thread of its own, until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    rows: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(db: &TestDb, every: Duration) -> Writer {
        let mut psql = db.cluster.psql_session(&db.name);
        let stop = Arc::new(AtomicBool::new(false));
        let rows = Arc::new(AtomicUsize::new(0));
        let (stopped, written) = (stop.clone(), rows.clone());
        let thread = std::thread::spawn(move || {
            let mut stdin = psql.stdin.take().unwrap();
            let mut k = 0;
            while !stopped.load(Ordering::SeqCst) {
                k += 1;
                let table = if k % 2 == 0 { "posts" } else { "comments" };
                writeln!(stdin, "INSERT INTO {table} VALUES ({k});").unwrap();
                stdin.flush().unwrap();
                written.store(k, Ordering::SeqCst);
                // Pacing the writes, not waiting for anything.
                std::thread::sleep(every);
            }
            drop(stdin);
            let out = psql.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "psql: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        });
        Writer {
            stop,
            rows,
            thread: Some(thread),
        }
    }

    fn rows(&self) -> usize {
        self.rows.load(Ordering::SeqCst)
    }

    /// Waits until `n` more rows are written.
    #[track_caller]
    fn wait_more(&self, n: usize) {
        let target = self.rows() + n;
        wait_until(&format!("{target} rows written"), || self.rows() >= target);
    }

    /// Stops, waits until every row written is committed, and returns how many there are.
    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().expect("the writer");
        self.rows()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Client `i`'s channels: both, or one of them.
fn channels_of(i: usize) -> Vec<String> {
    match i % 4 {
        0 | 1 => vec![POSTS.into(), COMMENTS.into()],
        2 => vec![POSTS.into()],
        _ => vec![COMMENTS.into()],
    }
}

/// Every client has received at least `n` events on each of its channels.
fn each_has(seen: &[Seen], n: usize) -> bool {
    seen.iter()
        .all(|s| s.channels.iter().all(|c| s.count(c) >= n))
}

/// Waits until every client has the last event of each of its channels, then checks that it
/// got exactly the reference's events, in order — none missing, none twice — and no control
/// frame besides `subscribed` (no `resync`).
#[track_caller]
fn assert_everyone_got_everything(
    swarm: &Swarm,
    reference: &HashMap<String, Vec<String>>,
) -> Vec<Seen> {
    let seen = swarm.wait(
        "every client to receive each channel's last event",
        |seen| {
            seen.iter().all(|s| {
                s.channels
                    .iter()
                    .all(|c| s.events.get(c).and_then(|e| e.last()) == reference[c].last())
            })
        },
    );
    let mut bad = Vec::new();
    for (i, s) in seen.iter().enumerate() {
        if !s.others.is_empty() {
            bad.push(format!("client {i}: control frames {:?}", s.others));
        }
        for c in &s.channels {
            let got = s.events.get(c).cloned().unwrap_or_default();
            if got != reference[c] {
                bad.push(format!(
                    "client {i} on {c}: {}; {}",
                    difference(&got, &reference[c]),
                    summary(s)
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} problems over {} clients, the first ones:\n{}",
        bad.len(),
        seen.len(),
        bad[..bad.len().min(10)].join("\n")
    );
    seen
}

/// How `got` differs from `want`: the ids missing, those received twice, or the order.
fn difference(got: &[String], want: &[String]) -> String {
    let have: HashSet<&String> = got.iter().collect();
    let missing: Vec<&String> = want.iter().filter(|id| !have.contains(id)).collect();
    let mut once = HashSet::new();
    let twice: Vec<&String> = got.iter().filter(|id| !once.insert(*id)).collect();
    format!(
        "{} events for {} (missing {:?}, twice {:?}{})",
        got.len(),
        want.len(),
        &missing[..missing.len().min(5)],
        &twice[..twice.len().min(5)],
        if missing.is_empty() && twice.is_empty() {
            ", out of order"
        } else {
            ""
        }
    )
}

/// Two nodes, 200 clients spread over them, a writer committing throughout: a started test.
struct Pair {
    src: Source,
    a: Node,
    b: Node,
    swarm: Swarm,
    writer: Writer,
}

fn pair(name: &str) -> Pair {
    let src = source(name);
    let mut a = Node::new(&src.mq.url(), "");
    let mut b = Node::new(&src.mq.url(), "");
    a.start();
    b.start();
    a.wait_ready();
    b.wait_ready();
    let swarm = Swarm::start(CLIENTS, &[a.url(), b.url()], channels_of);
    swarm.wait_on(&[a.url(), b.url()]);
    a.wait_metric(CLIENTS_SERIES, (CLIENTS / 2) as f64);
    b.wait_metric(CLIENTS_SERIES, (CLIENTS / 2) as f64);
    let writer = Writer::start(&src.db, Duration::from_millis(25));
    swarm.wait(
        "every client to receive events on each of its channels",
        |s| each_has(s, 3),
    );
    Pair {
        src,
        a,
        b,
        swarm,
        writer,
    }
}

/// Moves the clients of a node that is going away to `to`: none is offered while rows are
/// committed (so that the moving clients miss some), then `to`, where they resume.
#[track_caller]
fn move_clients(swarm: &Swarm, writer: &Writer, going: impl FnOnce(), to: &Node) {
    swarm.offer(&[]);
    going();
    writer.wait_more(10);
    swarm.offer(&[to.url()]);
    swarm.wait_on(&[to.url()]);
}

#[test]
fn clients_of_a_killed_node_resume_on_the_other_with_no_gap_and_no_duplicate() {
    let Pair {
        src,
        mut a,
        b,
        swarm,
        writer,
    } = pair("relay_kill");
    let a_url = a.url();
    move_clients(&swarm, &writer, || a.kill(), &b);
    b.wait_metric(CLIENTS_SERIES, CLIENTS as f64);
    writer.wait_more(40);
    let total = writer.stop();
    let reference = src.reference(total);
    let seen = assert_everyone_got_everything(&swarm, &reference);
    for (i, s) in seen.iter().enumerate() {
        // The killed node sent no close frame.
        let ends = if i % 2 == 0 {
            vec![(a_url.clone(), None)]
        } else {
            vec![]
        };
        assert_eq!(s.ends, ends, "client {i}");
    }
}

#[test]
fn clients_follow_nodes_restarted_one_after_the_other_with_no_gap_and_no_duplicate() {
    let Pair {
        src,
        mut a,
        mut b,
        swarm,
        writer,
    } = pair("relay_restart");
    let (a_url, b_url) = (a.url(), b.url());
    move_clients(&swarm, &writer, || a.stop(), &b);
    a.start();
    a.wait_ready();
    swarm.offer(&[a_url.clone(), b_url.clone()]);
    writer.wait_more(20);
    move_clients(&swarm, &writer, || b.stop(), &a);
    b.start();
    b.wait_ready();
    swarm.offer(&[a_url.clone(), b_url.clone()]);
    a.wait_metric(CLIENTS_SERIES, CLIENTS as f64);
    b.wait_metric(CLIENTS_SERIES, 0.0);
    writer.wait_more(40);
    let total = writer.stop();
    let reference = src.reference(total);
    let seen = assert_everyone_got_everything(&swarm, &reference);
    for (i, s) in seen.iter().enumerate() {
        // Each stop closed its clients with 1001 (going away).
        let mut ends = vec![(b_url.clone(), Some(1001))];
        if i % 2 == 0 {
            ends.insert(0, (a_url.clone(), Some(1001)));
        }
        assert_eq!(s.ends, ends, "client {i}");
    }
}

#[test]
fn a_node_that_loses_the_broker_turns_unready_keeps_its_clients_and_resumes_where_it_was() {
    let src = source("relay_cut");
    let port = free_port();
    let proxy = Relay::start(port);
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/{}", src.mq.name);
    let mut node = Node::new(&url, "");
    node.start();
    node.wait_ready();
    let clients = 20;
    let swarm = Swarm::start(clients, &[node.url()], channels_of);
    swarm.wait_on(&[node.url()]);
    let writer = Writer::start(&src.db, Duration::from_millis(25));
    swarm.wait("events on each channel", |s| each_has(s, 3));
    let before = metric(&node.metrics(), "pglive_relay_stream_offset").expect("an offset");

    proxy.refuse();
    proxy.cut();
    let reason = node.wait_readyz(503, "not ready");
    node.wait_metric("pglive_streaming", 0.0);
    // Events go on into the stream while the node cannot read it; its clients stay.
    let published = src.daemon.events().len();
    src.daemon
        .wait_events("20 events published meanwhile", |e| {
            e.len() >= published + 20
        });
    assert!(
        matches!(http_get(node.ops_port, "/readyz"), Some((503, _))),
        "still unready: {reason}"
    );
    assert_eq!(
        metric(&node.metrics(), CLIENTS_SERIES),
        Some(clients as f64)
    );
    assert!(
        metric(&node.metrics(), "pglive_relay_stream_offset").unwrap() >= before,
        "the offset never goes back"
    );

    proxy.allow();
    node.wait_ready();
    node.wait_metric("pglive_streaming", 1.0);
    writer.wait_more(20);
    let total = writer.stop();
    let reference = src.reference(total);
    let seen = assert_everyone_got_everything(&swarm, &reference);
    for (i, s) in seen.iter().enumerate() {
        assert_eq!((s.connections, &s.ends), (1, &vec![]), "client {i} stayed");
    }
    // It resumed at the offset after the last one it had passed: nothing read twice, and
    // every message of the stream (one per event, from offset 0) read once.
    node.wait_metric("pglive_relay_stream_offset", (total - 1) as f64);
    let page = node.metrics();
    assert_eq!(metric(&page, "pglive_relay_duplicates_total"), Some(0.0));
    assert_eq!(
        metric(&page, "pglive_relay_events_total"),
        Some(total as f64)
    );
}

#[test]
fn a_node_started_before_the_stream_exists_stays_unready_until_it_does() {
    let mq = Vhost::new("relay_early");
    let mut node = Node::new(&mq.url(), "");
    node.start();
    let reason = node.wait_readyz(503, "does not exist (yet)");
    assert!(reason.contains("stream = \"pglive.live\""), "{reason}");
    let src = source_into("relay_early", mq);
    node.wait_ready();
    let mut c = WsClient::connect(&node.url(), &[]).expect("connects");
    c.subscribe(POSTS);
    assert_eq!(c.next(), json!({"op": "subscribed", "channel": POSTS}));
    src.db
        .sql("INSERT INTO posts VALUES (1); INSERT INTO posts VALUES (2);");
    let frames = c.until_events(2);
    let (got, controls) = split(&frames);
    assert_eq!((got, controls), (src.reference(2)[POSTS].clone(), vec![]));
}

/// The `meta.id` of the `posts` event committed closest to `age` ago.
fn event_aged<'a>(ids: &'a [String], committed: &[Instant], age: Duration) -> (&'a str, Duration) {
    let (i, at) = committed
        .iter()
        .enumerate()
        .min_by_key(|(_, at)| at.elapsed().abs_diff(age))
        .expect("rows were committed");
    (&ids[i], at.elapsed())
}

/// Event frames' ids, and the control frames, of `frames`.
fn split(frames: &[Value]) -> (Vec<String>, Vec<&Value>) {
    let ids = frames
        .iter()
        .filter(|f| f.get("op").is_none())
        .map(|f| f["meta"]["id"].as_str().unwrap().to_owned())
        .collect();
    let controls = frames.iter().filter(|f| f.get("op").is_some()).collect();
    (ids, controls)
}

#[test]
#[ignore = "takes 11 minutes of real time; scripts/test.sh runs it beside the rest of the suite"]
fn history_of_ten_minutes_serves_a_since_five_minutes_old() {
    // Another test process may be restarting the shared broker at this moment.
    rabbitmqctl(&["await_startup"]);
    let src = source("relay_history");
    // A row into posts about every 20 s for 10 minutes, with when each was committed.
    let began = Instant::now();
    let mut committed = Vec::new();
    while began.elapsed() < Duration::from_secs(600) {
        let k = committed.len() + 1;
        src.db.sql(&format!("INSERT INTO posts VALUES ({k})"));
        committed.push(Instant::now());
        // Pacing the writes.
        std::thread::sleep(Duration::from_secs(20));
    }
    let ids = src.reference(committed.len())[POSTS].clone();
    assert_eq!(ids.len(), committed.len());

    let mut node = Node::new(&src.mq.url(), "history_age = \"7m\"");
    node.start();
    node.wait_ready();
    let (five, age) = event_aged(&ids, &committed, Duration::from_secs(300));
    assert!(
        age.abs_diff(Duration::from_secs(300)) < Duration::from_secs(30),
        "{age:?}"
    );
    let (nine, age) = event_aged(&ids, &committed, Duration::from_secs(540));
    assert!(
        age.abs_diff(Duration::from_secs(540)) < Duration::from_secs(30),
        "{age:?}"
    );

    // Held: every later event is replayed, then live ones follow; nothing else.
    let mut c = WsClient::connect(&node.url(), &[]).expect("connects");
    c.send(json!({"op": "subscribe", "channel": POSTS, "since": five}));
    let later: Vec<String> = ids[ids.iter().position(|id| id == five).unwrap() + 1..].to_vec();
    let frames = c.until_events(later.len());
    let (got, controls) = split(&frames);
    assert_eq!(controls, [&json!({"op": "subscribed", "channel": POSTS})]);
    assert_eq!(got, later, "every event after the one 5 minutes old");
    src.db
        .sql(&format!("INSERT INTO posts VALUES ({})", ids.len() + 1));
    let live = src.reference(ids.len() + 1)[POSTS].last().unwrap().clone();
    let frames = c.until_events(1);
    let (got, controls) = split(&frames);
    assert_eq!((got, controls), (vec![live], vec![]));

    // Older than the node's history (7 minutes), though still in the stream: resync.
    let mut c = WsClient::connect(&node.url(), &[]).expect("connects");
    c.send(json!({"op": "subscribe", "channel": POSTS, "since": nine}));
    assert_eq!(c.next(), json!({"op": "subscribed", "channel": POSTS}));
    assert_eq!(c.next(), json!({"op": "resync", "channel": POSTS}));
}

/// A source mapping `posts` and `comments`, with `sink` (keys of an amqp sink into `mq`).
fn stream_source(db: &TestDb, mq: &Vhost, sink: &str) -> String {
    format!(
        "{}{}",
        db.config(
            &["name = \"posts\"", "name = \"comments\""],
            "[events]\ncoalesce = false"
        ),
        mq.sink(sink)
    )
}

/// The queue `name` of `mq` as `rabbitmqctl list_queues` shows it (JSON), if it exists.
fn listed_queue(mq: &Vhost, name: &str) -> Option<Value> {
    let out = rabbitmqctl(&[
        "list_queues",
        "-p",
        &mq.name,
        "name",
        "type",
        "arguments",
        "--formatter",
        "json",
    ]);
    let queues: Vec<Value> = serde_json::from_str(&out).expect("JSON from rabbitmqctl");
    queues.into_iter().find(|q| q["name"] == name)
}

#[test]
fn the_amqp_sink_declares_its_stream_with_the_retention_asked_and_fills_it() {
    let db = TestDb::new("relay_stream_sink");
    db.sql("CREATE TABLE posts (id int PRIMARY KEY); CREATE TABLE comments (id int PRIMARY KEY);");
    let mq = Vhost::new("stream_sink");
    let config = stream_source(
        &db,
        &mq,
        "stream = \"events.live\"\nstream_max_age = \"2h\"\nstream_max_bytes = 5242880",
    );
    setup(&config);
    assert_eq!(listed_queue(&mq, "events.live"), None);
    let d = Daemon::run(&config);
    d.wait_log("publishing to AMQP");
    let queue = listed_queue(&mq, "events.live").expect("the stream is declared");
    assert_eq!(queue["type"], "stream", "{queue}");
    // Listed as [name, type, value] triples.
    let args: HashMap<&str, &Value> = queue["arguments"]
        .as_array()
        .expect("arguments")
        .iter()
        .map(|a| (a[0].as_str().unwrap(), &a[2]))
        .collect();
    assert_eq!(args["x-queue-type"], "stream", "{queue}");
    assert_eq!(args["x-max-age"], "7200s", "{queue}");
    assert_eq!(args["x-max-length-bytes"], 5242880, "{queue}");

    let before = unix_ms();
    db.sql(
        "INSERT INTO posts VALUES (1); INSERT INTO comments VALUES (1); \
         INSERT INTO posts VALUES (2); UPDATE posts SET id = 3 WHERE id = 2; DELETE FROM comments;",
    );
    d.wait_events("five events", |e| e.len() >= 5);
    let messages = mq.stream_messages("events.live", 5);
    // Every event, of every table (the stream is bound with `#`), in commit order, as stdout
    // printed them.
    let bodies: Vec<String> = messages
        .iter()
        .map(|m| String::from_utf8(m.body.clone()).unwrap())
        .collect();
    assert_eq!(bodies, d.raw_lines());
    let keys: Vec<&str> = messages.iter().map(|m| m.routing_key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "resources.posts",
            "resources.comments",
            "resources.posts",
            "resources.posts",
            "resources.comments"
        ]
    );
    for m in &messages {
        match m.header("published_ms") {
            Some(AMQPValue::LongLongInt(ms)) => {
                assert!((before..=unix_ms()).contains(&ms), "published_ms {ms}")
            }
            other => panic!("published_ms: {other:?}"),
        }
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn a_queue_in_the_way_of_the_stream_is_a_fatal_error_that_says_how_to_fix_it() {
    let db = TestDb::new("relay_stream_clash");
    db.sql("CREATE TABLE posts (id int PRIMARY KEY); CREATE TABLE comments (id int PRIMARY KEY);");
    let mut classic = FieldTable::default();
    classic.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    let mut shorter = FieldTable::default();
    shorter.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    shorter.insert("x-max-age".into(), AMQPValue::LongString("60s".into()));
    for (name, args) in [
        ("stream_clash_classic", classic),
        ("stream_clash_age", shorter),
    ] {
        let mq = Vhost::new(name);
        mq.queue_with("pglive", "events.live", "#", args);
        let config = stream_source(&db, &mq, "stream = \"events.live\"");
        setup(&config);
        let mut d = Daemon::run(&config);
        let status = d.wait_exit(WAIT);
        let err = d.stderr();
        assert_eq!(status.code(), Some(1), "{name}: {err}");
        for needle in [
            "sinks[1] (amqp)",
            "\"events.live\"",
            "rabbitmqctl delete_queue",
            "stream_max_age and stream_max_bytes",
        ] {
            assert!(err.contains(needle), "{name}: {needle:?} in {err}");
        }
        assert_eq!(
            err.matches("AMQP publishing interrupted").count(),
            0,
            "{name}: no retries: {err}"
        );
    }
}

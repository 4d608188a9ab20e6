//! What the sinks delivered: the file sink's file (read as it grows), an AMQP consumer on a
//! durable queue bound to the exchange (records every message, then acks it), and WebSocket
//! clients subscribed to every mapped channel.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use pglive::event::EventId;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::workload::{Change, Op, TABLES, table_index};

/// `meta.id` as (commit LSN, ordinal): ordered as the events were committed.
pub type EventKey = (u64, u64);

pub fn event_key(id: &str) -> Option<EventKey> {
    let id: EventId = id.parse().ok()?;
    Some((id.commit_lsn.0, id.ordinal))
}

pub fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// One sink's deliveries.
#[derive(Default)]
pub struct Record {
    /// Lines or messages received, duplicates included.
    pub received: u64,
    /// meta.id → (content hash, channel index), first delivery.
    pub events: HashMap<EventKey, (u64, u8)>,
    /// Deliveries of a meta.id already received.
    pub duplicates: u64,
    /// …of which with a different content than the first time.
    pub conflicts: u64,
    /// The changes the events show.
    pub changes: HashSet<Change>,
    /// Deliveries that are not a well-formed event of a mapped table (example kept).
    pub malformed: u64,
    pub malformed_example: Option<String>,
    /// First deliveries with an id below one already received (commit order broken).
    pub out_of_order: u64,
    max_key: EventKey,
    /// Messages the broker marked redelivered (the consumer's own ack was lost).
    pub redelivered: u64,
    /// What the consumer went through lately (connected, lost its connection), newest last:
    /// when it last happened, what, how many times in a row.
    consumer_log: VecDeque<(Instant, String, u32)>,
}

impl Record {
    /// Notes a turn in the consumer's connection, keeping the last few for a failure report.
    pub fn consumer_note(&mut self, what: String) {
        if let Some((at, last, times)) = self.consumer_log.back_mut()
            && *last == what
        {
            *at = Instant::now();
            *times += 1;
            return;
        }
        if self.consumer_log.len() == 8 {
            self.consumer_log.pop_front();
        }
        self.consumer_log.push_back((Instant::now(), what, 1));
    }

    /// The consumer's last turns, oldest first, each with how long ago it was.
    pub fn consumer_report(&self) -> String {
        let lines: Vec<String> = self
            .consumer_log
            .iter()
            .map(|(at, what, times)| {
                let times = if *times > 1 {
                    format!(" ({times} times)")
                } else {
                    String::new()
                };
                format!("{:.1} s ago: {what}{times}", at.elapsed().as_secs_f64())
            })
            .collect();
        if lines.is_empty() {
            "nothing noted".into()
        } else {
            lines.join("; ")
        }
    }

    pub fn ingest(&mut self, body: &[u8]) {
        self.received += 1;
        let hash = content_hash(body);
        match parse_event(body) {
            Ok((key, channel, changes)) => match self.events.get(&key) {
                Some(&(first, _)) => {
                    self.duplicates += 1;
                    if first != hash {
                        self.conflicts += 1;
                        self.malformed_example.get_or_insert_with(|| {
                            format!(
                                "different content for a repeated meta.id: {}",
                                String::from_utf8_lossy(body)
                            )
                        });
                    }
                }
                None => {
                    if key < self.max_key {
                        self.out_of_order += 1;
                    }
                    self.max_key = self.max_key.max(key);
                    self.events.insert(key, (hash, channel));
                    self.changes.extend(changes);
                }
            },
            Err(why) => {
                self.malformed += 1;
                self.malformed_example.get_or_insert_with(|| {
                    format!(
                        "{why}: {:?}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    )
                });
            }
        }
    }

    /// Event keys per channel, in order.
    pub fn keys_by_channel(&self) -> Vec<Vec<EventKey>> {
        let mut by = vec![Vec::new(); TABLES.len()];
        for (k, &(_, ch)) in &self.events {
            by[ch as usize].push(*k);
        }
        for v in &mut by {
            v.sort_unstable();
        }
        by
    }
}

/// An event's id, channel (as a TABLES index) and the changes it shows, checked against the
/// contract: channel of its table, a known type, the xid, ids of the table's key type.
fn parse_event(body: &[u8]) -> Result<(EventKey, u8, Vec<Change>), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON ({e})"))?;
    let meta = &v["meta"];
    let key = meta["id"]
        .as_str()
        .and_then(event_key)
        .ok_or("no meta.id")?;
    let table = meta["table"]
        .as_str()
        .and_then(table_index)
        .ok_or("not a mapped table")?;
    let def = &TABLES[table as usize];
    if v["channel"].as_str() != Some(def.channel) {
        return Err(format!("channel is not {}", def.channel));
    }
    let op = v["type"]
        .as_str()
        .and_then(Op::from_type)
        .ok_or("unknown type")?;
    let xid = meta["xid"].as_u64().ok_or("no meta.xid")? as u32;
    let ids = v["payload"]["ids"].as_array().ok_or("no payload.ids")?;
    let changes = ids
        .iter()
        .map(|id| {
            let key = def.parse_event_id(id).ok_or("an id of the wrong type")?;
            Ok(Change {
                xid,
                table,
                op,
                key,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    if changes.is_empty() {
        return Err("empty payload.ids".into());
    }
    Ok((key, table, changes))
}

/// Reads the file sink's file as it grows (complete lines only) into `record`, until `stop`;
/// then once more to its end.
pub async fn tail_file(path: PathBuf, record: Arc<Mutex<Record>>, stop: CancellationToken) {
    let mut offset = 0u64;
    let mut partial = Vec::new();
    loop {
        let stopping = stop.is_cancelled();
        let mut chunk = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&path)
            && f.seek(SeekFrom::Start(offset)).is_ok()
        {
            let _ = f.read_to_end(&mut chunk);
        }
        offset += chunk.len() as u64;
        partial.extend_from_slice(&chunk);
        if let Some(end) = partial.iter().rposition(|&b| b == b'\n') {
            let mut r = record.lock().unwrap();
            for line in partial[..end].split(|&b| b == b'\n') {
                r.ingest(line);
            }
            partial.drain(..=end);
        }
        if stopping {
            if !partial.is_empty() {
                // A line the sink never finished.
                record.lock().unwrap().ingest(&partial);
            }
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

pub const QUEUE: &str = "chaos";

/// How long the consumer gives the broker to set it up, or to take an ack.
const SETUP_DEADLINE: Duration = Duration::from_secs(15);

/// Consumes `QUEUE` (declared durable and bound with `#` to `exchange`) into `record`,
/// reconnecting whenever the broker goes away, until `stop`. `declared` fires once the queue
/// is bound. With `dropper`, one event is acked and never recorded, however often it comes
/// (a self-test of the loss check).
pub async fn consume_amqp(
    url: String,
    exchange: String,
    record: Arc<Mutex<Record>>,
    declared: tokio::sync::mpsc::Sender<()>,
    mut dropper: Option<Dropper>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let r = consume_once(&url, &exchange, &record, &declared, &mut dropper, &stop).await;
        if let Err(e) = r {
            record.lock().unwrap().consumer_note(format!("lost: {e}"));
            crate::note(&format!("AMQP consumer: {e}; reconnecting"));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }
}

async fn consume_once(
    url: &str,
    exchange: &str,
    record: &Mutex<Record>,
    declared: &tokio::sync::mpsc::Sender<()>,
    dropper: &mut Option<Dropper>,
    stop: &CancellationToken,
) -> Result<(), String> {
    consume(url, exchange, record, declared, dropper, stop)
        .await
        .map_err(|e| e.to_string())?
}

/// Ok(Ok(())) when stopped, Ok(Err) when the connection went away.
async fn consume(
    url: &str,
    exchange: &str,
    record: &Mutex<Record>,
    declared: &tokio::sync::mpsc::Sender<()>,
    dropper: &mut Option<Dropper>,
    stop: &CancellationToken,
) -> lapin::Result<Result<(), String>> {
    // A broker that is starting or stopping may take a connection and never answer: each
    // step has a deadline, so the consumer tries again rather than wait forever.
    let setup = async {
        let conn = Connection::connect(url, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        ch.exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        ch.queue_declare(
            QUEUE.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        ch.queue_bind(
            QUEUE.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        ch.basic_qos(500, BasicQosOptions::default()).await?;
        let consumer = ch
            .basic_consume(
                QUEUE.into(),
                "chaos-recorder".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        lapin::Result::Ok((conn, ch, consumer))
    };
    let (conn, _channel, mut consumer) = match tokio::time::timeout(SETUP_DEADLINE, setup).await {
        Ok(r) => r?,
        Err(_) => return Ok(Err(format!("not consuming within {SETUP_DEADLINE:?}"))),
    };
    record.lock().unwrap().consumer_note("consuming".into());
    let _ = declared.try_send(());
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = conn.close(200, "done".into()).await;
                return Ok(Ok(()));
            }
            _ = check.tick() => {
                if !conn.status().connected() {
                    return Ok(Err("the connection was lost".into()));
                }
            }
            d = consumer.next() => {
                let d = match d {
                    Some(d) => d?,
                    None => return Ok(Err("the consumer was cancelled".into())),
                };
                if !dropper.as_mut().is_some_and(|x| x.drops(&d.data)) {
                    let mut r = record.lock().unwrap();
                    r.ingest(&d.data);
                    r.redelivered += d.redelivered as u64;
                }
                match tokio::time::timeout(SETUP_DEADLINE, d.ack(BasicAckOptions::default())).await {
                    Ok(r) => drop(r?),
                    Err(_) => return Ok(Err(format!("an ack took over {SETUP_DEADLINE:?}"))),
                }
            }
        }
    }
}

/// The self-test's faulty consumer: drops the `at`-th message and every later copy of it.
pub struct Dropper {
    pub at: u64,
    seen: u64,
    id: Option<String>,
}

impl Dropper {
    pub fn new(at: u64) -> Dropper {
        Dropper {
            at,
            seen: 0,
            id: None,
        }
    }

    fn drops(&mut self, body: &[u8]) -> bool {
        self.seen += 1;
        let text = String::from_utf8_lossy(body);
        let id = str_field(&text, "id").map(str::to_owned);
        if self.seen == self.at {
            self.id = id;
            return true;
        }
        self.id.is_some() && id == self.id
    }
}

/// What the WebSocket clients saw, all together.
#[derive(Default)]
pub struct WsTally {
    pub connects: AtomicU64,
    pub refused: AtomicU64,
    pub events: AtomicU64,
    pub duplicates: AtomicU64,
    pub resyncs: AtomicU64,
    /// …of which on a channel that had already delivered events on that connection: the
    /// client's queue overflowed (the others answer a `since` no longer held).
    pub overflow_resyncs: AtomicU64,
    pub errors: AtomicU64,
    pub malformed: AtomicU64,
    /// meta.id → content hash, as first received by any client.
    pub content: Mutex<HashMap<EventKey, u64>>,
    pub conflicts: AtomicU64,
}

/// One client's view of each channel.
#[derive(Default, Clone)]
pub struct ClientView {
    /// First and last event received, and how many distinct ones (by channel).
    pub first: [Option<EventKey>; TABLES.len()],
    pub last: [Option<EventKey>; TABLES.len()],
    pub distinct: [u64; TABLES.len()],
    pub subscribed: [bool; TABLES.len()],
    /// An event arrived on the channel on the current connection.
    pub live: [bool; TABLES.len()],
}

fn channel_index(channel: &str) -> Option<usize> {
    TABLES.iter().position(|t| t.channel == channel)
}

/// A relay client subscribed to every mapped channel, reconnecting (resuming each channel
/// with `since`) whenever the connection ends, until `stop`.
pub async fn ws_client(
    url: String,
    tally: Arc<WsTally>,
    view: Arc<Mutex<ClientView>>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut since: [Option<String>; TABLES.len()] = Default::default();
    while !stop.is_cancelled() {
        let connect = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url.as_str()),
        );
        let mut ws = tokio::select! {
            _ = stop.cancelled() => return,
            c = connect => match c {
                Ok(Ok((ws, _))) => ws,
                _ => {
                    tally.refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(100);
        tally.connects.fetch_add(1, Ordering::Relaxed);
        {
            let mut v = view.lock().unwrap();
            v.subscribed = Default::default();
            v.live = Default::default();
        }
        let mut ok = true;
        for (t, s) in TABLES.iter().zip(&since) {
            let req = match s {
                Some(id) => serde_json::json!({"op":"subscribe","channel":t.channel,"since":id}),
                None => serde_json::json!({"op":"subscribe","channel":t.channel}),
            };
            ok &= ws.send(Message::text(req.to_string())).await.is_ok();
        }
        if !ok {
            continue;
        }
        loop {
            let frame = tokio::select! {
                _ = stop.cancelled() => {
                    let _ = ws.close(None).await;
                    return;
                }
                // pglive pings every ping_interval; a silent minute means a dead connection.
                f = tokio::time::timeout(Duration::from_secs(70), ws.next()) => f,
            };
            let text = match frame {
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => break,
                Ok(Some(Ok(_))) => continue,
            };
            if text.contains("\"op\":") {
                control(&text, &tally, &view);
                continue;
            }
            event(text.as_bytes(), &tally, &view, &mut since);
        }
    }
}

fn control(text: &str, tally: &WsTally, view: &Mutex<ClientView>) {
    let v: Value = serde_json::from_str(text).unwrap_or_default();
    let ch = v["channel"].as_str().and_then(channel_index);
    match v["op"].as_str() {
        Some("subscribed") => {
            if let Some(ch) = ch {
                view.lock().unwrap().subscribed[ch] = true;
            }
        }
        Some("resync") => {
            tally.resyncs.fetch_add(1, Ordering::Relaxed);
            if ch.is_some_and(|ch| view.lock().unwrap().live[ch]) {
                tally.overflow_resyncs.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some("error") => {
            tally.errors.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            tally.malformed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The value of `"key":"…"` in a flat piece of JSON (event ids and channels need no escapes).
fn str_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let at = text.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let len = text[at..].find('"')?;
    Some(&text[at..at + len])
}

fn event(
    body: &[u8],
    tally: &WsTally,
    view: &Mutex<ClientView>,
    since: &mut [Option<String>; TABLES.len()],
) {
    let text = String::from_utf8_lossy(body);
    let parsed = str_field(&text, "channel")
        .and_then(channel_index)
        .zip(str_field(&text, "id").and_then(|id| Some((id, event_key(id)?))));
    let Some((ch, (id, key))) = parsed else {
        tally.malformed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    tally.events.fetch_add(1, Ordering::Relaxed);
    let hash = content_hash(body);
    {
        let mut content = tally.content.lock().unwrap();
        let first = *content.entry(key).or_insert(hash);
        if first != hash {
            tally.conflicts.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mut v = view.lock().unwrap();
    v.live[ch] = true;
    if v.last[ch].is_some_and(|last| key <= last) {
        // Sent again: pglive restarted and replays from the slot.
        tally.duplicates.fetch_add(1, Ordering::Relaxed);
        return;
    }
    v.first[ch].get_or_insert(key);
    v.last[ch] = Some(key);
    v.distinct[ch] += 1;
    since[ch] = Some(id.to_owned());
}

/// When each client is connected and subscribed to every channel.
pub fn all_subscribed(views: &[Arc<Mutex<ClientView>>]) -> bool {
    views
        .iter()
        .all(|v| v.lock().unwrap().subscribed.iter().all(|&s| s))
}

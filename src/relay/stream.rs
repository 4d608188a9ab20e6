//! Reading the RabbitMQ stream (AMQP 0-9-1): a consumer with manual acknowledgements (they
//! are the broker's credit) and a per-consumer prefetch, starting at the timestamp
//! `now − history_age` when the node starts, and at the offset after the last one it passed
//! when it reconnects. Every delivery carries its offset (`x-stream-offset`); RabbitMQ 3.10
//! keeps no consumer offsets over AMQP, so the node keeps its own, in memory: a restarted node
//! starts from the timestamp again, which is what fills its history.
//!
//! Ready (caught up): at connection, a second consumer at offset `last` names the first
//! message of the stream's last chunk; the node is ready once it has passed that offset, at
//! once if the stream holds nothing newer than where it starts, or nothing at all.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::StreamConfig;
use crate::backoff::Backoff;
use crate::event::EventId;
use crate::sink::amqp::{Failure, PUBLISHED_HEADER, amqp_code, classify, connect_to};
use crate::sink::websocket::Feed;
use crate::status::{Status, metric};

/// How long the probe for the stream's last chunk waits for it: the broker sends it at once
/// when there is one, so a silent stream is an empty one.
const TAIL_PROBE: Duration = Duration::from_secs(2);
/// Acknowledge at least this often while deliveries trickle in.
const ACK_DELAY: Duration = Duration::from_millis(100);

/// Where the node is in the stream, across connections.
#[derive(Debug, Default)]
struct Position {
    /// The offset after the last delivery handled: where a new connection resumes.
    next: Option<u64>,
    /// The newest event passed to the hub: an older or equal `meta.id` is a source's replay.
    last_id: Option<EventId>,
}

/// The consumer of one node.
pub(super) struct Reader {
    config: StreamConfig,
    history_age: Duration,
    feed: Feed,
    status: Arc<Status>,
    position: Position,
    events: metrics::Counter,
    duplicates: metrics::Counter,
    offset: metrics::Gauge,
}

/// The parts of a LiveEvent the node routes by.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow)]
    meta: Meta<'a>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
}

impl Reader {
    pub(super) fn new(
        config: StreamConfig,
        history_age: Duration,
        feed: Feed,
        status: Arc<Status>,
    ) -> Reader {
        Reader {
            config,
            history_age,
            feed,
            status,
            position: Position::default(),
            events: metrics::counter!(metric::RELAY_EVENTS),
            duplicates: metrics::counter!(metric::RELAY_DUPLICATES),
            offset: metrics::gauge!(metric::RELAY_STREAM_OFFSET),
        }
    }

    /// Reads until `stop` (Ok) or a failure that retrying cannot fix (its message).
    pub(super) async fn run(mut self, stop: CancellationToken) -> Result<(), String> {
        let mut backoff = Backoff::new(self.config.max_backoff);
        let url = self.config.url.clone();
        loop {
            self.status
                .not_streaming(format!("connecting to the broker at {url}"));
            let before = self.position.next;
            let failure = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                f = self.session() => f,
            };
            let why = match failure {
                Failure::Fatal(why) => return Err(why),
                Failure::Retry(why) => why,
            };
            if self.position.next != before {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            tracing::warn!(broker = %url, stream = %self.config.stream, error = %why, ?delay,
                "relay: stream reading interrupted; clients stay connected, reconnecting");
            self.status.not_streaming(format!("{url}: {why}"));
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connection: returns why it ended.
    async fn session(&mut self) -> Failure {
        let conn = match connect_to(
            &self.config.url,
            self.config.ca_file.as_deref(),
            self.config.connect_timeout,
        )
        .await
        {
            Ok(c) => c,
            Err(f) => return f,
        };
        let failure = self.consume(&conn).await;
        let _ = conn.close(200, "pglive relay reconnecting".into()).await;
        failure
    }

    async fn consume(&mut self, conn: &Connection) -> Failure {
        let name = self.config.stream.clone();
        let channel = match open(conn, &name, self.config.prefetch).await {
            Ok(c) => c,
            Err(f) => return f,
        };
        let (start, start_ms) = self.start();
        let tail = match tail(conn, &name).await {
            Ok(t) => t,
            Err(f) => return f,
        };
        let mut args = FieldTable::default();
        args.insert("x-stream-offset".into(), start);
        let options = BasicConsumeOptions::default();
        let mut consumer = match channel
            .basic_consume(name.as_str().into(), "".into(), options, args)
            .await
        {
            Ok(c) => c,
            Err(e) => return classify(&e, "consume from the stream"),
        };
        // The offset to pass before being ready; none: ready now.
        let behind = match tail {
            Some((offset, published)) if published.is_none_or(|p| p >= start_ms) => {
                Some(offset).filter(|o| self.position.next.is_none_or(|n| n <= *o))
            }
            _ => None,
        };
        self.caught_up_if(behind.is_none());
        self.read(&mut consumer, behind).await
    }

    /// Reads deliveries until the connection fails; `behind`: the offset to pass before the
    /// node is ready.
    async fn read(&mut self, consumer: &mut lapin::Consumer, mut behind: Option<u64>) -> Failure {
        let name = self.config.stream.clone();
        let mut resumed_at = self.position.next;
        let mut unacked: Option<lapin::Acker> = None;
        let mut count = 0usize;
        let ack_every = usize::from(self.config.prefetch).div_ceil(2);
        // A stream that sends nothing for this long while the node is behind has nothing more
        // to send: the node started past its end (clocks, or a message without published_ms).
        let mut quiet = tokio::time::Instant::now() + TAIL_PROBE;
        loop {
            let next = tokio::select! {
                d = consumer.next() => d,
                _ = tokio::time::sleep(ACK_DELAY), if unacked.is_some() => {
                    if let Err(f) = ack(&mut unacked, &mut count).await {
                        return f;
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(quiet), if behind.is_some() => {
                    behind = None;
                    self.caught_up_if(true);
                    continue;
                }
            };
            let delivery = match next {
                None => return Failure::Retry("the broker ended the consumer".into()),
                Some(Err(e)) => return classify(&e, "read the stream"),
                Some(Ok(d)) => d,
            };
            let Some(offset) = stream_offset(&delivery.properties) else {
                return Failure::Fatal(format!(
                    "queue {name:?} is not a stream (its deliveries carry no x-stream-offset); \
                     point relay.stream at the stream the source's amqp sink declares"
                ));
            };
            quiet = tokio::time::Instant::now() + TAIL_PROBE;
            if let Some(expected) = resumed_at.take()
                && offset != expected
            {
                tracing::warn!(stream = %name, expected, offset,
                    "relay: the stream no longer holds what follows the last message read \
                     (retention dropped it, or the stream was recreated); clients are told to resync");
                self.feed.gap();
            }
            let at = published_at(&delivery.properties);
            self.handle(delivery.data, offset, at);
            unacked = Some(delivery.acker);
            count += 1;
            if behind.is_some_and(|o| offset >= o) {
                behind = None;
                self.caught_up_if(true);
            }
            if count >= ack_every
                && let Err(f) = ack(&mut unacked, &mut count).await
            {
                return f;
            }
        }
    }

    /// Where a connection starts: after the last offset passed, or at `now − history_age`
    /// (also as ms since 1970).
    fn start(&self) -> (AMQPValue, i64) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let from = now.saturating_sub(self.history_age);
        let from_ms = i64::try_from(from.as_millis()).unwrap_or(i64::MAX);
        match self.position.next {
            Some(next) => (
                AMQPValue::LongLongInt(i64::try_from(next).unwrap_or(i64::MAX)),
                from_ms,
            ),
            None => (AMQPValue::Timestamp(from.as_secs()), from_ms),
        }
    }

    fn caught_up_if(&self, caught_up: bool) {
        if caught_up {
            tracing::info!(stream = %self.config.stream, "relay: caught up with the stream; ready");
            self.feed.caught_up();
            self.status.streaming();
        } else {
            self.status.not_streaming(format!(
                "catching up with stream {} (reading its history)",
                self.config.stream
            ));
        }
    }

    /// Passes one delivery's event to the hub, unless it is not a LiveEvent, a replay of one
    /// passed already, or on a channel this node does not serve.
    fn handle(&mut self, body: Vec<u8>, offset: u64, at: Instant) {
        self.position.next = Some(offset + 1);
        self.offset.set(offset as f64);
        let Some((channel, id, json)) = parse(body) else {
            tracing::warn!(offset, stream = %self.config.stream,
                "relay: skipped a message that is not a LiveEvent (JSON with channel and meta.id)");
            return;
        };
        if self.position.last_id.is_some_and(|last| id <= last) {
            self.duplicates.increment(1);
            return;
        }
        self.position.last_id = Some(id);
        if !self.feed.serves(&channel) {
            tracing::debug!(%channel, "relay: event on a channel this node does not serve");
            return;
        }
        self.feed.publish(&channel, id, json, at);
        self.events.increment(1);
    }
}

/// Connects, looks the stream up and closes: what `pglive check` asks of the broker.
pub async fn probe(config: &StreamConfig) -> Result<(), String> {
    let message = |f: Failure| match f {
        Failure::Fatal(m) | Failure::Retry(m) => m,
    };
    let conn = connect_to(
        &config.url,
        config.ca_file.as_deref(),
        config.connect_timeout,
    )
    .await
    .map_err(message)?;
    let found = open(&conn, &config.stream, 1).await.map(|_| ());
    let _ = conn.close(200, "check done".into()).await;
    found.map_err(message)
}

/// A channel on `name`, checked to exist, with the consumer prefetch streams require.
async fn open(conn: &Connection, name: &str, prefetch: u16) -> Result<Channel, Failure> {
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| classify(&e, "open a channel"))?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(name.into(), passive, FieldTable::default())
        .await
        .map_err(|e| match amqp_code(&e) {
            Some(404) => Failure::Retry(format!(
                "stream {name:?} does not exist (yet): the source's amqp sink declares it \
                 when it has `stream = {name:?}`"
            )),
            _ => classify(&e, "look up the stream"),
        })?;
    channel
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await
        .map_err(|e| classify(&e, "set the prefetch"))?;
    Ok(channel)
}

/// The first offset of the stream's last chunk and when its message was published; none
/// when the stream is empty.
async fn tail(conn: &Connection, name: &str) -> Result<Option<(u64, Option<i64>)>, Failure> {
    let channel = open(conn, name, 1).await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("last".into()),
    );
    let mut probe = channel
        .basic_consume(name.into(), "".into(), BasicConsumeOptions::default(), args)
        .await
        .map_err(|e| classify(&e, "find the end of the stream"))?;
    let first = tokio::time::timeout(TAIL_PROBE, probe.next()).await;
    let _ = channel
        .close(200, "found the end of the stream".into())
        .await;
    match first {
        Err(_) => Ok(None),
        Ok(None) => Err(Failure::Retry("the broker ended the probe".into())),
        Ok(Some(Err(e))) => Err(classify(&e, "find the end of the stream")),
        Ok(Some(Ok(d))) => {
            Ok(stream_offset(&d.properties).map(|o| (o, published_ms(&d.properties))))
        }
    }
}

/// Acknowledges every delivery up to the last one held.
async fn ack(unacked: &mut Option<lapin::Acker>, count: &mut usize) -> Result<(), Failure> {
    *count = 0;
    match unacked.take() {
        Some(acker) => acker
            .ack(BasicAckOptions { multiple: true })
            .await
            .map(|_| ())
            .map_err(|e| classify(&e, "acknowledge")),
        None => Ok(()),
    }
}

fn header<'a>(props: &'a lapin::BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(name)
}

fn integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

fn stream_offset(props: &lapin::BasicProperties) -> Option<u64> {
    header(props, "x-stream-offset")
        .and_then(integer)
        .and_then(|n| u64::try_from(n).ok())
}

fn published_ms(props: &lapin::BasicProperties) -> Option<i64> {
    header(props, PUBLISHED_HEADER).and_then(integer)
}

/// When the event was published upstream, on this process's clock (now, if it does not say).
fn published_at(props: &lapin::BasicProperties) -> Instant {
    let now = Instant::now();
    let Some(ms) = published_ms(props) else {
        return now;
    };
    let age_ms = (crate::status::unix_micros_now() / 1000).saturating_sub(ms);
    now.checked_sub(Duration::from_millis(u64::try_from(age_ms).unwrap_or(0)))
        .unwrap_or(now)
}

/// The channel, id and text of a LiveEvent message (the text is the body, not a copy).
fn parse(body: Vec<u8>) -> Option<(String, EventId, String)> {
    let text = String::from_utf8(body).ok()?;
    let head: Head = serde_json::from_str(&text).ok()?;
    let id = head.meta.id.parse().ok()?;
    let channel = head.channel.into_owned();
    Some((channel, id, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_event_is_parsed_and_anything_else_is_not() {
        let body = br#"{"channel":"resources/posts","type":"created","payload":{"ids":[1]},"date":"2026-12-02T00:00:00Z","meta":{"id":"0/16B3748:0"}}"#;
        let (channel, id, text) = parse(body.to_vec()).expect("a LiveEvent");
        assert_eq!(channel, "resources/posts");
        assert_eq!(id.to_string(), "0/16B3748:0");
        assert_eq!(text.as_bytes(), body);
        assert!(parse(b"not json".to_vec()).is_none());
        assert!(
            parse(br#"{"channel":"x"}"#.to_vec()).is_none(),
            "no meta.id"
        );
        assert!(parse(br#"{"channel":"x","meta":{"id":"nope"}}"#.to_vec()).is_none());
        assert!(parse(vec![0xff, 0xfe]).is_none(), "not UTF-8");
    }
}

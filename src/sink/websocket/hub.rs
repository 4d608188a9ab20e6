//! The relay's shared state: per channel, the connected subscribers and a bounded history of
//! recent events (for `since`). Publishing never waits for a client: each client has a
//! bounded queue, and a client whose queue is full is marked to resynchronise instead.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;

use crate::event::EventId;

/// A connected client, as the hub sees it.
pub struct Client {
    pub id: u64,
    queue: mpsc::Sender<Utf8Bytes>,
    /// Its queue overflowed: what it was sent since is incomplete. The client's task sees it
    /// at its next frame (a full queue has one waiting).
    overflowed: AtomicBool,
}

impl Client {
    pub fn new(id: u64, capacity: usize) -> (Arc<Client>, mpsc::Receiver<Utf8Bytes>) {
        let (queue, rx) = mpsc::channel(capacity);
        let client = Client {
            id,
            queue,
            overflowed: AtomicBool::new(false),
        };
        (Arc::new(client), rx)
    }

    /// Queues a frame; on a full queue, marks the client to resynchronise.
    fn offer(&self, frame: Utf8Bytes) {
        if self.queue.try_send(frame).is_err() {
            self.overflowed.store(true, Ordering::Release);
        }
    }

    /// Whether the queue overflowed since the last call (and resets the mark).
    pub fn take_overflow(&self) -> bool {
        self.overflowed.swap(false, Ordering::AcqRel)
    }
}

struct Held {
    id: EventId,
    at: Instant,
    frame: Utf8Bytes,
}

#[derive(Default)]
struct Channel {
    history: VecDeque<Held>,
    subscribers: HashMap<u64, Arc<Client>>,
}

pub struct Hub {
    channels: Mutex<HashMap<String, Channel>>,
    history: usize,
    history_age: Duration,
}

impl Hub {
    pub fn new(history: usize, history_age: Duration) -> Hub {
        Hub {
            channels: Mutex::default(),
            history,
            history_age,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Channel>> {
        // A panic elsewhere cannot leave the maps half-updated in a way that matters here.
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends an event to the channel's subscribers and keeps it for resuming clients.
    pub fn publish(&self, channel: &str, id: EventId, frame: Utf8Bytes) {
        let mut channels = self.lock();
        let ch = channels.entry(channel.to_owned()).or_default();
        for client in ch.subscribers.values() {
            client.offer(frame.clone());
        }
        if self.history > 0 {
            let now = Instant::now();
            ch.history.push_back(Held { id, at: now, frame });
            while ch.history.len() > self.history {
                ch.history.pop_front();
            }
            self.expire(ch, now);
        }
    }

    fn expire(&self, ch: &mut Channel, now: Instant) {
        while ch
            .history
            .front()
            .is_some_and(|h| now.duration_since(h.at) > self.history_age)
        {
            ch.history.pop_front();
        }
    }

    /// Subscribes `client` to `channel`: queues `subscribed` (`ack`), then the events after
    /// `since` if they are all still held (or `resync` if not), and from then on every new
    /// event — all under one lock, so nothing is missed or sent twice in between.
    pub fn subscribe(
        &self,
        client: &Arc<Client>,
        channel: &str,
        since: Option<EventId>,
        ack: Utf8Bytes,
        resync: Utf8Bytes,
    ) {
        let mut channels = self.lock();
        let ch = channels.entry(channel.to_owned()).or_default();
        ch.subscribers.insert(client.id, client.clone());
        client.offer(ack);
        let Some(since) = since else {
            return;
        };
        self.expire(ch, Instant::now());
        match ch.history.iter().position(|h| h.id == since) {
            Some(at) => {
                for held in ch.history.iter().skip(at + 1) {
                    client.offer(held.frame.clone());
                }
            }
            None => client.offer(resync),
        }
    }

    pub fn unsubscribe(&self, client: u64, channel: &str) {
        if let Some(ch) = self.lock().get_mut(channel) {
            ch.subscribers.remove(&client);
        }
    }

    /// Removes a disconnected client from every channel it was on.
    pub fn leave(&self, client: u64, channels: &HashSet<String>) {
        let mut all = self.lock();
        for name in channels {
            if let Some(ch) = all.get_mut(name) {
                ch.subscribers.remove(&client);
            }
        }
    }
}

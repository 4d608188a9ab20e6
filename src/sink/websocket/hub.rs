//! The relay's shared state: per channel, the connected subscribers and a bounded history of
//! recent events (for `since`). Publishing never waits for a client: each client has a
//! bounded queue, and a client whose queue is full is marked to resynchronise instead. A
//! channel's entry lives while it has subscribers or history, no longer.

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

impl Channel {
    fn is_unused(&self) -> bool {
        self.subscribers.is_empty() && self.history.is_empty()
    }
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
        let mut all = self.lock();
        self.remove(&mut all, client, channel);
    }

    /// Removes a disconnected client from every channel it was on.
    pub fn leave(&self, client: u64, channels: &HashSet<String>) {
        let mut all = self.lock();
        for name in channels {
            self.remove(&mut all, client, name);
        }
    }

    /// Takes `client` off `name`, and drops the channel's entry once nobody listens and it
    /// holds no history: entries never outlive their use.
    fn remove(&self, all: &mut HashMap<String, Channel>, client: u64, name: &str) {
        if let Some(ch) = all.get_mut(name) {
            ch.subscribers.remove(&client);
            self.expire(ch, Instant::now());
            if ch.is_unused() {
                all.remove(name);
            }
        }
    }

    /// Drops expired history everywhere, and the entries left unused by it. Run now and then,
    /// so that a channel nobody writes to or reads from does not keep its last events forever.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.lock().retain(|_, ch| {
            self.expire(ch, now);
            !ch.is_unused()
        });
    }

    /// Channels with an entry (subscribers or history).
    #[cfg(test)]
    pub fn channels(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;

    fn id(n: u64) -> EventId {
        EventId {
            commit_lsn: Lsn(n),
            ordinal: 0,
        }
    }

    fn frame(s: &str) -> Utf8Bytes {
        Utf8Bytes::from(s.to_owned())
    }

    #[test]
    fn an_entry_lives_while_it_has_subscribers_or_history() {
        let hub = Hub::new(0, Duration::from_secs(60));
        let (a, _rx) = Client::new(1, 16);
        for n in 0..1000 {
            let name = format!("resources/{n}");
            hub.subscribe(&a, &name, None, frame("ack"), frame("resync"));
            hub.unsubscribe(1, &name);
        }
        assert_eq!(hub.channels(), 0, "no history kept: nothing left behind");

        let hub = Hub::new(10, Duration::from_secs(60));
        hub.publish("resources/posts", id(1), frame("e1"));
        let set: HashSet<String> = ["resources/posts".to_owned(), "resources/x".to_owned()].into();
        hub.subscribe(&a, "resources/x", None, frame("ack"), frame("resync"));
        hub.subscribe(&a, "resources/posts", None, frame("ack"), frame("resync"));
        assert_eq!(hub.channels(), 2);
        hub.leave(1, &set);
        assert_eq!(hub.channels(), 1, "the channel with history stays");
    }

    #[test]
    fn history_expires_and_the_sweep_drops_what_is_left_unused() {
        let hub = Hub::new(10, Duration::from_millis(1));
        hub.publish("resources/posts", id(1), frame("e1"));
        assert_eq!(hub.channels(), 1);
        let start = Instant::now();
        while start.elapsed() <= Duration::from_millis(2) {
            std::hint::spin_loop();
        }
        hub.sweep();
        assert_eq!(hub.channels(), 0);
    }
}

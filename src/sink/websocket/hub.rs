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

/// A subscriber, and while it resumes from an event the hub has not seen yet, that event and
/// when to give up waiting for it.
struct Subscriber {
    client: Arc<Client>,
    after: Option<(EventId, Instant)>,
}

#[derive(Default)]
struct Channel {
    history: VecDeque<Held>,
    subscribers: HashMap<u64, Subscriber>,
}

impl Channel {
    fn is_unused(&self) -> bool {
        self.subscribers.is_empty() && self.history.is_empty()
    }
}

#[derive(Default)]
struct State {
    channels: HashMap<String, Channel>,
    /// The newest event published: every later one will be published too, in order.
    latest: Option<EventId>,
    /// Subscribers waiting for an event newer than `latest`.
    waiting: usize,
}

/// How long a subscriber may wait for the event it resumes from to arrive (another relay
/// node had it first). Past this, the id is taken as unknown: `resync`.
pub const RESUME_WAIT: Duration = Duration::from_secs(30);

pub struct Hub {
    state: Mutex<State>,
    history: usize,
    history_age: Duration,
}

impl Hub {
    pub fn new(history: usize, history_age: Duration) -> Hub {
        Hub {
            state: Mutex::default(),
            history,
            history_age,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the maps half-updated in a way that matters here.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends an event to the channel's subscribers and keeps it for resuming clients.
    pub fn publish(&self, channel: &str, id: EventId, frame: Utf8Bytes) {
        self.publish_at(channel, id, frame, Instant::now());
    }

    /// [`Hub::publish`] of an event that became current at `at` (when it was published
    /// upstream): its history ages from then.
    pub fn publish_at(&self, channel: &str, id: EventId, frame: Utf8Bytes, at: Instant) {
        let mut state = self.lock();
        let state = &mut *state;
        state.latest = Some(state.latest.map_or(id, |l| l.max(id)));
        let ch = state.channels.entry(channel.to_owned()).or_default();
        for sub in ch.subscribers.values_mut() {
            if let Some((after, _)) = sub.after {
                if id <= after {
                    continue;
                }
                sub.after = None;
                state.waiting -= 1;
            }
            sub.client.offer(frame.clone());
        }
        if self.history > 0 {
            ch.history.push_back(Held { id, at, frame });
            while ch.history.len() > self.history {
                ch.history.pop_front();
            }
            self.expire(ch, Instant::now());
        }
    }

    fn expire(&self, ch: &mut Channel, now: Instant) {
        while ch
            .history
            .front()
            .is_some_and(|h| now.saturating_duration_since(h.at) > self.history_age)
        {
            ch.history.pop_front();
        }
    }

    /// Subscribes `client` to `channel`: queues `subscribed` (`ack`), then the events after
    /// `since` if they are all still held (or `resync` if not), and from then on every new
    /// event — all under one lock, so nothing is missed or sent twice in between. A `since`
    /// newer than every event published so far (the client came from a relay node that is
    /// ahead) is waited for: events up to it are not sent, later ones are.
    pub fn subscribe(
        &self,
        client: &Arc<Client>,
        channel: &str,
        since: Option<EventId>,
        ack: Utf8Bytes,
        resync: Utf8Bytes,
    ) {
        let mut state = self.lock();
        let state = &mut *state;
        let latest = state.latest;
        let ch = state.channels.entry(channel.to_owned()).or_default();
        let mut sub = Subscriber {
            client: client.clone(),
            after: None,
        };
        client.offer(ack);
        if let Some(since) = since {
            self.expire(ch, Instant::now());
            match ch.history.iter().position(|h| h.id == since) {
                Some(at) => {
                    for held in ch.history.iter().skip(at + 1) {
                        client.offer(held.frame.clone());
                    }
                }
                None if latest.is_some_and(|l| since > l) => {
                    sub.after = Some((since, Instant::now() + RESUME_WAIT));
                    state.waiting += 1;
                }
                None => client.offer(resync),
            }
        }
        if let Some(old) = ch.subscribers.insert(client.id, sub)
            && old.after.is_some()
        {
            state.waiting -= 1;
        }
    }

    pub fn unsubscribe(&self, client: u64, channel: &str) {
        let mut state = self.lock();
        self.remove(&mut state, client, channel);
    }

    /// Removes a disconnected client from every channel it was on.
    pub fn leave(&self, client: u64, channels: &HashSet<String>) {
        let mut state = self.lock();
        for name in channels {
            self.remove(&mut state, client, name);
        }
    }

    /// Takes `client` off `name`, and drops the channel's entry once nobody listens and it
    /// holds no history: entries never outlive their use.
    fn remove(&self, state: &mut State, client: u64, name: &str) {
        if let Some(ch) = state.channels.get_mut(name) {
            if ch
                .subscribers
                .remove(&client)
                .is_some_and(|s| s.after.is_some())
            {
                state.waiting -= 1;
            }
            self.expire(ch, Instant::now());
            if ch.is_unused() {
                state.channels.remove(name);
            }
        }
    }

    /// Drops expired history everywhere, and the entries left unused by it. Run now and then,
    /// so that a channel nobody writes to or reads from does not keep its last events forever.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.lock().channels.retain(|_, ch| {
            self.expire(ch, now);
            !ch.is_unused()
        });
    }

    /// Tells subscribers that waited [`RESUME_WAIT`] in vain for the event they resume from
    /// to refetch (`resync(channel)`), and to take every event from now on.
    pub fn give_up_waiting(&self, resync: impl Fn(&str) -> Utf8Bytes) {
        let mut state = self.lock();
        if state.waiting == 0 {
            return;
        }
        let now = Instant::now();
        let mut gave_up = 0;
        for (name, ch) in &mut state.channels {
            for sub in ch.subscribers.values_mut() {
                if sub.after.is_some_and(|(_, deadline)| deadline <= now) {
                    sub.after = None;
                    gave_up += 1;
                    sub.client.offer(resync(name));
                }
            }
        }
        state.waiting -= gave_up;
    }

    /// Channels with an entry (subscribers or history).
    #[cfg(test)]
    pub fn channels(&self) -> usize {
        self.lock().channels.len()
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

    fn drain(rx: &mut mpsc::Receiver<Utf8Bytes>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(f) = rx.try_recv() {
            out.push(f.to_string());
        }
        out
    }

    #[test]
    fn a_since_newer_than_anything_published_waits_for_it_and_an_older_unknown_one_resyncs() {
        let hub = Hub::new(10, Duration::from_secs(60));
        let (a, mut rx) = Client::new(1, 64);
        // Nothing published yet: nothing is known to follow, so any `since` resyncs.
        hub.subscribe(&a, "c", Some(id(5)), frame("ack"), frame("resync"));
        assert_eq!(drain(&mut rx), ["ack", "resync"]);
        hub.publish("c", id(3), frame("e3"));
        assert_eq!(drain(&mut rx), ["e3"]);
        // Newer than the latest event: wait for it, skip up to it, then take the rest.
        let (b, mut rx_b) = Client::new(2, 64);
        hub.subscribe(&b, "c", Some(id(5)), frame("ack"), frame("resync"));
        assert_eq!(drain(&mut rx_b), ["ack"]);
        hub.publish("c", id(4), frame("e4"));
        hub.publish("c", id(5), frame("e5"));
        hub.publish("c", id(6), frame("e6"));
        assert_eq!(drain(&mut rx_b), ["e6"]);
        // Held: replayed after it. Older than anything held: resync.
        let (c, mut rx_c) = Client::new(3, 64);
        hub.subscribe(&c, "c", Some(id(4)), frame("ack"), frame("resync"));
        assert_eq!(drain(&mut rx_c), ["ack", "e5", "e6"]);
        hub.subscribe(&c, "c", Some(id(1)), frame("ack"), frame("resync"));
        assert_eq!(drain(&mut rx_c), ["ack", "resync"]);
    }

    #[test]
    fn a_subscriber_that_waits_in_vain_is_told_to_resync_and_gets_events_again() {
        let hub = Hub::new(10, Duration::from_secs(60));
        hub.publish("c", id(1), frame("e1"));
        let (a, mut rx) = Client::new(1, 64);
        hub.subscribe(&a, "c", Some(id(9)), frame("ack"), frame("resync"));
        hub.give_up_waiting(|c| frame(&format!("resync {c}")));
        assert_eq!(drain(&mut rx), ["ack"], "not yet past RESUME_WAIT");
        hub.lock()
            .channels
            .get_mut("c")
            .unwrap()
            .subscribers
            .get_mut(&1)
            .unwrap()
            .after = Some((id(9), Instant::now()));
        hub.give_up_waiting(|c| frame(&format!("resync {c}")));
        hub.publish("c", id(2), frame("e2"));
        assert_eq!(drain(&mut rx), ["resync c", "e2"]);
        assert_eq!(hub.lock().waiting, 0);
        // Leaving while waiting keeps the count right.
        hub.subscribe(&a, "c", Some(id(9)), frame("ack"), frame("resync"));
        assert_eq!(hub.lock().waiting, 1);
        hub.unsubscribe(1, "c");
        assert_eq!(hub.lock().waiting, 0);
    }
}

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

/// A subscriber, and while it resumes from an event the hub has not placed yet, the wait.
struct Subscriber {
    client: Arc<Client>,
    after: Option<Wait>,
}

/// A subscriber resuming from `since`, an event the hub has not seen on the channel (yet).
/// Events up to `since` are not sent (the client has them); when `since` passes on the
/// channel the wait is over and the events after it are sent; an event after it without
/// `since` having passed means the hub never had it: the client gets `resync`, then events.
struct Wait {
    since: EventId,
    deadline: Instant,
    resync: Utf8Bytes,
}

impl Wait {
    /// Whether event `id` goes to the waiting client, and whether the wait is over; a wait
    /// that ends without `since` has queued `resync` first.
    fn pass(&self, id: EventId, client: &Client) -> (bool, bool) {
        if id < self.since {
            (false, false)
        } else if id == self.since {
            (false, true)
        } else {
            client.offer(self.resync.clone());
            (true, true)
        }
    }
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
    /// Whether the hub has caught up with its source: until then (a relay node reading its
    /// history), a `since` it does not hold yet may still come.
    complete: bool,
    /// Subscribers waiting for the event they resume from.
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
    /// `complete`: whether the hub holds everything there is from the start (the in-process
    /// relay), or is still catching up with its source (a relay node, until
    /// [`Hub::caught_up`]).
    pub fn new(history: usize, history_age: Duration, complete: bool) -> Hub {
        Hub {
            state: Mutex::new(State {
                complete,
                ..State::default()
            }),
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
            if let Some(wait) = &sub.after {
                let (send, over) = wait.pass(id, &sub.client);
                if over {
                    sub.after = None;
                    state.waiting -= 1;
                }
                if !send {
                    continue;
                }
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
    /// that may still come is waited for (see [`Wait`]): one newer than every event published
    /// so far (the client came from a relay node that is ahead), or any one while the hub is
    /// still catching up and has not covered it.
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
        // Newer than everything published: it may come. Before anything was published, only
        // a hub still catching up may get it: the first events will tell (see `Wait`).
        let may_come = |since: EventId| match state.latest {
            Some(latest) => since > latest,
            None => !state.complete,
        };
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
                None if may_come(since) => {
                    sub.after = Some(Wait {
                        since,
                        deadline: Instant::now() + RESUME_WAIT,
                        resync,
                    });
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
                if sub.after.as_ref().is_some_and(|w| w.deadline <= now) {
                    sub.after = None;
                    gave_up += 1;
                    sub.client.offer(resync(name));
                }
            }
        }
        state.waiting -= gave_up;
    }

    /// The hub has caught up with its source: a `since` it has not seen by now, and that is
    /// not newer than everything it has, will not come (`resync`).
    pub fn caught_up(&self) {
        let mut state = self.lock();
        let state = &mut *state;
        if state.complete {
            return;
        }
        state.complete = true;
        let latest = state.latest;
        for ch in state.channels.values_mut() {
            for sub in ch.subscribers.values_mut() {
                let Some(wait) = &sub.after else { continue };
                if latest.is_none_or(|l| wait.since <= l) {
                    sub.client.offer(wait.resync.clone());
                    sub.after = None;
                    state.waiting -= 1;
                }
            }
        }
    }

    /// What the hub held no longer follows on from what comes next (its source lost events):
    /// every subscriber gets `resync(channel)` and the history goes.
    pub fn resync_all(&self, resync: impl Fn(&str) -> Utf8Bytes) {
        let mut state = self.lock();
        let state = &mut *state;
        for (name, ch) in &mut state.channels {
            ch.history.clear();
            for sub in ch.subscribers.values_mut() {
                if sub.after.take().is_some() {
                    state.waiting -= 1;
                }
                sub.client.offer(resync(name));
            }
        }
        state.channels.retain(|_, ch| !ch.is_unused());
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
        let hub = Hub::new(0, Duration::from_secs(60), true);
        let (a, _rx) = Client::new(1, 16);
        for n in 0..1000 {
            let name = format!("resources/{n}");
            hub.subscribe(&a, &name, None, frame("ack"), frame("resync"));
            hub.unsubscribe(1, &name);
        }
        assert_eq!(hub.channels(), 0, "no history kept: nothing left behind");

        let hub = Hub::new(10, Duration::from_secs(60), true);
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
        let hub = Hub::new(10, Duration::from_millis(1), true);
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
        let hub = Hub::new(10, Duration::from_secs(60), true);
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
        let hub = Hub::new(10, Duration::from_secs(60), true);
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
            .after
            .as_mut()
            .unwrap()
            .deadline = Instant::now();
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

    #[test]
    fn a_hub_catching_up_holds_a_since_until_the_stream_shows_whether_it_had_it() {
        let hub = Hub::new(10, Duration::from_secs(60), false);
        let (a, mut rx_a) = Client::new(1, 64);
        let (b, mut rx_b) = Client::new(2, 64);
        let (c, mut rx_c) = Client::new(3, 64);
        // Nothing read yet: all three wait.
        hub.subscribe(&a, "c", Some(id(5)), frame("ack"), frame("resync"));
        hub.subscribe(&b, "c", Some(id(2)), frame("ack"), frame("resync"));
        hub.subscribe(&c, "c", Some(id(7)), frame("ack"), frame("resync"));
        // The history starts at 3: b's event was before it, so b refetches, then gets events.
        hub.publish("c", id(3), frame("e3"));
        hub.publish("c", id(5), frame("e5"));
        hub.publish("c", id(6), frame("e6"));
        assert_eq!(
            drain(&mut rx_a),
            ["ack", "e6"],
            "5 passed: what follows is sent"
        );
        assert_eq!(drain(&mut rx_b), ["ack", "resync", "e3", "e5", "e6"]);
        assert_eq!(drain(&mut rx_c), ["ack"], "7 is still ahead");
        // Caught up: 7 is newer than everything, so it may still come from the source.
        hub.caught_up();
        assert_eq!(drain(&mut rx_c), Vec::<String>::new());
        // An event past 7 without 7 on this channel: 7 was not one of its events.
        hub.publish("c", id(8), frame("e8"));
        assert_eq!(drain(&mut rx_c), ["resync", "e8"]);
        assert_eq!(hub.lock().waiting, 0);
    }

    #[test]
    fn catching_up_ends_the_waits_for_events_the_hub_never_had() {
        let hub = Hub::new(10, Duration::from_secs(60), false);
        let (a, mut rx) = Client::new(1, 64);
        hub.subscribe(&a, "quiet", Some(id(4)), frame("ack"), frame("resync"));
        hub.publish("other", id(3), frame("o3"));
        hub.publish("other", id(9), frame("o9"));
        hub.caught_up();
        assert_eq!(
            drain(&mut rx),
            ["ack", "resync"],
            "4 is older than the latest, 9"
        );
        assert_eq!(hub.lock().waiting, 0);
        // Complete and nothing held: resync at once.
        let (b, mut rx_b) = Client::new(2, 64);
        hub.subscribe(&b, "quiet", Some(id(4)), frame("ack"), frame("resync"));
        assert_eq!(drain(&mut rx_b), ["ack", "resync"]);
    }

    #[test]
    fn a_wait_ends_when_its_event_passes_and_a_gap_resyncs_everyone() {
        let hub = Hub::new(10, Duration::from_secs(60), true);
        hub.publish("c", id(1), frame("e1"));
        let (a, mut rx) = Client::new(1, 64);
        hub.subscribe(&a, "c", Some(id(2)), frame("ack"), frame("resync"));
        hub.publish("c", id(2), frame("e2"));
        assert_eq!(hub.lock().waiting, 0, "2 passed: the wait is over");
        // A quiet channel afterwards: nothing to give up on.
        hub.give_up_waiting(|c| frame(&format!("resync {c}")));
        assert_eq!(drain(&mut rx), ["ack"]);
        let (b, mut rx_b) = Client::new(2, 64);
        hub.subscribe(&b, "c", Some(id(7)), frame("ack"), frame("resync"));
        assert_eq!(hub.lock().waiting, 1);
        hub.resync_all(|c| frame(&format!("resync {c}")));
        assert_eq!(drain(&mut rx), ["resync c"]);
        assert_eq!(drain(&mut rx_b), ["ack", "resync c"]);
        assert_eq!(hub.lock().waiting, 0);
        let (c, mut rx_c) = Client::new(3, 64);
        hub.subscribe(&c, "c", Some(id(1)), frame("ack"), frame("resync"));
        assert_eq!(
            drain(&mut rx_c),
            ["ack", "resync"],
            "the history went with the gap"
        );
    }
}

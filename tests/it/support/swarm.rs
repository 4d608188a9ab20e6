//! Many WebSocket clients at once on one runtime, as the browsers behind a load balancer in
//! front of relay nodes: each client subscribes to its channels on one of the nodes the test
//! offers and records every frame; when its connection ends (a close frame, or a node that
//! vanished) it moves to a node still offered and resumes each channel with `since` = the
//! last `meta.id` it received on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::WAIT;

/// What one client saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Its channels.
    pub channels: Vec<String>,
    /// Per channel, the `meta.id` of every event, in the order received.
    pub events: HashMap<String, Vec<String>>,
    /// Control frames other than `subscribed` (`resync`, `error`).
    pub others: Vec<Value>,
    /// How each connection ended: the node's URL and the close code (none: no close frame).
    pub ends: Vec<(String, Option<u16>)>,
    /// The node it is subscribed on (every `subscribed` received), while connected.
    pub on: Option<String>,
    pub connections: usize,
}

impl Seen {
    /// Events received on `channel` so far.
    pub fn count(&self, channel: &str) -> usize {
        self.events.get(channel).map_or(0, Vec::len)
    }

    fn last(&self, channel: &str) -> Option<&String> {
        self.events.get(channel)?.last()
    }
}

pub struct Swarm {
    /// Runs the clients: they end with it.
    _rt: tokio::runtime::Runtime,
    clients: Vec<Arc<Mutex<Seen>>>,
    offered: watch::Sender<Vec<String>>,
    stop: CancellationToken,
}

impl Swarm {
    /// Starts `n` clients: client `i` subscribes to `channels(i)` on node `i % len` of the
    /// offered `nodes` (WebSocket URLs).
    pub fn start(n: usize, nodes: &[String], channels: impl Fn(usize) -> Vec<String>) -> Swarm {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (offered, _) = watch::channel(nodes.to_vec());
        let stop = CancellationToken::new();
        let clients: Vec<Arc<Mutex<Seen>>> = (0..n)
            .map(|i| {
                Arc::new(Mutex::new(Seen {
                    channels: channels(i),
                    ..Seen::default()
                }))
            })
            .collect();
        for (i, seen) in clients.iter().enumerate() {
            rt.spawn(client(i, seen.clone(), offered.subscribe(), stop.clone()));
        }
        Swarm {
            _rt: rt,
            clients,
            offered,
            stop,
        }
    }

    /// Offers only `nodes` from now on: clients whose connection ends move to one of them.
    pub fn offer(&self, nodes: &[String]) {
        self.offered.send_replace(nodes.to_vec());
    }

    /// What every client saw so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.clients
            .iter()
            .map(|c| c.lock().unwrap().clone())
            .collect()
    }

    /// Waits until `cond` holds for what the clients saw; returns it.
    #[track_caller]
    pub fn wait(&self, what: &str, cond: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
        self.wait_within(WAIT, what, cond)
    }

    #[track_caller]
    pub fn wait_within(
        &self,
        within: Duration,
        what: &str,
        cond: impl Fn(&[Seen]) -> bool,
    ) -> Vec<Seen> {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.seen();
            if cond(&seen) {
                return seen;
            }
            if Instant::now() >= deadline {
                let off: Vec<usize> = (0..seen.len()).filter(|&i| seen[i].on.is_none()).collect();
                panic!(
                    "timed out waiting for {what}; clients not subscribed: {off:?}; client 0: {:?}",
                    summary(&seen[0])
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every client is subscribed to all its channels on one of `nodes`.
    #[track_caller]
    pub fn wait_on(&self, nodes: &[String]) -> Vec<Seen> {
        self.wait(&format!("every client subscribed on {nodes:?}"), |seen| {
            seen.iter()
                .all(|s| s.on.as_ref().is_some_and(|n| nodes.contains(n)))
        })
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A short account of a client for failure messages.
pub fn summary(s: &Seen) -> String {
    let counts: Vec<(&String, usize)> = s.channels.iter().map(|c| (c, s.count(c))).collect();
    format!(
        "on {:?}, {} connections, events {counts:?}, other frames {:?}, ends {:?}",
        s.on, s.connections, s.others, s.ends
    )
}

/// One client: connects to an offered node, and again to one offered then whenever its
/// connection ends, until `stop`.
async fn client(
    i: usize,
    seen: Arc<Mutex<Seen>>,
    mut offered: watch::Receiver<Vec<String>>,
    stop: CancellationToken,
) {
    loop {
        let url = loop {
            let nodes = offered.borrow_and_update().clone();
            if !nodes.is_empty() {
                break nodes[i % nodes.len()].clone();
            }
            if offered.changed().await.is_err() {
                return;
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            ended = session(&url, &seen) => {
                let mut s = seen.lock().unwrap();
                s.on = None;
                if let Some(code) = ended {
                    s.ends.push((url, code));
                }
            }
        }
        // A node that refused the connection: try again soon, not in a tight loop.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// One connection to `url`: none if it could not connect, else how it ended (the close
/// code, none without a close frame).
async fn session(url: &str, seen: &Mutex<Seen>) -> Option<Option<u16>> {
    let connecting = tokio_tungstenite::connect_async(url);
    let (mut ws, _) = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .ok()?
        .ok()?;
    let requests: Vec<Value> = {
        let mut s = seen.lock().unwrap();
        s.connections += 1;
        s.channels
            .iter()
            .map(|c| match s.last(c) {
                Some(id) => json!({"op": "subscribe", "channel": c, "since": id}),
                None => json!({"op": "subscribe", "channel": c}),
            })
            .collect()
    };
    let wanted = requests.len();
    for r in requests {
        if ws.send(Message::text(r.to_string())).await.is_err() {
            return Some(None);
        }
    }
    let mut acks = 0;
    loop {
        let frame = match ws.next().await {
            Some(Ok(Message::Text(t))) => serde_json::from_str::<Value>(&t).expect("JSON"),
            Some(Ok(Message::Close(frame))) => {
                // Answered by the next reads; the node waits for the handshake.
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                return Some(frame.map(|f| f.code.into()));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Some(None),
        };
        let mut s = seen.lock().unwrap();
        match frame["op"].as_str() {
            None => {
                let channel = frame["channel"].as_str().expect("channel").to_owned();
                let id = frame["meta"]["id"].as_str().expect("meta.id").to_owned();
                s.events.entry(channel).or_default().push(id);
            }
            Some("subscribed") => {
                acks += 1;
                if acks == wanted {
                    s.on = Some(url.to_owned());
                }
            }
            Some(_) => s.others.push(frame),
        }
    }
}

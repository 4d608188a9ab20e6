//! The floor of `scripts/bench-fanout.sh`: the simplest broadcaster that serves the load
//! generator's clients as pglive's relay does, so that the benchmark can tell what the load
//! generator itself costs from what the relay costs.
//!
//!   ws_floor LISTEN [THREADS]
//!
//! Accepts WebSocket connections on LISTEN (any path). `{"op":"subscribe","channel":C}` is
//! answered with `{"op":"subscribed","channel":C}`, and from then on the connection receives
//! every event. `{"op":"publish"}` (the load generator's stand-in for a commit) makes one
//! event: a LiveEvent like pglive's for a one-row insert into `public.fanout`, with `date` =
//! now and the next `meta.id`, encoded once and handed to every subscribed connection through
//! a tokio broadcast channel; a connection more than `QUEUE` events behind is sent
//! `{"op":"resync"}`. No history, no authentication, no limits. Runs on THREADS worker threads
//! (default: one per core).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use pglive::event::{EventId, EventKind, EventSource, Id, LiveEvent, PG_EPOCH_UNIX_MICROS};
use pglive::lsn::Lsn;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const CHANNEL: &str = "resources/fanout";
/// Events a connection may fall behind before it is told to resync (pglive's default client
/// queue).
const QUEUE: usize = 4096;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, threads) = match args.as_slice() {
        [listen] => (listen, std::thread::available_parallelism()?.get()),
        [listen, threads] => (listen, threads.parse()?),
        _ => return Err("usage: ws_floor LISTEN [THREADS]".into()),
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?
        .block_on(serve(listen))
}

/// What every connection shares: the broadcast channel and the next event's number.
struct Hub {
    events: broadcast::Sender<Message>,
    source: EventSource,
    next: AtomicU64,
    /// Serializes publishing, so that events go out in `meta.id` order.
    publishing: Mutex<()>,
}

impl Hub {
    fn new() -> Hub {
        Hub {
            events: broadcast::channel(QUEUE).0,
            source: EventSource {
                channel: CHANNEL.into(),
                schema: "public".into(),
                table: "fanout".into(),
                data_provider_name: None,
            },
            next: AtomicU64::new(1),
            publishing: Mutex::new(()),
        }
    }

    /// Encodes the next event once, dated now, and hands it to every subscriber.
    fn publish(&self) -> Result<()> {
        let _order = self
            .publishing
            .lock()
            .map_err(|_| "publishing lock poisoned")?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let unix_micros = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros())?;
        let event = LiveEvent::new(
            &self.source,
            EventKind::Created,
            Some(&[Id::Int(i64::try_from(n)?)]),
            EventId {
                commit_lsn: Lsn(0x1000_0000 + n * 200),
                ordinal: 0,
            },
            1000 + (n % 1_000_000) as u32,
            unix_micros - PG_EPOCH_UNIX_MICROS,
        );
        let text = String::from_utf8(event.json.into_vec())?;
        // No subscriber yet is not an error.
        let _ = self.events.send(Message::text(text));
        Ok(())
    }
}

async fn serve(listen: &str) -> Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let hub = Arc::new(Hub::new());
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                tokio::spawn(connection(tcp, hub.clone()));
            }
            Err(e) => {
                // Out of descriptors, most likely: say so and accept again later.
                eprintln!("ws_floor: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The next event for a subscribed connection; never, for one not subscribed yet.
async fn next_event(
    events: &mut Option<broadcast::Receiver<Message>>,
) -> std::result::Result<Message, broadcast::error::RecvError> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn connection(tcp: TcpStream, hub: Arc<Hub>) {
    let _ = tcp.set_nodelay(true);
    // Clients send only a subscribe frame: a small read buffer (the default is 128 KiB).
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await else {
        return;
    };
    let mut events = None;
    loop {
        let sent = tokio::select! {
            event = next_event(&mut events) => match event {
                Ok(frame) => ws.send(frame).await,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    ws.send(control("resync")).await
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Text(text))) if text.contains(r#""op":"subscribe""#) => {
                    events.get_or_insert_with(|| hub.events.subscribe());
                    ws.send(control("subscribed")).await
                }
                Some(Ok(Message::Text(text))) if text.contains(r#""op":"publish""#) => {
                    if let Err(e) = hub.publish() {
                        eprintln!("ws_floor: publish: {e}");
                    }
                    Ok(())
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => Ok(()),
            },
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = ws.close(None).await;
}

fn control(op: &str) -> Message {
    Message::text(format!(r#"{{"op":"{op}","channel":"{CHANNEL}"}}"#))
}

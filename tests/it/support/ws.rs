//! A real WebSocket client for the relay (tokio-tungstenite), driven synchronously with
//! deadlines, and JWTs signed the way an application's backend would sign them.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use super::WAIT;

pub const SECRET: &str = "a test secret of at least 32 bytes!!";

/// A token for `channels`, expiring `exp_in` seconds from now (negative: already expired).
pub fn token(channels: &[&str], exp_in: i64, secret: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = serde_json::json!({ "channels": channels, "exp": now + exp_in });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct WsClient {
    rt: tokio::runtime::Runtime,
    ws: Stream,
}

impl WsClient {
    /// Connects to `url` with extra request headers; on a refused upgrade, the HTTP status.
    pub fn connect(url: &str, headers: &[(&str, &str)]) -> Result<WsClient, u16> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut request = url.into_client_request().unwrap();
        for (k, v) in headers {
            let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
            request
                .headers_mut()
                .insert(name, v.parse().expect("header value"));
        }
        let connected = rt.block_on(async {
            tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await
        });
        match connected.expect("connect within the deadline") {
            Ok((ws, _)) => Ok(WsClient { rt, ws }),
            Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
            Err(e) => panic!("connecting to {url}: {e}"),
        }
    }

    /// Connects with a small socket receive buffer: a client that stops reading is felt by
    /// the server soon, rather than after megabytes of kernel buffers.
    pub fn connect_small_buffer(url: &str) -> WsClient {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let addr: std::net::SocketAddr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let ws = rt.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            let stream = socket.connect(addr).await.unwrap();
            let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
            let (ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
            ws
        });
        WsClient { rt, ws }
    }

    pub fn send(&mut self, json: Value) {
        self.rt
            .block_on(self.ws.send(Message::text(json.to_string())))
            .unwrap();
    }

    pub fn subscribe(&mut self, channel: &str) {
        self.send(serde_json::json!({"op": "subscribe", "channel": channel}));
    }

    /// The next text frame as JSON, within `within`; None if none came.
    pub fn next_within(&mut self, within: Duration) -> Option<Value> {
        self.rt.block_on(async {
            let deadline = tokio::time::Instant::now() + within;
            loop {
                let m = tokio::time::timeout_at(deadline, self.ws.next())
                    .await
                    .ok()??;
                match m.expect("a frame") {
                    Message::Text(t) => return Some(serde_json::from_str(&t).unwrap()),
                    Message::Close(_) => return None,
                    _ => continue,
                }
            }
        })
    }

    /// The next text frame, which must come within the default deadline.
    #[track_caller]
    pub fn next(&mut self) -> Value {
        self.next_within(WAIT).expect("a frame within the deadline")
    }

    /// Frames until `n` events (frames without `op`) have come; returns all frames read.
    #[track_caller]
    pub fn until_events(&mut self, n: usize) -> Vec<Value> {
        let mut frames: Vec<Value> = Vec::new();
        let events = |frames: &[Value]| frames.iter().filter(|f| f.get("op").is_none()).count();
        while events(&frames) < n {
            match self.next_within(WAIT) {
                Some(f) => frames.push(f),
                None => {
                    let controls: Vec<&Value> =
                        frames.iter().filter(|f| f.get("op").is_some()).collect();
                    panic!(
                        "timed out waiting for {n} events: {} so far, control frames {controls:?}",
                        events(&frames)
                    );
                }
            }
        }
        frames
    }

    /// Waits for the server to close; returns the close code.
    #[track_caller]
    pub fn close_code(&mut self) -> Option<u16> {
        self.rt.block_on(async {
            loop {
                match tokio::time::timeout(WAIT, self.ws.next()).await {
                    Err(_) => panic!("no close within the deadline"),
                    Ok(None) => return None,
                    Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code.into()),
                    Ok(Some(Ok(_))) => continue,
                    Ok(Some(Err(_))) => return None,
                }
            }
        })
    }
}

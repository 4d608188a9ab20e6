//! The RabbitMQ on 127.0.0.1:5672 (started by `scripts/test.sh`): a vhost of its own per test,
//! queues bound to the sink's exchange, and everything they received, read with a real AMQP
//! client. Tests that disturb the whole broker (restarting it, raising a memory alarm) take it
//! exclusively; the others share it.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;

use super::WAIT;

pub const HOST: &str = "127.0.0.1:5672";

static BROKER: RwLock<()> = RwLock::new(());

enum Hold {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

/// A message as a consumer received it.
#[derive(Debug, Clone)]
pub struct Message {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

impl Message {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("message body is JSON")
    }

    pub fn header(&self, name: &str) -> Option<AMQPValue> {
        self.properties
            .headers()
            .as_ref()?
            .inner()
            .get(name)
            .cloned()
    }
}

/// A vhost of one's own on the shared broker, deleted when dropped.
pub struct Vhost {
    pub name: String,
    rt: tokio::runtime::Runtime,
    client: Mutex<(Connection, lapin::Channel)>,
    received: Mutex<HashMap<String, Vec<Message>>>,
    _hold: Hold,
}

/// Runs `rabbitmqctl`, which must succeed.
#[track_caller]
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("run rabbitmqctl (scripts/prereqs.sh installs RabbitMQ)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Vhost {
    /// A vhost shared with other tests' vhosts on the running broker.
    pub fn new(name: &str) -> Vhost {
        let hold = Hold::Shared(BROKER.read().unwrap_or_else(|e| e.into_inner()));
        Self::create(name, hold)
    }

    /// A vhost, with no other broker test running meanwhile (for restarts and alarms).
    pub fn exclusive(name: &str) -> Vhost {
        let hold = Hold::Exclusive(BROKER.write().unwrap_or_else(|e| e.into_inner()));
        Self::create(name, hold)
    }

    fn create(name: &str, hold: Hold) -> Vhost {
        assert!(
            std::net::TcpStream::connect(HOST).is_ok(),
            "RabbitMQ is not listening on {HOST}; scripts/test.sh starts it"
        );
        let name = format!("pglive_test_{name}");
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &name])
            .output();
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = Mutex::new(connect(&rt, &name));
        Vhost {
            name,
            rt,
            client,
            received: Mutex::default(),
            _hold: hold,
        }
    }

    /// A new client connection, after the broker restarted.
    pub fn reconnect(&self) {
        *self.client.lock().unwrap() = connect(&self.rt, &self.name);
    }

    fn channel(&self) -> lapin::Channel {
        self.client.lock().unwrap().1.clone()
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{HOST}/{}", self.name)
    }

    /// A `[[sinks]]` entry publishing to this vhost, with `extra` keys.
    pub fn sink(&self, extra: &str) -> String {
        format!(
            "[[sinks]]\ntype = \"amqp\"\nurl = \"{}\"\nmax_backoff = \"1s\"\n{extra}\n",
            self.url()
        )
    }

    /// Declares `exchange` (durable topic) and a durable queue bound to it with `binding`.
    pub fn queue(&self, exchange: &str, queue: &str, binding: &str) {
        self.queue_with(exchange, queue, binding, FieldTable::default());
    }

    pub fn queue_with(&self, exchange: &str, queue: &str, binding: &str, args: FieldTable) {
        let channel = self.channel();
        self.rt.block_on(async {
            channel
                .exchange_declare(
                    exchange.into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
            channel
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    args,
                )
                .await
                .unwrap();
            channel
                .queue_bind(
                    queue.into(),
                    exchange.into(),
                    binding.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        });
    }

    /// Every message `queue` has received so far (taken from the queue and kept here).
    pub fn messages(&self, queue: &str) -> Vec<Message> {
        let mut received = self.received.lock().unwrap();
        let list = received.entry(queue.to_owned()).or_default();
        let channel = self.channel();
        self.rt.block_on(async {
            while let Some(m) = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get")
            {
                list.push(Message {
                    routing_key: m.delivery.routing_key.to_string(),
                    body: m.delivery.data.clone(),
                    properties: m.delivery.properties.clone(),
                });
            }
        });
        list.clone()
    }

    /// Waits until `cond` holds for the messages `queue` has received.
    #[track_caller]
    pub fn wait_messages(
        &self,
        queue: &str,
        what: &str,
        cond: impl Fn(&[Message]) -> bool,
    ) -> Vec<Message> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.messages(queue);
            if cond(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {} messages so far",
                got.len()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// The first `n` messages of the stream queue `stream`, read by a consumer from its first
    /// offset (a stream keeps them for every reader; basic.get does not apply).
    #[track_caller]
    pub fn stream_messages(&self, stream: &str, n: usize) -> Vec<Message> {
        use futures_util::StreamExt;
        use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
        let conn = &self.client.lock().unwrap().0;
        self.rt.block_on(async {
            let channel = conn.create_channel().await.unwrap();
            channel
                .basic_qos(100, BasicQosOptions::default())
                .await
                .unwrap();
            let mut args = FieldTable::default();
            args.insert(
                "x-stream-offset".into(),
                AMQPValue::LongString("first".into()),
            );
            let mut consumer = channel
                .basic_consume(
                    stream.into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    args,
                )
                .await
                .expect("consume from the stream");
            let mut got = Vec::new();
            let deadline = tokio::time::Instant::now() + WAIT;
            while got.len() < n {
                let Ok(Some(Ok(d))) = tokio::time::timeout_at(deadline, consumer.next()).await
                else {
                    panic!(
                        "stream {stream}: {} of {n} messages within {WAIT:?}",
                        got.len()
                    );
                };
                d.acker.ack(BasicAckOptions::default()).await.unwrap();
                got.push(Message {
                    routing_key: d.routing_key.to_string(),
                    body: d.data.clone(),
                    properties: d.properties.clone(),
                });
            }
            let _ = channel.close(200, "read".into()).await;
            got
        })
    }

    /// Messages currently waiting in `queue`, without taking them.
    pub fn depth(&self, queue: &str) -> u32 {
        let channel = self.channel();
        self.rt.block_on(async {
            channel
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap()
                .message_count()
        })
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let client = self.client.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.rt.block_on(client.0.close(200, "test done".into()));
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .output();
    }
}

fn connect(rt: &tokio::runtime::Runtime, vhost: &str) -> (Connection, lapin::Channel) {
    let url = format!("amqp://guest:guest@{HOST}/{vhost}");
    rt.block_on(async {
        let conn = Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("test client connects to RabbitMQ");
        let channel = conn.create_channel().await.unwrap();
        (conn, channel)
    })
}

/// The ids of every event in `messages`, flattened.
pub fn message_ids(messages: &[Message]) -> Vec<Value> {
    messages
        .iter()
        .flat_map(|m| {
            m.json()["payload"]["ids"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// A TCP relay to the broker on a port of its own, whose connections can be cut: a broker that
/// is not there yet, or a network that drops a connection (and, with `refuse`, stays down).
pub struct Relay {
    open: std::sync::Arc<Mutex<Vec<std::net::TcpStream>>>,
    refusing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    /// Starts relaying `port` (see `cluster::free_port`) to the broker.
    pub fn start(port: u16) -> Relay {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let open = std::sync::Arc::new(Mutex::new(Vec::new()));
        let refusing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = open.clone();
        let refused = refusing.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                if refused.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(HOST) else {
                    continue;
                };
                let mut list = conns.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                drop(list);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { open, refusing }
    }

    /// Drops every relayed connection, as a failing network would.
    pub fn cut(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Closes every new connection at once (the broker stays unreachable) until [`Relay::allow`].
    pub fn refuse(&self) {
        self.refusing
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Relays new connections again.
    pub fn allow(&self) {
        self.refusing
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A TLS front for the broker (as a load balancer terminating `amqps://` would be), with the
/// given certificate and key, on a port of its own. Returns the port.
pub fn tls_front(cert: &std::path::Path, key: &std::path::Path) -> u16 {
    tls_front_to(cert, key, HOST.to_owned())
}

/// A TLS front with `cert` and `key` on a free port, forwarding every connection to `target`
/// (`host:port`); returns its port.
pub fn tls_front_to(cert: &std::path::Path, key: &std::path::Path, target: String) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut broker) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
                });
            }
        });
    });
    port
}

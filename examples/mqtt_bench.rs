//! The subscriber side and the ceiling of `scripts/bench-sinks.sh` for the MQTT sink.
//!
//!   mqtt_bench serve PORT                 subscribe to `resources/#` at QoS 1 on the broker at
//!                                         127.0.0.1:PORT, and print the port of an HTTP server
//!                                         answering `GET /count?expect=N` with the messages
//!                                         received since the last count (after waiting up to
//!                                         10 s for N of them); runs until killed
//!   mqtt_bench publish PORT N IN_FLIGHT   the ceiling: N QoS 1 publishes on `resources/bench`,
//!                                         each the LiveEvent pglive sends for a one-row insert
//!                                         into `public.bench`, through the same MQTT library
//!                                         with the same window of IN_FLIGHT messages awaiting
//!                                         their PUBACKs, until every PUBACK is in; with no
//!                                         PostgreSQL and no pglive pipeline; prints the seconds

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::Query;
use axum::routing::get;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

#[path = "common/mod.rs"]
mod common;

use common::Result;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match args
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["serve", port] => serve(port.parse()?).await,
            ["publish", port, n, in_flight] => {
                publish(port.parse()?, n.parse()?, in_flight.parse()?).await
            }
            _ => Err("usage: mqtt_bench serve PORT | publish PORT N IN_FLIGHT".into()),
        }
    })
}

async fn serve(port: u16) -> Result<()> {
    let count = Arc::new(AtomicU64::new(0));
    let mut options = MqttOptions::new("bench-reader", "127.0.0.1", port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client.subscribe("resources/#", QoS::AtLeastOnce).await?;
    let received = count.clone();
    tokio::spawn(async move {
        let _client = client;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    received.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("mqtt_bench serve: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    let app = axum::Router::new().route(
        "/count",
        get(move |Query(q): Query<HashMap<String, u64>>| async move {
            let expect = q.get("expect").copied().unwrap_or(0);
            let deadline = Instant::now() + Duration::from_secs(10);
            while count.load(Ordering::Relaxed) < expect && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            count.swap(0, Ordering::Relaxed).to_string()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?.port());
    axum::serve(listener, app).await?;
    Ok(())
}

async fn publish(port: u16, n: u64, in_flight: u16) -> Result<()> {
    let events = common::events(n);
    // As the sink sets up its client: a persistent session, the same window and queue.
    let mut options = MqttOptions::new("bench-ceiling", "127.0.0.1", port);
    options
        .set_clean_session(false)
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(in_flight)
        .set_max_packet_size(1 << 28, 1 << 28);
    let (client, mut eventloop) = AsyncClient::new(options, usize::from(in_flight));
    match eventloop.poll().await? {
        Event::Incoming(Packet::ConnAck(_)) => {}
        other => return Err(format!("expected CONNACK, got {other:?}").into()),
    }
    let started = Instant::now();
    let publisher = tokio::spawn(async move {
        for event in &events {
            let topic = event.channel.to_string();
            client
                .publish(topic, QoS::AtLeastOnce, false, event.json.to_vec())
                .await?;
        }
        Ok::<_, rumqttc::ClientError>(client)
    });
    let (mut written, mut acked) = (0u64, 0u64);
    while acked < n {
        match eventloop.poll().await? {
            Event::Outgoing(Outgoing::Publish(_)) => written += 1,
            Event::Incoming(Packet::PubAck(_)) => acked += 1,
            _ => {}
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(written, n);
    let client = publisher.await??;
    client.disconnect().await?;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    println!("{:.3}", elapsed.as_secs_f64());
    Ok(())
}

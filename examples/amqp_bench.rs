//! The broker side of `scripts/bench-amqp.sh`.
//!
//!   amqp_bench setup URL EXCHANGE QUEUE     declare a durable topic exchange and a durable queue bound with `#`
//!   amqp_bench purge URL QUEUE              empty the queue; prints how many messages it held
//!   amqp_bench publish URL EXCHANGE N WINDOW WINDOW_BYTES
//!
//! `publish` is the raw ceiling: N persistent messages, each exactly what pglive publishes for
//! a one-row insert into `public.bench` (same body, routing key and properties, published the
//! same way), on one channel with confirms and at most WINDOW messages (and WINDOW_BYTES of
//! bodies) awaiting confirmation, as the AMQP sink does, but with no PostgreSQL and no pglive
//! pipeline. Prints the seconds from the first publish to the last confirm.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{Confirmation, Connection, ConnectionProperties, ExchangeKind};
use pglive::sink::Batch;
use pglive::sink::amqp::{InFlight, start_publish};

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
            ["setup", url, exchange, queue] => setup(url, exchange, queue).await,
            ["purge", url, queue] => purge(url, queue).await,
            ["publish", url, exchange, n, window, bytes] => {
                publish(url, exchange, n.parse()?, window.parse()?, bytes.parse()?).await
            }
            _ => Err("usage: see the comment at the top of examples/amqp_bench.rs".into()),
        }
    })
}

async fn connect(url: &str) -> Result<(Connection, lapin::Channel)> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    Ok((conn, channel))
}

async fn setup(url: &str, exchange: &str, queue: &str) -> Result<()> {
    let (_conn, ch) = connect(url).await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), durable, FieldTable::default())
        .await?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

async fn purge(url: &str, queue: &str) -> Result<()> {
    let (_conn, ch) = connect(url).await?;
    let n = ch
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await?;
    println!("{n}");
    Ok(())
}

async fn publish(url: &str, exchange: &str, n: u64, window: usize, bytes: usize) -> Result<()> {
    let batch = Arc::new(Batch {
        seq: 1,
        events: common::events(n),
    });
    let (_conn, ch) = connect(url).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let started = Instant::now();
    let mut inflight: VecDeque<(usize, InFlight)> = VecDeque::new();
    let mut inflight_bytes = 0;
    for (i, event) in batch.events.iter().enumerate() {
        while inflight.len() >= window || inflight_bytes >= bytes {
            let (size, confirm) = inflight.pop_front().expect("window not empty");
            check(confirm.await?)?;
            inflight_bytes -= size;
        }
        let publish = start_publish(
            &ch,
            exchange.into(),
            "resources.bench".into(),
            true,
            batch.clone(),
            i,
        );
        inflight_bytes += event.json.len();
        inflight.push_back((event.json.len(), publish));
    }
    for (_, confirm) in inflight {
        check(confirm.await?)?;
    }
    println!("{:.3}", started.elapsed().as_secs_f64());
    Ok(())
}

fn check(c: Confirmation) -> Result<()> {
    match c {
        Confirmation::Ack(None) => Ok(()),
        other => Err(format!("message not taken: {other:?}").into()),
    }
}

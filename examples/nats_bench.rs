//! The server side of the `nats` section of `scripts/bench-sinks.sh`.
//!
//!   nats_bench reset URL STREAM SUBJECTS    delete the stream if it exists; create it anew
//!                                           (file storage) for SUBJECTS, e.g. `pglive.>`
//!   nats_bench count URL STREAM             print how many messages the stream holds
//!   nats_bench publish URL SUBJECT N WINDOW
//!
//! `publish` is the raw ceiling: N messages, each exactly what pglive publishes for a one-row
//! insert into `public.bench` (same body and `Nats-Msg-Id`, published by the same function),
//! on one connection with at most WINDOW messages awaiting their PubAcks, as the NATS sink
//! does, but with no PostgreSQL and no pglive pipeline. Prints the seconds from the first
//! publish to the last PubAck.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::context::ContextBuilder;
use async_nats::jetstream::stream::{Config, StorageType};
use pglive::sink::Batch;
use pglive::sink::nats::{PubAck, publish};

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
            ["reset", url, stream, subjects] => reset(url, stream, subjects).await,
            ["count", url, stream] => count(url, stream).await,
            ["publish", url, subject, n, window] => {
                publish_all(url, subject, n.parse()?, window.parse()?).await
            }
            _ => Err("usage: see the comment at the top of examples/nats_bench.rs".into()),
        }
    })
}

/// A JetStream context on a connection to `url` (`nats://[user:password@]host:port`).
async fn context(url: &str, window: usize) -> Result<async_nats::jetstream::Context> {
    let parsed = url::Url::parse(url)?;
    let mut options = async_nats::ConnectOptions::new();
    if let Some(password) = parsed.password() {
        options = options.user_and_password(parsed.username().into(), password.into());
    }
    let address = format!(
        "{}:{}",
        parsed.host_str().unwrap_or("127.0.0.1"),
        parsed.port().unwrap_or(4222)
    );
    let client = options.connect(address).await?;
    Ok(ContextBuilder::new()
        .max_ack_inflight(window + 1)
        .build(client))
}

async fn reset(url: &str, stream: &str, subjects: &str) -> Result<()> {
    let js = context(url, 1).await?;
    let _ = js.delete_stream(stream).await;
    js.create_stream(Config {
        name: stream.to_owned(),
        subjects: vec![subjects.to_owned()],
        storage: StorageType::File,
        ..Default::default()
    })
    .await?;
    Ok(())
}

async fn count(url: &str, stream: &str) -> Result<()> {
    let js = context(url, 1).await?;
    let mut s = js.get_stream(stream).await?;
    println!("{}", s.info().await?.state.messages);
    Ok(())
}

fn events(n: u64) -> Arc<Batch> {
    Arc::new(Batch {
        seq: 1,
        events: common::events(n),
    })
}

async fn publish_all(url: &str, subject: &str, n: u64, window: usize) -> Result<()> {
    // Built before timing: the ceiling measures the server and the client, not JSON.
    let batch = events(n);
    let js = context(url, window).await?;
    let subject = async_nats::Subject::from(subject);
    let started = Instant::now();
    let mut inflight: VecDeque<PubAck> = VecDeque::new();
    for i in 0..batch.events.len() {
        while inflight.len() >= window {
            let ack = inflight.pop_front().expect("window not empty");
            ack.await?;
        }
        inflight.push_back(publish(&js, subject.clone(), &batch, i).await?);
    }
    for ack in inflight {
        ack.await?;
    }
    println!("{:.3}", started.elapsed().as_secs_f64());
    Ok(())
}

//! The ceiling of `scripts/bench-sinks.sh` for the Redis sink (stream mode).
//!
//!   redis_bench publish URL KEY N   N XADDs to KEY, each what pglive writes for a one-row
//!                                   insert into `public.bench` (`MAXLEN ~ 100000 * event
//!                                   <json> id <meta.id>`), in MULTI/EXEC transactions of 1024
//!                                   (pglive's full batches), up to 8 pipelined on one
//!                                   connection of the same client library, as the sink does,
//!                                   with no PostgreSQL and no pglive pipeline; prints the seconds

use std::time::Instant;

use futures_util::StreamExt;

#[path = "common/mod.rs"]
mod common;

use common::Result;

/// pglive's full batch, and the transactions the sink keeps in flight.
const BATCH: usize = 1024;
const IN_FLIGHT: usize = 1;

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
            ["publish", url, key, n] => publish(url, key, n.parse()?).await,
            _ => Err("usage: redis_bench publish URL KEY N".into()),
        }
    })
}

async fn publish(url: &str, key: &str, n: u64) -> Result<()> {
    // Built before timing: the ceiling measures Redis and the client, not JSON.
    let events = common::events(n);
    let conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let started = Instant::now();
    let mut answers = futures_util::stream::iter(events.chunks(BATCH))
        .map(|chunk| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for event in chunk {
                pipe.cmd("XADD")
                    .arg(key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(100_000)
                    .arg("*")
                    .arg("event")
                    .arg(&*event.json)
                    .arg("id")
                    .arg(event.id.to_string());
            }
            let mut conn = conn.clone();
            async move {
                conn.send_packed_commands(&pipe, chunk.len() + 1, 1)
                    .await
                    .map(|v| (v, chunk.len()))
            }
        })
        .buffered(IN_FLIGHT);
    while let Some(answer) = answers.next().await {
        let (values, len) = answer?;
        match values.first() {
            Some(redis::Value::Array(replies)) if replies.len() == len => {}
            other => return Err(format!("unexpected answer: {other:?}").into()),
        }
    }
    println!("{:.3}", started.elapsed().as_secs_f64());
    Ok(())
}

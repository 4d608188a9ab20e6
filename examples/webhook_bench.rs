//! The receiver side and the ceiling of `scripts/bench-sinks.sh` for the webhook sink.
//!
//!   webhook_bench serve                print the port of a receiver on 127.0.0.1 that answers
//!                                      every POST 204 and `GET /count` with the POSTs since the
//!                                      last count; runs until killed
//!   webhook_bench publish URL SECRET N the ceiling: N signed POSTs, each what pglive sends for a
//!                                      one-row insert into `public.bench` (same body and
//!                                      headers, built the same way), one after another on one
//!                                      keep-alive connection of the same HTTP library, with no
//!                                      PostgreSQL and no pglive pipeline; prints the seconds

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use axum::http::StatusCode;
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use pglive::sink::webhook::Secret;

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
            ["serve"] => serve().await,
            ["publish", url, secret, n] => publish(url, secret, n.parse()?).await,
            _ => Err("usage: webhook_bench serve | publish URL SECRET N".into()),
        }
    })
}

async fn serve() -> Result<()> {
    let count = Arc::new(AtomicU64::new(0));
    let posts = count.clone();
    let app = axum::Router::new()
        .route(
            "/hook",
            post(move |_body: Bytes| {
                posts.fetch_add(1, Ordering::Relaxed);
                std::future::ready(StatusCode::NO_CONTENT)
            }),
        )
        .route(
            "/count",
            get(move || std::future::ready(count.swap(0, Ordering::Relaxed).to_string())),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?.port());
    axum::serve(listener, app).await?;
    Ok(())
}

async fn publish(url: &str, secret: &str, n: u64) -> Result<()> {
    let url: url::Url = url.parse()?;
    let secret = Secret::parse(secret)?;
    let events = common::events(n);
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let target = &url[url::Position::BeforePath..];
    let started = Instant::now();
    for event in &events {
        let id = event.id.to_string();
        let body = Bytes::copy_from_slice(&event.json);
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_secs();
        let request = hyper::Request::post(target)
            .header(hyper::header::HOST, format!("{host}:{port}"))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", secret.sign(&id, timestamp, &body))
            .body(Full::new(body))?;
        sender.ready().await?;
        let answer = sender.send_request(request).await?;
        if !answer.status().is_success() {
            return Err(format!("the receiver answered {}", answer.status()).into());
        }
        answer.into_body().collect().await?;
    }
    println!("{:.3}", started.elapsed().as_secs_f64());
    Ok(())
}

//! systemd notifications (`Type=notify`): READY=1 once replication streams, STATUS= lines,
//! STOPPING=1 on shutdown — each read off the shared [`Status`] as it changes — and WATCHDOG=1
//! pings while the runtime is responsive. Without `NOTIFY_SOCKET` (not under systemd) nothing
//! is sent.

use std::sync::Arc;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::status::{SourceState, Status};

/// Tells systemd of every change of the source's state, and pings its watchdog, until `stop`.
pub async fn run(status: Arc<Status>, stop: CancellationToken) {
    let mut changes = status.watch();
    let source = status.reading.clone();
    let watchdog = watchdog(stop.clone());
    tokio::pin!(watchdog);
    // Streaming may have begun before this task first ran.
    let mut ready_sent = status.has_streamed();
    if ready_sent {
        ready(&format!("streaming from {source}"));
    }
    let mut stopping_sent = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            // Ends only at `stop`.
            _ = &mut watchdog => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                let state = changes.borrow_and_update().clone();
                // READY=1 once, as soon as replication has streamed, even if the state moved
                // on before this task saw it.
                if !ready_sent && status.has_streamed() {
                    ready_sent = true;
                    ready(&format!("streaming from {source}"));
                    if state == SourceState::Streaming {
                        continue;
                    }
                }
                // STOPPING=1 once, likewise.
                if !stopping_sent && status.is_stopping() {
                    stopping_sent = true;
                    stopping();
                    if state == SourceState::Stopping {
                        continue;
                    }
                }
                match state {
                    SourceState::Streaming => self::status(&format!("streaming from {source}")),
                    SourceState::NotStreaming(why) => self::status(&why),
                    SourceState::Stopping => {}
                }
            }
        }
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}

/// A status line is one line of the notification: newlines (a server error's detail and
/// hint) become spaces.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(&one_line(status))]);
}

fn status(status: &str) {
    send(&[NotifyState::Status(&one_line(status))]);
}

fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// When the unit sets `WatchdogSec=`, pings at half that interval until `stop`. The pings come
/// from the single thread that runs the whole pipeline, so they stop when that thread is
/// blocked or spinning, and systemd restarts the service. (A pipeline merely waiting on
/// PostgreSQL or a sink is not stuck: readiness and the lag metrics report that.)
async fn watchdog(stop: CancellationToken) {
    let Some(timeout) = sd_notify::watchdog_enabled().filter(|t| !t.is_zero()) else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(timeout / 2);
    loop {
        tokio::select! {
            _ = tick.tick() => send(&[NotifyState::Watchdog]),
            _ = stop.cancelled() => return,
        }
    }
}

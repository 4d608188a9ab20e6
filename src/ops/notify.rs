//! systemd notifications (`Type=notify`): READY=1 once replication streams, STATUS= lines,
//! STOPPING=1 on shutdown, and WATCHDOG=1 pings while the runtime is responsive. Without
//! `NOTIFY_SOCKET` (not under systemd) every call does nothing.

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

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

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(&one_line(status))]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(&one_line(status))]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// When the unit sets `WatchdogSec=`, pings at half that interval until `stop`. The pings come
/// from the single thread that runs the whole pipeline, so they stop when that thread is
/// blocked or spinning, and systemd restarts the service. (A pipeline merely waiting on
/// PostgreSQL or a sink is not stuck: readiness and the lag metrics report that.)
pub async fn watchdog(stop: CancellationToken) {
    let Some(timeout) = sd_notify::watchdog_enabled().filter(|t| !t.is_zero()) else {
        return;
    };
    let mut tick = tokio::time::interval(timeout / 2);
    loop {
        tokio::select! {
            _ = tick.tick() => send(&[NotifyState::Watchdog]),
            _ = stop.cancelled() => return,
        }
    }
}

//! How a shutdown spends `ops.shutdown_timeout`, in one place. After the signal:
//!
//! 1. the pipeline hands over what it read and waits for the sinks to acknowledge it
//!    ([`ShutdownBudget::source_drain`], 60 %), then confirms the position and ends the
//!    replication stream (each step within [`ShutdownBudget::stream_end`]);
//! 2. sinks that still hold events or connections finish, and the relay closes its clients
//!    ([`ShutdownBudget::sinks`], 20 %, at least half a second); what is left is abandoned,
//!    unconfirmed, and PostgreSQL sends it again at the next start;
//! 3. past the whole budget, `main` exits at once.

use std::time::Duration;

/// The stream ends in two steps (the last status update, then CopyDone and the server's
/// answer), each at most this long.
const STREAM_END_MAX: Duration = Duration::from_secs(5);
/// The relay's close handshake with each client: sending the close frame, then hearing the
/// answer, each at most this long.
pub const CLOSE_HANDSHAKE_STEP: Duration = Duration::from_secs(1);
/// The longest a relay waits for its clients to close.
const RELAY_CLOSE_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownBudget {
    total: Duration,
}

impl ShutdownBudget {
    pub fn new(total: Duration) -> ShutdownBudget {
        ShutdownBudget { total }
    }

    /// How long the pipeline waits for the sinks to acknowledge what it read.
    pub fn source_drain(&self) -> Duration {
        self.total.mul_f64(0.6)
    }

    /// Each step of ending the replication stream.
    pub fn stream_end(&self) -> Duration {
        STREAM_END_MAX.min(self.source_drain() / 6)
    }

    /// How long sinks (and the relay's clients) get to finish once the pipeline has stopped.
    pub fn sinks(&self) -> Duration {
        self.total.mul_f64(0.2).max(Duration::from_millis(500))
    }

    /// How long a relay waits for its clients' close handshakes (each at most two
    /// [`CLOSE_HANDSHAKE_STEP`]s), within the sinks' phase.
    pub fn relay_close(&self) -> Duration {
        RELAY_CLOSE_MAX.min(self.sinks())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phases_fit_the_budget() {
        let b = ShutdownBudget::new(Duration::from_secs(30));
        assert_eq!(b.source_drain(), Duration::from_secs(18));
        assert_eq!(b.stream_end(), Duration::from_secs(3));
        assert_eq!(b.sinks(), Duration::from_secs(6));
        // Normally the stream ends at once; even when both of its steps time out, the
        // phases stay within the budget.
        assert!(b.source_drain() + 2 * b.stream_end() + b.sinks() <= Duration::from_secs(30));
        let short = ShutdownBudget::new(Duration::from_secs(1));
        assert_eq!(short.sinks(), Duration::from_millis(500));
    }
}

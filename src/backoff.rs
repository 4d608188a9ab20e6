//! Reconnection delays: exponential, capped, with jitter, reset after progress. Shared by the
//! replication source and every sink.

use std::time::Duration;

/// The first delay after a failure.
pub const FIRST: Duration = Duration::from_millis(250);

/// Delays that double from [`FIRST`] up to a cap, each shortened by up to a quarter at random
/// so that many processes that failed together do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: FIRST.min(max),
            max,
        }
    }

    /// The delay before the next attempt; the one after it is twice as long (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay.mul_f64(1.0 - jitter() / 4.0)
    }

    /// Progress was made: the next failure waits [`FIRST`] again.
    pub fn reset(&mut self) {
        self.next = FIRST.min(self.max);
    }
}

/// A number in [0, 1), different at each call: enough randomness to spread retries.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1));
        let within = |d: Duration, nominal: u64| {
            let nominal = Duration::from_millis(nominal);
            assert!(
                d <= nominal && d >= nominal.mul_f64(0.75),
                "{d:?} not within 3/4 of {nominal:?}"
            );
        };
        within(b.next_delay(), 250);
        within(b.next_delay(), 500);
        within(b.next_delay(), 1000);
        within(b.next_delay(), 1000);
        b.reset();
        within(b.next_delay(), 250);
        let mut tiny = Backoff::new(Duration::from_millis(100));
        within(tiny.next_delay(), 100);
    }
}

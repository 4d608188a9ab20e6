//! What the sink benchmarks' ceilings share: the events pglive makes for one-row inserts into
//! `public.bench`, built before timing so that a ceiling measures its server and client, not
//! JSON.

use pglive::event::{EventId, EventKind, EventSource, Id, LiveEvent};
use pglive::lsn::Lsn;

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// `n` `created` events on `resources/bench`, ids 1 to `n`, one transaction each.
pub fn events(n: u64) -> Vec<LiveEvent> {
    let source = EventSource {
        channel: "resources/bench".into(),
        schema: "public".into(),
        table: "bench".into(),
        data_provider_name: None,
    };
    (1..=n)
        .map(|i| {
            let id = EventId {
                commit_lsn: Lsn(0x5000_0000 + i * 200),
                ordinal: 0,
            };
            let ids = [Id::Int(i as i64)];
            LiveEvent::new(
                &source,
                EventKind::Created,
                Some(&ids),
                id,
                1000 + i as u32,
                0,
            )
        })
        .collect()
}

//! The table at the end of a run, and its verdict.

use std::collections::HashSet;
use std::process::ExitStatus;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::faults::{Fault, FloodTally};
use crate::observe::{ClientView, EventKey, Record, WsTally};
use crate::workload::{Change, LedgerInner};
use crate::{Args, CycleResult};

pub struct Facts<'a> {
    pub args: &'a Args,
    pub duration: Duration,
    pub results: &'a [CycleResult],
    pub ledger: LedgerInner,
    pub expected: &'a HashSet<Change>,
    pub file: &'a Record,
    pub amqp: &'a Record,
    pub tally: &'a WsTally,
    pub views: &'a [Arc<Mutex<ClientView>>],
    pub flood: &'a FloodTally,
    pub peak_rss_kib: u64,
    pub final_lsn: u64,
    pub confirmed: Option<u64>,
    pub confirmed_in: Duration,
    pub caught_up_in: Option<Duration>,
    pub exit: Result<ExitStatus, String>,
    pub pglive_starts: u32,
    pub load: (String, String),
}

fn lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xFFFF_FFFF)
}

/// Thousands separated by commas.
fn n(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Events of the file sink in the client's range that it did not receive (channel by
/// channel, between the first and the last it received).
fn ws_missed(views: &[Arc<Mutex<ClientView>>], by_channel: &[Vec<EventKey>]) -> (u64, u64) {
    let mut missed = 0;
    let mut clients = 0;
    for v in views {
        let v = v.lock().unwrap();
        let mut mine = 0;
        for (ch, keys) in by_channel.iter().enumerate() {
            if let (Some(first), Some(last)) = (v.first[ch], v.last[ch]) {
                let from = keys.partition_point(|k| *k < first);
                let to = keys.partition_point(|k| *k <= last);
                mine += ((to - from) as u64).saturating_sub(v.distinct[ch]);
            }
        }
        missed += mine;
        clients += (mine > 0) as u64;
    }
    (missed, clients)
}

/// Prints the table; true when the run passes.
pub fn print(f: &Facts) -> bool {
    let mut problems: Vec<String> = Vec::new();
    let a = f.args;
    println!();
    println!(
        "chaos run ({} mode): seed {}, {} cycles in {:.0} s, {} WebSocket clients",
        if a.full { "full" } else { "short" },
        a.seed,
        f.results.len(),
        f.duration.as_secs_f64(),
        a.clients
    );
    println!();
    println!(
        "{:<34} {:>8} {:>14} {:>14} {:>12}",
        "fault", "injected", "max recovery", "max duration", "peak RSS"
    );
    for kind in Fault::ALL {
        let of: Vec<&CycleResult> = f.results.iter().filter(|r| r.cycle.fault == kind).collect();
        let max = |g: fn(&CycleResult) -> Duration| {
            of.iter()
                .map(|r| g(r))
                .max()
                .map_or("-".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
        };
        let rss = of
            .iter()
            .map(|r| r.rss_kib)
            .max()
            .map_or("-".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        println!(
            "{:<34} {:>8} {:>14} {:>14} {:>12}",
            kind.name(),
            of.len(),
            max(|r| r.recovery),
            max(|r| r.lasted),
            rss
        );
    }
    println!(
        "(recovery: from the end of the fault until a change committed after it has reached the \
         file sink and the AMQP consumer and /readyz answers 200)"
    );

    let l = &f.ledger;
    println!();
    println!(
        "changes committed: {} ({} row changes in {} transactions, {} of them of 10,000 rows; \
         COMMITs in doubt: {} committed, {} aborted; attempts aborted before COMMIT and retried: {})",
        n(f.expected.len() as u64),
        n(l.changes.len() as u64),
        n(l.transactions),
        l.big_transactions,
        l.in_doubt_committed,
        l.in_doubt_aborted,
        l.aborted
    );
    println!();
    println!("{:<44} {:>12} {:>12}", "", "file", "amqp");
    let row = |label: &str, file: String, amqp: String| {
        println!("{label:<44} {file:>12} {amqp:>12}");
    };
    let sinks = [("file", f.file), ("amqp", f.amqp)];
    let delivered: Vec<u64> = sinks
        .iter()
        .map(|(_, r)| f.expected.iter().filter(|c| r.changes.contains(c)).count() as u64)
        .collect();
    let lost: Vec<u64> = delivered
        .iter()
        .map(|d| f.expected.len() as u64 - d)
        .collect();
    let unexpected: Vec<u64> = sinks
        .iter()
        .map(|(_, r)| r.changes.iter().filter(|c| !f.expected.contains(c)).count() as u64)
        .collect();
    row("changes delivered", n(delivered[0]), n(delivered[1]));
    row("LOST (must be 0)", n(lost[0]), n(lost[1]));
    row(
        "changes never committed (must be 0)",
        n(unexpected[0]),
        n(unexpected[1]),
    );
    row(
        "events received (lines / messages)",
        n(f.file.received),
        n(f.amqp.received),
    );
    row(
        "distinct events (meta.id)",
        n(f.file.events.len() as u64),
        n(f.amqp.events.len() as u64),
    );
    row(
        "duplicates (repeated meta.id)",
        n(f.file.duplicates),
        n(f.amqp.duplicates),
    );
    row(
        "  …with other content (must be 0)",
        n(f.file.conflicts),
        n(f.amqp.conflicts),
    );
    row(
        "  …redelivered by the broker",
        "-".into(),
        n(f.amqp.redelivered),
    );
    row(
        "malformed (must be 0)",
        n(f.file.malformed),
        n(f.amqp.malformed),
    );
    row(
        "first deliveries out of commit order",
        n(f.file.out_of_order),
        n(f.amqp.out_of_order),
    );
    for (i, (name, r)) in sinks.iter().enumerate() {
        if lost[i] > 0 {
            let example = f.expected.iter().find(|c| !r.changes.contains(c));
            problems.push(format!(
                "{name}: {} committed changes never delivered, e.g. {example:?}",
                lost[i]
            ));
        }
        if unexpected[i] > 0 {
            problems.push(format!(
                "{name}: {} changes delivered that no committed transaction made",
                unexpected[i]
            ));
        }
        if r.conflicts > 0 || r.malformed > 0 {
            problems.push(format!(
                "{name}: {} malformed deliveries, {} repeated ids with other content; e.g. {}",
                r.malformed,
                r.conflicts,
                r.malformed_example.as_deref().unwrap_or("")
            ));
        }
    }
    // The same event must be the same in every sink.
    let mut across = 0u64;
    for (k, (h, _)) in &f.amqp.events {
        if f.file.events.get(k).is_some_and(|(fh, _)| fh != h) {
            across += 1;
        }
    }
    let ws_content = f.tally.content.lock().unwrap();
    let mut ws_other = 0u64;
    let mut ws_unknown = 0u64;
    for (k, h) in ws_content.iter() {
        match f.file.events.get(k) {
            Some((fh, _)) if fh != h => ws_other += 1,
            Some(_) => {}
            None => ws_unknown += 1,
        }
    }
    if across > 0 || ws_other > 0 {
        problems.push(format!(
            "{across} events differ between the file and AMQP sinks, {ws_other} between the \
             file sink and the relay"
        ));
    }
    if ws_unknown > 0 {
        problems.push(format!(
            "the relay sent {ws_unknown} events the file sink never wrote"
        ));
    }
    println!(
        "same meta.id, other content across sinks (must be 0): {}",
        across + ws_other
    );

    let t = f.tally;
    let (missed, clients_missing) = ws_missed(f.views, &f.file.keys_by_channel());
    println!();
    println!(
        "WebSocket clients ({}, best effort): events {}, duplicates {}, resyncs {} ({} after a \
         queue overflow, the others on resuming), events missed {} (by {} clients; not counted \
         as lost), errors {}, connections {} (refused or failed {})",
        a.clients,
        n(t.events.load(Ordering::Relaxed)),
        n(t.duplicates.load(Ordering::Relaxed)),
        n(t.resyncs.load(Ordering::Relaxed)),
        n(t.overflow_resyncs.load(Ordering::Relaxed)),
        n(missed),
        clients_missing,
        t.errors.load(Ordering::Relaxed),
        n(t.connects.load(Ordering::Relaxed)),
        n(t.refused.load(Ordering::Relaxed)),
    );
    if t.conflicts.load(Ordering::Relaxed) > 0 || t.malformed.load(Ordering::Relaxed) > 0 {
        problems.push(format!(
            "the relay's clients got {} malformed frames and {} repeated ids with other content",
            t.malformed.load(Ordering::Relaxed),
            t.conflicts.load(Ordering::Relaxed)
        ));
    }
    let fl = f.flood;
    println!(
        "relay floods: {} hostile WebSocket connections accepted, {} refused as over \
         max_connections, {} refused for auth, {} failed; {} raw TCP connections; {} frames sent, \
         {} error replies, {} closed by the server",
        n(fl.upgraded.load(Ordering::Relaxed)),
        n(fl.refused_full.load(Ordering::Relaxed)),
        n(fl.refused_auth.load(Ordering::Relaxed)),
        n(fl.failed.load(Ordering::Relaxed)),
        n(fl.raw.load(Ordering::Relaxed)),
        n(fl.frames_sent.load(Ordering::Relaxed)),
        n(fl.errors.load(Ordering::Relaxed)),
        n(fl.closed_by_server.load(Ordering::Relaxed)),
    );
    if fl.bad_token_accepted.load(Ordering::Relaxed) > 0 {
        problems.push(format!(
            "the relay accepted {} connections with a missing, expired or forged token",
            fl.bad_token_accepted.load(Ordering::Relaxed)
        ));
    }

    println!();
    println!(
        "pglive: peak RSS {:.1} MiB (VmHWM over {} starts)",
        f.peak_rss_kib as f64 / 1024.0,
        f.pglive_starts
    );
    let confirmed_ok = f.confirmed.is_some_and(|c| c >= f.final_lsn);
    println!(
        "slot confirmed_flush_lsn {} ≥ final WAL position {}: {}",
        f.confirmed.map_or("none".into(), lsn),
        lsn(f.final_lsn),
        if confirmed_ok {
            format!(
                "yes, {:.1} s after the last write",
                f.confirmed_in.as_secs_f64()
            )
        } else {
            "NO (not within 180 s of the last write)".into()
        }
    );
    if !confirmed_ok {
        problems.push("the slot did not confirm the final WAL position within 180 s".into());
    }
    match f.caught_up_in {
        Some(d) => println!(
            "caught up: every committed change seen in both sinks {:.1} s after the last write",
            d.as_secs_f64()
        ),
        None => println!("caught up: NO (changes still missing 30 s after the slot confirmed)"),
    }
    match &f.exit {
        Ok(s) if s.success() => println!("pglive stopped on SIGTERM: exit 0"),
        Ok(s) => {
            println!("pglive stopped on SIGTERM: {s}");
            problems.push(format!("pglive exited with {s} on SIGTERM"));
        }
        Err(e) => problems.push(e.clone()),
    }
    println!(
        "load average at start / end: {} / {}",
        f.load
            .0
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        f.load
            .1
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!();
    if problems.is_empty() {
        println!(
            "PASS: nothing lost (SEED={} reproduces this fault sequence and workload)",
            a.seed
        );
        true
    } else {
        for p in &problems {
            println!("FAIL: {p}");
        }
        println!(
            "(SEED={} reproduces this fault sequence and workload)",
            a.seed
        );
        false
    }
}

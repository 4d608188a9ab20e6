//! The writers and the ledger of what they committed.
//!
//! Each writer owns a key range in every mapped table, so it knows exactly which of its rows
//! exist. A transaction first inserts a marker row (`chaos_commits`: its own id and the
//! transaction's xid; the table is not mapped, so it makes no event), then its inserts,
//! updates and deletes, each with `RETURNING` the keys it changed. Only a COMMIT whose result
//! never arrived is in doubt (an error before COMMIT means it was never sent): the writer
//! reconnects and looks for its marker — there iff the transaction committed. The marker
//! rather than `txid_status`: after a crash an xid that never reached the WAL can be handed
//! out again, to another transaction. An aborted transaction is retried with the same plan,
//! so the sequence of committed transactions follows from the seed alone. Both outcomes of a
//! COMMIT in doubt are made to happen at every PostgreSQL crash (`Linger`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use crate::rng::Rng;

type Result<T> = std::result::Result<T, String>;

/// How a table's keys are typed; the writers' keys are bigints turned into these.
#[derive(Clone, Copy)]
pub enum KeyKind {
    Int8,
    Int4,
    /// `'k' || n`
    Text,
}

pub struct TableDef {
    pub name: &'static str,
    pub channel: &'static str,
    pub key: KeyKind,
}

/// The mapped tables (scripts/chaos.sh maps the same ones in pglive's configuration).
pub const TABLES: [TableDef; 4] = [
    TableDef {
        name: "chaos_a",
        channel: "resources/chaos_a",
        key: KeyKind::Int8,
    },
    TableDef {
        name: "chaos_b",
        channel: "resources/chaos_b",
        key: KeyKind::Int8,
    },
    TableDef {
        name: "chaos_c",
        channel: "resources/chaos_c",
        key: KeyKind::Text,
    },
    TableDef {
        name: "chaos_d",
        channel: "resources/things",
        key: KeyKind::Int4,
    },
];

/// Keys of writer `w` are `w * KEY_SPAN + n` (they fit an int4 for writers up to 20).
const KEY_SPAN: i64 = 100_000_000;
/// Marker ids of writer `w` are `w * MARKER_SPAN + attempt`.
const MARKER_SPAN: i64 = 1_000_000_000_000;

impl TableDef {
    /// SQL turning the bigint `x` into this table's key.
    fn key_sql(&self, x: &str) -> String {
        match self.key {
            KeyKind::Int8 => x.to_owned(),
            KeyKind::Int4 => format!("{x}::int4"),
            KeyKind::Text => format!("'k' || {x}"),
        }
    }

    /// A key as `RETURNING id::text` shows it, back to the writer's bigint.
    fn parse_returned(&self, s: &str) -> Option<i64> {
        match self.key {
            KeyKind::Text => s.strip_prefix('k')?.parse().ok(),
            _ => s.parse().ok(),
        }
    }

    /// A key as an event's `payload.ids` carries it, back to the writer's bigint.
    pub fn parse_event_id(&self, v: &serde_json::Value) -> Option<i64> {
        match self.key {
            KeyKind::Text => v.as_str()?.strip_prefix('k')?.parse().ok(),
            _ => v.as_i64(),
        }
    }
}

pub fn table_index(name: &str) -> Option<u8> {
    TABLES.iter().position(|t| t.name == name).map(|i| i as u8)
}

pub async fn create_tables(url: &str) -> Result<()> {
    let client = connect(url).await?;
    let mut sql = String::from(
        "CREATE TABLE chaos_commits (id bigint PRIMARY KEY, xid bigint NOT NULL, \
           linger boolean NOT NULL DEFAULT false);
         CREATE FUNCTION chaos_linger() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN PERFORM pg_sleep(3600); RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER chaos_linger AFTER INSERT ON chaos_commits \
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.linger) \
           EXECUTE FUNCTION chaos_linger();",
    );
    for t in &TABLES {
        let key = match t.key {
            KeyKind::Int8 => "bigint",
            KeyKind::Int4 => "integer",
            KeyKind::Text => "text",
        };
        sql += &format!(
            "CREATE TABLE {} (id {key} PRIMARY KEY, v bigint NOT NULL, note text);",
            t.name
        );
    }
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| e.to_string())?;
    // A standby that never comes: a transaction with synchronous_commit = on waits for it
    // after its commit record is on disk (every other session commits with `local` or `off`).
    client
        .batch_execute("ALTER SYSTEM SET synchronous_standby_names = 'chaos_nobody'")
        .await
        .map_err(|e| e.to_string())?;
    client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .map_err(|e| e.to_string())
}

pub async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    // The throwaway cluster runs with synchronous_commit = off, where an acknowledged commit
    // can vanish in a crash; here a COMMIT that returned is on disk, as in production (and
    // waits for no standby).
    client
        .batch_execute("SET synchronous_commit = local")
        .await
        .map_err(|e| e.to_string())?;
    Ok(client)
}

/// A COMMIT made to hang until PostgreSQL is killed, so that its result never arrives.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Linger {
    /// In a deferred trigger, before the commit record: the crash aborts it.
    BeforeCommitRecord,
    /// Waiting for a synchronous standby, after the commit record is on disk: it committed.
    AfterCommitRecord,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Op {
    Created,
    Updated,
    Deleted,
}

impl Op {
    pub fn from_type(t: &str) -> Option<Op> {
        match t {
            "created" => Some(Op::Created),
            "updated" => Some(Op::Updated),
            "deleted" => Some(Op::Deleted),
            _ => None,
        }
    }
}

/// One row change of one committed transaction: what an event must show, as
/// (`meta.xid`, `meta.table`, `type`, an element of `payload.ids`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Change {
    pub xid: u32,
    pub table: u8,
    pub op: Op,
    pub key: i64,
}

/// Everything the writers committed.
#[derive(Default)]
pub struct Ledger {
    inner: Mutex<LedgerInner>,
}

#[derive(Default, Clone)]
pub struct LedgerInner {
    pub changes: Vec<Change>,
    pub transactions: u64,
    pub big_transactions: u64,
    /// COMMITs whose result was lost, found committed / aborted afterwards.
    pub in_doubt_committed: u64,
    pub in_doubt_aborted: u64,
    /// Attempts that failed before COMMIT (retried).
    pub aborted: u64,
}

impl Ledger {
    pub fn snapshot(&self) -> LedgerInner {
        self.inner.lock().unwrap().clone()
    }

    fn record(&self, changes: Vec<Change>, big: bool, in_doubt: bool) {
        let mut l = self.inner.lock().unwrap();
        l.changes.extend(changes);
        l.transactions += 1;
        l.big_transactions += big as u64;
        l.in_doubt_committed += in_doubt as u64;
    }

    fn aborted(&self, in_doubt: bool) {
        let mut l = self.inner.lock().unwrap();
        if in_doubt {
            l.in_doubt_aborted += 1;
        } else {
            l.aborted += 1;
        }
    }
}

/// One statement of a planned transaction.
pub struct Stmt {
    pub table: usize,
    pub op: Op,
    pub keys: Vec<i64>,
}

pub struct Plan {
    pub stmts: Vec<Stmt>,
    pub big: bool,
}

/// Why an attempt failed.
enum Failed {
    /// Before COMMIT was sent: the transaction did not commit.
    Aborted(String),
    /// COMMIT was sent and no answer came.
    InDoubt(String),
    /// The database did not do what the writer knows it must: the run is void.
    Fatal(String),
}

/// A writer: a connection, its own key range and marker ids, and the ledger.
pub struct Writer {
    pub id: i64,
    url: String,
    client: Option<Client>,
    attempt: i64,
    ledger: Arc<Ledger>,
    /// Stop retrying (a transaction in doubt is still resolved).
    stop: CancellationToken,
    /// Set while a big transaction is being written (faults may aim at it).
    pub in_big: Arc<AtomicBool>,
    /// How the next attempt's COMMIT hangs, if it must.
    pub linger: Option<Linger>,
}

impl Writer {
    pub fn new(id: i64, url: &str, ledger: Arc<Ledger>, stop: CancellationToken) -> Writer {
        Writer {
            id,
            url: url.to_owned(),
            client: None,
            attempt: 0,
            ledger,
            stop,
            in_big: Arc::default(),
            linger: None,
        }
    }

    pub fn key(&self, n: i64) -> i64 {
        self.id * KEY_SPAN + n
    }

    /// Makes sure of a connection, reconnecting with a short backoff while the database is
    /// away. False once `stop` is set, unless `always`.
    async fn connected(&mut self, always: bool) -> bool {
        let mut backoff = Duration::from_millis(50);
        while self.client.as_ref().is_none_or(|c| c.is_closed()) {
            if !always && self.stop.is_cancelled() {
                return false;
            }
            match connect(&self.url).await {
                Ok(c) => self.client = Some(c),
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        true
    }

    /// Commits `plan`, retrying until it commits; returns its changes, or None when stopped
    /// first.
    pub async fn commit(&mut self, plan: &Plan) -> Result<Option<Vec<Change>>> {
        loop {
            self.attempt += 1;
            let marker = self.id * MARKER_SPAN + self.attempt;
            if !self.connected(false).await {
                return Ok(None);
            }
            let client = self.client.as_ref().expect("connected");
            self.in_big.store(plan.big, Ordering::Release);
            let result = attempt(client, marker, plan, self.linger.take()).await;
            self.in_big.store(false, Ordering::Release);
            match result {
                Ok(changes) => {
                    self.ledger.record(changes.clone(), plan.big, false);
                    return Ok(Some(changes));
                }
                Err(Failed::Fatal(why)) => return Err(why),
                Err(Failed::Aborted(why)) => {
                    crate::note(&format!(
                        "writer {}: aborted before COMMIT ({why}); retrying",
                        self.id
                    ));
                    self.client = None;
                    self.ledger.aborted(false);
                }
                Err(Failed::InDoubt(why)) => {
                    crate::note(&format!("writer {}: COMMIT in doubt ({why})", self.id));
                    self.client = None;
                    match self.resolve(marker).await? {
                        Some(xid) => {
                            // It committed: what it changed is what the plan says (the
                            // statements had returned exactly those keys before COMMIT).
                            let changes = plan_changes(plan, xid);
                            self.ledger.record(changes.clone(), plan.big, true);
                            return Ok(Some(changes));
                        }
                        None => self.ledger.aborted(true),
                    }
                }
            }
        }
    }

    /// The xid of the transaction that inserted `marker`, if it committed.
    async fn resolve(&mut self, marker: i64) -> Result<Option<u32>> {
        loop {
            self.connected(true).await;
            let client = self.client.as_ref().expect("connected");
            match client
                .query_opt("SELECT xid FROM chaos_commits WHERE id = $1", &[&marker])
                .await
            {
                Ok(row) => return Ok(row.map(|r| r.get::<_, i64>(0) as u32)),
                Err(_) => self.client = None,
            }
        }
    }
}

fn plan_changes(plan: &Plan, xid: u32) -> Vec<Change> {
    plan.stmts
        .iter()
        .flat_map(|s| {
            s.keys.iter().map(move |&key| Change {
                xid,
                table: s.table as u8,
                op: s.op,
                key,
            })
        })
        .collect()
}

async fn attempt(
    client: &Client,
    marker: i64,
    plan: &Plan,
    linger: Option<Linger>,
) -> std::result::Result<Vec<Change>, Failed> {
    let aborted = |e: tokio_postgres::Error| Failed::Aborted(e.to_string());
    client.batch_execute("BEGIN").await.map_err(aborted)?;
    if linger == Some(Linger::AfterCommitRecord) {
        client
            .batch_execute("SET LOCAL synchronous_commit = on")
            .await
            .map_err(aborted)?;
    }
    let row = client
        .query_one(
            "INSERT INTO chaos_commits (id, xid, linger) VALUES ($1, txid_current(), $2) \
             RETURNING xid",
            &[&marker, &(linger == Some(Linger::BeforeCommitRecord))],
        )
        .await
        .map_err(aborted)?;
    // meta.xid is the 32-bit xid; txid_current() adds the epoch above it.
    let xid = row.get::<_, i64>(0) as u32;
    let mut changes = Vec::new();
    for s in &plan.stmts {
        let t = &TABLES[s.table];
        let keys = t.key_sql("x");
        let sql = match s.op {
            Op::Created => format!(
                "INSERT INTO {} (id, v, note) SELECT {keys}, 0, 'n' || x FROM unnest($1::int8[]) x RETURNING id::text",
                t.name
            ),
            Op::Updated => format!(
                "UPDATE {} SET v = v + 1, note = note || '+' WHERE id = ANY(ARRAY(SELECT {keys} FROM unnest($1::int8[]) x)) RETURNING id::text",
                t.name
            ),
            Op::Deleted => format!(
                "DELETE FROM {} WHERE id = ANY(ARRAY(SELECT {keys} FROM unnest($1::int8[]) x)) RETURNING id::text",
                t.name
            ),
        };
        let rows = client.query(&sql, &[&s.keys]).await.map_err(aborted)?;
        let mut got: Vec<i64> = rows
            .iter()
            .filter_map(|r| t.parse_returned(r.get::<_, &str>(0)))
            .collect();
        let mut want = s.keys.clone();
        got.sort_unstable();
        want.sort_unstable();
        if got != want {
            return Err(Failed::Fatal(format!(
                "{} {:?} changed {} rows where {} were expected: a committed row is missing or \
                 one that was deleted is back (after a crash the database lost a commit?)",
                t.name,
                s.op,
                got.len(),
                want.len()
            )));
        }
        changes.extend(s.keys.iter().map(|&key| Change {
            xid,
            table: s.table as u8,
            op: s.op,
            key,
        }));
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(|e| Failed::InDoubt(e.to_string()))?;
    Ok(changes)
}

/// A writer's rows per table, as it knows them.
#[derive(Default)]
pub struct Model {
    rows: [Vec<i64>; TABLES.len()],
    next: i64,
}

impl Model {
    fn new_key(&mut self, w: &Writer) -> i64 {
        self.next += 1;
        w.key(self.next)
    }

    /// Applies a committed plan.
    fn apply(&mut self, plan: &Plan) {
        for s in &plan.stmts {
            let rows = &mut self.rows[s.table];
            match s.op {
                Op::Created => rows.extend(&s.keys),
                Op::Updated => {}
                Op::Deleted => {
                    let gone: HashSet<i64> = s.keys.iter().copied().collect();
                    rows.retain(|k| !gone.contains(k));
                }
            }
        }
    }

    /// `n` distinct rows of `table`, chosen at random.
    fn pick(&self, rng: &mut Rng, table: usize, n: usize) -> Vec<i64> {
        let rows = &self.rows[table];
        let mut picked = HashSet::new();
        let n = n.min(rows.len());
        while picked.len() < n {
            picked.insert(rows[rng.below(rows.len() as u64) as usize]);
        }
        picked.into_iter().collect()
    }
}

/// A small transaction: on one or two tables, some inserts, updates and deletes.
fn small_plan(rng: &mut Rng, model: &mut Model, w: &Writer) -> Plan {
    let mut stmts = Vec::new();
    let first = rng.below(TABLES.len() as u64) as usize;
    let tables = if rng.percent(30) {
        vec![first, (first + 1 + rng.below(3) as usize) % TABLES.len()]
    } else {
        vec![first]
    };
    for table in tables {
        let size = model.rows[table].len();
        // Inserts keep the tables from emptying; deletes keep them small.
        let inserts = if size < 50 || rng.percent(60) {
            rng.range(1, 3)
        } else {
            0
        };
        let (updates, deletes) = if size == 0 {
            (0, 0)
        } else {
            let deletes = if size > 2000 {
                rng.range(2, 4)
            } else {
                rng.below(3)
            };
            (rng.below(4), deletes)
        };
        let touched = model.pick(rng, table, (updates + deletes) as usize);
        let (upd, del) = touched.split_at((updates as usize).min(touched.len()));
        if inserts > 0 {
            let keys = (0..inserts).map(|_| model.new_key(w)).collect();
            stmts.push(Stmt {
                table,
                op: Op::Created,
                keys,
            });
        }
        if !upd.is_empty() {
            stmts.push(Stmt {
                table,
                op: Op::Updated,
                keys: upd.to_vec(),
            });
        }
        if !del.is_empty() {
            stmts.push(Stmt {
                table,
                op: Op::Deleted,
                keys: del.to_vec(),
            });
        }
    }
    if stmts.is_empty() {
        let keys = vec![model.new_key(w)];
        stmts.push(Stmt {
            table: first,
            op: Op::Created,
            keys,
        });
    }
    rng.shuffle(&mut stmts);
    // An update or delete must come after the insert of the same table only if it touches
    // new rows, which it never does; but a delete before an update of the same keys would
    // change nothing, so deletes go last.
    stmts.sort_by_key(|s| s.op == Op::Deleted);
    Plan { stmts, big: false }
}

pub const BIG: usize = 10_000;

/// A 10,000-row transaction: inserts, updates or deletes of one table's rows, or half
/// inserts into one table and half updates of another.
fn big_plan(rng: &mut Rng, model: &mut Model, w: &Writer) -> Plan {
    let table = rng.below(TABLES.len() as u64) as usize;
    let size = model.rows[table].len();
    let stmts = match rng.below(3) {
        _ if size < BIG => vec![Stmt {
            table,
            op: Op::Created,
            keys: (0..BIG).map(|_| model.new_key(w)).collect(),
        }],
        0 => vec![Stmt {
            table,
            op: Op::Updated,
            keys: model.pick(rng, table, BIG),
        }],
        1 => vec![Stmt {
            table,
            op: Op::Deleted,
            keys: model.pick(rng, table, BIG),
        }],
        _ => {
            let other = (table + 1) % TABLES.len();
            vec![
                Stmt {
                    table: other,
                    op: Op::Created,
                    keys: (0..BIG / 2).map(|_| model.new_key(w)).collect(),
                },
                Stmt {
                    table,
                    op: Op::Updated,
                    keys: model.pick(rng, table, BIG / 2),
                },
            ]
        }
    };
    Plan { stmts, big: true }
}

/// Small transactions, one after another, `pause` apart, until `writer.stop`.
pub async fn run_small(mut writer: Writer, mut rng: Rng, pause: (u64, u64)) -> Result<()> {
    let mut model = Model::default();
    while !writer.stop.is_cancelled() {
        let plan = small_plan(&mut rng, &mut model, &writer);
        if writer.commit(&plan).await?.is_none() {
            break;
        }
        model.apply(&plan);
        let wait = Duration::from_millis(rng.range(pause.0, pause.1));
        tokio::select! {
            _ = writer.stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    Ok(())
}

/// A 10,000-row transaction every `every` seconds (at random within the range).
pub async fn run_big(mut writer: Writer, mut rng: Rng, every: (u64, u64)) -> Result<()> {
    let mut model = Model::default();
    loop {
        let wait = Duration::from_millis(rng.range(every.0 * 1000, every.1 * 1000));
        tokio::select! {
            _ = writer.stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        let plan = big_plan(&mut rng, &mut model, &writer);
        if writer.commit(&plan).await?.is_none() {
            break;
        }
        model.apply(&plan);
    }
    Ok(())
}

/// A transaction whose COMMIT hangs (`linger`) until PostgreSQL is killed: a few inserts
/// into chaos_b by writer `writer` (its own keys), then resolved as any COMMIT in doubt.
pub async fn in_doubt(mut writer: Writer, linger: Linger) -> Result<()> {
    writer.linger = Some(linger);
    let plan = Plan {
        stmts: vec![Stmt {
            table: 1,
            op: Op::Created,
            keys: (1..=3).map(|n| writer.key(n)).collect(),
        }],
        big: false,
    };
    writer.commit(&plan).await?;
    Ok(())
}

/// The recovery probe: one insert into the first table, committed (retrying while the
/// database is away); returns the change its event must show.
pub async fn probe(writer: &mut Writer, n: i64) -> Result<Change> {
    let plan = Plan {
        stmts: vec![Stmt {
            table: 0,
            op: Op::Created,
            keys: vec![writer.key(n)],
        }],
        big: false,
    };
    let changes = writer.commit(&plan).await?.ok_or("stopped")?;
    Ok(changes[0])
}

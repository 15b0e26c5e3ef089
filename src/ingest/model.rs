//! The model test of exactly-once: random interleavings of messages arriving, batches closing,
//! commits that succeed, conflict, fail, lose their reply, take long or hang, rebalances
//! (also while a commit is in flight), transaction markers, transactions left open, then
//! committed or aborted, compaction, retention that deletes unread offsets (under
//! `on_data_loss` `fail` and `skip`), broker errors, and crashes followed by restarts, run
//! through the real loop on the in-memory fakes with a paused clock. After every step the
//! lake must hold, below each stored offset, each message of the log exactly once (as a row or
//! a dead letter) and nothing twice, apart from the ranges commits recorded as skipped, which
//! must lie below the log start; at the end, every message.
//!
//! `LAKEPIPE_DEV_MODEL_CASES` sets the case count of the long run (`cargo test --lib model_long --
//! --ignored`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};

use super::fakes::{Entry, Fault, FakeBroker, FakeSource, FakeTables, Fetch};
use super::tests::{config, invalid, pipeline, tp, valid};
use super::{IngestError, IngestSummary};
use crate::config::{Config, OnDataLoss};
use crate::lake::LakeError;
use crate::source::SourceError;

/// One offset of a generated log.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Valid(u8),
    Invalid,
    Tombstone(u8),
    Marker,
}

impl Kind {
    /// The entry; `markers`: whether the broker writes transaction markers. tansu 0.6 refuses
    /// transactions, so a broker whose fetches skip within a batch has none: there, a fetch
    /// that lands on markers alone would move the client's position past unread messages with
    /// no message to show the gap, which no real broker does.
    fn entry(self, markers: bool) -> Entry {
        match self {
            Kind::Marker if !markers => valid("m"),
            Kind::Valid(k) => valid(&format!("k{k}")),
            Kind::Invalid => invalid(),
            Kind::Tombstone(k) => Entry::Message { key: Some(format!("k{k}").into_bytes()), payload: None },
            Kind::Marker => Entry::Marker,
        }
    }
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        8 => (0u8..12).prop_map(Kind::Valid),
        1 => Just(Kind::Invalid),
        1 => (0u8..12).prop_map(Kind::Tombstone),
        1 => Just(Kind::Marker),
    ]
}

#[derive(Debug, Clone, Copy)]
enum FaultKind {
    Conflict,
    Retryable,
    Fatal,
    LostReply,
    Delay(u16),
    Hang,
}

impl FaultKind {
    fn fault(self) -> Fault {
        match self {
            FaultKind::Conflict => Fault::Conflict,
            FaultKind::Retryable => Fault::Fail { retryable: true },
            FaultKind::Fatal => Fault::Fail { retryable: false },
            FaultKind::LostReply => Fault::LostReply,
            FaultKind::Delay(ms) => Fault::Delay(Duration::from_millis(ms as u64)),
            FaultKind::Hang => Fault::Hang,
        }
    }
}

fn fault() -> impl Strategy<Value = FaultKind> {
    prop_oneof![
        2 => Just(FaultKind::Conflict),
        2 => Just(FaultKind::Retryable),
        1 => Just(FaultKind::Fatal),
        2 => Just(FaultKind::LostReply),
        3 => (1u16..3000).prop_map(FaultKind::Delay),
        1 => Just(FaultKind::Hang),
    ]
}

#[derive(Debug, Clone)]
enum Action {
    /// Messages arrive on a partition.
    Produce(usize, Vec<Kind>),
    /// The group moves partitions: bit `p` set gives partition `p` to the second member.
    Rebalance(u8),
    /// A member is killed and restarts (rejoining: a new generation).
    Crash(usize),
    /// The next commits meet these faults.
    Faults(Vec<FaultKind>),
    /// Messages arrive in a transaction that stays open (brokers with transactions only);
    /// later messages of the partition join it until it ends.
    Transaction(usize, Vec<Kind>),
    /// A partition's open transaction commits (`true`) or aborts.
    EndTransaction(usize, bool),
    /// The next poll of any member fails: the broker is gone, or a partition cannot advance.
    BrokerError(bool),
    /// Compaction removes up to this many messages from a point of a partition's log (Kafka:
    /// brokers with exact fetches only), given as a fraction of the log in 1/256ths.
    Compact(usize, u8, u8),
    /// Messages arrive on a partition, and at once retention moves its log start to this
    /// fraction of its log (in 1/256ths; brokers with exact fetches only), once the lake holds
    /// an offset for it: what was not read yet is deleted unread.
    Expire(usize, Vec<Kind>, u8),
}

fn action(partitions: usize) -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0..partitions, prop::collection::vec(kind(), 1..30)).prop_map(|(p, k)| Action::Produce(p, k)),
        2 => any::<u8>().prop_map(Action::Rebalance),
        2 => (0usize..2).prop_map(Action::Crash),
        3 => prop::collection::vec(fault(), 1..4).prop_map(Action::Faults),
        1 => (0..partitions, prop::collection::vec(kind(), 1..20)).prop_map(|(p, k)| Action::Transaction(p, k)),
        1 => (0..partitions, any::<bool>()).prop_map(|(p, c)| Action::EndTransaction(p, c)),
        1 => (0..partitions, any::<u8>(), 1u8..20).prop_map(|(p, at, n)| Action::Compact(p, at, n)),
        1 => any::<bool>().prop_map(Action::BrokerError),
        2 => (0..partitions, prop::collection::vec(kind(), 0..30), any::<u8>()).prop_map(|(p, k, at)| Action::Expire(p, k, at)),
    ]
}

#[derive(Debug, Clone)]
struct Plan {
    /// How the broker answers a fetch from inside a batch, and whether the loop checks.
    fetch: (Fetch, bool),
    logs: Vec<Vec<Kind>>,
    members: usize,
    batch: usize,
    trigger_ms: u64,
    /// `on_data_loss = "skip"` (else `fail`).
    skip: bool,
    /// Each action after this many milliseconds.
    steps: Vec<(u16, Action)>,
}

fn plan() -> impl Strategy<Value = Plan> {
    let fetch = (prop_oneof![Just(Fetch::Exact), Just(Fetch::NextBatch), Just(Fetch::Nothing)], any::<bool>());
    (fetch, 1usize..=3, 1usize..=2, 1usize..=25, 20u64..=300, any::<bool>()).prop_flat_map(|(fetch, partitions, members, batch, trigger_ms, skip)| {
        (prop::collection::vec(prop::collection::vec(kind(), 0..40), partitions), prop::collection::vec((0u16..2500, action(partitions)), 0..10))
            .prop_map(move |(logs, steps)| Plan { fetch, logs, members, batch, trigger_ms, skip, steps })
    })
}

type Run<'a> = Pin<Box<dyn Future<Output = Result<IngestSummary, IngestError>> + 'a>>;

fn start<'a>(cfg: &'a Config, member: &FakeSource, tables: &FakeTables) -> Run<'a> {
    let mut p = pipeline(cfg, false, member, tables);
    Box::pin(async move { p.run().await })
}

/// Whether a run's error is one the plan injected (retries exhausted, a fatal failure);
/// anything else is a bug.
fn injected(e: &IngestError) -> bool {
    match e {
        IngestError::Lake(LakeError::Storage { reason, .. } | LakeError::Data { reason, .. }) => reason.starts_with("injected"),
        IngestError::Source(SourceError::Broker { reason, .. } | SourceError::Stuck { reason, .. }) => reason.starts_with("injected"),
        _ => false,
    }
}

struct World<'a> {
    cfg: &'a Config,
    broker: FakeBroker,
    tables: FakeTables,
    members: Vec<FakeSource>,
    runs: Vec<Run<'a>>,
    /// The partitions each member holds.
    held: Vec<Vec<usize>>,
    /// `on_data_loss = "skip"`.
    skip: bool,
}

impl<'a> World<'a> {
    /// Let the members run for `d`; a run that stops (an injected failure) restarts, as a
    /// supervisor would restart the process. Returns whether a member stopped, rightly, on
    /// offsets deleted before they were read (`on_data_loss = "fail"`): no restart can go on.
    async fn drive(&mut self, d: Duration) -> Result<bool, TestCaseError> {
        let until = tokio::time::Instant::now() + d;
        loop {
            let stopped = {
                let all = futures::future::select_all(self.runs.iter_mut().map(|r| r.as_mut()));
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => return Ok(false),
                    (result, i, _) = all => (i, result),
                }
            };
            let (i, result) = stopped;
            match result {
                Err(e) if injected(&e) => {}
                // Retention overtook a read again from below a gap: the next run lists again.
                Err(IngestError::Source(SourceError::OutOfRange { reason, .. })) if reason.contains("run again") => {}
                Err(IngestError::Source(SourceError::OutOfRange { reason, .. })) if !self.skip && reason.contains("were deleted") => {
                    self.check_loss(&reason)?;
                    LOSS_STOPS.fetch_add(1, Relaxed);
                    return Ok(true);
                }
                other => return Err(TestCaseError::fail(format!("member {i} stopped: {other:?}"))),
            }
            self.restart(i);
        }
    }

    /// A stop on deleted offsets names, for each partition, where reading stood and a log
    /// start above it that the broker really has.
    fn check_loss(&self, reason: &str) -> Result<(), TestCaseError> {
        let logs = self.broker.0.lock().unwrap_or_else(|p| p.into_inner());
        for named in reason.split("; ").filter(|n| n.contains("were deleted")) {
            let number = |after: &str| -> Option<i64> { named.split(after).nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok() };
            let (Some(p), Some(read_to), Some(lo)) = (number("user_events/"), number("(read to "), number("below the log start ")) else {
                return Err(TestCaseError::fail(format!("a stop on deleted offsets that does not name them: {reason}")));
            };
            let start = logs.log_start.get(&tp(p as i32)).copied().unwrap_or(0);
            if !(read_to < lo && lo <= start) {
                return Err(TestCaseError::fail(format!("partition {p}: a stop on offsets {read_to}..{lo} deleted, but the log starts at {start}: {reason}")));
            }
        }
        Ok(())
    }

    fn restart(&mut self, i: usize) {
        let parts: Vec<_> = self.held[i].iter().map(|p| tp(*p as i32)).collect();
        self.members[i].assign(&parts);
        self.runs[i] = start(self.cfg, &self.members[i], &self.tables);
    }

    fn rebalance(&mut self, mask: u8, partitions: usize) {
        let n = self.members.len();
        for held in self.held.iter_mut() {
            held.clear();
        }
        for p in 0..partitions {
            let to = if n > 1 && mask & (1 << p) != 0 { 1 } else { 0 };
            self.held[to].push(p);
        }
        for (i, m) in self.members.iter().enumerate() {
            m.assign(&self.held[i].iter().map(|p| tp(*p as i32)).collect::<Vec<_>>());
        }
    }

    /// Below each stored offset, every message exactly once, apart from the ranges commits
    /// recorded as skipped (only under `skip`, below the log start, in order); no row twice
    /// anywhere.
    fn check_prefix(&self) -> Result<(), TestCaseError> {
        let store = self.tables.0.lock().unwrap_or_else(|p| p.into_inner());
        for t in self.broker.partitions() {
            let log = self.broker.log(&t);
            let stored = store.offsets.get(&t).copied().unwrap_or(0);
            let skipped: Vec<(i64, i64)> = store.skipped.iter().filter(|(s, _, _)| *s == t).map(|(_, from, to)| (*from, *to)).collect();
            let log_start = self.broker.0.lock().unwrap_or_else(|p| p.into_inner()).log_start.get(&t).copied().unwrap_or(0);
            if !self.skip && !skipped.is_empty() {
                return Err(TestCaseError::fail(format!("{t:?}: ranges {skipped:?} skipped under on_data_loss = fail")));
            }
            let mut floor = 0;
            for (from, to) in &skipped {
                if from >= to || *from < floor || *to > log_start.min(stored) {
                    return Err(TestCaseError::fail(format!("{t:?}: skipped ranges {skipped:?} out of order, empty, or not below the log start {log_start} and the stored offset {stored}")));
                }
                floor = *to;
            }
            let lost = |o: &i64| skipped.iter().any(|(from, to)| (*from..*to).contains(o));
            let want: Vec<i64> = (0..stored).filter(|o| !lost(o) && matches!(log.get(*o as usize), Some(Entry::Message { .. }))).collect();
            // A message compaction removed may be in the lake (once), or not; so may one in a
            // skipped range (the range counts from the stored offset after an accepted gap).
            let removed = |o: &i64| lost(o) || matches!(log.get(*o as usize), Some(Entry::Removed));
            let rows: Vec<i64> = store.rows.get(&t.0).into_iter().flatten().filter(|r| r.partition == t.1).map(|r| r.offset).collect();
            if let Some(r) = rows.iter().find(|o| **o >= stored) {
                return Err(TestCaseError::fail(format!("{t:?}: row at {r} beyond the stored offset {stored}")));
            }
            let dead: Vec<i64> = store.dead.iter().filter(|(d, _)| *d == t).map(|(_, o)| *o).collect();
            let mut all: Vec<i64> = rows.iter().chain(dead.iter()).copied().collect();
            all.sort_unstable();
            if let Some(w) = all.windows(2).find(|w| w[0] == w[1]) {
                return Err(TestCaseError::fail(format!("{t:?}: offset {} is in the lake twice", w[0])));
            }
            let below: Vec<i64> = all.into_iter().filter(|o| *o < stored && !removed(o)).collect();
            if below != want {
                let missing: Vec<i64> = want.iter().filter(|o| !below.contains(o)).copied().collect();
                return Err(TestCaseError::fail(format!("{t:?}: stored offset {stored}, but offsets {missing:?} are not in the lake")));
            }
        }
        Ok(())
    }

    fn complete(&self) -> bool {
        let store = self.tables.0.lock().unwrap_or_else(|p| p.into_inner());
        self.broker.partitions().iter().all(|t| {
            let end = self.broker.log(t).len() as i64;
            store.offsets.get(t).copied().unwrap_or(0) >= end
        })
    }

    /// At the end: every message exactly once, apart from the skipped ranges, whose messages
    /// are there at most once ([`World::check_prefix`] with every offset stored).
    fn check_end(&self) -> Result<(), TestCaseError> {
        if !self.tables.0.lock().unwrap_or_else(|p| p.into_inner()).skipped.is_empty() {
            SKIP_CASES.fetch_add(1, Relaxed);
        }
        self.check_prefix()?;
        let store = self.tables.0.lock().unwrap_or_else(|p| p.into_inner());
        for t in self.broker.partitions() {
            let end = self.broker.log(&t).len() as i64;
            if store.offsets.get(&t).copied().unwrap_or(0) != end {
                return Err(TestCaseError::fail(format!("{t:?}: stored offset {:?}, log end {end}", store.offsets.get(&t))));
            }
        }
        Ok(())
    }
}

async fn run_plan(plan: &Plan) -> Result<(), TestCaseError> {
    let on_data_loss = if plan.skip { OnDataLoss::Skip } else { OnDataLoss::Fail };
    let cfg = Config { trigger_interval: format!("{}ms", plan.trigger_ms), on_data_loss, ..config(plan.batch) };
    let partitions = plan.logs.len();
    let broker = FakeBroker::new(&(0..partitions).map(|p| tp(p as i32)).collect::<Vec<_>>());
    broker.fetch(plan.fetch.0, plan.fetch.1);
    let markers = plan.fetch.0 == Fetch::Exact;
    for (p, log) in plan.logs.iter().enumerate() {
        for batch in log.chunks(7) {
            broker.produce(&tp(p as i32), batch.iter().map(|k| k.entry(markers)));
        }
    }
    let tables = FakeTables::default();
    let members: Vec<FakeSource> = (0..plan.members).map(|_| broker.member()).collect();
    let mut world = World { cfg: &cfg, broker: broker.clone(), tables: tables.clone(), runs: Vec::new(), held: vec![Vec::new(); plan.members], members, skip: plan.skip };
    world.rebalance(0b101, partitions);
    world.runs = world.members.iter().map(|m| start(&cfg, m, &tables)).collect();
    for (gap, action) in &plan.steps {
        if world.drive(Duration::from_millis(*gap as u64)).await? {
            return world.check_prefix();
        }
        match action {
            Action::Produce(p, kinds) if broker.in_transaction(&tp(*p as i32)) => {
                broker.produce_in_transaction(&tp(*p as i32), kinds.iter().map(|k| k.entry(markers)))
            }
            Action::Produce(p, kinds) => broker.produce(&tp(*p as i32), kinds.iter().map(|k| k.entry(markers))),
            // tansu 0.6 refuses transactions, and compacts nothing.
            Action::Transaction(p, kinds) if markers => broker.produce_in_transaction(&tp(*p as i32), kinds.iter().map(|k| k.entry(markers))),
            Action::Transaction(p, kinds) => broker.produce(&tp(*p as i32), kinds.iter().map(|k| k.entry(markers))),
            Action::EndTransaction(p, commit) => broker.finish_transaction(&tp(*p as i32), *commit),
            Action::Compact(p, at, n) if markers => {
                let len = broker.log(&tp(*p as i32)).len() as i64;
                let from = len * *at as i64 / 256;
                broker.compact(&tp(*p as i32), from..(from + *n as i64).min(len));
            }
            Action::Compact(..) => {}
            // Retention deletes from the log start; what it deletes unread is lost. Only once
            // the lake holds an offset: a partition with none is read from its log start.
            Action::Expire(p, kinds, at) if markers => {
                let t = tp(*p as i32);
                if broker.in_transaction(&t) {
                    broker.produce_in_transaction(&t, kinds.iter().map(|k| k.entry(markers)));
                } else {
                    broker.produce(&t, kinds.iter().map(|k| k.entry(markers)));
                }
                let stored = tables.0.lock().unwrap_or_else(|p| p.into_inner()).offsets.contains_key(&t);
                let len = broker.log(&t).len() as i64;
                let start = broker.0.lock().unwrap_or_else(|p| p.into_inner()).log_start.get(&t).copied().unwrap_or(0);
                if stored {
                    EXPIRES.fetch_add(1, Relaxed);
                    broker.expire(&t, start.max(len * *at as i64 / 256));
                }
            }
            Action::Expire(p, kinds, _) => broker.produce(&tp(*p as i32), kinds.iter().map(|k| k.entry(markers))),
            Action::BrokerError(stuck) => broker.fail_next_poll(if *stuck {
                SourceError::Stuck { brokers: "fake".into(), reason: "injected: a batch this client cannot read".into() }
            } else {
                SourceError::Broker { brokers: "fake".into(), reason: "injected: the broker went away".into() }
            }),
            Action::Rebalance(mask) => world.rebalance(*mask, partitions),
            Action::Crash(m) => {
                let m = m % plan.members;
                world.restart(m);
            }
            Action::Faults(f) => tables.inject(f.iter().map(|f| f.fault())),
        }
        world.check_prefix()?;
    }
    // Settle: no more faults, and every transaction ends; every member is restarted when
    // nothing moves for 20 s (a hung commit), as a supervisor with a liveness check would.
    tables.0.lock().unwrap_or_else(|p| p.into_inner()).faults.clear();
    for p in 0..partitions {
        broker.end_transaction(&tp(p as i32));
    }
    let mut last = tables.0.lock().unwrap_or_else(|p| p.into_inner()).commits;
    let mut quiet = Duration::ZERO;
    for _ in 0..300 {
        if world.complete() {
            break;
        }
        if world.drive(Duration::from_secs(1)).await? {
            return world.check_prefix();
        }
        world.check_prefix()?;
        let now = tables.0.lock().unwrap_or_else(|p| p.into_inner()).commits;
        quiet = if now == last { quiet + Duration::from_secs(1) } else { Duration::ZERO };
        last = now;
        if quiet >= Duration::from_secs(20) {
            quiet = Duration::ZERO;
            for m in 0..plan.members {
                world.restart(m);
            }
        }
    }
    if !world.complete() {
        return Err(TestCaseError::fail("the lake never reached the end of every log"));
    }
    world.check_end()
}

/// A case may take this long on the wall clock; past it the loop hangs without awaiting a
/// timer (the paused clock cannot move), and the test binary stops with the case's plan.
const CASE_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Run `cases` cases on every core (each thread its own runner, with its own random cases);
/// panics with the first failure, after every thread has finished.
fn check(cases: u32) {
    if std::env::var_os("LAKEPIPE_DEV_MODEL_TRACE").is_some() {
        let _ = tracing_subscriber::fmt().with_env_filter("lakepipe=debug").with_test_writer().try_init();
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4) as u32;
    let started = std::time::Instant::now();
    let failures: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..threads).map(|i| s.spawn(move || run_cases(cases / threads + u32::from(i < cases % threads)))).collect();
        runs.into_iter().filter_map(|r| r.join().unwrap_or_else(|_| Err("a model thread panicked".into())).err()).collect()
    });
    let (expires, stops, skips) = (EXPIRES.load(Relaxed), LOSS_STOPS.load(Relaxed), SKIP_CASES.load(Relaxed));
    eprintln!("model test: {cases} cases on {threads} threads in {:?}; retention applied {expires} times, {stops} stops on data loss (fail), {skips} cases with skipped ranges (skip)", started.elapsed());
    if let Some(e) = failures.first() {
        panic!("{e}");
    }
}

/// One runner's cases, watched: a case that overruns [`CASE_LIMIT`] aborts the test binary.
fn run_cases(cases: u32) -> Result<(), String> {
    use std::sync::{Arc, Mutex};
    // The plan is formatted only if its case overruns: formatting every one cost seconds.
    let current: Arc<Mutex<Option<(std::time::Instant, Plan)>>> = Arc::new(Mutex::new(None));
    let watched = Arc::downgrade(&current);
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let Some(current) = watched.upgrade() else { return };
        let guard = current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((since, plan)) = guard.as_ref().filter(|(since, _)| since.elapsed() > CASE_LIMIT) {
            eprintln!("model test: a case ran {:?} on the wall clock (the loop spins without awaiting a timer); plan:\n{plan:#?}", since.elapsed());
            std::process::abort();
        }
    });
    // Failing cases are kept in proptest-regressions/ingest/model.txt and run first next time.
    let persistence = proptest::test_runner::FileFailurePersistence::SourceParallel("proptest-regressions");
    let mut runner = TestRunner::new(RunnerConfig { cases, source_file: Some(file!()), failure_persistence: Some(Box::new(persistence)), ..RunnerConfig::default() });
    let result = runner.run(&plan(), |plan| {
        *current.lock().unwrap_or_else(|p| p.into_inner()) = Some((std::time::Instant::now(), plan.clone()));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().map_err(|e| TestCaseError::fail(e.to_string()))?;
        rt.block_on(run_plan(&plan))
    });
    result.map_err(|e| e.to_string())
}

#[test]
fn model_exactly_once() {
    check(5_000);
}

#[test]
#[ignore = "the long run: LAKEPIPE_DEV_MODEL_CASES cases (default 20,000)"]
fn model_long() {
    let cases = std::env::var("LAKEPIPE_DEV_MODEL_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(20_000);
    check(cases);
}

/// How often the cases reached the data-loss paths (printed with the case count): retention
/// applied, members stopped on it under `fail`, cases whose lake records skipped ranges.
static EXPIRES: AtomicU64 = AtomicU64::new(0);
static LOSS_STOPS: AtomicU64 = AtomicU64::new(0);
static SKIP_CASES: AtomicU64 = AtomicU64::new(0);

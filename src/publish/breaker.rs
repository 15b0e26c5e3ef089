//! A circuit breaker per broker: closed → open after consecutive failures → half-open after a
//! pause, where probes decide between closing again and reopening.
//!
//! The breaker is a plain state machine over an explicit clock (`now` is passed in), so the
//! router uses `Instant::now()` and the property tests drive time themselves.

use std::time::{Duration, Instant};

/// Breaker thresholds (config keys `breaker_failures`, `breaker_open_for`, `breaker_successes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker.
    pub failure_threshold: u32,
    /// How long an open breaker refuses calls before it lets probes through.
    pub open_for: Duration,
    /// Consecutive successful probes that close a half-open breaker.
    pub success_threshold: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig { failure_threshold: 5, open_for: Duration::from_secs(30), success_threshold: 3 }
    }
}

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls pass; `failures` consecutive failures so far.
    Closed {
        /// Consecutive failures.
        failures: u32,
    },
    /// Calls are refused until `until`.
    Open {
        /// When probes may start.
        until: Instant,
    },
    /// Probes pass; `successes` consecutive successes so far.
    HalfOpen {
        /// Consecutive successful probes.
        successes: u32,
    },
}

impl State {
    /// `closed`, `open` or `half_open`.
    pub fn name(&self) -> &'static str {
        match self {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }

    /// The state as a number for metrics: 0 closed, 1 half-open, 2 open.
    pub fn gauge(&self) -> i64 {
        match self {
            State::Closed { .. } => 0,
            State::HalfOpen { .. } => 1,
            State::Open { .. } => 2,
        }
    }
}

/// Leave to make one call, from [`Breaker::allow`]; its result is reported with it.
///
/// A result counts only in the epoch its call started in: a call that started before the
/// breaker opened, or before it went half-open, tells nothing about the broker now, and must
/// not close a half-open breaker or reopen a closed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    epoch: u64,
    probe: bool,
}

/// One broker's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    /// Times the breaker opened.
    opened: u64,
    /// Bumped at every change between closed, open and half-open.
    epoch: u64,
    /// Probes under way while half-open: at most `success_threshold` at once, so that a burst
    /// of calls after the pause does not all go to a broker that may still be down.
    probes: u32,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Breaker { config, state: State::Closed { failures: 0 }, opened: 0, epoch: 0, probes: 0 }
    }

    /// The state at `now` (an open breaker whose pause is over reads as half-open).
    pub fn state(&self, now: Instant) -> State {
        match self.state {
            State::Open { until } if now >= until => State::HalfOpen { successes: 0 },
            s => s,
        }
    }

    /// How many times the breaker has opened.
    pub fn times_opened(&self) -> u64 {
        self.opened
    }

    fn set(&mut self, state: State) {
        if std::mem::discriminant(&state) != std::mem::discriminant(&self.state) {
            self.epoch += 1;
            self.probes = 0;
        }
        self.state = state;
    }

    /// Move an open breaker whose pause is over to half-open.
    fn settle(&mut self, now: Instant) {
        let state = self.state(now);
        self.set(state);
    }

    fn probe_cap(&self) -> u32 {
        self.config.success_threshold.max(1)
    }

    /// Whether a call could go to this broker at `now`, without taking a ticket.
    pub fn would_allow(&self, now: Instant) -> bool {
        match self.state(now) {
            State::Open { .. } => false,
            State::HalfOpen { .. } => !matches!(self.state, State::HalfOpen { .. }) || self.probes < self.probe_cap(),
            State::Closed { .. } => true,
        }
    }

    /// Leave for a call at `now`, if the breaker gives it: never while open, and only as a
    /// probe, up to `success_threshold` at once, while half-open.
    pub fn allow(&mut self, now: Instant) -> Option<Ticket> {
        self.settle(now);
        match self.state {
            State::Open { .. } => None,
            State::HalfOpen { .. } if self.probes >= self.probe_cap() => None,
            State::HalfOpen { .. } => {
                self.probes += 1;
                Some(Ticket { epoch: self.epoch, probe: true })
            }
            State::Closed { .. } => Some(Ticket { epoch: self.epoch, probe: false }),
        }
    }

    /// Whether `ticket`'s result still counts (its call started in this epoch); frees its
    /// probe slot.
    fn redeem(&mut self, now: Instant, ticket: Ticket) -> bool {
        self.settle(now);
        if ticket.epoch != self.epoch {
            return false;
        }
        if ticket.probe {
            self.probes = self.probes.saturating_sub(1);
        }
        true
    }

    /// Record a successful call.
    pub fn on_success(&mut self, now: Instant, ticket: Ticket) {
        if !self.redeem(now, ticket) {
            return;
        }
        let next = match self.state {
            State::Closed { .. } => State::Closed { failures: 0 },
            State::HalfOpen { successes } if successes + 1 >= self.config.success_threshold => State::Closed { failures: 0 },
            State::HalfOpen { successes } => State::HalfOpen { successes: successes + 1 },
            open @ State::Open { .. } => open,
        };
        self.set(next);
    }

    /// Record a failed call.
    pub fn on_failure(&mut self, now: Instant, ticket: Ticket) {
        if !self.redeem(now, ticket) {
            return;
        }
        let next = match self.state {
            State::Closed { failures } if failures + 1 >= self.config.failure_threshold => self.open(now),
            State::Closed { failures } => State::Closed { failures: failures + 1 },
            State::HalfOpen { .. } => self.open(now),
            open @ State::Open { .. } => open,
        };
        self.set(next);
    }

    /// A call that ended without a result (its caller gave up on it): it counts neither way,
    /// and its probe slot is free again.
    pub fn abandon(&mut self, now: Instant, ticket: Ticket) {
        let _ = self.redeem(now, ticket);
    }

    fn open(&mut self, now: Instant) -> State {
        self.opened += 1;
        State::Open { until: now + self.config.open_for }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone, Copy)]
    enum Event {
        Success,
        Failure,
        Wait(u64),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![3 => Just(Event::Success), 3 => Just(Event::Failure), 1 => (0u64..40).prop_map(Event::Wait)]
    }

    fn config() -> impl Strategy<Value = BreakerConfig> {
        (1u32..7, 1u64..40, 1u32..5).prop_map(|(f, o, s)| BreakerConfig { failure_threshold: f, open_for: Duration::from_secs(o), success_threshold: s })
    }

    #[test]
    fn the_documented_defaults() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig::default());
        let fail = |b: &mut Breaker, now| {
            let t = b.allow(now).unwrap();
            b.on_failure(now, t)
        };
        let succeed = |b: &mut Breaker, now| {
            let t = b.allow(now).unwrap();
            b.on_success(now, t)
        };
        for _ in 0..4 {
            fail(&mut b, t0);
        }
        assert!(b.allow(t0).is_some(), "four failures keep it closed");
        fail(&mut b, t0);
        assert!(b.allow(t0).is_none(), "the fifth opens it");
        assert!(b.allow(t0 + Duration::from_secs(29)).is_none());
        let t1 = t0 + Duration::from_secs(30);
        assert!(b.would_allow(t1), "half-open after 30 s");
        succeed(&mut b, t1);
        succeed(&mut b, t1);
        assert_eq!(b.state(t1).name(), "half_open");
        succeed(&mut b, t1);
        assert_eq!(b.state(t1).name(), "closed", "three successes close it");
        for _ in 0..5 {
            fail(&mut b, t1);
        }
        let t2 = t1 + Duration::from_secs(30);
        succeed(&mut b, t2);
        fail(&mut b, t2);
        assert!(b.allow(t2).is_none(), "any failure while half-open reopens it");
        assert_eq!(b.times_opened(), 3);
    }

    /// A call's result counts only in the state it started in, and a half-open breaker lets
    /// through no more probes at once than it needs successes.
    #[test]
    fn old_calls_do_not_count_and_probes_are_capped() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig::default());
        let slow = b.allow(t0).unwrap();
        let slow_failure = b.allow(t0).unwrap();
        for _ in 0..5 {
            let t = b.allow(t0).unwrap();
            b.on_failure(t0, t);
        }
        let t1 = t0 + Duration::from_secs(30);
        b.on_success(t1, slow);
        assert_eq!(b.state(t1), State::HalfOpen { successes: 0 }, "a call from before it opened is no probe");
        b.on_failure(t1, slow_failure);
        assert_eq!(b.state(t1).name(), "half_open", "nor does its failure reopen it");
        let probes: Vec<Ticket> = (0..3).map(|_| b.allow(t1).unwrap()).collect();
        assert!(b.allow(t1).is_none() && !b.would_allow(t1), "three probes at once, no more");
        b.abandon(t1, probes[0]);
        let again = b.allow(t1).unwrap();
        for t in [again, probes[1], probes[2]] {
            b.on_success(t1, t);
        }
        assert_eq!(b.state(t1).name(), "closed");
        assert_eq!(b.times_opened(), 1);
    }

    proptest! {
        /// Against a model that reads the rules off the history of events rather than keeping
        /// the state machine's counters.
        #[test]
        fn follows_the_rules(cfg in config(), events in proptest::collection::vec(event(), 0..120)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut b = Breaker::new(cfg);
            // Model: the last time the breaker opened, and the events since the last transition.
            let mut opened_at: Option<Instant> = None;
            let mut streak_failures = 0u32;
            let mut streak_successes = 0u32;
            let mut half_open = false;
            for e in events {
                // Model's view of openness before the event.
                let model_open = opened_at.is_some_and(|t| now < t + cfg.open_for);
                if opened_at.is_some() && !model_open && !half_open {
                    half_open = true;
                    streak_successes = 0;
                }
                prop_assert_eq!(b.would_allow(now), !model_open);
                // Each call starts and ends at `now`: one ticket at a time.
                let ticket = b.allow(now);
                prop_assert_eq!(ticket.is_some(), !model_open);
                match e {
                    Event::Wait(s) => now += Duration::from_secs(s),
                    Event::Success if model_open => {}
                    Event::Failure if model_open => {}
                    Event::Success if half_open => {
                        streak_successes += 1;
                        if streak_successes >= cfg.success_threshold {
                            half_open = false;
                            opened_at = None;
                            streak_failures = 0;
                        }
                        b.on_success(now, ticket.unwrap());
                    }
                    Event::Failure if half_open => {
                        half_open = false;
                        opened_at = Some(now);
                        b.on_failure(now, ticket.unwrap());
                    }
                    Event::Success => {
                        streak_failures = 0;
                        b.on_success(now, ticket.unwrap());
                    }
                    Event::Failure => {
                        streak_failures += 1;
                        if streak_failures >= cfg.failure_threshold {
                            opened_at = Some(now);
                            streak_failures = 0;
                        }
                        b.on_failure(now, ticket.unwrap());
                    }
                }
                if let (Event::Wait(_), Some(t)) = (e, ticket) {
                    b.abandon(now, t);
                }
                let name = b.state(now).name();
                let model_open = opened_at.is_some_and(|t| now < t + cfg.open_for);
                let model = if model_open { "open" } else if half_open || opened_at.is_some() { "half_open" } else { "closed" };
                prop_assert_eq!(name, model);
            }
        }
    }
}

//! Restart policy: backoff and the restart budget, shared by every host actor.
//!
//! ```text
//!                      BotSupervisor (one per bot, on its own arbiter thread)
//!                      |  strategy: one-for-one, each child restarted alone
//!     +----------------+-------------+----------------+-------------------+
//!     |                |             |                |                   |
//!  TransportHost    Router        Outbox       HandlerHost xN       PollerHost xN
//!  permanent:       permanent     permanent    permanent:           permanent:
//!  reconnect with   (no user      (no user     fresh instance       fresh instance
//!  full-jitter      code runs     code runs    after a panic,       after a panic,
//!  backoff, never   in it)        in it)       backoff, budget      backoff, budget
//!  gives up                                    N in T s -> failed   N in T s -> failed
//! ```
//!
//! actix's own `Supervisor` only restarts an actor that *stopped*; a panic inside a message
//! handler kills the actor's task and loses its mailbox. So the hosts never let user code panic
//! through them: each call into a handler or poller is wrapped in `catch_unwind`, and a panic
//! becomes a [`Restarts::record`] here, a fresh instance from the child's factory, and an entry in
//! the healing log. Messages for a restarting handler stay in its host's mailbox meanwhile.

mod panic;

pub(crate) use panic::{
    Caught, Panic, catch, caught, how_it_ended, install_panic_hook, note_panic, panic_is_caught,
    panic_message,
};

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use crate::health::{ActorKind, ActorState, Health};

use crate::options::RestartPolicy;

/// What the policy decides after a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Restart after this delay.
    RestartAfter(Duration),
    /// Budget spent: mark the child failed.
    GiveUp,
}

/// A child's recent restarts, judged against its policy.
#[derive(Clone, Debug)]
pub struct Restarts {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
    total: u32,
}

impl Restarts {
    /// An empty history under `policy`.
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            recent: VecDeque::new(),
            total: 0,
        }
    }

    /// Records a crash at `now` and says what to do.
    pub fn record(&mut self, now: Instant) -> Verdict {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() as u32 >= self.policy.max_restarts {
            return Verdict::GiveUp;
        }
        self.recent.push_back(now);
        self.total += 1;
        let exp = (self.recent.len() as u32).saturating_sub(1).min(20);
        let delay = self
            .policy
            .backoff_initial
            .saturating_mul(1 << exp)
            .min(self.policy.backoff_max);
        Verdict::RestartAfter(delay)
    }

    /// Forgets the recent crashes (a forced heal): a whole budget again; the total stays.
    pub fn renew(&mut self) {
        self.recent.clear();
    }

    /// Restarts so far, over the child's whole life.
    pub fn total(&self) -> u32 {
        self.total
    }
}

/// What a host of user code (a handler's, a poller's) does after its child crashed, the one
/// restart-or-give-up path for all of them: notes the crash (`why` is shown in chat and
/// `!status`, never a panic's message), then either marks the child restarting and answers the
/// delay before a fresh instance, or, with the budget spent, marks it failed and answers `None`
/// (`gave_up` says what that means for its users). Both are healing-log entries.
pub(crate) fn after_crash(
    health: &Health,
    restarts: &mut Restarts,
    (kind, name): (ActorKind, &str),
    why: &str,
    gave_up: &str,
) -> Option<Duration> {
    health.update(kind, name, |s| {
        s.last_error = Some((SystemTime::now(), why.to_owned()));
    });
    let subsystem = format!("{}:{name}", kind.as_str());
    match restarts.record(Instant::now()) {
        Verdict::RestartAfter(delay) => {
            let total = restarts.total();
            health.update(kind, name, |s| {
                s.state = ActorState::Restarting;
                s.restarts = total;
            });
            health.heal_event(
                &subsystem,
                "restart",
                format!("{why}; fresh instance in {delay:?} (restart {total})"),
            );
            Some(delay)
        }
        Verdict::GiveUp => {
            health.update(kind, name, |s| s.state = ActorState::Failed);
            health.heal_event(&subsystem, "failed", format!("{why}; {gave_up}"));
            None
        }
    }
}

/// Exponential backoff with full jitter, for reconnecting: attempt `n` (0-based) waits a uniformly
/// random time in `[0, min(cap, base * 2^n)]`, so that many bots cut off together do not come back
/// together. A floor of 10% of the step keeps a run of tiny draws from hammering a server.
pub fn full_jitter(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let step = base.saturating_mul(1u32 << attempt.min(20)).min(cap);
    let floor = step / 10;
    let span = step - floor;
    floor + span.mul_f64(fastrand::f64())
}

/// The bot's own machinery failing. Set when a framework actor (router, outbox, transport host,
/// a handler's or poller's host) ends without having been stopped, which only a panic in the
/// framework's own code does: user code runs inside `catch_unwind` and never gets that far.
/// Such an actor's state and mailbox are gone, so it cannot be restarted with its queue; the bot
/// task stops the bot instead, marks it failed, and the process exits non-zero once no bot is
/// left running, so that a service manager restarts it. A bot is never left running deaf.
#[derive(Clone, Debug, Default)]
pub(crate) struct Fatal {
    token: tokio_util::sync::CancellationToken,
    reason: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    stopping: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Fatal {
    /// A guard for the named actor: keep it in the actor, disarm it when the actor stops.
    pub(crate) fn guard(&self, actor: impl Into<String>) -> CoreGuard {
        CoreGuard {
            actor: actor.into(),
            fatal: self.clone(),
            disarmed: false,
        }
    }

    /// Records a failure; the first reason wins.
    pub(crate) fn report(&self, reason: String) {
        if self.is_stopping() {
            return;
        }
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(reason);
        self.token.cancel();
    }

    /// Resolves when a failure is reported.
    pub(crate) async fn failed(&self) {
        self.token.cancelled().await;
    }

    /// The reported failure, if any.
    pub(crate) fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The bot is being taken down on purpose: actors dropped from now on did not fail.
    pub(crate) fn stopping(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Lives inside a framework actor; dropped while its thread unwinds (the actor's task ended by
/// a panic), or without [`CoreGuard::disarm`], it reports the actor's failure, with where the
/// panic happened.
#[derive(Debug)]
pub(crate) struct CoreGuard {
    actor: String,
    fatal: Fatal,
    disarmed: bool,
}

impl CoreGuard {
    /// The actor stopped normally.
    pub(crate) fn disarm(&mut self) {
        self.disarmed = true;
    }
}

impl Drop for CoreGuard {
    fn drop(&mut self) {
        // actix runs an actor's `stopped` also when its task is dropped by a panic, so a guard
        // dropped while the thread unwinds reports even when it was disarmed.
        if (self.disarmed && !std::thread::panicking()) || self.fatal.is_stopping() {
            return;
        }
        // The panic hook noted the location on this thread (a task's future is dropped on the
        // thread it ran on); the message stays in the log, where the hook put it.
        let how = crate::supervisor::how_it_ended();
        self.fatal.report(format!("{} {how}", self.actor));
    }
}

/// Test-only fault injection: makes a framework actor panic in its own code, to test
/// `Fatal`. Compiled only with the `fault-injection` feature, which nothing a user builds
/// turns on.
#[cfg(feature = "fault-injection")]
pub mod fault {
    use std::sync::Mutex;

    /// Where a fault can be injected.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Point {
        /// The router, when it next routes a message.
        Router,
        /// The outbox, when it is next given a line.
        Outbox,
        /// The transport host, before its next connection attempt.
        TransportHost,
        /// A handler's host, outside the handler's code, when it is next given a job.
        HandlerHost,
        /// A poller's host, outside the poller's code, at its next tick.
        PollerHost,
        /// The bot task, as it starts.
        BotTask,
    }

    static ARMED: Mutex<Vec<(String, Point)>> = Mutex::new(Vec::new());

    /// Makes `point` of the bot named `bot` panic once, the next time it is reached.
    pub fn arm(bot: &str, point: Point) {
        ARMED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((bot.to_owned(), point));
    }

    pub(crate) fn check(bot: &str, point: Point) {
        let hit = {
            let mut armed = ARMED.lock().unwrap_or_else(|p| p.into_inner());
            armed
                .iter()
                .position(|(b, p)| b == bot && *p == point)
                .map(|i| armed.remove(i))
                .is_some()
        };
        if hit {
            panic!("injected fault: {point:?}");
        }
    }
}

/// A fault-injection point (see [`fault`]); nothing at all without the feature.
macro_rules! fault_point {
    ($bot:expr, $point:ident) => {
        #[cfg(feature = "fault-injection")]
        $crate::supervisor::fault::check($bot, $crate::supervisor::fault::Point::$point);
    };
}
pub(crate) use fault_point;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_gives_up_after_max_restarts_in_window() {
        let policy = RestartPolicy {
            max_restarts: 3,
            window: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(250),
        };
        let mut r = Restarts::new(policy);
        let t = Instant::now();
        assert_eq!(
            r.record(t),
            Verdict::RestartAfter(Duration::from_millis(100))
        );
        assert_eq!(
            r.record(t),
            Verdict::RestartAfter(Duration::from_millis(200))
        );
        assert_eq!(
            r.record(t),
            Verdict::RestartAfter(Duration::from_millis(250))
        );
        assert_eq!(r.record(t), Verdict::GiveUp);
        // Outside the window the budget is whole again.
        let later = t + Duration::from_secs(61);
        assert_eq!(
            r.record(later),
            Verdict::RestartAfter(Duration::from_millis(100))
        );
        assert_eq!(r.total(), 4);
    }

    #[test]
    fn jitter_stays_within_the_step() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        for attempt in 0..30 {
            let step = base.saturating_mul(1u32 << attempt.min(20)).min(cap);
            for _ in 0..50 {
                let d = full_jitter(base, cap, attempt);
                assert!(d <= step && d >= step / 10, "{d:?} vs {step:?}");
            }
        }
    }
}

//! Circuit breakers: a dependency that keeps failing is not asked again for a while, so a command
//! that needs it answers at once ("xkcd.com is unreachable; next try at 14:05:00 UTC") instead of
//! hanging, and a poller skips its tick.
//!
//! Closed: calls go through; `failures` failures within `window` open the breaker. Open: calls
//! fail at once with [`Open`] until `open_for` has passed. Half-open: one trial call goes
//! through (the others still fail at once); its success closes the breaker, its failure opens
//! it again. Every transition is in the bot's healing log, and `!status` shows each breaker.
//!
//! In a handler, one line: `let site = cx.breaker("xkcd.com");`, then
//! `site.call(fetch(url)).await?`. A poller creates its own with [`Breaker::new`] and lists it
//! in [`crate::Poller::breakers`].

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// When a breaker opens and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Failures within `window` that open the breaker.
    pub failures: u32,
    /// The window failures are counted in.
    pub window: Duration,
    /// How long it stays open before a trial call.
    pub open_for: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failures: 5,
            window: Duration::from_secs(60),
            open_for: Duration::from_secs(60),
        }
    }
}

/// A breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail at once until the instant.
    Open {
        /// When a trial call will be let through.
        until: SystemTime,
    },
    /// One trial call is let through.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half-open`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open { .. } => "open",
            Self::HalfOpen => "half-open",
        }
    }
}

/// What `!status` shows of a breaker.
#[derive(Clone, Debug)]
pub struct BreakerStatus {
    /// The dependency's name.
    pub name: String,
    /// Its state.
    pub state: BreakerState,
    /// Failures within the window (closed), or that opened it.
    pub failures: u32,
    /// The last failure, with when it happened.
    pub last_error: Option<(SystemTime, String)>,
    /// How many times it has opened.
    pub opened: u32,
    /// Whether it guards a site that chat input chose (a link a user pasted) rather than a
    /// dependency of the bot's own: shown, but never a reason for the bot's health.
    pub site: bool,
}

/// A call refused because the breaker is open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    /// The dependency's name.
    pub name: String,
    /// When a trial call will be let through.
    pub retry_at: SystemTime,
}

impl fmt::Display for Open {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self
            .retry_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
        write!(
            f,
            "{} is unreachable; next try at {h:02}:{m:02}:{s:02} UTC",
            self.name
        )
    }
}

impl std::error::Error for Open {}

/// A call through a breaker that did not succeed.
#[derive(Debug)]
pub enum BreakerError<E> {
    /// The breaker is open: the call was not made.
    Open(Open),
    /// The call was made and failed (and was counted).
    Failed(E),
}

impl<E: fmt::Display> fmt::Display for BreakerError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open(o) => o.fmt(f),
            Self::Failed(e) => e.fmt(f),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for BreakerError<E> {}

/// Told of every transition: (action, detail) for the healing log.
pub(crate) type OnChange = Arc<dyn Fn(&str, String) + Send + Sync>;

struct Inner {
    policy: BreakerPolicy,
    state: BreakerState,
    /// Open: when the trial may go; as an `Instant`, for the arithmetic.
    until: Option<Instant>,
    failures: VecDeque<Instant>,
    last_error: Option<(SystemTime, String)>,
    trial: bool,
    opened: u32,
    on_change: Option<OnChange>,
}

/// A circuit breaker; cheap to clone, clones share the state.
#[derive(Clone)]
pub struct Breaker {
    name: Arc<str>,
    site: bool,
    inner: Arc<Mutex<Inner>>,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name)
            .field("state", &self.lock().state)
            .finish()
    }
}

/// Leave to make one call; dropped without [`Permit::success`] or [`Permit::failure`] (the call
/// was cancelled) it counts as neither, and a half-open trial may be tried again.
#[derive(Debug)]
pub struct Permit {
    breaker: Breaker,
    done: bool,
}

impl Permit {
    /// The call succeeded.
    pub fn success(mut self) {
        self.done = true;
        self.breaker.succeeded(Instant::now());
    }

    /// The call failed with `error`.
    pub fn failure(mut self, error: impl fmt::Display) {
        self.done = true;
        self.breaker.failed(&error.to_string(), Instant::now());
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.lock().trial = false;
        }
    }
}

impl Breaker {
    /// A closed breaker for the dependency `name`.
    pub fn new(name: impl Into<Arc<str>>, policy: BreakerPolicy) -> Self {
        Self {
            name: name.into(),
            site: false,
            inner: Arc::new(Mutex::new(Inner {
                policy,
                state: BreakerState::Closed,
                until: None,
                failures: VecDeque::new(),
                last_error: None,
                trial: false,
                opened: 0,
                on_change: None,
            })),
        }
    }

    /// A closed breaker for a site that chat input chose (see [`BreakerStatus::site`]).
    pub fn for_site(name: impl Into<Arc<str>>, policy: BreakerPolicy) -> Self {
        Self {
            site: true,
            ..Self::new(name, policy)
        }
    }

    /// The dependency's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it guards a site that chat input chose.
    pub fn is_site(&self) -> bool {
        self.site
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_on_change(&self, f: OnChange) {
        self.lock().on_change = Some(f);
    }

    /// Leave to call the dependency now, or why not.
    pub fn check(&self) -> Result<Permit, Open> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Result<Permit, Open> {
        let mut i = self.lock();
        if let BreakerState::Open { until } = i.state {
            if i.until.is_some_and(|u| now < u) {
                return Err(Open {
                    name: self.name.to_string(),
                    retry_at: until,
                });
            }
            i.state = BreakerState::HalfOpen;
            i.trial = false;
            let f = i.on_change.clone();
            drop(i);
            self.tell(f, "breaker half-open", "one trial call goes through".into());
            i = self.lock();
        }
        if i.state == BreakerState::HalfOpen {
            if i.trial {
                let retry_at = SystemTime::now() + Duration::from_secs(1);
                return Err(Open {
                    name: self.name.to_string(),
                    retry_at,
                });
            }
            i.trial = true;
        }
        drop(i);
        Ok(Permit {
            breaker: self.clone(),
            done: false,
        })
    }

    fn tell(&self, f: Option<OnChange>, action: &str, detail: String) {
        if let Some(f) = f {
            f(action, format!("{}: {detail}", self.name));
        }
    }

    fn succeeded(&self, _now: Instant) {
        let mut i = self.lock();
        i.trial = false;
        if i.state == BreakerState::HalfOpen {
            i.state = BreakerState::Closed;
            i.failures.clear();
            let f = i.on_change.clone();
            drop(i);
            self.tell(f, "breaker closed", "the trial call succeeded".into());
        }
    }

    fn failed(&self, error: &str, now: Instant) {
        let mut i = self.lock();
        i.trial = false;
        i.last_error = Some((SystemTime::now(), error.to_owned()));
        let window = i.policy.window;
        i.failures.push_back(now);
        while i
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            i.failures.pop_front();
        }
        let open = match i.state {
            BreakerState::HalfOpen => true,
            BreakerState::Closed => i.failures.len() as u32 >= i.policy.failures.max(1),
            BreakerState::Open { .. } => false,
        };
        if open {
            let reopened = i.state == BreakerState::HalfOpen;
            let open_for = i.policy.open_for;
            i.until = Some(now + open_for);
            let until = SystemTime::now() + open_for;
            i.state = BreakerState::Open { until };
            i.opened += 1;
            let detail = if reopened {
                format!(
                    "the trial call failed ({error}); open for {}s more",
                    open_for.as_secs()
                )
            } else {
                format!(
                    "{} failures in {}s, the last: {error}; open for {}s",
                    i.failures.len(),
                    window.as_secs(),
                    open_for.as_secs()
                )
            };
            let f = i.on_change.clone();
            drop(i);
            self.tell(
                f,
                if reopened {
                    "breaker reopened"
                } else {
                    "breaker open"
                },
                detail,
            );
        }
    }

    /// Runs `call` through the breaker: at once [`BreakerError::Open`] while it is open,
    /// otherwise the call, whose failure is counted.
    pub async fn call<T, E: fmt::Display>(
        &self,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, BreakerError<E>> {
        let permit = self.check().map_err(BreakerError::Open)?;
        match call.await {
            Ok(v) => {
                permit.success();
                Ok(v)
            }
            Err(e) => {
                permit.failure(&e);
                Err(BreakerError::Failed(e))
            }
        }
    }

    /// Resets it to closed (an operator's forced heal).
    pub fn reset(&self) {
        let mut i = self.lock();
        let was = i.state;
        i.state = BreakerState::Closed;
        i.failures.clear();
        i.trial = false;
        let f = i.on_change.clone();
        drop(i);
        if was != BreakerState::Closed {
            self.tell(f, "breaker reset", "closed by hand".into());
        }
    }

    /// What `!status` shows.
    pub fn status(&self) -> BreakerStatus {
        let i = self.lock();
        BreakerStatus {
            name: self.name.to_string(),
            state: i.state,
            failures: i.failures.len() as u32,
            last_error: i.last_error.clone(),
            opened: i.opened,
            site: self.site,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failures: 3,
            window: Duration::from_secs(60),
            open_for: Duration::from_secs(30),
        }
    }

    #[test]
    fn failures_in_the_window_open_it_and_a_trial_closes_it() {
        let b = Breaker::new("site", policy());
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        b.set_on_change(Arc::new(move |a, d| {
            l.lock().unwrap().push(format!("{a}: {d}"))
        }));
        let t0 = Instant::now();
        for i in 0..3 {
            let p = b.check_at(t0).unwrap();
            p.done_failure_at("refused", t0 + Duration::from_secs(i));
        }
        assert_eq!(b.status().state.as_str(), "open");
        let open = b.check_at(t0 + Duration::from_secs(10)).unwrap_err();
        assert!(
            open.to_string()
                .starts_with("site is unreachable; next try at "),
            "{open}"
        );
        // After open_for: one trial, the others still refused.
        let trial = b.check_at(t0 + Duration::from_secs(40)).unwrap();
        assert_eq!(b.status().state, BreakerState::HalfOpen);
        assert!(b.check_at(t0 + Duration::from_secs(40)).is_err());
        trial.success();
        assert_eq!(b.status().state, BreakerState::Closed);
        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), 3, "{log:?}");
        assert!(log[0].starts_with("breaker open: site: 3 failures in 60s, the last: refused"));
        assert!(log[1].starts_with("breaker half-open"));
        assert!(log[2].starts_with("breaker closed"));
    }

    #[test]
    fn old_failures_leave_the_window_and_a_failed_trial_reopens() {
        let b = Breaker::new("site", policy());
        let t0 = Instant::now();
        b.check_at(t0).unwrap().done_failure_at("x", t0);
        b.check_at(t0).unwrap().done_failure_at("x", t0);
        // The third comes after the first two left the window: still closed.
        let late = t0 + Duration::from_secs(120);
        b.check_at(late).unwrap().done_failure_at("x", late);
        assert_eq!(b.status().state, BreakerState::Closed);
        assert_eq!(b.status().failures, 1);
        for _ in 0..2 {
            b.check_at(late).unwrap().done_failure_at("x", late);
        }
        assert!(matches!(b.status().state, BreakerState::Open { .. }));
        let trial = b.check_at(late + Duration::from_secs(31)).unwrap();
        trial.done_failure_at("still down", late + Duration::from_secs(31));
        assert!(matches!(b.status().state, BreakerState::Open { .. }));
        assert_eq!(b.status().opened, 2);
        // A cancelled trial lets the next caller try.
        let t = late + Duration::from_secs(70);
        drop(b.check_at(t).unwrap());
        assert!(b.check_at(t).is_ok());
        b.reset();
        assert_eq!(b.status().state, BreakerState::Closed);
    }

    impl Permit {
        fn done_failure_at(mut self, e: &str, now: Instant) {
            self.done = true;
            self.breaker.failed(e, now);
        }
    }
}

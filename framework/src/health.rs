//! The health registry: what every supervised actor of a bot is doing, and what has happened.
//!
//! Actors write their own entry (state, restarts, last error, counters); readers (`!status`,
//! the HTTP status API, the metrics) take a [`Snapshot`]. A shared, lock-protected table rather than an
//! actor, because readers want a consistent view at any moment, also while the actors they
//! describe are stuck or restarting, and writes are a few per message.

mod status;

pub use status::*;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::breaker::{Breaker, BreakerPolicy, BreakerState, BreakerStatus};
use crate::healing_log::{HealingLog, HealingRecord};
use crate::lead::{Lead, LeadStatus};

/// How many healing-log entries a bot keeps.
const HEALING_LOG_LEN: usize = 200;

/// One healing-log entry.
#[derive(Clone, Debug)]
pub struct HealingEvent {
    /// When.
    pub at: SystemTime,
    /// Which child (`handler:echo`, `transport`).
    pub subsystem: String,
    /// What was done (`restart`, `reconnect`, `failed`, `heal`).
    pub action: String,
    /// Why, and what comes next.
    pub detail: String,
    /// The bot's state right after.
    pub state: BotHealth,
}

impl HealingEvent {
    /// This event of `bot` as an entry of the persisted healing log.
    pub fn to_record(&self, bot: &str) -> HealingRecord {
        HealingRecord {
            seq: 0,
            at_ms: self
                .at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            bot: bot.to_owned(),
            subsystem: self.subsystem.clone(),
            action: self.action.clone(),
            detail: self.detail.clone(),
            state: self.state.as_str().to_owned(),
        }
    }
}

/// What a forced heal of one subsystem does (restart a handler or poller, reconnect a
/// transport); a breaker is reset by the registry itself.
pub type Healer = Arc<dyn Fn() + Send + Sync>;

/// Why a forced heal was not done.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HealError {
    /// No subsystem of that name.
    #[error("no subsystem `{name}`; try one of: {}", known.join(", "))]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names there are.
        known: Vec<String>,
    },
    /// A bare name that matches several subsystems.
    #[error("`{name}` could be {}; say which", matches.join(" or "))]
    Ambiguous {
        /// The name asked for.
        name: String,
        /// What it matches.
        matches: Vec<String>,
    },
}

struct Inner {
    actors: BTreeMap<(ActorKind, String), ActorStatus>,
    outbox: OutboxStatus,
    log: VecDeque<HealingEvent>,
    failed: Option<String>,
    breakers: BTreeMap<String, Breaker>,
    /// The site breakers among `breakers`, least recently used first.
    sites: VecDeque<String>,
    /// Trouble with the state store: its health, its state in a few words, what happened.
    store: Option<(BotHealth, String, String)>,
    /// The overall state when last looked at, to log its changes.
    state: BotHealth,
    /// How long a transport may reconnect before the bot counts as critical.
    critical_after: Duration,
    /// Messages the router was given.
    inbound: u64,
    /// Forced heals, by subsystem name.
    healers: BTreeMap<String, Healer>,
    /// The process's persisted healing log, when there is one.
    journal: Option<HealingLog>,
    /// Who speaks for the bot when several processes carry it.
    lead: Lead,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("actors", &self.actors)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// Every subsystem's health at `now`: transport, handlers, pollers, breakers.
    fn subsystems(&self, now: Instant) -> Vec<SubsystemHealth> {
        let actors = self.actors.values().map(|a| SubsystemHealth {
            name: a.subsystem(),
            health: a.health(self.critical_after, now),
            state: match (&a.conn, &a.state) {
                (Some(c), ActorState::Running | ActorState::Starting) => c.as_str().to_owned(),
                (_, s) => s.as_str().to_owned(),
            },
        });
        let store = self.store.iter().map(|(health, state, _)| SubsystemHealth {
            name: "store".into(),
            health: *health,
            state: state.clone(),
        });
        // Sites that chat input chose are shown with the breakers, never as the bot's parts.
        let breakers = self.breakers.values().filter(|b| !b.is_site()).map(|b| {
            let state = b.status().state;
            SubsystemHealth {
                name: format!("breaker:{}", b.name()),
                health: match state {
                    BreakerState::Closed => BotHealth::Healthy,
                    BreakerState::HalfOpen => BotHealth::Recovering,
                    BreakerState::Open { .. } => BotHealth::Degraded,
                },
                state: state.as_str().to_owned(),
            }
        });
        actors.chain(store).chain(breakers).collect()
    }

    /// The overall state by the rules of [`BotHealth`].
    fn overall(&self) -> BotHealth {
        if self.failed.is_some() {
            return BotHealth::Failed;
        }
        worst(&self.subsystems(Instant::now()))
    }

    /// Logs a change of the overall state (healing log and tracing), with what caused it.
    fn note_change(&mut self, bot: &str) {
        let now = self.overall();
        if now == self.state {
            return;
        }
        let before = std::mem::replace(&mut self.state, now);
        let cause = self.cause(now);
        let detail = match cause {
            Some(c) => format!("{} → {} ({c})", before.as_str(), now.as_str()),
            None => format!("{} → {}", before.as_str(), now.as_str()),
        };
        self.push_event(bot, "health", "state", detail);
    }

    /// What makes the bot `state`, in a few words.
    fn cause(&self, state: BotHealth) -> Option<String> {
        match state {
            BotHealth::Failed => self.failed.clone(),
            BotHealth::Healthy => None,
            _ => cause(&self.subsystems(Instant::now()), state),
        }
    }

    fn push_event(&mut self, bot: &str, subsystem: &str, action: &str, detail: String) {
        // Details carry words from outside (a heal's `by`, a server's error): shown in chat,
        // the API and the page, they hold only printable text, and not without end.
        let mut detail = crate::text::printable(&detail);
        if detail.len() > MAX_DETAIL {
            let mut end = MAX_DETAIL;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
            detail.push('…');
        }
        // Trouble at warn; the healing itself (a fresh instance, a resumed stream, a breaker
        // closing, the state getting better) at info.
        let recovered = match action {
            "restart" | "heal" | "resumed" | "nick" | "breaker closed" | "breaker half-open" => {
                true
            }
            "state" => !["→ degraded", "→ critical", "→ failed"]
                .iter()
                .any(|w| detail.contains(w)),
            _ => false,
        };
        if recovered {
            tracing::info!(bot, subsystem, action, %detail, "healing");
        } else {
            tracing::warn!(bot, subsystem, action, %detail, "healing");
        }
        if self.log.len() == HEALING_LOG_LEN {
            self.log.pop_front();
        }
        let event = HealingEvent {
            at: SystemTime::now(),
            subsystem: subsystem.to_owned(),
            action: action.to_owned(),
            detail,
            state: self.overall(),
        };
        if let Some(journal) = &self.journal {
            journal.record(event.to_record(bot));
        }
        self.log.push_back(event);
    }
}

/// The worst state among `subsystems` (healthy when there are none).
fn worst(subsystems: &[SubsystemHealth]) -> BotHealth {
    subsystems
        .iter()
        .map(|s| s.health)
        .max()
        .unwrap_or(BotHealth::Healthy)
}

/// The subsystems in `state`, in a few words (`handler:boom failed`).
fn cause(subsystems: &[SubsystemHealth], state: BotHealth) -> Option<String> {
    let hit: Vec<String> = subsystems
        .iter()
        .filter(|s| s.health == state)
        .map(|s| format!("{} {}", s.name, s.state))
        .collect();
    match hit.len() {
        0 => None,
        1..=3 => Some(hit.join(", ")),
        n => Some(format!("{}, and {} more", hit[..3].join(", "), n - 3)),
    }
}

/// The longest healing-log detail kept, in bytes.
const MAX_DETAIL: usize = 1000;

/// The most breakers a bot keeps for sites that chat input chose.
pub const MAX_SITE_BREAKERS: usize = 32;

/// A bot's health registry. Cheap to clone; all clones share one table.
#[derive(Clone, Debug)]
pub struct Health {
    bot: Arc<str>,
    transport_kind: Arc<str>,
    started: Instant,
    inner: Arc<Mutex<Inner>>,
}

/// A consistent copy of a bot's health at one moment.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Snapshot {
    /// The bot's name.
    pub bot: String,
    /// Its transport kind.
    pub transport: String,
    /// Time since the bot started.
    pub uptime: Duration,
    /// Overall health.
    pub health: BotHealth,
    /// Every supervised child, transport first, then handlers, then pollers.
    pub actors: Vec<ActorStatus>,
    /// The outbox's counters.
    pub outbox: OutboxStatus,
    /// The newest healing-log entries, oldest first.
    pub healing_log: Vec<HealingEvent>,
    /// Why the bot was stopped, when its own machinery failed (`router panicked at ...`).
    pub failed: Option<String>,
    /// The circuit breakers of its handlers and pollers, by name.
    pub breakers: Vec<BreakerStatus>,
    /// Every subsystem's health: transport, handlers, pollers, breakers.
    pub subsystems: Vec<SubsystemHealth>,
    /// Messages the router was given.
    pub inbound: u64,
    /// Trouble with the state store, if there was any.
    pub store: Option<String>,
    /// Who speaks for the bot, when several processes carry it ([`crate::lead`]).
    pub lead: Option<LeadStatus>,
}

impl Snapshot {
    /// The health in one line, as `!status` starts and the status API and page show it:
    /// `degraded: handler:boom failed · 8 of 9 subsystems healthy`.
    pub fn summary(&self) -> String {
        let healthy = self
            .subsystems
            .iter()
            .filter(|s| s.health == BotHealth::Healthy)
            .count();
        let count = format!("{healthy} of {} subsystems healthy", self.subsystems.len());
        let why = match self.health {
            BotHealth::Healthy => None,
            BotHealth::Failed => self.failed.clone(),
            h => cause(&self.subsystems, h),
        };
        match why {
            Some(why) => format!("{}: {why} · {count}", self.health.as_str()),
            None => format!("{} · {count}", self.health.as_str()),
        }
    }

    /// The record of the named child of the given kind.
    pub fn actor(&self, kind: ActorKind, name: &str) -> Option<&ActorStatus> {
        self.actors
            .iter()
            .find(|a| a.kind == kind && a.name == name)
    }
}

impl Health {
    /// A fresh registry for the named bot.
    pub fn new(bot: &str, transport_kind: &str) -> Self {
        Self {
            bot: bot.into(),
            transport_kind: transport_kind.into(),
            started: Instant::now(),
            inner: Arc::new(Mutex::new(Inner {
                actors: BTreeMap::new(),
                outbox: OutboxStatus::default(),
                log: VecDeque::new(),
                failed: None,
                breakers: BTreeMap::new(),
                sites: VecDeque::new(),
                store: None,
                state: BotHealth::Healthy,
                critical_after: crate::options::ReconnectPolicy::default().critical_after,
                inbound: 0,
                healers: BTreeMap::new(),
                journal: None,
                lead: Lead::always(),
            })),
        }
    }

    /// The bot's name.
    pub fn bot(&self) -> &str {
        &self.bot
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the table inconsistent in a way that
        // matters (each update is one assignment), so a poisoned lock is simply taken over.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long the transport may be reconnecting before the bot counts as critical.
    pub fn set_critical_after(&self, grace: Duration) {
        self.lock().critical_after = grace;
    }

    /// Writes this bot's healing-log entries to `journal` as well (the process's persisted
    /// log).
    pub fn set_journal(&self, journal: HealingLog) {
        let mut inner = self.lock();
        // What happened before the journal was there (a state store started afresh while the
        // bot was built) is written first.
        if inner.journal.is_none() {
            for event in &inner.log {
                journal.record(event.to_record(&self.bot));
            }
        }
        inner.journal = Some(journal);
    }

    /// Looks at the state again: a transport down past its grace period turns the bot
    /// critical without any event of its own, so the bot task calls this every second.
    pub fn refresh(&self) {
        self.lock().note_change(&self.bot);
    }

    /// Counts a message given to the router.
    pub(crate) fn count_inbound(&self) {
        self.lock().inbound += 1;
    }

    /// Says how to heal `subsystem` by hand (`handler:echo`, `transport`).
    pub(crate) fn set_healer(&self, subsystem: String, healer: Healer) {
        self.lock().healers.insert(subsystem, healer);
    }

    /// Heals `subsystem` by hand, for `who` (an admin in chat, a token holder over HTTP):
    /// restarts a handler or poller with a whole restart budget (also one marked failed),
    /// resets a breaker, or makes the transport reconnect now. `subsystem` is a full name
    /// (`handler:echo`, `breaker:api.example.com`, `transport`) or a bare one that names one
    /// subsystem (`echo`). Answers the full name; the heal is in the healing log with who
    /// asked.
    pub fn heal(&self, subsystem: &str, who: &str) -> Result<String, HealError> {
        let mut inner = self.lock();
        let mut known: Vec<String> = inner.healers.keys().cloned().collect();
        known.extend(inner.breakers.keys().map(|b| format!("breaker:{b}")));
        let name = if known.iter().any(|k| k == subsystem) {
            subsystem.to_owned()
        } else {
            let matches: Vec<String> = known
                .iter()
                .filter(|k| k.split_once(':').is_some_and(|(_, n)| n == subsystem))
                .cloned()
                .collect();
            match matches.len() {
                1 => matches[0].clone(),
                0 => {
                    return Err(HealError::Unknown {
                        name: subsystem.to_owned(),
                        known,
                    });
                }
                _ => {
                    return Err(HealError::Ambiguous {
                        name: subsystem.to_owned(),
                        matches,
                    });
                }
            }
        };
        let what = match name.split_once(':') {
            Some(("breaker", _)) => "reset to closed",
            Some(_) => "fresh instance, restart budget renewed",
            None => "reconnecting now",
        };
        inner.push_event(&self.bot, &name, "heal", format!("forced by {who}: {what}"));
        let breaker = name
            .strip_prefix("breaker:")
            .and_then(|b| inner.breakers.get(b).cloned());
        let healer = inner.healers.get(&name).cloned();
        drop(inner);
        if let Some(b) = breaker {
            b.reset();
        }
        if let Some(h) = healer {
            h();
        }
        self.refresh();
        Ok(name)
    }

    /// The state of the named child, if it is registered.
    pub(crate) fn actor_state(&self, kind: ActorKind, name: &str) -> Option<ActorState> {
        self.lock()
            .actors
            .get(&(kind, name.to_owned()))
            .map(|a| a.state.clone())
    }

    /// Registers a child (idempotent).
    pub fn register(&self, kind: ActorKind, name: &str) {
        self.lock()
            .actors
            .entry((kind, name.to_owned()))
            .or_insert_with(|| ActorStatus::new(kind, name));
    }

    /// Updates a child's record.
    pub fn update(&self, kind: ActorKind, name: &str, f: impl FnOnce(&mut ActorStatus)) {
        let mut inner = self.lock();
        let entry = inner
            .actors
            .entry((kind, name.to_owned()))
            .or_insert_with(|| ActorStatus::new(kind, name));
        f(entry);
        match entry.conn {
            Some(ConnState::Reconnecting { .. }) => {
                entry.down_since.get_or_insert_with(Instant::now);
            }
            _ => entry.down_since = None,
        }
        inner.note_change(&self.bot);
    }

    /// Updates the outbox counters.
    pub fn update_outbox(&self, f: impl FnOnce(&mut OutboxStatus)) {
        f(&mut self.lock().outbox);
    }

    /// Appends to the healing log (and to the tracing log).
    pub fn heal_event(&self, subsystem: &str, action: &str, detail: impl Into<String>) {
        let detail = detail.into();
        self.lock().push_event(&self.bot, subsystem, action, detail);
    }

    /// The bot's breaker for the dependency `name`, made with `policy` on first use: every
    /// handler and poller asking for the same name shares it, and it outlives their restarts.
    pub fn breaker(&self, name: &str, policy: BreakerPolicy) -> Breaker {
        if let Some(b) = self.lock().breakers.get(name) {
            return b.clone();
        }
        let b = Breaker::new(name, policy);
        self.attach(&b);
        b
    }

    /// Notes trouble with the state store (see [`crate::store::Store::trouble`]): shown in
    /// `!status` and the API as the subsystem `store` in `state` (`started afresh`, `in
    /// memory`), degraded if `degraded` (the bot's pollers lost their memory), and in the
    /// healing log once.
    pub fn note_store(&self, state: &str, trouble: &str, degraded: bool) {
        let mut inner = self.lock();
        let health = if degraded {
            BotHealth::Degraded
        } else {
            BotHealth::Healthy
        };
        // The same trouble told twice (by the bot and by the healing log) is one; a milder one
        // does not hide a worse.
        if inner
            .store
            .as_ref()
            .is_some_and(|(h, _, t)| t == trouble || *h > health)
        {
            return;
        }
        inner.store = Some((health, state.to_owned(), trouble.to_owned()));
        inner.push_event(&self.bot, "store", state, trouble.to_owned());
        inner.note_change(&self.bot);
    }

    /// The bot's breaker for a site that chat input chose (a host in a link a user pasted),
    /// made with `policy` on first use. It is listed with the breakers (`!status`, the API) but
    /// never moves the bot's health, its transitions go to the log and not the healing log
    /// (chat users must not be able to flush that), and a bot keeps at most
    /// [`MAX_SITE_BREAKERS`]: making one more forgets the least recently used. A name that
    /// already belongs to a breaker of the bot's own answers that one.
    pub fn site_breaker(&self, name: &str, policy: BreakerPolicy) -> Breaker {
        let mut inner = self.lock();
        if let Some(b) = inner.breakers.get(name).cloned() {
            if b.is_site() {
                inner.sites.retain(|s| s != name);
                inner.sites.push_back(name.to_owned());
            }
            return b;
        }
        let b = Breaker::for_site(name, policy);
        let bot = self.bot.clone();
        b.set_on_change(Arc::new(move |action, detail| {
            tracing::info!(bot = %bot, site = %crate::text::Escaped(&detail), "{action}");
        }));
        inner.breakers.insert(name.to_owned(), b.clone());
        inner.sites.push_back(name.to_owned());
        while inner.sites.len() > MAX_SITE_BREAKERS {
            if let Some(old) = inner.sites.pop_front() {
                inner.breakers.remove(&old);
            }
        }
        b
    }

    /// The breaker named `name`, if the bot has one (it is not made).
    pub fn find_breaker(&self, name: &str) -> Option<Breaker> {
        self.lock().breakers.get(name).cloned()
    }

    /// Lists `breaker` in this bot's status, and its transitions in the healing log (a
    /// breaker of the same name already listed is replaced).
    pub fn attach(&self, breaker: &Breaker) {
        let weak = Arc::downgrade(&self.inner);
        let bot = self.bot.clone();
        breaker.set_on_change(Arc::new(move |action, detail| {
            if let Some(inner) = weak.upgrade() {
                let mut inner = inner.lock().unwrap_or_else(|p| p.into_inner());
                inner.push_event(&bot, "breaker", action, detail);
                inner.note_change(&bot);
            }
        }));
        let mut inner = self.lock();
        let name = breaker.name().to_owned();
        inner.sites.retain(|s| *s != name);
        inner.breakers.insert(name, breaker.clone());
    }

    /// Marks the bot failed: its own machinery broke and it has been stopped. Logged as an
    /// error and in the healing log.
    pub(crate) fn fail(&self, reason: &str) {
        tracing::error!(bot = %self.bot, %reason, "bot failed; stopping it");
        self.lock().failed.get_or_insert_with(|| reason.to_owned());
        self.heal_event("bot", "failed", format!("{reason}; the bot is stopped"));
        self.lock().note_change(&self.bot);
    }

    /// A consistent copy of everything.
    pub fn snapshot(&self) -> Snapshot {
        let inner = self.lock();
        let actors: Vec<ActorStatus> = inner.actors.values().cloned().collect();
        let breakers: Vec<BreakerStatus> = inner.breakers.values().map(Breaker::status).collect();
        let health = inner.overall();
        let subsystems = inner.subsystems(Instant::now());
        Snapshot {
            bot: self.bot.to_string(),
            transport: self.transport_kind.to_string(),
            uptime: self.started.elapsed(),
            health,
            actors,
            outbox: inner.outbox.clone(),
            healing_log: inner.log.iter().cloned().collect(),
            failed: inner.failed.clone(),
            breakers,
            subsystems,
            inbound: inner.inbound,
            store: inner.store.as_ref().map(|(_, _, t)| t.clone()),
            lead: inner.lead.status(),
        }
    }

    /// Sets the bot's lead (shown in snapshots).
    pub(crate) fn set_lead(&self, lead: Lead) {
        self.lock().lead = lead;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transport is recovering for its whole grace period and critical from its end: at a
    /// quarter (or any part) of it, still recovering.
    #[test]
    fn a_transport_is_critical_exactly_when_its_grace_period_ends() {
        let grace = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut a = ActorStatus::new(ActorKind::Transport, "irc");
        a.conn = Some(ConnState::Reconnecting {
            retry_in: Duration::from_secs(1),
        });
        a.down_since = Some(t0);
        for (after, want) in [
            (Duration::ZERO, BotHealth::Recovering),
            (grace / 4, BotHealth::Recovering),
            (grace - Duration::from_millis(1), BotHealth::Recovering),
            (grace, BotHealth::Critical),
            (grace * 10, BotHealth::Critical),
        ] {
            assert_eq!(a.health(grace, t0 + after), want, "after {after:?}");
        }
        a.conn = Some(ConnState::Connected);
        assert_eq!(a.health(grace, t0 + grace * 10), BotHealth::Healthy);
    }
}

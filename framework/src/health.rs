//! The health registry: what every supervised actor of a bot is doing, and what has happened.
//!
//! Actors write their own entry (state, restarts, last error, counters); readers (`!status`,
//! later the HTTP status API) take a [`Snapshot`]. A shared, lock-protected table rather than an
//! actor, because readers want a consistent view at any moment, also while the actors they
//! describe are stuck or restarting, and writes are a few per message.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::breaker::{Breaker, BreakerPolicy, BreakerState, BreakerStatus};

/// How many healing-log entries a bot keeps.
const HEALING_LOG_LEN: usize = 200;

/// The kind of a supervised child.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ActorKind {
    /// The connection to the chat service.
    Transport,
    /// A reactive handler.
    Handler,
    /// A proactive poller.
    Poller,
}

impl ActorKind {
    /// `transport`, `handler` or `poller`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Transport => "transport",
            Self::Handler => "handler",
            Self::Poller => "poller",
        }
    }
}

/// The life-cycle state of a supervised child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActorState {
    /// Starting for the first time.
    Starting,
    /// Working normally.
    Running,
    /// Crashed, waiting out its backoff before a fresh start.
    Restarting,
    /// Restart budget spent: no longer started; its commands answer "unavailable".
    Failed,
    /// Stopped on purpose (shutdown).
    Stopped,
}

impl ActorState {
    /// A short lower-case word for the state.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
        }
    }
}

/// The state of a transport's connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Not yet connected.
    Connecting,
    /// Connected and ready.
    Connected,
    /// Lost; waiting `retry_in` before the next attempt.
    Reconnecting {
        /// Time left before the next attempt, when it was set.
        retry_in: Duration,
    },
    /// Closed on purpose.
    Closed,
}

impl ConnState {
    /// A short lower-case word for the state.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::Reconnecting { .. } => "reconnecting",
            Self::Closed => "closed",
        }
    }
}

/// The bot's overall health, by these rules, first match wins: its own machinery failed →
/// failed; the transport failed or is reconnecting → critical; a handler or poller failed for
/// good, or a breaker is open → degraded; a handler or poller restarting, or a breaker
/// half-open → recovering; else healthy. Every change is a healing-log entry (subsystem
/// `health`) and a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BotHealth {
    /// Everything running.
    Healthy,
    /// Something restarts or reconnects right now.
    Recovering,
    /// Some child failed for good; the rest works.
    Degraded,
    /// The transport is down: the bot can say nothing.
    Critical,
    /// The bot's own machinery (router, outbox, transport host, a host, the bot task) failed
    /// and the bot was stopped: see [`Snapshot::failed`].
    Failed,
}

impl BotHealth {
    /// A short lower-case word for the state.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Recovering => "recovering",
            Self::Degraded => "degraded",
            Self::Critical => "critical",
            Self::Failed => "failed",
        }
    }
}

/// One supervised child's record.
#[derive(Clone, Debug)]
pub struct ActorStatus {
    /// Kind of child.
    pub kind: ActorKind,
    /// Its name (handler or poller name, or the transport kind).
    pub name: String,
    /// Current state.
    pub state: ActorState,
    /// Restarts so far (crashes that were healed by a fresh start).
    pub restarts: u32,
    /// The last error, with when it happened.
    pub last_error: Option<(SystemTime, String)>,
    /// Messages (commands, matches, polls, lines) handled.
    pub handled: u64,
    /// Poller only: when it last ran and when it runs next.
    pub last_run: Option<SystemTime>,
    /// Poller only: next run.
    pub next_run: Option<SystemTime>,
    /// Transport only: connection state and what it is connected to.
    pub conn: Option<ConnState>,
    /// Transport only: reconnects so far.
    pub reconnects: u32,
    /// Free-form detail from the actor (a transport's server, nick and rooms).
    pub detail: Option<String>,
}

impl ActorStatus {
    fn new(kind: ActorKind, name: &str) -> Self {
        Self {
            kind,
            name: name.to_owned(),
            state: ActorState::Starting,
            restarts: 0,
            last_error: None,
            handled: 0,
            last_run: None,
            next_run: None,
            conn: None,
            reconnects: 0,
            detail: None,
        }
    }
}

/// The outbox's counters.
#[derive(Clone, Debug, Default)]
pub struct OutboxStatus {
    /// Lines waiting.
    pub queued: usize,
    /// Lines handed to the transport.
    pub sent: u64,
    /// Lines dropped because the queue was full.
    pub dropped: u64,
    /// Repeats collapsed by the anti-loop guard.
    pub collapsed: u64,
    /// Lines dropped because their destination could not take them: the bot is not in that
    /// room, may not speak there, or the name could not be an address.
    pub undeliverable: u64,
    /// Lines still queued when a shutdown's deadline ran out, and so never sent.
    pub lost_at_shutdown: u64,
}

/// One healing-log entry.
#[derive(Clone, Debug)]
pub struct HealingEvent {
    /// When.
    pub at: SystemTime,
    /// Which child (`handler:echo`, `transport`).
    pub subsystem: String,
    /// What was done (`restart`, `reconnect`, `failed`).
    pub action: String,
    /// Why, and the resulting state.
    pub detail: String,
}

#[derive(Debug)]
struct Inner {
    actors: BTreeMap<(ActorKind, String), ActorStatus>,
    outbox: OutboxStatus,
    log: VecDeque<HealingEvent>,
    failed: Option<String>,
    breakers: BTreeMap<String, Breaker>,
    /// The overall state when last looked at, to log its changes.
    state: BotHealth,
}

impl Inner {
    /// The overall state by the rules of [`BotHealth`].
    fn overall(&self) -> BotHealth {
        if self.failed.is_some() {
            return BotHealth::Failed;
        }
        let actors: Vec<&ActorStatus> = self.actors.values().collect();
        let breakers: Vec<BreakerStatus> = self.breakers.values().map(Breaker::status).collect();
        overall(&actors, &breakers)
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
            BotHealth::Critical => Some("transport down".into()),
            BotHealth::Degraded => self
                .actors
                .values()
                .find(|a| a.state == ActorState::Failed)
                .map(|a| format!("{} {} failed", a.kind.as_str(), a.name))
                .or_else(|| {
                    self.breakers
                        .values()
                        .find(|b| matches!(b.status().state, BreakerState::Open { .. }))
                        .map(|b| format!("breaker {} open", b.name()))
                }),
            BotHealth::Recovering => self
                .actors
                .values()
                .find(|a| a.state == ActorState::Restarting)
                .map(|a| format!("{} {} restarting", a.kind.as_str(), a.name))
                .or_else(|| Some("a breaker half-open".into())),
            BotHealth::Healthy => None,
        }
    }

    fn push_event(&mut self, bot: &str, subsystem: &str, action: &str, detail: String) {
        tracing::warn!(bot, subsystem, action, %detail, "healing");
        if self.log.len() == HEALING_LOG_LEN {
            self.log.pop_front();
        }
        self.log.push_back(HealingEvent {
            at: SystemTime::now(),
            subsystem: subsystem.to_owned(),
            action: action.to_owned(),
            detail,
        });
    }
}

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
}

impl Snapshot {
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
                state: BotHealth::Healthy,
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
        self.lock()
            .breakers
            .insert(breaker.name().to_owned(), breaker.clone());
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
        }
    }
}

fn overall(actors: &[&ActorStatus], breakers: &[BreakerStatus]) -> BotHealth {
    let transport_down = actors.iter().any(|a| {
        a.kind == ActorKind::Transport
            && (a.state == ActorState::Failed
                || matches!(a.conn, Some(ConnState::Reconnecting { .. })))
    });
    if transport_down {
        BotHealth::Critical
    } else if actors.iter().any(|a| a.state == ActorState::Failed)
        || breakers
            .iter()
            .any(|b| matches!(b.state, BreakerState::Open { .. }))
    {
        BotHealth::Degraded
    } else if actors.iter().any(|a| a.state == ActorState::Restarting)
        || breakers.iter().any(|b| b.state == BreakerState::HalfOpen)
    {
        BotHealth::Recovering
    } else {
        BotHealth::Healthy
    }
}

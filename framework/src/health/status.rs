//! The states and counters the registry keeps: of each supervised child, of the connection,
//! of the outbox, and of the bot as a whole.

use super::*;

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
    /// Not connected on purpose: another process holds the bot's lead ([`crate::lead`]).
    Standby,
}

impl ConnState {
    /// A short lower-case word for the state.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::Reconnecting { .. } => "reconnecting",
            Self::Closed => "closed",
            Self::Standby => "standby",
        }
    }
}

/// The health of a bot, and of each of its subsystems.
///
/// Each subsystem has its own, by these rules:
///
/// | subsystem | healthy | recovering | degraded | critical |
/// |---|---|---|---|---|
/// | transport | connected, or connecting for the first time | reconnecting for less than `critical_after` | | reconnecting for longer, or failed |
/// | handler, poller | starting, running | restarting after a crash | failed (restart budget spent) | |
/// | breaker | closed | half-open | open | |
///
/// The bot's is the worst of its subsystems' (critical, then degraded, then recovering), or
/// `failed` when its own machinery failed and it was stopped. Every change of a bot's state is
/// a healing-log entry (subsystem `health`) and a log line, with its cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BotHealth {
    /// Everything running.
    Healthy,
    /// Something restarts or reconnects right now.
    Recovering,
    /// Some child failed for good, or a dependency's breaker is open; the rest works.
    Degraded,
    /// The transport is down past its grace period: the bot can say nothing.
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

    /// The state named by [`BotHealth::as_str`].
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Healthy,
            Self::Recovering,
            Self::Degraded,
            Self::Critical,
            Self::Failed,
        ]
        .into_iter()
        .find(|h| h.as_str() == name)
    }
}

/// Upper bounds (seconds) of the handler latency histogram's buckets; the last bucket is
/// everything slower.
pub const LATENCY_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0];

/// How long a handler took per command or match: counts per bucket of [`LATENCY_BUCKETS`] (not
/// cumulative; the last count is the overflow), with the sum and count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latency {
    /// Counts per bucket, then the overflow.
    pub buckets: [u64; LATENCY_BUCKETS.len() + 1],
    /// Total seconds.
    pub sum: f64,
    /// Observations.
    pub count: u64,
}

impl Latency {
    /// Adds one observation.
    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += secs;
        self.count += 1;
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
    /// Transport only: since when the connection has been down (reconnecting).
    pub down_since: Option<Instant>,
    /// Handler only: how long its commands and matches took.
    pub latency: Latency,
}

impl ActorStatus {
    pub(super) fn new(kind: ActorKind, name: &str) -> Self {
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
            down_since: None,
            latency: Latency::default(),
        }
    }

    /// The subsystem's name as the healing log, the status API and `!heal` know it:
    /// `transport`, `handler:NAME`, `poller:NAME`.
    pub fn subsystem(&self) -> String {
        match self.kind {
            ActorKind::Transport => "transport".to_owned(),
            k => format!("{}:{}", k.as_str(), self.name),
        }
    }

    /// Its health at `now`, by the rules of [`BotHealth`].
    pub fn health(&self, critical_after: Duration, now: Instant) -> BotHealth {
        match (self.kind, &self.state, &self.conn) {
            (ActorKind::Transport, ActorState::Failed, _) => BotHealth::Critical,
            (ActorKind::Transport, _, Some(ConnState::Reconnecting { .. })) => {
                let down = self.down_since.map_or(Duration::ZERO, |t| now - t);
                if down >= critical_after {
                    BotHealth::Critical
                } else {
                    BotHealth::Recovering
                }
            }
            // Connecting again after a loss; the very first connection is just starting.
            (ActorKind::Transport, _, Some(ConnState::Connecting)) if self.reconnects > 0 => {
                BotHealth::Recovering
            }
            (_, ActorState::Failed, _) => BotHealth::Degraded,
            (_, ActorState::Restarting, _) => BotHealth::Recovering,
            _ => BotHealth::Healthy,
        }
    }
}

/// One subsystem's health, as the status API and `!status` summarise it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubsystemHealth {
    /// `transport`, `handler:NAME`, `poller:NAME` or `breaker:NAME`.
    pub name: String,
    /// Its health.
    pub health: BotHealth,
    /// Its own state in a word (`connected`, `running`, `failed`, `open`).
    pub state: String,
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
    /// Lines not taken because another process holds the bot's lead ([`crate::lead`]).
    pub standby: u64,
}

impl OutboxStatus {
    /// Every line dropped, by reason, as `!status`, the JSON API and `/metrics` all name them:
    /// `queue_full`, `repeat` (the anti-loop guard), `undeliverable`, `shutdown`, `standby`
    /// (another process speaks for the bot).
    pub fn dropped_by_reason(&self) -> [(&'static str, u64); 5] {
        [
            ("queue_full", self.dropped),
            ("repeat", self.collapsed),
            ("undeliverable", self.undeliverable),
            ("shutdown", self.lost_at_shutdown),
            ("standby", self.standby),
        ]
    }

    /// Every line dropped, whatever the reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_by_reason().iter().map(|(_, n)| n).sum()
    }
}

//! A bot's settings: everything about it that is not its handlers or transport.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::pacing::OutboxSettings;

/// Everything about a bot that is not its handlers or transport. `Default` gives the
/// production defaults; new fields will always come with a default.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct BotOptions {
    /// Command prefix.
    pub prefix: String,
    /// Sender ids allowed to run admin-only commands.
    pub admins: Vec<String>,
    /// Who may run a command, by command name, for commands the operator restricted
    /// (`[bot.access]`); a command not listed is open to everyone unless it is admin-only.
    pub access: BTreeMap<String, Access>,
    /// Longest a handler may take for one message.
    pub handler_timeout: Duration,
    /// Restart policy for handlers and pollers.
    pub restart: RestartPolicy,
    /// Per-user command budget.
    pub budget: Budget,
    /// Outbox overrides.
    pub outbox: OutboxSettings,
    /// Reconnect backoff.
    pub reconnect: ReconnectPolicy,
    /// How long a graceful shutdown may take (in-flight commands, then the outbox).
    pub shutdown_deadline: Duration,
    /// Where the state store lives (needed only when the bot has pollers).
    pub state_path: Option<PathBuf>,
}

impl Default for BotOptions {
    fn default() -> Self {
        Self {
            prefix: "!".into(),
            admins: Vec::new(),
            access: BTreeMap::new(),
            handler_timeout: Duration::from_secs(30),
            restart: RestartPolicy::default(),
            budget: Budget::default(),
            outbox: OutboxSettings::default(),
            reconnect: ReconnectPolicy::default(),
            shutdown_deadline: Duration::from_secs(10),
            state_path: None,
        }
    }
}

/// Who may run a command (`[bot.access]`). Admins may always run every command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone who can talk to the bot (the default).
    Everyone,
    /// Admins only.
    Admins,
    /// Admins and these identities (entries as in `admins`).
    Only(Vec<String>),
}

/// Per-user command budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Commands a user may send per minute (0 disables the budget).
    pub per_minute: u32,
    /// How long a user who overspends is ignored.
    pub ignore_for: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            per_minute: 12,
            ignore_for: Duration::from_secs(300),
        }
    }
}

/// Reconnect settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// First backoff step.
    pub initial: Duration,
    /// Largest backoff step.
    pub max: Duration,
    /// A session connected at least this long resets the backoff.
    pub stable_after: Duration,
    /// The shortest wait after the service refused the bot
    /// (a refusal: bad credentials, banned): asking again
    /// every minute is what gets a bot banned for longer.
    pub refused_min: Duration,
    /// How long the connection may be down (reconnecting) before the bot counts as critical
    /// rather than recovering: a blip of a few seconds is not worth a page.
    pub critical_after: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            stable_after: Duration::from_secs(30),
            refused_min: Duration::from_secs(300),
            critical_after: Duration::from_secs(30),
        }
    }
}

/// The longest duration a key may hold: tokio's timers reach about two years, and an `Instant`
/// plus a longer one can overflow.
pub const MAX_SECS: f64 = 365.0 * 86_400.0;

/// How a child is restarted: the budget and the backoff between attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts allowed within `window` before the child is marked failed.
    pub max_restarts: u32,
    /// The sliding window for `max_restarts`.
    pub window: Duration,
    /// Delay before the first restart; doubled for each further restart within the window.
    pub backoff_initial: Duration,
    /// Largest delay between restarts.
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            window: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

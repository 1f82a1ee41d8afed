//! The framework's error type.
//!
//! One `#[non_exhaustive]` enum for everything a handler or poller can return and everything the
//! router can refuse. Each variant knows how it is told to the user ([`Error::user_message`]): a
//! short line, never a stack trace or an internal detail.

use std::fmt;

/// What went wrong, in a form the router can tell the user.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The arguments do not fit the command; carries the usage line (`!lines <count>`).
    #[error("usage: {0}")]
    Usage(String),
    /// The caller may not run this command: it is for admins.
    #[error("{command} is for admins only")]
    NotAuthorized {
        /// The command, with prefix.
        command: String,
    },
    /// The caller may not run this command: the config lists who may, and not them.
    #[error("{command} is not open to you")]
    NotAllowed {
        /// The command, with prefix.
        command: String,
    },
    /// The caller used this command too recently.
    #[error("{command} is cooling down: try again in {secs}s")]
    Cooldown {
        /// The command, with prefix.
        command: String,
        /// Seconds left.
        secs: u64,
    },
    /// No handler knows this command.
    #[error("unknown command: try {prefix}help")]
    UnknownCommand {
        /// The bot's prefix, for the hint.
        prefix: String,
    },
    /// The handler behind the command failed for good (restart budget spent).
    #[error("{command} is unavailable right now")]
    Unavailable {
        /// The command, with prefix.
        command: String,
    },
    /// A failure the user should read as is (`no such host`): keep it short and free of secrets.
    #[error("{0}")]
    User(String),
    /// A dependency's circuit breaker is open: told as is ("xkcd.com is unreachable; next try
    /// at ..."); a poller that returns it skips its tick without counting a failure.
    #[error("{0}")]
    BreakerOpen(crate::breaker::Open),
    /// The user has been told already (a question that got no answer): nothing more is said.
    #[error("{0}")]
    Told(String),
    /// An internal failure: logged in full, told to the user as a generic apology.
    #[error("internal error: {0}")]
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl From<crate::breaker::Open> for Error {
    fn from(open: crate::breaker::Open) -> Self {
        Self::BreakerOpen(open)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<crate::breaker::BreakerError<E>> for Error {
    fn from(e: crate::breaker::BreakerError<E>) -> Self {
        match e {
            crate::breaker::BreakerError::Open(o) => Self::BreakerOpen(o),
            crate::breaker::BreakerError::Failed(e) => Self::internal(e),
        }
    }
}

impl Error {
    /// A failure the user reads as is.
    pub fn user(msg: impl fmt::Display) -> Self {
        Self::User(msg.to_string())
    }

    /// An internal failure (logged, not shown).
    pub fn internal(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Internal(err.into())
    }

    /// The short line the user sees for this error, when it came from `what` (`!dns`); empty
    /// when they have been told already.
    pub fn user_message(&self, what: &str) -> String {
        match self {
            Self::Internal(_) => format!("sorry, {what} failed; the error has been logged"),
            Self::User(msg) => format!("{what}: {msg}"),
            Self::Told(_) => String::new(),
            other => other.to_string(),
        }
    }
}

/// Result with the framework's [`Error`].
pub type Result<T = (), E = Error> = std::result::Result<T, E>;

//! Settings a handler or poller reads from its own table of the bot's config
//! (`[bot.handler.NAME]`, `[bot.poller.NAME]`).
//!
//! ```
//! use opsbot::settings::{FromSettings, SettingsError};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct GreetSettings {
//!     greeting: String,
//! }
//!
//! #[derive(Clone)]
//! struct Greet {
//!     greeting: String,
//! }
//!
//! impl FromSettings for Greet {
//!     type Settings = GreetSettings;
//!     fn from_settings(s: GreetSettings) -> Result<Self, SettingsError> {
//!         if s.greeting.is_empty() {
//!             return Err(SettingsError::at("greeting", "must not be empty"));
//!         }
//!         Ok(Greet { greeting: s.greeting })
//!     }
//! }
//! ```
//!
//! A type that implements `Default` gets [`FromSettings`] for free, with no settings (an empty
//! or absent table); a handler that has settings therefore must not implement `Default`.
//! Secrets are written `${ENV_VAR}` in the file and read into a [`crate::config::Secret`].

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::breaker::BreakerPolicy;
use crate::options::MAX_SECS;

/// Built from its own table of the bot's config.
pub trait FromSettings: Sized {
    /// The table's shape (use `#[serde(deny_unknown_fields)]`, so a misspelt key is an error).
    type Settings: DeserializeOwned;

    /// Builds the handler or poller from its settings, or says which one is wrong.
    fn from_settings(settings: Self::Settings) -> Result<Self, SettingsError>;
}

/// No settings: an empty table, or none.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}

impl<T: Default> FromSettings for T {
    type Settings = NoSettings;

    fn from_settings(_: NoSettings) -> Result<Self, SettingsError> {
        Ok(T::default())
    }
}

/// A setting with a value that cannot work: the one shape of a problem in a table of the
/// config, whether a handler's, a poller's or a transport's. `opsbot check` shows it with the
/// file, the line and the whole key path (`bot[0].handler.NAME.KEY`), like the framework's
/// own problems.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SettingsError {
    /// The key inside the table (`greeting`, `feeds[2].url`), or `None` for the table.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
    /// What to write instead, when that can be said.
    pub hint: Option<String>,
}

impl SettingsError {
    /// A problem with the key `key`.
    pub fn at(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: Some(key.into()),
            message: message.into(),
            hint: None,
        }
    }

    /// A problem with the table as a whole.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            key: None,
            message: message.into(),
            hint: None,
        }
    }

    /// The same problem, with a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The key inside the table, empty for the table itself.
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or("")
    }
}

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(k) => write!(f, "`{k}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for SettingsError {}

/// Reads `table` (absent: empty) as `T`'s settings and builds `T`; problems come back with
/// their key paths under the table.
pub fn build<T: FromSettings>(table: Option<&toml::Table>) -> Result<T, Vec<SettingsError>> {
    let table = table.cloned().unwrap_or_default();
    let settings: T::Settings = serde_path_to_error::deserialize(toml::Value::Table(table))
        .map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let (message, hint) = crate::config::explain(&path, e.inner().message());
            let mut problem = SettingsError::at(path, message);
            problem.hint = hint;
            vec![problem]
        })?;
    T::from_settings(settings).map_err(|e| vec![e])
}

/// `breaker = { failures = 5, window_secs = 60, open_secs = 60 }` in a handler's or poller's
/// settings; each key optional.
#[derive(Clone, Copy, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSettings {
    /// Failures within the window that open it (default 5).
    pub failures: Option<u32>,
    /// The window, in seconds (default 60).
    pub window_secs: Option<u64>,
    /// How long it stays open, in seconds (default 60).
    pub open_secs: Option<u64>,
}

impl BreakerSettings {
    /// The policy of an optional `breaker` table (absent: the defaults), or the problem as a
    /// settings error on the `breaker` key.
    pub fn resolve(settings: Option<Self>) -> Result<BreakerPolicy, SettingsError> {
        settings
            .unwrap_or_default()
            .policy()
            .map_err(|e| SettingsError::at("breaker", e))
    }

    /// The policy these settings describe, or what is wrong with them.
    pub fn policy(&self) -> Result<BreakerPolicy, String> {
        let d = BreakerPolicy::default();
        let p = BreakerPolicy {
            failures: self.failures.unwrap_or(d.failures),
            window: self.window_secs.map_or(d.window, Duration::from_secs),
            open_for: self.open_secs.map_or(d.open_for, Duration::from_secs),
        };
        if p.failures == 0 || p.window.is_zero() || p.open_for.is_zero() {
            return Err("every value must be at least 1".into());
        }
        if p.window.as_secs_f64() > MAX_SECS || p.open_for.as_secs_f64() > MAX_SECS {
            return Err("durations are at most a year (31536000)".into());
        }
        Ok(p)
    }
}

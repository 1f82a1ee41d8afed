//! Command declarations and the parsed invocations handlers receive.
//!
//! A handler declares its commands once, as constants next to its code ([`Command`]); the router,
//! the access checks and `!help` all read that one declaration, so help can never drift from what
//! the bot actually accepts.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::Error;
use crate::message::{Incoming, Sender};

/// The declaration of one command: name, aliases, usage, help and access.
///
/// Built with `const fn`s so that a handler can declare its commands as an associated constant:
///
/// ```
/// use opsbot::Command;
/// const LINES: Command = Command::new("lines", "<count>", "Write <count> numbered lines.")
///     .aliases(&["l"])
///     .cooldown_secs(10);
/// assert_eq!(LINES.name, "lines");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// The command's name, without the prefix.
    pub name: &'static str,
    /// Other names that reach the same command.
    pub aliases: &'static [&'static str],
    /// The arguments, as shown after the name in usage lines (`<host> [type]`).
    pub usage: &'static str,
    /// One line of help (what `!help` lists).
    pub help: &'static str,
    /// More, shown by `!help NAME` only: examples, what the arguments may be.
    pub details: &'static str,
    /// Whether only admins (by sender identity, from the config) may run it.
    pub admin: bool,
    /// Per-user cooldown between two uses, in seconds (0: none).
    pub cooldown: u64,
}

impl Command {
    /// A command anyone may run.
    pub const fn new(name: &'static str, usage: &'static str, help: &'static str) -> Self {
        Self {
            name,
            aliases: &[],
            usage,
            help,
            details: "",
            admin: false,
            cooldown: 0,
        }
    }

    /// More help, shown by `!help NAME` only (keep `help` to one short line).
    pub const fn details(mut self, details: &'static str) -> Self {
        self.details = details;
        self
    }

    /// Other names for the command.
    pub const fn aliases(mut self, aliases: &'static [&'static str]) -> Self {
        self.aliases = aliases;
        self
    }

    /// Restricts the command to admins.
    pub const fn admin_only(mut self) -> Self {
        self.admin = true;
        self
    }

    /// A per-user cooldown between two uses.
    pub const fn cooldown_secs(mut self, secs: u64) -> Self {
        self.cooldown = secs;
        self
    }

    /// The cooldown as a duration, if any.
    pub fn cooldown(&self) -> Option<Duration> {
        (self.cooldown > 0).then(|| Duration::from_secs(self.cooldown))
    }

    /// The usage line with the given prefix: `!lines <count>`.
    pub fn usage_line(&self, prefix: &str) -> String {
        if self.usage.is_empty() {
            format!("{prefix}{}", self.name)
        } else {
            format!("{prefix}{} {}", self.name, self.usage)
        }
    }

    /// Whether `name` is this command's name or one of its aliases (ASCII case-insensitive).
    pub fn answers_to(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }
}

/// One invocation of a command, as a handler receives it.
#[derive(Clone, Debug)]
pub struct Call {
    pub(crate) command: &'static Command,
    pub(crate) prefix: String,
    pub(crate) invoked_as: String,
    pub(crate) raw_args: String,
    pub(crate) args: Vec<String>,
    pub(crate) message: Incoming,
}

impl Call {
    /// The declaration of the command that was called (its canonical name is `command().name`).
    pub fn command(&self) -> &'static Command {
        self.command
    }

    /// The name the user typed (may be an alias).
    pub fn invoked_as(&self) -> &str {
        &self.invoked_as
    }

    /// The arguments, split shell-style (quotes group words).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Everything after the command name, as typed (trimmed).
    pub fn rest(&self) -> &str {
        &self.raw_args
    }

    /// Who called.
    pub fn sender(&self) -> &Sender {
        &self.message.sender
    }

    /// The card's inputs, by id, when the command came from a card's button
    /// ([`crate::card`]); empty for a typed command.
    pub fn inputs(&self) -> &[(String, String)] {
        self.message
            .submission
            .as_ref()
            .map_or(&[], |s| s.inputs.as_slice())
    }

    /// One of the card's inputs, when it was given and is not blank.
    pub fn input(&self, id: &str) -> Option<&str> {
        self.inputs()
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// Whether the command came from a card's button rather than typed.
    pub fn from_card(&self) -> bool {
        self.message.submission.is_some()
    }

    /// The whole message the command came in.
    pub fn message(&self) -> &Incoming {
        &self.message
    }

    /// The usage line for this command, with the bot's prefix.
    pub fn usage(&self) -> String {
        self.command.usage_line(&self.prefix)
    }

    /// A [`Error::Usage`] for this command: the user sees the usage line.
    pub fn usage_error(&self) -> Error {
        Error::Usage(self.usage())
    }

    /// The argument at `index`, parsed; a missing or unparsable argument is a usage error.
    pub fn arg<T: FromStr>(&self, index: usize) -> Result<T, Error> {
        let raw = self.args.get(index).ok_or_else(|| self.usage_error())?;
        raw.parse().map_err(|_| self.usage_error())
    }

    /// The argument at `index`, parsed, if present; present but unparsable is a usage error.
    pub fn opt_arg<T: FromStr>(&self, index: usize) -> Result<Option<T>, Error> {
        match self.args.get(index) {
            None => Ok(None),
            Some(raw) => raw.parse().map(Some).map_err(|_| self.usage_error()),
        }
    }

    /// Fails with a usage error unless there are between `min` and `max` arguments.
    pub fn expect_args(&self, min: usize, max: usize) -> Result<(), Error> {
        if (min..=max).contains(&self.args.len()) {
            Ok(())
        } else {
            Err(self.usage_error())
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.prefix, self.command.name)
    }
}

/// A passive matcher firing: which pattern matched and its captures.
#[derive(Clone, Debug)]
pub struct Match {
    pub(crate) pattern: usize,
    pub(crate) captures: Vec<Option<String>>,
    pub(crate) names: Vec<Option<String>>,
    pub(crate) message: Incoming,
}

impl Match {
    /// Index of the matching pattern in the handler's `PATTERNS`.
    pub fn pattern(&self) -> usize {
        self.pattern
    }

    /// Capture group `i` (0 is the whole match).
    pub fn get(&self, i: usize) -> Option<&str> {
        self.captures.get(i).and_then(|c| c.as_deref())
    }

    /// A named capture group.
    pub fn name(&self, name: &str) -> Option<&str> {
        let i = self.names.iter().position(|n| n.as_deref() == Some(name))?;
        self.get(i)
    }

    /// Who said it.
    pub fn sender(&self) -> &Sender {
        &self.message.sender
    }

    /// The whole message.
    pub fn message(&self) -> &Incoming {
        &self.message
    }
}

/// One command in the bot's catalog, as `!help` lists it.
#[derive(Clone, Copy, Debug)]
pub struct CatalogEntry {
    /// The handler that answers it.
    pub handler: &'static str,
    /// Its declaration.
    pub command: &'static Command,
}

//! Reusable opsbot handlers.
//!
//! Built-ins, on in every bot: [`help::Help`], [`status::Status`],
//! [`whereareyou::WhereAreYou`] and [`echo::Echo`]. Demos, off unless a config lists them:
//! [`demo::Boom`] (panics, to show self-healing) and [`demo::Lines`] (writes many lines, to show
//! the outbox's pacing).
//!
//! The registry ([`add`], [`OPTIONAL`]) maps the names used in a config's `handlers = [...]` to
//! the handlers, so the `opsbot` binary can build any bot from a file.

pub mod demo;
pub mod echo;
pub mod help;
pub mod status;
pub mod whereareyou;

use opsbot::BotBuilder;

/// Handlers every bot has.
pub const BUILTIN: &[&str] = &["help", "status", "whereareyou", "echo"];

/// Handlers a config can enable, with what they are for.
pub const OPTIONAL: &[(&str, &str)] = &[
    (
        "boom",
        "demo: `!boom` panics, to show a handler crash and its restart",
    ),
    (
        "lines",
        "demo: `!lines N` writes N numbered lines, to show the outbox's pacing",
    ),
];

/// Adds the built-in handlers.
pub fn add_builtins(builder: BotBuilder) -> BotBuilder {
    builder
        .handler(help::Help)
        .handler(status::Status)
        .handler(whereareyou::WhereAreYou)
        .handler(echo::Echo)
}

/// Whether `name` is a handler a config may enable.
pub fn is_optional(name: &str) -> bool {
    OPTIONAL.iter().any(|(n, _)| *n == name)
}

/// No optional handler has this name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownHandler(pub String);

impl std::fmt::Display for UnknownHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown handler `{}`", self.0)
    }
}

impl std::error::Error for UnknownHandler {}

/// Adds the optional handler called `name` (check it with [`is_optional`] first).
pub fn add(builder: BotBuilder, name: &str) -> Result<BotBuilder, UnknownHandler> {
    match name {
        "boom" => Ok(builder.handler(demo::Boom)),
        "lines" => Ok(builder.handler(demo::Lines)),
        _ => Err(UnknownHandler(name.to_owned())),
    }
}

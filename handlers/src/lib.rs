//! Reusable opsbot handlers.
//!
//! Built-ins, on in every bot: [`help::Help`], [`status::Status`],
//! [`whereareyou::WhereAreYou`], [`whoami::WhoAmI`] and [`echo::Echo`] (and [`heal::Heal`],
//! which `opsbot_bots::App` adds). Demos, off unless a config lists them:
//! [`demo::Boom`] (panics, to show self-healing) and [`demo::Lines`] (writes many lines, to show
//! the outbox's pacing).
//!
//! Programs register them by name with `opsbot_bots::App` (the `opsbot` binary does), which is
//! how a config's `handlers = [...]` finds them.

pub mod demo;
pub mod dns;
pub mod echo;
pub mod heal;
pub mod help;
pub mod links;
pub mod pollers;
pub mod status;
pub mod whereareyou;
pub mod whoami;

use opsbot::BotBuilder;

/// Adds the built-in handlers.
pub fn add_builtins(builder: BotBuilder) -> BotBuilder {
    builder
        .handler(help::Help)
        .handler(status::Status)
        .handler(whereareyou::WhereAreYou)
        .handler(whoami::WhoAmI)
        .handler(echo::Echo)
}

//! `!help` and `!help <command>`, generated from the commands the handlers declare.
//!
//! There is no help text here: every line comes from a handler's [`Command`] declaration, so
//! help cannot drift from what the bot actually answers.

use opsbot::command::CatalogEntry;
use opsbot::health::{ActorKind, ActorState, Snapshot};
use opsbot::prelude::*;

/// The help handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct Help;

impl Handler for Help {
    const NAME: &'static str = "help";
    const COMMANDS: &'static [Command] = &[Command::new(
        "help",
        "[command]",
        "List the commands, or show one command in full.",
    )
    .aliases(&["commands"])];

    async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
        call.expect_args(0, 1)?;
        let status = cx.status();
        let prefix = cx.prefix().to_owned();
        match call.args().first() {
            None => cx.reply(list(cx.catalog(), &prefix, &status)),
            Some(name) => {
                let name = name.strip_prefix(prefix.as_str()).unwrap_or(name);
                match cx.catalog().iter().find(|e| e.command.answers_to(name)) {
                    Some(entry) => cx.reply(detail(entry, &prefix, &status)),
                    None => {
                        return Err(Error::user(format!(
                            "no command named `{name}`; try {prefix}help"
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

fn unavailable(entry: &CatalogEntry, status: &Snapshot) -> bool {
    status
        .actor(ActorKind::Handler, entry.handler)
        .is_some_and(|a| a.state == ActorState::Failed)
}

fn marks(entry: &CatalogEntry, status: &Snapshot) -> String {
    let mut m = String::new();
    if entry.command.admin {
        m.push_str(" [admin]");
    }
    if unavailable(entry, status) {
        m.push_str(" [unavailable]");
    }
    m
}

/// One line per command: usage, then its help.
pub fn list(catalog: &[CatalogEntry], prefix: &str, status: &Snapshot) -> String {
    let mut entries: Vec<&CatalogEntry> = catalog.iter().collect();
    entries.sort_by_key(|e| e.command.name);
    let mut out = String::new();
    for e in entries {
        out.push_str(&format!(
            "{} — {}{}\n",
            e.command.usage_line(prefix),
            e.command.help,
            marks(e, status)
        ));
    }
    out.push_str(&format!("{prefix}help <command> shows one command in full"));
    out
}

/// Everything about one command.
pub fn detail(entry: &CatalogEntry, prefix: &str, status: &Snapshot) -> String {
    let c = entry.command;
    let mut out = format!("usage: {}\n{}", c.usage_line(prefix), c.help);
    if !c.details.is_empty() {
        out.push('\n');
        out.push_str(c.details);
    }
    if !c.aliases.is_empty() {
        let aliases: Vec<String> = c.aliases.iter().map(|a| format!("{prefix}{a}")).collect();
        out.push_str(&format!("\naliases: {}", aliases.join(", ")));
    }
    if c.admin {
        out.push_str("\nadmins only");
    }
    if c.cooldown > 0 {
        out.push_str(&format!("\ncooldown: {}s per user", c.cooldown));
    }
    if unavailable(entry, status) {
        out.push_str(&format!(
            "\nunavailable right now: handler {} has failed",
            entry.handler
        ));
    }
    out
}

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
            None => cx.reply_rich(list(cx.catalog(), &prefix, &status)),
            Some(name) => {
                let name = name.strip_prefix(prefix.as_str()).unwrap_or(name);
                match cx.catalog().iter().find(|e| e.command.answers_to(name)) {
                    Some(entry) => cx.reply_rich(detail(entry, &prefix, &status)),
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

/// One line per command: its usage as code, then its help.
pub fn list(catalog: &[CatalogEntry], prefix: &str, status: &Snapshot) -> Rich {
    let mut entries: Vec<&CatalogEntry> = catalog.iter().collect();
    entries.sort_by_key(|e| e.command.name);
    let mut out = Rich::new();
    for e in entries {
        out = out.para(Line::new().code(e.command.usage_line(prefix)).text(format!(
            " — {}{}",
            e.command.help,
            marks(e, status)
        )));
    }
    out.para(
        Line::new()
            .code(format!("{prefix}help <command>"))
            .text(" shows one command in full"),
    )
}

/// Everything about one command.
pub fn detail(entry: &CatalogEntry, prefix: &str, status: &Snapshot) -> Rich {
    let c = entry.command;
    let mut out = Rich::new()
        .para(Line::new().text("usage: ").code(c.usage_line(prefix)))
        .para(c.help);
    for l in c.details.lines() {
        out = out.para(l);
    }
    if !c.aliases.is_empty() {
        let mut l = Line::new().text("aliases: ");
        for (i, a) in c.aliases.iter().enumerate() {
            if i > 0 {
                l = l.text(", ");
            }
            l = l.code(format!("{prefix}{a}"));
        }
        out = out.para(l);
    }
    if c.admin {
        out = out.para("admins only");
    }
    if c.cooldown > 0 {
        out = out.para(format!("cooldown: {}s per user", c.cooldown));
    }
    if unavailable(entry, status) {
        out = out.para(format!(
            "unavailable right now: handler {} has failed",
            entry.handler
        ));
    }
    out
}

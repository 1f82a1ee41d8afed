//! The engine in chat, on any bot that lists the `engine` handler: approvals and denials by
//! the people on a rule's approver list (as the transport proves who they are), requests by
//! hand, and the overrides.

use std::collections::BTreeMap;

use opsbot::prelude::*;

use crate::core::Person;
use crate::driver::Engine;
use crate::record::parse_label;

/// The engine's commands.
#[derive(Clone, Debug)]
pub struct EngineCommands {
    engine: Engine,
}

impl EngineCommands {
    /// The commands, talking to `engine`.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

fn person(cx: &Context, call: &Call) -> Person {
    let s = call.sender();
    Person {
        id: s.id.to_string(),
        identity: cx.identity(),
        verified: s.verified,
    }
}

fn action_id(call: &Call) -> Result<u64> {
    parse_label(&call.args()[0]).ok_or_else(|| call.usage_error())
}

impl Handler for EngineCommands {
    const NAME: &'static str = "engine";
    const COMMANDS: &'static [Command] = &[
        Command::new(
            "approve",
            "ID",
            "Approve an action the engine asked about (A12).",
        ),
        Command::new(
            "deny",
            "ID [REASON]",
            "Deny an action the engine asked about.",
        ),
        Command::new("actions", "", "Pending, running and recent actions."),
        Command::new(
            "run",
            "RULE [LABEL=VALUE ...]",
            "Ask for a rule's action by hand.",
        )
        .details("It goes through the rule's approvals; you cannot approve it yourself.")
        .admin_only(),
        Command::new(
            "automation",
            "pause|resume",
            "Stop or restart every rule's actions.",
        )
        .admin_only(),
        Command::new(
            "silence",
            "RULE DURATION",
            "Keep a rule from acting for a while (2h).",
        )
        .admin_only(),
        Command::new(
            "rules",
            "[reload]",
            "List the rules, or re-read them (admins).",
        ),
    ];

    async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
        let who = person(cx, &call);
        let answer = match call.command().name {
            "approve" => {
                call.expect_args(1, 1)?;
                let id = action_id(&call)?;
                let answer = self.engine.approve(id, who).await;
                match answer {
                    // The line that it runs goes to the room; pressed on the request's card,
                    // the decision shows under the card too.
                    Ok(a) if a.is_empty() && call.from_card() => Ok(format!(
                        "[A{id}] approved by {}: it runs now",
                        call.sender().id
                    )),
                    other => other,
                }
            }
            "deny" => {
                if call.args().is_empty() {
                    return Err(call.usage_error());
                }
                let id = action_id(&call)?;
                // Pressed on the request's card, the reason is its field.
                let typed = call.args()[1..].join(" ");
                let reason = call.input("reason").map_or(typed, str::to_owned);
                self.engine.deny(id, who, reason).await
            }
            "actions" => {
                call.expect_args(0, 0)?;
                self.engine.actions().await.map(|lines| {
                    if lines.is_empty() {
                        "no actions yet".to_owned()
                    } else {
                        lines.join("\n")
                    }
                })
            }
            "run" => {
                if call.args().is_empty() {
                    return Err(call.usage_error());
                }
                let room = match cx.reply_to() {
                    Destination::Room(r) | Destination::Thread { room: r, .. } => r.to_string(),
                    Destination::User(_) => {
                        cx.reply("ask in a room, where the approvers can see it");
                        return Ok(());
                    }
                };
                let mut values = BTreeMap::new();
                for pair in &call.args()[1..] {
                    let Some((k, v)) = pair.split_once('=') else {
                        return Err(call.usage_error());
                    };
                    values.insert(k.to_owned(), v.to_owned());
                }
                let rule = call.args()[0].clone();
                let bot = cx.bot_name().to_owned();
                self.engine.run_rule(rule, values, who, bot, room).await
            }
            "automation" => {
                call.expect_args(1, 1)?;
                let paused = match call.args()[0].as_str() {
                    "pause" => true,
                    "resume" => false,
                    _ => return Err(call.usage_error()),
                };
                self.engine.pause(paused, who.id).await
            }
            "silence" => {
                call.expect_args(2, 2)?;
                let Ok(d) = humantime::parse_duration(&call.args()[1]) else {
                    return Err(call.usage_error());
                };
                self.engine.silence(call.args()[0].clone(), d, who.id).await
            }
            "rules" => match call.args() {
                [] => {
                    let cfg = self.engine.config();
                    let lines: Vec<String> = cfg
                        .rules
                        .iter()
                        .map(|r| {
                            format!(
                                "{}: {} when {}{}",
                                r.name,
                                describe_action(&r.action),
                                r.matchers
                                    .0
                                    .iter()
                                    .map(ToString::to_string)
                                    .collect::<Vec<_>>()
                                    .join(", "),
                                if r.dry_run { " (dry run)" } else { "" }
                            )
                        })
                        .collect();
                    Ok(if lines.is_empty() {
                        "no rules".to_owned()
                    } else {
                        lines.join("\n")
                    })
                }
                [r] if r == "reload" => {
                    if !cx.sender_is_admin() {
                        Ok("only the bot's admins may reload the rules".to_owned())
                    } else {
                        self.engine.reload(who.id).await
                    }
                }
                _ => return Err(call.usage_error()),
            },
            _ => return Ok(()),
        };
        match answer {
            Ok(line) if line.is_empty() => {}
            Ok(line) => cx.reply(line),
            Err(e) => cx.reply(format!("the engine could not answer: {e}")),
        }
        Ok(())
    }
}

fn describe_action(a: &crate::action::ActionSpec) -> String {
    match a {
        crate::action::ActionSpec::Command { program, args, .. } => {
            let args: Vec<String> = args.iter().map(ToString::to_string).collect();
            format!("run {program} {}", args.join(" "))
        }
        crate::action::ActionSpec::Http { method, url, .. } => format!("{method} {url}"),
        crate::action::ActionSpec::Heal { bot, subsystem } => {
            format!("heal {subsystem} of bot {bot}")
        }
        crate::action::ActionSpec::Kubernetes {
            verb,
            namespace,
            name,
            replicas,
        } => crate::kubernetes::describe(
            *verb,
            namespace.as_ref().map(ToString::to_string).as_deref(),
            &name.to_string(),
            *replicas,
        ),
    }
}

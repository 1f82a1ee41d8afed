//! `!heal SUBSYSTEM` (admins only): what `POST /api/v1/heal/{bot}/{subsystem}` does, from chat.
//! Restarts a handler or poller with a whole restart budget (also one marked failed), resets a
//! circuit breaker, or makes the transport reconnect now. The heal is in the healing log with
//! who asked.

use opsbot::prelude::*;

/// The heal handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct Heal;

impl Handler for Heal {
    const NAME: &'static str = "heal";
    const COMMANDS: &'static [Command] = &[Command::new(
        "heal",
        "SUBSYSTEM",
        "Restart a handler or poller, reset a breaker, or reconnect.",
    )
    .details(
        "SUBSYSTEM as !status names it: handler:NAME, poller:NAME, breaker:NAME or \
         transport, or a bare name that fits one (!heal echo). The heal is in the healing \
         log with who asked.",
    )
    .admin_only()];

    async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
        call.expect_args(1, 1)?;
        let subsystem = &call.args()[0];
        let who = call.sender();
        let who = if who.id == who.name {
            format!("{} in chat", who.id)
        } else {
            format!("{} ({}) in chat", who.name, who.id)
        };
        match cx.heal(subsystem, &who) {
            Ok(name) => cx.reply(format!("healing {name}: see !status")),
            Err(e) => cx.reply(e.to_string()),
        }
        Ok(())
    }
}

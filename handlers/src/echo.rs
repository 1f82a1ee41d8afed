//! `!echo <text>`: says the text back (handy to check that a bot is alive and paced).

use opsbot::prelude::*;

/// The echo handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Handler for Echo {
    const NAME: &'static str = "echo";
    const COMMANDS: &'static [Command] = &[Command::new("echo", "<text>", "Say the text back.")];

    async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
        if call.rest().is_empty() {
            return Err(call.usage_error());
        }
        cx.reply(call.rest());
        Ok(())
    }
}

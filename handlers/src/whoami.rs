//! `!whoami`: the sender's id as the bot sees it, and whether it makes them an admin: what a
//! person refused as "not an admin" needs to have the right entry written.

use opsbot::prelude::*;
use opsbot::transport::Identity;

/// The whoami handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct WhoAmI;

/// The admin entry that would cover `id` on a transport whose ids are `identity`: the host
/// part of an IRC mask, else the address itself.
fn entry_for(identity: Identity, id: &str) -> String {
    match (identity, id.rsplit_once('@')) {
        (Identity::Mask, Some((_, host))) => format!("*!*@{host}"),
        _ => id.to_owned(),
    }
}

impl Handler for WhoAmI {
    const NAME: &'static str = "whoami";
    const COMMANDS: &'static [Command] = &[Command::new(
        "whoami",
        "",
        "Show the id the bot sees for you, and whether it makes you an admin.",
    )];

    async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
        call.expect_args(0, 0)?;
        let sender = call.sender().clone();
        let line = if !sender.verified {
            format!(
                "you are {} to this bot, a name the service cannot prove (a room that hides \
                 real identities): it makes no one an admin",
                sender.id
            )
        } else if cx.sender_is_admin() {
            format!("you are {}: an admin", sender.id)
        } else {
            format!(
                "you are {}: not an admin (an admin entry for you: \"{}\")",
                sender.id,
                entry_for(cx.identity(), &sender.id)
            )
        };
        cx.reply(line);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_trusts_the_host_on_irc_and_the_address_elsewhere() {
        assert_eq!(
            entry_for(Identity::Mask, "alice!al@ops.example.com"),
            "*!*@ops.example.com"
        );
        assert_eq!(
            entry_for(Identity::Address, "alice@example.org"),
            "alice@example.org"
        );
    }
}

//! A complete handler, added to a console bot beside the built-ins.
//!
//! Run: `cargo run -p opsbot-examples --example hello`, then type `!hello` or `!hello world`.

use opsbot::prelude::*;

#[derive(Clone)]
struct Hello;

impl Handler for Hello {
    const NAME: &'static str = "hello";
    const COMMANDS: &'static [Command] = &[Command::new("hello", "[name]", "Say hello.")];

    async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
        call.expect_args(0, 1)?; // `!hello a b` is a usage error, not `hello, a!`
        let name: Option<String> = call.opt_arg(0)?;
        cx.reply(format!(
            "hello, {}!",
            name.as_deref().unwrap_or(&call.sender().name)
        ));
        Ok(())
    }
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    opsbot::logging::init_with(&Default::default(), "warn");
    let bot = Bot::builder("hello")
        .transport(opsbot_transports::console::Console::stdio("hello"))
        .handler(Hello);
    let bot = opsbot_handlers::add_builtins(bot).build()?;
    eprintln!("hello bot: type !hello or !help (end with Ctrl-D)");
    opsbot::run(vec![bot])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opsbot::testkit::TestBot;

    #[tokio::test]
    async fn says_hello() {
        let mut bot = TestBot::new().with(Hello);
        bot.send("!hello ops");
        assert_eq!(bot.reply().await, "hello, ops!");
        bot.send("!hello");
        assert_eq!(bot.reply().await, "hello, tester!");
        // One name at most: a second is a usage error, not silently dropped.
        bot.send("!hello a b");
        assert_eq!(bot.reply().await, "tester: usage: !hello [name]");
    }
}

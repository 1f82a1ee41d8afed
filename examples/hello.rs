//! A complete handler, added to a console bot beside the built-ins.
//!
//! Run: `cargo run -p opsbot-examples --example hello`, then type `!hello` or `!hello world`.

use opsbot::Bot;
use opsbot::prelude::*;

#[derive(Clone)]
struct Hello;

impl Handler for Hello {
    const NAME: &'static str = "hello";
    const COMMANDS: &'static [Command] = &[Command::new("hello", "[name]", "Say hello.")];

    async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
        let name: Option<String> = call.opt_arg(0)?;
        cx.reply(format!(
            "hello, {}!",
            name.as_deref().unwrap_or(&call.sender().name)
        ));
        Ok(())
    }
}

fn main() -> std::io::Result<()> {
    opsbot::logging::init(&Default::default());
    let bot = Bot::builder("hello")
        .transport(opsbot_transports::console::Console::stdio("hello"))
        .handler(Hello);
    let bot = opsbot_handlers::add_builtins(bot)
        .build()
        .expect("valid bot");
    opsbot::run(vec![bot])
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
    }
}

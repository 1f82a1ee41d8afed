//! A bot program of one's own: everything `opsbot` has (`run`, `check`, the console by default,
//! every transport) plus `!greet`, a handler with settings from the bot's config.
//!
//! ```sh
//! cargo run -p opsbot-own-bot -- run --config examples/own-bot/console.toml
//! cargo run -p opsbot-own-bot -- check --config examples/own-bot/irc.toml
//! ```

use std::process::ExitCode;

use opsbot::prelude::*;
use opsbot::settings::{FromSettings, SettingsError};

/// `[bot.handler.greet]`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GreetSettings {
    /// What `!greet NAME` says; `{name}` stands for the name.
    greeting: String,
    /// Say it in capitals.
    #[serde(default)]
    shout: bool,
    /// Longest name taken; longer ones are cut.
    #[serde(default = "max_name_chars")]
    max_name_chars: usize,
}

fn max_name_chars() -> usize {
    30
}

/// `!greet [name]`. No `Default`: it is built from its settings.
#[derive(Clone, Debug)]
struct Greet {
    greeting: String,
    shout: bool,
    max_name_chars: usize,
}

impl FromSettings for Greet {
    type Settings = GreetSettings;

    fn from_settings(s: GreetSettings) -> std::result::Result<Self, SettingsError> {
        if !s.greeting.contains("{name}") {
            return Err(SettingsError::at(
                "greeting",
                "must contain {name}, where the name goes",
            ));
        }
        if !(1..=100).contains(&s.max_name_chars) {
            return Err(SettingsError::at("max_name_chars", "must be 1 to 100"));
        }
        Ok(Self {
            greeting: s.greeting,
            shout: s.shout,
            max_name_chars: s.max_name_chars,
        })
    }
}

impl Handler for Greet {
    const NAME: &'static str = "greet";
    const COMMANDS: &'static [Command] = &[Command::new("greet", "[name]", "Greet someone.")];

    async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
        let name: Option<String> = call.opt_arg(0)?;
        let name = name.unwrap_or_else(|| call.sender().name.to_string());
        let name: String = name.chars().take(self.max_name_chars).collect();
        let text = self.greeting.replace("{name}", &name);
        cx.reply(if self.shout {
            text.to_uppercase()
        } else {
            text
        });
        Ok(())
    }
}

fn main() -> ExitCode {
    opsbot_bots::App::new().handler::<Greet>("greet").main()
}

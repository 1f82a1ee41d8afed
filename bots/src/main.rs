//! `opsbot`: runs any bot from a config file; with no arguments, a console bot with the built-in
//! handlers, so a new user can talk to it at once.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use opsbot::Bot;
use opsbot::config::{Config, ConfigError, ConfigErrors};

/// A ChatOps bot that never goes quiet.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the bots a config file defines.
    Run {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file without connecting anywhere; prints every problem.
    Check {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Everything wrong with a config: the file's own checks, then transports and handler names.
fn check(path: &Path) -> Result<Config, ConfigErrors> {
    let config = Config::load(path)?;
    let mut errors = Vec::new();
    for bot in &config.bots {
        errors.extend(opsbot_transports::check(&config.path, &bot.transport));
        for h in &bot.handlers {
            if !opsbot_handlers::is_optional(h) {
                let known: Vec<&str> = opsbot_handlers::OPTIONAL.iter().map(|(n, _)| *n).collect();
                let builtin = opsbot_handlers::BUILTIN.contains(&h.as_str());
                errors.push(ConfigError {
                    file: config.path.clone(),
                    key: format!("{}.handlers", bot.key),
                    line: None,
                    message: if builtin {
                        format!("`{h}` is built in and always on; do not list it")
                    } else {
                        format!("unknown handler `{h}`")
                    },
                    hint: Some(format!(
                        "handlers that can be enabled: {}",
                        known.join(", ")
                    )),
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn build(config: &Config) -> anyhow::Result<Vec<Bot>> {
    config
        .bots
        .iter()
        .map(|b| {
            let mut builder = Bot::builder(&b.name).options(b.options.clone());
            builder = opsbot_transports::from_config(builder, &b.name, &b.transport)?;
            builder = opsbot_handlers::add_builtins(builder);
            for h in &b.handlers {
                builder = opsbot_handlers::add(builder, h)?;
            }
            builder
                .build()
                .with_context(|| format!("{}: bot `{}`", config.path.display(), b.name))
        })
        .collect()
}

fn run(config: &Config) -> anyhow::Result<()> {
    opsbot::logging::init(&config.log);
    #[cfg(feature = "webex")]
    opsbot::http::init(&config.http_client)
        .with_context(|| format!("{}: http_client", config.path.display()))?;
    let bots = build(config)?;
    if config.bots.iter().any(|b| b.transport.kind == "console") {
        tracing_hint();
    }
    opsbot::run(bots).context("running the bots")
}

fn tracing_hint() {
    eprintln!("opsbot console: type !help (end with Ctrl-D)");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(&Config::console_default()),
        Some(Cmd::Check { config }) => match check(&config) {
            Ok(c) => {
                println!(
                    "{}: OK ({} bot{})",
                    config.display(),
                    c.bots.len(),
                    if c.bots.len() == 1 { "" } else { "s" }
                );
                return ExitCode::SUCCESS;
            }
            Err(errors) => {
                eprintln!("{errors}");
                return ExitCode::from(2);
            }
        },
        Some(Cmd::Run { config }) => match check(&config) {
            Ok(c) => run(&c),
            Err(errors) => {
                eprintln!("{errors}");
                return ExitCode::from(2);
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("opsbot: {e:#}");
            ExitCode::FAILURE
        }
    }
}

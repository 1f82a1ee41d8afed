//! Chat transports for opsbot, one module per chat service.
//!
//! Every transport implements [`opsbot::transport::Transport`]: one session of one connection.
//! Reconnecting, backoff and pacing are the framework's, so a transport only speaks its protocol.
//! Heavy protocols come behind cargo features so that a console-only build stays small.
//!
//! [`from_config`] turns a `[bot.transport]` section into a running transport, which is what
//! makes swapping protocols a one-line config change.

pub mod console;

use opsbot::BotBuilder;
use opsbot::config::{ConfigError, TransportConfig};

/// The transport kinds this build knows.
pub const KINDS: &[&str] = &["console"];

/// Checks a transport section without connecting; returns every problem.
pub fn check(file: &std::path::Path, t: &TransportConfig) -> Vec<ConfigError> {
    let err = |key: String, message: String, hint: Option<String>| ConfigError {
        file: file.to_owned(),
        key,
        line: None,
        message,
        hint,
    };
    match t.kind.as_str() {
        "console" => t
            .settings
            .keys()
            .map(|k| {
                err(
                    format!("{}.{k}", t.key),
                    format!("unknown field `{k}`: the console transport has no settings"),
                    None,
                )
            })
            .collect(),
        other => vec![err(
            format!("{}.kind", t.key),
            format!("unknown transport kind `{other}`"),
            Some(format!("this build knows: {}", KINDS.join(", "))),
        )],
    }
}

/// Gives `builder` the transport described by `t` (checked with [`check`] first).
pub fn from_config(builder: BotBuilder, name: &str, t: &TransportConfig) -> BotBuilder {
    match t.kind.as_str() {
        "console" => builder.transport(console::Console::stdio(name)),
        other => unreachable!("transport kind `{other}` passed check()"),
    }
}

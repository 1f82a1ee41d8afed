//! Logging with tracing: human-readable by default, JSON on request; the level comes from
//! `RUST_LOG` when set, else from the config, else `info`.
//!
//! Text logs are coloured only when standard error is a terminal and `NO_COLOR` is unset.
//! Logs go to standard error, so they never mix with what the console transport prints. A panic
//! is logged as one error event (the message and where it happened), not dumped raw.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber and the panic hook. Call once, early in `main`.
pub fn init(config: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| {
            config
                .level
                .as_deref()
                .and_then(|l| EnvFilter::try_new(l).ok())
        })
        .unwrap_or_else(|| EnvFilter::new("info"));
    // Colours only for a person at a terminal: journald, files and pipes get plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let installed = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if installed.is_ok() {
        std::panic::set_hook(Box::new(|info| {
            crate::handler::note_panic(info);
            let message = crate::handler::panic_message(info.payload());
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()));
            tracing::error!(panic = %message, at = at.as_deref().unwrap_or("?"), "panic caught");
        }));
    }
}

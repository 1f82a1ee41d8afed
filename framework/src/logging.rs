//! Logging with tracing: human-readable by default, JSON on request; the level comes from
//! `RUST_LOG` when set, else from the config, else `info`.
//!
//! Text logs are coloured only when standard error is a terminal and `NO_COLOR` is unset.
//! Logs go to standard error, so they never mix with what the console transport prints. A panic
//! is logged as one error event (the message and where it happened), not dumped raw: where the
//! framework catches it (with the handler, poller or session it hit), else by the panic hook.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use tracing_subscriber::field::MakeExt;

use crate::config::{LogConfig, LogFormat};
use crate::text::Escaped;

/// How a text log shows an event's fields: `message` as it is, the others as `name=value`,
/// each escaped by [`Escaped`].
fn text_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let value = format!("{value:?}");
        if field.name() == "message" {
            write!(w, "{}", Escaped(&value))
        } else {
            write!(w, "{field}={}", Escaped(&value))
        }
    })
    .delimited(" ")
}

/// Installs the global subscriber and the panic hook. Call once, early in `main`.
pub fn init(config: &LogConfig) {
    init_with(config, "info");
}

/// Like [`init`], with `default` as the level when neither `RUST_LOG` nor the config sets one
/// (`warn` for a console bot at a terminal, whose replies share the screen). The actix
/// server's own chatter is kept at warnings either way.
pub fn init_with(config: &LogConfig, default: &str) {
    // The actix server's own chatter (workers starting, "Actix runtime found") is kept at
    // warnings whatever the level, unless a filter names it. So is matrix-sdk's: its HTTP
    // client logs every failed request as an error, the expected 404s of a first start
    // included, and its crypto warns of each message it cannot decrypt; the Matrix transport
    // says what matters once, in its own words and in the healing log.
    let quiet =
        "actix_server=warn,actix_web=warn,matrix_sdk::http_client=off,matrix_sdk_crypto=error";
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(format!("{quiet},{v}")).ok())
        .or_else(|| {
            config
                .level
                .as_deref()
                .and_then(|l| EnvFilter::try_new(format!("{quiet},{l}")).ok())
        })
        .unwrap_or_else(|| EnvFilter::new(format!("{quiet},{default}")));
    // Colours only for a person at a terminal: journald, files and pipes get plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let installed = match config.format {
        // Field values hold words from outside (a server's line, a user's text): in a text
        // log each event stays one line and shows only printable characters, the rest
        // escaped (`\u{202e}`), so nothing can forge a line, recolour the terminal or
        // reverse what a reader sees. JSON escapes what JSON must.
        LogFormat::Text => builder.fmt_fields(text_fields()).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if installed.is_ok() {
        std::panic::set_hook(Box::new(|info| {
            crate::supervisor::note_panic(info);
            let message = crate::supervisor::panic_message(info.payload());
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()));
            let at = at.as_deref().unwrap_or("?");
            // A panic the framework catches (a handler's, a poller's, a session's) is logged
            // once, where it is caught, with what it was running; any other here.
            if crate::supervisor::panic_is_caught() {
                tracing::debug!(panic = %message, at, "panic");
            } else {
                tracing::error!(panic = %message, at, "panic");
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// Words from outside in a field or the message cannot start a line of their own, colour
    /// the terminal or reverse what a reader sees: one event is one line.
    #[test]
    fn outside_text_in_a_log_line_is_escaped() {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let o = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(super::text_fields())
            .with_writer(move || Writer(o.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let from = "mal\u{202e}lory\n2026-01-01T00:00:00Z ERROR forged\u{1b}[31m";
            tracing::info!(%from, "said {}", "x\u{2066}y\rz");
        });
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains("said x\\u{2066}y\\u{d}z from=mal\\u{202e}lory\\u{a}2026-01-01T00:00:00Z ERROR forged\\u{1b}[31m"),
            "{text}"
        );
    }

    struct Writer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Writer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}

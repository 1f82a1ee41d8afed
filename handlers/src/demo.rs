//! Demo handlers that show the framework's promises; off unless a config enables them.

use opsbot::prelude::*;

/// `!boom`: panics. The framework apologizes to the caller, restarts the handler with backoff
/// and counts the restart in `!status`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Boom;

impl Handler for Boom {
    const NAME: &'static str = "boom";
    const COMMANDS: &'static [Command] = &[Command::new(
        "boom",
        "",
        "Crash on purpose (demo of self-healing).",
    )];

    async fn command(&mut self, _cx: &mut Context, _call: Call) -> Result {
        panic!("boom: crashed on purpose");
    }
}

/// Most lines `!lines` writes.
pub const MAX_LINES: u32 = 1000;

/// `!lines N`: writes N numbered lines, so the outbox's pacing can be watched (and, on a real
/// server, proven flood-safe).
#[derive(Clone, Copy, Debug, Default)]
pub struct Lines;

impl Handler for Lines {
    const NAME: &'static str = "lines";
    const COMMANDS: &'static [Command] = &[Command::new(
        "lines",
        "<1-1000>",
        "Write that many numbered lines (demo of output pacing).",
    )];

    async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
        call.expect_args(1, 1)?;
        let n: u32 = call.arg(0)?;
        if !(1..=MAX_LINES).contains(&n) {
            return Err(call.usage_error());
        }
        for i in 1..=n {
            cx.reply(format!("line {i} of {n}"));
        }
        Ok(())
    }
}

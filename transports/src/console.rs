//! The console transport: talk to the bot in a terminal.
//!
//! It is the in-memory transport of the framework ([`opsbot::transport::memory`], the same one
//! the test kit drives) with standard input and output attached to its remote end. Each input
//! line is a direct message from the local user (sender id `console`), so commands work with or
//! without the prefix. End of input (Ctrl-D, or the end of a pipe) shuts the bot down gracefully:
//! it still says everything it has to say.

use std::io::{BufRead, IsTerminal, Write};

use opsbot::message::{Incoming, Sender};
use opsbot::rich::Style;
use opsbot::transport::memory::{self, MemoryTransport};
use opsbot::transport::{Identity, Limits, Link, SessionEnd, Transport, TransportError};

/// Longest input line kept; the rest of a longer line is cut off.
const MAX_INPUT: usize = 16 * 1024;

/// The console transport.
#[derive(Debug)]
pub struct Console {
    inner: MemoryTransport,
}

impl Console {
    /// A console on this process's stdin and stdout; `nick` is how the bot calls itself.
    pub fn stdio(nick: &str) -> Self {
        // Styles on a terminal, unless NO_COLOR asks for none (no-color.org); plain text into
        // a pipe or a file.
        let styled = std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        let limits = Limits {
            style: if styled { Style::Ansi } else { Style::Plain },
            ..Limits::unlimited(4096)
        };
        let (inner, remote) = memory::pair("console", nick, limits);
        let (input, mut output) = remote.split();
        let user = std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "you".into());
        std::thread::Builder::new()
            .name("console-in".into())
            .spawn(move || {
                let stdin = std::io::stdin();
                let mut lock = stdin.lock();
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match lock.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    buf.truncate(MAX_INPUT);
                    // Decode leniently: a stray Latin-1 byte must not end the session.
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']);
                    if line.trim().is_empty() {
                        continue;
                    }
                    let sender = Sender::with_name("console", user.as_str());
                    if !input.send(Incoming::direct(sender, line)) {
                        break;
                    }
                }
                // Dropping `input` tells the bot that input has ended.
            })
            .expect("spawn console reader");
        std::thread::Builder::new()
            .name("console-out".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                while let Some(said) = output.blocking_recv() {
                    let mut out = stdout.lock();
                    // A closed stdout (a pipe whose reader left) only loses the output.
                    let _ = writeln!(out, "{}", said.text).and_then(|()| out.flush());
                }
            })
            .expect("spawn console writer");
        Self { inner }
    }
}

impl Transport for Console {
    fn kind(&self) -> &'static str {
        "console"
    }

    fn limits(&self) -> Limits {
        self.inner.limits()
    }

    fn identity(&self) -> Identity {
        Identity::Address
    }

    async fn session(&mut self, link: &mut Link) -> Result<SessionEnd, TransportError> {
        self.inner.session(link).await
    }
}

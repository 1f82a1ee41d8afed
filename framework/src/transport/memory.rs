//! An in-memory transport: the bot on one side of two channels, a [`Remote`] on the other.
//!
//! The test kit drives bots through it, and the console transport is this transport with stdin
//! and stdout attached to the remote end, so both exercise the same code. The remote can also
//! break the connection ([`Remote::drop_connection`]) or refuse new ones ([`Remote::refuse`]),
//! which is how tests make a transport fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;

use super::{Identity, Limits, Link, SessionEnd, Transport, TransportError};
use crate::message::{Destination, Incoming};

/// A line the bot said, as the remote end sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Said {
    /// Where it went.
    pub dest: Destination,
    /// The line.
    pub text: String,
    /// Whether it is a formatted reply rendered for the transport's style.
    pub formatted: bool,
    /// The card it carries, on a transport with cards.
    pub card: Option<Arc<crate::card::Card>>,
    /// The id the transport gave it, when it gives ids.
    pub id: Option<String>,
    /// The id of the message it answers ([`crate::transport::Delivery::in_reply_to`]).
    pub in_reply_to: Option<Arc<str>>,
    /// When the transport wrote it (the moment it would have gone into a socket).
    pub at: std::time::Instant,
}

#[derive(Debug)]
enum Input {
    Message(Incoming),
    Drop(String),
    CutMidDelivery,
}

/// The bot's end.
#[derive(Debug)]
pub struct MemoryTransport {
    kind: &'static str,
    nick: String,
    limits: Limits,
    identity: Identity,
    input: mpsc::UnboundedReceiver<Input>,
    output: mpsc::UnboundedSender<Said>,
    refuse: Arc<AtomicBool>,
    input_open: bool,
    cut_next_delivery: bool,
    /// Lines written so far, when the transport names them (`m1`, `m2`, …) as a service with
    /// message ids does.
    ids: Option<u64>,
}

/// The other end: what a user (or a test) types, and what the bot said.
#[derive(Debug)]
pub struct Remote {
    input: mpsc::UnboundedSender<Input>,
    output: mpsc::UnboundedReceiver<Said>,
    refuse: Arc<AtomicBool>,
}

/// A connected pair. `kind` is how `!status` names the transport; `nick` the bot's own name.
pub fn pair(kind: &'static str, nick: &str, limits: Limits) -> (MemoryTransport, Remote) {
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let refuse = Arc::new(AtomicBool::new(false));
    (
        MemoryTransport {
            kind,
            nick: nick.to_owned(),
            limits,
            identity: Identity::Mask,
            input: in_rx,
            output: out_tx,
            refuse: refuse.clone(),
            input_open: true,
            cut_next_delivery: false,
            // A service with cards names its messages (their buttons need it).
            ids: limits.cards.then_some(0),
        },
        Remote {
            input: in_tx,
            output: out_rx,
            refuse,
        },
    )
}

impl Remote {
    /// Delivers a message to the bot. Returns false once the bot is gone.
    pub fn send(&self, msg: Incoming) -> bool {
        self.input.send(Input::Message(msg)).is_ok()
    }

    /// Breaks the current connection, as a network failure would.
    pub fn drop_connection(&self, why: &str) {
        let _ = self.input.send(Input::Drop(why.to_owned()));
    }

    /// Breaks the connection in the middle of the next line: the transport takes it from the
    /// outbox and dies before writing it, as a connection cut mid-answer does. The line must be
    /// sent after the reconnect.
    pub fn cut_mid_delivery(&self) {
        let _ = self.input.send(Input::CutMidDelivery);
    }

    /// Makes new connection attempts fail (true) or succeed again (false).
    pub fn refuse(&self, refuse: bool) {
        self.refuse.store(refuse, Ordering::SeqCst);
    }

    /// The next line the bot said; `None` once the bot has stopped.
    pub async fn recv(&mut self) -> Option<Said> {
        self.output.recv().await
    }

    /// A line the bot said, if one is waiting.
    pub fn try_recv(&mut self) -> Option<Said> {
        self.output.try_recv().ok()
    }

    /// Splits the remote into its input side and its output side, for a console that reads and
    /// writes on different threads.
    pub fn split(self) -> (RemoteInput, mpsc::UnboundedReceiver<Said>) {
        (RemoteInput { input: self.input }, self.output)
    }
}

/// The input side of a [`Remote`]; dropping it ends the bot's input.
#[derive(Debug)]
pub struct RemoteInput {
    input: mpsc::UnboundedSender<Input>,
}

impl RemoteInput {
    /// Delivers a message to the bot. Returns false once the bot is gone.
    pub fn send(&self, msg: Incoming) -> bool {
        self.input.send(Input::Message(msg)).is_ok()
    }
}

impl MemoryTransport {
    /// Matches admin entries as `identity` says (masks by default, so tests can stand in for
    /// IRC; the console uses addresses).
    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.identity = identity;
        self
    }

    /// Names each line it writes, `m1`, `m2`, … in the order written, as a service with
    /// message ids (Webex) does; without this, lines have no ids (as on IRC).
    pub fn with_ids(mut self) -> Self {
        self.ids = Some(0);
        self
    }
}

impl Transport for MemoryTransport {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    fn identity(&self) -> Identity {
        self.identity
    }

    async fn session(&mut self, link: &mut Link) -> Result<SessionEnd, TransportError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(TransportError::Refused(
                "connection refused by remote".into(),
            ));
        }
        link.set_nick(&self.nick);
        link.connected(format!("{} as {}", self.kind, self.nick));
        loop {
            tokio::select! {
                // What the remote did first is seen first: a cut or a drop asked for before a
                // line was posted applies to that line, as on a real connection.
                biased;
                msg = self.input.recv(), if self.input_open => match msg {
                    Some(Input::Message(m)) => link.incoming(m),
                    Some(Input::Drop(why)) => return Err(TransportError::Connection(why)),
                    Some(Input::CutMidDelivery) => self.cut_next_delivery = true,
                    None => {
                        self.input_open = false;
                        link.end_of_input();
                    }
                },
                delivery = link.next_delivery() => match delivery {
                    Some(d) if self.cut_next_delivery => {
                        self.cut_next_delivery = false;
                        // Taken, never written, never acknowledged.
                        drop(d);
                        return Err(TransportError::Connection("cut mid-delivery by test".into()));
                    }
                    Some(d) => {
                        let id = self.ids.as_mut().map(|n| {
                            *n += 1;
                            format!("m{n}")
                        });
                        let said = Said { dest: d.dest.clone(), text: d.text.clone(), formatted: d.formatted, card: d.card.clone(), id: id.clone(), in_reply_to: d.in_reply_to.clone(), at: std::time::Instant::now() };
                        if self.output.send(said).is_err() {
                            // Nobody listens any more; the line is gone with them.
                            tracing::debug!("remote end closed; line discarded");
                        }
                        match id {
                            Some(id) => d.done_as(id),
                            None => d.done(),
                        }
                    }
                    None => return Ok(SessionEnd::Finished),
                },
            }
        }
    }
}

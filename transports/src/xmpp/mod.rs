//! The XMPP transport: direct chats and multi-user rooms (XEP-0045) over one client stream.
//!
//! Built on `tokio-xmpp`'s XML stream (framing and typed stanzas from `xmpp-parsers`) and its
//! SASL step; everything after login is here, so that reconnecting stays the framework's:
//! resource binding, stream management (XEP-0198: acknowledgements, resumption), keep-alive
//! pings (XEP-0199), rooms (joins with history suppressed, the end of the replayed history,
//! kicks, nick conflicts, destroyed rooms) and the rules for what counts as a command.
//!
//! What may run as a command: a message with a body, of type chat, normal or groupchat, from
//! someone other than the bot, not stamped as delayed (XEP-0203: history and offline storage),
//! not a carbon or a forwarded copy, and, in a room, said after the room's subject arrived
//! (the subject ends the history a room replays on join, whatever the server made of our
//! request for none).

mod config;
mod conn;
mod depth;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use opsbot::message::{Destination, Incoming, Sender};
use opsbot::outbox::Rate;
use opsbot::transport::{Delivery, Limits, Link, SessionEnd, Transport, TransportError};
use tokio_xmpp::Stanza;
use tokio_xmpp::jid::{BareJid, FullJid, Jid};
use tokio_xmpp::minidom::Element;
use tokio_xmpp::parsers::bind::BindQuery;
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::message::{Id, Lang, Message, MessageType};
use tokio_xmpp::parsers::ns;
use tokio_xmpp::parsers::presence::{Presence, Type as PresenceType};
use tokio_xmpp::parsers::sm;
use tokio_xmpp::parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};
use tokio_xmpp::xmlstream::{
    FallibleStreamElement, ReadError, StreamElementError, Timeouts, XmppStreamElement,
};

use crate::common::{Removals, refusal_backoff};
pub use config::{MAX_MESSAGE_BYTES, XmppConfig};
use conn::Xml;

/// Bytes a message stanza adds to its text on the wire (element, `to`, `type`, `id`, `body`),
/// for the byte budget.
const MESSAGE_OVERHEAD: usize = 110;
/// The largest element read from the server; a larger one ends the connection rather than
/// the bot's memory.
const MAX_ELEMENT_BYTES: usize = 4 * 1024 * 1024;
/// Longest body taken as a command; longer ones are skipped (and logged).
const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// How long after its join a room without a subject counts as live anyway.
const SUBJECT_GRACE: Duration = Duration::from_secs(20);
/// Replies that may await the server's acknowledgement at once: with one, each reply waited a
/// round trip for the one before.
const WINDOW: usize = 8;
/// How many of our own message ids are remembered to recognise their reflections.
const OWN_IDS: usize = 256;
const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
const LEGACY_DELAY: &str = "jabber:x:delay";

/// Where we stand with one room.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Room {
    /// Presence due (`sent: None`) or sent and not yet answered, with the nick asked for;
    /// `refused` is the wait after the previous refusal when this join retries one.
    Joining {
        sent: Option<Instant>,
        nick: String,
        refused: Option<Duration>,
    },
    /// In the room as `nick`; `live` once the replayed history is over.
    Joined {
        nick: String,
        live: bool,
        since: Instant,
    },
    /// Removed (kicked, room destroyed); join again at the instant.
    Removed { rejoin_at: Instant, why: String },
    /// The room refused the join; retry at the instant.
    Refused {
        reason: String,
        retry_at: Instant,
        backoff: Duration,
    },
}

/// What a room needs at a tick.
enum Due {
    /// Send the join presence with this nick (and the wait after the refusal it retries).
    Join(String, Option<Duration>),
    /// The join went unanswered: a refusal.
    Unanswered(Option<Duration>),
    /// No subject came: the history is over.
    Live,
    /// Join again after a removal or a refusal.
    Rejoin(Option<Duration>),
}

/// Stream management (XEP-0198) state, kept across connections for resumption.
#[derive(Debug, Default)]
struct Sm {
    /// Resumption id, if the server allows resuming.
    resume_id: Option<String>,
    /// Stanzas received in this managed stream (our `h`).
    inbound: u32,
    /// Stanzas sent in this managed stream.
    outbound: u32,
    /// The server's last `h`: how many of ours it has.
    acked: u32,
    /// When our `<r/>` went out, while the server has not answered it.
    requested: Option<Instant>,
}

/// A reply written but not yet acknowledged by the server.
#[derive(Debug)]
struct Unacked {
    delivery: Delivery,
    stanza: Message,
    /// The value of `Sm::outbound` once it was sent.
    seq: u32,
}

/// The XMPP transport.
#[derive(Debug)]
pub struct Xmpp {
    cfg: XmppConfig,
    rooms: BTreeMap<BareJid, Room>,
    /// Per room: kicks and destructions, for the rejoin delay.
    removals: Removals<BareJid>,
    /// Rooms being joined: the outbox holds their lines until we are in.
    waiting: Arc<Mutex<BTreeSet<String>>>,
    sm: Option<Sm>,
    /// Replies written and not yet acknowledged, oldest first (at most [`WINDOW`]).
    unacked: VecDeque<Unacked>,
    counter: u64,
    resumed: u32,
    resent: u64,
    /// Rooms seen hiding real JIDs (logged once each).
    anonymous_rooms: BTreeSet<BareJid>,
    /// Stanzas emptied because they nested too deeply ([`depth`]).
    too_deep: Arc<std::sync::atomic::AtomicU64>,
    /// Recently sent message ids, to recognise our messages reflected by a room.
    own_ids: VecDeque<String>,
}

impl Xmpp {
    /// A transport for this config (checked with [`XmppConfig::problems`]).
    pub fn new(cfg: XmppConfig) -> Self {
        let nick = cfg.nick();
        let rooms = cfg
            .rooms
            .iter()
            .filter_map(|r| BareJid::new(r).ok())
            .map(|r| {
                (
                    r,
                    Room::Joining {
                        sent: None,
                        nick: nick.clone(),
                        refused: None,
                    },
                )
            })
            .collect();
        Self {
            cfg,
            rooms,
            removals: Removals::default(),
            waiting: Arc::default(),
            sm: None,
            unacked: VecDeque::new(),
            counter: 0,
            resumed: 0,
            resent: 0,
            too_deep: Arc::default(),
            anonymous_rooms: BTreeSet::new(),
            own_ids: VecDeque::new(),
        }
    }

    fn next_id(&mut self) -> String {
        self.counter += 1;
        format!("ob{:x}-{}", std::process::id(), self.counter)
    }

    fn sync_gate(&self) {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        w.clear();
        for (room, state) in &self.rooms {
            if matches!(state, Room::Joining { .. }) {
                w.insert(room.to_string());
            }
        }
    }

    fn limits_for(&self) -> Limits {
        Limits {
            max_line_bytes: self.cfg.max_message_bytes(),
            // Prosody's default c2s limit is 10 KiB/s with a 2 s burst, ejabberd's shaper
            // 3,000 B/s with a 20,000-byte burst in its default config; both slow a client
            // down by reading less, and neither counts stanzas. 8,000 B/s with a 16,000-byte
            // burst stays inside Prosody's; ten stanzas a second keeps chat readable.
            global: Some(Rate::new(10.0, 20)),
            global_bytes: Some(Rate::new(8000.0, 16_000)),
            line_overhead: MESSAGE_OVERHEAD,
            per_destination: None,
            multiline: true,
            // A reply is answered when the server acknowledges it (XEP-0198): a window keeps the
            // round trip from capping the pace; one connection keeps every room's order.
            window: WINDOW,
            window_per_destination: WINDOW,
        }
    }
}

/// An attribute name.
fn attr(name: &'static str) -> tokio_xmpp::minidom::rxml::NcName {
    tokio_xmpp::minidom::rxml::NcName::try_from(name).expect("a valid attribute name")
}

/// The first child of `el` named `name` in namespace `ns`.
fn child<'a>(el: &'a [Element], name: &str, ns: &str) -> Option<&'a Element> {
    el.iter().find(|e| e.is(name, ns))
}

/// The MUC status codes of a presence or message (`<x xmlns='…muc#user'><status code/>`).
fn muc_codes(payloads: &[Element]) -> Vec<u16> {
    child(payloads, "x", ns::MUC_USER)
        .map(|x| {
            x.children()
                .filter(|c| c.is("status", ns::MUC_USER))
                .filter_map(|c| c.attr("code")?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The `<item/>` of a MUC presence.
fn muc_item(payloads: &[Element]) -> Option<&Element> {
    child(payloads, "x", ns::MUC_USER)?.get_child("item", ns::MUC_USER)
}

/// The defined condition of a stanza's `<error/>`, as its element name.
fn error_condition(payloads: &[Element]) -> String {
    child(payloads, "error", ns::JABBER_CLIENT)
        .and_then(|e| e.children().find(|c| c.ns() == ns::XMPP_STANZAS))
        .map_or_else(|| "error".to_owned(), |c| c.name().to_owned())
}

fn body(m: &Message) -> Option<&String> {
    m.bodies
        .get(&Lang(String::new()))
        .or_else(|| m.bodies.values().next())
}

/// One connection.
struct Session<'a> {
    x: &'a mut Xmpp,
    link: &'a mut Link,
    stream: Xml,
    me: FullJid,
    bare: BareJid,
    ping_sent: Option<(String, Instant)>,
    peer: String,
    security: &'static str,
    occupants: HashMap<FullJid, BareJid>,
}

impl Session<'_> {
    /// Whether stream management is on for this connection.
    fn sm_on(&self) -> bool {
        self.x.sm.is_some()
    }

    async fn send(&mut self, el: XmppStreamElement) -> Result<(), TransportError> {
        let counts = matches!(el, XmppStreamElement::Stanza(_));
        self.stream.send(&el).await?;
        if counts && self.sm_on() {
            let sm = self.x.sm.get_or_insert_with(Sm::default);
            sm.outbound = sm.outbound.wrapping_add(1);
        }
        Ok(())
    }

    /// Sends one of the transport's own stanzas, charging it to the shared budget.
    async fn send_own(&mut self, stanza: Stanza, bytes: usize) -> Result<(), TransportError> {
        self.link.pacing().charge(bytes);
        self.send(XmppStreamElement::Stanza(stanza)).await
    }

    /// Asks the server how many of our stanzas it has; the answer must come within the ping
    /// timeout.
    async fn request_ack(&mut self) -> Result<(), TransportError> {
        self.link.pacing().charge_n(0, 30);
        self.send(XmppStreamElement::SM(sm::Nonza::Req(sm::R)))
            .await?;
        if let Some(sm) = self.x.sm.as_mut() {
            sm.requested.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    /// Takes the server's `h`: a reply is delivered once it is covered.
    fn on_ack(&mut self, h: u32) {
        let Some(sm) = self.x.sm.as_mut() else { return };
        sm.acked = h;
        sm.requested = None;
        while self
            .x
            .unacked
            .front()
            .is_some_and(|u| seq_covered(u.seq, h))
        {
            if let Some(u) = self.x.unacked.pop_front() {
                u.delivery.done();
            }
        }
    }

    fn publish(&mut self) {
        let now = Instant::now();
        let rooms: Vec<String> = self
            .x
            .rooms
            .iter()
            .map(|(r, s)| match s {
                Room::Joining { .. } => format!("{r} joining"),
                Room::Joined { nick, live, .. } => {
                    if *live {
                        format!("{r} joined as {nick}")
                    } else {
                        format!("{r} joined as {nick} (history)")
                    }
                }
                Room::Removed { rejoin_at, why } => format!(
                    "{r} {why}, rejoin in {}s",
                    rejoin_at.saturating_duration_since(now).as_secs()
                ),
                Room::Refused {
                    reason, retry_at, ..
                } => format!(
                    "{r} refused ({reason}), retry in {}s",
                    retry_at.saturating_duration_since(now).as_secs()
                ),
            })
            .collect();
        let acks = if self.sm_on() {
            let resumable = self.x.sm.as_ref().is_some_and(|s| s.resume_id.is_some());
            format!(
                "acks on{}; {} awaiting ack, {} resumed, {} re-sent",
                if resumable { " (resumable)" } else { "" },
                self.x.unacked.len(),
                self.x.resumed,
                self.x.resent
            )
        } else {
            "acks off (server has no stream management)".to_owned()
        };
        let rooms = if rooms.is_empty() {
            "no rooms".to_owned()
        } else {
            format!("rooms: {}", rooms.join(", "))
        };
        let too_deep = match self.x.too_deep.load(Ordering::Relaxed) {
            0 => String::new(),
            n => format!("; {n} stanzas nested too deeply emptied"),
        };
        self.link.set_detail(format!(
            "{} via {} ({}); {acks}; {rooms}{too_deep}",
            self.me, self.peer, self.security
        ));
        self.x.sync_gate();
    }

    /// Binds a resource and enables stream management, or resumes the previous stream.
    /// Answers whether the stream was resumed (rooms and presence are then as they were).
    async fn establish(
        &mut self,
        features: &tokio_xmpp::parsers::stream_features::StreamFeatures,
    ) -> Result<bool, TransportError> {
        let sm_offered = features.stream_management.is_some();
        // The id is taken out for the attempt: whatever goes wrong with it, the next
        // connection starts afresh instead of trying the same resumption again.
        let prev = self.x.sm.as_mut().and_then(|s| s.resume_id.take());
        if sm_offered && let Some(prev) = prev {
            let h = self.x.sm.as_ref().map_or(0, |s| s.inbound);
            self.stream
                .send(&XmppStreamElement::SM(sm::Nonza::Resume(sm::Resume {
                    h,
                    previd: sm::StreamId(prev.clone()),
                })))
                .await?;
            match conn::next(&mut self.stream).await? {
                XmppStreamElement::SM(sm::Nonza::Resumed(r)) => {
                    if let Some(sm) = self.x.sm.as_mut() {
                        sm.resume_id = Some(prev);
                    }
                    self.x.resumed += 1;
                    self.link
                        .heal_event("resumed", "stream resumed: rooms kept");
                    self.on_ack(r.h);
                    // What the server's count does not cover it never got: send it again on the
                    // resumed stream, in order, counting from the server's count.
                    if let Some(sm) = self.x.sm.as_mut() {
                        sm.outbound = r.h;
                    }
                    let lost: Vec<Unacked> = self.x.unacked.drain(..).collect();
                    let again = !lost.is_empty();
                    for u in lost {
                        self.send(XmppStreamElement::Stanza(u.stanza.clone().into()))
                            .await?;
                        let seq = self.x.sm.as_ref().map_or(0, |s| s.outbound);
                        self.x.resent += 1;
                        self.x.unacked.push_back(Unacked { seq, ..u });
                    }
                    if again {
                        self.request_ack().await?;
                    }
                    return Ok(true);
                }
                XmppStreamElement::SM(sm::Nonza::Failed(f)) => {
                    tracing::info!(?f.error, "stream resumption failed; starting afresh");
                    if let Some(h) = f.h {
                        while self
                            .x
                            .unacked
                            .front()
                            .is_some_and(|u| seq_covered(u.seq, h))
                        {
                            if let Some(u) = self.x.unacked.pop_front() {
                                u.delivery.done();
                            }
                        }
                    }
                }
                other => {
                    return Err(TransportError::Connection(format!(
                        "unexpected answer to resumption: {other:?}"
                    )));
                }
            }
        }
        self.x.sm = None;
        // Not known to have arrived: back to their places in the outbox's queues, to go out
        // once their rooms are joined again (with what was handed over after them, so that none
        // overtakes them). They may arrive twice; counted.
        self.link.return_pending();
        for u in self.x.unacked.drain(..) {
            self.x.resent += 1;
            drop(u.delivery);
        }
        let id = self.x.next_id();
        let resource = self.x.cfg.resource.clone();
        let bind = Iq::from_set(id.clone(), BindQuery::new(resource));
        self.stream
            .send(&XmppStreamElement::Stanza(bind.into()))
            .await?;
        loop {
            match conn::next(&mut self.stream).await? {
                XmppStreamElement::Stanza(Stanza::Iq(Iq::Result {
                    id: rid,
                    payload: Some(p),
                    ..
                })) if rid == id => {
                    let jid = p
                        .get_child("jid", ns::BIND)
                        .map(Element::text)
                        .and_then(|t| FullJid::new(&t).ok())
                        .ok_or_else(|| {
                            TransportError::Connection("the server bound no resource".into())
                        })?;
                    self.me = jid;
                    break;
                }
                XmppStreamElement::Stanza(Stanza::Iq(Iq::Error { id: rid, error, .. }))
                    if rid == id =>
                {
                    return Err(TransportError::Refused(format!(
                        "resource binding refused: {:?}",
                        error.defined_condition
                    )));
                }
                other => tracing::debug!(?other, "ignored while binding"),
            }
        }
        if sm_offered {
            self.stream
                .send(&XmppStreamElement::SM(sm::Nonza::Enable(sm::Enable {
                    max: None,
                    resume: true,
                })))
                .await?;
            loop {
                match conn::next(&mut self.stream).await? {
                    XmppStreamElement::SM(sm::Nonza::Enabled(e)) => {
                        self.x.sm = Some(Sm {
                            resume_id: e.resume.then_some(e.id).flatten().map(|i| i.0),
                            ..Sm::default()
                        });
                        break;
                    }
                    XmppStreamElement::SM(sm::Nonza::Failed(_)) => {
                        tracing::warn!("the server refused stream management");
                        break;
                    }
                    other => tracing::debug!(?other, "ignored while enabling acknowledgements"),
                }
            }
        }
        Ok(false)
    }
    async fn join(
        &mut self,
        room: BareJid,
        nick: String,
        refused: Option<Duration>,
    ) -> Result<(), TransportError> {
        let Ok(to) = room.with_resource_str(&nick) else {
            tracing::warn!(%room, %nick, "nick not usable in a JID");
            return Ok(());
        };
        let mut x = Element::builder("x", ns::MUC)
            .append(Element::builder("history", ns::MUC).attr(attr("maxstanzas"), "0"));
        if let Some(pw) = self.x.cfg.room_passwords.get(&room.to_string()) {
            x = x.append(Element::builder("password", ns::MUC).append(pw.expose()));
        }
        let presence = Presence::available()
            .with_to(to)
            .with_payloads(vec![x.build()]);
        self.x.rooms.insert(
            room,
            Room::Joining {
                sent: Some(Instant::now()),
                nick,
                refused,
            },
        );
        self.send_own(presence.into(), 200).await
    }

    async fn on_presence(&mut self, p: Presence) -> Result<(), TransportError> {
        let Some(Ok(from)) = p.from.clone().map(Jid::try_into_full) else {
            return Ok(());
        };
        let room = from.to_bare();
        let Some(state) = self.x.rooms.get(&room).cloned() else {
            return Ok(());
        };
        let nick = from.resource().to_string();
        let codes = muc_codes(&p.payloads);
        let own = codes.contains(&110);
        match p.type_ {
            PresenceType::Error => {
                let Room::Joining {
                    nick: asked,
                    refused,
                    ..
                } = state
                else {
                    return Ok(());
                };
                let cond = error_condition(&p.payloads);
                if cond == "conflict" {
                    let next = fallback_nick(&self.x.cfg.nick(), &asked);
                    self.link.heal_event(
                        "nick",
                        format!("{room}: nick {asked} is taken; joining as {next}"),
                    );
                    self.join(room, next, refused).await?;
                } else {
                    self.refused(room, cond, refused);
                }
            }
            PresenceType::None if own => {
                if codes.contains(&201) {
                    // We created the room; accept the default configuration so others can join.
                    let id = self.x.next_id();
                    let q = Element::builder("query", MUC_OWNER)
                        .append(
                            Element::builder("x", ns::DATA_FORMS)
                                .attr(attr("type"), "submit")
                                .build(),
                        )
                        .build();
                    let iq = Iq::Set {
                        from: None,
                        to: Some(Jid::from(room.clone())),
                        id,
                        payload: q,
                    };
                    self.send_own(iq.into(), 200).await?;
                }
                if matches!(state, Room::Joining { .. }) {
                    tracing::info!(%room, %nick, "joined");
                }
                let (live, since) = match state {
                    Room::Joined { live, since, .. } => (live, since),
                    _ => (false, Instant::now()),
                };
                self.link.set_nick(&nick);
                self.x
                    .rooms
                    .insert(room, Room::Joined { nick, live, since });
                self.publish();
            }
            PresenceType::Unavailable if own => {
                let item = muc_item(&p.payloads);
                if codes.contains(&303) {
                    // Our nick changed (by us or the service).
                    if let Some(new) = item.and_then(|i| i.attr("nick"))
                        && let Room::Joined { live, since, .. } = state
                    {
                        self.x.rooms.insert(
                            room,
                            Room::Joined {
                                nick: new.to_owned(),
                                live,
                                since,
                            },
                        );
                    }
                    return Ok(());
                }
                let destroyed = child(&p.payloads, "x", ns::MUC_USER)
                    .is_some_and(|x| x.get_child("destroy", ns::MUC_USER).is_some());
                let why = if destroyed {
                    "destroyed".to_owned()
                } else if codes.contains(&301) {
                    "banned".to_owned()
                } else if codes.contains(&307) {
                    "kicked".to_owned()
                } else if codes.contains(&321) || codes.contains(&322) {
                    "removed (members only)".to_owned()
                } else if codes.contains(&332) {
                    "closed (service shut down)".to_owned()
                } else {
                    "left".to_owned()
                };
                let reason = item
                    .and_then(|i| i.get_child("reason", ns::MUC_USER))
                    .map(Element::text)
                    .unwrap_or_default();
                if why == "banned" {
                    let reason = format!("banned {reason}").trim_end().to_owned();
                    self.refused(room, reason, None);
                    return Ok(());
                }
                let delay = self
                    .x
                    .removals
                    .delay(room.clone(), self.x.cfg.rejoin_delay());
                self.link.heal_event(
                    "removed",
                    format!(
                        "{room}: {why}{}; rejoining in {}s",
                        if reason.is_empty() {
                            String::new()
                        } else {
                            format!(" ({reason})")
                        },
                        delay.as_secs()
                    ),
                );
                self.x.rooms.insert(
                    room,
                    Room::Removed {
                        rejoin_at: Instant::now() + delay,
                        why,
                    },
                );
                self.publish();
            }
            PresenceType::None => {
                if let Some(real) = muc_item(&p.payloads)
                    .and_then(|i| i.attr("jid"))
                    .and_then(|j| Jid::new(j).ok())
                {
                    self.occupants.insert(from, real.to_bare());
                }
            }
            PresenceType::Unavailable => {
                self.occupants.remove(&from);
            }
            _ => {}
        }
        Ok(())
    }

    /// The room refused the bot; `previous` is the wait after the refusal before, if this
    /// join retried one.
    fn refused(&mut self, room: BareJid, reason: String, previous: Option<Duration>) {
        let backoff = refusal_backoff(previous, self.x.cfg.join_retry());
        self.link.heal_event(
            "refused",
            format!(
                "{room} refused the bot ({reason}); retrying in {}s",
                backoff.as_secs()
            ),
        );
        self.x.rooms.insert(
            room,
            Room::Refused {
                reason,
                retry_at: Instant::now() + backoff,
                backoff,
            },
        );
        self.publish();
    }

    fn on_message(&mut self, m: Message) {
        let Some(from) = m.from.clone() else { return };
        if matches!(m.type_, MessageType::Error | MessageType::Headline) {
            return;
        }
        let room = from.to_bare();
        if m.type_ == MessageType::Groupchat
            && !m.subjects.is_empty()
            && (from.resource().is_none() || body(&m).is_none())
            && let Some(Room::Joined { live, .. }) = self.x.rooms.get_mut(&room)
        {
            // The subject ends the history the room replays on join.
            *live = true;
            self.publish();
            return;
        }
        let Some(text) = body(&m) else { return };
        if m.payloads.iter().any(|p| {
            p.is("delay", ns::DELAY)
                || p.is("x", LEGACY_DELAY)
                || p.ns() == ns::CARBONS
                || p.is("forwarded", ns::FORWARD)
        }) {
            return;
        }
        if room == self.bare {
            // Our own account: a copy of something we sent, or a forgery.
            tracing::debug!(%from, "message from the bot's own account ignored");
            return;
        }
        if text.len() > MAX_COMMAND_BYTES {
            tracing::warn!(%from, bytes = text.len(), "message too long to be a command; ignored");
            return;
        }
        let id = m.id.as_ref().map(|i| i.0.clone());
        if id.as_ref().is_some_and(|i| self.x.own_ids.contains(i)) {
            return;
        }
        let incoming = match (
            m.type_.clone(),
            self.x.rooms.get(&room),
            from.clone().try_into_full(),
        ) {
            (MessageType::Groupchat, Some(Room::Joined { nick, live, .. }), Ok(occ)) => {
                if !live || occ.resource().as_str() == nick {
                    return;
                }
                let name = occ.resource().to_string();
                Incoming::in_room(room.to_string(), self.occupant(&occ, name), text.clone())
            }
            (MessageType::Groupchat, _, _) => return,
            (_, Some(_), Ok(occ)) => {
                // A private message through a room: answered privately, through the room.
                let name = occ.to_string();
                Incoming::direct(self.occupant(&occ, name), text.clone())
            }
            (_, Some(_), Err(_)) => return,
            (_, None, _) => Incoming::direct(
                Sender::with_name(room.to_string(), from.to_string()),
                text.clone(),
            ),
        };
        self.link.incoming(Incoming { id, ..incoming });
    }

    /// Who an occupant of a room is: their real JID when the room shows it (verified), else
    /// their occupant address, which holds a nick anyone can choose (unverified: it never
    /// matches an admin entry). A room that hides real JIDs is logged once.
    fn occupant(&mut self, occ: &FullJid, name: String) -> Sender {
        if let Some(real) = self.occupants.get(occ) {
            return Sender::with_name(real.to_string(), name);
        }
        let room = occ.to_bare();
        if self.x.anonymous_rooms.insert(room.clone()) {
            tracing::info!(
                %room,
                "the room hides its occupants' real JIDs: no one speaking there has admin rights \
                 (make the room non-anonymous, or the bot a moderator, to let admins act there)"
            );
        }
        Sender::unverified(occ.to_string(), name)
    }

    async fn on_iq(&mut self, iq: Iq) -> Result<(), TransportError> {
        match iq {
            Iq::Get {
                from, id, payload, ..
            } => {
                if payload.is("ping", ns::PING) {
                    let result = Iq::Result {
                        from: None,
                        to: from,
                        id,
                        payload: None,
                    };
                    self.send_own(result.into(), 80).await?;
                } else {
                    self.refuse_iq(from, id).await?;
                }
            }
            Iq::Set { from, id, .. } => self.refuse_iq(from, id).await?,
            Iq::Result { id, .. } | Iq::Error { id, .. } => {
                if self.ping_sent.as_ref().is_some_and(|(p, _)| *p == id) {
                    self.ping_sent = None;
                }
            }
        }
        Ok(())
    }

    async fn refuse_iq(&mut self, from: Option<Jid>, id: String) -> Result<(), TransportError> {
        let error = StanzaError::new(
            ErrorType::Cancel,
            DefinedCondition::ServiceUnavailable,
            "en",
            "not supported",
        );
        let iq = Iq::Error {
            from: None,
            to: from,
            id,
            error,
            payload: None,
        };
        self.send_own(iq.into(), 200).await
    }

    async fn deliver(&mut self, d: Delivery) -> Result<(), TransportError> {
        let (to, type_) = match d.dest.paced_as() {
            Destination::Room(name) | Destination::Thread { room: name, .. } => {
                let Ok(room) = BareJid::new(&name) else {
                    d.undeliverable(format!("{name} is not a room JID"));
                    return Ok(());
                };
                match self.x.rooms.get(&room) {
                    None => {
                        d.undeliverable(format!("{name} is not a configured room"));
                        return Ok(());
                    }
                    Some(Room::Joining { .. }) => {
                        d.hold(Duration::from_secs(1));
                        return Ok(());
                    }
                    Some(Room::Joined { .. }) => {}
                    Some(_) => {
                        d.undeliverable(format!("not in {name}"));
                        return Ok(());
                    }
                }
                (Jid::from(room), MessageType::Groupchat)
            }
            Destination::User(name) => match Jid::new(&name) {
                Ok(j) if j.node().is_some() => (j, MessageType::Chat),
                _ => {
                    d.undeliverable(format!("{name} is not a JID"));
                    return Ok(());
                }
            },
        };
        let id = self.x.next_id();
        let mut msg = Message::new_with_type(type_, Some(to.clone()))
            .with_body(Lang(String::new()), d.text.clone());
        msg.id = Some(Id(id.clone()));
        if to.try_as_full().is_ok() && self.x.rooms.contains_key(&to.to_bare()) {
            // A private message through a room carries the MUC user marker.
            msg.payloads
                .push(Element::builder("x", ns::MUC_USER).build());
        }
        self.x.own_ids.push_back(id);
        if self.x.own_ids.len() > OWN_IDS {
            self.x.own_ids.pop_front();
        }
        self.send(XmppStreamElement::Stanza(msg.clone().into()))
            .await?;
        if self.sm_on() {
            let seq = self.x.sm.as_ref().map_or(0, |s| s.outbound);
            self.x.unacked.push_back(Unacked {
                delivery: d,
                stanza: msg,
                seq,
            });
            self.request_ack().await?;
        } else {
            d.done();
        }
        Ok(())
    }

    async fn tick(&mut self) -> Result<(), TransportError> {
        let now = Instant::now();
        let timeout = self.x.cfg.ping_timeout();
        if let Some(sm) = &self.x.sm {
            match sm.requested {
                Some(at) if now.duration_since(at) > timeout => {
                    return Err(TransportError::Connection(format!(
                        "no answer from the server within {}s (acknowledgement)",
                        timeout.as_secs()
                    )));
                }
                // Our own stanzas (presences, pings) the server has not yet counted: ask, so
                // that what the server has is known before the next drop.
                None if sm.acked != sm.outbound => self.request_ack().await?,
                _ => {}
            }
        }
        let mut due = Vec::new();
        for (room, state) in &self.x.rooms {
            let action = match state {
                Room::Joining {
                    sent: None,
                    nick,
                    refused,
                } => Due::Join(nick.clone(), *refused),
                Room::Joining {
                    sent: Some(at),
                    refused,
                    ..
                } if now.duration_since(*at) > self.x.cfg.join_timeout() => {
                    Due::Unanswered(*refused)
                }
                Room::Joined {
                    live: false, since, ..
                } if now.duration_since(*since) > SUBJECT_GRACE => Due::Live,
                Room::Removed { rejoin_at, .. } if now >= *rejoin_at => Due::Rejoin(None),
                Room::Refused {
                    retry_at, backoff, ..
                } if now >= *retry_at => Due::Rejoin(Some(*backoff)),
                _ => continue,
            };
            due.push((room.clone(), action));
        }
        for (room, action) in due {
            match action {
                Due::Join(nick, refused) => self.join(room, nick, refused).await?,
                Due::Unanswered(refused) => {
                    self.refused(room, "no answer to the join".into(), refused);
                }
                Due::Live => {
                    if let Some(Room::Joined { live, .. }) = self.x.rooms.get_mut(&room) {
                        // No subject came: the history is surely over by now.
                        *live = true;
                    }
                }
                Due::Rejoin(refused) => {
                    self.link
                        .heal_event("rejoin", format!("joining {room} again"));
                    let nick = self.x.cfg.nick();
                    self.join(room, nick, refused).await?;
                }
            }
            self.publish();
        }
        Ok(())
    }

    async fn ping(&mut self) -> Result<(), TransportError> {
        if self.ping_sent.is_some() {
            return Ok(());
        }
        let id = self.x.next_id();
        let mut iq = Iq::from_get(id.clone(), tokio_xmpp::parsers::ping::Ping);
        set_iq_to(&mut iq, Jid::from(self.bare.domain().to_owned()));
        self.send_own(iq.into(), 100).await?;
        self.ping_sent = Some((id, Instant::now()));
        Ok(())
    }

    async fn on_element(&mut self, el: FallibleStreamElement) -> Result<(), TransportError> {
        let el = match el {
            FallibleStreamElement::Ok(el) => el,
            FallibleStreamElement::Err(e) => {
                if matches!(e, StreamElementError::InvalidStanza { .. }) {
                    self.count_inbound();
                }
                tracing::warn!(error = %e, "unreadable element from the server skipped");
                return Ok(());
            }
        };
        match el {
            XmppStreamElement::Stanza(s) => {
                self.count_inbound();
                match s {
                    Stanza::Message(m) => self.on_message(m),
                    Stanza::Presence(p) => self.on_presence(p).await?,
                    Stanza::Iq(iq) => self.on_iq(iq).await?,
                }
            }
            XmppStreamElement::SM(sm::Nonza::Req(_)) => {
                let h = self.x.sm.as_ref().map_or(0, |s| s.inbound);
                self.link.pacing().charge_n(0, 40);
                self.stream
                    .send(&XmppStreamElement::SM(sm::Nonza::Ack(sm::A { h })))
                    .await?;
            }
            XmppStreamElement::SM(sm::Nonza::Ack(a)) => {
                self.on_ack(a.h);
                if !self.x.unacked.is_empty() {
                    self.request_ack().await?;
                } else {
                    // Answer with our own count (XEP-0198 allows an <a/> at any time): the
                    // server's <a/> otherwise waits for a delayed TCP acknowledgement, and a
                    // server that does not disable Nagle's algorithm (Prosody) then holds its
                    // next stanza to us until that comes, up to 40 ms on Linux.
                    let h = self.x.sm.as_ref().map_or(0, |s| s.inbound);
                    self.link.pacing().charge_n(0, 40);
                    self.stream
                        .send(&XmppStreamElement::SM(sm::Nonza::Ack(sm::A { h })))
                        .await?;
                }
            }
            XmppStreamElement::StreamError(e) => return Err(conn::stream_error(&e.0)),
            other => tracing::debug!(?other, "unexpected element ignored"),
        }
        Ok(())
    }

    fn count_inbound(&mut self) {
        if let Some(sm) = self.x.sm.as_mut() {
            sm.inbound = sm.inbound.wrapping_add(1);
        }
    }
}

/// Whether an acknowledgement `h` covers the stanza numbered `seq` (both counted modulo 2^32).
fn seq_covered(seq: u32, h: u32) -> bool {
    h.wrapping_sub(seq) < u32::MAX / 2
}

fn set_iq_to(iq: &mut Iq, jid: Jid) {
    match iq {
        Iq::Get { to, .. } | Iq::Set { to, .. } | Iq::Result { to, .. } | Iq::Error { to, .. } => {
            *to = Some(jid);
        }
    }
}

/// The nick to try after `taken`: the configured one with `_`, then with `__`, then with a
/// number.
fn fallback_nick(base: &str, taken: &str) -> String {
    if taken == base {
        format!("{base}_")
    } else if taken == format!("{base}_") {
        format!("{base}__")
    } else {
        format!("{base}{}", fastrand::u16(100..1000))
    }
}

impl Transport for Xmpp {
    fn kind(&self) -> &'static str {
        "xmpp"
    }

    fn limits(&self) -> Limits {
        self.limits_for()
    }

    async fn session(&mut self, link: &mut Link) -> Result<SessionEnd, TransportError> {
        let timeouts = Timeouts {
            read_timeout: self.cfg.ping_interval(),
            response_timeout: self.cfg.ping_timeout(),
        };
        let connect_timeout = self.cfg.connect_timeout();
        let logged_in = tokio::time::timeout(
            connect_timeout,
            conn::login(
                &self.cfg,
                timeouts,
                MAX_ELEMENT_BYTES,
                self.too_deep.clone(),
            ),
        )
        .await
        .map_err(|_| {
            TransportError::Connection(format!(
                "logging in to {} timed out after {}s",
                self.cfg.host(),
                connect_timeout.as_secs()
            ))
        })??;
        link.pacing().set_limits(&self.limits_for());
        let waiting = self.waiting.clone();
        link.pacing()
            .set_gate(Some(Arc::new(move |dest| match dest {
                Destination::Room(name) | Destination::Thread { room: name, .. } => !waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(name.as_ref()),
                Destination::User(_) => true,
            })));
        let bare = self.cfg.bare_jid();
        let me = bare
            .with_resource_str(self.cfg.resource.as_deref().unwrap_or("opsbot"))
            .unwrap_or_else(|_| bare.with_resource_str("opsbot").expect("valid"));
        let received = logged_in.received.clone();
        let features = logged_in.features;
        let nick = self.cfg.nick();
        let mut s = Session {
            x: self,
            link,
            stream: logged_in.stream,
            me,
            bare,
            ping_sent: None,
            peer: logged_in.peer,
            security: logged_in.security,
            occupants: HashMap::new(),
        };
        let resumed = tokio::time::timeout(connect_timeout, s.establish(&features))
            .await
            .map_err(|_| TransportError::Connection("binding a resource timed out".into()))??;
        if !resumed {
            let nick = s.x.cfg.nick();
            for state in s.x.rooms.values_mut() {
                *state = Room::Joining {
                    sent: None,
                    nick: nick.clone(),
                    refused: None,
                };
            }
            s.send_own(Presence::available().into(), 60).await?;
        }
        s.publish();
        s.link.set_nick(&nick);
        let detail_me = s.me.clone();
        s.link.connected(format!("{detail_me} via {}", s.peer));
        s.publish();
        s.tick().await?;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                el = s.stream.next() => match el {
                    None | Some(Err(ReadError::StreamFooterReceived)) => {
                        return Err(TransportError::Connection("the server closed the stream".into()));
                    }
                    Some(Err(ReadError::SoftTimeout)) => s.ping().await?,
                    Some(Err(ReadError::HardError(e))) => {
                        if e.kind() == std::io::ErrorKind::TimedOut {
                            return Err(TransportError::Connection(format!(
                                "no answer from the server within {}s (keep-alive)",
                                s.x.cfg.ping_timeout().as_secs()
                            )));
                        }
                        return Err(e.into());
                    }
                    Some(Err(ReadError::ParseError(e))) => {
                        received.store(0, Ordering::Relaxed);
                        tracing::warn!(error = %e, "unreadable element from the server skipped");
                    }
                    Some(Ok(el)) => {
                        received.store(0, Ordering::Relaxed);
                        s.ping_sent = None;
                        s.on_element(el).await?;
                    }
                },
                d = s.link.next_delivery(), if s.x.unacked.len() < WINDOW => match d {
                    Some(d) => s.deliver(d).await?,
                    None => {
                        // Shutting down: give the server a moment to acknowledge the last
                        // reply, then close the stream.
                        let _ = tokio::time::timeout(Duration::from_secs(2), async {
                            while !s.x.unacked.is_empty() {
                                match s.stream.next().await {
                                    Some(Ok(el)) => { let _ = s.on_element(el).await; }
                                    Some(Err(ReadError::SoftTimeout)) => {}
                                    _ => break,
                                }
                            }
                        }).await;
                        let _ = s.send_own(Presence::unavailable().into(), 60).await;
                        let _ = s.stream.shutdown().await;
                        return Ok(SessionEnd::Finished);
                    }
                },
                _ = tick.tick() => {
                    s.tick().await?;
                    s.publish();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_count_modulo_two_to_the_32() {
        assert!(seq_covered(5, 5));
        assert!(seq_covered(5, 9));
        assert!(!seq_covered(5, 4));
        assert!(seq_covered(u32::MAX, 2));
        assert!(!seq_covered(2, u32::MAX));
    }

    #[test]
    fn fallback_nicks_grow_then_take_a_number() {
        assert_eq!(fallback_nick("bot", "bot"), "bot_");
        assert_eq!(fallback_nick("bot", "bot_"), "bot__");
        let n = fallback_nick("bot", "bot__");
        assert!(n.starts_with("bot") && n[3..].parse::<u16>().is_ok(), "{n}");
    }
}

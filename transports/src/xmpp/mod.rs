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

mod acks;
mod config;
mod conn;
mod depth;
mod dispatch;
mod rooms;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use opsbot::message::{Destination, Incoming, Sender};
use opsbot::pacing::Rate;
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

use crate::common::Removals;
use crate::membership::Membership;
use acks::*;
pub use config::{MAX_MESSAGE_BYTES, XmppConfig};
use conn::Xml;
use dispatch::*;
use rooms::*;

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
            .map(|r| (r, Room::due(nick.clone(), None)))
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
            // XEP-0393: plain text that clients style, so a client without it reads it too.
            style: opsbot::rich::Style::XmppStyling,
            cards: false,
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

/// The defined condition of a stanza's `<error/>`, as its element name.
fn error_condition(payloads: &[Element]) -> String {
    child(payloads, "error", ns::JABBER_CLIENT)
        .and_then(|e| e.children().find(|c| c.ns() == ns::XMPP_STANZAS))
        .map_or_else(|| "error".to_owned(), |c| c.name().to_owned())
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
    /// When to ask the server for its count of our stanzas (see [`Session::ack_later`]).
    ack_due: Option<Instant>,
    /// When to answer the server's question for our count of its stanzas.
    answer_due: Option<Instant>,
}

impl Session<'_> {
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

    fn publish(&mut self) {
        let rooms: Vec<String> = self
            .x
            .rooms
            .iter()
            .map(|(r, s)| {
                s.describe(&r.to_string(), |j| {
                    if j.live {
                        format!("{r} joined as {}", j.nick)
                    } else {
                        format!("{r} joined as {} (history)", j.nick)
                    }
                })
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
                    Some(Membership::Joining { .. }) => {
                        d.hold(Duration::from_secs(1));
                        return Ok(());
                    }
                    Some(Membership::Joined(_)) => {}
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
            self.ack_later().await?;
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
                Membership::Joining {
                    sent: None,
                    asked,
                    retrying,
                } => Due::Join(asked.clone(), *retrying),
                s if s.unanswered(now, self.x.cfg.join_timeout()) => Due::Unanswered,
                Membership::Joined(InRoom {
                    live: false, since, ..
                }) if now.duration_since(*since) > SUBJECT_GRACE => Due::Live,
                s if s.rejoin_due(now) => Due::Rejoin(s.retrying()),
                _ => continue,
            };
            due.push((room.clone(), action));
        }
        for (room, action) in due {
            match action {
                Due::Join(nick, refused) => self.join(room, nick, refused).await?,
                Due::Unanswered => self.refused(room, "no answer to the join".into()),
                Due::Live => {
                    if let Some(Membership::Joined(InRoom { live, .. })) =
                        self.x.rooms.get_mut(&room)
                    {
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
}

impl Transport for Xmpp {
    fn kind(&self) -> &'static str {
        "xmpp"
    }

    fn lead_lost(&mut self) {
        // Another process speaks for the bot now: no stream of ours to resume, and the
        // replies the server had not acknowledged go back to the outbox, which drops them.
        self.sm = None;
        self.unacked.clear();
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
            ack_due: None,
            answer_due: None,
        };
        let resumed = tokio::time::timeout(connect_timeout, s.establish(&features))
            .await
            .map_err(|_| TransportError::Connection("binding a resource timed out".into()))??;
        if !resumed {
            let nick = s.x.cfg.nick();
            for state in s.x.rooms.values_mut() {
                *state = Room::due(nick.clone(), None);
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
            let ack_due = s.ack_due;
            let answer_due = s.answer_due;
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
                        if !s.x.unacked.is_empty() {
                            s.request_ack().await?;
                        }
                        let _ = tokio::time::timeout(Duration::from_secs(2), async {
                            while !s.x.unacked.is_empty() {
                                match s.stream.next().await {
                                    Some(Ok(el)) => { let _ = s.on_element(el).await; }
                                    Some(Err(ReadError::SoftTimeout)) => {}
                                    _ => break,
                                }
                            }
                        }).await;
                        if s.answer_due.is_some() {
                            // What the server sent is had: it must not offer it elsewhere.
                            let _ = s.answer().await;
                        }
                        let _ = s.send_own(Presence::unavailable().into(), 60).await;
                        let _ = s.stream.shutdown().await;
                        return Ok(SessionEnd::Finished);
                    }
                },
                _ = tokio::time::sleep_until(ack_due.unwrap_or_else(Instant::now).into()),
                    if ack_due.is_some() => s.request_ack().await?,
                _ = tokio::time::sleep_until(answer_due.unwrap_or_else(Instant::now).into()),
                    if answer_due.is_some() => s.answer().await?,
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

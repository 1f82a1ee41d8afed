//! The outbox: the only way out of a bot.
//!
//! Every line a handler, poller or the router says arrives here as a [`Say`]. The outbox
//! 1. collapses loops: the same text to the same destination more than `loop_repeats` times in
//!    `loop_window` is dropped, so two bots cannot ping-pong forever;
//! 2. sanitizes and splits the text ([`crate::text::split_lines`]) to the transport's line limit;
//! 3. queues lines per destination in a bounded queue, and when it must drop, says so once
//!    (`… 37 lines dropped`) after the destination's backlog has gone out;
//! 4. paces them with GCRA limiters (governor): one keyed per destination, and global ones for
//!    lines and for bytes (long lines cost more, as servers with byte budgets count them), taking
//!    destinations round-robin so a long answer in one room does not starve another. The global
//!    limiters live in a shared [`Pacing`] handle: the transport charges its own protocol traffic
//!    (keep-alives, joins) to the same budget and can switch to a server-specific profile once it
//!    knows what it is talking to;
//! 5. hands lines to the transport in order, at most the transport's *window* of them
//!    unacknowledged at once ([`crate::pacing::Limits::window`], one by default, and at most
//!    [`crate::pacing::Limits::window_per_destination`] for one destination), so the backlog lives here, not in
//!    a socket buffer. A line in flight keeps its place in its destination's queue: one the
//!    transport could not send (disconnected) or asked to hold becomes a waiting line again where
//!    it was, so after a reconnect a destination's lines go out in their order, none lost and
//!    none twice.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use governor::clock::Clock;
use tokio::sync::{mpsc, oneshot};

use crate::card::Card;
use crate::cards::{CardBook, CardRecord};
use crate::health::Health;
use crate::lead::Lead;
use crate::message::{Destination, Outgoing};
use crate::pacing::{GATE_RECHECK, OutboxOptions, Pacing};
use crate::rich::Style;
use crate::supervisor::{CoreGuard, fault_point};
use crate::transport::{Ack, Delivery, Recall};

/// Something to say; with a receipt, which learns the id the service gave its first line.
#[derive(Debug)]
pub(crate) struct Say(pub(crate) Outgoing, pub(crate) Option<Receipt>);

/// Told the id the service gave a message's first line once it is written; dropped unanswered
/// when that line is never written (dropped, undeliverable, lost at shutdown).
pub(crate) type Receipt = oneshot::Sender<Option<Arc<str>>>;

impl Say {
    pub(crate) fn new(out: Outgoing) -> Self {
        Self(out, None)
    }
}

impl Message for Say {
    type Result = ();
}

/// Asks the outbox to finish what it has within `deadline`; answers how many lines were lost.
#[derive(Debug)]
pub(crate) struct Drain(pub(crate) Duration);

impl Message for Drain {
    type Result = usize;
}

/// Why a line handed to the transport was not sent.
#[derive(Debug)]
enum Undelivered {
    /// The transport is gone for good (shutdown).
    TransportGone,
    /// The shutdown deadline passed before the line's turn (counted as lost).
    Closed,
    /// The session died before writing it: send it again after the reconnect.
    Unacknowledged,
    /// The transport refused it for its destination.
    Dropped,
    /// The destination is not ready; try again after the wait.
    Held(Duration),
    /// This process lost the bot's lead before the line was handed over: dropped.
    Standby,
}

/// Whether a destination's name could ever be an address: not empty, and no whitespace or
/// control characters (which a protocol would read as the end of the target or of the line).
pub(crate) fn valid_destination(dest: &Destination) -> bool {
    let name = dest.name();
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A line as the transport gets it: its text, and whether it is formatted (rendered from a
/// [`crate::rich::Rich`] for the transport's style, codes and all) or plain.
#[derive(Clone, Debug)]
struct Text {
    body: String,
    formatted: bool,
    /// A card sent with `body` (its fallback) as one message, and the handler whose commands
    /// its buttons run.
    card: Option<(Arc<Card>, Arc<str>)>,
    /// The message this line answers (on the first line of a reply only).
    in_reply_to: Option<Arc<str>>,
}

impl Text {
    fn plain(body: String) -> Self {
        Self {
            body,
            formatted: false,
            card: None,
            in_reply_to: None,
        }
    }
}

/// One line in a destination's queue: waiting, or in the transport's hands (`flight` is the
/// hand-over's number), in which case it keeps its place until the transport answers.
#[derive(Debug)]
struct Entry {
    line: Text,
    flight: Option<u64>,
    receipt: Option<Receipt>,
}

/// A line chosen to go out, waiting for its turn at the global pace.
#[derive(Debug)]
struct Handing {
    flight: u64,
    dest: Destination,
    line: Text,
    stamp: u64,
}

/// The outbox actor.
#[derive(Debug)]
pub(crate) struct Outbox {
    opts: OutboxOptions,
    queues: HashMap<Destination, VecDeque<Entry>>,
    /// Destinations with a waiting line, round-robin.
    rotation: VecDeque<Destination>,
    /// Waiting lines (not in flight), over all destinations.
    queued: usize,
    dropped: HashMap<Destination, u64>,
    recent: HashMap<(Destination, String), VecDeque<Instant>>,
    /// Destinations the transport asked to wait (a room still being joined), and until when.
    held: HashMap<Destination, Instant>,
    pacing: Pacing,
    transport: mpsc::Sender<Delivery>,
    /// Lines chosen and not yet answered by the transport (handing or in its hands).
    in_flight: usize,
    /// The same, per destination.
    flights: HashMap<Destination, usize>,
    next_flight: u64,
    /// Chosen lines waiting for the global pace, handed on one at a time, in order.
    to_hand: VecDeque<Handing>,
    handing: bool,
    /// Set when a line came back unanswered (the session died): nothing more is chosen until
    /// every line in flight has been answered, so that all that come back take their places
    /// before any line after them goes out.
    returning: bool,
    /// Shared with the link: how many times a line came back; `stamp` is the count this
    /// outbox has caught up with (every line in flight answered since), given to each line it
    /// chooses.
    recall: Recall,
    stamp: u64,
    scheduled: bool,
    /// Set when a shutdown's deadline has passed: nothing more is handed to the transport.
    closed: Arc<std::sync::atomic::AtomicBool>,
    drain_waiters: Vec<oneshot::Sender<()>>,
    health: Health,
    guard: CoreGuard,
    lead: Lead,
    /// How many times the lead was lost: a line whose handing began before a loss is dropped
    /// even when the lead is back by the time its turn comes.
    lead_losses: Arc<std::sync::atomic::AtomicU64>,
    /// The cards posted, for their buttons.
    cards: Arc<CardBook>,
}

impl Outbox {
    /// An outbox handing lines to `transport`, whose returned lines `recall` counts.
    pub(crate) fn new(
        opts: OutboxOptions,
        pacing: Pacing,
        (transport, recall): (mpsc::Sender<Delivery>, Recall),
        health: Health,
        guard: CoreGuard,
        lead: Lead,
        cards: Arc<CardBook>,
    ) -> Self {
        Self {
            opts,
            queues: HashMap::new(),
            rotation: VecDeque::new(),
            queued: 0,
            dropped: HashMap::new(),
            recent: HashMap::new(),
            held: HashMap::new(),
            pacing,
            transport,
            in_flight: 0,
            flights: HashMap::new(),
            next_flight: 0,
            to_hand: VecDeque::new(),
            handing: false,
            returning: false,
            stamp: recall.current(),
            recall,
            scheduled: false,
            closed: Arc::default(),
            drain_waiters: Vec::new(),
            health,
            guard,
            lead,
            lead_losses: Arc::default(),
            cards,
        }
    }

    /// The anti-loop guard: true when this text may go out.
    fn loop_guard(&mut self, dest: &Destination, text: &str) -> bool {
        if self.opts.loop_repeats == 0 {
            return true;
        }
        let now = Instant::now();
        let window = self.opts.loop_window;
        let seen = self
            .recent
            .entry((dest.clone(), text.to_owned()))
            .or_default();
        while seen
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            seen.pop_front();
        }
        if seen.len() as u32 >= self.opts.loop_repeats {
            return false;
        }
        seen.push_back(now);
        true
    }

    fn enqueue(
        &mut self,
        dest: Destination,
        line: Text,
        receipt: Option<Receipt>,
        force: bool,
    ) -> bool {
        if !force && self.queued >= self.opts.queue {
            *self.dropped.entry(dest).or_default() += 1;
            return false;
        }
        if !self.rotation.contains(&dest) {
            self.rotation.push_back(dest.clone());
        }
        self.queues.entry(dest).or_default().push_back(Entry {
            line,
            flight: None,
            receipt,
        });
        self.queued += 1;
        true
    }

    fn publish(&self) {
        let queued = self.queued;
        self.health.update_outbox(|o| o.queued = queued);
    }

    /// Takes the next waiting line whose destination may have one more in flight and whose
    /// limiter allows it, round-robin, and marks it in flight; else says how long until one
    /// can go (`Ok(None)`: nothing waits, or every destination with lines is at its window).
    fn take_next(&mut self) -> Result<Option<(u64, Destination, Text)>, Duration> {
        let mut wait = None::<Duration>;
        let limiters = self.pacing.limiters();
        let now = Instant::now();
        for _ in 0..self.rotation.len() {
            let Some(dest) = self.rotation.pop_front() else {
                break;
            };
            if let Some(until) = self.held.get(&dest) {
                if now < *until {
                    let w = *until - now;
                    wait = Some(wait.map_or(w, |old| old.min(w)));
                    self.rotation.push_back(dest);
                    continue;
                }
                self.held.remove(&dest);
            }
            if self.flights.get(&dest).copied().unwrap_or(0)
                >= self.opts.limits.window_per_destination
            {
                // Its turn comes when one of its lines is answered.
                self.rotation.push_back(dest);
                continue;
            }
            if !self.pacing.open_for(&dest) {
                wait = Some(wait.map_or(GATE_RECHECK, |old| old.min(GATE_RECHECK)));
                self.rotation.push_back(dest);
                continue;
            }
            let allowed = match &limiters.keyed {
                None => Ok(()),
                Some(l) => l
                    .check_key(&dest.paced_as())
                    .map_err(|nu| nu.wait_time_from(limiters.clock.now())),
            };
            match allowed {
                Ok(()) => {
                    let flight = self.next_flight;
                    self.next_flight += 1;
                    let q = self
                        .queues
                        .get_mut(&dest)
                        .expect("rotation holds queued destinations");
                    let entry = q
                        .iter_mut()
                        .find(|e| e.flight.is_none())
                        .expect("destinations in rotation have a waiting line");
                    entry.flight = Some(flight);
                    let line = entry.line.clone();
                    let more = q.iter().any(|e| e.flight.is_none());
                    self.queued -= 1;
                    *self.flights.entry(dest.clone()).or_default() += 1;
                    self.in_flight += 1;
                    if more {
                        self.rotation.push_back(dest.clone());
                    } else if let Some(n) = self.dropped.remove(&dest) {
                        let notice = format!("… {n} line{} dropped", if n == 1 { "" } else { "s" });
                        self.enqueue(dest.clone(), Text::plain(notice), None, true);
                    }
                    return Ok(Some((flight, dest, line)));
                }
                Err(w) => {
                    wait = Some(wait.map_or(w, |old| old.min(w)));
                    self.rotation.push_back(dest);
                }
            }
        }
        match wait {
            Some(w) => Err(w),
            None => Ok(None),
        }
    }

    /// The transport answered flight `flight` of `dest`: `sent` removes the line from its queue
    /// (written, or dropped as undeliverable); otherwise it waits again where it was, ahead of
    /// the lines that came after it. `written` is `Some` (with the service's id for it, if it
    /// gave one) when the line was written: its receipt, if any, learns the id.
    fn land(
        &mut self,
        flight: u64,
        dest: &Destination,
        sent: bool,
        written: Option<Option<Arc<str>>>,
    ) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            self.returning = false;
        }
        if let Some(n) = self.flights.get_mut(dest) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.flights.remove(dest);
            }
        }
        let Some(q) = self.queues.get_mut(dest) else {
            return;
        };
        let Some(i) = q.iter().position(|e| e.flight == Some(flight)) else {
            return;
        };
        if sent {
            let entry = q.remove(i).expect("found above");
            // A card's buttons work from the moment the service names its message.
            if let (Some((card, owner)), Some(Some(id))) = (&entry.line.card, &written) {
                self.cards.put(id, &CardRecord::new(owner, card));
            }
            if let (Some(receipt), Some(id)) = (entry.receipt, written) {
                let _ = receipt.send(id);
            }
            if q.is_empty() {
                self.queues.remove(dest);
            }
        } else {
            q[i].flight = None;
            self.queued += 1;
            if !self.rotation.contains(dest) {
                // Back first: it was on its way.
                self.rotation.push_front(dest.clone());
            }
        }
    }

    fn drained(&self) -> bool {
        self.queued == 0 && self.in_flight == 0
    }

    /// Drops every line still waiting (not in the transport's hands): this process lost the
    /// bot's lead, and said later they would come late, and perhaps after another process has
    /// answered the same. Lines in flight come back and are dropped in their turn.
    fn drop_for_standby(&mut self) {
        let mut dropped = 0u64;
        // Chosen, still waiting for the pace: never to be handed over.
        for h in std::mem::take(&mut self.to_hand) {
            self.land(h.flight, &h.dest, true, None);
            dropped += 1;
        }
        self.queues.retain(|_, q| {
            let before = q.len();
            q.retain(|e| e.flight.is_some());
            dropped += (before - q.len()) as u64;
            !q.is_empty()
        });
        // Only destinations with a line waiting take turns (none is left waiting here).
        let queues = &self.queues;
        self.rotation.retain(|d| {
            queues
                .get(d)
                .is_some_and(|q| q.iter().any(|e| e.flight.is_none()))
        });
        self.dropped.clear();
        self.queued = 0;
        if dropped > 0 {
            tracing::warn!(
                bot = %self.health.bot(),
                dropped,
                "not the bot's lead any more: lines that had not gone out are dropped"
            );
            self.health.update_outbox(|o| o.standby += dropped);
        }
    }

    fn pump(&mut self, ctx: &mut actix::Context<Self>) {
        if self.scheduled || self.closed.load(Ordering::Acquire) {
            return;
        }
        if self.queued > 0 && !self.lead.holds() {
            self.drop_for_standby();
        }
        if self.in_flight == 0 {
            // Every line that came back has taken its place again: lines chosen now are fresh.
            self.stamp = self.recall.current();
        }
        while self.in_flight < self.opts.limits.window && !(self.returning && self.in_flight > 0) {
            match self.take_next() {
                Ok(Some((flight, dest, line))) => {
                    let stamp = self.stamp;
                    self.to_hand.push_back(Handing {
                        flight,
                        dest,
                        line,
                        stamp,
                    });
                }
                Ok(None) => break,
                Err(wait) => {
                    self.scheduled = true;
                    ctx.run_later(wait, |act, ctx| {
                        act.scheduled = false;
                        act.pump(ctx);
                    });
                    break;
                }
            }
        }
        self.publish();
        if self.drained() {
            for w in self.drain_waiters.drain(..) {
                let _ = w.send(());
            }
        }
        self.hand_next(ctx);
    }

    /// Hands the next chosen line to the transport once the global pace allows it: one at a
    /// time, so lines leave in the order they were chosen; the transport's answer is awaited
    /// apart, so that up to the window are in its hands at once.
    fn hand_next(&mut self, ctx: &mut actix::Context<Self>) {
        if self.handing {
            return;
        }
        let Some(Handing {
            flight,
            dest,
            line,
            stamp,
        }) = self.to_hand.pop_front()
        else {
            return;
        };
        let recall = self.recall.clone();
        self.handing = true;
        let pacing = self.pacing.clone();
        let tx = self.transport.clone();
        let closed = self.closed.clone();
        let lead = self.lead.clone();
        let losses = self.lead_losses.clone();
        let seen = losses.load(Ordering::Acquire);
        let fut = async move {
            while let Err(wait) = pacing.check_global(&dest, &line.body) {
                actix::clock::sleep(wait).await;
            }
            if closed.load(Ordering::Acquire) {
                // The shutdown deadline passed while this line waited for its turn.
                return (flight, dest, Err(Undelivered::Closed));
            }
            if !lead.holds() || losses.load(Ordering::Acquire) != seen {
                // Another process speaks (or spoke, while this line waited) for the bot.
                return (flight, dest, Err(Undelivered::Standby));
            }
            let (ack, acked) = oneshot::channel();
            let delivery = Delivery {
                dest: dest.clone(),
                text: line.body,
                formatted: line.formatted,
                card: line.card.map(|(c, _)| c),
                in_reply_to: line.in_reply_to,
                ack: Some(ack),
                stamp,
                recall,
            };
            if tx.send(delivery).await.is_err() {
                return (flight, dest, Err(Undelivered::TransportGone));
            }
            (flight, dest, Ok(acked))
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(|(flight, dest, handed), act, ctx| {
                    act.handing = false;
                    match handed {
                        Ok(acked) => act.await_answer(flight, dest, acked, ctx),
                        Err(why) => act.answered(flight, dest, why, ctx),
                    }
                    act.hand_next(ctx);
                }),
        );
    }

    /// Waits for the transport's answer about a line in its hands.
    fn await_answer(
        &mut self,
        flight: u64,
        dest: Destination,
        acked: oneshot::Receiver<Ack>,
        ctx: &mut actix::Context<Self>,
    ) {
        let fut = async move {
            let answer = match acked.await {
                Ok(Ack::Sent(id)) => Ok(id),
                Ok(Ack::Undeliverable(why)) => {
                    tracing::warn!(%dest, %why, "line dropped: undeliverable");
                    Err(Undelivered::Dropped)
                }
                Ok(Ack::Hold(wait)) => Err(Undelivered::Held(wait)),
                Err(_) => Err(Undelivered::Unacknowledged),
            };
            (flight, dest, answer)
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(|(flight, dest, answer), act, ctx| match answer {
                    Ok(id) => {
                        act.land(flight, &dest, true, Some(id));
                        act.health.update_outbox(|o| o.sent += 1);
                        act.pump(ctx);
                    }
                    Err(why) => act.answered(flight, dest, why, ctx),
                }),
        );
    }

    /// A line came back: the lines chosen after it and not yet handed over wait again in
    /// their places, and nothing new is chosen until every line in flight has been answered
    /// (lines already handed over are stale by their stamp and come back from the link).
    fn recall_chosen(&mut self) {
        self.returning = true;
        for h in std::mem::take(&mut self.to_hand) {
            self.land(h.flight, &h.dest, false, None);
        }
    }

    /// A line that was not written: dropped, held, back in its place, or lost to the end.
    fn answered(
        &mut self,
        flight: u64,
        dest: Destination,
        why: Undelivered,
        ctx: &mut actix::Context<Self>,
    ) {
        match why {
            Undelivered::Dropped => {
                self.land(flight, &dest, true, None);
                self.health.update_outbox(|o| o.undeliverable += 1);
            }
            Undelivered::Held(wait) => {
                self.held.insert(dest.clone(), Instant::now() + wait);
                self.recall_chosen();
                self.land(flight, &dest, false, None);
            }
            Undelivered::Unacknowledged => {
                self.recall_chosen();
                self.land(flight, &dest, false, None);
            }
            Undelivered::Closed => {
                // Counted as lost when the deadline passed; nothing more goes out.
                self.land(flight, &dest, true, None);
                return;
            }
            Undelivered::Standby => {
                self.land(flight, &dest, true, None);
                self.health.update_outbox(|o| o.standby += 1);
            }
            Undelivered::TransportGone => {
                // The transport is gone for good (shutdown): nothing can be sent.
                let lost = self.queued + self.in_flight;
                tracing::warn!(lost, "transport closed; outbox discards its queue");
                self.queues.clear();
                self.rotation.clear();
                self.to_hand.clear();
                self.flights.clear();
                self.queued = 0;
                self.in_flight = 0;
                for w in self.drain_waiters.drain(..) {
                    let _ = w.send(());
                }
                return;
            }
        }
        self.pump(ctx);
    }
}

impl Actor for Outbox {
    type Context = actix::Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        self.guard.disarm();
    }

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.lead.is_elected() {
            // Whenever the lead is lost, what waits is dropped at once (nothing else may wake
            // the outbox while its window is full of lines the transport will never take).
            let lead = self.lead.clone();
            ctx.add_stream(futures::StreamExt::map(
                futures::stream::unfold(lead, |lead| async move {
                    lead.held().await;
                    lead.lost().await;
                    Some(((), lead))
                }),
                |()| LeadLost,
            ));
        }
        // Forget old anti-loop entries and idle limiter keys now and then.
        ctx.run_interval(Duration::from_secs(60), |act, _| {
            let now = Instant::now();
            let window = act.opts.loop_window;
            act.recent.retain(|_, seen| {
                seen.back()
                    .is_some_and(|t| now.duration_since(*t) <= window)
            });
            if let Some(k) = &act.pacing.limiters().keyed {
                k.retain_recent();
            }
        });
    }
}

/// This process lost the bot's lead.
struct LeadLost;

impl actix::StreamHandler<LeadLost> for Outbox {
    fn handle(&mut self, _: LeadLost, ctx: &mut Self::Context) {
        self.lead_losses.fetch_add(1, Ordering::AcqRel);
        self.drop_for_standby();
        self.publish();
        self.pump(ctx);
    }

    fn finished(&mut self, _: &mut Self::Context) {}
}

impl actix::Handler<Say> for Outbox {
    type Result = ();

    fn handle(&mut self, Say(out, mut receipt): Say, ctx: &mut Self::Context) {
        fault_point!(self.health.bot(), Outbox);
        if !self.lead.holds() {
            // Another process speaks for the bot: what this one's pollers and voices would say
            // is theirs to say, and queued here it would come out late, twice, at a take-over.
            tracing::debug!(dest = %out.dest, "not the bot's lead: line not taken");
            self.health.update_outbox(|o| o.standby += 1);
            return;
        }
        if !valid_destination(&out.dest) {
            // A handler chose the destination (`cx.say`); a CR, LF, space or NUL in it would
            // end the target early on the wire and start a protocol line of its own.
            tracing::warn!(dest = ?out.dest.name(), "line for an impossible destination refused");
            self.health.update_outbox(|o| o.undeliverable += 1);
            return;
        }
        // The guard is for handlers' output caught in a loop; the framework's own answers to a
        // user (bounded by the user's command budget) always go out.
        if !out.answer && !self.loop_guard(&out.dest, &out.text) {
            tracing::debug!(dest = %out.dest, "repeated text collapsed");
            self.health.update_outbox(|o| o.collapsed += 1);
            return;
        }
        let mut dropped = 0;
        let formatted = self.pacing.style() != Style::Plain;
        let lines: Vec<Text> = match (&out.rich, &out.card) {
            // A card is one message: the card, and as much of its fallback as one message
            // holds for the clients that cannot show it (a fallback with nothing visible
            // leaves nothing to send).
            (Some(rich), Some(card)) if self.pacing.cards() => self
                .pacing
                .cut_rich(rich)
                .into_iter()
                .take(1)
                .map(|body| Text {
                    body,
                    formatted,
                    card: Some(card.clone()),
                    in_reply_to: None,
                })
                .collect(),
            (Some(rich), _) => self
                .pacing
                .cut_rich(rich)
                .into_iter()
                .map(|body| Text {
                    body,
                    formatted,
                    card: None,
                    in_reply_to: None,
                })
                .collect(),
            (None, _) => self
                .pacing
                .cut(&out.text)
                .into_iter()
                .map(Text::plain)
                .collect(),
        };
        let mut in_reply_to = out.in_reply_to.clone();
        for mut line in lines {
            // The reply mark rides on the first line, as the receipt does.
            line.in_reply_to = in_reply_to.take();
            // The receipt rides on the first line: its id is the message's.
            if !self.enqueue(out.dest.clone(), line, receipt.take(), false) {
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::warn!(dest = %out.dest, dropped, "outbox queue full; lines dropped");
            self.health.update_outbox(|o| o.dropped += dropped);
        }
        self.pump(ctx);
    }
}

impl actix::Handler<Drain> for Outbox {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, Drain(deadline): Drain, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.drain_waiters.push(tx);
        self.pump(ctx);
        if self.drained() {
            for w in self.drain_waiters.drain(..) {
                let _ = w.send(());
            }
        }
        let addr = ctx.address();
        Box::pin(async move {
            if tokio::time::timeout(deadline, rx).await.is_ok() {
                return 0;
            }
            addr.send(Queued).await.unwrap_or(0)
        })
    }
}

#[derive(Debug)]
struct Queued;

impl Message for Queued {
    type Result = usize;
}

impl actix::Handler<Queued> for Outbox {
    type Result = usize;

    /// Closes the outbox (the deadline passed) and answers how many lines it will never send:
    /// those queued, and those chosen but still waiting for their turn (not those the
    /// transport already has).
    fn handle(&mut self, _: Queued, _: &mut Self::Context) -> usize {
        self.closed.store(true, Ordering::Release);
        self.queued + self.to_hand.len() + usize::from(self.handing)
    }
}

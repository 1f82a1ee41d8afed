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
//!    unacknowledged at once ([`Limits::window`], one by default, and at most
//!    [`Limits::window_per_destination`] for one destination), so the backlog lives here, not in
//!    a socket buffer. A line in flight keeps its place in its destination's queue: one the
//!    transport could not send (disconnected) or asked to hold becomes a waiting line again where
//!    it was, so after a reconnect a destination's lines go out in their order, none lost and
//!    none twice.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use tokio::sync::{mpsc, oneshot};

use crate::health::Health;
use crate::message::{Destination, Outgoing};
use crate::supervisor::{CoreGuard, fault_point};
use crate::text::{pack_lines, split_lines};
use crate::transport::{Ack, Delivery, Limits, Recall};

/// A sustained rate with a burst allowance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Lines per second, sustained.
    pub per_second: f64,
    /// Lines that may go out at once after a quiet period.
    pub burst: u32,
}

impl Rate {
    /// `per_second` lines a second with a burst of `burst`.
    pub const fn new(per_second: f64, burst: u32) -> Self {
        Self { per_second, burst }
    }

    fn quota(self) -> Option<Quota> {
        if !(self.per_second.is_finite() && self.per_second > 0.0) {
            return None;
        }
        // The config refuses rates outside these bounds; clamp for values set in code.
        let period = Duration::try_from_secs_f64(1.0 / self.per_second)
            .unwrap_or(Duration::MAX)
            .clamp(Duration::from_nanos(1), Duration::from_secs(86_400));
        let burst = self
            .burst
            .min(
                u32::try_from(Duration::from_secs(365 * 86_400).as_nanos() / period.as_nanos())
                    .unwrap_or(u32::MAX),
            )
            .max(1);
        Some(Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst)?))
    }
}

/// How the outbox paces and bounds what a bot says. Transports supply defaults
/// ([`crate::transport::Limits`]); the config can override each field.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxOptions {
    /// Longest line, in bytes of text, that the transport accepts.
    pub max_line_bytes: usize,
    /// Global pace over all destinations; `None`: unlimited.
    pub global: Option<Rate>,
    /// Global pace in bytes per second (the burst is in bytes too); `None`: unlimited.
    pub global_bytes: Option<Rate>,
    /// Bytes the protocol adds to each line besides the text and the destination's name
    /// (`PRIVMSG  :` and CRLF on IRC), for the byte budget.
    pub line_overhead: usize,
    /// Pace per destination; `None`: unlimited.
    pub per_destination: Option<Rate>,
    /// Pack several lines into one message (see [`crate::transport::Limits::multiline`]).
    pub multiline: bool,
    /// Lines that may wait, over all destinations.
    pub queue: usize,
    /// The anti-loop guard: at most this many identical texts to one destination per window
    /// (0 disables the guard).
    pub loop_repeats: u32,
    /// The anti-loop window.
    pub loop_window: Duration,
    /// Lines in the transport's hands, not yet acknowledged, at most (see
    /// [`Limits::window`]).
    pub window: usize,
    /// Of those, for one destination at most.
    pub window_per_destination: usize,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        Self {
            max_line_bytes: 4096,
            global: None,
            global_bytes: None,
            line_overhead: 0,
            per_destination: None,
            multiline: false,
            queue: 2000,
            loop_repeats: 5,
            loop_window: Duration::from_secs(120),
            window: 1,
            window_per_destination: 1,
        }
    }
}

/// Something to say.
#[derive(Debug)]
pub struct Say(pub Outgoing);

impl Message for Say {
    type Result = ();
}

/// Asks the outbox to finish what it has within `deadline`; answers how many lines were lost.
#[derive(Debug)]
pub(crate) struct Drain(pub(crate) Duration);

impl Message for Drain {
    type Result = usize;
}

#[derive(Debug)]
struct Limiters {
    /// The rates the buckets below were built for (global, bytes, per destination).
    rates: (Option<Rate>, Option<Rate>, Option<Rate>),
    global: Option<Arc<DefaultDirectRateLimiter>>,
    bytes: Option<Arc<DefaultDirectRateLimiter>>,
    byte_burst: u32,
    global_burst: u32,
    keyed: Option<Arc<DefaultKeyedRateLimiter<Destination>>>,
    max_line_bytes: usize,
    line_overhead: usize,
    multiline: bool,
    /// One clock for all waits: building a quanta clock calibrates it (CPUID), far too slow to
    /// do per line.
    clock: DefaultClock,
}

impl Limiters {
    fn new(opts: &OutboxOptions) -> Self {
        Self {
            rates: (opts.global, opts.global_bytes, opts.per_destination),
            global: opts
                .global
                .and_then(Rate::quota)
                .map(|q| Arc::new(governor::RateLimiter::direct(q))),
            bytes: opts
                .global_bytes
                .and_then(Rate::quota)
                .map(|q| Arc::new(governor::RateLimiter::direct(q))),
            byte_burst: opts.global_bytes.map_or(0, |r| r.burst.max(1)),
            global_burst: opts.global.map_or(0, |r| r.burst.max(1)),
            keyed: opts
                .per_destination
                .and_then(Rate::quota)
                .map(|q| Arc::new(governor::RateLimiter::hashmap(q))),
            max_line_bytes: opts.max_line_bytes,
            line_overhead: opts.line_overhead,
            multiline: opts.multiline,
            clock: DefaultClock::default(),
        }
    }

    /// The same buckets (with what they have spent) under a new line length, when the rates
    /// are unchanged; `None` when they changed and new buckets are needed.
    fn resized(&self, opts: &OutboxOptions) -> Option<Self> {
        (self.rates == (opts.global, opts.global_bytes, opts.per_destination)).then(|| Self {
            rates: self.rates,
            global: self.global.clone(),
            bytes: self.bytes.clone(),
            byte_burst: self.byte_burst,
            global_burst: self.global_burst,
            keyed: self.keyed.clone(),
            max_line_bytes: opts.max_line_bytes,
            line_overhead: opts.line_overhead,
            multiline: opts.multiline,
            clock: self.clock.clone(),
        })
    }

    /// What `bytes` cost in the byte budget, clamped to what the bucket can ever hold.
    fn byte_cells(&self, bytes: usize) -> Option<NonZeroU32> {
        cells(bytes, self.byte_burst)
    }
}

/// Cells as a non-zero count for governor, at most `cap` (what the bucket can ever hold).
fn cells(n: usize, cap: u32) -> Option<NonZeroU32> {
    NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX).min(cap))
}

/// How often the outbox looks again at a destination the transport's gate holds closed.
const GATE_RECHECK: Duration = Duration::from_millis(200);

/// Whether a destination can take lines now; see [`Pacing::set_gate`].
pub type GateFn = Arc<dyn Fn(&Destination) -> bool + Send + Sync>;

/// A transport's gate.
#[derive(Clone)]
struct Gate(GateFn);

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

/// The pacing budget of one bot's connection, shared: the outbox spends it on lines, the
/// transport on its own protocol traffic, and the transport may switch it to a profile chosen
/// from the server's version at any time. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Pacing {
    inner: Arc<Mutex<(OutboxSettings, Arc<Limiters>)>>,
    gate: Arc<Mutex<Option<Gate>>>,
    /// What the transport sent while the budget was empty, still to be paid for by the lines
    /// after it (governor buckets cannot go into debt by themselves). Kept across profile
    /// changes.
    debt_lines: Arc<AtomicUsize>,
    debt_bytes: Arc<AtomicUsize>,
}

impl Pacing {
    pub(crate) fn new(settings: OutboxSettings, limits: &Limits) -> Self {
        let limiters = Arc::new(Limiters::new(&settings.resolve(limits)));
        Self {
            inner: Arc::new(Mutex::new((settings, limiters))),
            gate: Arc::default(),
            debt_lines: Arc::default(),
            debt_bytes: Arc::default(),
        }
    }

    fn limiters(&self) -> Arc<Limiters> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Switches to a service's limits; values set in the config still win over them. When only
    /// the line length changed (a new nick or host on IRC), the buckets are kept with what they
    /// have spent; answers whether they were replaced by new, full ones, in which case the
    /// transport should charge them with what it sent in the last seconds.
    pub fn set_limits(&self, limits: &Limits) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let opts = inner.0.resolve(limits);
        if let Some(kept) = inner.1.resized(&opts) {
            inner.1 = Arc::new(kept);
            return false;
        }
        let show = |r: Option<Rate>, unit: &str| {
            r.map_or_else(
                || "unlimited".to_owned(),
                |r| format!("{} {unit}/s, burst {}", r.per_second, r.burst),
            )
        };
        tracing::info!(
            lines = %show(opts.global, "lines"),
            bytes = %show(opts.global_bytes, "bytes"),
            max_line_bytes = opts.max_line_bytes,
            "pacing profile set"
        );
        inner.1 = Arc::new(Limiters::new(&opts));
        true
    }

    /// Charges a line the transport sent by itself (a keep-alive, a join) to the global budgets
    /// without waiting: such a line cannot wait, but the lines after it will.
    pub fn charge(&self, bytes: usize) {
        self.charge_n(1, bytes);
    }

    /// Like [`Pacing::charge`] for a command the server counts as `lines` lines (InspIRCd
    /// charges a JOIN as two, a NICK as four).
    pub fn charge_n(&self, lines: u32, bytes: usize) {
        let l = self.limiters();
        if let (Some(b), Some(n)) = (&l.bytes, l.byte_cells(bytes))
            && !matches!(b.check_n(n), Ok(Ok(())))
        {
            self.debt_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        if let (Some(g), Some(n)) = (&l.global, cells(lines as usize, l.global_burst))
            && !matches!(g.check_n(n), Ok(Ok(())))
        {
            self.debt_lines.fetch_add(lines as usize, Ordering::Relaxed);
        }
    }

    /// Takes `lines` lines and `bytes` bytes from the global budgets if they allow it now,
    /// paying any debt on the way; answers whether they did. For a command the transport can
    /// hold back until the budget allows (a JOIN), where [`Pacing::charge_n`] is for lines that
    /// cannot wait.
    pub fn try_take_n(&self, lines: u32, bytes: usize) -> bool {
        self.take(lines as usize, bytes).is_ok()
    }

    /// Consumes the global budgets for a line (and any debt) if they allow it now; else the time
    /// to wait.
    fn check_global(&self, dest: &Destination, text: &str) -> Result<(), Duration> {
        let l = self.limiters();
        self.take(1, text.len() + dest.name().len() + l.line_overhead)
    }

    /// Consumes `lines` lines and `own` bytes, plus as much debt as the buckets hold in one go,
    /// if they allow it now; else the time to wait.
    fn take(&self, lines: usize, own: usize) -> Result<(), Duration> {
        let l = self.limiters();
        let now = || l.clock.now();
        if let Some(b) = &l.bytes {
            // Bytes first, so that a refusal there has not spent a line. Debt is paid as far
            // as the bucket can hold it in one go; the rest with the next lines.
            let debt = self.debt_bytes.load(Ordering::Relaxed);
            let take = (own + debt).min(l.byte_burst as usize).max(1);
            if let Ok(Err(nu)) = b.check_n(cells(take, l.byte_burst).expect("non-zero")) {
                return Err(nu.wait_time_from(now()));
            }
            let paid = take.saturating_sub(own).min(debt);
            self.debt_bytes.fetch_sub(paid, Ordering::Relaxed);
        }
        if let Some(g) = &l.global {
            let lines = lines.max(1);
            let debt = self.debt_lines.load(Ordering::Relaxed);
            let take = (lines + debt).min(l.global_burst as usize);
            if let Ok(Err(nu)) = g.check_n(cells(take, l.global_burst).expect("non-zero")) {
                return Err(nu.wait_time_from(now()));
            }
            self.debt_lines
                .fetch_sub(take.saturating_sub(lines).min(debt), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Lets the transport say which destinations can take lines now: the outbox keeps the
    /// lines of a destination the gate closes (a room still being joined) in their queue, without
    /// spending any budget on them, and checks again a moment later. `None` opens every
    /// destination.
    pub fn set_gate(&self, gate: Option<GateFn>) {
        *self.gate.lock().unwrap_or_else(|p| p.into_inner()) = gate.map(Gate);
    }

    /// Whether the gate lets lines for `dest` through now.
    fn open_for(&self, dest: &Destination) -> bool {
        self.gate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|g| (g.0)(dest))
    }

    /// The longest text one line may carry under the current profile.
    pub fn max_line_bytes(&self) -> usize {
        self.limiters().max_line_bytes
    }

    /// Cuts `text` into the messages the transport takes: safe single lines, or for a
    /// multi-line transport, lines packed up to the size limit.
    pub fn cut(&self, text: &str) -> Vec<String> {
        let l = self.limiters();
        if l.multiline {
            pack_lines(text, l.max_line_bytes)
        } else {
            split_lines(text, l.max_line_bytes)
        }
    }
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
}

/// Whether a destination's name could ever be an address: not empty, and no whitespace or
/// control characters (which a protocol would read as the end of the target or of the line).
pub(crate) fn valid_destination(dest: &Destination) -> bool {
    let name = dest.name();
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// One line in a destination's queue: waiting, or in the transport's hands (`flight` is the
/// hand-over's number), in which case it keeps its place until the transport answers.
#[derive(Debug)]
struct Entry {
    line: String,
    flight: Option<u64>,
}

/// A line chosen to go out, waiting for its turn at the global pace.
#[derive(Debug)]
struct Handing {
    flight: u64,
    dest: Destination,
    line: String,
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
}

impl Outbox {
    pub(crate) fn new(
        opts: OutboxOptions,
        pacing: Pacing,
        transport: mpsc::Sender<Delivery>,
        recall: Recall,
        health: Health,
        guard: CoreGuard,
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

    fn enqueue(&mut self, dest: Destination, line: String, force: bool) -> bool {
        if !force && self.queued >= self.opts.queue {
            *self.dropped.entry(dest).or_default() += 1;
            return false;
        }
        if !self.rotation.contains(&dest) {
            self.rotation.push_back(dest.clone());
        }
        self.queues
            .entry(dest)
            .or_default()
            .push_back(Entry { line, flight: None });
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
    fn take_next(&mut self) -> Result<Option<(u64, Destination, String)>, Duration> {
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
            if self.flights.get(&dest).copied().unwrap_or(0) >= self.opts.window_per_destination {
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
                        self.enqueue(dest.clone(), notice, true);
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
    /// the lines that came after it.
    fn land(&mut self, flight: u64, dest: &Destination, sent: bool) {
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
            q.remove(i);
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

    fn pump(&mut self, ctx: &mut actix::Context<Self>) {
        if self.scheduled || self.closed.load(Ordering::Acquire) {
            return;
        }
        if self.in_flight == 0 {
            // Every line that came back has taken its place again: lines chosen now are fresh.
            self.stamp = self.recall.current();
        }
        while self.in_flight < self.opts.window && !(self.returning && self.in_flight > 0) {
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
        let fut = async move {
            while let Err(wait) = pacing.check_global(&dest, &line) {
                actix::clock::sleep(wait).await;
            }
            if closed.load(Ordering::Acquire) {
                // The shutdown deadline passed while this line waited for its turn.
                return (flight, dest, Err(Undelivered::Closed));
            }
            let (ack, acked) = oneshot::channel();
            let delivery = Delivery {
                dest: dest.clone(),
                text: line,
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
            let why = match acked.await {
                Ok(Ack::Sent) => None,
                Ok(Ack::Undeliverable(why)) => {
                    tracing::warn!(%dest, %why, "line dropped: undeliverable");
                    Some(Undelivered::Dropped)
                }
                Ok(Ack::Hold(wait)) => Some(Undelivered::Held(wait)),
                Err(_) => Some(Undelivered::Unacknowledged),
            };
            (flight, dest, why)
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(|(flight, dest, why), act, ctx| match why {
                    None => {
                        act.land(flight, &dest, true);
                        act.health.update_outbox(|o| o.sent += 1);
                        act.pump(ctx);
                    }
                    Some(why) => act.answered(flight, dest, why, ctx),
                }),
        );
    }

    /// A line came back: the lines chosen after it and not yet handed over wait again in
    /// their places, and nothing new is chosen until every line in flight has been answered
    /// (lines already handed over are stale by their stamp and come back from the link).
    fn recall_chosen(&mut self) {
        self.returning = true;
        for h in std::mem::take(&mut self.to_hand) {
            self.land(h.flight, &h.dest, false);
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
                self.land(flight, &dest, true);
                self.health.update_outbox(|o| o.undeliverable += 1);
            }
            Undelivered::Held(wait) => {
                self.held.insert(dest.clone(), Instant::now() + wait);
                self.recall_chosen();
                self.land(flight, &dest, false);
            }
            Undelivered::Unacknowledged => {
                self.recall_chosen();
                self.land(flight, &dest, false);
            }
            Undelivered::Closed => {
                // Counted as lost when the deadline passed; nothing more goes out.
                self.land(flight, &dest, true);
                return;
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

impl actix::Handler<Say> for Outbox {
    type Result = ();

    fn handle(&mut self, Say(out): Say, ctx: &mut Self::Context) {
        fault_point!(self.health.bot(), Outbox);
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
        for line in self.pacing.cut(&out.text) {
            if !self.enqueue(out.dest.clone(), line, false) {
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

/// Overrides of the transport's outbox defaults; `None` keeps the transport's value.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxSettings {
    /// Longest line in bytes.
    pub max_line_bytes: Option<usize>,
    /// Global pace (a rate of 0 lines per second means unlimited).
    pub global: Option<Rate>,
    /// Global byte pace (0 bytes per second means unlimited).
    pub global_bytes: Option<Rate>,
    /// Per-destination pace (0: unlimited).
    pub per_destination: Option<Rate>,
    /// Lines that may wait.
    pub queue: usize,
    /// Anti-loop: identical texts allowed per window (0 disables).
    pub loop_repeats: u32,
    /// Anti-loop window.
    pub loop_window: Duration,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        let d = OutboxOptions::default();
        Self {
            max_line_bytes: None,
            global: None,
            global_bytes: None,
            per_destination: None,
            queue: d.queue,
            loop_repeats: d.loop_repeats,
            loop_window: d.loop_window,
        }
    }
}

impl OutboxSettings {
    /// The effective options over a transport's limits.
    pub fn resolve(&self, limits: &Limits) -> OutboxOptions {
        OutboxOptions {
            max_line_bytes: self.max_line_bytes.unwrap_or(limits.max_line_bytes),
            global: self.global.or(limits.global),
            global_bytes: self.global_bytes.or(limits.global_bytes),
            line_overhead: limits.line_overhead,
            per_destination: self.per_destination.or(limits.per_destination),
            multiline: limits.multiline,
            queue: self.queue,
            loop_repeats: self.loop_repeats,
            loop_window: self.loop_window,
            window: limits.window.max(1),
            window_per_destination: limits.window_per_destination.clamp(1, limits.window.max(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_that_can_wait_take_the_budget_only_when_it_allows() {
        let limits = Limits {
            global: Some(Rate::new(1.0, 4)),
            ..Limits::unlimited(100)
        };
        let pacing = Pacing::new(OutboxSettings::default(), &limits);
        // Two JOINs at two lines each fill a burst of four; a third must wait.
        assert!(pacing.try_take_n(2, 10));
        assert!(pacing.try_take_n(2, 10));
        assert!(!pacing.try_take_n(2, 10));
        // Nor can the outbox's next line go before the budget refills.
        assert!(pacing.check_global(&Destination::room("#a"), "hi").is_err());
    }

    /// Bytes the transport sent on an empty byte budget are paid for by the next line too.
    #[test]
    fn bytes_sent_on_an_empty_byte_budget_are_paid_for_later() {
        let limits = Limits {
            global_bytes: Some(Rate::new(100.0, 100)),
            ..Limits::unlimited(100)
        };
        let pacing = Pacing::new(OutboxSettings::default(), &limits);
        let dest = Destination::room("#a");
        assert!(pacing.check_global(&dest, &"x".repeat(98)).is_ok());
        // The budget is spent; a 60-byte keep-alive goes out anyway and becomes debt.
        pacing.charge(60);
        assert_eq!(pacing.debt_bytes.load(Ordering::Relaxed), 60);
        // The next 20-byte line waits for its own bytes and the debt's: the bucket must be full
        // (100 bytes at 100 a second, about a second), where its own 22 bytes alone would take
        // about a fifth of that.
        let wait = pacing.check_global(&dest, &"y".repeat(18)).unwrap_err();
        assert!(wait > Duration::from_millis(600), "{wait:?}");
        // A margin for the limiter's clock and the OS clock disagreeing (see below).
        std::thread::sleep(wait + Duration::from_millis(100));
        assert!(pacing.check_global(&dest, &"y".repeat(18)).is_ok());
        assert_eq!(pacing.debt_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_transports_gate_holds_the_destinations_it_closes() {
        let pacing = Pacing::new(OutboxSettings::default(), &Limits::unlimited(100));
        let (a, b) = (Destination::room("#a"), Destination::room("#b"));
        assert!(pacing.open_for(&a) && pacing.open_for(&b));
        pacing.set_gate(Some(Arc::new(|d: &Destination| d.name() != "#a")));
        assert!(!pacing.open_for(&a) && pacing.open_for(&b));
        pacing.set_gate(None);
        assert!(pacing.open_for(&a));
    }

    /// A hostile IRC server announcing a new host for the bot again and again used to hand it
    /// a fresh, full budget each time (and the transport charged its recent lines to each):
    /// replies were delayed by seconds. A new line length keeps the budget as spent.
    #[test]
    fn a_new_line_length_keeps_the_budget_a_new_rate_replaces_it() {
        let limits = Limits {
            global: Some(Rate::new(1.0, 2)),
            ..Limits::unlimited(100)
        };
        let pacing = Pacing::new(OutboxSettings::default(), &limits);
        assert!(pacing.try_take_n(2, 10));
        assert!(!pacing.set_limits(&Limits {
            max_line_bytes: 80,
            ..limits
        }));
        assert_eq!(pacing.max_line_bytes(), 80);
        assert!(!pacing.try_take_n(1, 10), "the spent budget was kept");
        assert!(pacing.set_limits(&Limits {
            global: Some(Rate::new(2.0, 2)),
            ..limits
        }));
        assert!(pacing.try_take_n(2, 10), "a new rate starts a new budget");
    }

    #[test]
    fn lines_the_transport_sent_on_an_empty_budget_are_paid_for_later() {
        let limits = Limits {
            global: Some(Rate::new(1.0, 2)),
            ..Limits::unlimited(100)
        };
        let pacing = Pacing::new(OutboxSettings::default(), &limits);
        let dest = Destination::room("#a");
        assert!(pacing.check_global(&dest, "one").is_ok());
        assert!(pacing.check_global(&dest, "two").is_ok());
        // The bucket is empty; a keep-alive goes out anyway and becomes debt.
        pacing.charge(20);
        assert_eq!(pacing.debt_lines.load(Ordering::Relaxed), 1);
        // The next line waits for its own cell and the debt's: about 2 s, where it would be
        // 1 s without the debt.
        let wait = pacing.check_global(&dest, "three").unwrap_err();
        assert!(wait > Duration::from_millis(1500), "{wait:?}");
        // The limiter's clock (TSC) and the thread's sleep (the OS clock) may disagree by a few
        // milliseconds on a busy machine; a margin far below the next cell's second absorbs it,
        // and the assertion on `wait` above is what the test is about.
        std::thread::sleep(wait + Duration::from_millis(100));
        assert!(pacing.check_global(&dest, "three").is_ok());
        assert_eq!(pacing.debt_lines.load(Ordering::Relaxed), 0);
    }
}

//! Pacing and limits: what a chat service tolerates ([`Limits`]), what the config overrides
//! ([`OutboxSettings`]), and the shared budget of one connection ([`Pacing`]) that the outbox
//! spends on lines and the transport on its own protocol traffic.
//!
//! Plain values and rate limiters (governor's GCRA); no actor lives here.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

use crate::message::Destination;
use crate::rich::{Rich, Style};
use crate::text::{pack_lines, split_lines};

/// What a transport's service tolerates; the outbox's defaults come from here.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Longest text, in bytes, that one outgoing line may carry.
    pub max_line_bytes: usize,
    /// Global pace the service allows for this connection (`None`: unlimited).
    pub global: Option<Rate>,
    /// Global pace in bytes per second, burst in bytes (`None`: unlimited).
    pub global_bytes: Option<Rate>,
    /// Bytes the protocol adds to each line besides the text and the destination's name.
    pub line_overhead: usize,
    /// Pace per destination (`None`: unlimited).
    pub per_destination: Option<Rate>,
    /// Whether one message may carry several lines (XMPP, Webex): the outbox then packs a
    /// reply's lines into as few messages as `max_line_bytes` allows, breaking between lines
    /// where it can. IRC's lines are single by protocol.
    pub multiline: bool,
    /// How many deliveries the transport may hold unanswered at once (1: each is answered
    /// before the next is handed over). A transport that answers a delivery only when its
    /// server acknowledged it (XMPP's stream management) or whose sends run side by side
    /// (Webex's posts) raises it so a round trip does not cap the pace.
    pub window: usize,
    /// Of those, for one destination at most: a transport that could reorder two lines for one
    /// room (two HTTP posts at once) keeps this at 1; one that writes in order on one
    /// connection can let the whole window go to one room.
    pub window_per_destination: usize,
    /// How the transport shows a formatted reply ([`crate::rich`]); [`Style::Plain`] when it
    /// shows none.
    pub style: Style,
    /// Whether the transport shows cards ([`crate::card`]) and hears their buttons; without
    /// them a card is sent as its fallback text.
    pub cards: bool,
}

impl Limits {
    /// No pacing, with the given line limit.
    pub const fn unlimited(max_line_bytes: usize) -> Self {
        Self {
            max_line_bytes,
            global: None,
            global_bytes: None,
            line_overhead: 0,
            per_destination: None,
            multiline: false,
            window: 1,
            window_per_destination: 1,
            style: Style::Plain,
            cards: false,
        }
    }
}

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
/// ([`Limits`]); the config can override each field.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxOptions {
    /// What the transport tolerates, with the config's overrides applied (and a window of at
    /// least one line, at most the whole window for one destination).
    pub limits: Limits,
    /// Lines that may wait, over all destinations.
    pub queue: usize,
    /// The anti-loop guard: at most this many identical texts to one destination per window
    /// (0 disables the guard).
    pub loop_repeats: u32,
    /// The anti-loop window.
    pub loop_window: Duration,
}

impl Default for OutboxOptions {
    fn default() -> Self {
        Self {
            limits: Limits::unlimited(4096),
            queue: 2000,
            loop_repeats: 5,
            loop_window: Duration::from_secs(120),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Limiters {
    /// The rates the buckets below were built for (global, bytes, per destination).
    rates: (Option<Rate>, Option<Rate>, Option<Rate>),
    global: Option<Arc<DefaultDirectRateLimiter>>,
    bytes: Option<Arc<DefaultDirectRateLimiter>>,
    byte_burst: u32,
    global_burst: u32,
    pub(crate) keyed: Option<Arc<DefaultKeyedRateLimiter<Destination>>>,
    max_line_bytes: usize,
    line_overhead: usize,
    multiline: bool,
    style: Style,
    cards: bool,
    /// One clock for all waits: building a quanta clock calibrates it (CPUID), far too slow to
    /// do per line.
    pub(crate) clock: DefaultClock,
}

impl Limiters {
    fn new(opts: &OutboxOptions) -> Self {
        Self {
            rates: (
                opts.limits.global,
                opts.limits.global_bytes,
                opts.limits.per_destination,
            ),
            global: opts
                .limits
                .global
                .and_then(Rate::quota)
                .map(|q| Arc::new(governor::RateLimiter::direct(q))),
            bytes: opts
                .limits
                .global_bytes
                .and_then(Rate::quota)
                .map(|q| Arc::new(governor::RateLimiter::direct(q))),
            byte_burst: opts.limits.global_bytes.map_or(0, |r| r.burst.max(1)),
            global_burst: opts.limits.global.map_or(0, |r| r.burst.max(1)),
            keyed: opts
                .limits
                .per_destination
                .and_then(Rate::quota)
                .map(|q| Arc::new(governor::RateLimiter::hashmap(q))),
            max_line_bytes: opts.limits.max_line_bytes,
            line_overhead: opts.limits.line_overhead,
            multiline: opts.limits.multiline,
            style: opts.limits.style,
            cards: opts.limits.cards,
            clock: DefaultClock::default(),
        }
    }

    /// The same buckets (with what they have spent) under a new line length, when the rates
    /// are unchanged; `None` when they changed and new buckets are needed.
    fn resized(&self, opts: &OutboxOptions) -> Option<Self> {
        (self.rates
            == (
                opts.limits.global,
                opts.limits.global_bytes,
                opts.limits.per_destination,
            ))
            .then(|| Self {
                rates: self.rates,
                global: self.global.clone(),
                bytes: self.bytes.clone(),
                byte_burst: self.byte_burst,
                global_burst: self.global_burst,
                keyed: self.keyed.clone(),
                max_line_bytes: opts.limits.max_line_bytes,
                line_overhead: opts.limits.line_overhead,
                multiline: opts.limits.multiline,
                style: opts.limits.style,
                cards: opts.limits.cards,
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
pub(crate) const GATE_RECHECK: Duration = Duration::from_millis(200);

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

    pub(crate) fn limiters(&self) -> Arc<Limiters> {
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
            lines = %show(opts.limits.global, "lines"),
            bytes = %show(opts.limits.global_bytes, "bytes"),
            max_line_bytes = opts.limits.max_line_bytes,
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
    pub(crate) fn check_global(&self, dest: &Destination, text: &str) -> Result<(), Duration> {
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
    pub(crate) fn open_for(&self, dest: &Destination) -> bool {
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

    /// How the transport shows formatted replies.
    pub fn style(&self) -> Style {
        self.limiters().style
    }

    /// Whether the transport shows cards.
    pub fn cards(&self) -> bool {
        self.limiters().cards
    }

    /// Renders `rich` for the transport's style and cuts it into the messages it takes, as
    /// [`Pacing::cut`] does for plain text, closing and reopening what a cut splits.
    pub fn cut_rich(&self, rich: &Rich) -> Vec<String> {
        let l = self.limiters();
        rich.messages(l.style, l.max_line_bytes, l.multiline)
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
        let window = limits.window.max(1);
        OutboxOptions {
            limits: Limits {
                max_line_bytes: self.max_line_bytes.unwrap_or(limits.max_line_bytes),
                global: self.global.or(limits.global),
                global_bytes: self.global_bytes.or(limits.global_bytes),
                per_destination: self.per_destination.or(limits.per_destination),
                window,
                window_per_destination: limits.window_per_destination.clamp(1, window),
                ..*limits
            },
            queue: self.queue,
            loop_repeats: self.loop_repeats,
            loop_window: self.loop_window,
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

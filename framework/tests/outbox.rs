//! The outbox under load: pacing, splitting, loops, drops, and draining at shutdown.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use opsbot::pacing::Rate;
use opsbot::prelude::*;
use opsbot::testkit::{Echo, TestBot};
use opsbot::transport::Limits;
use opsbot::transport::memory::Said;

/// `!lines N` writes N numbered lines, each as its own reply.
#[derive(Clone)]
struct Lines;

impl Handler for Lines {
    const NAME: &'static str = "lines";
    const COMMANDS: &'static [Command] = &[Command::new("lines", "<n>", "Write n lines.")];

    async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
        let n: u32 = call.arg(0)?;
        for i in 1..=n {
            cx.reply(format!("line {i}"));
        }
        Ok(())
    }
}

/// How late a line may be stamped after the limiter let it go: the transport stamps it, and on a
/// loaded machine the bot's thread can be descheduled in between.
const STAMP_JITTER: f64 = 0.05;

/// Asserts that no window of the send times holds more lines than a GCRA limiter of `rate`
/// allows: at most `burst + rate * window`, plus one line for timer rounding and what the
/// limiter allowed during `STAMP_JITTER` (a line stamped late shortens the window it starts).
/// Without pacing, the same lines arrive within a few milliseconds and fail this by hundreds.
fn assert_paced(said: &[Said], rate: Rate) {
    for (i, first) in said.iter().enumerate() {
        for (k, last) in said[i..].iter().enumerate() {
            let window = last.at.duration_since(first.at).as_secs_f64();
            let allowed = f64::from(rate.burst) + rate.per_second * (window + STAMP_JITTER) + 1.0;
            let count = (k + 1) as f64;
            assert!(
                count <= allowed,
                "{count} lines within {window:.4}s, but the limit allows {allowed:.1} (lines {i}..={})",
                i + k
            );
        }
    }
}

fn limits(rate: Rate) -> Limits {
    Limits {
        global: Some(rate),
        ..Limits::unlimited(400)
    }
}

#[tokio::test]
async fn a_burst_of_500_replies_never_exceeds_the_rate_and_loses_nothing() {
    let rate = Rate::new(250.0, 10);
    let mut bot = TestBot::with_limits(limits(rate)).with(Lines);
    bot.send("!lines 500");
    let mut said = Vec::new();
    for _ in 0..500 {
        said.push(bot.said().await);
    }
    let texts: Vec<String> = said.iter().map(|s| s.text.clone()).collect();
    let expected: Vec<String> = (1..=500).map(|i| format!("line {i}")).collect();
    assert_eq!(texts, expected, "every line, in order");
    assert_paced(&said, rate);
    assert_eq!(bot.status().outbox.dropped, 0);
}

/// Fifty blocking handlers (fifty threads) that all match the same message and reply ten lines
/// each at the same instant.
#[derive(Clone)]
struct Crowd<const N: usize> {
    barrier: Arc<Barrier>,
}

const NAMES: [&str; 50] = [
    "c00", "c01", "c02", "c03", "c04", "c05", "c06", "c07", "c08", "c09", "c10", "c11", "c12",
    "c13", "c14", "c15", "c16", "c17", "c18", "c19", "c20", "c21", "c22", "c23", "c24", "c25",
    "c26", "c27", "c28", "c29", "c30", "c31", "c32", "c33", "c34", "c35", "c36", "c37", "c38",
    "c39", "c40", "c41", "c42", "c43", "c44", "c45", "c46", "c47", "c48", "c49",
];

impl<const N: usize> Handler for Crowd<N> {
    const NAME: &'static str = NAMES[N];
    const PATTERNS: &'static [&'static str] = &["^all together$"];
    const BLOCKING: bool = true;

    async fn matched(&mut self, cx: &mut Context, _m: Match) -> Result {
        self.barrier.wait();
        for i in 0..10 {
            cx.reply(format!("{} {i}", Self::NAME));
        }
        Ok(())
    }
}

macro_rules! crowd {
    ($bot:expr, $barrier:expr; $($n:literal)*) => {
        $bot$(.with(Crowd::<$n> { barrier: $barrier.clone() }))*
    };
}

#[tokio::test]
async fn fifty_threads_replying_at_once_stay_within_the_rate() {
    let rate = Rate::new(200.0, 5);
    let barrier = Arc::new(Barrier::new(50));
    let bot = TestBot::with_limits(limits(rate));
    let mut bot = crowd!(bot, barrier; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24
        25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49);
    bot.send("all together");
    let mut said = Vec::new();
    for _ in 0..500 {
        said.push(bot.said().await);
    }
    assert_paced(&said, rate);
    let mut texts: Vec<String> = said.into_iter().map(|s| s.text).collect();
    texts.sort();
    let mut expected: Vec<String> = NAMES
        .iter()
        .flat_map(|n| (0..10).map(move |i| format!("{n} {i}")))
        .collect();
    expected.sort();
    assert_eq!(texts, expected, "all 500 replies, none lost");
}

#[tokio::test]
async fn destinations_take_turns() {
    // Per destination 5/s: a 30-line answer in #a must not hold #b's line back for 6 s.
    let limits = Limits {
        per_destination: Some(Rate::new(5.0, 1)),
        ..Limits::unlimited(400)
    };
    let mut bot = TestBot::with_limits(limits).with(Lines).with(Echo);
    bot.send_as("alice", "#a", "!lines 30");
    let first = bot.said().await;
    assert_eq!(first.text, "line 1");
    bot.send_as("bob", "#b", "!echo hello b");
    let mut before = 0;
    loop {
        let s = bot.said().await;
        if s.text == "hello b" {
            assert_eq!(s.dest, Destination::room("#b"));
            break;
        }
        before += 1;
    }
    // Five lines of #a take a second; bob's message needs milliseconds to reach the outbox.
    assert!(before < 5, "#b waited behind {before} lines of #a");
}

#[tokio::test]
async fn long_replies_are_split_exactly_at_the_limit_without_breaking_utf8() {
    let max = 50;
    let mut bot = TestBot::with_limits(Limits::unlimited(max)).with(Echo);
    // No spaces, so every cut is a hard cut at a character boundary.
    let text: String = "aé€𝄞".repeat(30);
    bot.send(&format!("!echo {text}"));
    let mut got = String::new();
    let mut pieces = Vec::new();
    while got.len() < text.len() {
        let piece = bot.reply().await;
        assert!(piece.len() <= max, "{} bytes", piece.len());
        got.push_str(&piece);
        pieces.push(piece);
    }
    assert_eq!(got, text);
    for p in &pieces[..pieces.len() - 1] {
        // Full pieces: the next character (at most 4 bytes) would not have fitted.
        assert!(p.len() > max - 4, "piece of {} bytes cut early", p.len());
    }
}

#[tokio::test]
async fn control_characters_never_reach_the_transport() {
    let mut bot = TestBot::new().with(Echo);
    bot.send("!echo x\r\nQUIT :bye\u{0}\u{7}");
    assert_eq!(bot.reply().await, "x");
    assert_eq!(bot.reply().await, "QUIT :bye");
}

#[tokio::test]
async fn repeated_text_is_collapsed_so_bots_cannot_loop() {
    let mut bot = TestBot::new().with(Echo);
    for _ in 0..7 {
        bot.send("!echo same again");
    }
    bot.send("!echo end");
    let replies = bot.replies(6).await;
    assert_eq!(replies[..5], ["same again"; 5]);
    assert_eq!(replies[5], "end");
    assert_eq!(bot.status().outbox.collapsed, 2);
}

#[tokio::test]
async fn a_full_queue_drops_and_says_so_once() {
    let mut bot = TestBot::with_limits(limits(Rate::new(100.0, 1)))
        .with(Lines)
        .configure(|o| o.outbox.queue = 10);
    bot.send("!lines 50");
    let mut lines = Vec::new();
    loop {
        let t = bot.reply().await;
        if t.starts_with('…') {
            let n: u64 = t.split_whitespace().nth(1).unwrap().parse().unwrap();
            assert_eq!(t, format!("… {n} lines dropped"));
            assert_eq!(
                lines.len() as u64 + n,
                50,
                "what was sent plus what was dropped"
            );
            assert_eq!(bot.status().outbox.dropped, n);
            break;
        }
        lines.push(t);
    }
    // The lines that did go out are the first ones, in order.
    let expected: Vec<String> = (1..=lines.len()).map(|i| format!("line {i}")).collect();
    assert_eq!(lines, expected);
    bot.send("!lines 2");
    assert_eq!(
        bot.replies(2).await,
        ["line 1", "line 2"],
        "one notice only"
    );
}

#[tokio::test]
async fn shutdown_drains_what_was_already_said() {
    let mut bot = TestBot::with_limits(limits(Rate::new(100.0, 1))).with(Lines);
    bot.send("!lines 150");
    assert_eq!(bot.reply().await, "line 1");
    let started = Instant::now();
    let rest = bot.shutdown().await;
    let texts: Vec<String> = rest.into_iter().map(|s| s.text).collect();
    let expected: Vec<String> = (2..=150).map(|i| format!("line {i}")).collect();
    assert_eq!(texts, expected, "nothing lost at shutdown");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "drained within the deadline"
    );
}

#[tokio::test]
async fn long_lines_cost_more_under_a_byte_budget() {
    // 4,000 bytes a second with a 1,000-byte burst; each line of text is 190 bytes, plus the
    // destination's name and a 10-byte protocol overhead: 205 bytes on the wire.
    let bytes = Rate::new(4000.0, 1000);
    let limits = Limits {
        global_bytes: Some(bytes),
        line_overhead: 10,
        multiline: false,
        ..Limits::unlimited(400)
    };
    let mut bot = TestBot::with_limits(limits).with(Echo);
    for i in 0..60 {
        bot.send(&format!("!echo {i:03} {}", "x".repeat(186)));
    }
    let mut said = Vec::new();
    for _ in 0..60 {
        said.push(bot.said().await);
    }
    let cost = |s: &Said| (s.text.len() + s.dest.name().len() + 10) as f64;
    for (i, first) in said.iter().enumerate() {
        let mut total = 0.0;
        for last in &said[i..] {
            total += cost(last);
            let window = last.at.duration_since(first.at).as_secs_f64();
            let allowed =
                f64::from(bytes.burst) + bytes.per_second * (window + STAMP_JITTER) + cost(last);
            assert!(
                total <= allowed,
                "{total} bytes within {window:.4}s, limit {allowed:.0}"
            );
        }
    }
}

/// The anti-loop guard forgets after its window: the same text is said again later.
#[tokio::test]
async fn repeated_text_is_allowed_again_after_the_loop_window() {
    let mut bot = TestBot::new().with(Echo).configure(|o| {
        o.outbox.loop_repeats = 2;
        o.outbox.loop_window = Duration::from_millis(300);
    });
    for _ in 0..3 {
        bot.send("!echo again");
    }
    bot.send("!echo sync");
    assert_eq!(bot.replies(3).await, ["again", "again", "sync"]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    bot.send("!echo again");
    assert_eq!(bot.reply().await, "again");
    assert_eq!(bot.status().outbox.collapsed, 1);
}

/// `!para N` answers N numbered lines in one reply.
#[derive(Clone)]
struct Para;

impl Handler for Para {
    const NAME: &'static str = "para";
    const COMMANDS: &'static [Command] =
        &[Command::new("para", "<n>", "Answer n lines in one reply.")];

    async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
        let n: u32 = call.arg(0)?;
        let text: Vec<String> = (1..=n).map(|i| format!("line {i}")).collect();
        cx.reply(text.join("\n"));
        Ok(())
    }
}

#[tokio::test]
async fn a_multiline_transport_gets_lines_packed_into_few_messages() {
    let limits = Limits {
        multiline: true,
        ..Limits::unlimited(30)
    };
    let mut bot = TestBot::with_limits(limits).with(Para);
    bot.send("!para 9");
    // "line 1\nline 2\nline 3\nline 4" is 27 bytes; a fifth line would make 34.
    assert_eq!(bot.reply().await, "line 1\nline 2\nline 3\nline 4");
    assert_eq!(bot.reply().await, "line 5\nline 6\nline 7\nline 8");
    assert_eq!(bot.reply().await, "line 9");
    // The same reply on a single-line transport is nine messages.
    let mut single = TestBot::with_limits(Limits::unlimited(30)).with(Para);
    single.send("!para 9");
    assert_eq!(single.replies(9).await[8], "line 9");
}

//! The delivery window: a transport that answers its deliveries later (a server's
//! acknowledgement, a post in flight) is handed up to its window of them at once, never more
//! than its per-destination share for one destination, each destination's lines in order; and
//! when its session dies with some unanswered, they come back in order, none lost, none twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opsbot::message::{Destination, Incoming, Sender};
use opsbot::prelude::*;
use opsbot::transport::{Delivery, Limits, Link, SessionEnd, Transport, TransportError};
use opsbot::{Bot, Shutdown};

/// What the test transport holds and has written.
#[derive(Debug, Default)]
struct Wire {
    /// Deliveries handed over and not yet answered.
    held: Vec<Delivery>,
    /// Lines answered as written, in the order answered.
    written: Vec<(String, String)>,
    /// Every line handed over, in the order handed (a line handed twice appears twice).
    handed: Vec<(String, String)>,
    /// The most held at once, in all and per destination.
    max_held: usize,
    max_per_dest: usize,
    /// Set by the test: the session dies, dropping what it holds.
    cut: bool,
    /// Set by the test: the session drops what it holds and goes on (a stream started afresh).
    give_back: bool,
    /// The most the session takes into its hands (its own window, below the outbox's).
    limit: Option<usize>,
    sessions: u32,
}

#[derive(Clone)]
struct Holding {
    wire: Arc<Mutex<Wire>>,
    window: usize,
    per_dest: usize,
}

impl Transport for Holding {
    fn kind(&self) -> &'static str {
        "holding"
    }

    fn limits(&self) -> Limits {
        Limits {
            window: self.window,
            window_per_destination: self.per_dest,
            ..Limits::unlimited(400)
        }
    }

    async fn session(&mut self, link: &mut Link) -> Result<SessionEnd, TransportError> {
        let first = {
            let mut w = self.wire.lock().unwrap();
            w.sessions += 1;
            w.sessions == 1
        };
        link.connected("holding");
        if first {
            link.incoming(Incoming::direct(Sender::new("tester"), "!burst"));
        }
        loop {
            let room = {
                let w = self.wire.lock().unwrap();
                w.limit.is_none_or(|l| w.held.len() < l)
            };
            tokio::select! {
                d = link.next_delivery(), if room => {
                    let Some(d) = d else { return Ok(SessionEnd::Finished) };
                    let mut w = self.wire.lock().unwrap();
                    w.handed.push((d.dest.name().to_owned(), d.text.clone()));
                    w.held.push(d);
                    let held = w.held.len();
                    w.max_held = w.max_held.max(held);
                    let mut per: HashMap<String, usize> = HashMap::new();
                    for h in &w.held {
                        *per.entry(h.dest.name().to_owned()).or_default() += 1;
                    }
                    let most = per.values().copied().max().unwrap_or(0);
                    w.max_per_dest = w.max_per_dest.max(most);
                }
                () = tokio::time::sleep(Duration::from_millis(2)) => {
                    let mut w = self.wire.lock().unwrap();
                    if w.give_back {
                        w.give_back = false;
                        w.limit = None;
                        w.held.clear();
                    }
                    if w.cut {
                        w.cut = false;
                        // Taken, never answered: back to the outbox.
                        w.held.clear();
                        return Err(TransportError::Connection("cut by the test".into()));
                    }
                }
            }
        }
    }
}

/// `!burst`: ten numbered lines to each of `#a`, `#b` and `#c`, each its own message.
#[derive(Clone)]
struct Burst;

impl Handler for Burst {
    const NAME: &'static str = "burst";
    const COMMANDS: &'static [Command] = &[Command::new("burst", "", "Say 30 lines.")];

    async fn command(&mut self, cx: &mut Context, _call: Call) -> Result {
        for i in 1..=10 {
            for room in ["#a", "#b", "#c"] {
                cx.say(Destination::room(room), format!("{room} {i}"));
            }
        }
        Ok(())
    }
}

fn start(
    window: usize,
    per_dest: usize,
    limit: Option<usize>,
) -> (
    Arc<Mutex<Wire>>,
    Shutdown,
    std::thread::JoinHandle<std::io::Result<()>>,
) {
    let wire = Arc::new(Mutex::new(Wire {
        limit,
        ..Wire::default()
    }));
    let bot = Bot::builder("window")
        .transport(Holding {
            wire: wire.clone(),
            window,
            per_dest,
        })
        .handler(Burst)
        .configure(|o| {
            o.reconnect.initial = Duration::from_millis(10);
            o.reconnect.max = Duration::from_millis(20);
            o.shutdown_deadline = Duration::from_secs(1);
        })
        .build()
        .unwrap();
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    let runner = std::thread::spawn(move || opsbot::run_until(vec![bot], s, false));
    (wire, shutdown, runner)
}

fn wait_for(wire: &Arc<Mutex<Wire>>, what: &str, ok: impl Fn(&Wire) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if ok(&wire.lock().unwrap()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never {what}: {:?}",
            wire.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Answers every held delivery as written.
fn write_all(wire: &Arc<Mutex<Wire>>) {
    let mut w = wire.lock().unwrap();
    let held: Vec<Delivery> = w.held.drain(..).collect();
    for d in held {
        w.written.push((d.dest.name().to_owned(), d.text.clone()));
        d.done();
    }
}

fn per_room(lines: &[(String, String)], room: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|(d, _)| d == room)
        .map(|(_, t)| t.clone())
        .collect()
}

fn expected(room: &str) -> Vec<String> {
    (1..=10).map(|i| format!("{room} {i}")).collect()
}

/// Window 4, all of it for one room if need be (XMPP's case: one ordered connection): four
/// lines are handed at once; a cut with four unanswered brings them back before anything after
/// them; every line is written once, each room's in its order.
#[test]
fn a_window_hands_several_lines_and_a_cut_brings_the_unanswered_back_in_order() {
    let (wire, shutdown, runner) = start(4, 4, None);
    wait_for(&wire, "four held", |w| w.held.len() == 4);
    write_all(&wire);
    wait_for(&wire, "four held again", |w| w.held.len() == 4);
    wire.lock().unwrap().cut = true;
    wait_for(&wire, "a second session", |w| {
        w.sessions == 2 && w.held.len() == 4
    });
    loop {
        write_all(&wire);
        if wire.lock().unwrap().written.len() == 30 {
            break;
        }
        wait_for(&wire, "more held", |w| {
            !w.held.is_empty() || w.written.len() == 30
        });
    }
    let w = wire.lock().unwrap();
    for room in ["#a", "#b", "#c"] {
        assert_eq!(per_room(&w.written, room), expected(room), "{room}");
    }
    assert_eq!(w.max_held, 4);
    // The four cut (and any handed over and never taken) went out again.
    assert!(w.handed.len() >= 34, "{}", w.handed.len());
    for room in ["#a", "#b", "#c"] {
        let mut handed = per_room(&w.handed, room);
        handed.dedup();
        // Handed again from where it stopped: each room's lines never went backwards but
        // to return to the first unanswered one.
        let mut last = 0;
        for t in &handed {
            let n: u32 = t.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(n <= last + 1, "{room}: {handed:?}");
            last = last.max(n);
        }
    }
    drop(w);
    shutdown.trigger();
    runner.join().unwrap().unwrap();
}

/// Lines chosen after one that comes back must not overtake it, even those already handed
/// over in the gap before the outbox heard of the return: the transport holds two of a window
/// of four (two more wait in the hand-over), gives its two back without ending the session,
/// and goes on taking: what it gets next is one of those two, never a line after them.
#[test]
fn lines_handed_over_after_one_that_came_back_do_not_overtake_it() {
    let (wire, shutdown, runner) = start(4, 4, Some(2));
    wait_for(&wire, "two held", |w| w.held.len() == 2);
    // Let the outbox fill the hand-over behind them.
    std::thread::sleep(Duration::from_millis(50));
    let first = wire.lock().unwrap().handed.clone();
    wire.lock().unwrap().give_back = true;
    wait_for(&wire, "given back and taken again", |w| {
        !w.give_back && w.handed.len() > first.len()
    });
    // The first line taken after the give-back is one of the two given back.
    let next = wire.lock().unwrap().handed[first.len()].clone();
    assert!(first.contains(&next), "{next:?} overtook {first:?}");
    loop {
        write_all(&wire);
        if wire.lock().unwrap().written.len() == 30 {
            break;
        }
        wait_for(&wire, "more held", |w| {
            !w.held.is_empty() || w.written.len() == 30
        });
    }
    let w = wire.lock().unwrap();
    for room in ["#a", "#b", "#c"] {
        assert_eq!(per_room(&w.written, room), expected(room), "{room}");
    }
    drop(w);
    shutdown.trigger();
    runner.join().unwrap().unwrap();
}

/// Window 3, one per room (Webex's case: posts that could overtake each other): never two
/// lines of one room in the transport's hands, three rooms at once, each room's order kept.
#[test]
fn one_per_room_at_a_time_and_rooms_side_by_side() {
    let (wire, shutdown, runner) = start(3, 1, None);
    loop {
        wait_for(&wire, "something held", |w| {
            !w.held.is_empty() || w.written.len() == 30
        });
        if wire.lock().unwrap().written.len() == 30 {
            break;
        }
        // Answer them in reverse: a later room's post may finish first.
        let mut w = wire.lock().unwrap();
        let mut held: Vec<Delivery> = w.held.drain(..).collect();
        held.reverse();
        for d in held {
            w.written.push((d.dest.name().to_owned(), d.text.clone()));
            d.done();
        }
    }
    let w = wire.lock().unwrap();
    assert_eq!(w.max_per_dest, 1, "two lines of one room at once");
    assert_eq!(w.max_held, 3, "rooms side by side");
    for room in ["#a", "#b", "#c"] {
        assert_eq!(per_room(&w.written, room), expected(room), "{room}");
    }
    drop(w);
    shutdown.trigger();
    runner.join().unwrap().unwrap();
}

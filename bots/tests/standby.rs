//! Bots in active/standby across processes: two `opsbot run` processes carry the same IRC bot,
//! with a real nats-server holding the bot's lease and a real ngircd. One speaks; the other
//! stands by, not even connected; when the holder is killed, frozen, cut off from NATS or
//! stopped, the other takes over, and the channel never hears the bot twice.

use std::time::{Duration, Instant};

use crate::node::ADMIN;
use crate::node::{Node, ROOM, Room};
use crate::support::cut::CutProxy;
use crate::support::http::http;
use crate::support::nats::Nats;
use crate::support::{Kind, Server};

/// An ngircd, a nats-server, and two processes carrying the bot: `a` holding it, `b` standing
/// by. Dropped in that order: the processes first.
struct Pair {
    a: Node,
    b: Node,
    nats: Nats,
    irc: Server,
    dir: tempfile::TempDir,
}

impl Pair {
    fn start(ttl: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let irc = Server::start(Kind::Ngircd);
        let nats = Nats::start(&dir.path().join("nats"));
        let mut a = Node::start(dir.path(), "a", irc.port, nats.port, ttl);
        a.holds(PATIENCE);
        let mut b = Node::start(dir.path(), "b", irc.port, nats.port, ttl);
        b.stands_by(PATIENCE);
        Self {
            a,
            b,
            nats,
            irc,
            dir,
        }
    }
}

const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_voice_and_a_take_over_when_the_holder_is_killed() {
    let Pair {
        dir: _dir,
        irc,
        nats: _nats,
        mut a,
        mut b,
    } = Pair::start("2s");
    let a_me = a.me();
    b.wait("seeing who holds the bot", PATIENCE, |v| {
        v["lead"]["holder"] == a_me.as_str()
    });
    let mut room = Room::join(irc.port).await;
    for i in 0..5 {
        room.ask(&format!("one-{i}")).await;
    }
    assert_eq!(
        room.bots_present().await,
        ["opsbot"],
        "the standby is not connected"
    );
    let a_me = a.me();

    a.kill();
    let took = room.until_answered("after-kill", PATIENCE).await;
    eprintln!("take-over after SIGKILL: {took:.1?}");
    let holder = b.holds(PATIENCE);
    assert_eq!(holder["lead"]["holder"], b.me(), "{holder}");
    assert_eq!(room.bots_present().await.len(), 1);
    room.ask("after").await;
    room.each_once();
    let audit = b.audit();
    assert!(
        audit.contains(&format!("lead acquired by {}", b.me())),
        "{audit:?}"
    );
    assert!(!audit.iter().any(|s| s.contains(&a_me)), "{audit:?}");
    let (_, healing) = http(b.api, "GET", "/api/v1/healing-log", &[], b"");
    assert!(
        healing.contains("holds the bot's lead now"),
        "the take-over is in the healing log: {healing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_holder_is_quiet_when_it_runs_again() {
    let Pair {
        dir: _dir,
        irc,
        nats: _nats,
        mut a,
        mut b,
    } = Pair::start("2s");
    let mut room = Room::join(irc.port).await;
    room.until_answered("before", PATIENCE).await;

    // Frozen: its connection stays open, and what is asked meanwhile waits in its socket.
    a.signal("-STOP");
    room.user.say(ROOM, "!echo while-frozen").await;
    // The standby takes the lease once it runs out, but not the nick, which the frozen
    // connection still holds: it waits unregistered, so the bot is never on the server twice.
    let t = Instant::now();
    b.wait("holding the lease", PATIENCE, |v| v["lead"]["held"] == true);
    eprintln!("lease taken over after SIGSTOP: {:.1?}", t.elapsed());
    assert_eq!(room.bots_present().await, ["opsbot"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(room.bots_present().await, ["opsbot"]);

    // Running again, it finds its lead run out: it answers nothing of what it read, and
    // closes its connection; the new holder then gets the nick and answers.
    a.signal("-CONT");
    let took = room.until_answered("after-thaw", PATIENCE).await;
    eprintln!("answering after SIGCONT: {took:.1?}");
    a.stands_by(PATIENCE);
    let b_me = b.me();
    let st = a.wait("seeing the new holder", PATIENCE, |v| {
        v["lead"]["holder"] == b_me.as_str()
    });
    assert_eq!(st["transport"]["connection"], "standby", "{st}");
    room.ask("after").await;
    room.each_once();
    assert!(
        !room.answers.iter().any(|(_, t)| t == "while-frozen"),
        "the frozen holder spoke again: {:?}",
        room.answers
    );
    assert_eq!(room.bots_present().await, ["opsbot"]);
    let (_, healing) = http(a.api, "GET", "/api/v1/healing-log", &[], b"");
    assert!(
        healing.contains("lost the bot's lead"),
        "the loss is in the healing log: {healing}"
    );
    assert!(
        a.audit().contains(&format!("lead lost by {}", a.me())),
        "{:?}",
        a.audit()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_from_nats_goes_quiet_and_the_standby_speaks() {
    let dir = tempfile::tempdir().unwrap();
    let irc = Server::start(Kind::Ngircd);
    let nats = Nats::start(&dir.path().join("nats"));
    let proxy = CutProxy::start(nats.port).await;
    let mut a = Node::start(dir.path(), "a", irc.port, proxy.port, "2s");
    a.holds(PATIENCE);
    let mut b = Node::start(dir.path(), "b", irc.port, nats.port, "2s");
    b.stands_by(PATIENCE);
    let mut room = Room::join(irc.port).await;
    room.until_answered("before", PATIENCE).await;

    // What `a` says to NATS is dropped from now on: its renewals never arrive.
    proxy.hold();
    let t = Instant::now();
    b.holds(PATIENCE);
    eprintln!("take-over after a cut from NATS: {:.1?}", t.elapsed());
    a.stands_by(PATIENCE);
    // Connected is not yet in the channel: asked until it has joined.
    room.until_answered("during", PATIENCE).await;

    // The partition heals: `a` sees the lease held by `b`, and stays quiet.
    proxy.cut();
    let b_me = b.me();
    let st = a.wait("seeing the new holder", PATIENCE, |v| {
        v["lead"]["holder"] == b_me.as_str()
    });
    assert_eq!(st["transport"]["connection"], "standby", "{st}");
    room.ask("healed").await;
    room.each_once();
    assert_eq!(room.bots_present().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_stops_hands_over_before_its_lease_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    let irc = Server::start(Kind::Ngircd);
    let nats = Nats::start(&dir.path().join("nats"));
    // A lease of a minute: a take-over within half of it was handed over, not waited out.
    let mut a = Node::start(dir.path(), "a", irc.port, nats.port, "60s");
    a.holds(PATIENCE);
    let mut b = Node::start(dir.path(), "b", irc.port, nats.port, "60s");
    b.stands_by(PATIENCE);
    let mut room = Room::join(irc.port).await;
    room.until_answered("before", PATIENCE).await;
    let a_me = a.me();
    a.stop();
    let took = room.until_answered("after-stop", PATIENCE).await;
    eprintln!("hand-over after SIGTERM: {took:.1?}");
    b.holds(PATIENCE);
    room.each_once();
    // `a`'s own trail says it let go.
    let mut node_a = Node::start(dir.path(), "a", irc.port, nats.port, "60s");
    node_a.stands_by(PATIENCE);
    assert!(
        node_a.audit().contains(&format!("lead released by {a_me}")),
        "{:?}",
        node_a.audit()
    );
}

/// NATS down: nobody can prove it is the only voice, so the bot goes quiet (its lead runs out)
/// and alerts are refused with a 503 that says why (Alertmanager sends them again); NATS back
/// (its store kept): the bot speaks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_the_bot_is_quiet_and_alerts_are_refused_until_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let irc = Server::start(Kind::Ngircd);
    let store = dir.path().join("nats");
    let nats = Nats::start(&store);
    let mut a = Node::start(dir.path(), "a", irc.port, nats.port, "2s");
    a.holds(PATIENCE);
    let mut room = Room::join(irc.port).await;
    room.until_answered("before", PATIENCE).await;

    let (port, monitor) = nats.kill();
    a.stands_by(PATIENCE);
    let body = br#"{"version":"4","groupKey":"g","status":"firing","receiver":"r","groupLabels":{},"commonLabels":{},"commonAnnotations":{},"externalURL":"","alerts":[{"status":"firing","labels":{"alertname":"X"},"annotations":{},"startsAt":"2026-01-01T00:00:00Z","endsAt":"","generatorURL":"","fingerprint":"f"}]}"#;
    let auth = format!("Bearer {ADMIN}");
    let (code, answer) = http(
        a.api,
        "POST",
        "/api/v1/alerts/alertmanager",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body,
    );
    assert_eq!(code, 503, "{answer}");
    assert!(answer.contains("NATS"), "{answer}");
    assert_eq!(
        room.bots_present().await.len(),
        0,
        "quiet: not even connected"
    );

    let _nats = Nats::start_on(&store, port, monitor);
    a.holds(PATIENCE);
    room.until_answered("after", PATIENCE).await;
    room.each_once();
}

/// A renewal that reached NATS but whose answer the holder never heard moves the lease's
/// sequence under it: the holder finds the lease still its own and goes on holding it, without
/// a blip (its connection stays up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_never_heard_answered_does_not_cost_the_lead() {
    let dir = tempfile::tempdir().unwrap();
    let irc = Server::start(Kind::Ngircd);
    let nats = Nats::start(&dir.path().join("nats"));
    let mut a = Node::start(dir.path(), "a", irc.port, nats.port, "2s");
    a.holds(PATIENCE);
    let me = a.me();
    let since = a.bot()["lead"]["since_unix"].as_u64().unwrap() * 1000;
    // What the holder's own renewal would have written, as if its answer had been lost.
    let client = async_nats::connect(format!("nats://127.0.0.1:{}", nats.port))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let subject = format!(
        "$KV.standby_leases.{}",
        opsbot_engine::cluster::token("bot:ops")
    );
    let value = format!(r#"{{"holder":"{me}","since_ms":{since}}}"#);
    js.publish(subject, value.into())
        .await
        .unwrap()
        .await
        .unwrap();
    // Several renewals later: held all along.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = a.holds(PATIENCE);
    assert_eq!(st["transport"]["reconnects"], 0, "{st}");
    let (_, healing) = http(a.api, "GET", "/api/v1/healing-log", &[], b"");
    assert!(!healing.contains("lost the bot's lead"), "{healing}");
}

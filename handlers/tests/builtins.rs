//! The built-in handlers, driven through a real bot.

use opsbot::health::{ActorKind, ActorState};
use opsbot::prelude::*;
use opsbot::testkit::TestBot;
use opsbot_handlers::{demo, echo, help, status, whereareyou};

#[derive(Clone)]
struct Deploy;

impl Handler for Deploy {
    const NAME: &'static str = "deploy";
    const COMMANDS: &'static [Command] = &[
        Command::new("deploy", "<service>", "Deploy a service.")
            .admin_only()
            .aliases(&["ship"]),
        Command::new("rollback", "<service>", "Roll a service back.").cooldown_secs(30),
    ];
}

fn bot() -> TestBot {
    TestBot::new()
        .with(help::Help)
        .with(status::Status)
        .with(whereareyou::WhereAreYou)
        .with(echo::Echo)
        .with(Deploy)
}

#[tokio::test]
async fn help_lists_every_registered_command_and_only_those() {
    let mut bot = bot();
    bot.send("!help");
    let mut lines = bot.replies(7).await;
    assert_eq!(
        lines.pop().unwrap(),
        "!help <command> shows one command in full"
    );
    assert_eq!(
        lines,
        [
            "!deploy <service> — Deploy a service. [admin]",
            "!echo <text> — Say the text back.",
            "!help [command] — List the commands, or show one command in full.",
            "!rollback <service> — Roll a service back.",
            "!status — Show version, uptime, connection, each handler's and poller's state, breakers and the outbox.",
            "!whereareyou — Tell the host name and IP addresses the bot runs on.",
        ]
    );
    bot.send("!echo end");
    assert_eq!(bot.reply().await, "end", "nothing more was listed");
}

#[tokio::test]
async fn help_for_one_command_shows_it_in_full() {
    let mut bot = bot();
    bot.send("!help ship");
    assert_eq!(
        bot.replies(4).await,
        [
            "usage: !deploy <service>",
            "Deploy a service.",
            "aliases: !ship",
            "admins only"
        ]
    );
    bot.send("!help !rollback");
    assert_eq!(
        bot.replies(3).await,
        [
            "usage: !rollback <service>",
            "Roll a service back.",
            "cooldown: 30s per user"
        ]
    );
    bot.send("!help nothing");
    assert_eq!(
        bot.reply().await,
        "tester: !help: no command named `nothing`; try !help"
    );
    bot.send("!help a b");
    assert_eq!(bot.reply().await, "tester: usage: !help [command]");
}

#[tokio::test]
async fn status_shows_restarts_last_error_and_unavailable_help() {
    let mut bot = bot()
        .with(demo::Boom)
        .configure(|o| o.restart.max_restarts = 1);
    bot.send("!boom");
    assert_eq!(
        bot.reply().await,
        "tester: sorry, !boom crashed; it is being restarted"
    );
    bot.send("!echo ok");
    assert_eq!(bot.reply().await, "ok");
    // The restart takes its backoff (10 ms here); ask for the status once it is done.
    bot.wait_status("boom restarted", |s| {
        s.actor(ActorKind::Handler, "boom")
            .is_some_and(|a| a.state == ActorState::Running)
    })
    .await;
    bot.send("!status");
    let report = bot.replies(10).await;
    // The health summary first: every subsystem healthy again after the restart.
    assert_eq!(report[0], "healthy · 7 of 7 subsystems healthy");
    assert!(
        report[1].starts_with(&format!("opsbot {} · bot test · up ", opsbot::VERSION)),
        "{}",
        report[1]
    );
    assert_eq!(
        report[2],
        "transport memory: connected (memory as testbot), 0 reconnects"
    );
    let boom = report
        .iter()
        .find(|l| l.starts_with("handler boom"))
        .unwrap();
    assert!(
        boom.starts_with("handler boom: running, 1 handled, 1 restart, last error "),
        "{boom}"
    );
    // Where it panicked, never the panic's text (it can carry a secret).
    assert!(
        boom.ends_with("panicked at handlers/src/demo.rs:19"),
        "{boom}"
    );
    assert!(!boom.contains("crashed on purpose"), "{boom}");
    assert!(
        report
            .iter()
            .any(|l| l == "handler echo: running, 1 handled"),
        "{report:?}"
    );
    assert!(report[9].starts_with("outbox: 0 queued, "), "{}", report[9]);

    // A second crash spends the budget: the user is told it is disabled, the bot is degraded,
    // and status and help agree.
    bot.send("!boom");
    assert_eq!(
        bot.reply().await,
        "tester: sorry, !boom crashed and is disabled after repeated crashes"
    );
    bot.send("!boom");
    assert_eq!(bot.reply().await, "tester: !boom is unavailable right now");
    bot.send("!status");
    assert_eq!(
        bot.reply().await,
        "degraded: handler:boom failed · 6 of 7 subsystems healthy"
    );
    let report = bot.replies(9).await;
    let boom = report
        .iter()
        .find(|l| l.starts_with("handler boom"))
        .unwrap();
    assert!(
        boom.starts_with("handler boom: failed (disabled after repeated crashes), 2 handled"),
        "{boom}"
    );
    bot.send("!help boom");
    let detail = bot.replies(3).await;
    assert_eq!(detail[2], "unavailable right now: handler boom has failed");
}

#[tokio::test]
async fn whereareyou_names_the_host() {
    let mut bot = bot();
    bot.send("!whereareyou");
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let answer = bot.reply().await;
    let list = answer
        .strip_prefix(&format!("I am on {host} ("))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{answer}"));
    // At least one address, and every one a real address (the loopback one at least).
    let addrs: Vec<std::net::IpAddr> = list
        .split(", ")
        .map(|a| a.parse().unwrap_or_else(|_| panic!("{a:?} in {answer}")))
        .collect();
    assert!(!addrs.is_empty(), "{answer}");
}

#[tokio::test]
async fn lines_writes_what_was_asked_and_refuses_nonsense() {
    let mut bot = TestBot::new().with(demo::Lines);
    bot.send("!lines 3");
    assert_eq!(
        bot.replies(3).await,
        ["line 1 of 3", "line 2 of 3", "line 3 of 3"]
    );
    for bad in [
        "!lines",
        "!lines 0",
        "!lines 1001",
        "!lines many",
        "!lines 1 2",
    ] {
        bot.send(bad);
        assert_eq!(bot.reply().await, "tester: usage: !lines <1-1000>", "{bad}");
    }
}

/// A poller that panics while `BROKEN` is set.
static BROKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

struct Fragile;

impl Poller for Fragile {
    const NAME: &'static str = "fragile";

    async fn poll(&mut self) -> Result<Vec<Item>> {
        if BROKEN.load(std::sync::atomic::Ordering::SeqCst) {
            panic!("fragile: broken on purpose");
        }
        Ok(Vec::new())
    }
}

#[tokio::test]
async fn heal_restarts_a_failed_handler_and_a_failed_poller_for_admins_only() {
    let dir = tempfile::tempdir().unwrap();
    let opts = PollerOptions {
        every: std::time::Duration::from_millis(20),
        post_to: vec![Destination::room("#test")],
        ..PollerOptions::default()
    };
    let mut bot = TestBot::new()
        .with(opsbot_handlers::heal::Heal)
        .with(demo::Boom)
        .poller(opts, || Fragile)
        .store(opsbot::store::Store::open(&dir.path().join("state.redb")).unwrap())
        .configure(|o| {
            o.admins = vec!["boss".into()];
            o.restart.max_restarts = 1;
            o.restart.backoff_initial = std::time::Duration::from_millis(5);
        });
    bot.send("!boom");
    bot.reply().await;
    bot.send("!boom");
    assert_eq!(
        bot.reply().await,
        "tester: sorry, !boom crashed and is disabled after repeated crashes"
    );
    bot.wait_status("the poller failed", |s| {
        s.actor(ActorKind::Poller, "fragile")
            .is_some_and(|a| a.state == ActorState::Failed)
    })
    .await;

    // Not an admin: refused, nothing healed.
    bot.send("!heal boom");
    let refused = bot.reply().await;
    assert!(refused.contains("admin"), "{refused}");
    // Admins: usage, unknown and ambiguous names get a short line.
    bot.send_as("boss", "#test", "!heal");
    assert_eq!(bot.reply().await, "boss: usage: !heal SUBSYSTEM");
    bot.send_as("boss", "#test", "!heal nothing");
    let unknown = bot.reply().await;
    assert!(
        unknown.starts_with("no subsystem `nothing`; try one of: ")
            && unknown.contains("handler:boom")
            && unknown.contains("poller:fragile")
            && unknown.contains("transport"),
        "{unknown}"
    );
    bot.send_as("boss", "#test", "!heal boom");
    assert_eq!(bot.reply().await, "healing handler:boom: see !status");
    BROKEN.store(false, std::sync::atomic::Ordering::SeqCst);
    bot.send_as("boss", "#test", "!heal poller:fragile");
    assert_eq!(bot.reply().await, "healing poller:fragile: see !status");
    let s = bot
        .wait_status("both running", |s| {
            s.actor(ActorKind::Handler, "boom")
                .is_some_and(|a| a.state == ActorState::Running)
                && s.actor(ActorKind::Poller, "fragile")
                    .is_some_and(|a| a.state == ActorState::Running && a.last_error.is_some())
                && s.health == opsbot::health::BotHealth::Healthy
        })
        .await;
    let heals: Vec<&str> = s
        .healing_log
        .iter()
        .filter(|e| e.action == "heal")
        .map(|e| e.detail.as_str())
        .collect();
    assert_eq!(
        heals,
        [
            "forced by boss in chat: fresh instance, restart budget renewed",
            "forced by boss in chat: fresh instance, restart budget renewed"
        ]
    );
    // The handler has a whole budget again: the next crash is restarted.
    bot.send("!boom");
    assert_eq!(
        bot.reply().await,
        "tester: sorry, !boom crashed; it is being restarted"
    );
}

/// Someone refused as "not an admin" could not learn the id the bot saw, so could not have the
/// admin entry written. `!whoami` tells it, and the entry that would cover it.
#[tokio::test]
async fn whoami_shows_the_id_the_bot_sees_and_whether_it_is_an_admin() {
    let mut bot = TestBot::new()
        .with(opsbot_handlers::whoami::WhoAmI)
        .configure(|o| o.admins = vec!["*!*@ops.example.com".into()]);
    bot.send_as("alice!al@ops.example.com", "#ops", "!whoami");
    assert_eq!(
        bot.reply().await,
        "you are alice!al@ops.example.com: an admin"
    );
    bot.send_as("bob!b@home.example.net", "#ops", "!whoami");
    assert_eq!(
        bot.reply().await,
        "you are bob!b@home.example.net: not an admin (an admin entry for you: \"*!*@home.example.net\")"
    );
    bot.send_message(Incoming::in_room(
        "#ops",
        Sender::unverified("ops@conference.example.org/alice", "alice"),
        "!whoami",
    ));
    let r = bot.reply().await;
    assert!(r.contains("a name the service cannot prove"), "{r}");
    bot.send_as("bob!b@home.example.net", "#ops", "!whoami me");
    assert_eq!(bot.reply().await, "bob!b@home.example.net: usage: !whoami");
}

//! What the router lets through, and what it tells users it does not.

use std::time::Duration;

use opsbot::options::Budget;
use opsbot::prelude::*;
use opsbot::testkit::TestBot;

#[derive(Clone)]
struct Ops;

impl Handler for Ops {
    const NAME: &'static str = "ops";
    const COMMANDS: &'static [Command] = &[
        Command::new("echo", "<text>", "Echo.").aliases(&["say"]),
        Command::new("deploy", "<service>", "Deploy a service.").admin_only(),
        Command::new("page", "<who>", "Page someone.").cooldown_secs(60),
        Command::new("add", "<a> <b>", "Add two numbers."),
        Command::new("words", "<words...>", "Count shell-style words."),
    ];
    const PATTERNS: &'static [&'static str] = &[r"\b(?P<ticket>INC-\d+)\b"];

    async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
        match call.command().name {
            "echo" => cx.reply(call.rest()),
            "deploy" => cx.reply(format!("deploying {}", call.arg::<String>(0)?)),
            "page" => cx.reply(format!("paging {}", call.arg::<String>(0)?)),
            "add" => {
                call.expect_args(2, 2)?;
                let (a, b): (i64, i64) = (call.arg(0)?, call.arg(1)?);
                cx.reply((a + b).to_string());
            }
            _ => cx.reply(format!(
                "{} words: {}",
                call.args().len(),
                call.args().join("|")
            )),
        }
        Ok(())
    }

    async fn matched(&mut self, cx: &mut Context, m: Match) -> Result {
        cx.reply(format!("ticket {}", m.name("ticket").unwrap_or("?")));
        Ok(())
    }
}

fn bot() -> TestBot {
    TestBot::new()
        .with(Ops)
        .configure(|o| o.admins = vec!["root".into()])
}

#[tokio::test]
async fn prefix_nick_alias_and_direct_messages_reach_commands() {
    let mut bot = bot();
    bot.send("!echo one");
    assert_eq!(bot.reply().await, "one");
    bot.send("testbot: say two");
    assert_eq!(bot.reply().await, "two");
    bot.send_direct("alice", "echo three");
    let s = bot.said().await;
    assert_eq!(
        (s.dest, s.text.as_str()),
        (Destination::user("alice"), "three")
    );
}

#[tokio::test]
async fn a_custom_prefix_is_honoured() {
    let mut bot = TestBot::new()
        .with(Ops)
        .configure(|o| o.prefix = ".".into());
    bot.send("!echo ignored");
    bot.send(".echo seen");
    assert_eq!(bot.reply().await, "seen");
}

#[tokio::test]
async fn bad_arguments_get_the_usage_line() {
    let mut bot = bot();
    bot.send("!add 1 two");
    assert_eq!(bot.reply().await, "tester: usage: !add <a> <b>");
    bot.send("!add 1");
    assert_eq!(bot.reply().await, "tester: usage: !add <a> <b>");
    bot.send("!words \"unbalanced");
    assert_eq!(bot.reply().await, "tester: usage: !words <words...>");
    bot.send("!add 2 40");
    assert_eq!(bot.reply().await, "42");
    bot.send("!words 'a b' c");
    assert_eq!(bot.reply().await, "2 words: a b|c");
}

#[tokio::test]
async fn admin_only_commands_refuse_others_clearly() {
    let mut bot = bot();
    bot.send("!deploy web");
    assert_eq!(bot.reply().await, "tester: !deploy is for admins only");
    bot.send_as("root", "#test", "!deploy web");
    assert_eq!(bot.reply().await, "deploying web");
}

#[tokio::test]
async fn cooldowns_are_per_user_and_told() {
    let mut bot = bot();
    bot.send("!page bob");
    assert_eq!(bot.reply().await, "paging bob");
    bot.send("!page bob");
    assert_eq!(
        bot.reply().await,
        "tester: !page is cooling down: try again in 60s"
    );
    bot.send_as("carol", "#test", "!page bob");
    assert_eq!(bot.reply().await, "paging bob");
}

#[tokio::test]
async fn unknown_commands_get_one_hint_not_a_flood() {
    let mut bot = bot();
    for _ in 0..5 {
        bot.send("!nope");
    }
    bot.send("!echo sync");
    assert_eq!(
        bot.replies(2).await,
        ["tester: unknown command: try !help", "sync"]
    );
}

/// Nonsense from many people at once (or one under many names) gets six hints a minute in all,
/// so that it cannot fill the bot's output budget; real commands are still answered.
#[tokio::test]
async fn unknown_command_hints_are_capped_across_everyone() {
    let mut bot = bot();
    for i in 0..20 {
        bot.send_direct(&format!("user{i}"), "nonsense");
    }
    bot.send_as("tester", "#test", "!echo sync");
    let mut said = Vec::new();
    loop {
        let s = bot.said().await;
        if s.text == "sync" {
            break;
        }
        said.push(s.text);
    }
    assert_eq!(said.len(), 6, "{said:?}");
    assert!(
        said.iter().all(|t| t == "unknown command: try !help"),
        "{said:?}"
    );
}

#[tokio::test]
async fn passive_matchers_get_their_captures() {
    let mut bot = bot();
    bot.send("is INC-4711 still open?");
    assert_eq!(bot.reply().await, "ticket INC-4711");
    bot.send("nothing to see");
    bot.send("!echo sync");
    assert_eq!(bot.reply().await, "sync");
}

#[tokio::test]
async fn the_command_budget_ignores_a_flooder_after_telling_them_once() {
    let mut bot = bot().configure(|o| {
        o.budget = Budget {
            per_minute: 3,
            ignore_for: Duration::from_secs(300),
        }
    });
    for i in 0..10 {
        bot.send(&format!("!echo {i}"));
    }
    bot.send_as("other", "#test", "!echo other user");
    // The router's notice and the handler's answers travel separately; compare them as a set.
    let mut replies = bot.replies(5).await;
    assert_eq!(replies.pop().unwrap(), "other user");
    replies.sort();
    assert_eq!(
        replies,
        [
            "0",
            "1",
            "2",
            "tester: too many commands; ignoring you for 5 minutes"
        ]
    );
    // Admins are not limited.
    for i in 0..5 {
        bot.send_as("root", "#test", &format!("!echo admin {i}"));
    }
    let expected: Vec<String> = (0..5).map(|i| format!("admin {i}")).collect();
    assert_eq!(bot.replies(5).await, expected);
}

/// Tells what its context says about the call: the prefix and whether the sender is an admin.
#[derive(Clone)]
struct Introspect;

impl Handler for Introspect {
    const NAME: &'static str = "introspect";
    const COMMANDS: &'static [Command] = &[Command::new("whoami", "", "Say what the bot knows.")];

    async fn command(&mut self, cx: &mut Context, _call: Call) -> Result {
        cx.reply(format!(
            "bot {} prefix {} admin {}",
            cx.bot_name(),
            cx.prefix(),
            cx.sender_is_admin()
        ));
        Ok(())
    }
}

/// A handler that checks access itself reads the same admin list the router uses.
#[tokio::test]
async fn handlers_see_the_prefix_and_whether_the_sender_is_an_admin() {
    let mut bot = TestBot::new().with(Introspect).configure(|o| {
        o.prefix = "?".into();
        o.admins = vec!["root".into(), "*!*@ops.example.com".into()];
    });
    bot.send("?whoami");
    assert_eq!(bot.reply().await, "bot test prefix ? admin false");
    bot.send_as("root", "#test", "?whoami");
    assert_eq!(bot.reply().await, "bot test prefix ? admin true");
    bot.send_as("alice!a@ops.example.com", "#test", "?whoami");
    assert_eq!(bot.reply().await, "bot test prefix ? admin true");
    bot.send_as("mallory!m@evil.example.com", "#test", "?whoami");
    assert_eq!(bot.reply().await, "bot test prefix ? admin false");
    // An id the transport could not prove (made from a nick the sender chose) matches no
    // entry, whatever it says.
    bot.send_message(Incoming::in_room(
        "#test",
        Sender::unverified("root", "root"),
        "?whoami",
    ));
    assert_eq!(bot.reply().await, "bot test prefix ? admin false");
    // The display name is never the identity: a sender named `root` is not root.
    bot.send_message(Incoming::in_room(
        "#test",
        Sender::with_name("mallory!m@evil.example.com", "root"),
        "?whoami",
    ));
    assert_eq!(bot.reply().await, "bot test prefix ? admin false");
}

/// Chatter shorter than the bot's nick is not a command and must not trip the `nick: cmd`
/// check (a slice past its end would panic the router).
#[tokio::test]
async fn chatter_shorter_than_the_nick_is_ignored() {
    let mut bot = bot();
    for text in ["ok", "t", "", "testbo", "testbot", "testbot:", "tèst"] {
        bot.send(text);
    }
    bot.send("!echo still here");
    assert_eq!(bot.reply().await, "still here");
}

/// Operators decide who may run each command (`[bot.access]`): admins only, a list, or
/// everyone (the default). Admins may run everything; an unverified id matches no list.
#[tokio::test]
async fn access_lists_decide_who_runs_a_command() {
    use opsbot::options::Access;
    let mut bot = TestBot::new().with(Ops).configure(|o| {
        o.admins = vec!["root!r@ops.example.com".into()];
        o.access.insert("echo".into(), Access::Admins);
        o.access.insert(
            "add".into(),
            Access::Only(vec!["*!*@team.example.com".into()]),
        );
        o.access.insert("words".into(), Access::Everyone);
    });
    let alice = "alice!a@team.example.com";
    let mallory = "mallory!m@evil.example.com";
    bot.send_as(mallory, "#ops", "!echo hi");
    assert_eq!(
        bot.reply().await,
        "mallory!m@evil.example.com: !echo is for admins only"
    );
    // An alias is the same command.
    bot.send_as(mallory, "#ops", "!say hi");
    assert_eq!(
        bot.reply().await,
        "mallory!m@evil.example.com: !echo is for admins only"
    );
    bot.send_as(mallory, "#ops", "!add 1 2");
    assert_eq!(
        bot.reply().await,
        "mallory!m@evil.example.com: !add is not open to you"
    );
    bot.send_as(alice, "#ops", "!add 1 2");
    assert_eq!(bot.reply().await, "3");
    bot.send_message(Incoming::in_room(
        "#ops",
        Sender::unverified("alice!a@team.example.com", "alice"),
        "!add 1 2",
    ));
    assert_eq!(bot.reply().await, "alice: !add is not open to you");
    bot.send_as(mallory, "#ops", "!words a b");
    assert_eq!(bot.reply().await, "2 words: a|b");
    for cmd in ["!echo hi", "!add 2 2"] {
        bot.send_as("root!r@ops.example.com", "#ops", cmd);
    }
    assert_eq!(bot.replies(2).await, ["hi", "4"]);
}

/// A handler's reply names the message it answers, on its first line only; a line to
/// another place does not, nor does the framework's own usage line.
#[tokio::test]
async fn replies_name_the_message_they_answer() {
    use opsbot::message::{Incoming, Sender};
    let mut bot = bot();
    let mut msg = Incoming::in_room("#test", Sender::new("tester"), "!echo one");
    msg.id = Some("$ev1".into());
    bot.send_message(msg);
    let said = bot.said().await;
    assert_eq!(
        (said.text.as_str(), said.in_reply_to.as_deref()),
        ("one", Some("$ev1"))
    );
    let mut msg = Incoming::in_room("#test", Sender::new("tester"), "!add x");
    msg.id = Some("$ev2".into());
    bot.send_message(msg);
    let said = bot.said().await;
    assert!(said.text.contains("usage"), "{}", said.text);
    assert_eq!(said.in_reply_to, None);
    // A message without an id (IRC): nothing to name.
    bot.send("!echo two");
    assert_eq!(bot.said().await.in_reply_to, None);
}

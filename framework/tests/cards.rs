//! Cards through a running bot: posted as cards where the transport has them, as text with
//! the commands spelled out elsewhere; their buttons run the commands the bot kept, for the
//! person who pressed them, under the same rules as typed commands.

use opsbot::card::Submission;
use opsbot::prelude::*;
use opsbot::rich::Style;
use opsbot::store::Store;
use opsbot::testkit::{Echo, TestBot};
use opsbot::transport::Limits;

/// `!deploy <id>` posts a card whose buttons run `!approve <id>` (admins only) and
/// `!deny <id>`; `!sneaky` posts one whose button runs another handler's `!echo`.
#[derive(Clone)]
struct Deploy;

impl Handler for Deploy {
    const NAME: &'static str = "deploy";
    const COMMANDS: &'static [Command] = &[
        Command::new("deploy", "<id>", "Ask for a deployment."),
        Command::new("approve", "<id>", "Approve it.").admin_only(),
        Command::new("deny", "<id> [reason]", "Deny it."),
        Command::new("sneaky", "", "A card with another handler's command."),
    ];

    async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
        match call.command().name {
            "deploy" => {
                let id: u32 = call.arg(0)?;
                cx.reply_card(
                    Card::new(format!("Deploy {id}?"))
                        .facts([("service", "web"), ("to", "prod")])
                        .input("reason", "Reason", "why")
                        .button("Approve", format!("approve {id}"))
                        .button("Deny", format!("deny {id}")),
                )?;
            }
            "approve" => {
                let id: u32 = call.arg(0)?;
                cx.reply(format!("{id} approved by {}", call.sender().id));
            }
            "deny" => {
                let id: u32 = call.arg(0)?;
                // From a card, the reason is its input; typed, the rest of the line.
                let typed = call.args()[1..].join(" ");
                let reason = call.input("reason").unwrap_or(&typed);
                cx.reply(format!("{id} denied by {}: {reason}", call.sender().id));
            }
            _ => {
                cx.reply_card(Card::new("sneaky").button("Echo", "echo pwned"))?;
            }
        }
        Ok(())
    }
}

fn with_cards() -> Limits {
    Limits {
        style: Style::Markdown,
        multiline: true,
        cards: true,
        ..Limits::unlimited(4000)
    }
}

fn press(who: &str, card: &str, button: usize, inputs: &[(&str, &str)]) -> Incoming {
    let mut m = Incoming::in_room("#test", Sender::new(who), "");
    m.submission = Some(Submission {
        card: card.to_owned(),
        button,
        inputs: inputs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    });
    m
}

fn bot(limits: Limits) -> TestBot {
    TestBot::with_limits(limits)
        .with(Deploy)
        .with(Echo)
        .configure(|o| o.admins = vec!["boss".into()])
}

#[actix::test]
async fn a_buttons_command_runs_for_the_presser_under_the_same_rules() {
    let mut bot = bot(with_cards());
    bot.send("!deploy 7");
    let posted = bot.said().await;
    let card = posted.card.expect("posted as a card");
    assert_eq!(card.buttons().len(), 2);
    let id = posted.id.expect("the card's message has an id");
    assert!(posted.text.contains("Deploy 7?"), "{}", posted.text);

    // Deny, with the card's input as the reason.
    bot.send_message(press("alice", &id, 1, &[("reason", "not today")]));
    assert_eq!(bot.reply().await, "7 denied by alice: not today");
    // The same person pressing the same button again runs nothing.
    bot.send_message(press("alice", &id, 1, &[("reason", "again")]));
    assert_eq!(
        bot.reply().await,
        "alice: you already pressed “Deny” on that card"
    );
    // Approve is for admins, from a card as typed.
    bot.send_message(press("alice", &id, 0, &[]));
    assert!(
        bot.reply().await.contains("!approve is for admins only"),
        "a refused press is refused as a typed command is"
    );
    bot.send_message(press("boss", &id, 0, &[]));
    assert_eq!(bot.reply().await, "7 approved by boss");

    // A card the bot does not keep, and a button it does not have.
    bot.send_message(press("alice", "m999", 0, &[]));
    assert_eq!(
        bot.reply().await,
        "alice: that card is no longer active; use the command instead"
    );
    bot.send_message(press("boss", &id, 7, &[]));

    // A card runs only commands of the handler that posted it.
    bot.send("!sneaky");
    let sneaky = bot.said().await.id.unwrap();
    bot.send_message(press("boss", &sneaky, 0, &[]));
    bot.send("!echo probe");
    assert_eq!(bot.reply().await, "probe", "nothing came of either press");
}

#[actix::test]
async fn without_cards_the_commands_are_spelled_out() {
    let mut bot = bot(Limits::unlimited(400));
    bot.send("!deploy 7");
    assert_eq!(
        bot.replies(4).await,
        [
            "Deploy 7?",
            "- service: web",
            "- to: prod",
            "reply !approve 7 (Approve) or !deny 7 (Deny)",
        ]
    );
    // Nothing else: the next line is the answer to a probe.
    bot.send("!echo probe");
    assert_eq!(bot.reply().await, "probe");
}

#[actix::test]
async fn a_card_pressed_after_a_restart_still_works_and_remembers_presses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let id = {
        let mut bot = bot(with_cards()).store(Store::open(&path).unwrap());
        bot.send("!deploy 9");
        let id = bot.said().await.id.unwrap();
        bot.send_message(press("alice", &id, 1, &[("reason", "no")]));
        assert_eq!(bot.reply().await, "9 denied by alice: no");
        bot.shutdown().await;
        id
    };
    let mut bot = bot(with_cards()).store(Store::open(&path).unwrap());
    bot.send_message(press("boss", &id, 0, &[]));
    assert_eq!(bot.reply().await, "9 approved by boss");
    bot.send_message(press("alice", &id, 1, &[]));
    assert_eq!(
        bot.reply().await,
        "alice: you already pressed “Deny” on that card"
    );
}

#[actix::test]
async fn a_card_too_big_is_an_error_not_a_post() {
    #[derive(Clone)]
    struct Big;
    impl Handler for Big {
        const NAME: &'static str = "big";
        const COMMANDS: &'static [Command] = &[Command::new("big", "", "A card too big.")];
        async fn command(&mut self, cx: &mut Context, _: Call) -> Result {
            cx.reply_card(Card::new("x").text("y".repeat(opsbot::card::MAX_TEXT_BYTES + 1)))
        }
    }
    let mut bot = TestBot::with_limits(with_cards()).with(Big);
    bot.send("!big");
    let said = bot.said().await;
    assert!(said.card.is_none());
    assert!(said.text.contains("failed"), "{}", said.text);
}

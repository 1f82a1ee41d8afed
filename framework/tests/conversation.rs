//! Conversations through a running bot: a question answered in time, by the right person in
//! the right place; a timeout, a cancel and a crash each ending it cleanly; commands working
//! meanwhile; and the time spent waiting not counted against the handler's timeout.

use std::time::Duration;

use opsbot::prelude::*;
use opsbot::testkit::{Echo, TestBot};

#[derive(Clone)]
struct Ops;

impl Handler for Ops {
    const NAME: &'static str = "ops";
    const COMMANDS: &'static [Command] = &[
        Command::new("restart", "<service>", "Restart a service, once confirmed."),
        Command::new("wizard", "", "Two questions."),
        Command::new("hurry", "", "A question with a short fuse."),
    ];

    async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
        match call.command().name {
            "restart" => {
                let svc: String = call.arg(0)?;
                let yes = cx
                    .confirm(format!("restart {svc} in prod?"), Duration::from_secs(10))
                    .await?;
                cx.reply(if yes {
                    format!("restarting {svc}")
                } else {
                    format!("{svc} left alone")
                });
            }
            "wizard" => {
                let name = cx.ask("name?", Duration::from_secs(10)).await?;
                if name == "boom" {
                    panic!("the wizard fell over");
                }
                let colour = cx.ask("colour?", Duration::from_secs(10)).await?;
                cx.reply(format!("{name} likes {colour}"));
            }
            _ => {
                cx.ask("quick?", Duration::from_millis(300)).await?;
                cx.reply("answered");
            }
        }
        Ok(())
    }
}

fn bot() -> TestBot {
    TestBot::new().with(Ops).with(Echo).configure(|o| {
        // Shorter than the questions' own time: waiting for people does not count.
        o.handler_timeout = Duration::from_secs(1);
    })
}

#[actix::test]
async fn an_answer_from_the_asker_in_the_same_place_and_nobody_else() {
    let mut bot = bot();
    bot.send_as("alice", "#ops", "!restart web");
    assert_eq!(bot.reply().await, "restart web in prod? (yes/no)");
    // Another person's words, and the asker's elsewhere, do not answer it.
    bot.send_as("bob", "#ops", "yes");
    bot.send_as("alice", "#other", "yes");
    // Commands work meanwhile, the asker's too.
    bot.send_as("alice", "#ops", "!echo still here");
    assert_eq!(bot.reply().await, "still here");
    // Past the handler's 1 s timeout: waiting for people does not count.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    bot.send_as("alice", "#ops", "maybe");
    assert_eq!(bot.reply().await, "yes or no?");
    bot.send_as("alice", "#ops", "testbot: no");
    assert_eq!(bot.reply().await, "web left alone");

    bot.send_as("alice", "#ops", "!restart db");
    assert_eq!(bot.reply().await, "restart db in prod? (yes/no)");
    bot.send_as("alice", "#ops", "Y");
    assert_eq!(bot.reply().await, "restarting db");
    // Nothing else was said: bob's and alice's other words went nowhere.
    bot.send("!echo probe");
    assert_eq!(bot.reply().await, "probe");
}

#[actix::test]
async fn a_timeout_and_a_cancel_end_it_with_a_line() {
    let mut bot = bot();
    bot.send_as("alice", "#ops", "!hurry");
    assert_eq!(bot.reply().await, "quick?");
    assert_eq!(bot.reply().await, "alice: no answer within 1s");
    // Over: the next words are not taken for an answer.
    bot.send_direct("alice", "late answer");
    assert!(bot.reply().await.contains("unknown command"));

    bot.send_direct("alice", "restart web");
    assert_eq!(bot.reply().await, "restart web in prod? (yes/no)");
    bot.send_direct("alice", "!cancel");
    assert_eq!(bot.reply().await, "cancelled");
    bot.send_direct("alice", "echo probe");
    assert_eq!(bot.reply().await, "probe", "nothing more from the restart");
}

#[actix::test]
async fn a_crash_mid_conversation_leaves_no_question_behind() {
    let mut bot = bot();
    bot.send_direct("alice", "wizard");
    assert_eq!(bot.reply().await, "name?");
    bot.send_direct("alice", "boom");
    assert!(
        bot.reply().await.contains("crashed; it is being restarted"),
        "the user is told"
    );
    // No question is left open: alice's words are commands again, and the handler, restarted,
    // asks afresh.
    bot.send_direct("alice", "wizard");
    assert_eq!(bot.reply().await, "name?");
    bot.send_direct("alice", "ada");
    assert_eq!(bot.reply().await, "colour?");
    bot.send_direct("alice", "green");
    assert_eq!(bot.reply().await, "ada likes green");
}

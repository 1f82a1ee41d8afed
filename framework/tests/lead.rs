//! Active/standby: a bot speaks only while its process holds the bot's lead. The transport
//! connects once the lead is granted, closes the moment it is lost (taken back, or run out with
//! nobody saying so, as in a process that was frozen), and nothing said meanwhile comes out late.

use std::time::{Duration, Instant, SystemTime};

use opsbot::health::{ActorKind, ConnState, Snapshot};
use opsbot::lead::{Holder, Lead};
use opsbot::prelude::*;
use opsbot::testkit::{Echo, TestBot};

/// Answers after a pause, long enough for the lead to be lost in between.
#[derive(Clone)]
struct Slow;

impl Handler for Slow {
    const NAME: &'static str = "slow";
    const COMMANDS: &'static [Command] = &[Command::new("slow", "", "Answer after 300 ms.")];

    async fn command(&mut self, cx: &mut Context, _call: Call) -> Result {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cx.reply("slow answer");
        Ok(())
    }
}

/// Twenty lines at once.
#[derive(Clone)]
struct Many;

impl Handler for Many {
    const NAME: &'static str = "many";
    const COMMANDS: &'static [Command] = &[Command::new("many", "", "Say twenty lines.")];

    async fn command(&mut self, cx: &mut Context, _call: Call) -> Result {
        for i in 1..=20 {
            cx.reply(format!("line {i}"));
        }
        Ok(())
    }
}

fn conn(s: &Snapshot) -> Option<ConnState> {
    s.actor(ActorKind::Transport, "memory")
        .and_then(|t| t.conn.clone())
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(600)
}

#[tokio::test]
async fn a_standby_connects_only_once_granted_and_goes_quiet_when_the_lead_is_lost() {
    let lead = Lead::elected("here:1");
    let mut bot = TestBot::new().with(Echo).with(Slow).lead(lead.clone());
    bot.start();
    let s = bot
        .wait_status("standing by", |s| conn(s) == Some(ConnState::Standby))
        .await;
    assert!(!s.lead.as_ref().unwrap().held);
    assert_eq!(
        s.health,
        opsbot::health::BotHealth::Healthy,
        "a standby is healthy"
    );

    lead.grant(far(), SystemTime::now());
    bot.wait_status("connected", |s| conn(s) == Some(ConnState::Connected))
        .await;
    bot.send("!echo one");
    assert_eq!(bot.reply().await, "one");

    // Lost while a command runs: its answer is never said, now or later.
    bot.send("!slow");
    tokio::time::sleep(Duration::from_millis(50)).await;
    lead.revoke(Some(Holder::new("there:2", SystemTime::now())));
    let s = bot
        .wait_status("standing by again", |s| {
            conn(s) == Some(ConnState::Standby) && s.outbox.standby == 1
        })
        .await;
    let l = s.lead.unwrap();
    assert_eq!(l.holder.unwrap().id, "there:2");
    assert!(
        s.healing_log
            .iter()
            .any(|e| e.action == "lead" && e.detail.contains("lost the bot's lead")),
        "{:?}",
        s.healing_log
    );

    lead.grant(far(), SystemTime::now());
    bot.wait_status("connected again", |s| conn(s) == Some(ConnState::Connected))
        .await;
    bot.send("!echo two");
    assert_eq!(bot.reply().await, "two", "the slow answer never came out");
    assert!(bot.drain_said().is_empty());
}

#[tokio::test]
async fn a_lead_that_runs_out_unrenewed_closes_the_transport_by_itself() {
    let lead = Lead::elected("here:1");
    let mut bot = TestBot::new().with(Echo).lead(lead.clone());
    // Granted briefly and never renewed, as for a process frozen past its lease.
    lead.grant(
        Instant::now() + Duration::from_millis(700),
        SystemTime::now(),
    );
    bot.send("!echo in time");
    assert_eq!(bot.reply().await, "in time");
    bot.wait_status("standing by", |s| conn(s) == Some(ConnState::Standby))
        .await;
    assert!(!lead.holds());
}

#[tokio::test]
async fn lines_waiting_when_the_lead_is_lost_never_come_out_later() {
    let lead = Lead::elected("here:1");
    let mut limits = opsbot::transport::Limits::unlimited(400);
    // Two lines a second: most of twenty are still queued when the lead goes.
    limits.global = Some(opsbot::pacing::Rate::new(2.0, 1));
    let mut bot = TestBot::with_limits(limits)
        .with(Echo)
        .with(Many)
        .lead(lead.clone());
    lead.grant(far(), SystemTime::now());
    bot.send("!many");
    assert_eq!(bot.reply().await, "line 1");
    lead.revoke(Some(Holder::new("there:2", SystemTime::now())));
    let s = bot
        .wait_status("the rest dropped", |s| {
            conn(s) == Some(ConnState::Standby) && s.outbox.queued == 0 && s.outbox.standby > 0
        })
        .await;
    assert!(s.outbox.standby >= 15, "{:?}", s.outbox);
    lead.grant(far(), SystemTime::now());
    bot.wait_status("connected again", |s| conn(s) == Some(ConnState::Connected))
        .await;
    let said: Vec<String> = bot.drain_said().into_iter().map(|s| s.text).collect();
    bot.send("!echo fresh");
    let next = bot.reply().await;
    assert_eq!(
        next, "fresh",
        "nothing from before the loss (already said: {said:?})"
    );
}

//! Formatted replies through a running bot: rendered for the transport's style, cut by the
//! outbox without breaking what they format, and plain replies left as they are.

use opsbot::prelude::*;
use opsbot::rich::Style;
use opsbot::testkit::TestBot;
use opsbot::transport::Limits;

/// `!pods` answers a heading, a paragraph with a user's text, and a long code block; `!plain`
/// repeats its argument with `cx.reply`.
#[derive(Clone)]
struct Pods;

impl Handler for Pods {
    const NAME: &'static str = "pods";
    const COMMANDS: &'static [Command] = &[
        Command::new("pods", "<lines>", "A formatted answer."),
        Command::new("plain", "<text>", "A plain answer."),
    ];

    async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
        if call.command().name == "plain" {
            cx.reply(call.rest().to_owned());
            return Ok(());
        }
        let n: usize = call.arg(0)?;
        let log: Vec<String> = (0..n).map(|i| format!("{i:04} GET /health 200")).collect();
        cx.reply_rich(
            Rich::new()
                .heading("Pods")
                .para(
                    Line::new()
                        .text("asked by ")
                        .bold(call.sender().name.to_string()),
                )
                .code(log.join("\n")),
        );
        Ok(())
    }
}

fn limits(style: Style, max: usize, multiline: bool) -> Limits {
    Limits {
        style,
        multiline,
        ..Limits::unlimited(max)
    }
}

#[actix::test]
async fn a_formatted_reply_is_rendered_for_the_transport_and_cut_whole() {
    let mut bot = TestBot::with_limits(limits(Style::Irc, 120, false)).with(Pods);
    bot.send_as("eve\x02\x1d", "#test", "!pods 3");
    let said = [
        bot.said().await,
        bot.said().await,
        bot.said().await,
        bot.said().await,
        bot.said().await,
    ];
    let texts: Vec<&str> = said.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "\x02Pods\x0f",
            // The sender's own codes are text, not formatting.
            "asked by \x02eve\x02\x0f",
            "    \x110000 GET /health 200\x0f",
            "    \x110001 GET /health 200\x0f",
            "    \x110002 GET /health 200\x0f",
        ]
    );
    assert!(said.iter().all(|s| s.formatted));

    // A plain reply stays plain: a user's codes are removed, and it is not marked formatted.
    bot.send("!plain \x02bold\x02 text");
    let plain = bot.said().await;
    assert_eq!(plain.text, "bold text");
    assert!(!plain.formatted);
}

#[actix::test]
async fn a_code_block_of_3000_lines_goes_out_in_whole_blocks() {
    for style in [Style::Markdown, Style::XmppStyling] {
        let mut bot = TestBot::with_limits(limits(style, 4000, true)).with(Pods);
        bot.send("!pods 3000");
        let mut lines = Vec::new();
        let mut messages = 0;
        while lines.len() < 3000 {
            let s = bot.said().await;
            assert!(s.formatted && s.text.len() <= 4000);
            let body = s.text.split_once("```\n").map_or("", |(_, b)| b);
            let inner = body
                .strip_suffix("\n```")
                .unwrap_or_else(|| panic!("{style:?}: a message leaves its block open"));
            assert!(!inner.contains("```"), "{style:?}");
            lines.extend(inner.lines().map(str::to_owned));
            messages += 1;
        }
        let want: Vec<String> = (0..3000)
            .map(|i| format!("{i:04} GET /health 200"))
            .collect();
        assert_eq!(lines, want, "{style:?}: every line once, in order");
        assert!(messages > 10, "{style:?}: {messages} messages");
    }
}

#[actix::test]
async fn a_plain_transport_gets_plain_text() {
    let mut bot = TestBot::with_limits(limits(Style::Plain, 400, false)).with(Pods);
    bot.send("!pods 1");
    let said = [bot.said().await, bot.said().await, bot.said().await];
    assert_eq!(
        said.iter().map(|s| s.text.as_str()).collect::<Vec<_>>(),
        ["Pods", "asked by tester", "    0000 GET /health 200"]
    );
    assert!(said.iter().all(|s| !s.formatted));
}

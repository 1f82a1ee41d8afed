//! Text in and out: a formatted reply (the outbox's Markdown) becomes Matrix HTML with its
//! plain `body`, and a message that starts with the bot's name or mention pill is taken as
//! addressed to it.

use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, TagEnd};

/// `markdown` (rendered by the outbox from a formatted reply, its text already escaped) as a
/// plain `body` and an HTML `formatted_body`. Raw HTML and images never pass (they come out
/// as text), and only web and mail links stay links.
pub(crate) fn html_and_body(markdown: &str) -> (String, String) {
    let events: Vec<Event<'_>> = safe(Parser::new_ext(markdown, Options::empty()));
    let mut html = String::with_capacity(markdown.len() * 2);
    pulldown_cmark::html::push_html(&mut html, events.iter().cloned());
    let mut body = String::with_capacity(markdown.len());
    for e in &events {
        match e {
            Event::Text(t) | Event::Code(t) => body.push_str(t),
            Event::SoftBreak | Event::HardBreak => body.push('\n'),
            Event::Start(Tag::Item) => body.push_str("- "),
            Event::End(
                TagEnd::Paragraph | TagEnd::Heading(_) | TagEnd::Item | TagEnd::CodeBlock,
            ) if !body.ends_with('\n') => body.push('\n'),
            _ => {}
        }
    }
    (body.trim_end().to_owned(), html.trim_end().to_owned())
}

/// The parser's events with raw HTML and images turned into text, and links other than
/// web and mail links into their text.
fn safe<'a>(parser: Parser<'a>) -> Vec<Event<'a>> {
    let mut out = Vec::new();
    // Each open link: whether it was kept (its end is then kept too).
    let mut links: Vec<bool> = Vec::new();
    for e in parser {
        match e {
            Event::Html(t) | Event::InlineHtml(t) => out.push(Event::Text(t)),
            Event::Start(Tag::Link { ref dest_url, .. }) => {
                let keep = web(dest_url);
                links.push(keep);
                if keep {
                    out.push(e);
                }
            }
            Event::End(TagEnd::Link) => {
                if links.pop().unwrap_or(false) {
                    out.push(e);
                }
            }
            Event::Start(Tag::Image { dest_url, .. }) => {
                out.push(Event::Text(CowStr::from(format!("<{dest_url}> "))));
            }
            Event::End(TagEnd::Image) => {}
            other => out.push(other),
        }
    }
    out
}

fn web(url: &str) -> bool {
    let lower = url.trim_start().to_ascii_lowercase();
    ["https://", "http://", "mailto:"]
        .iter()
        .any(|p| lower.starts_with(p))
}

/// The rest of `body` when it starts with one of `names` (the bot's display name, its user
/// id or the user id's local part, as a mention pill writes it) and a `:`, `,` or a space.
pub(crate) fn after_name<'a>(body: &'a str, names: &[&str]) -> Option<&'a str> {
    let body = body.trim_start();
    names.iter().filter(|n| !n.is_empty()).find_map(|name| {
        let head = body.get(..name.len())?;
        if !head.eq_ignore_ascii_case(name) {
            return None;
        }
        let rest = &body[name.len()..];
        let rest = rest
            .strip_prefix(':')
            .or_else(|| rest.strip_prefix(','))
            .or_else(|| rest.starts_with(char::is_whitespace).then_some(rest))?;
        Some(rest.trim_start())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatted_replies_become_html_and_a_plain_body() {
        let (body, html) =
            html_and_body("**Status**\n\n- `irc` up\n- see [docs](https://d.example/x)");
        assert_eq!(body, "Status\n- irc up\n- see docs");
        assert_eq!(
            html,
            "<p><strong>Status</strong></p>\n<ul>\n<li><code>irc</code> up</li>\n\
             <li>see <a href=\"https://d.example/x\">docs</a></li>\n</ul>"
        );
    }

    #[test]
    fn escaped_text_stays_text_and_no_html_or_odd_link_gets_through() {
        let (body, html) = html_and_body("a &lt;b&gt; \\*x\\* &amp; y");
        assert_eq!(body, "a <b> *x* & y");
        assert_eq!(html, "<p>a &lt;b&gt; *x* &amp; y</p>");
        let (_, html) = html_and_body(
            "<img src=x onerror=alert(1)> [c](javascript:alert(1)) ![i](https://e.example/i.png)",
        );
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("href=\"javascript"), "{html}");
        assert!(html.contains("&lt;img"), "{html}");
        let (_, html) = html_and_body("<script>alert(1)</script>\n\nx");
        assert!(!html.contains("<script"), "{html}");
    }

    #[test]
    fn a_name_at_the_start_addresses_the_bot() {
        let names = ["Ops Bot", "@opsbot:example.org", "opsbot"];
        assert_eq!(after_name("Ops Bot: !echo hi", &names), Some("!echo hi"));
        assert_eq!(after_name("opsbot, status", &names), Some("status"));
        assert_eq!(after_name("@opsbot:example.org echo", &names), Some("echo"));
        assert_eq!(after_name("opsbotx: echo", &names), None);
        assert_eq!(after_name("hi opsbot: echo", &names), None);
        assert_eq!(after_name("é", &["opsbot"]), None);
    }
}

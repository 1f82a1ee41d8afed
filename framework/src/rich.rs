//! Formatted replies: one typed reply that each transport renders its own way.
//!
//! A [`Rich`] reply is built, not parsed: its structure (a heading, paragraphs, lists, a code
//! block, a table) comes from the handler's code, and every piece of text in it stays text,
//! whoever wrote it. An alert label with `*` or `_`, a user's `\x02`, an `<@all>` or a line
//! that starts with `>` is shown as written on every service, never taken as formatting. (A
//! Markdown subset parsed from a string would make every such character a question of
//! escaping at each call site.)
//!
//! [`Rich::render`] renders for one [`Style`]:
//!
//! - [`Style::Plain`]: plain text (IRC with `formatting = "plain"`, the console off a terminal,
//!   and every transport's fallback);
//! - [`Style::Irc`]: mIRC codes: bold, italics and monospace, a reset at the end of every line
//!   that has any, so nothing runs into the next message;
//! - [`Style::XmppStyling`]: XEP-0393 message styling, plain text that clients style;
//! - [`Style::Markdown`]: the Markdown Webex renders;
//! - [`Style::Ansi`]: the console on a terminal.
//!
//! Everywhere a link keeps its target (as Markdown's link, or as `text <url>`), code blocks are
//! lines of their own, and tables are aligned in a monospace block.

/// Inline text: plain, emphasised, code, or a link.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Span {
    /// Plain text.
    Text(String),
    /// Strong emphasis.
    Bold(String),
    /// Emphasis.
    Italic(String),
    /// Inline code.
    Code(String),
    /// A link with its text.
    Link {
        /// What the reader sees.
        text: String,
        /// Where it goes.
        url: String,
    },
}

/// A line of inline text, built piece by piece: `Line::new().text("pod ").code("web-1")`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Line(Vec<Span>);

impl Line {
    /// An empty line.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds plain text.
    pub fn text(mut self, t: impl Into<String>) -> Self {
        self.0.push(Span::Text(t.into()));
        self
    }

    /// Adds bold text.
    pub fn bold(mut self, t: impl Into<String>) -> Self {
        self.0.push(Span::Bold(t.into()));
        self
    }

    /// Adds italic text.
    pub fn italic(mut self, t: impl Into<String>) -> Self {
        self.0.push(Span::Italic(t.into()));
        self
    }

    /// Adds inline code.
    pub fn code(mut self, t: impl Into<String>) -> Self {
        self.0.push(Span::Code(t.into()));
        self
    }

    /// Adds a link.
    pub fn link(mut self, text: impl Into<String>, url: impl Into<String>) -> Self {
        self.0.push(Span::Link {
            text: text.into(),
            url: url.into(),
        });
        self
    }

    /// The spans.
    pub fn spans(&self) -> &[Span] {
        &self.0
    }
}

impl From<&str> for Line {
    fn from(t: &str) -> Self {
        Line::new().text(t)
    }
}

impl From<String> for Line {
    fn from(t: String) -> Self {
        Line::new().text(t)
    }
}

/// One block of a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Block {
    /// A heading line.
    Heading(Line),
    /// A paragraph (one line; its text may be long, the outbox splits it).
    Paragraph(Line),
    /// A bulleted list.
    Bullets(Vec<Line>),
    /// A numbered list.
    Numbered(Vec<Line>),
    /// A block of code or log lines, shown as they are.
    Code(String),
    /// A simple table: a header and rows of cells.
    Table {
        /// The column names.
        header: Vec<String>,
        /// The rows (a short row is padded, a long one cut to the header's width).
        rows: Vec<Vec<String>>,
    },
}

/// A formatted reply. See the [module documentation](self).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rich {
    blocks: Vec<Block>,
}

/// How a reply is rendered; see the [module documentation](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Style {
    /// Plain text.
    Plain,
    /// mIRC formatting codes.
    Irc,
    /// XEP-0393 message styling.
    XmppStyling,
    /// Markdown as Webex renders it.
    Markdown,
    /// ANSI styles for a terminal.
    Ansi,
}

impl Rich {
    /// An empty reply.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a heading line.
    pub fn heading(mut self, line: impl Into<Line>) -> Self {
        self.blocks.push(Block::Heading(line.into()));
        self
    }

    /// Adds a paragraph.
    pub fn para(mut self, line: impl Into<Line>) -> Self {
        self.blocks.push(Block::Paragraph(line.into()));
        self
    }

    /// Adds a bulleted list.
    pub fn bullets<L: Into<Line>>(mut self, items: impl IntoIterator<Item = L>) -> Self {
        self.blocks
            .push(Block::Bullets(items.into_iter().map(Into::into).collect()));
        self
    }

    /// Adds a numbered list.
    pub fn numbered<L: Into<Line>>(mut self, items: impl IntoIterator<Item = L>) -> Self {
        self.blocks
            .push(Block::Numbered(items.into_iter().map(Into::into).collect()));
        self
    }

    /// Adds a block of code (or log lines), shown line by line as it is.
    pub fn code(mut self, text: impl Into<String>) -> Self {
        self.blocks.push(Block::Code(text.into()));
        self
    }

    /// Adds a table.
    pub fn table<H, R, C>(mut self, header: H, rows: impl IntoIterator<Item = R>) -> Self
    where
        H: IntoIterator,
        H::Item: Into<String>,
        R: IntoIterator<Item = C>,
        C: Into<String>,
    {
        self.blocks.push(Block::Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: rows
                .into_iter()
                .map(|r| r.into_iter().map(Into::into).collect())
                .collect(),
        });
        self
    }

    /// The blocks.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The reply as plain text.
    pub fn plain(&self) -> String {
        self.render(Style::Plain)
    }

    /// The reply rendered for `style`: lines joined with `\n`.
    pub fn render(&self, style: Style) -> String {
        let mut out: Vec<String> = Vec::new();
        for b in &self.blocks {
            match b {
                Block::Heading(l) => out.push(heading(l, style)),
                Block::Paragraph(l) => out.push(inline(l, style)),
                Block::Bullets(items) => {
                    for i in items {
                        out.push(format!("{} {}", bullet(style), inline(i, style)));
                    }
                }
                Block::Numbered(items) => {
                    for (n, i) in items.iter().enumerate() {
                        out.push(format!("{}. {}", n + 1, inline(i, style)));
                    }
                }
                Block::Code(text) => out.extend(code_block(text, style)),
                Block::Table { header, rows } => out.extend(table(header, rows, style)),
            }
        }
        out.join("\n")
    }
}

impl From<&str> for Rich {
    fn from(t: &str) -> Self {
        Rich::new().para(t)
    }
}

/// Every character of `t` that could be formatting or a line break removed or neutralised for
/// `style`: control characters (IRC's codes, ANSI's escape) go, line breaks become spaces.
fn clean(t: &str) -> String {
    t.chars()
        .map(|c| {
            if c == '\n' || c == '\r' || c == '\t' {
                ' '
            } else {
                c
            }
        })
        .filter(|c| crate::text::is_printable(*c))
        .collect()
}

/// A code line: as [`clean`], but tabs kept as spaces and nothing else changed.
fn clean_code(t: &str) -> String {
    t.chars()
        .map(|c| if c == '\t' { ' ' } else { c })
        .filter(|c| crate::text::is_printable(*c))
        .collect()
}

/// XEP-0393: a styling directive (`*`, `_`, `~`, `` ` ``) opens a span only at the start of the
/// text or after whitespace, and a line that starts with `>` is a quote. Text from outside
/// gets a look-alike in those places, so it can neither open a span nor quote.
fn xmpp_text(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    let mut at_start = true;
    for (i, c) in t.chars().enumerate() {
        let opening = at_start || out.ends_with(char::is_whitespace);
        let c = match c {
            '*' if opening => '\u{2217}', // asterisk operator
            '_' if opening => '\u{FF3F}', // fullwidth low line
            '~' if opening => '\u{223C}', // tilde operator
            '`' if opening => '\u{02CB}', // modifier letter grave accent
            '>' if i == 0 => '\u{203A}',  // single right-pointing angle quotation mark
            c => c,
        };
        out.push(c);
        at_start = false;
    }
    out
}

/// Markdown: every character Markdown could read as syntax is escaped with a backslash; `<`
/// and `&` are escaped by the Webex transport as today.
fn md_text(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    for c in t.chars() {
        if matches!(
            c,
            '\\' | '`'
                | '*'
                | '_'
                | '{'
                | '}'
                | '['
                | ']'
                | '('
                | ')'
                | '#'
                | '+'
                | '-'
                | '.'
                | '!'
                | '|'
                | '>'
                | '~'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Whether a link target can be a link: http, https or mailto, with no space or control.
fn linkable(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://") || lower.starts_with("mailto:"))
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn text(t: &str, style: Style) -> String {
    let t = clean(t);
    match style {
        Style::XmppStyling => xmpp_text(&t),
        Style::Markdown => md_text(&t),
        _ => t,
    }
}

fn wrap(t: &str, style: Style, irc: &str, xmpp: &str, md: &str, ansi: (&str, &str)) -> String {
    let body = text(t, style);
    if body.trim().is_empty() {
        return body;
    }
    match style {
        Style::Plain => body,
        Style::Irc => format!("{irc}{body}{irc}"),
        // Inside the span, its own directive would close it early.
        Style::XmppStyling => {
            let inner = match xmpp {
                "*" => body.trim().replace('*', "\u{2217}"),
                "_" => body.trim().replace('_', "\u{FF3F}"),
                _ => body.trim().to_owned(),
            };
            format!("{xmpp}{inner}{xmpp}")
        }
        Style::Markdown => format!("{md}{body}{md}"),
        Style::Ansi => format!("{}{body}{}", ansi.0, ansi.1),
    }
}

fn span(s: &Span, style: Style) -> String {
    match s {
        Span::Text(t) => text(t, style),
        Span::Bold(t) => wrap(t, style, "\x02", "*", "**", ("\x1b[1m", "\x1b[22m")),
        Span::Italic(t) => wrap(t, style, "\x1d", "_", "*", ("\x1b[3m", "\x1b[23m")),
        Span::Code(t) => {
            let t = clean(t);
            match style {
                Style::Plain => t,
                Style::Irc => format!("\x11{t}\x11"),
                // Inside a code span nothing is styled, but a backquote would end it.
                // A span cannot start or end with whitespace (it would not open, and its
                // text would be styled).
                Style::XmppStyling if t.trim().is_empty() => t,
                Style::XmppStyling => format!("`{}`", t.trim().replace('`', "\u{02CB}")),
                Style::Markdown => {
                    // A run of backquotes longer than any inside, and spaces if it touches one.
                    let longest = t.split(|c| c != '`').map(str::len).max().unwrap_or(0);
                    let fence = "`".repeat(longest + 1);
                    let pad = if t.starts_with('`') || t.ends_with('`') {
                        " "
                    } else {
                        ""
                    };
                    format!("{fence}{pad}{t}{pad}{fence}")
                }
                Style::Ansi => format!("\x1b[36m{t}\x1b[39m"),
            }
        }
        Span::Link { text: t, url } => {
            let url = clean(url);
            let shown = text(t, style);
            if style == Style::Markdown && linkable(&url) {
                let target = url
                    .replace('\\', "%5C")
                    .replace('(', "%28")
                    .replace(')', "%29")
                    .replace('<', "%3C")
                    .replace('>', "%3E");
                return format!("[{shown}]({target})");
            }
            let target = match style {
                Style::Markdown => md_text(&url),
                Style::XmppStyling => xmpp_text(&url),
                Style::Ansi => format!("\x1b[4m{url}\x1b[24m"),
                _ => url.clone(),
            };
            if clean(t) == url || t.trim().is_empty() {
                target
            } else {
                format!("{shown} <{target}>")
            }
        }
    }
}

fn inline(l: &Line, style: Style) -> String {
    let s: String = l.spans().iter().map(|s| span(s, style)).collect();
    if style == Style::Irc && s.chars().any(|c| matches!(c, '\x02' | '\x1d' | '\x11')) {
        format!("{s}\x0f")
    } else {
        s
    }
}

fn heading(l: &Line, style: Style) -> String {
    let plain: String = l
        .spans()
        .iter()
        .map(|s| span(s, Style::Plain))
        .collect::<String>();
    match style {
        Style::Plain => plain,
        Style::Irc => format!("\x02{plain}\x0f"),
        Style::XmppStyling => format!("*{}*", xmpp_text(plain.trim())),
        Style::Markdown => format!("**{}**", md_text(&plain)),
        Style::Ansi => format!("\x1b[1;4m{plain}\x1b[0m"),
    }
}

fn bullet(style: Style) -> &'static str {
    match style {
        // A `-` at the start of a line is a list in Markdown, and plain everywhere else.
        Style::Markdown | Style::Plain | Style::Irc => "-",
        Style::XmppStyling | Style::Ansi => "\u{2022}",
    }
}

fn code_block(t: &str, style: Style) -> Vec<String> {
    let lines: Vec<String> = t.lines().map(clean_code).collect();
    match style {
        Style::Plain => lines.into_iter().map(|l| format!("    {l}")).collect(),
        Style::Irc => lines
            .into_iter()
            .map(|l| format!("    \x11{l}\x0f"))
            .collect(),
        Style::XmppStyling | Style::Markdown => {
            let mut out = vec!["```".to_owned()];
            // A line of the block that is itself a fence would end it early.
            out.extend(lines.into_iter().map(|l| {
                if l.trim_start().starts_with("```") {
                    format!("\u{02CB}{}", &l[l.find("```").unwrap_or(0) + 1..])
                } else {
                    l
                }
            }));
            out.push("```".to_owned());
            out
        }
        Style::Ansi => lines
            .into_iter()
            .map(|l| format!("    \x1b[36m{l}\x1b[39m"))
            .collect(),
    }
}

fn table(header: &[String], rows: &[Vec<String>], style: Style) -> Vec<String> {
    let cols = header.len().max(1);
    // Every cell cleaned once, with its width in characters.
    let cells = |r: &[String]| -> Vec<(String, usize)> {
        (0..cols)
            .map(|i| {
                let c = clean(r.get(i).map_or("", String::as_str));
                let n = c.chars().count();
                (c, n)
            })
            .collect()
    };
    let header = cells(header);
    let rows: Vec<Vec<(String, usize)>> = rows.iter().map(|r| cells(r)).collect();
    let mut widths: Vec<usize> = header.iter().map(|c| c.1).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.1);
        }
    }
    let line = |r: &[(String, usize)]| {
        let mut l = String::with_capacity(widths.iter().sum::<usize>() + 2 * cols);
        for (i, (c, n)) in r.iter().enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(c);
            l.extend(std::iter::repeat_n(' ', widths[i] - n));
        }
        l.truncate(l.trim_end().len());
        l
    };
    let head = line(&header);
    let rule = widths
        .iter()
        .map(|w| "-".repeat(*w))
        .collect::<Vec<_>>()
        .join("  ");
    let body: Vec<String> = rows.iter().map(|r| line(r)).collect();
    match style {
        Style::Plain => std::iter::once(head)
            .chain(std::iter::once(rule))
            .chain(body)
            .collect(),
        Style::Irc => std::iter::once(format!("\x11\x02{head}\x0f"))
            .chain(body.into_iter().map(|l| format!("\x11{l}\x0f")))
            .collect(),
        Style::XmppStyling | Style::Markdown => {
            let mut text = vec![head, rule];
            text.extend(body);
            code_block(&text.join("\n"), style)
        }
        Style::Ansi => std::iter::once(format!("\x1b[1m{head}\x1b[22m"))
            .chain(body)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element, with text from outside that tries to be formatting.
    fn sample() -> Rich {
        Rich::new()
            .heading("Pods in prod")
            .para(
                Line::new()
                    .text("web ")
                    .bold("down")
                    .text(", see ")
                    .code("kubectl get pods")
                    .text(" and ")
                    .italic("the runbook")
                    .text(": ")
                    .link("runbook", "https://wiki.example.com/run(book)"),
            )
            .bullets([
                "*not bold* _nor this_",
                "\x02not bold\x02 \x1b[31mred\x1b[0m",
            ])
            .numbered(["<@all> hi & <b>", "> not a quote"])
            .code("line 1\n```\nline\t3")
            .table(
                ["pod", "state"],
                [vec!["web-1", "Running"], vec!["db-0", "CrashLoopBackOff"]],
            )
    }

    #[test]
    fn plain() {
        assert_eq!(
            sample().render(Style::Plain),
            "Pods in prod\n\
             web down, see kubectl get pods and the runbook: runbook <https://wiki.example.com/run(book)>\n\
             - *not bold* _nor this_\n\
             - not bold [31mred[0m\n\
             1. <@all> hi & <b>\n\
             2. > not a quote\n\
             \x20   line 1\n\
             \x20   ```\n\
             \x20   line 3\n\
             pod    state\n\
             -----  ----------------\n\
             web-1  Running\n\
             db-0   CrashLoopBackOff"
        );
    }

    #[test]
    fn irc() {
        assert_eq!(
            sample().render(Style::Irc),
            "\x02Pods in prod\x0f\n\
             web \x02down\x02, see \x11kubectl get pods\x11 and \x1dthe runbook\x1d: runbook <https://wiki.example.com/run(book)>\x0f\n\
             - *not bold* _nor this_\n\
             - not bold [31mred[0m\n\
             1. <@all> hi & <b>\n\
             2. > not a quote\n\
             \x20   \x11line 1\x0f\n\
             \x20   \x11```\x0f\n\
             \x20   \x11line 3\x0f\n\
             \x11\x02pod    state\x0f\n\
             \x11web-1  Running\x0f\n\
             \x11db-0   CrashLoopBackOff\x0f"
        );
    }

    #[test]
    fn xmpp_styling() {
        assert_eq!(
            sample().render(Style::XmppStyling),
            "*Pods in prod*\n\
             web *down*, see `kubectl get pods` and _the runbook_: runbook <https://wiki.example.com/run(book)>\n\
             \u{2022} \u{2217}not bold* \u{FF3F}nor this_\n\
             \u{2022} not bold [31mred[0m\n\
             1. <@all> hi & <b>\n\
             2. \u{203A} not a quote\n\
             ```\n\
             line 1\n\
             \u{02CB}``\n\
             line 3\n\
             ```\n\
             ```\n\
             pod    state\n\
             -----  ----------------\n\
             web-1  Running\n\
             db-0   CrashLoopBackOff\n\
             ```"
        );
    }

    #[test]
    fn markdown() {
        assert_eq!(
            sample().render(Style::Markdown),
            "**Pods in prod**\n\
             web **down**, see `kubectl get pods` and *the runbook*: [runbook](https://wiki.example.com/run%28book%29)\n\
             - \\*not bold\\* \\_nor this\\_\n\
             - not bold \\[31mred\\[0m\n\
             1. <@all\\> hi & <b\\>\n\
             2. \\> not a quote\n\
             ```\n\
             line 1\n\
             \u{02CB}``\n\
             line 3\n\
             ```\n\
             ```\n\
             pod    state\n\
             -----  ----------------\n\
             web-1  Running\n\
             db-0   CrashLoopBackOff\n\
             ```"
        );
    }

    #[test]
    fn ansi() {
        assert_eq!(
            sample().render(Style::Ansi),
            "\x1b[1;4mPods in prod\x1b[0m\n\
             web \x1b[1mdown\x1b[22m, see \x1b[36mkubectl get pods\x1b[39m and \x1b[3mthe runbook\x1b[23m: runbook <\x1b[4mhttps://wiki.example.com/run(book)\x1b[24m>\n\
             \u{2022} *not bold* _nor this_\n\
             \u{2022} not bold [31mred[0m\n\
             1. <@all> hi & <b>\n\
             2. > not a quote\n\
             \x20   \x1b[36mline 1\x1b[39m\n\
             \x20   \x1b[36m```\x1b[39m\n\
             \x20   \x1b[36mline 3\x1b[39m\n\
             \x1b[1mpod    state\x1b[22m\n\
             web-1  Running\n\
             db-0   CrashLoopBackOff"
        );
    }

    #[test]
    fn links_keep_their_target_and_only_web_links_are_links() {
        let r = Rich::new().para(
            Line::new()
                .link("x", "javascript:alert(1)")
                .text(" ")
                .link("https://a.example/", "https://a.example/"),
        );
        assert_eq!(
            r.render(Style::Markdown),
            "x <javascript:alert\\(1\\)> [https://a\\.example/](https://a.example/)"
        );
        assert_eq!(
            r.render(Style::Plain),
            "x <javascript:alert(1)> https://a.example/"
        );
    }

    #[test]
    fn inline_code_holding_backquotes_stays_one_code_span() {
        let r = Rich::new().para(Line::new().code("a `b` c").text(" and ").code("`x"));
        assert_eq!(r.render(Style::Markdown), "``a `b` c`` and `` `x ``");
        assert_eq!(
            r.render(Style::XmppStyling),
            "`a \u{02CB}b\u{02CB} c` and `\u{02CB}x`"
        );
    }

    #[test]
    fn xmpp_spans_hold_their_own_directives_and_no_edge_spaces() {
        let r = Rich::new().para(
            Line::new()
                .bold("a*b")
                .text(" ")
                .italic("x_y")
                .text(" ")
                .code(" *x* "),
        );
        assert_eq!(
            r.render(Style::XmppStyling),
            "*a\u{2217}b* _x\u{FF3F}y_ `*x*`"
        );
    }

    #[test]
    fn a_backslash_in_a_link_target_cannot_break_the_link() {
        let r = Rich::new().para(Line::new().link("x", "https://a.example/b\\"));
        assert_eq!(r.render(Style::Markdown), "[x](https://a.example/b%5C)");
    }

    #[test]
    fn a_ragged_table_is_padded_and_cut_to_its_header() {
        let r = Rich::new().table(["a", "b"], [vec!["1"], vec!["2", "3", "4"]]);
        assert_eq!(r.plain(), "a  b\n-  -\n1\n2  3");
    }
}

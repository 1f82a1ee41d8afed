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
        for row in self.rows(style) {
            match row {
                Row::Inline { prefix, pieces } => out.push(inline_line(&prefix, &pieces, style)),
                Row::Code { open, body, close } => out.push(format!("{open}{body}{close}")),
                Row::Fenced(lines) => {
                    out.push(FENCE.to_owned());
                    out.extend(lines);
                    out.push(FENCE.to_owned());
                }
            }
        }
        out.join("\n")
    }

    /// The reply as the messages a transport sends, each at most `max_bytes` bytes: one line
    /// each, or for a `multiline` transport, lines packed into as few messages as fit.
    ///
    /// A cut never breaks what the style formats: a run of bold or code cut between two lines
    /// is closed before the cut and opened again after it, a code block cut between two
    /// messages is closed at the end of the first and opened again at the start of the next,
    /// and IRC's reset ends every line that has a code. Text is cut at a space where one
    /// leaves a piece at least half full, else at a character boundary; nothing is lost.
    /// Blank lines outside code blocks are left out, as the outbox leaves them out.
    pub fn messages(&self, style: Style, max_bytes: usize, multiline: bool) -> Vec<String> {
        let max = max_bytes.max(MIN_MESSAGE);
        let mut units: Vec<Unit> = Vec::new();
        for row in self.rows(style) {
            match row {
                Row::Inline { prefix, pieces } => units.extend(
                    cut_inline(&prefix, &pieces, style, max)
                        .into_iter()
                        .map(Unit::Line),
                ),
                Row::Code { open, body, close } => {
                    if body.trim().is_empty() {
                        continue;
                    }
                    let room = max.saturating_sub(open.len() + close.len());
                    units.extend(
                        chunks(&body, room)
                            .into_iter()
                            .filter(|c| !c.trim().is_empty())
                            .map(|c| Unit::Line(format!("{open}{c}{close}"))),
                    );
                }
                Row::Fenced(lines) => {
                    // Room for the fences around one line in a message of its own.
                    let room = max - 2 * (FENCE.len() + 1);
                    units.push(Unit::Fenced(
                        lines
                            .iter()
                            .flat_map(|l| {
                                if l.is_empty() {
                                    vec![String::new()]
                                } else {
                                    chunks(l, room)
                                }
                            })
                            .collect(),
                    ));
                }
            }
        }
        if multiline {
            pack(units, max)
        } else {
            units
                .into_iter()
                .flat_map(|u| match u {
                    Unit::Line(l) => vec![l],
                    Unit::Fenced(lines) => std::iter::once(FENCE.to_owned())
                        .chain(lines.into_iter().filter(|l| !l.trim().is_empty()))
                        .chain(std::iter::once(FENCE.to_owned()))
                        .collect(),
                })
                .collect()
        }
    }

    /// The reply as rows for `style`, before any cut.
    fn rows(&self, style: Style) -> Vec<Row> {
        let mut out = Vec::new();
        let inline = |prefix: String, l: &Line| Row::Inline {
            prefix,
            pieces: l.spans().iter().cloned().map(Piece::Span).collect(),
        };
        for b in &self.blocks {
            match b {
                Block::Heading(l) => {
                    let plain: String = l.spans().iter().map(|s| span(s, Style::Plain)).collect();
                    out.push(Row::Inline {
                        prefix: String::new(),
                        pieces: vec![Piece::Heading(plain)],
                    });
                }
                Block::Paragraph(l) => out.push(inline(String::new(), l)),
                Block::Bullets(items) => {
                    for i in items {
                        out.push(inline(format!("{} ", bullet(style)), i));
                    }
                }
                Block::Numbered(items) => {
                    for (n, i) in items.iter().enumerate() {
                        out.push(inline(format!("{}. ", n + 1), i));
                    }
                }
                Block::Code(text) => out.extend(code_block(text, style)),
                Block::Table { header, rows } => out.extend(table(header, rows, style)),
            }
        }
        out
    }
}

/// A code block's fence (Markdown and XEP-0393).
const FENCE: &str = "```";

/// The smallest message [`Rich::messages`] cuts to: room for fences and one character.
const MIN_MESSAGE: usize = 24;

/// One row of a reply rendered for a style, before it is cut to a transport's size.
#[derive(Debug)]
enum Row {
    /// Inline text after a plain prefix (a bullet, a number).
    Inline { prefix: String, pieces: Vec<Piece> },
    /// A line of code or a table row, shown between `open` and `close`; cut anywhere.
    Code {
        open: &'static str,
        body: String,
        close: &'static str,
    },
    /// Lines inside a fence, which a cut closes and opens again.
    Fenced(Vec<String>),
}

/// A piece of inline text: a span, or a heading's text.
#[derive(Clone, Debug)]
enum Piece {
    Span(Span),
    Heading(String),
}

/// What [`Rich::messages`] packs: a line, or a fenced block's lines.
enum Unit {
    Line(String),
    Fenced(Vec<String>),
}

/// Packs lines into messages of at most `max` bytes; a fenced block cut between two messages
/// is closed in the first and opened again in the second.
fn pack(units: Vec<Unit>, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let push = |cur: &mut String, line: &str, reserve: usize, out: &mut Vec<String>| {
        if !cur.is_empty() && cur.len() + 1 + line.len() + reserve > max {
            out.push(std::mem::take(cur));
        }
        if !cur.is_empty() {
            cur.push('\n');
        }
        cur.push_str(line);
    };
    let close = FENCE.len() + 1;
    for u in units {
        match u {
            Unit::Line(l) => {
                if !l.trim().is_empty() {
                    push(&mut cur, &l, 0, &mut out);
                }
            }
            Unit::Fenced(lines) => {
                // The opening fence goes where its first line and the closing fence fit too.
                let first = lines.first().map_or(0, String::len);
                push(&mut cur, FENCE, 1 + first + close, &mut out);
                for l in &lines {
                    if cur.len() + 1 + l.len() + close > max {
                        cur.push('\n');
                        cur.push_str(FENCE);
                        out.push(std::mem::replace(&mut cur, FENCE.to_owned()));
                    }
                    cur.push('\n');
                    cur.push_str(l);
                }
                cur.push('\n');
                cur.push_str(FENCE);
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `s` cut at character boundaries into pieces of at most `room` bytes (at least one
/// character each).
fn chunks(s: &str, room: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while rest.len() > room {
        let mut end = room;
        while end > 0 && !rest.is_char_boundary(end) {
            end -= 1;
        }
        if end == 0 {
            end = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        out.push(rest[..end].to_owned());
        rest = &rest[end..];
    }
    if !rest.is_empty() {
        out.push(rest.to_owned());
    }
    out
}

fn piece(p: &Piece, style: Style) -> String {
    match p {
        Piece::Span(s) => span(s, style),
        Piece::Heading(t) => heading(t, style),
    }
}

/// The text a piece carries, and the same kind of piece with other text.
fn raw(p: &Piece) -> &str {
    match p {
        Piece::Heading(t)
        | Piece::Span(Span::Text(t) | Span::Bold(t) | Span::Italic(t) | Span::Code(t)) => t,
        Piece::Span(Span::Link { text, .. }) => text,
    }
}

fn with_text(p: &Piece, t: &str) -> Piece {
    let t = t.to_owned();
    match p {
        Piece::Heading(_) => Piece::Heading(t),
        Piece::Span(Span::Bold(_)) => Piece::Span(Span::Bold(t)),
        Piece::Span(Span::Italic(_)) => Piece::Span(Span::Italic(t)),
        Piece::Span(Span::Code(_)) => Piece::Span(Span::Code(t)),
        Piece::Span(Span::Text(_) | Span::Link { .. }) => Piece::Span(Span::Text(t)),
    }
}

/// A line of inline pieces after `prefix`, with IRC's reset at its end when it has a code.
fn inline_line(prefix: &str, pieces: &[Piece], style: Style) -> String {
    let mut s = prefix.to_owned();
    for p in pieces {
        s.push_str(&piece(p, style));
    }
    finish(s, style)
}

fn finish(mut s: String, style: Style) -> String {
    if style == Style::Irc && s.chars().any(|c| matches!(c, '\x02' | '\x1d' | '\x11')) {
        s.push('\x0f');
    }
    s
}

/// An inline row cut into lines of at most `max` bytes. A piece that does not fit is cut in
/// two, each rendered whole (so a run is closed before the cut and opened after it); a link
/// too long for a line of its own is shown as its text and target.
fn cut_inline(prefix: &str, pieces: &[Piece], style: Style, max: usize) -> Vec<String> {
    // IRC's reset at the line's end.
    let room = max - usize::from(style == Style::Irc);
    let mut lines = Vec::new();
    let mut cur = prefix.to_owned();
    let mut filled = false;
    let mut queue: std::collections::VecDeque<Piece> = pieces.iter().cloned().collect();
    while let Some(p) = queue.pop_front() {
        let r = piece(&p, style);
        if cur.len() + r.len() <= room {
            cur.push_str(&r);
            filled = true;
            continue;
        }
        if let Piece::Span(Span::Link { text, url }) = &p {
            let shown = if clean(text) == clean(url) || text.trim().is_empty() {
                url.clone()
            } else {
                format!("{text} <{url}>")
            };
            queue.push_front(Piece::Span(Span::Text(shown)));
            continue;
        }
        match split_piece(&p, style, room - cur.len()) {
            Some((head, tail)) => {
                cur.push_str(&piece(&head, style));
                lines.push(finish(std::mem::take(&mut cur), style));
                filled = false;
                queue.push_front(tail);
            }
            None if filled || !cur.is_empty() => {
                lines.push(finish(std::mem::take(&mut cur), style));
                filled = false;
                queue.push_front(p);
            }
            None => {
                // Not one character fits an empty line: send one anyway.
                let t = raw(&p);
                let first = t.chars().next().map_or(t.len(), char::len_utf8);
                lines.push(finish(piece(&with_text(&p, &t[..first]), style), style));
                if first < t.len() {
                    queue.push_front(with_text(&p, &t[first..]));
                }
            }
        }
    }
    if filled {
        lines.push(finish(cur, style));
    }
    lines.retain(|l| !l.trim().is_empty());
    lines
}

/// `p` cut in two so that the first part, rendered, takes at most `room` bytes: at a space
/// that leaves it at least half of what fits, else at the last character that fits. `None`
/// when not one character fits.
fn split_piece(p: &Piece, style: Style, room: usize) -> Option<(Piece, Piece)> {
    let t = raw(p);
    let bounds: Vec<usize> = t.char_indices().map(|(i, _)| i).skip(1).collect();
    let fits = |end: usize| piece(&with_text(p, &t[..end]), style).len() <= room;
    // The rendered length grows with the text, near enough to search; then step back to be
    // sure.
    let mut i = bounds.partition_point(|&end| fits(end));
    while i > 0 && !fits(bounds[i - 1]) {
        i -= 1;
    }
    if i == 0 {
        return None;
    }
    let mut end = bounds[i - 1];
    if let Some(space) = t[..end].rfind(' ')
        && space >= end / 2
        && !t[..space].trim().is_empty()
    {
        end = space;
    }
    let (head, tail) = t.split_at(end);
    Some((
        with_text(p, head.trim_end()),
        with_text(p, tail.trim_start()),
    ))
}

impl From<&str> for Rich {
    fn from(t: &str) -> Self {
        Rich::new().para(t)
    }
}

impl From<String> for Rich {
    fn from(t: String) -> Self {
        Rich::new().para(t)
    }
}

impl From<Line> for Rich {
    fn from(l: Line) -> Self {
        Rich::new().para(l)
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

/// Markdown: every character Markdown could read as syntax is escaped with a backslash, and
/// `<` and `&` (HTML, entities and Webex's mentions) as entities, so the text is sent as it is.
fn md_text(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    for c in t.chars() {
        // `<` opens HTML and Webex's mentions (`<@all>`); `&` an entity.
        match c {
            '<' => {
                out.push_str("&lt;");
                continue;
            }
            '&' => {
                out.push_str("&amp;");
                continue;
            }
            _ => {}
        }
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
                    format!("{fence}{pad}{}{pad}{fence}", no_mention(&t))
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
            } else if style == Style::Markdown {
                // A bare `<…>` would be an autolink.
                format!("{shown} &lt;{target}&gt;")
            } else {
                format!("{shown} <{target}>")
            }
        }
    }
}

/// A heading's text (already plain) for `style`. On IRC the line's reset ends it.
fn heading(plain: &str, style: Style) -> String {
    match style {
        Style::Plain => plain.to_owned(),
        Style::Irc => format!("\x02{plain}"),
        Style::XmppStyling if plain.trim().is_empty() => plain.to_owned(),
        Style::XmppStyling => format!("*{}*", xmpp_text(plain.trim()).replace('*', "\u{2217}")),
        Style::Markdown => format!("**{}**", md_text(plain)),
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

fn code_block(t: &str, style: Style) -> Vec<Row> {
    let lines: Vec<String> = t.lines().map(clean_code).collect();
    let code = |open, close| {
        lines
            .iter()
            .map(|l| Row::Code {
                open,
                body: l.clone(),
                close,
            })
            .collect()
    };
    match style {
        Style::Plain => code("    ", ""),
        Style::Irc => code("    \x11", "\x0f"),
        Style::XmppStyling | Style::Markdown => {
            // A line of the block that is itself a fence would end it early, and on Webex a
            // `<@` would be a mention even in code.
            let mut lines: Vec<String> = lines
                .iter()
                .map(|l| {
                    if l.trim_start().starts_with(FENCE) {
                        format!("\u{02CB}{}", &l[l.find(FENCE).unwrap_or(0) + 1..])
                    } else {
                        l.clone()
                    }
                })
                .collect();
            if style == Style::Markdown {
                for l in &mut lines {
                    *l = no_mention(l);
                }
            }
            vec![Row::Fenced(lines)]
        }
        Style::Ansi => code("    \x1b[36m", "\x1b[39m"),
    }
}

fn table(header: &[String], rows: &[Vec<String>], style: Style) -> Vec<Row> {
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
    let body = rows.iter().map(|r| line(r));
    let row = |open, body, close| Row::Code { open, body, close };
    match style {
        Style::Plain => std::iter::once(row("", head, ""))
            .chain(std::iter::once(row("", rule, "")))
            .chain(body.map(|b| row("", b, "")))
            .collect(),
        Style::Irc => std::iter::once(row("\x11\x02", head, "\x0f"))
            .chain(body.map(|b| row("\x11", b, "\x0f")))
            .collect(),
        Style::XmppStyling | Style::Markdown => {
            let mut text = vec![head, rule];
            text.extend(body);
            code_block(&text.join("\n"), style)
        }
        Style::Ansi => std::iter::once(row("\x1b[1m", head, "\x1b[22m"))
            .chain(body.map(|b| row("", b, "")))
            .collect(),
    }
}

/// A Webex mention (`<@…>`) made impossible where Markdown's escapes do not apply (code).
fn no_mention(t: &str) -> String {
    t.replace("<@", "\u{2039}@")
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
             1. &lt;@all\\> hi &amp; &lt;b\\>\n\
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
            "x &lt;javascript:alert\\(1\\)&gt; [https://a\\.example/](https://a.example/)"
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

    const STYLES: [Style; 5] = [
        Style::Plain,
        Style::Irc,
        Style::XmppStyling,
        Style::Markdown,
        Style::Ansi,
    ];

    #[test]
    fn uncut_messages_are_the_rendering() {
        for style in STYLES {
            assert_eq!(
                sample().messages(style, usize::MAX, true).join("\n"),
                sample().render(style),
                "{style:?}"
            );
            assert_eq!(
                sample().messages(style, usize::MAX, false).join("\n"),
                sample().render(style),
                "{style:?}"
            );
        }
    }

    #[test]
    fn a_long_code_block_is_closed_and_reopened_in_every_message() {
        let log: Vec<String> = (0..3000)
            .map(|i| format!("{i:05} GET /health 200"))
            .collect();
        let r = Rich::new().code(log.join("\n"));
        for style in [Style::Markdown, Style::XmppStyling] {
            let messages = r.messages(style, 4000, true);
            assert!(messages.len() > 10);
            let mut lines = Vec::new();
            for m in &messages {
                assert!(m.len() <= 4000);
                assert!(m.starts_with("```\n") && m.ends_with("\n```"), "{m:.40}");
                let inner = &m[4..m.len() - 4];
                assert!(!inner.contains("```"));
                lines.extend(inner.lines().map(str::to_owned));
            }
            assert_eq!(lines, log, "{style:?}");
        }
        let irc = r.messages(Style::Irc, 400, false);
        assert_eq!(irc.len(), 3000);
        assert!(
            irc.iter()
                .all(|l| l.starts_with("    \x11") && l.ends_with('\x0f'))
        );
    }

    /// The visible text of an IRC line: its codes removed.
    fn irc_visible(l: &str) -> String {
        l.chars()
            .filter(|c| !matches!(c, '\x02' | '\x1d' | '\x11' | '\x0f'))
            .collect()
    }

    #[test]
    fn a_cut_closes_and_reopens_a_run() {
        let words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu";
        let r = Rich::new().para(
            Line::new()
                .text("see ")
                .bold(words)
                .text(" and ")
                .code(words),
        );
        let lines = r.messages(Style::Irc, MIN_MESSAGE + 24, false);
        assert!(lines.len() >= 4, "{lines:?}");
        for l in &lines {
            assert!(l.len() <= MIN_MESSAGE + 24, "{l:?}");
            assert!(l.ends_with('\x0f'), "{l:?}");
            for code in ['\x02', '\x11'] {
                assert_eq!(l.matches(code).count() % 2, 0, "{l:?} leaves {code:?} open");
            }
        }
        let seen: Vec<String> = lines.iter().map(|l| irc_visible(l)).collect();
        assert_eq!(
            seen.join(" ").split_whitespace().collect::<Vec<_>>(),
            format!("see {words} and {words}")
                .split_whitespace()
                .collect::<Vec<_>>()
        );
        // Each piece of the bold run is bold on its own line.
        assert!(lines[1].starts_with('\x02'), "{:?}", lines[1]);

        let md = r.messages(Style::Markdown, 40, true);
        for m in &md {
            assert!(m.len() <= 40);
            assert_eq!(m.matches("**").count() % 2, 0, "{m:?}");
            assert_eq!(m.matches('`').count() % 2, 0, "{m:?}");
        }
        let xmpp = r.messages(Style::XmppStyling, 30, false);
        for m in &xmpp {
            assert!(m.len() <= 30);
            assert_eq!(m.matches('*').count() % 2, 0, "{m:?}");
        }
    }

    #[test]
    fn a_link_too_long_for_a_line_keeps_its_target() {
        let url = format!("https://wiki.example.com/{}", "a".repeat(100));
        let r = Rich::new().para(Line::new().link("runbook", url.as_str()));
        let lines = r.messages(Style::Plain, 50, false);
        assert!(lines.iter().all(|l| l.len() <= 50));
        assert_eq!(lines.concat().replace(' ', ""), format!("runbook<{url}>"));
    }

    #[test]
    fn no_mention_in_markdown_code() {
        let r = Rich::new()
            .para(Line::new().code("<@all>"))
            .code("<@all> & <b>");
        assert_eq!(
            r.render(Style::Markdown),
            "`\u{2039}@all>`\n```\n\u{2039}@all> & <b>\n```"
        );
    }

    /// Random replies cut at random sizes: every message fits, every fence is closed, and no
    /// line break or control character other than the style's own gets through.
    #[test]
    fn every_cut_fits_and_closes_what_it_opens() {
        let mut rng = 11u64;
        let mut next = |n: usize| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) as usize % n
        };
        let alphabet = [
            "a", "é", "€", " ", "*", "_", "`", "<", "&", "\n", "\x02", "𝄞", "> ",
        ];
        let word = |next: &mut dyn FnMut(usize) -> usize| -> String {
            (0..next(60))
                .map(|_| alphabet[next(alphabet.len())])
                .collect()
        };
        for _ in 0..300 {
            let mut line = Line::new();
            for _ in 0..next(6) {
                let w = word(&mut next);
                line = match next(5) {
                    0 => line.text(w),
                    1 => line.bold(w),
                    2 => line.italic(w),
                    3 => line.code(w),
                    _ => line.link(w, "https://x.example/"),
                };
            }
            let code: Vec<String> = (0..next(8)).map(|_| word(&mut next)).collect();
            let r = Rich::new()
                .heading(word(&mut next))
                .para(line.clone())
                .bullets([line])
                .code(code.join("\n"))
                .table(["a", "b"], [vec![word(&mut next), word(&mut next)]]);
            let max = MIN_MESSAGE + next(80);
            for style in STYLES {
                for multiline in [false, true] {
                    for m in r.messages(style, max, multiline) {
                        assert!(m.len() <= max, "{style:?} {max}: {m:?}");
                        assert!(
                            !m.trim().is_empty(),
                            "{style:?} {multiline}: {:?}",
                            r.messages(style, max, multiline)
                        );
                        if !multiline {
                            assert!(!m.contains('\n'), "{m:?}");
                        }
                        let allowed: &[char] = match style {
                            Style::Irc => &['\x02', '\x1d', '\x11', '\x0f'],
                            Style::Ansi => &['\x1b'],
                            _ => &[],
                        };
                        assert!(
                            m.chars()
                                .all(|c| c == '\n' || !c.is_control() || allowed.contains(&c)),
                            "{style:?}: {m:?}"
                        );
                        if multiline && matches!(style, Style::Markdown | Style::XmppStyling) {
                            let fences = m.lines().filter(|l| *l == FENCE).count();
                            assert_eq!(fences % 2, 0, "{style:?} {max}: {m:?}");
                        }
                    }
                }
            }
        }
    }
}

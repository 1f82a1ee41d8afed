//! Line-length arithmetic: what fits in the 512 bytes a server relays, counting our prefix as
//! the server shows it, and the text rules (formatting codes, hosts) that go with it.

use super::*;

/// The most a server relays in one line, CRLF included (RFC 1459 §2.3).
pub(super) const IRC_LINE: usize = 512;

/// Assumed lengths of our user and host before the server has shown them (RFC 1459 user names
/// are short; 63 is the longest DNS label).
pub(super) const ASSUMED_USER: usize = 10;

pub(super) const ASSUMED_HOST: usize = 63;

/// Longest target we size the outbox's split for (channel or nick); longer ones are cut exactly
/// at send time.
pub(super) const ASSUMED_TARGET: usize = 50;

/// Longest nick accepted from the server when its 005 names no NICKLEN.
pub(super) const DEFAULT_NICKLEN: usize = 30;

/// Longest host accepted (a cloak or vhost).
pub(super) const MAX_HOST: usize = 128;

/// `text` without mIRC formatting: bold, italics, underline, strike-through, monospace,
/// reverse and reset codes, and colour codes with their numbers (`\x0304,01red` is `red`;
/// stripping only the control character would leave `04,01red`).
pub(crate) fn strip_formatting(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{2}' | '\u{f}' | '\u{11}' | '\u{16}' | '\u{1d}' | '\u{1e}' | '\u{1f}' => {}
            '\u{3}' => {
                // Up to two digits of foreground, then a comma and up to two of background.
                let digits = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
                    let mut n = 0;
                    while n < 2 && chars.peek().is_some_and(char::is_ascii_digit) {
                        chars.next();
                        n += 1;
                    }
                    n
                };
                if digits(&mut chars) > 0 && chars.peek() == Some(&',') {
                    let mut ahead = chars.clone();
                    ahead.next();
                    if ahead.peek().is_some_and(char::is_ascii_digit) {
                        chars.next();
                        digits(&mut chars);
                    }
                }
            }
            '\u{4}' => {
                // A hex colour: six hex digits, then a comma and six more.
                let hex = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
                    let mut ahead = chars.clone();
                    let ok = (0..6).all(|_| ahead.next().is_some_and(|c| c.is_ascii_hexdigit()));
                    if ok {
                        for _ in 0..6 {
                            chars.next();
                        }
                    }
                    ok
                };
                if hex(&mut chars) && chars.peek() == Some(&',') {
                    let mut ahead = chars.clone();
                    ahead.next();
                    if (0..6).all(|_| ahead.next().is_some_and(|c| c.is_ascii_hexdigit())) {
                        chars.next();
                        hex(&mut chars);
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Whether `host` (or a user name) can be one: printable ASCII without spaces, `!` or `@`.
pub(super) fn valid_host(host: &str, max: usize) -> bool {
    !host.is_empty()
        && host.len() <= max
        && host
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '!' && c != '@')
}

/// What the server charges for a line we send, in PRIVMSG units (InspIRCd 3's penalties, the
/// strictest we know: JOIN 2, NICK after registration 4, PART 5, a PONG answering the server's
/// PING nothing; ngircd charges less or nothing for these).
pub(super) fn server_cost(line: &str, registered: bool) -> u32 {
    match line.split(' ').next().unwrap_or("") {
        "PONG" => 0,
        "JOIN" => 2,
        "NICK" if registered => 4,
        "PART" => 5,
        _ => 1,
    }
}

pub(super) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Cuts `text` into pieces of at most `room` bytes on character boundaries.
pub(super) fn cut(text: &str, room: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > room {
        let piece = truncate(rest, room);
        if piece.is_empty() {
            break;
        }
        out.push(piece);
        rest = &rest[piece.len()..];
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// The mIRC codes a formatted line may hold: bold, italics, monospace, reset.
pub(super) const FORMAT_CODES: [char; 4] = ['\x02', '\x1d', '\x11', '\x0f'];

/// Cuts a formatted line like [`cut`], closing a run at each cut (a reset) and opening it
/// again at the start of the next piece, so no piece runs into another line or loses its
/// formatting.
pub(super) fn cut_formatted(text: &str, room: usize) -> Vec<String> {
    if text.len() <= room {
        return vec![text.to_owned()];
    }
    // Room for the reset at the end and the three codes at the start.
    let room = room.saturating_sub(4).max(4);
    let mut out = Vec::new();
    let mut on: Vec<char> = Vec::new();
    let mut piece = String::new();
    let mut text_len = 0;
    for c in text.chars() {
        if text_len + c.len_utf8() > room && !piece.is_empty() {
            if !on.is_empty() {
                piece.push('\x0f');
            }
            out.push(std::mem::take(&mut piece));
            piece.extend(on.iter());
            text_len = piece.len();
        }
        match c {
            '\x0f' => on.clear(),
            '\x02' | '\x1d' | '\x11' => {
                if let Some(i) = on.iter().position(|o| *o == c) {
                    on.remove(i);
                } else {
                    on.push(c);
                }
            }
            _ => {}
        }
        piece.push(c);
        text_len += c.len_utf8();
    }
    if !piece.is_empty() {
        out.push(piece);
    }
    out
}

impl Irc {
    pub(super) fn limits(&self, prefix_len: usize) -> Limits {
        // The server relays `:prefix PRIVMSG target :text\r\n`.
        let overhead = 1 + prefix_len + 1 + "PRIVMSG ".len() + ASSUMED_TARGET + 2 + 2;
        Limits {
            style: self.cfg.formatting.style(),
            ..self
                .profile
                .limits(IRC_LINE.saturating_sub(overhead).max(64))
        }
    }
}

impl Session<'_> {
    /// Applies the current profile and prefix to the pacing budget. A new budget starts full,
    /// but the server still counts what we sent in the last seconds: charge that again. (A new
    /// nick or host only changes the line length; the budget is kept as it is.)
    pub(super) fn set_limits(&mut self) {
        let limits = self.irc.limits(self.prefix_len());
        if !self.link.pacing().set_limits(&limits) {
            return;
        }
        let now = Instant::now();
        let recent = self
            .recent_sends
            .iter()
            .filter(|t| now.duration_since(**t) < RECENT)
            .count();
        if recent > 0 {
            self.link.pacing().charge_n(recent as u32, 0);
        }
    }

    pub(super) fn prefix_len(&self) -> usize {
        self.nick.len()
            + 1
            + self.user.as_ref().map_or(ASSUMED_USER, String::len)
            + 1
            + self.host.as_ref().map_or(ASSUMED_HOST, String::len)
    }

    /// Bytes of text that fit in one PRIVMSG to `target`, as the server relays it.
    pub(super) fn room(&self, target: &str) -> usize {
        let overhead = 1 + self.prefix_len() + 1 + "PRIVMSG ".len() + target.len() + 2 + 2;
        IRC_LINE.saturating_sub(overhead).max(1)
    }
}

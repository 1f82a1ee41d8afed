//! Pure text functions: what may be shown to a reader, and the outbox's sanitizing and
//! splitting.
//!
//! Kept free of any runtime so they can be tested exhaustively. The rules they enforce:
//!
//! - **One definition of printable** ([`is_printable`]) for every place that shows text from
//!   outside (chat replies, the healing log, the status API and page, log lines): no control
//!   characters, no bidirectional overrides, embeddings or isolates (which make a line read
//!   differently from what it says), and no invisible characters (zero-width spaces, word
//!   joiners, soft hyphens, invisible fillers, tag characters). Zero-width joiners and
//!   non-joiners stay: emoji sequences and several scripts need them.
//! - Whatever a handler returns, what reaches a transport is a list of lines that hold only
//!   printable characters (so no CR, LF or NUL can start a protocol line) and no more bytes than
//!   the transport allows, split on UTF-8 character boundaries.

use std::fmt;

/// Whether `c` may be shown to a reader as it is; see the [module documentation](self).
pub fn is_printable(c: char) -> bool {
    !c.is_control()
        && !matches!(
            c,
            '\u{00AD}'                      // soft hyphen
            | '\u{034F}'                    // combining grapheme joiner
            | '\u{061C}'                    // Arabic letter mark
            | '\u{115F}' | '\u{1160}'       // Hangul fillers
            | '\u{17B4}' | '\u{17B5}'       // Khmer inherent vowels (invisible)
            | '\u{180E}'                    // Mongolian vowel separator
            | '\u{200B}'                    // zero-width space
            | '\u{200E}' | '\u{200F}'       // left-to-right and right-to-left marks
            | '\u{2028}'..='\u{202E}'       // separators, embeddings and overrides
            | '\u{2060}'..='\u{206F}'       // word joiner, invisible operators, isolates
            | '\u{3164}'                    // Hangul filler
            | '\u{FE00}'..='\u{FE0D}'       // variation selectors other than emoji's
            | '\u{FEFF}'                    // zero-width no-break space
            | '\u{FFA0}'                    // halfwidth Hangul filler
            | '\u{FFF9}'..='\u{FFFB}'       // interlinear annotations
            | '\u{E0000}'..='\u{E007F}'     // tag characters
        )
}

/// `text` with every character that is not printable removed (tabs become spaces).
pub fn printable(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            '\t' => Some(' '),
            c if is_printable(c) => Some(c),
            _ => None,
        })
        .collect()
}

/// Shows text from outside in a log line or a message: printable characters as they are,
/// every other one escaped (`\u{202e}`), so a reader sees exactly what was sent and nothing
/// can move the cursor, recolour a terminal or reverse the line.
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for c in self.0.chars() {
            if is_printable(c) {
                f.write_char(c)?;
            } else {
                write!(f, "\\u{{{:x}}}", u32::from(c))?;
            }
        }
        Ok(())
    }
}

/// Splits `text` into safe lines of at most `max_bytes` bytes each.
///
/// Line breaks (`\n`, `\r\n`, `\r`, and the Unicode line and paragraph separators) separate lines;
/// tabs become spaces; every other control character is removed. Blank lines are dropped. A line
/// longer than `max_bytes` is cut at the last space that leaves the piece at least half full,
/// else at the last character boundary that fits; a cut never breaks a UTF-8 sequence.
pub fn split_lines(text: &str, max_bytes: usize) -> Vec<String> {
    let max_bytes = max_bytes.max(4); // room for any one UTF-8 character
    let mut out = Vec::new();
    for raw in text.split(['\n', '\r', '\u{2028}', '\u{2029}', '\u{85}']) {
        let line = clean(raw);
        let mut rest = line.trim_end();
        if rest.trim_start().is_empty() {
            continue;
        }
        while rest.len() > max_bytes {
            let cut = cut_point(rest, max_bytes);
            let (head, tail) = rest.split_at(cut);
            let head = head.trim_end();
            if !head.is_empty() {
                out.push(head.to_owned());
            }
            rest = tail.trim_start();
        }
        if !rest.is_empty() {
            out.push(rest.to_owned());
        }
    }
    out
}

/// Like [`split_lines`], for a transport whose messages may hold several lines: the safe lines
/// are joined with `\n` into as few messages of at most `max_bytes` bytes as they fit in, so a
/// break falls between lines wherever a line fits whole, and inside a line (at a space, else a
/// character boundary) only when it is longer than a message.
pub fn pack_lines(text: &str, max_bytes: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in split_lines(text, max_bytes) {
        if !current.is_empty() && current.len() + 1 + line.len() > max_bytes.max(4) {
            out.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(&line);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Removes what is not printable (tabs become spaces).
fn clean(raw: &str) -> String {
    printable(raw)
}

/// Where to cut `s` so that the head is at most `max` bytes: at a space if one leaves the head at
/// least half full, else at the last character boundary.
fn cut_point(s: &str, max: usize) -> usize {
    let mut boundary = max;
    while !s.is_char_boundary(boundary) {
        boundary -= 1;
    }
    match s[..boundary].rfind(' ') {
        Some(space) if space >= max / 2 => space,
        _ => boundary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_for_what_is_printable() {
        for bad in [
            '\u{7}',
            '\u{1b}',
            '\u{85}',
            '\u{200B}',
            '\u{200E}',
            '\u{202A}',
            '\u{202E}',
            '\u{2066}',
            '\u{2067}',
            '\u{2068}',
            '\u{2069}',
            '\u{2060}',
            '\u{FEFF}',
            '\u{00AD}',
            '\u{3164}',
            '\u{E0041}',
        ] {
            assert!(!is_printable(bad), "{:x}", u32::from(bad));
        }
        for good in [
            'a', 'é', '€', '𝄞', '\u{200D}', '\u{200C}', '\u{FE0F}', 'ש', ' ',
        ] {
            assert!(is_printable(good), "{:x}", u32::from(good));
        }
        assert_eq!(printable("a\u{2066}b\u{202E}c\td\u{1b}[31m"), "abc d[31m");
        assert_eq!(
            Escaped("x\u{202E}y\u{1b}").to_string(),
            "x\\u{202e}y\\u{1b}"
        );
    }

    #[test]
    fn newlines_and_controls_never_survive() {
        let lines = split_lines("x\r\nQUIT :bye\0\x01ACTION\x01\u{7}", 512);
        assert_eq!(lines, ["x", "QUIT :byeACTION"]);
        for l in &lines {
            assert!(!l.chars().any(char::is_control));
        }
    }

    #[test]
    fn splits_exactly_at_the_limit_without_breaking_utf8() {
        // 'é' is 2 bytes and '€' 3; no spaces, so cuts fall at character boundaries.
        let text: String = "é€a".repeat(400);
        for max in [7, 8, 9, 10, 100, 101, 102, 103] {
            let lines = split_lines(&text, max);
            assert_eq!(lines.concat(), text, "nothing lost at max {max}");
            for l in &lines {
                assert!(l.len() <= max, "{} > {max}", l.len());
                // A piece is cut only where the next character would not fit.
                assert!(l.len() + 3 > max || std::ptr::eq(l, lines.last().unwrap()));
            }
        }
    }

    #[test]
    fn prefers_word_breaks() {
        let lines = split_lines("alpha beta gamma delta", 12);
        assert_eq!(lines, ["alpha beta", "gamma delta"]);
    }

    #[test]
    fn blank_lines_are_dropped() {
        assert!(split_lines("\n \n\t\n", 10).is_empty());
        assert_eq!(split_lines("a\n\nb", 10), ["a", "b"]);
    }

    #[test]
    fn packed_messages_hold_whole_lines_where_they_fit() {
        assert_eq!(pack_lines("a\nbb\nccc\ndddd", 7), ["a\nbb", "ccc", "dddd"]);
        assert_eq!(
            pack_lines("one\r\ntwo\0\n\nthree", 100),
            ["one\ntwo\nthree"]
        );
        assert!(pack_lines("\n\n", 10).is_empty());
    }

    #[test]
    fn packing_loses_nothing_and_respects_the_limit() {
        let alphabet = ['a', 'é', '€', '𝄞', ' ', '\n'];
        let mut rng = 7u64;
        for max in [4usize, 5, 9, 64, 300] {
            let text: String = (0..5000)
                .map(|_| {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    alphabet[(rng >> 33) as usize % alphabet.len()]
                })
                .collect();
            let packed = pack_lines(&text, max);
            assert!(packed.iter().all(|m| m.len() <= max && !m.is_empty()));
            let words = |s: &str| s.split_whitespace().collect::<String>();
            assert_eq!(words(&packed.concat()), words(&text), "max {max}");
        }
    }
}

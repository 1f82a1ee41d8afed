//! Pure text functions used by the outbox: sanitizing and splitting.
//!
//! Kept free of any runtime so they can be tested exhaustively. The rule they enforce: whatever a
//! handler returns, what reaches a transport is a list of lines that hold no control character
//! (so no CR, LF or NUL can start a protocol line) and no more bytes than the transport allows,
//! split on UTF-8 character boundaries.

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

/// Removes control characters (tabs become spaces).
fn clean(raw: &str) -> String {
    raw.chars()
        .filter_map(|c| match c {
            '\t' => Some(' '),
            c if c.is_control() => None,
            // Bidi overrides and zero-width joiners are not control characters but can disguise
            // what a line says; they are harmless to the protocol, so they stay.
            c => Some(c),
        })
        .collect()
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

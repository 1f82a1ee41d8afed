//! What is wrong with a config file, in a person's words: the file, the key path, the line
//! when known, what is wrong and a hint.

use std::fmt;
use std::path::PathBuf;

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The key path (`bot[0].outbox.rate`), or empty for the whole file.
    pub key: String,
    /// The line, when known (1-based).
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// Puts the errors in the order of the file: by file, then line (errors without a line
    /// last), keeping the order of those on one line.
    pub fn sort(&mut self) {
        self.0.sort_by(|a, b| {
            (&a.file, a.line.is_none(), a.line).cmp(&(&b.file, b.line.is_none(), b.line))
        });
    }
}

/// The distance in edits (insert, delete, replace one character) between two short words.
pub(super) fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A parser's message about `key` in a person's words, with a hint where one helps: what
/// `[bot]` for `[[bot]]` means, what number a key wants, which known key a misspelt one is
/// probably (`rat`: did you mean `rate`?).
pub fn explain(key: &str, message: &str) -> (String, Option<String>) {
    let last = key.rsplit(['.', '[']).next().unwrap_or(key);
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, rest) = rest.split_once('`').unwrap_or((rest, ""));
        let known: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
        let close = known
            .iter()
            .map(|k| (edits(field, k), *k))
            .filter(|(d, k)| *d <= 2.max(k.len() / 3) && *d < field.len().max(1))
            .min();
        let hint = match close {
            Some((_, k)) => format!("did you mean `{k}`?"),
            None => "check the spelling; the config reference is in README.md".into(),
        };
        return (message.to_owned(), Some(hint));
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
        if key == "bot" && expected.contains("sequence") {
            return (
                "`[bot]` makes one table, but bots are a list".into(),
                Some("write [[bot]] (two brackets) above each bot".into()),
            );
        }
        let want = match expected {
            "f64" | "f32" if last.ends_with("_secs") => "a number of seconds, like 30".to_owned(),
            "f64" | "f32" => "a number, like 2.5".to_owned(),
            e if ["u8", "u16", "u32", "u64", "usize", "i32", "i64", "isize"].contains(&e) => {
                if last.ends_with("_ms") {
                    "a whole number of milliseconds, like 500".to_owned()
                } else if last.ends_with("_secs") {
                    "a whole number of seconds, like 30".to_owned()
                } else {
                    "a whole number, like 5".to_owned()
                }
            }
            "a boolean" => "true or false".to_owned(),
            "a sequence" => "a list, like [\"a\", \"b\"]".to_owned(),
            "a string" => "a string in quotes".to_owned(),
            other => other.to_owned(),
        };
        return (format!("expected {want}, found {found}"), None);
    }
    (message.to_owned(), None)
}

//! Matchers and templates: which alerts a rule or a route takes, and how an action's
//! parameters are filled from the alert.
//!
//! A matcher is written as in Alertmanager: `name="value"`, `name!="value"`, `name=~"regex"`,
//! `name!~"regex"` (regular expressions are anchored at both ends, and `.` matches a newline
//! too, as in Prometheus). It looks at the alert's labels, then its annotations.
//!
//! A template is text with `{name}` places, each filled with the alert's label `name`; `{{`
//! and `}}` are literal braces. A template may only name labels the rule's matchers make sure
//! are there (an equality, or a regular expression that cannot match the empty string): what
//! passes `opsbot check` never fills a place with an empty string. A value is always one
//! piece: filled into an argument it stays that one argument, whatever it holds.

use std::fmt;

use regex::{Regex, RegexBuilder};

use crate::alert::Alert;

/// The largest compiled regular expression of a matcher.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// How a matcher compares.
#[derive(Clone, Debug)]
enum Op {
    Equal(String),
    NotEqual(String),
    Matches(Regex),
    NotMatches(Regex),
}

/// One condition on a label or annotation.
#[derive(Clone, Debug)]
pub struct Matcher {
    name: String,
    op: Op,
    text: String,
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Matcher {
    /// Reads `name="value"` (or `!=`, `=~`, `!~`); the quotes may be left out.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let name_end = t
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or_else(|| format!("`{t}`: expected name=\"value\", name!=, name=~ or name!~"))?;
        let name = &t[..name_end];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("`{t}`: a matcher starts with a label name"));
        }
        let rest = t[name_end..].trim_start();
        let (op, value) = ["=~", "!~", "!=", "="]
            .iter()
            .find_map(|op| rest.strip_prefix(op).map(|v| (*op, v.trim())))
            .ok_or_else(|| format!("`{t}`: expected =, !=, =~ or !~ after `{name}`"))?;
        let value = match value.strip_prefix('"') {
            Some(v) => v
                .strip_suffix('"')
                .ok_or_else(|| format!("`{t}`: the value's quote is not closed"))?
                .replace("\\\"", "\""),
            None => value.to_owned(),
        };
        let regex = |v: &str| {
            RegexBuilder::new(&format!("^(?s:{v})$"))
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| format!("`{t}`: {e}"))
        };
        let op = match op {
            "=" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            "=~" => Op::Matches(regex(&value)?),
            _ => Op::NotMatches(regex(&value)?),
        };
        Ok(Self {
            name: name.to_owned(),
            op,
            text: t.to_owned(),
        })
    }

    /// Whether `alert` meets it (a missing label counts as the empty string, as in
    /// Alertmanager).
    pub fn matches(&self, alert: &Alert) -> bool {
        let v = alert.get(&self.name).unwrap_or("");
        match &self.op {
            Op::Equal(want) => v == want,
            Op::NotEqual(want) => v != want,
            Op::Matches(re) => re.is_match(v),
            Op::NotMatches(re) => !re.is_match(v),
        }
    }

    /// The label and value an equality matcher pins (`name="value"`, value not empty).
    pub fn pinned(&self) -> Option<(&str, &str)> {
        match &self.op {
            Op::Equal(v) if !v.is_empty() => Some((&self.name, v)),
            _ => None,
        }
    }

    /// Whether every alert this matcher takes has the label, not empty.
    fn ensures(&self) -> Option<&str> {
        let sure = match &self.op {
            Op::Equal(v) => !v.is_empty(),
            Op::Matches(re) => !re.is_match(""),
            _ => false,
        };
        sure.then_some(self.name.as_str())
    }
}

/// Matchers that must all hold.
#[derive(Clone, Debug, Default)]
pub struct Matchers(pub Vec<Matcher>);

impl Matchers {
    /// Reads each of `texts`; answers every problem, by index.
    pub fn parse(texts: &[String]) -> Result<Self, Vec<(usize, String)>> {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            match Matcher::parse(t) {
                Ok(m) => out.push(m),
                Err(e) => errors.push((i, e)),
            }
        }
        if errors.is_empty() {
            Ok(Self(out))
        } else {
            Err(errors)
        }
    }

    /// Whether `alert` meets every matcher.
    pub fn matches(&self, alert: &Alert) -> bool {
        self.0.iter().all(|m| m.matches(alert))
    }

    /// The labels every alert these matchers take has, not empty.
    pub fn ensured(&self) -> Vec<&str> {
        self.0.iter().filter_map(Matcher::ensures).collect()
    }
}

/// A piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Label(String),
}

/// Text with `{label}` places.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
    text: String,
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A place the alert has no value for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing(pub String);

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the alert has no label `{}`", self.0)
    }
}

impl Template {
    /// Reads a template.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) if c.is_ascii_alphanumeric() || c == '_' => name.push(c),
                            Some(c) => {
                                return Err(format!(
                                    "`{text}`: `{c}` in a place; a place is {{label_name}} \
                                     (write {{{{ for a brace)"
                                ));
                            }
                            None => return Err(format!("`{text}`: a `{{` is not closed")),
                        }
                    }
                    if name.is_empty() {
                        return Err(format!("`{text}`: an empty place {{}}"));
                    }
                    if !lit.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Label(name));
                }
                '}' => return Err(format!("`{text}`: a `}}` without its `{{` (write }}}})")),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Text(lit));
        }
        Ok(Self {
            pieces,
            text: text.to_owned(),
        })
    }

    /// The labels it names.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Label(l) => Some(l.as_str()),
            Piece::Text(_) => None,
        })
    }

    /// The labels it names that `ensured` does not hold.
    pub fn unsure<'a>(&'a self, ensured: &[&str]) -> Vec<&'a str> {
        self.labels().filter(|l| !ensured.contains(l)).collect()
    }

    /// Fills the places from `alert`'s labels; a missing or empty label is an error, never an
    /// empty string.
    pub fn render(&self, alert: &Alert) -> Result<String, Missing> {
        self.render_with(|name| alert.labels.get(name).map(String::as_str))
    }

    /// Fills the places from `value`.
    pub fn render_with<'a>(
        &self,
        value: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<String, Missing> {
        self.render_encoded(value, str::to_owned)
    }

    /// Fills the places from `value`, each value passed through `encode` first.
    pub fn render_encoded<'a>(
        &self,
        value: impl Fn(&str) -> Option<&'a str>,
        encode: impl Fn(&str) -> String,
    ) -> Result<String, Missing> {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Label(l) => match value(l) {
                    Some(v) if !v.is_empty() => out.push_str(&encode(v)),
                    _ => return Err(Missing(l.clone())),
                },
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{Alert, Status};

    fn alert(labels: &[(&str, &str)]) -> Alert {
        Alert {
            status: Status::Firing,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            annotations: [("summary".to_owned(), "disk full".to_owned())].into(),
            starts_at: "2026-12-06T10:00:00Z".into(),
            ends_at: String::new(),
            generator_url: String::new(),
            fingerprint: "f".into(),
        }
    }

    #[test]
    fn matchers_compare_as_alertmanager_does() {
        let a = alert(&[
            ("alertname", "WebDown"),
            ("env", "prod"),
            ("instance", "web-3"),
        ]);
        let yes = |m: &str| Matcher::parse(m).unwrap().matches(&a);
        assert!(yes("alertname=\"WebDown\""));
        assert!(yes("alertname = WebDown"));
        assert!(yes("env!=\"staging\""));
        assert!(yes("instance=~\"web-[0-9]+\""));
        assert!(!yes("instance=~\"web\""), "anchored");
        assert!(yes("instance!~\"db-.*\""));
        assert!(yes("team=\"\""), "a missing label is empty");
        assert!(yes("summary=~\"disk.*\""), "annotations too");
    }

    #[test]
    fn bad_matchers_say_what_is_wrong() {
        for (m, want) in [
            ("alertname", "expected"),
            ("=x", "starts with a label name"),
            ("a=\"x", "quote"),
            ("a=~\"(\"", "regex"),
            ("a<x", "expected =, !=, =~ or !~"),
        ] {
            let e = Matcher::parse(m).unwrap_err();
            assert!(e.to_lowercase().contains(want), "{m}: {e}");
        }
        let huge = format!("a=~\"{}\"", "(x{1000}){1000}");
        assert!(Matcher::parse(&huge).is_err(), "bounded compile size");
    }

    #[test]
    fn templates_fill_places_and_refuse_to_leave_them_empty() {
        let t = Template::parse("restart {service} on {instance} {{literal}}").unwrap();
        let a = alert(&[("service", "web"), ("instance", "h1")]);
        assert_eq!(t.render(&a).unwrap(), "restart web on h1 {literal}");
        let missing = alert(&[("service", "web")]);
        assert_eq!(t.render(&missing), Err(Missing("instance".into())));
        let empty = alert(&[("service", ""), ("instance", "h1")]);
        assert_eq!(t.render(&empty), Err(Missing("service".into())));
        for bad in ["{", "{}", "{a b}", "}", "{a"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_labels_the_matchers_ensure_may_be_used() {
        let m = Matchers::parse(&[
            "service=~\".+\"".into(),
            "env=\"prod\"".into(),
            "team=~\".*\"".into(),
            "zone!=\"a\"".into(),
        ])
        .unwrap();
        assert_eq!(m.ensured(), ["service", "env"]);
        let t = Template::parse("{service}-{env}-{team}-{zone}").unwrap();
        assert_eq!(t.unsure(&m.ensured()), ["team", "zone"]);
    }
}

//! Cards: a message with facts, inputs and buttons, shown as a card where the service has
//! them (Webex's Adaptive Cards) and as formatted text everywhere else.
//!
//! A button is a command: `Card::button("Approve", "approve A3")`. On Webex, pressing it runs
//! that command as the person who pressed it, through the router like a typed one (the same
//! access rules, budget and cooldowns), with the card's inputs in [`Call::inputs`]. Elsewhere
//! the card is its text with the commands spelled out (`reply !approve A3 (Approve) or !deny
//! A3 (Deny)`), so the same handler answers both. What a button runs is kept by the bot when
//! the card is posted; a submission only says which button, so nobody can make a card run a
//! command it does not carry.
//!
//! Cards are checked before they are sent ([`Card::check`]): a card that is too big, or has
//! too many buttons or fields, is an error for the handler, never a post the service refuses.
//!
//! [`Call::inputs`]: crate::command::Call::inputs

use std::fmt;

use crate::rich::{Line, Rich};

/// The most buttons a card may have (Webex shows five).
pub const MAX_BUTTONS: usize = 5;
/// The most elements (text blocks, fact lists, images, inputs) in a card.
pub const MAX_ELEMENTS: usize = 30;
/// The most inputs in a card.
pub const MAX_INPUTS: usize = 10;
/// The most facts in one fact list, and choices in one choice input.
pub const MAX_ITEMS: usize = 30;
/// The most bytes of text in one card, all its strings together (its Adaptive Card stays well
/// inside what Webex takes in one message).
pub const MAX_TEXT_BYTES: usize = 12 * 1024;

/// One element of a card's body.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Element {
    /// A block of text (wrapped).
    Text(String),
    /// Names and values, aligned.
    Facts(Vec<(String, String)>),
    /// An image by its (https) URL, with a description for those who cannot see it.
    Image {
        /// Where it is.
        url: String,
        /// What it shows.
        alt: String,
    },
    /// A line of text to type.
    Input {
        /// The input's id: its value's name in [`crate::command::Call::inputs`].
        id: String,
        /// What it asks.
        label: String,
        /// A hint shown while it is empty.
        placeholder: String,
    },
    /// One choice among several.
    Choice {
        /// The input's id.
        id: String,
        /// What it asks.
        label: String,
        /// The choices: what is shown, and the value submitted.
        choices: Vec<(String, String)>,
    },
}

/// A button: its title, and the command it runs (without the prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Button {
    /// What the button says.
    pub title: String,
    /// The command it runs, as typed after the prefix (`approve A3`).
    pub command: String,
}

/// A card; see the [module documentation](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Card {
    title: String,
    body: Vec<Element>,
    buttons: Vec<Button>,
    text: Option<Rich>,
}

/// Why a card cannot be sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CardError {
    /// Too many of something, or too much text.
    #[error("the card is too big: {0}")]
    TooBig(String),
    /// Something in it is not well formed.
    #[error("the card is not well formed: {0}")]
    Malformed(String),
}

impl Card {
    /// A card with a title.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            body: Vec::new(),
            buttons: Vec::new(),
            text: None,
        }
    }

    /// Uses `text` as the card's text fallback instead of the one made from the card; it
    /// should spell out the buttons' commands.
    pub fn fallback_text(mut self, text: impl Into<Rich>) -> Self {
        self.text = Some(text.into());
        self
    }

    /// Adds a block of text.
    pub fn text(mut self, t: impl Into<String>) -> Self {
        self.body.push(Element::Text(t.into()));
        self
    }

    /// Adds a list of facts (name, value).
    pub fn facts<K: Into<String>, V: Into<String>>(
        mut self,
        facts: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.body.push(Element::Facts(
            facts
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        ));
        self
    }

    /// Adds an image by URL (https only), with its description.
    pub fn image(mut self, url: impl Into<String>, alt: impl Into<String>) -> Self {
        self.body.push(Element::Image {
            url: url.into(),
            alt: alt.into(),
        });
        self
    }

    /// Adds a text input.
    pub fn input(
        mut self,
        id: impl Into<String>,
        label: impl Into<String>,
        placeholder: impl Into<String>,
    ) -> Self {
        self.body.push(Element::Input {
            id: id.into(),
            label: label.into(),
            placeholder: placeholder.into(),
        });
        self
    }

    /// Adds a choice input: `choices` are (what is shown, the value submitted).
    pub fn choice<T: Into<String>, V: Into<String>>(
        mut self,
        id: impl Into<String>,
        label: impl Into<String>,
        choices: impl IntoIterator<Item = (T, V)>,
    ) -> Self {
        self.body.push(Element::Choice {
            id: id.into(),
            label: label.into(),
            choices: choices
                .into_iter()
                .map(|(t, v)| (t.into(), v.into()))
                .collect(),
        });
        self
    }

    /// Adds a button that runs `command` (as typed after the prefix) for whoever presses it.
    pub fn button(mut self, title: impl Into<String>, command: impl Into<String>) -> Self {
        self.buttons.push(Button {
            title: title.into(),
            command: command.into(),
        });
        self
    }

    /// The title.
    pub fn title(&self) -> &str {
        &self.title
    }

    /// The body's elements.
    pub fn elements(&self) -> &[Element] {
        &self.body
    }

    /// The buttons.
    pub fn buttons(&self) -> &[Button] {
        &self.buttons
    }

    /// Checks the card against the bounds above: counts, text size, input ids (1 to 32 of
    /// `a-z`, `0-9`, `_`, unique), image URLs (https), button commands (one line, not empty).
    pub fn check(&self) -> Result<(), CardError> {
        let too_big = |what: String| Err(CardError::TooBig(what));
        let bad = |what: String| Err(CardError::Malformed(what));
        if self.buttons.len() > MAX_BUTTONS {
            return too_big(format!(
                "{} buttons (at most {MAX_BUTTONS})",
                self.buttons.len()
            ));
        }
        if self.body.len() > MAX_ELEMENTS {
            return too_big(format!(
                "{} elements (at most {MAX_ELEMENTS})",
                self.body.len()
            ));
        }
        if crate::text::printable(&self.title).trim().is_empty() {
            return bad("the title shows nothing".into());
        }
        if self
            .text
            .as_ref()
            .is_some_and(|t| t.plain().trim().is_empty())
        {
            return bad("the fallback text shows nothing".into());
        }
        let mut text = self.title.len();
        let mut ids: Vec<&str> = Vec::new();
        for e in &self.body {
            match e {
                Element::Text(t) => text += t.len(),
                Element::Facts(f) => {
                    if f.len() > MAX_ITEMS {
                        return too_big(format!(
                            "{} facts in a list (at most {MAX_ITEMS})",
                            f.len()
                        ));
                    }
                    text += f.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
                }
                Element::Image { url, alt } => {
                    if !url.starts_with("https://")
                        || url.chars().any(|c| c.is_whitespace() || c.is_control())
                    {
                        return bad(format!("image `{url}`: only https URLs"));
                    }
                    text += url.len() + alt.len();
                }
                Element::Input {
                    id,
                    label,
                    placeholder,
                } => {
                    ids.push(id);
                    text += label.len() + placeholder.len();
                }
                Element::Choice { id, label, choices } => {
                    if choices.len() > MAX_ITEMS {
                        return too_big(format!("{} choices (at most {MAX_ITEMS})", choices.len()));
                    }
                    ids.push(id);
                    text += label.len()
                        + choices
                            .iter()
                            .map(|(t, v)| t.len() + v.len())
                            .sum::<usize>();
                }
            }
        }
        if ids.len() > MAX_INPUTS {
            return too_big(format!("{} inputs (at most {MAX_INPUTS})", ids.len()));
        }
        for (i, id) in ids.iter().enumerate() {
            if !valid_id(id) {
                return bad(format!(
                    "input id `{id}`: 1 to 32 of a-z, 0-9 and _, not starting with _"
                ));
            }
            if ids[..i].contains(id) {
                return bad(format!("input id `{id}` used twice"));
            }
        }
        for b in &self.buttons {
            text += b.title.len() + b.command.len();
            if b.command.trim().is_empty() || b.command.chars().any(char::is_control) {
                return bad(format!(
                    "button `{}`: its command must be one line",
                    b.title
                ));
            }
        }
        if text > MAX_TEXT_BYTES {
            return too_big(format!("{text} bytes of text (at most {MAX_TEXT_BYTES})"));
        }
        Ok(())
    }

    /// The card as formatted text, for a service without cards: the title as its heading,
    /// facts as a list, an image as a link, inputs named, and the buttons' commands spelled
    /// out with the bot's `prefix`.
    pub fn fallback(&self, prefix: &str) -> Rich {
        if let Some(text) = &self.text {
            return text.clone();
        }
        let mut r = Rich::new().heading(self.title.as_str());
        for e in &self.body {
            r = match e {
                Element::Text(t) => r.para(t.as_str()),
                Element::Facts(f) => r.bullets(
                    f.iter()
                        .map(|(k, v)| Line::new().bold(format!("{k}:")).text(format!(" {v}"))),
                ),
                Element::Image { url, alt } => {
                    r.para(Line::new().link(if alt.is_empty() { "image" } else { alt }, url))
                }
                // The inputs are the command's arguments here; its usage says how.
                Element::Input { .. } | Element::Choice { .. } => r,
            };
        }
        if !self.buttons.is_empty() {
            let mut l = Line::new().text("reply ");
            for (i, b) in self.buttons.iter().enumerate() {
                if i > 0 {
                    l = l.text(if i + 1 == self.buttons.len() {
                        " or "
                    } else {
                        ", "
                    });
                }
                l = l
                    .code(format!("{prefix}{}", b.command))
                    .text(format!(" ({})", b.title));
            }
            r = r.para(l);
        }
        r
    }
}

/// Whether `id` may name an input: 1 to 32 of `a-z`, `0-9`, `_`, not starting with `_` (the
/// framework's own names in a submission start with one).
fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && !id.starts_with('_')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A card's submission, as a transport heard it: which card (the service's id of the
/// message that carries it), which button, and the inputs' values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submission {
    /// The id of the message that carries the card.
    pub card: String,
    /// Which of the card's buttons was pressed (by its place).
    pub button: usize,
    /// The inputs' values, by id (bounded by the transport).
    pub inputs: Vec<(String, String)>,
}

impl fmt::Display for Submission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "button {} of card {}", self.button, self.card)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rich::Style;

    fn approval() -> Card {
        Card::new("A3: restart web in prod")
            .text("WebDown on web-1 (severity page)")
            .facts([("rule", "restart-web"), ("expires", "in 15m")])
            .input("reason", "Reason", "why (for a denial)")
            .button("Approve", "approve A3")
            .button("Deny", "deny A3")
    }

    #[test]
    fn the_fallback_spells_out_the_commands() {
        assert_eq!(
            approval().fallback("!").render(Style::Plain),
            "A3: restart web in prod\n\
             WebDown on web-1 (severity page)\n\
             - rule: restart-web\n\
             - expires: in 15m\n\
             reply !approve A3 (Approve) or !deny A3 (Deny)"
        );
    }

    #[test]
    fn cards_are_checked_before_they_are_sent() {
        assert_eq!(approval().check(), Ok(()));
        let six = (0..6).fold(Card::new("x"), |c, i| c.button("b", format!("echo {i}")));
        assert!(matches!(six.check(), Err(CardError::TooBig(_))));
        let long = Card::new("x").text("y".repeat(MAX_TEXT_BYTES + 1));
        assert!(matches!(long.check(), Err(CardError::TooBig(_))));
        for id in ["", "Reason", "_button", "a b", &"x".repeat(33)] {
            let c = Card::new("x").input(id, "l", "p");
            assert!(matches!(c.check(), Err(CardError::Malformed(_))), "{id:?}");
        }
        let twice = Card::new("x").input("a", "l", "p").input("a", "l", "p");
        assert!(matches!(twice.check(), Err(CardError::Malformed(_))));
        let inject = Card::new("x").button("b", "echo hi\r\nQUIT");
        assert!(matches!(inject.check(), Err(CardError::Malformed(_))));
        for title in ["", " ", "\u{200b}\u{202e}"] {
            let blank = Card::new(title).button("b", "echo x");
            assert!(
                matches!(blank.check(), Err(CardError::Malformed(_))),
                "{title:?}"
            );
        }
        let empty = Card::new("x").fallback_text("\u{200b}");
        assert!(matches!(empty.check(), Err(CardError::Malformed(_))));
        let image = Card::new("x").image("javascript:alert(1)", "x");
        assert!(matches!(image.check(), Err(CardError::Malformed(_))));
    }
}

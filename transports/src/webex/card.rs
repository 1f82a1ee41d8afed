//! Cards on Webex: a [`Card`] as an Adaptive Card (schema 1.3, what Webex renders), and a
//! press of one of its buttons (an `attachmentActions` record) as a [`Submission`].

use opsbot::card::{Card, Element, MAX_BUTTONS, Submission};

use super::*;

/// The content type of an Adaptive Card attachment.
pub(super) const ADAPTIVE: &str = "application/vnd.microsoft.card.adaptive";

/// The submitted value that names the button pressed (card inputs' ids never start with `_`).
const BUTTON: &str = "_button";

/// The most inputs read from one submission, and the longest id and value kept.
const MAX_INPUTS: usize = 32;
const MAX_INPUT_ID: usize = 64;
const MAX_INPUT_VALUE: usize = 2000;

/// Text as an Adaptive Card's text shows it: its Markdown subset's characters escaped, so a
/// value from outside (an alert's label, a user's words) is shown as written.
fn text(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    for c in opsbot::text::printable(t).chars() {
        if matches!(
            c,
            '\\' | '*'
                | '_'
                | '['
                | ']'
                | '('
                | ')'
                | '#'
                | '-'
                | '+'
                | '.'
                | '!'
                | '>'
                | '`'
                | '~'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The attachment for `card`.
pub(super) fn attachment(card: &Card) -> Value {
    let mut body = vec![json!({
        "type": "TextBlock",
        "text": text(card.title()),
        "size": "Medium",
        "weight": "Bolder",
        "wrap": true,
    })];
    for e in card.elements() {
        body.push(match e {
            Element::Text(t) => json!({ "type": "TextBlock", "text": text(t), "wrap": true }),
            Element::Facts(f) => json!({
                "type": "FactSet",
                "facts": f.iter().map(|(k, v)| json!({ "title": text(k), "value": text(v) })).collect::<Vec<_>>(),
            }),
            Element::Image { url, alt } => json!({ "type": "Image", "url": url, "altText": opsbot::text::printable(alt) }),
            Element::Input { id, label, placeholder } => json!({
                "type": "Input.Text",
                "id": id,
                "label": opsbot::text::printable(label),
                "placeholder": opsbot::text::printable(placeholder),
                "maxLength": 500,
            }),
            Element::Choice { id, label, choices } => json!({
                "type": "Input.ChoiceSet",
                "id": id,
                "label": opsbot::text::printable(label),
                "style": "compact",
                "choices": choices.iter().map(|(t, v)| json!({ "title": opsbot::text::printable(t), "value": v })).collect::<Vec<_>>(),
            }),
            _ => continue,
        });
    }
    let actions: Vec<Value> = card
        .buttons()
        .iter()
        .enumerate()
        .map(|(i, b)| {
            json!({
                "type": "Action.Submit",
                "title": opsbot::text::printable(&b.title),
                "data": { BUTTON: i.to_string() },
            })
        })
        .collect();
    json!({
        "contentType": ADAPTIVE,
        "content": {
            "type": "AdaptiveCard",
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "version": "1.3",
            "body": body,
            "actions": actions,
        },
    })
}

/// An `attachmentActions` record, as `GET attachment/actions/{id}` answers it.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct RestAction {
    pub(super) id: String,
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) message_id: String,
    pub(super) person_id: String,
    pub(super) room_id: String,
    pub(super) created: String,
    pub(super) inputs: serde_json::Map<String, Value>,
}

/// The submission an action records, or why it is none: the button must be one a card can
/// have, and the inputs are bounded (extra ones are dropped, long values cut).
pub(super) fn submission(a: &RestAction) -> Result<Submission, &'static str> {
    if a.kind != "submit" {
        return Err("not a submission");
    }
    let button = a
        .inputs
        .get(BUTTON)
        .and_then(Value::as_str)
        .and_then(|b| b.parse::<usize>().ok())
        .filter(|b| *b < MAX_BUTTONS)
        .ok_or("no button named")?;
    let inputs = a
        .inputs
        .iter()
        .filter(|(k, _)| k.as_str() != BUTTON && k.len() <= MAX_INPUT_ID)
        .take(MAX_INPUTS)
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => String::new(),
            };
            let mut v = opsbot::text::printable(&v);
            if v.len() > MAX_INPUT_VALUE {
                let mut end = MAX_INPUT_VALUE;
                while !v.is_char_boundary(end) {
                    end -= 1;
                }
                v.truncate(end);
            }
            (k.clone(), v)
        })
        .collect();
    Ok(Submission {
        card: a.message_id.clone(),
        button,
        inputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_card_becomes_an_adaptive_card_with_text_shown_as_written() {
        let card = Card::new("A3: *restart* web")
            .text("[click](https://evil.example)")
            .facts([("rule", "restart_web")])
            .input("reason", "Reason", "why")
            .button("Approve", "approve A3");
        let a = attachment(&card);
        assert_eq!(a["contentType"], ADAPTIVE);
        let c = &a["content"];
        assert_eq!(c["version"], "1.3");
        assert_eq!(c["body"][0]["text"], "A3: \\*restart\\* web");
        assert_eq!(
            c["body"][1]["text"],
            "\\[click\\]\\(https://evil\\.example\\)"
        );
        assert_eq!(c["body"][2]["facts"][0]["value"], "restart\\_web");
        assert_eq!(c["body"][3]["id"], "reason");
        assert_eq!(c["actions"][0]["data"][BUTTON], "0");
    }

    #[test]
    fn the_biggest_card_that_passes_its_check_stays_small() {
        let mut card = Card::new("x");
        let each = opsbot::card::MAX_TEXT_BYTES / 40;
        for i in 0..20 {
            card = card.facts([(format!("k{i}"), "*".repeat(each))]);
        }
        for i in 0..MAX_BUTTONS {
            card = card.button("b", format!("c {i}"));
        }
        card.check().unwrap();
        let bytes = serde_json::to_vec(&attachment(&card)).unwrap().len();
        // Every character of the text escaped, and the card's own structure, under 32 KB.
        assert!(bytes < 32 * 1024, "{bytes}");
    }

    #[test]
    fn a_submission_names_a_button_and_bounded_inputs() {
        let mut a = RestAction {
            kind: "submit".into(),
            message_id: "M".into(),
            ..RestAction::default()
        };
        a.inputs.insert(BUTTON.into(), json!("1"));
        a.inputs
            .insert("reason".into(), json!("x\u{202e}y".repeat(2000)));
        a.inputs.insert("n".into(), json!(3));
        let s = submission(&a).unwrap();
        assert_eq!(s.button, 1);
        let reason = &s.inputs.iter().find(|(k, _)| k == "reason").unwrap().1;
        assert!(reason.len() <= MAX_INPUT_VALUE && !reason.contains('\u{202e}'));
        assert!(s.inputs.iter().any(|(k, v)| k == "n" && v == "3"));
        a.inputs.insert(BUTTON.into(), json!("9"));
        assert!(submission(&a).is_err());
        a.inputs.remove(BUTTON);
        assert!(submission(&a).is_err());
    }
}

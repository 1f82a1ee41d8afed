//! Admission: from a Mercury event to an [`Incoming`], or to nothing: events deduplicated,
//! the message fetched over REST, the sender and the space checked, the bot's name taken off.

use super::*;

/// How many message ids are remembered to run a redelivered event once.
pub(super) const SEEN: usize = 4096;

/// Longest text taken as a command; longer ones are skipped (and logged).
pub(super) const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// Webex bot accounts' email domain.
pub(super) const BOT_DOMAIN: &str = "@webex.bot";

#[derive(Debug, Default)]
pub(super) struct Seen {
    pub(super) order: VecDeque<String>,
    pub(super) set: HashSet<String>,
}

impl Seen {
    /// Remembers `id`; answers whether it is new.
    pub(super) fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() >= SEEN
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.order.push_back(id.to_owned());
        self.set.insert(id.to_owned());
        true
    }
}

/// The id REST uses for the message an event names: the unpadded base64 of its URI.
pub fn message_id(activity_id: &str) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD
        .encode(format!("ciscospark://us/MESSAGE/{activity_id}"))
}

/// The id REST uses for the `attachmentActions` record a `cardAction` event names.
pub(super) fn action_id(activity_id: &str) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD
        .encode(format!("ciscospark://us/ATTACHMENT_ACTION/{activity_id}"))
}

/// The UUID inside a REST id (`base64("ciscospark://us/PEOPLE/<uuid>")`), padded or not.
pub(super) fn uuid_of(id: &str) -> Option<String> {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let raw = engine.decode(id).ok()?;
    let uri = String::from_utf8(raw).ok()?;
    uri.rsplit('/').next().map(str::to_owned)
}

/// `text` without the bot's name at its start (its full display name, or the first word of
/// it, as a mention shows it), if it starts with one.
pub(super) fn strip_name<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let text = text.trim_start();
    let first = name.split_whitespace().next().unwrap_or("");
    for n in [name, first] {
        if n.is_empty() || text.len() < n.len() || !text.is_char_boundary(n.len()) {
            continue;
        }
        let (head, tail) = text.split_at(n.len());
        if head.to_lowercase() == n.to_lowercase()
            && (tail.is_empty() || tail.starts_with([' ', '\t', '\n', ':', ',', '\u{a0}']))
        {
            return Some(
                tail.trim_start_matches([':', ','])
                    .trim_start_matches(|c: char| c.is_whitespace()),
            );
        }
    }
    None
}

/// Markdown that shows `text` as written: `<` opens HTML and mentions (`<@all>`), so it is
/// escaped and nothing a user made the bot repeat can ping a room.
pub(super) fn markdown(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;")
}

/// A message as `GET messages/{id}` answers it.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct RestMessage {
    pub(super) id: String,
    pub(super) room_id: String,
    pub(super) room_type: String,
    pub(super) text: String,
    pub(super) person_id: String,
    pub(super) person_email: String,
    pub(super) created: String,
    pub(super) parent_id: Option<String>,
}

/// What one event asks of us.
pub(super) enum Event {
    /// A message to fetch, by REST id.
    Message(String),
    /// A card's button pressed: the `attachmentActions` record to fetch, by REST id.
    CardAction(String),
    /// Nothing (another kind of event, the bot's own message, unreadable).
    Nothing,
}

/// Reads one frame's event; `ack` is the envelope id to acknowledge.
pub(super) fn event_of(raw: &[u8], me: &Me) -> (Option<String>, Event) {
    let Ok(v) = serde_json::from_slice::<Value>(raw) else {
        return (None, Event::Nothing);
    };
    let ack = v.get("id").and_then(Value::as_str).map(str::to_owned);
    let data = v.get("data").unwrap_or(&Value::Null);
    if data.get("eventType").and_then(Value::as_str) != Some("conversation.activity") {
        return (ack, Event::Nothing);
    }
    let activity = data.get("activity").unwrap_or(&Value::Null);
    let verb = activity.get("verb").and_then(Value::as_str).unwrap_or("");
    if !matches!(verb, "post" | "share" | "cardAction") {
        return (ack, Event::Nothing);
    }
    let actor = activity.get("actor").unwrap_or(&Value::Null);
    let s = |k: &str| actor.get(k).and_then(Value::as_str).unwrap_or("");
    let actor_id = if s("entryUUID").is_empty() {
        s("id")
    } else {
        s("entryUUID")
    };
    if me.is(actor_id, s("emailAddress")) {
        return (ack, Event::Nothing);
    }
    match activity.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() && id.len() < 256 && verb == "cardAction" => {
            (ack, Event::CardAction(action_id(id)))
        }
        Some(id) if !id.is_empty() && id.len() < 256 => (ack, Event::Message(message_id(id))),
        _ => (ack, Event::Nothing),
    }
}

impl Webex {
    /// Whether the sender may use the bot.
    pub(super) fn approved(&self, email: &str, room: &str) -> bool {
        let c = &self.cfg;
        if c.approved_users.is_empty()
            && c.approved_domains.is_empty()
            && c.approved_rooms.is_empty()
        {
            return true;
        }
        let domain = email.rsplit_once('@').map_or("", |(_, d)| d);
        c.approved_users
            .iter()
            .any(|u| u.eq_ignore_ascii_case(email))
            || c.approved_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain))
            || (!room.is_empty() && c.approved_rooms.iter().any(|r| r == room))
    }

    /// Turns a fetched card action into a button press for the router, or says why not: the
    /// same checks as a message (seen once, after the bot started, not from a bot unless
    /// allowed, from an approved sender or room). `email` is the presser's, as Webex gives it
    /// for their `personId`; `card` the message that carries the card.
    pub(super) fn accept_action(
        &mut self,
        me: &Me,
        a: RestAction,
        email: String,
        card: RestMessage,
    ) -> Result<Incoming, &'static str> {
        if me.is(&a.person_id, &email) {
            return Err("own action");
        }
        if !self.seen.insert(&a.id) {
            self.stats.duplicates += 1;
            return Err("already handled");
        }
        let created = chrono::DateTime::parse_from_rfc3339(&a.created)
            .map(SystemTime::from)
            .map_err(|_| "no readable creation time")?;
        if created < self.started {
            self.stats.old += 1;
            return Err("pressed before the bot started");
        }
        if !me.is(&card.person_id, &card.person_email) {
            return Err("a card of someone else's");
        }
        if email.to_ascii_lowercase().ends_with(BOT_DOMAIN) && !self.cfg.allow_bots {
            return Err("from another bot");
        }
        if !self.approved(&email, &a.room_id) {
            self.stats.refused_senders += 1;
            tracing::warn!(
                kind = "webex",
                sender = %email,
                room = %a.room_id,
                "a sender who is not approved pressed a card's button"
            );
            return Err("not approved");
        }
        let submission = submission(&a)?;
        self.stats.received += 1;
        let sender = Sender::with_name(email.clone(), email);
        let mut incoming = if card.room_type == "direct" {
            Incoming::direct(sender, "")
        } else {
            let mut m = Incoming::in_room(a.room_id.clone(), sender, "");
            // The answer goes to the card's thread, or starts one under the card.
            m.thread = Some(card.parent_id.clone().unwrap_or(card.id).into());
            m
        };
        incoming.id = Some(a.id);
        incoming.submission = Some(submission);
        Ok(incoming)
    }

    /// Turns a fetched message into a command for the router, or says why not.
    pub(super) fn accept(&mut self, me: &Me, m: RestMessage) -> Result<Incoming, &'static str> {
        if me.is(&m.person_id, &m.person_email) {
            return Err("own message");
        }
        if !self.seen.insert(&m.id) {
            self.stats.duplicates += 1;
            return Err("already handled");
        }
        let created = chrono::DateTime::parse_from_rfc3339(&m.created)
            .map(SystemTime::from)
            .map_err(|_| "no readable creation time")?;
        if created < self.started {
            self.stats.old += 1;
            return Err("created before the bot started");
        }
        if m.person_email.to_ascii_lowercase().ends_with(BOT_DOMAIN) && !self.cfg.allow_bots {
            return Err("from another bot");
        }
        if !self.approved(&m.person_email, &m.room_id) {
            self.stats.refused_senders += 1;
            tracing::warn!(
                kind = "webex",
                sender = %m.person_email,
                room = %m.room_id,
                "a sender who is not approved tried the bot"
            );
            return Err("not approved");
        }
        if m.text.len() > MAX_COMMAND_BYTES {
            return Err("too long");
        }
        self.stats.received += 1;
        let sender = Sender::with_name(m.person_email.clone(), m.person_email.clone());
        let group = m.room_type != "direct";
        let (text, addressed) = match strip_name(&m.text, &me.name) {
            Some(rest) if group => (rest.to_owned(), true),
            _ => (m.text.trim().to_owned(), false),
        };
        let mut incoming = if group {
            Incoming::in_room(m.room_id.clone(), sender, text)
        } else {
            Incoming::direct(sender, text)
        };
        incoming.id = Some(m.id);
        incoming.addressed = addressed;
        if group {
            incoming.thread = m.parent_id.filter(|p| !p.is_empty()).map(Into::into);
        }
        Ok(incoming)
    }
}

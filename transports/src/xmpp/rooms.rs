//! Rooms (XEP-0045): joining with a nick and its fallbacks, the replayed history, removals and
//! refusals backed off per room, and the outbox's gate for rooms still being joined.

use super::*;

/// Where we stand with one room; a join carries the nick it asks for.
pub(super) type Room = Membership<InRoom, String>;

/// What we keep about a room we are in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct InRoom {
    /// Our nick there.
    pub(super) nick: String,
    /// The replayed history is over: messages can be commands.
    pub(super) live: bool,
    /// When we got in.
    pub(super) since: Instant,
}

/// What a room needs at a tick.
pub(super) enum Due {
    /// Send the join presence with this nick (and the wait after the refusal it retries).
    Join(String, Option<Duration>),
    /// The join went unanswered: a refusal.
    Unanswered,
    /// No subject came: the history is over.
    Live,
    /// Join again after a removal or a refusal.
    Rejoin(Option<Duration>),
}

/// The MUC status codes of a presence or message (`<x xmlns='…muc#user'><status code/>`).
pub(super) fn muc_codes(payloads: &[Element]) -> Vec<u16> {
    child(payloads, "x", ns::MUC_USER)
        .map(|x| {
            x.children()
                .filter(|c| c.is("status", ns::MUC_USER))
                .filter_map(|c| c.attr("code")?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The `<item/>` of a MUC presence.
pub(super) fn muc_item(payloads: &[Element]) -> Option<&Element> {
    child(payloads, "x", ns::MUC_USER)?.get_child("item", ns::MUC_USER)
}

/// The nick to try after `taken`: the configured one with `_`, then with `__`, then with a
/// number.
pub(super) fn fallback_nick(base: &str, taken: &str) -> String {
    if taken == base {
        format!("{base}_")
    } else if taken == format!("{base}_") {
        format!("{base}__")
    } else {
        format!("{base}{}", fastrand::u16(100..1000))
    }
}

impl Xmpp {
    pub(super) fn sync_gate(&self) {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        w.clear();
        for (room, state) in &self.rooms {
            if state.is_joining() {
                w.insert(room.to_string());
            }
        }
    }
}

impl Session<'_> {
    pub(super) async fn join(
        &mut self,
        room: BareJid,
        nick: String,
        refused: Option<Duration>,
    ) -> Result<(), TransportError> {
        let Ok(to) = room.with_resource_str(&nick) else {
            tracing::warn!(%room, %nick, "nick not usable in a JID");
            return Ok(());
        };
        let mut x = Element::builder("x", ns::MUC)
            .append(Element::builder("history", ns::MUC).attr(attr("maxstanzas"), "0"));
        if let Some(pw) = self.x.cfg.room_passwords.get(&room.to_string()) {
            x = x.append(Element::builder("password", ns::MUC).append(pw.expose()));
        }
        let presence = Presence::available()
            .with_to(to)
            .with_payloads(vec![x.build()]);
        self.x.rooms.insert(room, Room::sent(nick, refused));
        self.send_own(presence.into(), 200).await
    }

    pub(super) async fn on_presence(&mut self, p: Presence) -> Result<(), TransportError> {
        let Some(Ok(from)) = p.from.clone().map(Jid::try_into_full) else {
            return Ok(());
        };
        let room = from.to_bare();
        let Some(state) = self.x.rooms.get(&room).cloned() else {
            return Ok(());
        };
        let nick = from.resource().to_string();
        let codes = muc_codes(&p.payloads);
        let own = codes.contains(&110);
        match p.type_ {
            PresenceType::Error => {
                let Membership::Joining {
                    asked, retrying, ..
                } = state
                else {
                    return Ok(());
                };
                let cond = error_condition(&p.payloads);
                if cond == "conflict" {
                    let next = fallback_nick(&self.x.cfg.nick(), &asked);
                    self.link.heal_event(
                        "nick",
                        format!("{room}: nick {asked} is taken; joining as {next}"),
                    );
                    self.join(room, next, retrying).await?;
                } else {
                    self.refused(room, cond);
                }
            }
            PresenceType::None if own => {
                if codes.contains(&201) {
                    // We created the room; accept the default configuration so others can join.
                    let id = self.x.next_id();
                    let q = Element::builder("query", MUC_OWNER)
                        .append(
                            Element::builder("x", ns::DATA_FORMS)
                                .attr(attr("type"), "submit")
                                .build(),
                        )
                        .build();
                    let iq = Iq::Set {
                        from: None,
                        to: Some(Jid::from(room.clone())),
                        id,
                        payload: q,
                    };
                    self.send_own(iq.into(), 200).await?;
                }
                if state.is_joining() {
                    tracing::info!(%room, %nick, "joined");
                }
                let (live, since) = match state {
                    Membership::Joined(InRoom { live, since, .. }) => (live, since),
                    _ => (false, Instant::now()),
                };
                self.link.set_nick(&nick);
                self.x
                    .rooms
                    .insert(room, Membership::Joined(InRoom { nick, live, since }));
                self.publish();
            }
            PresenceType::Unavailable if own => {
                let item = muc_item(&p.payloads);
                if codes.contains(&303) {
                    // Our nick changed (by us or the service).
                    if let Some(new) = item.and_then(|i| i.attr("nick"))
                        && let Membership::Joined(InRoom { live, since, .. }) = state
                    {
                        self.x.rooms.insert(
                            room,
                            Membership::Joined(InRoom {
                                nick: new.to_owned(),
                                live,
                                since,
                            }),
                        );
                    }
                    return Ok(());
                }
                let destroyed = child(&p.payloads, "x", ns::MUC_USER)
                    .is_some_and(|x| x.get_child("destroy", ns::MUC_USER).is_some());
                let why = if destroyed {
                    "destroyed".to_owned()
                } else if codes.contains(&301) {
                    "banned".to_owned()
                } else if codes.contains(&307) {
                    "kicked".to_owned()
                } else if codes.contains(&321) || codes.contains(&322) {
                    "removed (members only)".to_owned()
                } else if codes.contains(&332) {
                    "closed (service shut down)".to_owned()
                } else {
                    "left".to_owned()
                };
                let reason = item
                    .and_then(|i| i.get_child("reason", ns::MUC_USER))
                    .map(Element::text)
                    .unwrap_or_default();
                if why == "banned" {
                    let reason = format!("banned {reason}").trim_end().to_owned();
                    self.refused(room, reason);
                    return Ok(());
                }
                let delay = self
                    .x
                    .removals
                    .delay(room.clone(), self.x.cfg.rejoin_delay());
                self.link.heal_event(
                    "removed",
                    format!(
                        "{room}: {why}{}; rejoining in {}s",
                        if reason.is_empty() {
                            String::new()
                        } else {
                            format!(" ({reason})")
                        },
                        delay.as_secs()
                    ),
                );
                if let Some(state) = self.x.rooms.get_mut(&room) {
                    state.remove(why, delay);
                }
                self.publish();
            }
            PresenceType::None => {
                if let Some(real) = muc_item(&p.payloads)
                    .and_then(|i| i.attr("jid"))
                    .and_then(|j| Jid::new(j).ok())
                {
                    self.occupants.insert(from, real.to_bare());
                }
            }
            PresenceType::Unavailable => {
                self.occupants.remove(&from);
            }
            _ => {}
        }
        Ok(())
    }

    /// The room refused the bot (or did not answer the join); a refusal of a join that
    /// retried one doubles the wait.
    pub(super) fn refused(&mut self, room: BareJid, reason: String) {
        let first = self.x.cfg.join_retry();
        let Some(state) = self.x.rooms.get_mut(&room) else {
            return;
        };
        let backoff = state.refuse(reason.clone(), first);
        self.link.heal_event(
            "refused",
            format!(
                "{room} refused the bot ({reason}); retrying in {}s",
                backoff.as_secs()
            ),
        );
        self.publish();
    }
}

//! Dispatch: each element from the server to what it means for the session (messages from
//! rooms and people, IQs answered or refused, stream-management requests and answers).

use super::*;

pub(super) fn body(m: &Message) -> Option<&String> {
    m.bodies
        .get(&Lang(String::new()))
        .or_else(|| m.bodies.values().next())
}

pub(super) fn set_iq_to(iq: &mut Iq, jid: Jid) {
    match iq {
        Iq::Get { to, .. } | Iq::Set { to, .. } | Iq::Result { to, .. } | Iq::Error { to, .. } => {
            *to = Some(jid);
        }
    }
}

impl Session<'_> {
    pub(super) fn on_message(&mut self, m: Message) {
        let Some(from) = m.from.clone() else { return };
        if matches!(m.type_, MessageType::Error | MessageType::Headline) {
            return;
        }
        let room = from.to_bare();
        if m.type_ == MessageType::Groupchat
            && !m.subjects.is_empty()
            && (from.resource().is_none() || body(&m).is_none())
            && let Some(Membership::Joined(InRoom { live, .. })) = self.x.rooms.get_mut(&room)
        {
            // The subject ends the history the room replays on join.
            *live = true;
            self.publish();
            return;
        }
        let Some(text) = body(&m) else { return };
        if m.payloads.iter().any(|p| {
            p.is("delay", ns::DELAY)
                || p.is("x", LEGACY_DELAY)
                || p.ns() == ns::CARBONS
                || p.is("forwarded", ns::FORWARD)
        }) {
            return;
        }
        if room == self.bare {
            // Our own account: a copy of something we sent, or a forgery.
            tracing::debug!(%from, "message from the bot's own account ignored");
            return;
        }
        if text.len() > MAX_COMMAND_BYTES {
            tracing::warn!(%from, bytes = text.len(), "message too long to be a command; ignored");
            return;
        }
        let id = m.id.as_ref().map(|i| i.0.clone());
        if id.as_ref().is_some_and(|i| self.x.own_ids.contains(i)) {
            return;
        }
        let incoming = match (
            m.type_.clone(),
            self.x.rooms.get(&room),
            from.clone().try_into_full(),
        ) {
            (
                MessageType::Groupchat,
                Some(Membership::Joined(InRoom { nick, live, .. })),
                Ok(occ),
            ) => {
                if !live || occ.resource().as_str() == nick {
                    return;
                }
                let name = occ.resource().to_string();
                Incoming::in_room(room.to_string(), self.occupant(&occ, name), text.clone())
            }
            (MessageType::Groupchat, _, _) => return,
            (_, Some(_), Ok(occ)) => {
                // A private message through a room: answered privately, through the room.
                let name = occ.to_string();
                Incoming::direct(self.occupant(&occ, name), text.clone())
            }
            (_, Some(_), Err(_)) => return,
            (_, None, _) => Incoming::direct(
                Sender::with_name(room.to_string(), from.to_string()),
                text.clone(),
            ),
        };
        let mut incoming = incoming;
        incoming.id = id;
        self.link.incoming(incoming);
    }

    /// Who an occupant of a room is: their real JID when the room shows it (verified), else
    /// their occupant address, which holds a nick anyone can choose (unverified: it never
    /// matches an admin entry). A room that hides real JIDs is logged once.
    pub(super) fn occupant(&mut self, occ: &FullJid, name: String) -> Sender {
        if let Some(real) = self.occupants.get(occ) {
            return Sender::with_name(real.to_string(), name);
        }
        let room = occ.to_bare();
        if self.x.anonymous_rooms.insert(room.clone()) {
            tracing::info!(
                %room,
                "the room hides its occupants' real JIDs: no one speaking there has admin rights \
                 (make the room non-anonymous, or the bot a moderator, to let admins act there)"
            );
        }
        Sender::unverified(occ.to_string(), name)
    }

    pub(super) async fn on_iq(&mut self, iq: Iq) -> Result<(), TransportError> {
        match iq {
            Iq::Get {
                from, id, payload, ..
            } => {
                if payload.is("ping", ns::PING) {
                    let result = Iq::Result {
                        from: None,
                        to: from,
                        id,
                        payload: None,
                    };
                    self.send_own(result.into(), 80).await?;
                } else {
                    self.refuse_iq(from, id).await?;
                }
            }
            Iq::Set { from, id, .. } => self.refuse_iq(from, id).await?,
            Iq::Result { id, .. } | Iq::Error { id, .. } => {
                if self.ping_sent.as_ref().is_some_and(|(p, _)| *p == id) {
                    self.ping_sent = None;
                }
            }
        }
        Ok(())
    }

    pub(super) async fn refuse_iq(
        &mut self,
        from: Option<Jid>,
        id: String,
    ) -> Result<(), TransportError> {
        let error = StanzaError::new(
            ErrorType::Cancel,
            DefinedCondition::ServiceUnavailable,
            "en",
            "not supported",
        );
        let iq = Iq::Error {
            from: None,
            to: from,
            id,
            error,
            payload: None,
        };
        self.send_own(iq.into(), 200).await
    }

    pub(super) async fn on_element(
        &mut self,
        el: FallibleStreamElement,
    ) -> Result<(), TransportError> {
        let el = match el {
            FallibleStreamElement::Ok(el) => el,
            FallibleStreamElement::Err(e) => {
                if matches!(e, StreamElementError::InvalidStanza { .. }) {
                    self.count_inbound();
                }
                tracing::warn!(error = %e, "unreadable element from the server skipped");
                return Ok(());
            }
        };
        match el {
            XmppStreamElement::Stanza(s) => {
                self.count_inbound();
                match s {
                    Stanza::Message(m) => self.on_message(m),
                    Stanza::Presence(p) => self.on_presence(p).await?,
                    Stanza::Iq(iq) => self.on_iq(iq).await?,
                }
            }
            XmppStreamElement::SM(sm::Nonza::Req(_)) => self.answer_later(),
            XmppStreamElement::SM(sm::Nonza::Ack(a)) => {
                self.on_ack(a.h);
                if !self.x.unacked.is_empty() {
                    self.request_ack().await?;
                } else {
                    // Answer with our own count (XEP-0198 allows an <a/> at any time): the
                    // server's <a/> otherwise waits for a delayed TCP acknowledgement, and a
                    // server that does not disable Nagle's algorithm (Prosody) then holds its
                    // next stanza to us until that comes, up to 40 ms on Linux.
                    self.answer().await?;
                }
            }
            XmppStreamElement::StreamError(e) => return Err(conn::stream_error(&e.0)),
            other => tracing::debug!(?other, "unexpected element ignored"),
        }
        Ok(())
    }
}

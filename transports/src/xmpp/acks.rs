//! Stream management (XEP-0198): counting stanzas both ways, acknowledgements that finish
//! deliveries, and resuming a stream after a cut (or starting afresh and returning what was
//! not acknowledged).

use super::*;

/// Stream management (XEP-0198) state, kept across connections for resumption.
#[derive(Debug, Default)]
pub(super) struct Sm {
    /// Resumption id, if the server allows resuming.
    pub(super) resume_id: Option<String>,
    /// Stanzas received in this managed stream (our `h`).
    pub(super) inbound: u32,
    /// Stanzas sent in this managed stream.
    pub(super) outbound: u32,
    /// The server's last `h`: how many of ours it has.
    pub(super) acked: u32,
    /// When our `<r/>` went out, while the server has not answered it.
    pub(super) requested: Option<Instant>,
}

/// How long a reply may wait for the server's count to be asked for, when fewer than half of
/// the window are unacknowledged.
const ACK_DELAY: Duration = Duration::from_millis(100);

/// A reply written but not yet acknowledged by the server.
#[derive(Debug)]
pub(super) struct Unacked {
    pub(super) delivery: Delivery,
    pub(super) stanza: Message,
    /// The value of `Sm::outbound` once it was sent.
    pub(super) seq: u32,
}

/// Whether an acknowledgement `h` covers the stanza numbered `seq` (both counted modulo 2^32).
pub(super) fn seq_covered(seq: u32, h: u32) -> bool {
    h.wrapping_sub(seq) < u32::MAX / 2
}

impl Session<'_> {
    /// Whether stream management is on for this connection.
    pub(super) fn sm_on(&self) -> bool {
        self.x.sm.is_some()
    }

    /// Asks the server how many of our stanzas it has; the answer must come within the ping
    /// timeout.
    pub(super) async fn request_ack(&mut self) -> Result<(), TransportError> {
        self.ack_due = None;
        self.link.pacing().charge_n(0, 30);
        self.send(XmppStreamElement::SM(sm::Nonza::Req(sm::R)))
            .await?;
        if let Some(sm) = self.x.sm.as_mut() {
            sm.requested.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    /// After a reply went out: asks for the server's count at once when half the window is
    /// unacknowledged, else within [`ACK_DELAY`]. Asking after every reply cost each one an
    /// `<r/>` and an `<a/>` through the server's single thread, and a round trip behind it;
    /// now a burst, or a quick exchange of commands and answers, shares one.
    pub(super) async fn ack_later(&mut self) -> Result<(), TransportError> {
        if self.x.sm.as_ref().is_none_or(|s| s.requested.is_some()) {
            // Off, or asked already: the answer asks again for what it does not cover.
            return Ok(());
        }
        if self.x.unacked.len() >= WINDOW / 2 {
            return self.request_ack().await;
        }
        self.ack_due
            .get_or_insert_with(|| Instant::now() + ACK_DELAY);
        Ok(())
    }

    /// The server asked how many of its stanzas we have: answers within [`ACK_DELAY`], with
    /// the count as it is then. A server asks again only once answered (Prosody asks after
    /// every stanza it sends while no question is open), so while a conversation is quick
    /// one answer covers many stanzas instead of one `<a/>` each.
    pub(super) fn answer_later(&mut self) {
        self.answer_due
            .get_or_insert_with(|| Instant::now() + ACK_DELAY);
    }

    /// Tells the server how many of its stanzas we have.
    pub(super) async fn answer(&mut self) -> Result<(), TransportError> {
        self.answer_due = None;
        let h = self.x.sm.as_ref().map_or(0, |s| s.inbound);
        self.link.pacing().charge_n(0, 40);
        self.stream
            .send(&XmppStreamElement::SM(sm::Nonza::Ack(sm::A { h })))
            .await?;
        Ok(())
    }

    /// Takes the server's `h`: a reply is delivered once it is covered.
    pub(super) fn on_ack(&mut self, h: u32) {
        let Some(sm) = self.x.sm.as_mut() else { return };
        sm.acked = h;
        sm.requested = None;
        self.finish_covered(h);
    }

    /// Finishes the replies the server's count `h` covers: it has them.
    fn finish_covered(&mut self, h: u32) {
        while self
            .x
            .unacked
            .front()
            .is_some_and(|u| seq_covered(u.seq, h))
        {
            if let Some(u) = self.x.unacked.pop_front() {
                u.delivery.done();
            }
        }
    }

    /// Binds a resource and enables stream management, or resumes the previous stream.
    /// Answers whether the stream was resumed (rooms and presence are then as they were).
    pub(super) async fn establish(
        &mut self,
        features: &tokio_xmpp::parsers::stream_features::StreamFeatures,
    ) -> Result<bool, TransportError> {
        let sm_offered = features.stream_management.is_some();
        // The id is taken out for the attempt: whatever goes wrong with it, the next
        // connection starts afresh instead of trying the same resumption again.
        let prev = self.x.sm.as_mut().and_then(|s| s.resume_id.take());
        if sm_offered && let Some(prev) = prev {
            let h = self.x.sm.as_ref().map_or(0, |s| s.inbound);
            self.stream
                .send(&XmppStreamElement::SM(sm::Nonza::Resume(sm::Resume {
                    h,
                    previd: sm::StreamId(prev.clone()),
                })))
                .await?;
            match conn::next(&mut self.stream).await? {
                XmppStreamElement::SM(sm::Nonza::Resumed(r)) => {
                    if let Some(sm) = self.x.sm.as_mut() {
                        sm.resume_id = Some(prev);
                    }
                    self.x.resumed += 1;
                    self.link
                        .heal_event("resumed", "stream resumed: rooms kept");
                    self.on_ack(r.h);
                    // What the server's count does not cover it never got: send it again on the
                    // resumed stream, in order, counting from the server's count.
                    if let Some(sm) = self.x.sm.as_mut() {
                        sm.outbound = r.h;
                    }
                    let lost: Vec<Unacked> = self.x.unacked.drain(..).collect();
                    let again = !lost.is_empty();
                    for u in lost {
                        self.send(XmppStreamElement::Stanza(u.stanza.clone().into()))
                            .await?;
                        let seq = self.x.sm.as_ref().map_or(0, |s| s.outbound);
                        self.x.resent += 1;
                        self.x.unacked.push_back(Unacked { seq, ..u });
                    }
                    if again {
                        self.request_ack().await?;
                    }
                    return Ok(true);
                }
                XmppStreamElement::SM(sm::Nonza::Failed(f)) => {
                    tracing::info!(?f.error, "stream resumption failed; starting afresh");
                    if let Some(h) = f.h {
                        self.finish_covered(h);
                    }
                }
                other => {
                    return Err(TransportError::Connection(format!(
                        "unexpected answer to resumption: {other:?}"
                    )));
                }
            }
        }
        self.x.sm = None;
        // Not known to have arrived: back to their places in the outbox's queues, to go out
        // once their rooms are joined again (with what was handed over after them, so that none
        // overtakes them). They may arrive twice; counted.
        self.link.return_pending();
        for u in self.x.unacked.drain(..) {
            self.x.resent += 1;
            drop(u.delivery);
        }
        let id = self.x.next_id();
        let resource = self.x.cfg.resource.clone();
        let bind = Iq::from_set(id.clone(), BindQuery::new(resource));
        self.stream
            .send(&XmppStreamElement::Stanza(bind.into()))
            .await?;
        loop {
            match conn::next(&mut self.stream).await? {
                XmppStreamElement::Stanza(Stanza::Iq(Iq::Result {
                    id: rid,
                    payload: Some(p),
                    ..
                })) if rid == id => {
                    let jid = p
                        .get_child("jid", ns::BIND)
                        .map(Element::text)
                        .and_then(|t| FullJid::new(&t).ok())
                        .ok_or_else(|| {
                            TransportError::Connection("the server bound no resource".into())
                        })?;
                    self.me = jid;
                    break;
                }
                XmppStreamElement::Stanza(Stanza::Iq(Iq::Error { id: rid, error, .. }))
                    if rid == id =>
                {
                    return Err(TransportError::Refused(format!(
                        "resource binding refused: {:?}",
                        error.defined_condition
                    )));
                }
                other => tracing::debug!(?other, "ignored while binding"),
            }
        }
        if sm_offered {
            self.stream
                .send(&XmppStreamElement::SM(sm::Nonza::Enable(sm::Enable {
                    max: None,
                    resume: true,
                })))
                .await?;
            loop {
                match conn::next(&mut self.stream).await? {
                    XmppStreamElement::SM(sm::Nonza::Enabled(e)) => {
                        self.x.sm = Some(Sm {
                            resume_id: e.resume.then_some(e.id).flatten().map(|i| i.0),
                            ..Sm::default()
                        });
                        break;
                    }
                    XmppStreamElement::SM(sm::Nonza::Failed(_)) => {
                        tracing::warn!("the server refused stream management");
                        break;
                    }
                    other => tracing::debug!(?other, "ignored while enabling acknowledgements"),
                }
            }
        }
        Ok(false)
    }

    pub(super) fn count_inbound(&mut self) {
        if let Some(sm) = self.x.sm.as_mut() {
            sm.inbound = sm.inbound.wrapping_add(1);
        }
    }
}

//! Channels: the state of each (joining, joined, kicked, refused), JOINs paced by the budget,
//! refusals backed off per channel, and the outbox's gate for channels still being joined.

use super::*;

/// Folds a nick or channel name as RFC 1459 does (the default CASEMAPPING): A-Z and `[]\~`
/// match a-z and `{}|^`. Servers echo a channel in the spelling it was created with, which need
/// not be the config's.
pub(super) fn fold(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '[' => '{',
            ']' => '}',
            '\\' => '|',
            '~' => '^',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Where we stand with one channel (nothing more to keep about a channel the bot is in).
pub(super) type Chan = Membership<()>;

impl Irc {
    /// The configured name of the channel the server calls `name`.
    pub(super) fn chan_key(&self, name: &str) -> Option<String> {
        let folded = fold(name);
        self.channels.keys().find(|k| fold(k) == folded).cloned()
    }

    /// Whether a JOIN to `name` is out and waiting for the server's answer (a first join, or
    /// the retry of a refused one).
    pub(super) fn awaiting_join(&self, name: &str) -> bool {
        self.chan_key(name)
            .and_then(|k| self.channels.get(&k))
            .is_some_and(Chan::awaiting)
    }

    /// Whether any JOIN of ours is waiting for an answer.
    pub(super) fn any_join_awaited(&self) -> bool {
        self.channels.values().any(Chan::awaiting)
    }
}

impl Session<'_> {
    /// Queues JOINs; they go out as the pacing budget allows (each costs InspIRCd two
    /// penalty points, so ten channels at once would be an Excess Flood on a strict server).
    pub(super) async fn join(&mut self, names: Vec<String>) -> Result<(), TransportError> {
        for name in names {
            if self.pending_joins.contains(&name) {
                continue;
            }
            // A retry carries the refusal's backoff, so that a second refusal doubles it.
            let retrying = self.irc.channels.get(&name).and_then(Chan::retrying);
            self.irc
                .channels
                .insert(name.clone(), Chan::due((), retrying));
            self.pending_joins.push_back(name);
        }
        self.sync_gate();
        self.flush_joins().await
    }

    /// Tells the outbox which channels are being joined: their lines wait until we are in.
    pub(super) fn sync_gate(&self) {
        let waiting: BTreeSet<String> = self
            .irc
            .channels
            .iter()
            .filter(|(_, c)| c.is_joining())
            .map(|(n, _)| fold(n))
            .collect();
        *self.irc.waiting.lock().unwrap_or_else(|p| p.into_inner()) = waiting;
    }

    /// Sends the queued JOINs the budget allows now; the tick sends the rest later.
    pub(super) async fn flush_joins(&mut self) -> Result<(), TransportError> {
        let mut sent = false;
        while let Some(name) = self.pending_joins.front() {
            let line = match self.irc.cfg.channel_keys.get(name) {
                Some(key) => format!("JOIN {name} :{}\r\n", key.expose()),
                None => format!("JOIN {name}\r\n"),
            };
            let cost = server_cost(&line, self.registered);
            if !self.link.pacing().try_take_n(cost, line.len()) {
                break;
            }
            let name = self.pending_joins.pop_front().expect("front exists");
            // The join timeout counts from the JOIN going out, not from its queueing.
            let retrying = self.irc.channels.get(&name).and_then(Chan::retrying);
            self.irc.channels.insert(name, Chan::sent((), retrying));
            self.note_sent(cost);
            self.writer.write_line(&line).await?;
            sent = true;
        }
        if sent {
            self.publish();
        }
        Ok(())
    }

    pub(super) fn on_refused(&mut self, name: &str, reason: &str) {
        let now = Instant::now();
        let Some(key) = self.irc.chan_key(name) else {
            return;
        };
        let chan = key.as_str();
        let first = self.irc.cfg.join_retry();
        let Some(state) = self.irc.channels.get_mut(chan) else {
            return;
        };
        let backoff = state.refuse(reason.to_owned(), first);
        self.last_refusal = Some(now);
        // State first, then the event: whoever sees the event also sees the state.
        self.publish();
        self.link.heal_event(
            "join refused",
            format!("{chan}: {reason}; retry in {}s", backoff.as_secs()),
        );
    }

    /// The bot was removed from channel `key` (kicked, or parted by force): it rejoins after
    /// the removal delay, which is answered; the state is published before any event.
    pub(super) fn removed(&mut self, key: String, why: String) -> Duration {
        let delay = self
            .irc
            .removals
            .delay(key.clone(), self.irc.cfg.rejoin_delay());
        if let Some(state) = self.irc.channels.get_mut(&key) {
            state.remove(why, delay);
        }
        self.publish();
        delay
    }

    /// Our own JOIN, echoed: the answer to a JOIN we sent, or a server forward.
    pub(super) async fn on_own_join(
        &mut self,
        msg: &Message,
        chan: &str,
        line: &str,
    ) -> Result<(), TransportError> {
        if let Some(key) = self.irc.chan_key(chan) {
            if !self.irc.awaiting_join(chan) {
                self.strays.note("JOIN we did not send", line);
                return Ok(());
            }
            if let Some(Prefix::Nickname(_, user, host)) = &msg.prefix
                && valid_host(user, 64)
                && valid_host(host, MAX_HOST)
            {
                let learnt =
                    self.user.as_deref() != Some(user) || self.host.as_deref() != Some(host);
                self.user = Some(user.clone());
                self.host = Some(host.clone());
                if learnt {
                    self.set_limits();
                }
            }
            self.irc.channels.insert(key, Chan::Joined(()));
            tracing::info!(channel = %chan, "joined");
            self.publish();
        } else if (self.irc.any_join_awaited()
            || self
                .last_refusal
                .is_some_and(|t| t.elapsed() < FORWARD_WINDOW))
            && self.is_channel(chan)
            && !self.parted.iter().any(|p| fold(p) == fold(chan))
        {
            // Not a channel of ours, right after a JOIN of ours: a server forward (+f, +L; the
            // server says 470 about our channel, then puts us in another).
            // Leave, rather than be where nobody configured the bot to be; replies to it are
            // undeliverable meanwhile.
            if self.parted.len() >= 16 {
                self.parted.pop_front();
            }
            self.parted.push_back(chan.to_owned());
            self.link
                .heal_event("part", format!("{chan} is not configured; leaving it"));
            let line = format!("PART {chan} :not configured here\r\n");
            self.send_raw(&line).await?;
        } else {
            self.strays
                .note("JOIN to a channel we did not ask for", line);
        }
        Ok(())
    }
}

//! Dispatch: each line from the server to what it means for the session (messages, joins,
//! kicks, numerics and their answers).

use super::*;

impl Session<'_> {
    /// Handles one line from the server; `Err` ends the session.
    ///
    /// Every command and numeric acts only in the state that expects it (registration numerics
    /// while registering, SASL replies while SASL runs, nick errors for a NICK we sent, join
    /// errors for a JOIN we sent, KICK/PART/NICK about us and our channels); anything else is
    /// logged (rate-limited) and ignored, and what a line may set (our nick, our host) is
    /// validated first. A hostile or broken server cannot steer the bot with stray lines.
    pub(super) async fn on_line(&mut self, line: &str) -> Result<(), TransportError> {
        let msg: Message = match line.parse() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, line = %truncate(line, 200), "unparsable line from server skipped");
                return Ok(());
            }
        };
        let from_nick = match &msg.prefix {
            Some(Prefix::Nickname(n, _, _)) => Some(n.as_str()),
            _ => None,
        };
        let from_me = from_nick.is_some_and(|n| fold(n) == fold(&self.nick));
        match &msg.command {
            Command::PING(a, b) => {
                let line = match b {
                    Some(b) => format!("PONG {a} :{b}\r\n"),
                    None => format!("PONG :{a}\r\n"),
                };
                if line.len() <= IRC_LINE && !line[..line.len() - 2].contains(['\r', '\n', '\0']) {
                    self.send_raw(&line).await?;
                } else {
                    self.strays.note("oversized PING", line.as_str());
                }
            }
            Command::PONG(..) => self.ping_sent = None,
            Command::ERROR(reason) => {
                // The server says goodbye and closes the link; the session ends when it does.
                // An ERROR that the server does not follow by closing was not its goodbye.
                let why = format!("server closed the link: {}", truncate(reason, 200));
                // A ban (K-line, G-line, Z-line, AKILL, DNSBL) will not lift in a minute.
                let lower = reason.to_ascii_lowercase();
                let banned = [
                    "k-line", "kline", "g-line", "gline", "z-line", "zline", "akill", "banned",
                ]
                .iter()
                .any(|w| lower.contains(w));
                let err = if banned {
                    TransportError::Refused(why)
                } else {
                    TransportError::Connection(why)
                };
                self.server_error = Some((err, Instant::now()));
            }
            Command::CAP(_, CapSubCommand::ACK, _, caps)
            | Command::CAP(_, CapSubCommand::ACK, caps, _)
                if caps
                    .as_deref()
                    .is_some_and(|c| c.split_whitespace().any(|c| c == "sasl")) =>
            {
                if self.sasl == Sasl::Requested {
                    self.sasl = Sasl::Authenticating;
                    self.send(Command::AUTHENTICATE("PLAIN".into())).await?;
                } else {
                    self.strays.note("CAP ACK not asked for", line);
                }
            }
            Command::CAP(_, CapSubCommand::NAK, ..) => {
                if self.sasl == Sasl::Requested {
                    self.no_sasl()?;
                    self.send(Command::CAP(None, CapSubCommand::END, None, None))
                        .await?;
                } else {
                    self.strays.note("CAP NAK not asked for", line);
                }
            }
            Command::AUTHENTICATE(arg) if arg == "+" => {
                if self.sasl == Sasl::Authenticating
                    && let Some(sasl) = &self.irc.cfg.sasl
                {
                    let raw = format!("{0}\0{0}\0{1}", sasl.user, sasl.password.expose());
                    let payload = base64::engine::general_purpose::STANDARD.encode(raw);
                    // Payloads over 400 bytes would need chunking; account names and passwords
                    // that long are refused by the config check instead.
                    let line = format!("AUTHENTICATE {payload}\r\n");
                    self.sasl = Sasl::Sent;
                    self.send_raw(&line).await?;
                } else {
                    self.strays.note("AUTHENTICATE outside SASL", line);
                }
            }
            Command::JOIN(chan, ..) if from_me => self.on_own_join(&msg, chan, line).await?,
            Command::KICK(chan, target, reason) if fold(target) == fold(&self.nick) => {
                let by = from_nick.unwrap_or("the server").to_owned();
                match self.irc.chan_key(chan) {
                    Some(key) if self.irc.channels.get(&key).is_some_and(Chan::is_joined) => {
                        let delay = self.removed(key, format!("kicked by {by}"));
                        let event = format!(
                            "from {chan} by {by} ({}); rejoining in {}s",
                            truncate(reason.as_deref().unwrap_or("no reason"), 200),
                            delay.as_secs()
                        );
                        self.link.heal_event("kicked", event);
                    }
                    _ => self.strays.note("KICK from a channel we are not in", line),
                }
            }
            Command::PART(chan, reason) if from_me => {
                // The bot never leaves a configured channel by itself: this PART was forced
                // (REMOVE, SAPART). Come back as after a kick.
                match self.irc.chan_key(chan) {
                    Some(key) if self.irc.channels.get(&key).is_some_and(Chan::is_joined) => {
                        let delay = self.removed(key, "parted by force".into());
                        self.link.heal_event(
                            "parted",
                            format!(
                                "from {chan} ({}); rejoining in {}s",
                                truncate(reason.as_deref().unwrap_or("no reason"), 200),
                                delay.as_secs()
                            ),
                        );
                    }
                    _ => self.strays.note("PART from a channel we are not in", line),
                }
            }
            Command::NICK(new) if from_me => {
                if !self.valid_nick(new) {
                    self.strays.note("NICK to an invalid nick", line);
                    return Ok(());
                }
                if self
                    .nick_sent
                    .as_ref()
                    .is_some_and(|(n, _)| fold(n) == fold(new))
                {
                    self.nick_sent = None;
                }
                let event = format!("now {new} (was {})", self.nick);
                new.clone_into(&mut self.nick);
                self.link.set_nick(new);
                // The relayed prefix changed length.
                self.set_limits();
                self.publish();
                self.link.heal_event("nick", event);
            }
            Command::PRIVMSG(target, text) if !from_me => self.on_privmsg(&msg, target, text),
            Command::Response(resp, args) => self.on_numeric(*resp as u16, args, line).await?,
            Command::Raw(cmd, args) if cmd.len() == 3 => {
                if let Ok(code) = cmd.parse::<u16>() {
                    self.on_numeric(code, args, line).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn on_privmsg(&mut self, msg: &Message, target: &str, text: &str) {
        let Some(Prefix::Nickname(nick, user, host)) = &msg.prefix else {
            return;
        };
        if nick.is_empty() || nick.chars().any(char::is_control) {
            return;
        }
        if text.starts_with('\u{1}') {
            // CTCP (VERSION, PING, ACTION, DCC ...): not for the bot.
            return;
        }
        let sender = Sender::with_name(format!("{nick}!{user}@{host}"), nick.as_str());
        let text = &strip_formatting(text);
        let incoming = if self.is_channel(target) {
            // Only from a channel we are in: anything else was not said to us.
            match self.irc.chan_key(target) {
                Some(k) if self.irc.channels.get(&k).is_some_and(Chan::is_joined) => {}
                _ => {
                    self.strays
                        .note("PRIVMSG to a channel we are not in", target);
                    return;
                }
            }
            Incoming::in_room(target, sender, text)
        } else if fold(target) == fold(&self.nick) {
            Incoming::direct(sender, text)
        } else {
            self.strays.note("PRIVMSG to someone else", target);
            return;
        };
        self.link.incoming(incoming);
    }

    pub(super) async fn on_numeric(
        &mut self,
        code: u16,
        args: &[String],
        line: &str,
    ) -> Result<(), TransportError> {
        let arg = |i: usize| args.get(i).map_or("", String::as_str);
        let last = truncate(args.last().map_or("", String::as_str), 200).to_owned();
        let last = last.as_str();
        match code {
            1 => {
                if self.registered {
                    self.strays.note("001 after registration", line);
                    return Ok(());
                }
                if self.sasl == Sasl::Requested {
                    // A server that ignored our CAP request registered us without SASL.
                    self.no_sasl()?;
                }
                // Our nick as the server says it, when it is one; else the one we sent.
                let me = if self.valid_nick(arg(0)) {
                    arg(0).to_owned()
                } else {
                    self.nick.clone()
                };
                self.nick_sent = None;
                self.on_welcome(&me).await?;
            }
            2 | 3 => {}
            4 => {
                if !self.in_registration() || self.myinfo_seen {
                    self.strays.note("004 outside registration", line);
                    return Ok(());
                }
                self.myinfo_seen = true;
                let version = arg(2);
                if self.irc.cfg.profile == ProfileChoice::Auto {
                    let profile = Profile::from_version(version);
                    if profile != self.irc.profile {
                        tracing::info!(
                            version = %truncate(version, 60),
                            profile = profile.name(),
                            "pacing profile from server version"
                        );
                    }
                    self.irc.profile = profile;
                }
                self.set_limits();
                self.publish();
            }
            5 => {
                if !self.in_registration() {
                    self.strays.note("005 outside registration", line);
                    return Ok(());
                }
                self.on_isupport(args);
            }
            376 | 422 => self.burst_done = true,
            // Any error about a channel we are joining is a refusal: banned (474), full (471),
            // invite-only (473), bad key (475), registered users only (477), forwarded (470),
            // reserved (479), join throttle (480), TLS only (489), opers only (520), rejoin
            // delay (495), ... The same numerics about a channel we are in (477 answers a
            // PRIVMSG to a +M channel on InspIRCd) are not about joining.
            400..=599 if self.irc.awaiting_join(arg(1)) => {
                let chan = arg(1).to_owned();
                self.on_refused(&chan, last);
            }
            431..=437 => {
                // Only an answer to a NICK we sent (its nick is the second argument).
                let ours = self
                    .nick_sent
                    .as_ref()
                    .is_some_and(|(n, at)| fold(n) == fold(arg(1)) && at.elapsed() < ANSWER_WINDOW);
                if ours {
                    self.nick_sent = None;
                    self.on_nick_taken(code, last).await?;
                } else {
                    self.strays
                        .note("nick error for a NICK we did not send", line);
                }
            }
            404 => {
                let chan = arg(1).to_owned();
                let ours = self
                    .irc
                    .chan_key(&chan)
                    .is_some_and(|k| self.irc.channels.get(&k).is_some_and(Chan::is_joined))
                    && self
                        .last_channel_send
                        .get(&fold(&chan))
                        .is_some_and(|t| t.elapsed() < SEND_ERROR_WINDOW);
                if !ours {
                    self.strays
                        .note("404 about a channel we did not write to", line);
                } else if let std::collections::btree_map::Entry::Vacant(e) =
                    self.muted.entry(fold(&chan))
                {
                    e.insert((Instant::now() + MUTE, 0));
                    self.publish();
                    self.link.heal_event(
                        "muted",
                        format!(
                            "{chan}: {last}; its lines are dropped for {}s",
                            MUTE.as_secs()
                        ),
                    );
                }
            }
            396 => {
                // RPL_HOSTHIDDEN: `<nick> <host> :is now your displayed host` (a cloak or vhost
                // set after identification). The server relays our lines with it from now on.
                let host = arg(1).rsplit('@').next().unwrap_or_default();
                if fold(arg(0)) != fold(&self.nick) || !valid_host(host, MAX_HOST) {
                    self.strays.note("396 not about us, or not a host", line);
                } else if self.host.as_deref() != Some(host) {
                    tracing::info!(host, "displayed host changed");
                    self.host = Some(host.to_owned());
                    self.set_limits();
                }
            }
            303 => {
                // RPL_ISON: the nicks that are online. Ours is free when it is not among them.
                if self.ison_sent.is_none_or(|t| t.elapsed() >= ANSWER_WINDOW) {
                    self.strays.note("303 without our ISON", line);
                    return Ok(());
                }
                self.ison_sent = None;
                let wanted = self.irc.cfg.nick.clone();
                let online = last.split_whitespace().any(|n| fold(n) == fold(&wanted));
                if self.registered && !online && fold(&self.nick) != fold(&wanted) {
                    self.send_nick(wanted).await?;
                }
            }
            464 | 465 => {
                if self.registered {
                    self.strays
                        .note("registration refusal after registration", line);
                } else {
                    return Err(TransportError::Refused(format!("{code}: {last}")));
                }
            }
            902 | 904 | 905 | 906 => {
                if matches!(self.sasl, Sasl::Authenticating | Sasl::Sent) {
                    return Err(TransportError::Refused(format!("{code}: {last}")));
                }
                self.strays.note("SASL failure outside SASL", line);
            }
            903 => {
                if self.sasl == Sasl::Sent {
                    self.sasl = Sasl::Done;
                    self.send(Command::CAP(None, CapSubCommand::END, None, None))
                        .await?;
                } else {
                    self.strays.note("SASL success outside SASL", line);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether `target` names a channel on this server (its CHANTYPES) that could be real.
    pub(super) fn is_channel(&self, target: &str) -> bool {
        target.starts_with(|c| self.chantypes.contains(c))
            && target.len() <= 200
            && !target
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == ',')
    }
}

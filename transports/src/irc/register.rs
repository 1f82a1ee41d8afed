//! Registration: NICK and USER, SASL PLAIN, nick fallback and regain, the server's 005.

use super::*;

/// Where SASL stands on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sasl {
    /// Not configured, or over.
    Done,
    /// `CAP REQ :sasl` sent.
    Requested,
    /// `AUTHENTICATE PLAIN` sent.
    Authenticating,
    /// The payload sent; waiting for 903 or a failure.
    Sent,
}

impl Irc {
    /// The nick for registration attempt `n`: the configured ones, then the nick with a number.
    pub(super) fn nick_for(&self, n: usize) -> String {
        match self.nicks.get(n) {
            Some(nick) => nick.clone(),
            None => {
                // Stay within the shortest common NICKLEN (9) where possible.
                let base: String = self.cfg.nick.chars().take(6).collect();
                format!("{base}{}", fastrand::u16(100..1000))
            }
        }
    }
}

impl Session<'_> {
    pub(super) async fn register(&mut self) -> Result<(), TransportError> {
        if let Some(pass) = &self.irc.cfg.password {
            let line = format!("PASS :{}\r\n", pass.expose());
            self.send_raw(&line).await?;
        }
        if self.irc.cfg.sasl.is_some() {
            self.sasl = Sasl::Requested;
            self.send(Command::CAP(
                None,
                CapSubCommand::REQ,
                None,
                Some("sasl".into()),
            ))
            .await?;
        }
        self.send_nick(self.nick.clone()).await?;
        let user = self
            .irc
            .cfg
            .username
            .clone()
            .unwrap_or_else(|| self.irc.cfg.nick.clone());
        let real = self
            .irc
            .cfg
            .realname
            .clone()
            .unwrap_or_else(|| "opsbot".into());
        self.send(Command::USER(user, "0".into(), real)).await
    }

    pub(super) async fn on_welcome(&mut self, me: &str) -> Result<(), TransportError> {
        self.registered = true;
        self.registered_at = Some(Instant::now());
        self.irc.nick_wait = None;
        me.clone_into(&mut self.nick);
        self.link.set_nick(&self.nick);
        tracing::info!(server = %self.server, nick = %self.nick, "registered");
        if let Some(line) = self.irc.cfg.nickserv_line() {
            self.send_raw(&line).await?;
        }
        let all: Vec<String> = self.irc.channels.keys().cloned().collect();
        self.link.connected(format!(
            "{}:{} as {}",
            self.server,
            self.irc.cfg.port(),
            self.nick
        ));
        self.join(all).await
    }

    pub(super) async fn on_nick_taken(
        &mut self,
        code: u16,
        why: &str,
    ) -> Result<(), TransportError> {
        if self.registered {
            // A regain attempt failed. Taken (433, 436, 437): keep the nick we have and try
            // again later. Refused outright (432: too long, or characters this server does
            // not allow): asking again would only cost an error reply each time.
            if code == 432 && !self.regain_refused {
                self.regain_refused = true;
                self.link.heal_event(
                    "nick",
                    format!(
                        "{} is refused by this server ({why}); keeping {} on this connection",
                        self.irc.cfg.nick, self.nick
                    ),
                );
            }
            return Ok(());
        }
        // 432: the server refuses the nick itself; no wait makes it take it.
        if self.nick_attempt == 0 && code != 432 && self.link.has_standbys() {
            let since = *self.irc.nick_wait.get_or_insert_with(Instant::now);
            if since.elapsed() < TAKEOVER_NICK_WAIT {
                if since.elapsed() < TAKEOVER_NICK_RETRY {
                    self.link.heal_event(
                        "nick",
                        format!(
                            "{} unavailable ({why}): perhaps held by this bot's previous holder, \
                             frozen or cut off; asking again until the server drops it",
                            self.nick
                        ),
                    );
                }
                // Unregistered meanwhile: the bot is not on the server twice.
                tokio::time::sleep(TAKEOVER_NICK_RETRY).await;
                return self.send_nick(self.nick.clone()).await;
            }
        }
        self.nick_attempt += 1;
        let next = self.irc.nick_for(self.nick_attempt);
        self.link.heal_event(
            "nick",
            format!("{} unavailable ({why}); trying {next}", self.nick),
        );
        self.nick = next.clone();
        self.send_nick(next).await
    }

    /// The server does not offer SASL although the config has credentials for it: a refusal
    /// (the bot would end up unidentified on the network), unless `sasl_optional` says to go
    /// on without it.
    pub(super) fn no_sasl(&mut self) -> Result<(), TransportError> {
        self.sasl = Sasl::Done;
        if self.irc.cfg.sasl_optional {
            tracing::warn!("the server does not offer SASL; going on without it (sasl_optional)");
            Ok(())
        } else {
            Err(TransportError::Refused(
                "the server does not offer SASL, and the config has SASL credentials: the bot \
                 would be unidentified (set sasl_optional = true to go on without it)"
                    .into(),
            ))
        }
    }

    /// Whether the rest of the registration burst may still come.
    pub(super) fn in_registration(&self) -> bool {
        self.registered
            && !self.burst_done
            && self
                .registered_at
                .is_some_and(|t| t.elapsed() < REGISTRATION_BURST)
    }

    /// Whether `n` can be a nick on this server (RFC 2812's characters, the server's NICKLEN).
    pub(super) fn valid_nick(&self, n: &str) -> bool {
        let special = |c: char| "[]\\`_^{|}".contains(c);
        let mut chars = n.chars();
        n.len() <= self.nicklen
            && chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || special(c))
            && chars.all(|c| c.is_ascii_alphanumeric() || special(c) || c == '-')
    }

    /// Sends NICK and remembers it, so that only an answer to it is taken as one.
    pub(super) async fn send_nick(&mut self, nick: String) -> Result<(), TransportError> {
        self.nick_sent = Some((nick.clone(), Instant::now()));
        self.send(Command::NICK(nick)).await
    }

    /// RPL_ISUPPORT (005): the limits the server sets on nicks and channel names.
    pub(super) fn on_isupport(&mut self, args: &[String]) {
        // `<nick> TOKEN=value ... :are supported by this server`
        for token in args.iter().skip(1).take(args.len().saturating_sub(2)) {
            if let Some(n) = token.strip_prefix("NICKLEN=") {
                if let Ok(n) = n.parse::<usize>()
                    && (1..=255).contains(&n)
                {
                    self.nicklen = n;
                }
            } else if let Some(t) = token.strip_prefix("CHANTYPES=")
                && !t.is_empty()
                && t.len() <= 8
                && t.chars().all(|c| c.is_ascii_punctuation())
            {
                t.clone_into(&mut self.chantypes);
            }
        }
    }
}

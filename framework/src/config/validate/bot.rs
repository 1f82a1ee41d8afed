//! One `[[bot]]` table, section by section: its name and prefix, who may run what, its
//! restart, budget, outbox and reconnect settings, its transport's kind, and its handlers' and
//! pollers' lists and tables.

use super::*;

impl Validator<'_> {
    pub(super) fn bot(&mut self, i: usize, b: RawBot, state_path: Option<PathBuf>) -> BotConfig {
        let k = format!("bot[{i}]");
        let mut o = BotOptions::default();
        if b.name.trim().is_empty() || b.name.chars().any(|c| c.is_control() || c == '/') {
            self.error(
                format!("{k}.name"),
                "a bot needs a name without `/` or control characters",
                None,
            );
        }
        if let Some(prefix) = b.prefix.and_then(|p| self.prefix(&k, p)) {
            o.prefix = prefix;
        }
        o.admins = b.admins;
        o.access = self.access(&k, b.access, &o.prefix);
        o.handler_timeout = self.secs(
            format!("{k}.handler_timeout_secs"),
            b.handler_timeout_secs,
            o.handler_timeout,
        );
        o.shutdown_deadline = self.secs(
            format!("{k}.shutdown_deadline_secs"),
            b.shutdown_deadline_secs,
            o.shutdown_deadline,
        );
        o.state_path = state_path;
        o.restart = self.restart(&k, b.supervisor);
        o.budget = self.budget(&k, b.budget);
        o.outbox = self.outbox(&k, b.outbox);
        o.reconnect = self.reconnect(&k, b.reconnect);

        if b.transport.is_none() {
            self.error(
                k.clone(),
                format!("bot `{}` has no [bot.transport]: which chat service is it on?", b.name),
                Some("add a [bot.transport] table with kind = \"console\" (this terminal), \"irc\", \"xmpp\" or \"webex\""),
            );
        }
        let mut settings = b.transport.unwrap_or_default();
        let kind = self.transport_kind(&k, &mut settings);
        let handlers = self.named(&k, "handler", b.handlers, &b.handler);
        let pollers = self.named(&k, "poller", b.pollers, &b.poller);
        BotConfig {
            name: b.name,
            options: o,
            handlers,
            handler_settings: b.handler,
            pollers,
            poller_settings: b.poller,
            transport: TransportConfig {
                kind,
                settings,
                key: format!("{k}.transport"),
            },
            key: k,
        }
    }

    fn prefix(&mut self, k: &str, prefix: String) -> Option<String> {
        if prefix.is_empty()
            || prefix
                .chars()
                .any(|c| c.is_whitespace() || !crate::text::is_printable(c))
            || prefix.chars().count() > 3
        {
            self.error(
                format!("{k}.prefix"),
                format!("`{prefix}` cannot be a command prefix"),
                Some("one to three non-space characters, such as `!` or `.`"),
            );
            return None;
        }
        Some(prefix)
    }

    /// `[bot.access]`, by command name without the prefix.
    fn access(
        &mut self,
        k: &str,
        raw: BTreeMap<String, RawAccess>,
        prefix: &str,
    ) -> BTreeMap<String, Access> {
        let mut out = BTreeMap::new();
        for (command, raw) in raw {
            let key = format!("{k}.access.{command}");
            let access = match raw {
                RawAccess::Word(w) if w == "everyone" => Access::Everyone,
                RawAccess::Word(w) if w == "admins" => Access::Admins,
                RawAccess::Word(w) => {
                    self.error(
                        key,
                        format!("`{w}` is not who may run it"),
                        Some("\"everyone\", \"admins\", or a list of identities like admins'"),
                    );
                    continue;
                }
                RawAccess::List(list) => Access::Only(list),
            };
            out.insert(command.trim_start_matches(prefix).to_owned(), access);
        }
        out
    }

    fn restart(&mut self, k: &str, s: RawSupervisor) -> RestartPolicy {
        let d = RestartPolicy::default();
        let restart = RestartPolicy {
            max_restarts: s.max_restarts.unwrap_or(d.max_restarts),
            window: self.secs(
                format!("{k}.supervisor.window_secs"),
                s.window_secs,
                d.window,
            ),
            backoff_initial: self.millis(
                format!("{k}.supervisor.backoff_initial_ms"),
                s.backoff_initial_ms,
                d.backoff_initial,
            ),
            backoff_max: self.millis(
                format!("{k}.supervisor.backoff_max_ms"),
                s.backoff_max_ms,
                d.backoff_max,
            ),
        };
        if restart.backoff_max < restart.backoff_initial {
            self.error(
                format!("{k}.supervisor.backoff_max_ms"),
                "is smaller than backoff_initial_ms",
                None,
            );
        }
        restart
    }

    fn budget(&mut self, k: &str, b: RawBudget) -> Budget {
        let d = Budget::default();
        Budget {
            per_minute: b.commands_per_minute.unwrap_or(d.per_minute),
            ignore_for: self.secs(
                format!("{k}.budget.ignore_secs"),
                b.ignore_secs,
                d.ignore_for,
            ),
        }
    }

    fn outbox(&mut self, k: &str, ob: RawOutbox) -> OutboxSettings {
        let d = OutboxSettings::default();
        if ob.max_line_bytes.is_some_and(|m| m < 16) {
            self.error(
                format!("{k}.outbox.max_line_bytes"),
                "must be at least 16",
                None,
            );
        }
        if ob.queue == Some(0) {
            self.error(format!("{k}.outbox.queue"), "must be at least 1", None);
        }
        OutboxSettings {
            max_line_bytes: ob.max_line_bytes,
            global: self.rate(&format!("{k}.outbox.rate"), ob.rate, ob.burst),
            global_bytes: self.rate(
                &format!("{k}.outbox.byte_rate"),
                ob.byte_rate,
                ob.byte_burst,
            ),
            per_destination: self.rate(
                &format!("{k}.outbox.dest_rate"),
                ob.dest_rate,
                ob.dest_burst,
            ),
            queue: ob.queue.unwrap_or(d.queue),
            loop_repeats: ob.loop_repeats.unwrap_or(d.loop_repeats),
            loop_window: self.secs(
                format!("{k}.outbox.loop_window_secs"),
                ob.loop_window_secs,
                d.loop_window,
            ),
        }
    }

    fn reconnect(&mut self, k: &str, r: RawReconnect) -> ReconnectPolicy {
        let d = ReconnectPolicy::default();
        ReconnectPolicy {
            initial: self.secs(
                format!("{k}.reconnect.initial_secs"),
                r.initial_secs,
                d.initial,
            ),
            max: self.secs(format!("{k}.reconnect.max_secs"), r.max_secs, d.max),
            stable_after: d.stable_after,
            refused_min: self.secs(
                format!("{k}.reconnect.refused_min_secs"),
                r.refused_min_secs,
                d.refused_min,
            ),
            critical_after: self.secs(
                format!("{k}.reconnect.critical_after_secs"),
                r.critical_after_secs,
                d.critical_after,
            ),
        }
    }

    /// The transport's `kind`, taken out of its table (none in an empty table: the console).
    fn transport_kind(&mut self, k: &str, settings: &mut toml::Table) -> String {
        match settings.remove("kind") {
            None if settings.is_empty() => "console".to_owned(),
            None => {
                self.error(
                    format!("{k}.transport.kind"),
                    "the transport has no `kind`".to_owned(),
                    Some("one of console, irc, xmpp, webex"),
                );
                "console".to_owned()
            }
            Some(toml::Value::String(s)) => s,
            Some(other) => {
                self.error(
                    format!("{k}.transport.kind"),
                    format!("expected a string, found {}", other.type_str()),
                    Some("one of console, irc, xmpp, webex"),
                );
                "console".to_owned()
            }
        }
    }

    /// The `handlers` or `pollers` list (`what` is `handler` or `poller`) without repeats, each
    /// repeat an error; and each entry of their settings table (`[bot.handler.NAME]`) a table.
    fn named(
        &mut self,
        k: &str,
        what: &str,
        list: Vec<String>,
        settings: &toml::Table,
    ) -> Vec<String> {
        let mut seen = HashSet::new();
        let names = list
            .into_iter()
            .filter(|name| {
                let fresh = seen.insert(name.clone());
                if !fresh {
                    self.error(
                        format!("{k}.{what}s"),
                        format!("{what} `{name}` is listed twice"),
                        None,
                    );
                }
                fresh
            })
            .collect();
        for (name, v) in settings {
            if !v.is_table() {
                self.error(
                    format!("{k}.{what}.{name}"),
                    format!(
                        "expected a table of the {what}'s settings, found {}",
                        v.type_str()
                    ),
                    Some(&format!(
                        "write [bot.{what}.{name}] with the settings under it"
                    )),
                );
            }
        }
        names
    }
}

//! `[bot.transport]` for `kind = "irc"`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use opsbot::config::Secret;
use opsbot::settings::SettingsError;
use serde::Deserialize;

use super::profile::Profile;
use crate::common::{
    CONNECT_TIMEOUT, JOIN_RETRY, JOIN_TIMEOUT, PING_INTERVAL, PING_TIMEOUT, REJOIN_DELAY, problem,
    timing_problems,
};

/// The IRC transport's settings, as written in the config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IrcConfig {
    /// Server host name or address.
    pub server: String,
    /// Port; 6697 with TLS, 6667 without, unless set.
    pub port: Option<u16>,
    /// Use TLS (rustls). On by default.
    #[serde(default = "yes")]
    pub tls: bool,
    /// With `tls = false` to a server that is not on this machine, send passwords (server,
    /// SASL, NickServ, channel keys) anyway: only for a network that is the operator's own.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// A PEM file of CA certificates to trust besides the system's (for a private CA).
    pub ca_file: Option<PathBuf>,
    /// The nick to use and to take back when a fallback had to be used.
    pub nick: String,
    /// Nicks to try when `nick` is taken; after them, `nick` with a number.
    #[serde(default)]
    pub alt_nicks: Vec<String>,
    /// User name (ident); defaults to the nick.
    pub username: Option<String>,
    /// Real name (GECOS); defaults to `opsbot`.
    pub realname: Option<String>,
    /// Server password (`PASS`).
    pub password: Option<Secret>,
    /// SASL PLAIN account.
    pub sasl: Option<SaslConfig>,
    /// With `sasl` set, go on without it when the server does not offer SASL (else that is a
    /// refusal: credentials configured and not used leave the bot unidentified).
    #[serde(default)]
    pub sasl_optional: bool,
    /// Identify to NickServ with this password after connecting.
    pub nickserv_password: Option<Secret>,
    /// The message to NickServ, with `{nick}` and `{password}` filled in. The default,
    /// `IDENTIFY {nick} {password}`, is what Atheme (Libera.Chat) and Anope take; OFTC's
    /// services want `IDENTIFY {password} {nick}`.
    pub nickserv_command: Option<String>,
    /// Channels to join.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Keys of channels that need one, by channel name.
    #[serde(default)]
    pub channel_keys: BTreeMap<String, Secret>,
    /// Pacing profile: `auto` (from the server's version reply), `conservative`, `ngircd`,
    /// `inspircd`.
    #[serde(default)]
    pub profile: ProfileChoice,
    /// How formatted replies are shown: `plain` (the default; nothing a channel mode could
    /// refuse or strip) or `irc` (mIRC bold, italics and monospace codes).
    #[serde(default)]
    pub formatting: Formatting,
    /// Seconds of silence from the server before the bot sends a PING.
    pub ping_interval_secs: Option<u64>,
    /// Seconds to wait for any reply to that PING before the connection is declared dead.
    pub ping_timeout_secs: Option<u64>,
    /// Seconds to wait before rejoining a channel the bot was kicked from.
    pub rejoin_delay_secs: Option<u64>,
    /// Seconds allowed for connecting and registering.
    pub connect_timeout_secs: Option<u64>,
    /// Seconds between attempts to take the configured nick back while using a fallback.
    pub nick_regain_secs: Option<u64>,
    /// Seconds a JOIN may go unanswered before the channel counts as refusing the bot.
    pub join_timeout_secs: Option<u64>,
    /// Seconds before retrying a channel that refused the bot (banned, full, invite-only);
    /// doubled for each further refusal, up to 30 minutes.
    pub join_retry_secs: Option<u64>,
}

fn yes() -> bool {
    true
}

/// SASL PLAIN credentials.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    /// Account name.
    pub user: String,
    /// Password (write `${ENV_VAR}`).
    pub password: Secret,
}

/// How formatted replies are shown on IRC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Formatting {
    /// Plain text: headings, lists, code blocks and tables laid out with characters only.
    #[default]
    Plain,
    /// mIRC codes for bold, italics and monospace, with a reset at the end of every line.
    Irc,
}

impl Formatting {
    /// The rendering style.
    pub fn style(self) -> opsbot::rich::Style {
        match self {
            Self::Plain => opsbot::rich::Style::Plain,
            Self::Irc => opsbot::rich::Style::Irc,
        }
    }
}

/// How the pacing profile is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileChoice {
    /// From the server's version in its 004 reply; conservative until then and for unknown
    /// servers.
    #[default]
    Auto,
    /// About one line a second with a burst of four.
    Conservative,
    /// ngircd's budget.
    Ngircd,
    /// InspIRCd's budget (also with `fakelag` off).
    Inspircd,
}

impl ProfileChoice {
    /// The fixed profile, if one was chosen.
    pub fn fixed(self) -> Option<Profile> {
        match self {
            Self::Auto => None,
            Self::Conservative => Some(Profile::Conservative),
            Self::Ngircd => Some(Profile::Ngircd),
            Self::Inspircd => Some(Profile::Inspircd),
        }
    }
}

impl IrcConfig {
    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.tls { 6697 } else { 6667 })
    }

    /// Silence before a PING.
    pub fn ping_interval(&self) -> Duration {
        PING_INTERVAL.of(self.ping_interval_secs)
    }

    /// Wait for a reply to the PING.
    pub fn ping_timeout(&self) -> Duration {
        PING_TIMEOUT.of(self.ping_timeout_secs)
    }

    /// Delay before rejoining after a kick.
    pub fn rejoin_delay(&self) -> Duration {
        REJOIN_DELAY.of(self.rejoin_delay_secs)
    }

    /// Time allowed to connect and register.
    pub fn connect_timeout(&self) -> Duration {
        CONNECT_TIMEOUT.of(self.connect_timeout_secs)
    }

    /// Time between attempts to take the nick back.
    pub fn nick_regain(&self) -> Duration {
        Duration::from_secs(self.nick_regain_secs.unwrap_or(30))
    }

    /// How long a JOIN may go unanswered.
    pub fn join_timeout(&self) -> Duration {
        JOIN_TIMEOUT.of(self.join_timeout_secs)
    }

    /// The first wait before retrying a channel that refused the bot.
    pub fn join_retry(&self) -> Duration {
        JOIN_RETRY.of(self.join_retry_secs)
    }

    /// The NickServ identification line (CRLF included), if a NickServ password is set.
    pub(crate) fn nickserv_line(&self) -> Option<String> {
        let password = self.nickserv_password.as_ref()?;
        let text = self
            .nickserv_command
            .as_deref()
            .unwrap_or("IDENTIFY {nick} {password}")
            .replace("{nick}", &self.nick)
            .replace("{password}", password.expose());
        Some(format!("PRIVMSG NickServ :{text}\r\n"))
    }

    /// Problems a parse cannot see, as (key, message).
    pub fn problems(&self) -> Vec<SettingsError> {
        let mut out = Vec::new();
        let bad_word =
            |s: &str| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control());
        if self.server.trim().is_empty() {
            out.push(problem("server".into(), "is empty".into()));
        }
        for (i, n) in std::iter::once(&self.nick)
            .chain(&self.alt_nicks)
            .enumerate()
        {
            let key = if i == 0 {
                "nick".to_owned()
            } else {
                format!("alt_nicks[{}]", i - 1)
            };
            if bad_word(n)
                || n.starts_with(['#', '&', ':', '!', '@'])
                || n.contains([',', '*', '?'])
            {
                out.push(problem(key, format!("`{n}` is not a valid nick")));
            }
        }
        if let Some(u) = &self.username
            && (bad_word(u) || u.contains('@'))
        {
            out.push(problem(
                "username".into(),
                format!("`{u}` is not a valid user name"),
            ));
        }
        if self
            .realname
            .as_deref()
            .is_some_and(|r| r.chars().any(char::is_control))
        {
            out.push(problem(
                "realname".into(),
                "contains control characters".into(),
            ));
        }
        for (i, c) in self.channels.iter().enumerate() {
            if bad_word(c) || !c.starts_with(['#', '&', '+', '!']) || c.contains(',') {
                out.push(problem(
                    format!("channels[{i}]"),
                    format!("`{c}` is not a channel name (they start with #, &, + or !)"),
                ));
            }
        }
        for name in self.channel_keys.keys() {
            if !self.channels.contains(name) {
                out.push(problem(
                    format!("channel_keys.{name}"),
                    "is not in `channels`".into(),
                ));
            }
        }
        out.extend(timing_problems(&[
            (PING_INTERVAL, self.ping_interval_secs),
            (PING_TIMEOUT, self.ping_timeout_secs),
            (CONNECT_TIMEOUT, self.connect_timeout_secs),
            (REJOIN_DELAY, self.rejoin_delay_secs),
            (JOIN_TIMEOUT, self.join_timeout_secs),
            (JOIN_RETRY, self.join_retry_secs),
        ]));
        out.extend(crate::common::secs_problems(&[(
            "nick_regain_secs",
            self.nick_regain_secs,
        )]));
        if let Some(cmd) = &self.nickserv_command
            && (!cmd.contains("{password}") || cmd.chars().any(char::is_control))
        {
            out.push(problem(
                "nickserv_command".into(),
                "must contain {password} and no control characters".into(),
            ));
        }
        // The payload (account, NUL, account, NUL, password) must encode to under 400
        // characters: exactly 400 would need a continuation message.
        if let Some(sasl) = &self.sasl
            && sasl.user.len() * 2 + sasl.password.expose().len() + 2 > 297
        {
            out.push(problem(
                "sasl".into(),
                "account and password are too long for one SASL message".into(),
            ));
        }
        let secrets = self.password.is_some()
            || self.sasl.is_some()
            || self.nickserv_password.is_some()
            || !self.channel_keys.is_empty();
        if !self.tls
            && secrets
            && !self.allow_plaintext
            && !crate::common::is_loopback(&self.server)
        {
            out.push(problem(
                "tls".into(),
                format!(
                    "is off, and the passwords would cross the network to {} in clear text: set \
                     tls = true (port 6697), or allow_plaintext = true if that network is yours",
                    self.server
                ),
            ));
        }
        out.extend(crate::common::ca_file_problem(self.ca_file.as_deref()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> IrcConfig {
        let text = format!("server = \"irc.example.org\"\nnick = \"opsbot\"\n{extra}");
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn nickserv_identification_follows_the_services_in_use() {
        let atheme = config("nickserv_password = \"pw\"\n");
        assert_eq!(
            atheme.nickserv_line().unwrap(),
            "PRIVMSG NickServ :IDENTIFY opsbot pw\r\n"
        );
        let oftc = config(
            "nickserv_password = \"pw\"\nnickserv_command = \"IDENTIFY {password} {nick}\"\n",
        );
        assert_eq!(
            oftc.nickserv_line().unwrap(),
            "PRIVMSG NickServ :IDENTIFY pw opsbot\r\n"
        );
        assert!(config("").nickserv_line().is_none());
        let bad = config("nickserv_command = \"IDENTIFY {nick}\"\n");
        assert!(
            bad.problems()
                .iter()
                .any(|p| p.key() == "nickserv_command" && p.message.contains("{password}"))
        );
    }

    #[test]
    fn a_sasl_payload_that_would_need_a_continuation_is_refused() {
        let fits = format!("[sasl]\nuser = \"u\"\npassword = \"{}\"\n", "p".repeat(293));
        assert!(config(&fits).problems().is_empty());
        let exact = format!("[sasl]\nuser = \"u\"\npassword = \"{}\"\n", "p".repeat(296));
        assert!(config(&exact).problems().iter().any(|p| p.key() == "sasl"));
    }
}

//! `[bot.transport]` for `kind = "xmpp"`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use opsbot::config::Secret;

use crate::common::{
    CONNECT_TIMEOUT, JOIN_RETRY, JOIN_TIMEOUT, PING_INTERVAL, PING_TIMEOUT, REJOIN_DELAY,
    is_loopback, problem, timing_problems,
};
use opsbot::settings::SettingsError;
use serde::Deserialize;
use tokio_xmpp::jid::{BareJid, ResourcePart};

/// Largest message text the config may ask for: Prosody's default stanza size limit
/// (`c2s_stanza_size_limit`, 256 KiB) less room for the stanza around the text and its escaping.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The XMPP transport's settings, as written in the config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XmppConfig {
    /// The bot's account, `name@domain`.
    pub jid: String,
    /// The account's password (write `${ENV_VAR}`).
    pub password: Secret,
    /// Host to connect to; without it, the JID's domain through DNS SRV
    /// (`_xmpp-client._tcp`, or `_xmpps-client._tcp` with `direct_tls`).
    pub server: Option<String>,
    /// Port; 5222 (5223 with `direct_tls`) unless set or found through SRV.
    pub port: Option<u16>,
    /// Encrypt the connection (STARTTLS, required when on). On by default; off only for a
    /// server on a loopback address.
    #[serde(default = "yes")]
    pub tls: bool,
    /// TLS from the first byte (XEP-0368) instead of STARTTLS.
    #[serde(default)]
    pub direct_tls: bool,
    /// A PEM file of CA certificates to trust besides the system's (for a private CA).
    pub ca_file: Option<PathBuf>,
    /// Resource to bind; the server picks one when unset.
    pub resource: Option<String>,
    /// Nick in rooms; the JID's name when unset.
    pub nick: Option<String>,
    /// Rooms to join, as room JIDs (`ops@conference.example.org`).
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Passwords of rooms that need one, by room JID.
    #[serde(default)]
    pub room_passwords: BTreeMap<String, Secret>,
    /// Longest text, in bytes, of one message the bot sends; longer replies are split.
    pub max_message_bytes: Option<usize>,
    /// Seconds of silence from the server before the bot pings it (XEP-0199).
    pub ping_interval_secs: Option<u64>,
    /// Seconds to wait for any answer to that ping before the connection is declared dead.
    pub ping_timeout_secs: Option<u64>,
    /// Seconds allowed for connecting, encrypting, authenticating and binding.
    pub connect_timeout_secs: Option<u64>,
    /// Seconds to wait before rejoining a room the bot was kicked from (doubled for each
    /// further removal within ten minutes, up to 30 minutes).
    pub rejoin_delay_secs: Option<u64>,
    /// Seconds a join may go unanswered before it counts as refused.
    pub join_timeout_secs: Option<u64>,
    /// Seconds before retrying a room that refused the bot; doubled for each further refusal,
    /// up to 30 minutes.
    pub join_retry_secs: Option<u64>,
}

fn yes() -> bool {
    true
}

/// Whether `host` names the local machine: a loopback address or `localhost`.
impl XmppConfig {
    /// The account's JID (checked by [`XmppConfig::problems`]).
    pub fn bare_jid(&self) -> BareJid {
        BareJid::new(&self.jid).expect("checked by problems()")
    }

    /// The host the connection goes to, when one is configured.
    pub fn host(&self) -> String {
        self.server
            .clone()
            .unwrap_or_else(|| self.bare_jid().domain().to_string())
    }

    /// The room nick.
    pub fn nick(&self) -> String {
        self.nick.clone().unwrap_or_else(|| {
            self.bare_jid()
                .node()
                .map_or_else(|| "opsbot".to_owned(), ToString::to_string)
        })
    }

    /// Longest text of one message.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes.unwrap_or(4096)
    }

    /// Silence before a ping.
    pub fn ping_interval(&self) -> Duration {
        PING_INTERVAL.of(self.ping_interval_secs)
    }

    /// Wait for an answer to the ping.
    pub fn ping_timeout(&self) -> Duration {
        PING_TIMEOUT.of(self.ping_timeout_secs)
    }

    /// Time allowed to connect and log in.
    pub fn connect_timeout(&self) -> Duration {
        CONNECT_TIMEOUT.of(self.connect_timeout_secs)
    }

    /// Delay before rejoining after a kick.
    pub fn rejoin_delay(&self) -> Duration {
        REJOIN_DELAY.of(self.rejoin_delay_secs)
    }

    /// Time a join may go unanswered.
    pub fn join_timeout(&self) -> Duration {
        JOIN_TIMEOUT.of(self.join_timeout_secs)
    }

    /// First wait after a refused join.
    pub fn join_retry(&self) -> Duration {
        JOIN_RETRY.of(self.join_retry_secs)
    }

    /// Everything wrong with the settings, as (key, message) pairs.
    pub fn problems(&self) -> Vec<SettingsError> {
        let mut out = Vec::new();
        match BareJid::new(&self.jid) {
            Err(e) => out.push(problem(
                "jid".into(),
                format!("`{}` is not a JID: {e}", self.jid),
            )),
            Ok(j) if j.node().is_none() => out.push(problem(
                "jid".into(),
                format!("`{}` has no account name (write name@domain)", self.jid),
            )),
            Ok(_) => {}
        }
        if self.password.expose().is_empty() {
            out.push(problem("password".into(), "is empty".into()));
        }
        if let Some(s) = &self.server
            && (s.trim().is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            out.push(problem(
                "server".into(),
                format!("`{s}` is not a host name"),
            ));
        }
        if self.port == Some(0) {
            out.push(problem("port".into(), "must be 1 to 65535".into()));
        }
        if !self.tls {
            let host = self
                .server
                .clone()
                .or_else(|| BareJid::new(&self.jid).ok().map(|j| j.domain().to_string()));
            if !host.as_deref().is_some_and(is_loopback) {
                out.push(problem(
                    "tls".into(),
                    "may be off only for a server on a loopback address (127.0.0.1, ::1, \
                     localhost): the password would cross the network in the clear"
                        .into(),
                ));
            }
            if self.direct_tls {
                out.push(problem("direct_tls".into(), "needs `tls = true`".into()));
            }
        }
        if let Some(r) = &self.resource
            && (r.chars().any(char::is_control) || ResourcePart::new(r).is_err())
        {
            out.push(problem(
                "resource".into(),
                format!("`{r}` is not a valid resource"),
            ));
        }
        if let Some(n) = &self.nick
            && (n.trim().is_empty()
                || n.chars().any(char::is_control)
                || ResourcePart::new(n).is_err())
        {
            out.push(problem(
                "nick".into(),
                format!("`{n}` is not a valid room nick"),
            ));
        }
        for (i, r) in self.rooms.iter().enumerate() {
            match BareJid::new(r) {
                Ok(j) if j.node().is_some() && j.to_string() == *r => {}
                _ => out.push(problem(
                    format!("rooms[{i}]"),
                    format!("`{r}` is not a room JID (write room@conference.example.org)"),
                )),
            }
        }
        for name in self.room_passwords.keys() {
            if !self.rooms.contains(name) {
                out.push(problem(
                    format!("room_passwords.{name}"),
                    "is not in `rooms`".into(),
                ));
            }
        }
        if let Some(m) = self.max_message_bytes
            && !(64..=MAX_MESSAGE_BYTES).contains(&m)
        {
            out.push(problem(
                "max_message_bytes".into(),
                format!("must be 64 to {MAX_MESSAGE_BYTES}"),
            ));
        }
        out.extend(timing_problems(&[
            (PING_INTERVAL, self.ping_interval_secs),
            (PING_TIMEOUT, self.ping_timeout_secs),
            (CONNECT_TIMEOUT, self.connect_timeout_secs),
            (REJOIN_DELAY, self.rejoin_delay_secs),
            (JOIN_TIMEOUT, self.join_timeout_secs),
            (JOIN_RETRY, self.join_retry_secs),
        ]));
        out.extend(crate::common::ca_file_problem(self.ca_file.as_deref()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> XmppConfig {
        let text = format!("jid = \"bot@example.org\"\npassword = \"pw\"\n{extra}");
        toml::from_str(&text).unwrap()
    }

    fn keys(cfg: &XmppConfig) -> Vec<String> {
        cfg.problems().iter().map(|p| p.key().to_owned()).collect()
    }

    #[test]
    fn plaintext_only_to_a_loopback_server() {
        assert_eq!(keys(&config("tls = false\n")), ["tls"]);
        assert_eq!(
            keys(&config("tls = false\nserver = \"xmpp.example.org\"\n")),
            ["tls"]
        );
        assert_eq!(
            keys(&config("tls = false\nserver = \"10.0.0.1\"\n")),
            ["tls"]
        );
        for host in ["127.0.0.1", "::1", "[::1]", "localhost", "127.8.9.10"] {
            let cfg = config(&format!("tls = false\nserver = \"{host}\"\n"));
            assert!(cfg.problems().is_empty(), "{host}: {:?}", cfg.problems());
        }
        assert!(config("").problems().is_empty());
    }

    #[test]
    fn jids_rooms_and_limits_are_checked() {
        let bad = config(
            "rooms = [\"ops@conference.example.org\", \"no-node.example.org\", \"a b@x\"]\n\
             room_passwords = { \"other@conference.example.org\" = \"x\" }\n\
             max_message_bytes = 10\nping_timeout_secs = 0\nnick = \"\"\n",
        );
        assert_eq!(
            keys(&bad),
            [
                "nick",
                "rooms[1]",
                "rooms[2]",
                "room_passwords.other@conference.example.org",
                "max_message_bytes",
                "ping_timeout_secs"
            ]
        );
        let mut no_node = config("");
        no_node.jid = "example.org".into();
        assert_eq!(keys(&no_node), ["jid"]);
        assert_eq!(config("").nick(), "bot");
    }
}

//! `[bot.transport]` for `kind = "matrix"`.

use std::path::PathBuf;
use std::time::Duration;

use opsbot::config::Secret;
use opsbot::settings::SettingsError;
use serde::Deserialize;

use crate::common::problem;

/// The Matrix transport's settings, as written in the config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixConfig {
    /// The homeserver's client API URL (`https://matrix.example.org`); `http` only on a
    /// loopback address.
    pub homeserver: String,
    /// The bot's user id (`@opsbot:example.org`).
    pub user: String,
    /// Its password (logs in once; the session is kept), or
    pub password: Option<Secret>,
    /// an access token of a session made elsewhere.
    pub access_token: Option<Secret>,
    /// The device's name, as the user's device list shows it.
    #[serde(default = "device_name")]
    pub device_name: String,
    /// Rooms to join and stay in: aliases (`#ops:example.org`) or ids (`!abc:example.org`,
    /// or `!abc` for rooms of version 12 and later).
    #[serde(default)]
    pub rooms: Vec<String>,
    /// The folder for the session and the SQLite state and crypto stores (default: the
    /// bot's state folder, `matrix-<user>` in it).
    pub store: Option<PathBuf>,
    /// Encrypts the stores on disk.
    pub store_passphrase: Secret,
    /// Seconds a sync waits on the server for news.
    pub sync_timeout_secs: Option<u64>,
    /// Who may invite the bot into a room or a direct chat: user ids (`@alice:example.org`),
    /// or a whole server (`*:example.org`). Invites to the configured `rooms` are always
    /// taken; any other is declined.
    #[serde(default)]
    pub invites_from: Vec<String>,
    /// Which devices get the keys to read what the bot says in encrypted rooms.
    #[serde(default)]
    pub share_keys: ShareKeys,
    /// The secret of the bot's recovery (secret storage and key backup): set up with it on
    /// the first start, and recovered from it on a new device (a new pod, a lost store), so
    /// the bot's device is cross-signed and reads its rooms' history with no human step.
    pub recovery_passphrase: Option<Secret>,
}

/// Which devices of the people in an encrypted room get the keys of the bot's messages.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ShareKeys {
    /// Every device that is not blacklisted, verified or not (what most clients do).
    #[default]
    All,
    /// Only devices their owner has cross-signed; a person without cross-signing reads
    /// nothing the bot says (MSC4153's recommendation).
    Signed,
    /// Only devices the bot trusts: verified interactively or by a trusted identity.
    Verified,
}

impl ShareKeys {
    /// Its name in the config.
    pub fn name(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Signed => "signed",
            Self::Verified => "verified",
        }
    }
}

fn device_name() -> String {
    "opsbot".into()
}

impl MatrixConfig {
    /// Whether `user` may invite the bot.
    pub fn may_invite(&self, user: &str) -> bool {
        let server = user.split_once(':').map_or("", |(_, s)| s);
        self.invites_from
            .iter()
            .any(|e| e == user || e.strip_prefix("*:") == Some(server))
    }

    /// How long one sync waits for news.
    pub fn sync_timeout(&self) -> Duration {
        Duration::from_secs(self.sync_timeout_secs.unwrap_or(30))
    }

    /// Everything wrong with the settings, each with its key.
    pub fn problems(&self) -> Vec<SettingsError> {
        let mut out = Vec::new();
        match url::Url::parse(self.homeserver.trim()) {
            Err(e) => out.push(problem(
                "homeserver".into(),
                format!(
                    "`{}` is not a URL ({e}); write https://host",
                    self.homeserver
                ),
            )),
            Ok(u) => {
                let loopback = match u.host() {
                    Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                    Some(url::Host::Domain(d)) => d == "localhost",
                    None => false,
                };
                if !u.username().is_empty() || u.password().is_some() {
                    out.push(problem("homeserver".into(), "has credentials in it".into()));
                } else if u.scheme() == "http" && !loopback {
                    out.push(problem(
                        "homeserver".into(),
                        "may use http only on a loopback address: the password and the token \
                         would cross the network in the clear"
                            .into(),
                    ));
                } else if !matches!(u.scheme(), "http" | "https") {
                    out.push(problem("homeserver".into(), "must be an https URL".into()));
                }
            }
        }
        let valid_user = self
            .user
            .strip_prefix('@')
            .and_then(|u| u.split_once(':'))
            .is_some_and(|(l, s)| !l.is_empty() && !s.is_empty())
            && !self
                .user
                .chars()
                .any(|c| c.is_whitespace() || c.is_control());
        if !valid_user {
            out.push(problem(
                "user".into(),
                format!(
                    "`{}` is not a Matrix user id (write @opsbot:example.org)",
                    self.user
                ),
            ));
        }
        match (&self.password, &self.access_token) {
            (Some(_), Some(_)) => out.push(problem(
                "password".into(),
                "give a password or an access_token, not both".into(),
            )),
            (None, None) => out.push(problem(
                "password".into(),
                "a password or an access_token is needed".into(),
            )),
            _ => {}
        }
        if self.store_passphrase.expose().trim().is_empty() {
            out.push(problem(
                "store_passphrase".into(),
                "is empty: it encrypts the bot's keys on disk".into(),
            ));
        }
        for (i, r) in self.rooms.iter().enumerate() {
            // ruma's own rules: an alias names its server; a room id may not (room version 12
            // ids are `!` and a hash).
            let ok = matrix_sdk::ruma::RoomOrAliasId::parse(r).is_ok()
                && !r.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                out.push(problem(
                    format!("rooms[{i}]"),
                    format!("`{r}` is not a room alias or id (write #ops:example.org)"),
                ));
            }
        }
        if self.device_name.trim().is_empty() || self.device_name.chars().any(char::is_control) {
            out.push(problem(
                "device_name".into(),
                "must be a name without control characters".into(),
            ));
        }
        for (i, u) in self.invites_from.iter().enumerate() {
            let ok = (u.starts_with('@') || u.starts_with("*:"))
                && u.split_once(':')
                    .is_some_and(|(l, s)| (l.len() > 1 || l == "*") && !s.is_empty())
                && !u.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                out.push(problem(
                    format!("invites_from[{i}]"),
                    format!("`{u}` is not a user id or `*:server` (write @alice:example.org)"),
                ));
            }
        }
        if let Some(p) = &self.recovery_passphrase
            && p.expose().trim().chars().count() < 12
        {
            out.push(problem(
                "recovery_passphrase".into(),
                "is shorter than 12 characters: it opens the bot's keys on the server".into(),
            ));
        }
        if let Some(t) = self.sync_timeout_secs
            && !(1..=300).contains(&t)
        {
            out.push(problem(
                "sync_timeout_secs".into(),
                "must be 1 to 300".into(),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> MatrixConfig {
        toml::from_str(&format!(
            "homeserver = \"https://m.example.org\"\nuser = \"@opsbot:example.org\"\n\
             password = \"p\"\nstore_passphrase = \"s\"\n{extra}"
        ))
        .unwrap()
    }

    fn keys(c: &MatrixConfig) -> Vec<String> {
        c.problems().into_iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn invites_from_takes_people_and_whole_servers_only() {
        let c = parse("invites_from = [\"@alice:example.org\", \"*:ops.example.org\"]");
        assert!(c.problems().is_empty(), "{:?}", keys(&c));
        assert!(c.may_invite("@alice:example.org"));
        assert!(c.may_invite("@bob:ops.example.org"));
        assert!(!c.may_invite("@bob:example.org"));
        assert!(!c.may_invite("@alice:example.org.evil"));
        assert!(!c.may_invite("@mallory:evil.example:ops.example.org"));
        let c = parse("invites_from = [\"alice\", \"*\", \"@a b:x\"]");
        let k = keys(&c);
        assert_eq!(k.len(), 3, "{k:?}");
        assert!(k[0].contains("invites_from[0]"), "{k:?}");
    }

    #[test]
    fn rooms_are_aliases_with_a_server_or_ids_with_or_without_one() {
        let c = parse(
            "rooms = [\"#ops:example.org\", \"!abc:example.org\", \
             \"!QBFPFKPYPliFu4FZr9UrE6LI0daJiIr2mrOU_iKsg4Q\"]",
        );
        assert!(c.problems().is_empty(), "{:?}", keys(&c));
        let c = parse("rooms = [\"#ops\", \"ops\", \"!a b:x\", \"\"]");
        let k = keys(&c);
        assert_eq!(k.len(), 4, "{k:?}");
        assert!(
            k[0].contains("rooms[0]") && k[3].contains("rooms[3]"),
            "{k:?}"
        );
    }

    #[test]
    fn a_short_recovery_passphrase_and_an_unknown_key_policy_are_named() {
        let c = parse("recovery_passphrase = \"short\"");
        let k = keys(&c);
        assert!(
            k.len() == 1 && k[0].contains("recovery_passphrase"),
            "{k:?}"
        );
        assert_eq!(
            parse("share_keys = \"signed\"").share_keys,
            ShareKeys::Signed
        );
        let e = toml::from_str::<MatrixConfig>(
            "homeserver = \"https://m\"\nuser = \"@o:m\"\npassword = \"p\"\n\
             store_passphrase = \"s\"\nshare_keys = \"some\"",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("share_keys") || e.to_string().contains("unknown variant"),
            "{e}"
        );
    }
}

//! `[bot.transport]` for `kind = "webex"`.

use std::time::Duration;

use opsbot::config::Secret;
use opsbot::fetch::Url;
use opsbot::settings::SettingsError;
use serde::Deserialize;

use crate::common::{
    CONNECT_TIMEOUT, PING_INTERVAL, PING_TIMEOUT, Timing, problem, timing_problems,
};

/// Webex's own defaults: the Mercury socket is pinged every 20 s, and setting up (people/me,
/// the catalog, the device, then the socket) may take a minute.
const WS_PING_INTERVAL: Timing = PING_INTERVAL.or(20);
const WS_PING_TIMEOUT: Timing = PING_TIMEOUT.or(20);
const WEBEX_CONNECT_TIMEOUT: Timing = CONNECT_TIMEOUT.or(60);

/// The most bytes Webex takes in one message's text or markdown.
pub const MAX_MESSAGE_BYTES: usize = 7439;

/// Webex's public REST API.
pub const REST_URL: &str = "https://webexapis.com/v1";
/// Webex's service catalog (U2C), which names the device registration service (WDM).
pub const U2C_URL: &str = "https://u2c.wbx2.com/u2c/api/v1";
/// The WDM service to use when the catalog cannot be read.
pub const WDM_URL: &str = "https://wdm-a.wbx2.com/wdm/api/v1";

/// The Webex transport's settings, as written in the config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebexConfig {
    /// The bot's access token (write `${ENV_VAR}`).
    pub token: Secret,
    /// The REST API's base URL.
    #[serde(default = "rest_url")]
    pub rest_url: String,
    /// The service catalog's base URL; an empty string skips the catalog and uses `wdm_url`.
    #[serde(default = "u2c_url")]
    pub u2c_url: String,
    /// The device registration service, when the catalog is skipped or cannot be read.
    #[serde(default = "wdm_url")]
    pub wdm_url: String,
    /// The name the bot's device is registered under, and found again by.
    #[serde(default = "device_name")]
    pub device_name: String,
    /// People (email addresses) who may use the bot; with the other two lists empty, everyone.
    #[serde(default)]
    pub approved_users: Vec<String>,
    /// Email domains whose people may use the bot.
    #[serde(default)]
    pub approved_domains: Vec<String>,
    /// Rooms (room ids) in which anyone may use the bot.
    #[serde(default)]
    pub approved_rooms: Vec<String>,
    /// Whether messages from other bots (`@webex.bot` accounts) may run commands.
    #[serde(default)]
    pub allow_bots: bool,
    /// Longest text, in bytes, of one message the bot sends; longer replies are split.
    pub max_message_bytes: Option<usize>,
    /// Seconds of silence on the WebSocket before the bot pings.
    pub ping_interval_secs: Option<u64>,
    /// Seconds to wait for any answer to that ping before the socket is declared dead.
    pub ping_timeout_secs: Option<u64>,
    /// Seconds allowed for registering the device and opening the socket.
    pub connect_timeout_secs: Option<u64>,
}

fn rest_url() -> String {
    REST_URL.into()
}

fn u2c_url() -> String {
    U2C_URL.into()
}

fn wdm_url() -> String {
    WDM_URL.into()
}

fn device_name() -> String {
    "opsbot".into()
}

impl WebexConfig {
    /// Problems with the values, by key.
    pub fn problems(&self) -> Vec<SettingsError> {
        let mut out = Vec::new();
        let token = self.token.expose();
        if token.trim().is_empty() {
            out.push(problem("token".into(), "is empty".into()));
        } else if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            out.push(problem(
                "token".into(),
                "contains spaces or control characters (write the token alone, without `Bearer`)"
                    .into(),
            ));
        }
        for (key, url, optional) in [
            ("rest_url", &self.rest_url, false),
            ("u2c_url", &self.u2c_url, true),
            ("wdm_url", &self.wdm_url, false),
        ] {
            if optional && url.is_empty() {
                continue;
            }
            if let Err(why) = token_url(url, "https", "http") {
                out.push(problem(key.into(), why));
            }
        }
        if self.device_name.trim().is_empty() || self.device_name.chars().any(char::is_control) {
            out.push(problem(
                "device_name".into(),
                "must be a name without control characters".into(),
            ));
        }
        for (i, u) in self.approved_users.iter().enumerate() {
            if !u.contains('@') || u.chars().any(|c| c.is_whitespace()) {
                out.push(problem(
                    format!("approved_users[{i}]"),
                    format!("`{u}` is not an email address"),
                ));
            }
        }
        for (i, d) in self.approved_domains.iter().enumerate() {
            if d.is_empty() || d.contains('@') || d.chars().any(|c| c.is_whitespace()) {
                out.push(problem(
                    format!("approved_domains[{i}]"),
                    format!("`{d}` is not a domain (write example.com, without `@`)"),
                ));
            }
        }
        match self.max_message_bytes {
            Some(n) if !(64..=MAX_MESSAGE_BYTES).contains(&n) => out.push(problem(
                "max_message_bytes".into(),
                format!("must be 64 to {MAX_MESSAGE_BYTES} (Webex's limit)"),
            )),
            _ => {}
        }
        out.extend(timing_problems(&[
            (WS_PING_INTERVAL, self.ping_interval_secs),
            (WS_PING_TIMEOUT, self.ping_timeout_secs),
            (WEBEX_CONNECT_TIMEOUT, self.connect_timeout_secs),
        ]));
        out
    }

    pub(crate) fn max_message_bytes(&self) -> usize {
        self.max_message_bytes.unwrap_or(MAX_MESSAGE_BYTES)
    }

    pub(crate) fn ping_interval(&self) -> Duration {
        WS_PING_INTERVAL.of(self.ping_interval_secs)
    }

    pub(crate) fn ping_timeout(&self) -> Duration {
        WS_PING_TIMEOUT.of(self.ping_timeout_secs)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        WEBEX_CONNECT_TIMEOUT.of(self.connect_timeout_secs)
    }

    /// The REST base without a trailing slash.
    pub(crate) fn rest(&self) -> &str {
        self.rest_url.trim_end_matches('/')
    }
}

/// Domains whose hosts Webex's own services live under: a URL a service hands the bot
/// (the catalog's device service, a device's WebSocket) must lead to one of them, or to the
/// host that handed it over, before the token goes there.
pub const WEBEX_DOMAINS: &[&str] = &["webex.com", "wbx2.com", "ciscospark.com", "webexapis.com"];

/// Whether the URL's host is this machine (`localhost`, or a loopback address).
fn loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Parses a URL the token will be sent to, with the parser that connects (so that the host
/// checked is the host connected: `http://evil.example\@127.0.0.1/` is evil.example), and
/// checks it: `secure` (https, wss) anywhere, `plain` (http, ws) only to this machine, and no
/// credentials in it.
pub(crate) fn token_url(url: &str, secure: &str, plain: &str) -> Result<Url, String> {
    let parsed = Url::parse(url.trim())
        .map_err(|e| format!("`{url}` is not a URL ({e}); write {secure}://host/path"))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{url}` names no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("`{url}` has credentials in it"));
    }
    let scheme = parsed.scheme();
    if scheme == secure || (scheme == plain && loopback_host(&parsed)) {
        Ok(parsed)
    } else if scheme == plain {
        Err(format!(
            "may use {plain} only for a server on a loopback address (this one is {}): the token \
             would cross the network in the clear",
            parsed.host_str().unwrap_or("?")
        ))
    } else {
        Err(format!("`{scheme}` is not {secure} or {plain}"))
    }
}

/// Checks a URL a Webex service handed the bot (`from`: the URL of the service that did)
/// before the token goes there: as [`token_url`], and on a Webex domain or the host of `from`
/// (a loopback host only when `from` is on one too).
pub(crate) fn served_url(url: &str, secure: &str, plain: &str, from: &Url) -> Result<Url, String> {
    let parsed = token_url(url, secure, plain)?;
    let host = parsed
        .host_str()
        .unwrap_or("")
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let same = from
        .host_str()
        .is_some_and(|h| h.eq_ignore_ascii_case(&host));
    let webex = matches!(parsed.host(), Some(url::Host::Domain(_)))
        && WEBEX_DOMAINS
            .iter()
            .any(|d| host == *d || host.ends_with(&format!(".{d}")));
    let local = loopback_host(&parsed) && loopback_host(from);
    if same || webex || local {
        Ok(parsed)
    } else {
        Err(format!(
            "{host} is neither a Webex host ({}) nor the service's own host",
            WEBEX_DOMAINS.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> WebexConfig {
        toml::from_str(&format!("token = \"abc\"\n{extra}")).unwrap()
    }

    #[test]
    fn defaults_point_at_webex_and_check_clean() {
        let c = cfg("");
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        assert_eq!(c.rest(), "https://webexapis.com/v1");
        assert_eq!(c.max_message_bytes(), 7439);
    }

    #[test]
    fn plain_http_only_on_loopback_and_bad_values_are_named() {
        let c = cfg(
            "rest_url = \"http://127.0.0.1:9/v1\"\nu2c_url = \"\"\nwdm_url = \"http://[::1]:8/wdm\"",
        );
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        let c = cfg(
            "rest_url = \"http://webexapis.com/v1\"\nwdm_url = \"ftp://x\"\n\
             approved_users = [\"bob\"]\napproved_domains = [\"@x.com\"]\n\
             max_message_bytes = 9000\nping_interval_secs = 0",
        );
        let keys: Vec<String> = c
            .problems()
            .into_iter()
            .map(|p| p.key().to_owned())
            .collect();
        assert_eq!(
            keys,
            [
                "rest_url",
                "wdm_url",
                "approved_users[0]",
                "approved_domains[0]",
                "max_message_bytes",
                "ping_interval_secs"
            ]
        );
        let c: WebexConfig = toml::from_str("token = \"Bearer abc\"").unwrap();
        assert_eq!(c.problems()[0].key(), "token");
    }

    /// `http://evil.example\@127.0.0.1/v1` passed the loopback rule (the old check read the
    /// host after the last `@`), and the token went to evil.example in clear text.
    #[test]
    fn the_host_checked_is_the_host_connected() {
        for bad in [
            "http://evil.example\\@127.0.0.1/v1",
            "http://evil.example%5C@127.0.0.1/v1",
            "http://user:pw@127.0.0.1/v1",
            "http://127.0.0.1.evil.example/v1",
            "http://localhost.evil.example/v1",
            "https://user@webexapis.com/v1",
        ] {
            assert!(
                token_url(bad, "https", "http").is_err(),
                "{bad} got through as {:?}",
                token_url(bad, "https", "http").map(|u| u.host_str().map(str::to_owned))
            );
        }
        for good in [
            "http://127.0.0.1:9/v1",
            "http://[::1]:8/wdm",
            "http://localhost:1/",
            "https://webexapis.com/v1",
        ] {
            assert!(token_url(good, "https", "http").is_ok(), "{good}");
        }
        let c = cfg("rest_url = \"http://evil.example\\\\@127.0.0.1/v1\"");
        assert_eq!(c.problems()[0].key(), "rest_url", "{:?}", c.problems());
    }

    #[test]
    fn urls_a_service_hands_over_stay_with_webex_or_that_service() {
        let wdm = Url::parse("https://wdm-a.wbx2.com/wdm/api/v1").unwrap();
        for ok in [
            "wss://mercury-connection-a.wbx2.com/v1/apps/wx2/registrations/x",
            "wss://wdm-a.wbx2.com/socket",
            "wss://x.webex.com/",
        ] {
            assert!(served_url(ok, "wss", "ws", &wdm).is_ok(), "{ok}");
        }
        for bad in [
            "ws://mercury-connection-a.wbx2.com/",
            "wss://attacker.example/",
            "wss://wbx2.com.attacker.example/",
            "wss://127.0.0.1/",
            "wss://10.0.0.1/",
            "ws://localhost./x",
        ] {
            assert!(served_url(bad, "wss", "ws", &wdm).is_err(), "{bad}");
        }
        let local = Url::parse("http://127.0.0.1:5/wdm").unwrap();
        assert!(served_url("ws://127.0.0.1:6/m", "wss", "ws", &local).is_ok());
        assert!(served_url("ws://localhost./m", "wss", "ws", &local).is_err());
    }
}

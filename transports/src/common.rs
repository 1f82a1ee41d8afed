//! What the transports share: checks of common settings, the TLS handshake of the transports
//! that open their own sockets, and the per-room backoff after removals and refusals.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use opsbot::settings::SettingsError;

/// The longest wait before rejoining a room that removed or refused the bot.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(30 * 60);
/// A removal this long after the previous one starts the rejoin delay afresh.
const REMOVALS_FORGOTTEN: Duration = Duration::from_secs(600);

/// A problem with the setting `key` of a transport's table (see [`SettingsError`]).
pub(crate) fn problem(key: String, message: String) -> SettingsError {
    SettingsError::at(key, message)
}

/// A timing setting of a transport's table, in whole seconds: its key and its default. The
/// transports that keep a connection and join rooms name them alike and share the defaults
/// below, so that one config reads the same on every service.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    pub(crate) key: &'static str,
    pub(crate) default: u64,
}

impl Timing {
    /// The setting's value: `v`, else the default.
    pub(crate) fn of(self, v: Option<u64>) -> Duration {
        Duration::from_secs(v.unwrap_or(self.default))
    }

    /// The same setting with another default.
    pub(crate) const fn or(self, default: u64) -> Self {
        Self { default, ..self }
    }
}

/// Silence on the connection before the transport pings.
pub(crate) const PING_INTERVAL: Timing = Timing {
    key: "ping_interval_secs",
    default: 60,
};
/// How long a ping may go unanswered before the connection counts as dead.
pub(crate) const PING_TIMEOUT: Timing = Timing {
    key: "ping_timeout_secs",
    default: 60,
};
/// Time allowed to connect and log in.
pub(crate) const CONNECT_TIMEOUT: Timing = Timing {
    key: "connect_timeout_secs",
    default: 30,
};
/// The first wait before rejoining a room that removed the bot (doubling, see [`Removals`]).
pub(crate) const REJOIN_DELAY: Timing = Timing {
    key: "rejoin_delay_secs",
    default: 10,
};
/// How long a join may go unanswered before it counts as refused.
pub(crate) const JOIN_TIMEOUT: Timing = Timing {
    key: "join_timeout_secs",
    default: 60,
};
/// The first wait before retrying a room that refused the bot (doubling, see
/// [`refusal_backoff`]).
pub(crate) const JOIN_RETRY: Timing = Timing {
    key: "join_retry_secs",
    default: 60,
};

/// Problems with the timings `values` (each with its setting): zero, or longer than the
/// runtime's timers.
pub(crate) fn timing_problems(values: &[(Timing, Option<u64>)]) -> Vec<SettingsError> {
    let keyed: Vec<(&str, Option<u64>)> = values.iter().map(|(t, v)| (t.key, *v)).collect();
    secs_problems(&keyed)
}

/// Problems with optional timings in whole seconds: zero, or longer than the runtime's timers.
pub(crate) fn secs_problems(values: &[(&str, Option<u64>)]) -> Vec<SettingsError> {
    let mut out = Vec::new();
    for (key, v) in values {
        if *v == Some(0) {
            out.push(problem((*key).into(), "must be at least 1".into()));
        } else if v.is_some_and(|s| s as f64 > opsbot::options::MAX_SECS) {
            out.push(problem(
                (*key).into(),
                "is longer than the runtime's timers allow (at most a year, 31536000)".into(),
            ));
        }
    }
    out
}

/// Whether `host` (a name or an address, IPv6 perhaps in brackets) is this machine.
pub(crate) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The problem with a `ca_file` setting, if it names no readable file.
pub(crate) fn ca_file_problem(ca: Option<&Path>) -> Option<SettingsError> {
    ca.filter(|ca| !ca.is_file()).map(|ca| {
        SettingsError::at(
            "ca_file",
            format!("{} is not a readable file", ca.display()),
        )
        .hint("a PEM file of the CA certificates to trust, readable by the bot")
    })
}

/// The wait before retrying a room that refused the bot: `first`, then double the previous
/// wait, up to [`RETRY_MAX`].
pub(crate) fn refusal_backoff(previous: Option<Duration>, first: Duration) -> Duration {
    previous.map_or(first, |b| (b * 2).min(RETRY_MAX))
}

/// Removals (kicks, forced parts, destroyed rooms) per room, for the rejoin delay.
#[derive(Debug)]
pub(crate) struct Removals<K: Ord>(BTreeMap<K, (u32, Instant)>);

impl<K: Ord> Default for Removals<K> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<K: Ord> Removals<K> {
    /// Notes a removal from `room` and answers how long to wait before rejoining: `base`,
    /// doubled for every removal within ten minutes of the one before, up to [`RETRY_MAX`], so
    /// that a room that keeps removing the bot is not rejoined every few seconds forever.
    pub(crate) fn delay(&mut self, room: K, base: Duration) -> Duration {
        let now = Instant::now();
        let entry = self.0.entry(room).or_insert((0, now));
        if now.duration_since(entry.1) > REMOVALS_FORGOTTEN {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        let doublings = entry.0.saturating_sub(1).min(16);
        (base * 2u32.pow(doublings)).min(RETRY_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_double_the_delay_and_refusals_double_the_backoff() {
        let mut r = Removals::default();
        let base = Duration::from_secs(10);
        assert_eq!(r.delay("a", base), base);
        assert_eq!(r.delay("a", base), base * 2);
        assert_eq!(r.delay("b", base), base);
        for _ in 0..20 {
            r.delay("a", base);
        }
        assert_eq!(r.delay("a", base), RETRY_MAX);
        let first = Duration::from_secs(60);
        assert_eq!(refusal_backoff(None, first), first);
        assert_eq!(refusal_backoff(Some(first), first), first * 2);
        assert_eq!(refusal_backoff(Some(RETRY_MAX), first), RETRY_MAX);
    }

    #[test]
    fn timings_must_be_positive_and_within_a_year() {
        let p = secs_problems(&[
            ("a", Some(0)),
            ("b", Some(1)),
            ("c", None),
            ("d", Some(u64::MAX)),
        ]);
        let keys: Vec<&str> = p.iter().map(SettingsError::key).collect();
        assert_eq!(keys, ["a", "d"]);
    }
}

/// How long a TLS handshake may take.
#[cfg(any(feature = "irc", feature = "xmpp"))]
pub(crate) const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Why a TLS connection could not be made.
#[cfg(any(feature = "irc", feature = "xmpp"))]
#[derive(Debug)]
pub(crate) enum TlsFailure {
    /// Before any byte was sent: no trusted CA, an unreadable CA file, a bad server name.
    Setup(std::io::Error),
    /// The handshake failed (a certificate for another name, a server that does not speak TLS).
    Handshake(std::io::Error),
    /// No answer within [`TLS_HANDSHAKE`].
    TimedOut,
}

/// Wraps `stream` in TLS to `server` (the name its certificate must carry), trusting the
/// system's CA certificates and those in `ca_file` (the framework's shared rustls settings).
#[cfg(any(feature = "irc", feature = "xmpp"))]
pub(crate) async fn tls_connect<S>(
    stream: S,
    server: &str,
    ca_file: Option<&Path>,
) -> Result<tokio_rustls::client::TlsStream<S>, TlsFailure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_rustls::rustls::pki_types::ServerName;
    let config = opsbot::tls::client_config(ca_file).map_err(TlsFailure::Setup)?;
    let name = ServerName::try_from(server.to_owned()).map_err(|e| {
        TlsFailure::Setup(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("server name {server}: {e}"),
        ))
    })?;
    let handshake =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, stream);
    match tokio::time::timeout(TLS_HANDSHAKE, handshake).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(TlsFailure::Handshake(e)),
        Err(_) => Err(TlsFailure::TimedOut),
    }
}

//! `!dns NAME [TYPE]` and `!rdns IP`: DNS lookups from chat, with `hickory-resolver`.
//!
//! Enable with `handlers = ["dns"]`; optional settings in `[bot.handler.dns]`:
//!
//! ```toml
//! [bot.handler.dns]
//! nameservers = ["9.9.9.9", "[2620:fe::fe]:53"]   # default: the system's (/etc/resolv.conf)
//! timeout_secs = 5                                # per attempt; two attempts
//! max_answers = 10                                # lines per answer, then "… and N more"
//! breaker = { failures = 5, window_secs = 60, open_secs = 60 }
//! ```
//!
//! Answers are one line per record. NXDOMAIN, no records of the type, SERVFAIL and a timeout
//! are each one clear line. The nameservers sit behind a circuit breaker (`dns`): when they
//! keep failing, lookups answer at once until it closes again.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RecordType;
use opsbot::prelude::*;
use opsbot::settings::{FromSettings, SettingsError};

/// `[bot.handler.dns]`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSettings {
    /// Nameservers (`ip` or `ip:port`, IPv6 in brackets with a port); the system's when empty.
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// Seconds per attempt (default 5).
    pub timeout_secs: Option<u64>,
    /// Lines per answer (default 10).
    pub max_answers: Option<usize>,
    /// The nameservers' circuit breaker (5 failures in 60 s open it for 60 s by default).
    pub breaker: Option<opsbot::settings::BreakerSettings>,
}

/// The record types `!dns` asks for.
const TYPES: &[(&str, RecordType)] = &[
    ("A", RecordType::A),
    ("AAAA", RecordType::AAAA),
    ("MX", RecordType::MX),
    ("TXT", RecordType::TXT),
    ("CNAME", RecordType::CNAME),
    ("NS", RecordType::NS),
    ("SOA", RecordType::SOA),
    ("SRV", RecordType::SRV),
    ("CAA", RecordType::CAA),
];

/// The DNS tools.
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    timeout: Duration,
    max_answers: usize,
    breaker: opsbot::breaker::BreakerPolicy,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns")
            .field("timeout", &self.timeout)
            .field("max_answers", &self.max_answers)
            .finish_non_exhaustive()
    }
}

fn nameserver(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}

impl FromSettings for Dns {
    type Settings = DnsSettings;

    fn from_settings(s: DnsSettings) -> Result<Self, SettingsError> {
        let timeout = Duration::from_secs(s.timeout_secs.unwrap_or(5));
        if !(1..=60).contains(&timeout.as_secs()) {
            return Err(SettingsError::at("timeout_secs", "must be 1 to 60"));
        }
        let breaker = opsbot::settings::BreakerSettings::resolve(s.breaker)?;
        let max_answers = s.max_answers.unwrap_or(10);
        if !(1..=50).contains(&max_answers) {
            return Err(SettingsError::at("max_answers", "must be 1 to 50"));
        }
        let provider = TokioRuntimeProvider::default();
        let mut builder = if s.nameservers.is_empty() {
            TokioResolver::builder(provider).map_err(|e| {
                SettingsError::at(
                    "nameservers",
                    format!(
                        "the system's resolver settings cannot be read ({e}); list nameservers"
                    ),
                )
            })?
        } else {
            let mut servers = Vec::new();
            for (i, n) in s.nameservers.iter().enumerate() {
                let addr = nameserver(n).ok_or_else(|| {
                    SettingsError::at(
                        format!("nameservers[{i}]"),
                        format!("`{n}` is not an address (write 9.9.9.9 or [2620:fe::fe]:53)"),
                    )
                })?;
                let conn = |mut c: ConnectionConfig| {
                    c.port = addr.port();
                    c
                };
                servers.push(NameServerConfig::new(
                    addr.ip(),
                    true,
                    vec![conn(ConnectionConfig::udp()), conn(ConnectionConfig::tcp())],
                ));
            }
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        let opts = builder.options_mut();
        opts.timeout = timeout;
        opts.attempts = 2;
        // Answers change; the bot is asked because someone wants today's.
        opts.cache_size = 0;
        let resolver = builder
            .build()
            .map_err(|e| SettingsError::new(format!("cannot build the resolver: {e}")))?;
        Ok(Self {
            resolver,
            timeout,
            max_answers,
            breaker,
        })
    }
}

impl Dns {
    /// The resolver, for other lookups with the same nameservers.
    pub(crate) fn resolver(&self) -> TokioResolver {
        self.resolver.clone()
    }

    /// The tools with the default settings (the system's nameservers).
    ///
    /// # Errors
    /// When the system's resolver settings cannot be read.
    pub fn system() -> Result<Self, SettingsError> {
        Self::from_settings(DnsSettings::default())
    }
}

/// A name a user typed, checked: letters, digits, `-`, `_`, `.`, at most 253 bytes.
fn checked_name(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*'))
        && !name.starts_with('.')
        && !name.contains("..");
    ok.then_some(name)
}

/// Why a lookup gave nothing, as one line.
fn explain(what: &str, name: &str, rtype: &str, e: &NetError, timeout: Duration) -> String {
    match e {
        e if e.is_nx_domain() => format!("{name}: no such name (NXDOMAIN)"),
        NetError::Dns(DnsError::NoRecordsFound(nr))
            if nr.response_code == ResponseCode::ServFail =>
        {
            format!("{name}: the nameserver failed (SERVFAIL)")
        }
        NetError::Dns(DnsError::NoRecordsFound(nr))
            if nr.response_code == ResponseCode::Refused =>
        {
            format!("{name}: the nameserver refused the query (REFUSED)")
        }
        NetError::Dns(DnsError::NoRecordsFound(_)) => format!("{name} has no {rtype} records"),
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => {
            format!("{name}: the nameserver failed (SERVFAIL)")
        }
        NetError::Dns(DnsError::ResponseCode(code)) => {
            format!("{name}: the nameserver answered {code}")
        }
        NetError::Timeout => format!(
            "{what} {name}: no answer from the nameservers within {}s",
            timeout.as_secs() * 2
        ),
        other => format!("{what} {name}: {other}"),
    }
}

/// Whether a failure says the nameservers are in trouble (for the breaker), not the name.
fn servers_failing(e: &NetError) -> bool {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(nr)) => nr.response_code == ResponseCode::ServFail,
        NetError::Dns(DnsError::ResponseCode(code)) => *code == ResponseCode::ServFail,
        NetError::Dns(_) => false,
        _ => true,
    }
}

impl Dns {
    fn lines(&self, mut lines: Vec<String>) -> String {
        let more = lines.len().saturating_sub(self.max_answers);
        lines.truncate(self.max_answers);
        if more > 0 {
            lines.push(format!("… and {more} more"));
        }
        lines.join("\n")
    }

    async fn dns(&self, cx: &Context, call: &Call) -> Result {
        call.expect_args(1, 2)?;
        let raw: String = call.arg(0)?;
        let Some(name) = checked_name(&raw) else {
            return Err(call.usage_error());
        };
        let rtype: Option<String> = call.opt_arg(1)?;
        let rtype = rtype.unwrap_or_else(|| "A".into()).to_ascii_uppercase();
        let Some(&(label, record_type)) = TYPES.iter().find(|(n, _)| *n == rtype) else {
            return Err(Error::user(format!(
                "unknown record type {}: use one of {}",
                rtype.chars().take(10).collect::<String>(),
                TYPES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(" ")
            )));
        };
        let breaker = cx.breaker_with("dns", self.breaker);
        let permit = breaker.check()?;
        let fqdn = if name.ends_with('.') {
            name.to_owned()
        } else {
            format!("{name}.")
        };
        let result = self.resolver.lookup(fqdn.as_str(), record_type).await;
        let lines = result.as_ref().map(|lookup| {
            lookup
                .answers()
                .iter()
                .map(|r| {
                    format!(
                        "{} {} {} (ttl {})",
                        r.name.to_ascii().trim_end_matches('.'),
                        r.record_type(),
                        r.data,
                        r.ttl
                    )
                })
                .collect()
        });
        cx.reply(self.answer(permit, lines, "!dns", name, label));
        Ok(())
    }

    /// The reply to a lookup: its lines, or why there are none; the breaker hears of the
    /// nameservers' health (a failing server counts, an answer such as NXDOMAIN does not).
    fn answer(
        &self,
        permit: opsbot::breaker::Permit,
        lines: Result<Vec<String>, &NetError>,
        what: &str,
        name: &str,
        label: &str,
    ) -> String {
        match lines {
            Ok(lines) => {
                permit.success();
                if lines.is_empty() {
                    format!("{name} has no {label} records")
                } else {
                    self.lines(lines)
                }
            }
            Err(e) => {
                if servers_failing(e) {
                    permit.failure(e);
                } else {
                    permit.success();
                }
                explain(what, name, label, e, self.timeout)
            }
        }
    }

    async fn rdns(&self, cx: &Context, call: &Call) -> Result {
        call.expect_args(1, 1)?;
        let raw: String = call.arg(0)?;
        let Ok(ip) = raw.parse::<IpAddr>() else {
            return Err(call.usage_error());
        };
        let breaker = cx.breaker_with("dns", self.breaker);
        let permit = breaker.check()?;
        let result = self.resolver.reverse_lookup(ip).await;
        let lines = result.as_ref().map(|lookup| {
            lookup
                .answers()
                .iter()
                .map(|r| format!("{ip} PTR {}", r.data))
                .collect()
        });
        cx.reply(self.answer(permit, lines, "!rdns", &ip.to_string(), "PTR"));
        Ok(())
    }
}

impl Handler for Dns {
    const NAME: &'static str = "dns";
    const COMMANDS: &'static [Command] = &[
        Command::new(
            "dns",
            "<name> [A|AAAA|MX|TXT|CNAME|NS|SOA|SRV|CAA]",
            "Look up a name's records (A by default).",
        ),
        Command::new("rdns", "<ip>", "Look up the names of an address (PTR)."),
    ];

    async fn command(&mut self, cx: &mut Context, call: Call) -> Result {
        match call.command().name {
            "dns" => self.dns(cx, &call).await,
            _ => self.rdns(cx, &call).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_nameservers_are_checked() {
        assert_eq!(checked_name("example.org"), Some("example.org"));
        assert_eq!(
            checked_name("_xmpp-client._tcp.example.org."),
            Some("_xmpp-client._tcp.example.org.")
        );
        for bad in [
            "",
            ".x",
            "a..b",
            "a b",
            "a\r\nb",
            "ex\u{e9}.org",
            &"a".repeat(254),
        ] {
            assert_eq!(checked_name(bad), None, "{bad}");
        }
        assert_eq!(nameserver("9.9.9.9"), Some("9.9.9.9:53".parse().unwrap()));
        assert_eq!(
            nameserver("[::1]:5353"),
            Some("[::1]:5353".parse().unwrap())
        );
        assert_eq!(nameserver("dns.example"), None);
    }
}

//! Fetching URLs that chat users chose, safely: the fetcher of link summaries and anything else
//! that follows a user's link.
//!
//! A user can paste `http://169.254.169.254/latest/meta-data/` as well as a news article, so
//! [`Fetcher`] refuses, before any connection is made:
//!
//! - schemes other than http and https, and URLs with credentials in them;
//! - any address that is loopback, private (RFC 1918), shared (CGNAT, 100.64/10), link-local
//!   (which holds the cloud metadata address 169.254.169.254), unique-local, unspecified,
//!   multicast, broadcast, reserved, benchmarking or documentation, IPv4 inside IPv6 (mapped,
//!   translated, NAT64's well-known prefix, 6to4) by the IPv4 it carries, and local-use NAT64
//!   (64:ff9b:1::/48) as a whole; whatever spelling the URL uses (`0x7f.1`,
//!   `2130706433` and `[::ffff:127.0.0.1]` are parsed to their address first), and whatever a
//!   name resolves to: the addresses the connection is made to are the ones the guard checked
//!   (it is the client's resolver);
//! - each redirect (at most three) is checked the same way.
//!
//! An allow-list (`allow`: host names, addresses or CIDR ranges) lets internal sites through.
//! The whole fetch has one time limit (5 s by default) that a server dripping a byte a second
//! cannot stretch, and the body is read incrementally up to a cap (1 MiB by default): what is
//! past the cap is never read.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use reqwest::Url;

use crate::http::HttpClient;

/// Looks a host name up; the default is the system's resolver.
pub type Lookup = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>
        + Send
        + Sync,
>;

/// Why an address may not be fetched, if it may not.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], bits: u32) -> bool {
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const RULES: &[([u8; 4], u32, &str)] = &[
        ([0, 0, 0, 0], 8, "an unspecified address"),
        ([10, 0, 0, 0], 8, "a private address"),
        ([100, 64, 0, 0], 10, "a shared (CGNAT) address"),
        ([127, 0, 0, 0], 8, "a loopback address"),
        (
            [169, 254, 0, 0],
            16,
            "a link-local address (cloud metadata lives there)",
        ),
        ([172, 16, 0, 0], 12, "a private address"),
        ([192, 0, 0, 0], 24, "an IETF protocol address"),
        ([192, 0, 2, 0], 24, "a documentation address"),
        ([192, 88, 99, 0], 24, "a 6to4 relay address"),
        ([192, 168, 0, 0], 16, "a private address"),
        ([198, 18, 0, 0], 15, "a benchmarking address"),
        ([198, 51, 100, 0], 24, "a documentation address"),
        ([203, 0, 113, 0], 24, "a documentation address"),
        ([224, 0, 0, 0], 4, "a multicast address"),
        ([240, 0, 0, 0], 4, "a reserved or broadcast address"),
    ];
    RULES
        .iter()
        .find(|(net, bits, _)| in_v4(ip, *net, *bits))
        .map(|(_, _, why)| *why)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    // IPv4 carried inside IPv6 is judged by the IPv4 address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    if s[0..6] == [0, 0, 0, 0, 0, 0] {
        return Some("an IPv4-compatible address");
    }
    // IPv4-translated (RFC 2765: ::ffff:0:a.b.c.d), by the IPv4 it carries.
    if s[0..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0 {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return forbidden_v4(v4);
    }
    if s[0] == 0x64 && s[1] == 0xff9b {
        // The well-known NAT64 prefix (64:ff9b::/96) carries an IPv4 address in its last 32
        // bits; the rest of 64:ff9b::/32 (the local-use 64:ff9b:1::/48 of RFC 8215, where
        // the IPv4 address sits wherever the network put it) is refused as a whole.
        if s[2..6] == [0, 0, 0, 0] {
            let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
            return forbidden_v4(v4);
        }
        return Some("a local-use NAT64 address");
    }
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return forbidden_v4(v4);
    }
    match s[0] {
        x if x & 0xfe00 == 0xfc00 => Some("a unique-local address"),
        x if x & 0xffc0 == 0xfe80 => Some("a link-local address"),
        x if x & 0xffc0 == 0xfec0 => Some("a site-local address"),
        x if x & 0xff00 == 0xff00 => Some("a multicast address"),
        0x2001 if s[1] == 0x0db8 => Some("a documentation address"),
        0x2001 if s[1] == 0 => Some("a Teredo address"),
        0x3fff if s[1] & 0xf000 == 0 => Some("a documentation address"),
        0x0100 if s[1..4] == [0, 0, 0] => Some("a discard address"),
        _ => None,
    }
}

/// One entry of an allow-list: a host name, an address, or a CIDR range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allow {
    /// A host name, compared without case.
    Host(String),
    /// A range of addresses (a single address is a /32 or /128).
    Net(IpAddr, u8),
}

impl std::str::FromStr for Allow {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some((ip, bits)) = s.split_once('/') {
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| format!("`{s}` is not a CIDR range"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits: u8 = bits
                .parse()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?;
            return Ok(Self::Net(ip, bits));
        }
        if let Ok(ip) = s
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(Self::Net(ip, if ip.is_ipv4() { 32 } else { 128 }));
        }
        if s.is_empty()
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            return Err(format!("`{s}` is not a host name, address or CIDR range"));
        }
        Ok(Self::Host(s.trim_end_matches('.').to_ascii_lowercase()))
    }
}

impl Allow {
    fn covers_ip(&self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Self::Net(IpAddr::V4(net), bits), IpAddr::V4(ip)) => {
                in_v4(ip, net.octets(), u32::from(*bits))
            }
            (Self::Net(IpAddr::V6(net), bits), IpAddr::V6(ip)) => {
                let mask = if *bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(*bits))
                };
                u128::from(ip) & mask == u128::from(*net) & mask
            }
            _ => false,
        }
    }

    fn covers_host(&self, host: &str) -> bool {
        matches!(self, Self::Host(h) if h.eq_ignore_ascii_case(host.trim_end_matches('.')))
    }
}

/// The guard's decisions, shared by the fetcher and its resolver.
struct Guard {
    allow: Vec<Allow>,
    lookup: Lookup,
    /// Every address the guard let through, for tests and audits.
    passed: Mutex<Vec<IpAddr>>,
}

impl Guard {
    fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        if self.allow.iter().any(|a| a.covers_ip(ip)) {
            return Ok(());
        }
        match forbidden(ip) {
            Some(why) => Err(format!("{ip} is {why}")),
            None => Ok(()),
        }
    }

    fn record(&self, ip: IpAddr) {
        let mut p = self.passed.lock().unwrap_or_else(|p| p.into_inner());
        if p.len() < 1024 {
            p.push(ip);
        }
    }
}

/// The client's resolver: the addresses it hands back are the only ones connected to.
struct GuardResolver(Arc<Guard>);

impl reqwest::dns::Resolve for GuardResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let allowed_host = guard.allow.iter().any(|a| a.covers_host(&host));
            let ips = (guard.lookup)(host.clone()).await?;
            let mut ok = Vec::new();
            let mut refused = Vec::new();
            for ip in ips {
                if allowed_host {
                    ok.push(ip);
                    continue;
                }
                match guard.check_ip(ip) {
                    Ok(()) => ok.push(ip),
                    Err(why) => refused.push(why),
                }
            }
            if ok.is_empty() {
                let why = refused
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "no address".into());
                return Err(Box::new(Refused(format!("{host} resolves to {why}")))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            for ip in &ok {
                guard.record(*ip);
            }
            let addrs: reqwest::dns::Addrs =
                Box::new(ok.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// A refusal by the guard.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Limits of one fetch.
#[derive(Clone, Debug)]
pub struct FetchSettings {
    /// Host names, addresses and ranges let through although internal.
    pub allow: Vec<Allow>,
    /// The whole fetch, redirects and body included.
    pub total: Duration,
    /// Bytes of body read at most.
    pub max_body: usize,
    /// Redirects followed at most.
    pub max_redirects: u32,
    /// The address connections are made from (`None`: the system's choice).
    pub local_address: Option<IpAddr>,
}

impl Default for FetchSettings {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            total: Duration::from_secs(5),
            max_body: 1 << 20,
            max_redirects: 3,
            local_address: None,
        }
    }
}

/// What a fetch got.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The URL that answered (after redirects).
    pub url: String,
    /// Its status.
    pub status: u16,
    /// Its `Content-Type`, lower-case, without parameters.
    pub content_type: String,
    /// The body, at most `max_body` bytes of it.
    pub body: Vec<u8>,
    /// Whether the body went on past `max_body`.
    pub truncated: bool,
}

/// Why a fetch gave nothing.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The guard refused the URL or an address it leads to.
    #[error("refused: {0}")]
    Refused(String),
    /// Past the time limit.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Anything else (connection refused, TLS, a bad redirect).
    #[error("{0}")]
    Failed(String),
}

/// Fetches URLs that users chose; see the [module documentation](self).
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    guard: Arc<Guard>,
    settings: FetchSettings,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn system_lookup() -> Lookup {
    Arc::new(|host: String| {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    })
}

impl Fetcher {
    /// A fetcher on the shared client's settings and TLS trust, with the system's resolver.
    pub fn new(http: &HttpClient, settings: FetchSettings) -> std::io::Result<Self> {
        Self::with_lookup(http, settings, system_lookup())
    }

    /// Like [`Fetcher::new`] with a resolver of one's own (configured nameservers).
    pub fn with_lookup(
        http: &HttpClient,
        settings: FetchSettings,
        lookup: Lookup,
    ) -> std::io::Result<Self> {
        let guard = Arc::new(Guard {
            allow: settings.allow.clone(),
            lookup,
            passed: Mutex::new(Vec::new()),
        });
        // Its own pool: the guard must be the client's resolver, and redirects are followed
        // here, one checked hop at a time.
        let c = http.config();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured((*http.tls()).clone())
            .dns_resolver(Arc::new(GuardResolver(guard.clone())))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(c.connect_timeout.min(settings.total))
            .pool_max_idle_per_host(4)
            .no_proxy()
            .local_address(settings.local_address)
            .user_agent(concat!(
                "opsbot/",
                env!("CARGO_PKG_VERSION"),
                " (link preview)"
            ))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Self {
            client,
            guard,
            settings,
        })
    }

    /// The addresses the guard let connections go to so far (for audits and tests).
    pub fn passed(&self) -> Vec<IpAddr> {
        self.guard
            .passed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Checks a URL before any connection: scheme, credentials, and an address written in it.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), FetchError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::Refused(format!(
                "{} URLs are not fetched",
                url.scheme()
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(FetchError::Refused(
                "URLs with credentials are not fetched".into(),
            ));
        }
        match url.host() {
            None => Err(FetchError::Refused("the URL has no host".into())),
            Some(url::Host::Ipv4(ip)) => self.check_literal(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_literal(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => Ok(()),
        }
    }

    fn check_literal(&self, ip: IpAddr) -> Result<(), FetchError> {
        self.guard.check_ip(ip).map_err(FetchError::Refused)?;
        self.guard.record(ip);
        Ok(())
    }

    /// Fetches `url` within the limits; see the [module documentation](self).
    pub async fn fetch(&self, url: &str) -> Result<Fetched, FetchError> {
        let total = self.settings.total;
        tokio::time::timeout(total, self.fetch_inner(url))
            .await
            .map_err(|_| FetchError::Timeout(total))?
    }

    async fn fetch_inner(&self, url: &str) -> Result<Fetched, FetchError> {
        let mut url =
            reqwest::Url::parse(url).map_err(|e| FetchError::Failed(format!("not a URL: {e}")))?;
        let mut hops = 0;
        loop {
            self.check_url(&url)?;
            let resp = self
                .client
                .get(url.clone())
                .header(
                    "Accept",
                    "text/html,application/xhtml+xml,application/json;q=0.9,*/*;q=0.5",
                )
                .send()
                .await
                .map_err(classify)?;
            let status = resp.status().as_u16();
            if (300..400).contains(&status)
                && let Some(loc) = resp.headers().get(reqwest::header::LOCATION)
            {
                hops += 1;
                if hops > self.settings.max_redirects {
                    return Err(FetchError::Failed(format!(
                        "more than {} redirects",
                        self.settings.max_redirects
                    )));
                }
                let loc = loc
                    .to_str()
                    .map_err(|_| FetchError::Failed("an unreadable redirect".into()))?;
                url = url
                    .join(loc)
                    .map_err(|e| FetchError::Failed(format!("a bad redirect: {e}")))?;
                continue;
            }
            let content_type = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let final_url = resp.url().to_string();
            let mut resp = resp;
            let mut body = Vec::new();
            let mut truncated = false;
            while let Some(chunk) = resp.chunk().await.map_err(classify)? {
                let room = self.settings.max_body - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    truncated = true;
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            return Ok(Fetched {
                url: final_url,
                status,
                content_type,
                body,
                truncated,
            });
        }
    }
}

/// Why a request failed, in words that never hold its URL (a pasted link may carry a token).
fn classify(e: reqwest::Error) -> FetchError {
    let e = e.without_url();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Refused>() {
            return FetchError::Refused(r.0.clone());
        }
        source = s.source();
    }
    if e.is_timeout() {
        return FetchError::Failed("timed out".into());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    FetchError::Failed(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_forbidden_in_every_family() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "100.100.100.200",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::a9fe:a9fe",
            "64:ff9b:1:7f00:1::",
            "::ffff:0:7f00:1",
            "::ffff:0:a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(forbidden(ip).is_some(), "{ip} should be forbidden");
        }
        for ip in [
            "93.184.215.14",
            "1.1.1.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(forbidden(ip), None, "{ip} should be allowed");
        }
    }

    #[test]
    fn allow_entries_parse_and_cover() {
        let a: Allow = "10.1.0.0/16".parse().unwrap();
        assert!(a.covers_ip("10.1.2.3".parse().unwrap()));
        assert!(!a.covers_ip("10.2.0.1".parse().unwrap()));
        let h: Allow = "Wiki.Corp.Example.".parse().unwrap();
        assert!(h.covers_host("wiki.corp.example"));
        let one: Allow = "[::1]".parse().unwrap();
        assert!(one.covers_ip("::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "x/8", "a b", ""] {
            assert!(bad.parse::<Allow>().is_err(), "{bad}");
        }
    }
}

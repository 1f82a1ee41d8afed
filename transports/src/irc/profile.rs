//! Pacing profiles: how fast a client may talk to a given IRC server without being throttled
//! into a ping timeout or quit for flooding.
//!
//! The outbox enforces them (lines and bytes per second, as GCRA buckets); the transport charges
//! its own protocol lines to the same budget. A profile is chosen from the server's version in
//! its 004 reply, or fixed in the config; until the server has said what it is, and for servers
//! we do not know, the conservative profile applies.

use opsbot::outbox::Rate;
use opsbot::transport::Limits;

/// Bytes a PRIVMSG adds to its text on the wire besides the target: `PRIVMSG ` ` :` CRLF.
pub(crate) const PRIVMSG_OVERHEAD: usize = 12;

/// A known server's budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Unknown servers: about one line a second with a burst of four (the classic RFC 1459
    /// §8.10 model, two seconds of penalty per message with a ten-second allowance, is
    /// stricter only for bursts).
    Conservative,
    /// ngircd.
    Ngircd,
    /// InspIRCd (2, 3 and 4), valid also with `fakelag` off.
    Inspircd,
}

impl Profile {
    /// The profile for a server version string from numeric 004 (`ngircd-26.1`, `InspIRCd-3`).
    pub fn from_version(version: &str) -> Self {
        let v = version.to_ascii_lowercase();
        if v.starts_with("ngircd") {
            Self::Ngircd
        } else if v.starts_with("inspircd") {
            Self::Inspircd
        } else {
            Self::Conservative
        }
    }

    /// The profile's name, as `!status` shows it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Conservative => "conservative",
            Self::Ngircd => "ngircd",
            Self::Inspircd => "inspircd",
        }
    }

    /// Line and byte budgets; `max_line_bytes` is the text a line may carry.
    pub fn limits(self, max_line_bytes: usize) -> Limits {
        let (lines, bytes) = match self {
            Self::Conservative => (Rate::new(1.0, 4), None),
            Self::Ngircd => (Rate::new(2.9, 3), Some(Rate::new(1024.0, 1536))),
            Self::Inspircd => (Rate::new(0.95, 8), None),
        };
        Limits {
            max_line_bytes,
            global: Some(lines),
            global_bytes: bytes,
            line_overhead: PRIVMSG_OVERHEAD,
            per_destination: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_pick_profiles() {
        assert_eq!(Profile::from_version("ngircd-26.1"), Profile::Ngircd);
        assert_eq!(Profile::from_version("InspIRCd-3"), Profile::Inspircd);
        assert_eq!(Profile::from_version("solanum-1.0"), Profile::Conservative);
    }
}

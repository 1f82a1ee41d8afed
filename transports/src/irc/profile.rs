//! Pacing profiles: how fast a client may talk to a given IRC server without being throttled
//! into a ping timeout or quit for flooding.
//!
//! The outbox enforces them (lines and bytes per second, as GCRA buckets); the transport charges
//! its own protocol lines to the same budget. A profile is chosen from the server's version in
//! its 004 reply, or fixed in the config; until the server has said what it is, and for servers
//! we do not know, the conservative profile applies.

use opsbot::pacing::Rate;
use opsbot::transport::Limits;

/// Bytes a PRIVMSG adds to its text on the wire besides the target: `PRIVMSG ` ` :` CRLF.
pub(crate) const PRIVMSG_OVERHEAD: usize = 12;

/// A known server's budget.
///
/// Measured on the Debian 12 packages and read from their sources:
/// - **ngircd 26** never disconnects for flooding; it throttles. `Handle_Buffer()` (conn.c)
///   handles at most 3 commands per pass and then pauses the client for 1 s; `Read_Request()`
///   adds 1 s when more than 256 bytes arrive within one second in many small reads; every error
///   reply costs 2 s. In bulk it relays 3.03 lines/s of short lines, 2.85 of 200-byte and 2.50 of
///   400-byte lines (about 1,040 bytes/s). A line over 512 bytes disconnects the client.
/// - **InspIRCd 3** adds 1,000 penalty units per command (PRIVMSG and PING 1 unit, JOIN 2,
///   NICK 4, PART 5; a PONG to its own PING nothing) and takes 1,000 off once a second (once per
///   pass of its main loop in which the second changed, so a starved server credits less). With
///   `fakelag = no` a client reaching the threshold is quit with "Excess Flood": 20 units when
///   the `<connect>` block does not say, but the example config it ships sets 10, and measured
///   here a burst of 10 lines after the join is quit there. More than 4,096 unprocessed bytes
///   quit a client with "RecvQ exceeded".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Unknown servers: about one line a second with a burst of four.
    Conservative,
    /// ngircd: 2.9 lines/s and 1,024 bytes/s (95% of what it relays in bulk), burst 3.
    Ngircd,
    /// InspIRCd: 0.95 lines/s (95% of the decay), burst 4: with a join (2) that stays well
    /// under the example config's threshold of 10, leaving room for nick changes, keep-alives
    /// and decay the server misses while busy.
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
            Self::Inspircd => (Rate::new(0.95, 4), None),
        };
        Limits {
            max_line_bytes,
            global: Some(lines),
            global_bytes: bytes,
            line_overhead: PRIVMSG_OVERHEAD,
            multiline: false,
            per_destination: None,
            // Lines are written in order on one connection and answered when written.
            window: 1,
            window_per_destination: 1,
            style: opsbot::rich::Style::Plain,
            cards: false,
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

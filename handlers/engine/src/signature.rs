//! Signed events from anything that is not Alertmanager (CI, scripts): an HMAC-SHA256 over the
//! timestamp and the raw body, with a secret per source, a window on the timestamp and a
//! memory of the signatures already seen in that window, so a captured request cannot be
//! replayed.
//!
//! The sender sets two headers:
//!
//! - `X-Opsbot-Timestamp`: seconds since the Unix epoch;
//! - `X-Opsbot-Signature`: `sha256=` and the lower-case hex of
//!   `HMAC-SHA256(secret, timestamp + "." + body)`.
//!
//! ```sh
//! ts=$(date +%s)
//! sig=$(printf '%s.%s' "$ts" "$body" | openssl dgst -sha256 -hmac "$secret" -r | cut -d' ' -f1)
//! curl -H "X-Opsbot-Timestamp: $ts" -H "X-Opsbot-Signature: sha256=$sig" --data "$body" …
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The timestamp header.
pub const TIMESTAMP_HEADER: &str = "x-opsbot-timestamp";
/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-opsbot-signature";

/// Why a signed request was refused (said to the caller as is: it names no secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// A header is missing or not in its format.
    Malformed(&'static str),
    /// The timestamp is outside the window.
    Stale,
    /// The signature does not match.
    BadSignature,
    /// The same signed request came before, within the window.
    Replayed,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Malformed(what) => write!(f, "{what}"),
            Refused::Stale => f.write_str("the timestamp is outside the accepted window"),
            Refused::BadSignature => f.write_str("the signature does not match"),
            Refused::Replayed => f.write_str("this signed request was already received"),
        }
    }
}

impl std::error::Error for Refused {}

/// Checks signatures and remembers the ones it accepted, for one window.
#[derive(Debug)]
pub struct Verifier {
    window_secs: u64,
    max_remembered: usize,
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    by_sig: HashMap<[u8; 32], u64>,
    order: VecDeque<([u8; 32], u64)>,
    /// The newest timestamp forgotten while still inside the window.
    floor: u64,
}

impl Verifier {
    /// A verifier accepting timestamps within `window_secs` of now either way, remembering at
    /// most `max_remembered` signatures (past that, requests no newer than a forgotten one
    /// are refused as stale: the window shrinks rather than the memory growing).
    pub fn new(window_secs: u64, max_remembered: usize) -> Self {
        Self {
            window_secs,
            max_remembered: max_remembered.max(1),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Checks a request signed with `secret`, at `now` (Unix seconds).
    pub fn verify(
        &self,
        secret: &[u8],
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: u64,
    ) -> Result<(), Refused> {
        let ts_text = timestamp.ok_or(Refused::Malformed("no X-Opsbot-Timestamp header"))?;
        let ts: u64 = ts_text
            .parse()
            .map_err(|_| Refused::Malformed("X-Opsbot-Timestamp is not a number of seconds"))?;
        let hex = signature
            .ok_or(Refused::Malformed("no X-Opsbot-Signature header"))?
            .strip_prefix("sha256=")
            .ok_or(Refused::Malformed(
                "X-Opsbot-Signature must start with sha256=",
            ))?;
        let sig: [u8; 32] = decode_hex(hex).ok_or(Refused::Malformed(
            "X-Opsbot-Signature is not 64 hex digits",
        ))?;
        if ts.abs_diff(now) > self.window_secs {
            return Err(Refused::Stale);
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(ts_text.as_bytes());
        mac.update(b".");
        mac.update(body);
        // Compared in constant time.
        mac.verify_slice(&sig).map_err(|_| Refused::BadSignature)?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let horizon = now.saturating_sub(self.window_secs);
        while seen.order.front().is_some_and(|&(_, at)| at < horizon) {
            if let Some((old, _)) = seen.order.pop_front() {
                seen.by_sig.remove(&old);
            }
        }
        if ts <= seen.floor {
            // As old as a signature forgotten to keep the memory bounded: it could be a
            // replay of that one.
            return Err(Refused::Stale);
        }
        if seen.by_sig.contains_key(&sig) {
            return Err(Refused::Replayed);
        }
        if seen.order.len() >= self.max_remembered
            && let Some((old, at)) = seen.order.pop_front()
        {
            seen.by_sig.remove(&old);
            seen.floor = seen.floor.max(at);
        }
        seen.by_sig.insert(sig, ts);
        seen.order.push_back((sig, ts));
        Ok(())
    }
}

/// The signature header's value for `body` at `timestamp`: for senders and tests.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn decode_hex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_signed_request_passes_once() {
        let v = Verifier::new(300, 1000);
        let sig = sign(b"s3cret", NOW, b"{}");
        let ts = NOW.to_string();
        assert_eq!(
            v.verify(b"s3cret", Some(&ts), Some(&sig), b"{}", NOW + 5),
            Ok(())
        );
        assert_eq!(
            v.verify(b"s3cret", Some(&ts), Some(&sig), b"{}", NOW + 6),
            Err(Refused::Replayed)
        );
    }

    #[test]
    fn wrong_secret_body_time_or_format_is_refused() {
        let v = Verifier::new(300, 1000);
        let sig = sign(b"s3cret", NOW, b"{}");
        let ts = NOW.to_string();
        let check = |secret: &[u8], ts: Option<&str>, sig: Option<&str>, body: &[u8], now| {
            v.verify(secret, ts, sig, body, now)
        };
        assert_eq!(
            check(b"other", Some(&ts), Some(&sig), b"{}", NOW),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            check(b"s3cret", Some(&ts), Some(&sig), b"{ }", NOW),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            check(b"s3cret", Some(&ts), Some(&sig), b"{}", NOW + 301),
            Err(Refused::Stale)
        );
        assert_eq!(
            check(b"s3cret", Some(&ts), Some(&sig), b"{}", NOW - 301),
            Err(Refused::Stale)
        );
        let later = (NOW + 1).to_string();
        assert_eq!(
            check(b"s3cret", Some(&later), Some(&sig), b"{}", NOW),
            Err(Refused::BadSignature)
        );
        assert!(matches!(
            check(b"s3cret", None, Some(&sig), b"{}", NOW),
            Err(Refused::Malformed(_))
        ));
        assert!(matches!(
            check(b"s3cret", Some("soon"), Some(&sig), b"{}", NOW),
            Err(Refused::Malformed(_))
        ));
        assert!(matches!(
            check(b"s3cret", Some(&ts), Some(&sig[7..]), b"{}", NOW),
            Err(Refused::Malformed(_))
        ));
        assert!(matches!(
            check(b"s3cret", Some(&ts), Some("sha256=zz"), b"{}", NOW),
            Err(Refused::Malformed(_))
        ));
        assert!(matches!(
            check(b"s3cret", Some(&ts), None, b"{}", NOW),
            Err(Refused::Malformed(_))
        ));
    }

    #[test]
    fn a_full_memory_refuses_what_it_may_have_forgotten() {
        let v = Verifier::new(300, 3);
        for i in 0..5u64 {
            let body = format!("{i}");
            let sig = sign(b"k", NOW + i, body.as_bytes());
            let ts = (NOW + i).to_string();
            assert_eq!(
                v.verify(b"k", Some(&ts), Some(&sig), body.as_bytes(), NOW + 10),
                Ok(())
            );
        }
        // The first ones were forgotten to keep the memory bounded: a replay of one is refused.
        let sig = sign(b"k", NOW, b"0");
        assert_ne!(
            v.verify(b"k", Some(&NOW.to_string()), Some(&sig), b"0", NOW + 10),
            Ok(())
        );
    }
}

//! `!whereareyou`: the host name and IP addresses the bot runs on (Univac's command), so an
//! operator can find a bot that has wandered.

use std::net::IpAddr;

use opsbot::prelude::*;

/// The whereareyou handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct WhereAreYou;

impl Handler for WhereAreYou {
    const NAME: &'static str = "whereareyou";
    const COMMANDS: &'static [Command] = &[Command::new(
        "whereareyou",
        "",
        "Tell the host name and IP addresses the bot runs on.",
    )];

    async fn command(&mut self, cx: &mut Context, _call: Call) -> Result {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let addrs = if_addrs::get_if_addrs().map_err(Error::internal)?;
        cx.reply(describe(&host, addrs.iter().map(if_addrs::Interface::ip)));
        Ok(())
    }
}

/// `I am on HOST (a, b)`: addresses other than loopback and link-local first, deduplicated;
/// loopback only when there is nothing else.
pub fn describe(host: &str, addrs: impl IntoIterator<Item = IpAddr>) -> String {
    let mut all: Vec<IpAddr> = addrs.into_iter().collect();
    all.sort_by_key(|a| (a.is_loopback(), a.is_ipv6(), *a));
    all.dedup();
    let useful: Vec<_> = all
        .iter()
        .filter(|a| {
            !a.is_loopback()
                && !matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
        })
        .collect();
    let shown: Vec<String> = if useful.is_empty() {
        all.iter().map(ToString::to_string).collect()
    } else {
        useful.iter().map(ToString::to_string).collect()
    };
    if shown.is_empty() {
        format!("I am on {host} (no IP addresses)")
    } else {
        format!("I am on {host} ({})", shown.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only_when_nothing_else() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lan: IpAddr = "10.1.2.3".parse().unwrap();
        let ll: IpAddr = "fe80::1".parse().unwrap();
        assert_eq!(describe("h", [lo, ll, lan, lan]), "I am on h (10.1.2.3)");
        assert_eq!(describe("h", [lo]), "I am on h (127.0.0.1)");
    }
}

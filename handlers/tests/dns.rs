//! `!dns` and `!rdns` against a DNS server of the test's own on a loopback port (no packet
//! leaves the machine): every record type, NXDOMAIN, SERVFAIL, a timeout, bad input, and the
//! breaker that opens when the nameservers keep failing.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use hickory_proto::rr::rdata::{A, AAAA, CAA, CNAME, MX, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record};
use opsbot::settings::FromSettings;
use opsbot::testkit::TestBot;
use opsbot_handlers::dns::{Dns, DnsSettings};

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

/// The zone the fake server answers from.
fn zone() -> Vec<Record> {
    let r = |n: &str, d: RData| Record::from_rdata(name(n), 300, d);
    let mut z = vec![
        r("example.test.", RData::A(A(Ipv4Addr::new(192, 0, 2, 10)))),
        r(
            "example.test.",
            RData::AAAA(AAAA(Ipv6Addr::from_str("2001:db8::10").unwrap())),
        ),
        r(
            "example.test.",
            RData::MX(MX::new(10, name("mail.example.test."))),
        ),
        r(
            "example.test.",
            RData::TXT(TXT::new(vec!["v=spf1 -all".into()])),
        ),
        r(
            "www.example.test.",
            RData::CNAME(CNAME(name("example.test."))),
        ),
        r("example.test.", RData::NS(NS(name("ns1.example.test.")))),
        r(
            "example.test.",
            RData::SOA(SOA::new(
                name("ns1.example.test."),
                name("hostmaster.example.test."),
                2026112701,
                3600,
                600,
                86400,
                300,
            )),
        ),
        r(
            "_xmpp-client._tcp.example.test.",
            RData::SRV(SRV::new(5, 0, 5222, name("xmpp.example.test."))),
        ),
        r(
            "example.test.",
            RData::CAA(CAA::new_issue(
                false,
                Some(name("letsencrypt.org.")),
                vec![],
            )),
        ),
        r(
            "10.2.0.192.in-addr.arpa.",
            RData::PTR(PTR(name("example.test."))),
        ),
    ];
    for i in 0..30 {
        z.push(r(
            "many.example.test.",
            RData::A(A(Ipv4Addr::new(192, 0, 2, i))),
        ));
    }
    z
}

async fn bot() -> (TestBot, Arc<AtomicU32>) {
    let (addr, queries) = crate::support::dns_server(zone()).await;
    let dns = Dns::from_settings(DnsSettings {
        nameservers: vec![addr.to_string()],
        timeout_secs: Some(1),
        max_answers: Some(10),
        breaker: None,
    })
    .unwrap();
    // Repeated identical answers are the point here, not a loop to cut.
    let bot = TestBot::new()
        .with(dns)
        .configure(|o| o.outbox.loop_repeats = 0);
    (bot, queries)
}

async fn ask(bot: &mut TestBot, text: &str) -> String {
    bot.send(text);
    let r = bot.reply().await;
    r.strip_prefix("tester: ").unwrap_or(&r).to_owned()
}

#[tokio::test]
async fn every_record_type_is_one_line_per_record() {
    let (mut bot, _) = bot().await;
    for (cmd, want) in [
        ("!dns example.test", "example.test A 192.0.2.10 (ttl 300)"),
        (
            "!dns example.test aaaa",
            "example.test AAAA 2001:db8::10 (ttl 300)",
        ),
        (
            "!dns example.test MX",
            "example.test MX 10 mail.example.test. (ttl 300)",
        ),
        (
            "!dns example.test TXT",
            "example.test TXT v=spf1 -all (ttl 300)",
        ),
        (
            "!dns www.example.test CNAME",
            "www.example.test CNAME example.test. (ttl 300)",
        ),
        (
            "!dns example.test NS",
            "example.test NS ns1.example.test. (ttl 300)",
        ),
        (
            "!dns _xmpp-client._tcp.example.test SRV",
            "_xmpp-client._tcp.example.test SRV 5 0 5222 xmpp.example.test. (ttl 300)",
        ),
        ("!rdns 192.0.2.10", "192.0.2.10 PTR example.test."),
    ] {
        assert_eq!(ask(&mut bot, cmd).await, want, "{cmd}");
    }
    let soa = ask(&mut bot, "!dns example.test SOA").await;
    assert!(
        soa.starts_with("example.test SOA ns1.example.test. hostmaster.example.test. 2026112701"),
        "{soa}"
    );
    let caa = ask(&mut bot, "!dns example.test CAA").await;
    assert!(
        caa.starts_with("example.test CAA 0 issue") && caa.contains("letsencrypt.org"),
        "{caa}"
    );
}

#[tokio::test]
async fn long_answers_are_capped_and_failures_are_one_clear_line() {
    let (mut bot, _) = bot().await;
    bot.send("!dns many.example.test");
    let lines = bot.replies(11).await;
    assert!(
        lines[0].ends_with("many.example.test A 192.0.2.0 (ttl 300)"),
        "{lines:?}"
    );
    assert!(lines[10].ends_with("… and 20 more"), "{lines:?}");
    assert_eq!(
        ask(&mut bot, "!dns nothere.test").await,
        "nothere.test: no such name (NXDOMAIN)"
    );
    assert_eq!(
        ask(&mut bot, "!dns www.example.test MX").await,
        "www.example.test has no MX records"
    );
    assert_eq!(
        ask(&mut bot, "!dns broken.test").await,
        "broken.test: the nameserver failed (SERVFAIL)"
    );
    assert_eq!(
        ask(&mut bot, "!dns slow.test").await,
        "!dns slow.test: no answer from the nameservers within 2s"
    );
    // Bad input: a usage line, nothing sent.
    let usage = ask(&mut bot, "!dns bad\u{7}name").await;
    assert!(usage.contains("usage: !dns <name>"), "{usage}");
    let usage = ask(&mut bot, "!rdns not-an-ip").await;
    assert!(usage.contains("usage: !rdns <ip>"), "{usage}");
    let bad = ask(&mut bot, "!dns example.test WKS").await;
    assert!(bad.contains("unknown record type WKS"), "{bad}");
}

#[tokio::test]
async fn nameservers_that_keep_failing_open_the_breaker() {
    let (mut bot, queries) = bot().await;
    for i in 0..5 {
        let r = ask(&mut bot, "!dns broken.test").await;
        assert!(r.contains("SERVFAIL"), "{i}: {r}");
    }
    let before = queries.load(Ordering::SeqCst);
    let r = ask(&mut bot, "!dns example.test").await;
    assert!(r.contains("dns is unreachable; next try at"), "{r}");
    assert_eq!(queries.load(Ordering::SeqCst), before, "asked while open");
    // NXDOMAIN is an answer, not a failing server: it never opens the breaker.
    let (mut bot, _) = self::bot().await;
    for _ in 0..8 {
        assert!(
            ask(&mut bot, "!dns nothere.test")
                .await
                .contains("NXDOMAIN")
        );
    }
    assert!(
        ask(&mut bot, "!dns example.test")
            .await
            .contains("192.0.2.10")
    );
}

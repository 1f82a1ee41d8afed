//! Link summaries and the fetch guard, against an HTTP server and a DNS server of the test's
//! own on loopback. Every fetch is made from 127.0.0.1 (`local_address`), so even a broken guard
//! could not send a packet anywhere but this machine; the guard's refusals are asserted as
//! refusals, and the addresses it let through are all loopback.

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::support::Page;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record};
use opsbot::fetch::{FetchError, FetchSettings, Fetcher};
use opsbot::settings::FromSettings;
use opsbot::testkit::TestBot;
use opsbot_handlers::links::{Links, LinksSettings};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn a(name: &str, ip: [u8; 4]) -> Record {
    Record::from_rdata(
        Name::from_str(name).unwrap(),
        60,
        RData::A(A(Ipv4Addr::from(ip))),
    )
}

fn html(body: &str) -> Page {
    Page::Full(200, "text/html; charset=utf-8", body.as_bytes().to_vec())
}

/// The local web: `wiki.test` (allowed internal site) and `site.test` (not allowed) both on
/// 127.0.0.1, `public.test` a public-looking name for a private address.
async fn world() -> (u16, std::net::SocketAddr) {
    let mut big_late = vec![b' '; 2 << 20];
    big_late.extend_from_slice(b"<title>too far</title>");
    let mut big_early = b"<title>Early title</title>".to_vec();
    big_early.extend(std::iter::repeat_n(b'x', 5 << 20));
    let mut bad_utf8 = b"<title>Bad \xff\xfe bytes\x07</title>".to_vec();
    bad_utf8.extend_from_slice(b"<p>");
    let deep_html = format!(
        "<html><head>{}</head><title>Deep title</title></html>",
        "<div>".repeat(200_000)
    );
    let deep_json = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    let pages = vec![
        ("/deep", Page::Full(200, "text/html", deep_html.into_bytes())),
        (
            "/999/info.0.json",
            Page::Full(200, "application/json", deep_json.into_bytes()),
        ),
        (
            "/327/info.0.json",
            Page::Full(
                200,
                "application/json",
                br#"{"month":"10","num":327,"link":"","year":"2007","news":"","safe_title":"Exploits of a Mom","transcript":"","alt":"Her daughter is named Help I'm trapped in a driver's license factory.","img":"https://imgs.xkcd.com/comics/exploits_of_a_mom.png","title":"Exploits of a Mom","day":"10"}"#.to_vec(),
            ),
        ),
        ("/page", html("<html><head><title>\n  Ops &amp; Security\t Weekly </title></head></html>")),
        ("/other", html("<title>Another page</title>")),
        ("/og", html(r#"<head><meta property="og:title" content="The &quot;OG&quot; title"></head>"#)),
        ("/notitle", html("<p>nothing here</p>")),
        ("/big-late", Page::Full(200, "text/html", big_late)),
        ("/big-early", Page::Full(200, "text/html", big_early)),
        ("/bad-utf8", Page::Full(200, "text/html", bad_utf8)),
        ("/pdf", Page::Full(200, "application/pdf", b"%PDF-1.4 <title>no</title>".to_vec())),
        ("/drip", Page::Drip),
        ("/to-page", Page::Redirect("/page".into())),
        ("/to-private", Page::Redirect("http://10.0.0.1/".into())),
        ("/to-public-test", Page::Redirect("http://public.test/".into())),
        ("/hop1", Page::Redirect("/hop2".into())),
        ("/hop2", Page::Redirect("/hop3".into())),
        ("/hop3", Page::Redirect("/hop4".into())),
        ("/hop4", Page::Redirect("/page".into())),
    ];
    let (port, _) = crate::support::http_server(pages).await;
    let (dns, _) = crate::support::dns_server(vec![
        a("wiki.test.", [127, 0, 0, 1]),
        a("site.test.", [127, 0, 0, 1]),
        a("public.test.", [10, 0, 0, 7]),
    ])
    .await;
    (port, dns)
}

fn settings(port: u16, dns: std::net::SocketAddr) -> LinksSettings {
    LinksSettings {
        allow: vec!["wiki.test".into()],
        timeout_secs: Some(2),
        xkcd_url: Some(format!("http://wiki.test:{port}")),
        nameservers: vec![dns.to_string()],
        local_address: Some(LOOPBACK),
        ..LinksSettings::default()
    }
}

async fn said(bot: &mut TestBot, text: &str) -> String {
    bot.send(text);
    let r = bot.reply().await;
    r.strip_prefix("tester: ").unwrap_or(&r).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summaries_of_xkcd_and_pages_once_per_room() {
    let (port, dns) = world().await;
    let links = Links::from_settings(LinksSettings {
        per_room_per_minute: Some(30),
        ..settings(port, dns)
    })
    .unwrap();
    let mut bot = TestBot::new().with(links);
    assert_eq!(
        said(&mut bot, "look: https://xkcd.com/327/").await,
        "xkcd #327: Exploits of a Mom (2007) — Her daughter is named Help I'm trapped in a driver's license factory."
    );
    let w = format!("http://wiki.test:{port}");
    assert_eq!(
        said(&mut bot, &format!("{w}/page")).await,
        "Ops & Security Weekly"
    );
    // The same URL again in the room: nothing; the next link proves the first was skipped.
    bot.send(&format!("again {w}/page"));
    assert_eq!(said(&mut bot, &format!("{w}/og")).await, "The \"OG\" title");
    assert_eq!(
        said(&mut bot, &format!("({w}/to-page)")).await,
        "Ops & Security Weekly"
    );
    // No title, not HTML, a title past the body cap: nothing; then one that answers.
    for path in ["notitle", "pdf", "big-late"] {
        bot.send(&format!("{w}/{path}"));
    }
    let t = Instant::now();
    assert_eq!(
        said(&mut bot, &format!("{w}/big-early")).await,
        "Early title"
    );
    assert!(t.elapsed() < Duration::from_secs(15));
    let bad = said(&mut bot, &format!("{w}/bad-utf8")).await;
    assert!(
        bad.starts_with("Bad ") && bad.ends_with(" bytes"),
        "{bad:?}"
    );
    assert!(!bad.chars().any(char::is_control), "{bad:?}");
    // A dripping server is cut off at the time limit and does not hold up the next link.
    bot.send(&format!("{w}/drip"));
    let t = Instant::now();
    assert_eq!(said(&mut bot, &format!("{w}/other")).await, "Another page");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_targets_are_refused_however_they_are_written() {
    let (port, dns) = world().await;
    let lookup_dns = dns;
    let http = opsbot::http::shared();
    let resolver = move |host: String| {
        Box::pin(async move {
            use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
            let mut udp = ConnectionConfig::udp();
            udp.port = lookup_dns.port();
            let cfg = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
                lookup_dns.ip(),
                true,
                vec![udp],
            )]);
            let r = hickory_resolver::TokioResolver::builder_with_config(
                cfg,
                hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
            )
            .build()
            .unwrap();
            r.lookup_ip(host.as_str())
                .await
                .map(|l| l.iter().collect())
                .map_err(std::io::Error::other)
        })
            as std::pin::Pin<
                Box<dyn std::future::Future<Output = std::io::Result<Vec<IpAddr>>> + Send>,
            >
    };
    let fetcher = Fetcher::with_lookup(
        &http,
        FetchSettings {
            allow: vec!["wiki.test".parse().unwrap()],
            total: Duration::from_secs(2),
            local_address: Some(LOOPBACK),
            ..FetchSettings::default()
        },
        std::sync::Arc::new(resolver),
    )
    .unwrap();
    let p = port;
    for url in [
        format!("http://127.0.0.1:{p}/page"),
        format!("http://[::1]:{p}/page"),
        format!("http://0x7f.1:{p}/page"),
        format!("http://2130706433:{p}/page"),
        format!("http://0177.0.0.1:{p}/page"),
        format!("http://[::ffff:127.0.0.1]:{p}/page"),
        format!("http://[::ffff:0:127.0.0.1]:{p}/page"),
        "http://[64:ff9b:1::a9fe:a9fe]/latest/meta-data/".into(),
        "http://[64:ff9b:1:a9fe:a9fe::]/latest/meta-data/".into(),
        "http://10.0.0.1/".into(),
        "http://172.16.5.4/".into(),
        "http://192.168.1.1/".into(),
        "http://100.64.0.1/".into(),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://[fe80::1]/".into(),
        "http://[fd00:ec2::254]/".into(),
        "http://0.0.0.0/".into(),
        format!("http://site.test:{p}/page"),
        "http://public.test/".into(),
        format!("http://wiki.test:{p}/to-private"),
        format!("http://wiki.test:{p}/to-public-test"),
        "file:///etc/passwd".into(),
        format!("gopher://wiki.test:{p}/"),
        format!("http://user:secret@wiki.test:{p}/page"),
    ] {
        match fetcher.fetch(&url).await {
            Err(FetchError::Refused(_)) => {}
            other => panic!("{url}: {other:?}"),
        }
    }
    // Too many redirects are an error, not a loop.
    assert!(matches!(
        fetcher.fetch(&format!("http://wiki.test:{p}/hop1")).await,
        Err(FetchError::Failed(e)) if e.contains("more than 3 redirects")
    ));
    // The allow-listed internal site is fetched; every address let through was loopback.
    let got = fetcher
        .fetch(&format!("http://wiki.test:{p}/page"))
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    assert!(!fetcher.passed().is_empty());
    assert!(
        fetcher.passed().iter().all(|ip| ip.is_loopback()),
        "{:?}",
        fetcher.passed()
    );
}

/// Pages and JSON nested 200,000 levels deep go through the handler's real parsers (the title
/// finder reads HTML without building a tree; xkcd's JSON stops at serde_json's 128 levels):
/// a title is found, the JSON is an error with no answer, and the bot goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_pages_and_json_are_read_without_recursion() {
    let (port, dns) = world().await;
    let links = Links::from_settings(LinksSettings {
        per_room_per_minute: Some(30),
        ..settings(port, dns)
    })
    .unwrap();
    let mut bot = TestBot::new().with(links);
    let w = format!("http://wiki.test:{port}");
    assert_eq!(said(&mut bot, &format!("{w}/deep")).await, "Deep title");
    bot.send("https://xkcd.com/999/");
    // The next link's summary is the next thing said: the deep JSON got no answer.
    assert_eq!(said(&mut bot, &format!("{w}/other")).await, "Another page");
    assert_eq!(
        bot.status().actors.iter().map(|a| a.restarts).sum::<u32>(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_gets_a_bounded_number_of_summaries_a_minute() {
    let (port, dns) = world().await;
    let links = Links::from_settings(LinksSettings {
        per_room_per_minute: Some(2),
        ..settings(port, dns)
    })
    .unwrap();
    let mut bot = TestBot::new().with(links);
    let w = format!("http://wiki.test:{port}");
    bot.send_as("alice", "#ops", &format!("{w}/page {w}/og {w}/other"));
    let got = bot.replies(2).await;
    assert!(got[0].ends_with("Ops & Security Weekly"), "{got:?}");
    assert!(got[1].ends_with("The \"OG\" title"), "{got:?}");
    // The third was over #ops's budget; another room still gets its summary, and is next.
    bot.send_as("alice", "#dev", &format!("{w}/other"));
    let said = bot.said().await;
    assert_eq!(said.dest.name(), "#dev", "{said:?}");
    assert!(said.text.ends_with("Another page"), "{said:?}");
}

/// Links are chat input: a URL the guard refuses makes no breaker; a site that fails gets one
/// (shown, with an error that holds no part of the pasted URL) that never makes the bot
/// degraded; and however many sites users paste, the bot keeps a bounded number. Before, 12
/// refused URLs made 12 breakers and five failing links to one made-up host turned the whole
/// bot "degraded" in `!status`, the API, the healing log and the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_input_makes_few_breakers_and_never_degrades_the_bot() {
    let (port, dns) = world().await;
    let links = Links::from_settings(LinksSettings {
        per_room_per_minute: Some(60),
        ..settings(port, dns)
    })
    .unwrap();
    let mut bot = TestBot::new().with(links);
    let w = format!("http://wiki.test:{port}");
    // The positive signal after each batch: a summary said in that room.
    async fn probe(bot: &mut TestBot, room: &str, w: &str) {
        bot.send_as("alice", room, &format!("{w}/other"));
        let said = bot.said().await;
        assert_eq!(said.dest.name(), room, "{said:?}");
        assert!(said.text.ends_with("Another page"), "{said:?}");
    }
    let refused: Vec<String> = [
        format!("http://127.0.0.1:{port}/page"),
        format!("http://[::1]:{port}/page"),
        format!("http://0x7f.1:{port}/page"),
        "http://10.0.0.1/".into(),
        "http://172.16.5.4/".into(),
        "http://192.168.1.1/".into(),
        "http://100.64.0.1/".into(),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://[fe80::1]/".into(),
        "http://0.0.0.0/".into(),
        format!("http://site.test:{port}/page"),
        "http://public.test/".into(),
    ]
    .into();
    for (i, url) in refused.iter().enumerate() {
        bot.send_as("mallory", &format!("#r{i}"), url);
    }
    probe(&mut bot, "#r0", &w).await;
    assert!(
        bot.status().breakers.is_empty(),
        "{:?}",
        bot.status().breakers
    );

    for i in 0..5 {
        bot.send_as(
            "mallory",
            "#fail",
            &format!("http://nope.test/token=s3cr3t{i}"),
        );
    }
    probe(&mut bot, "#fail", &w).await;
    let s = bot.status();
    assert_eq!(s.breakers.len(), 1, "{:?}", s.breakers);
    let b = &s.breakers[0];
    assert_eq!((b.name.as_str(), b.site), ("nope.test", true));
    assert!(
        matches!(b.state, opsbot::breaker::BreakerState::Open { .. }),
        "{b:?}"
    );
    let error = &b.last_error.as_ref().unwrap().1;
    assert!(
        !error.contains("s3cr3t") && !error.contains("token"),
        "{error}"
    );
    assert_eq!(
        s.health,
        opsbot::health::BotHealth::Healthy,
        "{}",
        s.summary()
    );
    assert!(
        s.subsystems.iter().all(|x| !x.name.starts_with("breaker:")),
        "{:?}",
        s.subsystems
    );
    assert!(
        s.healing_log
            .iter()
            .all(|e| e.subsystem != "breaker" && e.subsystem != "health"),
        "{:?}",
        s.healing_log
    );
    let text = opsbot_handlers::status::render(&s, std::time::SystemTime::now());
    assert!(
        text.contains("breaker nope.test (a linked site): open"),
        "{text}"
    );

    for i in 0..40 {
        bot.send_as(
            "mallory",
            &format!("#many{}", i / 20),
            &format!("http://h{i}.test/"),
        );
    }
    probe(&mut bot, "#many0", &w).await;
    probe(&mut bot, "#many1", &w).await;
    let s = bot.status();
    assert_eq!(
        s.breakers.len(),
        opsbot::health::MAX_SITE_BREAKERS,
        "{:?}",
        s.breakers.iter().map(|b| &b.name).collect::<Vec<_>>()
    );
    // The oldest were forgotten first.
    assert!(
        s.breakers
            .iter()
            .all(|b| b.name != "nope.test" && b.name != "h0.test")
    );
    assert_eq!(s.health, opsbot::health::BotHealth::Healthy);
}

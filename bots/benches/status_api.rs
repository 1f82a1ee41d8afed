//! The HTTP status API under load while the bot answers chat: the `opsbot` binary on a real
//! InspIRCd (flood limits raised, so the server's throttle does not hide the bot), with `[http]`.
//!
//! Three phases of the same steady chat load (sequential `!echo` round trips from one user):
//! without HTTP requests, then with clients hammering `GET /api/v1/health`, then `GET /metrics`
//! (keep-alive connections, each sending its next request as soon as the last is answered).
//! For each: the `!echo` p50/p99, and the API's requests per second and p99.
//! Run: `cargo bench -p opsbot-bots --bench status_api`.

#[path = "../../transports/tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{Process, Server, User};

const CHANNEL: &str = "#bench";

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One keep-alive client: requests `path` until `stop`, answering each request's latency.
fn hammer(port: u16, path: &'static str, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the API");
    s.set_nodelay(true).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let mut lat = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        s.write_all(request.as_bytes()).unwrap();
        // Read the head, then Content-Length bytes.
        let mut got: Vec<u8> = Vec::new();
        let (head_end, length) = loop {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "the API closed the connection");
            got.extend_from_slice(&buf[..n]);
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..i]).to_ascii_lowercase();
                assert!(head.starts_with("http/1.1 200"), "{head}");
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("a sized answer");
                break (i + 4, length);
            }
        };
        while got.len() < head_end + length {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "the API closed the connection");
            got.extend_from_slice(&buf[..n]);
        }
        lat.push(t.elapsed());
    }
    lat
}

/// `n` sequential `!echo` round trips; sorted latencies.
async fn echoes(user: &mut User, n: usize, tag: &str) -> Vec<Duration> {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let text = format!("{tag}{i}");
        let t = Instant::now();
        user.say(CHANNEL, &format!("!echo {text}")).await;
        loop {
            let (_, got) = user.privmsg_from("opsbot", Duration::from_secs(30)).await;
            if got == text {
                break;
            }
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    lat
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = !args.iter().any(|a| a == "--bench");
    let (n, clients) = if quick { (20, 2) } else { (2000, 4) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = Server::start_unthrottled();
    let http_port = support::free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[log]\nlevel = \"warn\"\n[state]\npath = \"{}\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n\
         [[bot]]\nname = \"bench\"\n[bot.transport]\nkind = \"irc\"\nserver = \"127.0.0.1\"\nport = {}\n\
         tls = false\nnick = \"opsbot\"\nchannels = [\"{CHANNEL}\"]\n[bot.budget]\ncommands_per_minute = 0\n\
         [bot.outbox]\nrate = 0\nbyte_rate = 0\nloop_repeats = 0\n",
        dir.path().join("state.redb").display(),
        server.port
    );
    let bot = Process::opsbot(env!("CARGO_BIN_EXE_opsbot"), &config);
    rt.block_on(async {
        let mut user = User::connect(server.port, "timer").await;
        user.join(CHANNEL).await;
        user.expect(Duration::from_secs(30), |l| {
            let (who, cmd, p) = l.parts();
            (who == "opsbot" && cmd == "JOIN")
                || (cmd == "353" && p.last().is_some_and(|n| n.contains("opsbot")))
        })
        .await;
        echoes(&mut user, 20, "warm").await;

        let quiet = echoes(&mut user, n, "quiet").await;
        println!(
            "status_api: !echo without HTTP load: {n} round trips, p50 {:.2?} p99 {:.2?}",
            pct(&quiet, 0.5),
            pct(&quiet, 0.99)
        );
        for path in ["/api/v1/health", "/metrics"] {
            let stop = Arc::new(AtomicBool::new(false));
            let load: Vec<_> = (0..clients)
                .map(|_| {
                    let stop = stop.clone();
                    std::thread::spawn(move || hammer(http_port, path, stop))
                })
                .collect();
            let started = Instant::now();
            let busy = echoes(&mut user, n, "busy").await;
            stop.store(true, Ordering::Relaxed);
            let took = started.elapsed();
            let mut api: Vec<Duration> = load.into_iter().flat_map(|t| t.join().unwrap()).collect();
            api.sort();
            println!(
                "status_api: GET {path} from {clients} keep-alive clients: {:.0} req/s, p50 {:.2?} p99 {:.2?} | !echo meanwhile: p50 {:.2?} p99 {:.2?} ({:+.1}% p50 against no load)",
                api.len() as f64 / took.as_secs_f64(),
                pct(&api, 0.5),
                pct(&api, 0.99),
                pct(&busy, 0.5),
                pct(&busy, 0.99),
                100.0 * (pct(&busy, 0.5).as_secs_f64() / pct(&quiet, 0.5).as_secs_f64() - 1.0)
            );
        }
    });
    let (rss, cpu) = bot.usage();
    println!("status_api: the bot's peak RSS {rss:.1} MiB, CPU {cpu:.2} s");
}

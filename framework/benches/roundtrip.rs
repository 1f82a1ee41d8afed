//! In-memory round trip: `Incoming` → router → handler → outbox → transport, rate limits off.
//!
//! Prints messages per second (pipelined) and the latency distribution of sequential round
//! trips. Run with `cargo bench -p opsbot --bench roundtrip`; pin to one core with
//! `taskset -c 0 cargo bench ...` to measure the one-core figure.

use std::time::{Duration, Instant};

use opsbot::testkit::{Echo, TestBot};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once, quickly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (throughput_n, latency_n) = if quick {
        (1_000, 200)
    } else {
        (200_000, 20_000)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut bot = TestBot::new().with(Echo).configure(|o| {
            o.outbox.loop_repeats = 0;
            o.outbox.queue = 1_000_000;
        });
        // Warm up.
        for i in 0..1_000 {
            bot.send(&format!("!echo w{i}"));
        }
        bot.replies(1_000).await;

        let start = Instant::now();
        for i in 0..throughput_n {
            bot.send(&format!("!echo {i}"));
        }
        for _ in 0..throughput_n {
            bot.said().await;
        }
        let elapsed = start.elapsed();
        let rate = throughput_n as f64 / elapsed.as_secs_f64();
        println!("roundtrip/pipelined: {throughput_n} messages in {elapsed:.2?} = {rate:.0} msg/s");

        let mut lat = Vec::with_capacity(latency_n);
        for i in 0..latency_n {
            let t = Instant::now();
            bot.send(&format!("!echo s{i}"));
            bot.said().await;
            lat.push(t.elapsed());
        }
        lat.sort();
        println!(
            "roundtrip/sequential: {latency_n} round trips: p50 {:.1?}, p99 {:.1?}, max {:.1?}",
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            lat[lat.len() - 1]
        );
        assert_eq!(bot.status().outbox.dropped, 0);
    });
}

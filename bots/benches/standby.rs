//! Hand-over of a bot between two `opsbot run` processes over 20 kills of the holder: a real
//! ngircd, a real nats-server, a lease of 2 s. Each round SIGKILLs whichever process holds the
//! bot, times how long until the other process says it holds the bot's lead and is in the
//! channel (its status read every 20 ms), checks that it answers, and starts the killed one
//! again as the standby.
//!
//! Run: `cargo bench -p opsbot-bots --bench standby` (`cargo test --benches` runs 3 rounds).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/node.rs"]
mod node;
#[path = "../../transports/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use node::{Node, Room};
use support::nats::Nats;
use support::{Kind, Server};

const TTL: &str = "2s";
const PATIENCE: Duration = Duration::from_secs(60);

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds = if quick { 3 } else { 20 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let irc = Server::start(Kind::Ngircd);
        let nats = Nats::start(&dir.path().join("nats"));
        let mut nodes = [
            Node::start(dir.path(), "a", irc.port, nats.port, TTL),
            Node::start(dir.path(), "b", irc.port, nats.port, TTL),
        ];
        let mut room = Room::join(irc.port).await;
        room.until_answered("ready", PATIENCE).await;
        let mut times = Vec::with_capacity(rounds);
        for round in 0..rounds {
            let holder = nodes
                .iter()
                .position(|n| n.bot()["lead"]["held"] == true)
                .expect("one process holds the bot");
            let other = 1 - holder;
            nodes[other].stands_by(PATIENCE);
            nodes[holder].kill();
            let t = std::time::Instant::now();
            // In the channel, able to answer: the new holder's status, read every 20 ms.
            nodes[other].wait("speaking for the bot", PATIENCE, |v| {
                v["lead"]["held"] == true
                    && v["transport"]["connection"] == "connected"
                    && v["transport"]["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains("#ops joined"))
            });
            times.push(t.elapsed());
            // And it does answer.
            room.until_answered(&format!("round{round}"), PATIENCE).await;
            let name = if holder == 0 { "a" } else { "b" };
            nodes[holder] = Node::start(dir.path(), name, irc.port, nats.port, TTL);
            nodes[holder].stands_by(PATIENCE);
        }
        room.each_once();
        times.sort();
        let median = times[times.len() / 2];
        let max = times[times.len() - 1];
        println!(
            "standby: hand-over over {rounds} SIGKILLs of the holder, lease_ttl {TTL}: median {median:.2?}, max {max:.2?}, min {:.2?}; every answer said once",
            times[0]
        );
    });
}

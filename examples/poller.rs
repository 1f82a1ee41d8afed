//! A poller: announces files that appear in a directory, and only new ones, also across
//! restarts (the seen-index is on disk).
//!
//! Run: `cargo run -p opsbot-examples --example poller -- /tmp/drop`, then
//! `touch /tmp/drop/report.txt` in another terminal.

use std::path::PathBuf;
use std::time::Duration;

use opsbot::prelude::*;
use opsbot::{Bot, PollerOptions};

struct NewFiles {
    dir: PathBuf,
}

impl Poller for NewFiles {
    const NAME: &'static str = "newfiles";

    async fn poll(&mut self) -> Result<Vec<Item>> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::user(format!("cannot read {}: {e}", self.dir.display())))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names
            .into_iter()
            .map(|n| Item::new(&n, format!("new file: {n}")))
            .collect())
    }
}

fn main() -> std::io::Result<()> {
    opsbot::logging::init(&Default::default());
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let opts = PollerOptions {
        every: Duration::from_secs(2),
        post_to: vec![Destination::user("console")],
        ..PollerOptions::default()
    };
    let bot = Bot::builder("files")
        .transport(opsbot_transports::console::Console::stdio("files"))
        .configure(|o| o.state_path = Some(dir.join(".opsbot-state.redb")))
        .poller(opts, move || NewFiles { dir: dir.clone() });
    let bot = opsbot_handlers::add_builtins(bot)
        .build()
        .expect("valid bot");
    opsbot::run(vec![bot])
}

#[cfg(test)]
mod tests {
    use super::*;
    use opsbot::store::Store;
    use opsbot::testkit::TestBot;

    #[tokio::test]
    async fn announces_only_files_that_are_new() {
        // A folder of the test's own (no test-only crates here: the examples build with the
        // binary's dependencies and nothing more).
        let dir = Scratch::new();
        std::fs::write(dir.path().join("old.txt"), "").unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        let opts = PollerOptions {
            every: Duration::from_millis(20),
            post_to: vec![Destination::room("#files")],
            ..PollerOptions::default()
        };
        let path = dir.path().to_owned();
        let mut bot = TestBot::new()
            .store(store.clone())
            .poller(opts, move || NewFiles { dir: path.clone() });
        bot.start();
        // The first poll primes the index; wait for it (at most 20 s).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while store.seen_count("test/newfiles").unwrap() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "never primed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        std::fs::write(dir.path().join("new.txt"), "").unwrap();
        assert_eq!(bot.reply().await, "new file: new.txt");
    }

    /// A folder removed when dropped.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!(
                "opsbot-poller-example-{}-{:?}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

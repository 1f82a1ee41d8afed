//! Nothing lost across a cut: the scenario every transport runs against its real server.
//!
//! A [`CutProxy`] sits between the bot and the server. The test asks the bot for a multi-line
//! answer, cuts the bot's connection in the middle of it (the server and the user stay up, as in
//! a network failure between the bot and its server), and checks that every line arrives
//! exactly once, in order, after the bot has reconnected. What a transport provides is a
//! [`ChatUser`]: a person on the same server who asks and reads.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy to `127.0.0.1:upstream` whose connections the test can cut all at once.
pub struct CutProxy {
    pub port: u16,
    cuts: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cuts, watcher) = watch::channel(0u64);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mut cut = watcher.clone();
                cut.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                    // Both sides close here, at once.
                });
            }
        });
        Self { port, cuts, task }
    }

    /// Cuts every connection open now; new ones are proxied as before.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A person on the chat service, in the room where the bot answers.
#[allow(async_fn_in_trait)]
pub trait ChatUser {
    /// Says `text` where the bot listens.
    async fn ask(&mut self, text: &str);
    /// The next line the bot says there; `None` if nothing comes within `within`.
    async fn next_from_bot(&mut self, within: Duration) -> Option<String>;
}

/// Asks for `n` numbered lines (`!lines n`, answered `line i of n`), cuts the bot's connection
/// after line `cut_after`, and checks that all `n` arrive exactly once and in order.
pub async fn nothing_lost_across_a_cut(
    user: &mut impl ChatUser,
    proxy: &CutProxy,
    n: usize,
    cut_after: usize,
    patience: Duration,
) {
    user.ask(&format!("!lines {n}")).await;
    let mut got = Vec::new();
    while got.len() < n {
        let Some(line) = user.next_from_bot(patience).await else {
            panic!(
                "after {} of {n} lines nothing more came within {patience:?}: {got:?}",
                got.len()
            );
        };
        got.push(line);
        if got.len() == cut_after {
            proxy.cut();
        }
    }
    let expected: Vec<String> = (1..=n).map(|i| format!("line {i} of {n}")).collect();
    assert_eq!(
        got, expected,
        "lines lost, repeated or out of order across the cut"
    );
    // Nothing more: no line said twice after the end.
    if let Some(extra) = user.next_from_bot(Duration::from_millis(500)).await {
        panic!("a line came twice: {extra:?}");
    }
}

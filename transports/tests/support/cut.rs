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

/// A TCP proxy to `127.0.0.1:upstream` whose connections the test can cut all at once, and
/// whose client-to-server direction it can hold: from [`CutProxy::hold`] until the next cut,
/// what the client writes is dropped (and kept for the test to read), so that what the client
/// sent meanwhile certainly never reached the server.
pub struct CutProxy {
    pub port: u16,
    cuts: watch::Sender<u64>,
    held: std::sync::Arc<std::sync::atomic::AtomicBool>,
    dropped: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    pub async fn start(upstream: u16) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cuts, watcher) = watch::channel(0u64);
        let held = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let dropped = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (h, d) = (held.clone(), dropped.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let mut cut = watcher.clone();
                cut.mark_unchanged();
                let (held, dropped) = (h.clone(), d.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async {
                        let mut buf = [0u8; 8192];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if held.load(Ordering::SeqCst) {
                                dropped.lock().unwrap().extend_from_slice(&buf[..n]);
                            } else if sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    let down = async {
                        let mut buf = [0u8; 8192];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if cw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        () = up => {}
                        () = down => {}
                        _ = cut.changed() => {}
                    }
                    // Both sides close here, at once.
                });
            }
        });
        Self {
            port,
            cuts,
            held,
            dropped,
            task,
        }
    }

    /// Cuts every connection open now; new ones are proxied as before (not held).
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
        self.held.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// From now until the next cut, what clients write is dropped instead of sent on.
    pub fn hold(&self) {
        self.held.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// What was dropped while held, as text.
    pub fn dropped(&self) -> String {
        String::from_utf8_lossy(&self.dropped.lock().unwrap()).into_owned()
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

/// A TCP proxy to `127.0.0.1:upstream` that changes what the client sends (each `from` becomes
/// `to`, of the same length, also across reads) and keeps a copy of what the server sent back,
/// for a server made to see what a client would not say.
pub struct RewriteProxy {
    pub port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RewriteProxy {
    pub async fn start(upstream: u16, from: &'static [u8], to: &'static [u8]) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        assert_eq!(from.len(), to.len(), "a rewrite keeps the length");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    // Bytes are held back while they could still be the start of `from`.
                    let mut pending: Vec<u8> = Vec::new();
                    let mut buf = [0u8; 8192];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        pending.extend_from_slice(&buf[..n]);
                        let mut i = 0;
                        while i + from.len() <= pending.len() {
                            if &pending[i..i + from.len()] == from {
                                pending[i..i + from.len()].copy_from_slice(to);
                                i += from.len();
                            } else {
                                i += 1;
                            }
                        }
                        let keep = (1..from.len())
                            .rev()
                            .find(|k| {
                                pending.len() >= *k
                                    && from.starts_with(&pending[pending.len() - k..])
                            })
                            .unwrap_or(0);
                        let out: Vec<u8> = pending.drain(..pending.len() - keep).collect();
                        if sw.write_all(&out).await.is_err() {
                            break;
                        }
                    }
                });
                let s = s.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 8192];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        s.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        Self { port, seen, task }
    }

    /// What the server has sent so far, as text.
    pub fn seen(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }
}

impl Drop for RewriteProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP proxy to `127.0.0.1:upstream` that holds every byte `one_way` in each direction
/// before passing it on, in order: a link with a round trip of twice that, on loopback.
pub struct DelayProxy {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    pub async fn start(upstream: u16, one_way: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(delayed(cr, sw, one_way));
                tokio::spawn(delayed(sr, cw, one_way));
            }
        });
        Self { port, task }
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read.
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let due = tokio::time::Instant::now() + delay;
                if tx.send((due, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! Test servers of the handlers' own, on loopback ports they pick.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use tokio::net::UdpSocket;

/// A DNS server on a loopback UDP port: answers from `zone`, NXDOMAIN for names it does not
/// have, SERVFAIL for `broken.test`, nothing at all for `slow.test`. Counts the queries.
pub async fn dns_server(zone: Vec<Record>) -> (SocketAddr, Arc<AtomicU32>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let queries = Arc::new(AtomicU32::new(0));
    let q = queries.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            q.fetch_add(1, Ordering::SeqCst);
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let Some(query) = req.queries.first().cloned() else {
                continue;
            };
            let qname = query.name.to_ascii().to_ascii_lowercase();
            if qname == "slow.test." {
                continue;
            }
            let mut resp = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
            resp.metadata.recursion_desired = req.metadata.recursion_desired;
            resp.metadata.recursion_available = true;
            resp.add_query(query.clone());
            if qname == "broken.test." {
                resp.metadata.response_code = ResponseCode::ServFail;
            } else {
                let known: Vec<&Record> = zone
                    .iter()
                    .filter(|r| r.name.to_ascii().to_ascii_lowercase() == qname)
                    .collect();
                if known.is_empty() {
                    resp.metadata.response_code = ResponseCode::NXDomain;
                } else {
                    for r in known {
                        if r.record_type() == query.query_type {
                            resp.add_answer(r.clone());
                        }
                    }
                }
            }
            let _ = sock.send_to(&resp.to_vec().unwrap(), peer).await;
        }
    });
    (addr, queries)
}

/// What the test HTTP server answers on one path.
#[derive(Clone, Debug)]
pub enum Page {
    /// Status, content type, body.
    Full(u16, &'static str, Vec<u8>),
    /// A redirect to the location.
    Redirect(String),
    /// Headers, then a byte a second, forever.
    Drip,
    /// Whatever the test puts there now: status, content type, body.
    Live(Arc<std::sync::Mutex<(u16, &'static str, Vec<u8>)>>),
}

/// An HTTP/1.1 server on a loopback port serving `pages` by path (404 otherwise); counts the
/// requests per path.
pub async fn http_server(
    pages: Vec<(&'static str, Page)>,
) -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    let (port, paths, _) = http_server_heads(pages).await;
    (port, paths)
}

/// Like [`http_server`], also keeping each request's head (request line and headers).
pub async fn http_server_heads(
    pages: Vec<(&'static str, Page)>,
) -> (
    u16,
    Arc<std::sync::Mutex<Vec<String>>>,
    Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = heads.clone();
    let l = log.clone();
    let pages: Arc<Vec<(&'static str, Page)>> = Arc::new(pages);
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let pages = pages.clone();
            let log = l.clone();
            let heads = h.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                log.lock().unwrap().push(path.clone());
                heads.lock().unwrap().push(head.clone());
                let page = pages
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, pg)| pg.clone());
                let out = match page {
                    None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                    Some(Page::Redirect(to)) => format!(
                        "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    .into_bytes(),
                    Some(Page::Live(now)) => {
                        let (status, ctype, body) = now.lock().unwrap().clone();
                        let mut o = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        o.extend_from_slice(&body);
                        o
                    }
                    Some(Page::Full(status, ctype, body)) => {
                        let mut o = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        o.extend_from_slice(&body);
                        o
                    }
                    Some(Page::Drip) => {
                        let _ = conn
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html><head>")
                            .await;
                        loop {
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                            if conn.write_all(b" ").await.is_err() {
                                return;
                            }
                        }
                    }
                };
                let _ = conn.write_all(&out).await;
            });
        }
    });
    (port, log, heads)
}

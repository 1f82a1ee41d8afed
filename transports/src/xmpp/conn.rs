//! Connecting and logging in: TCP (a configured host, or DNS SRV for the JID's domain),
//! STARTTLS or direct TLS with the shared rustls settings, SASL, and the stream restart after it.
//!
//! The XML stream itself (framing, parsing into typed stanzas) is `tokio-xmpp`'s; what happens
//! on the stream after login (binding, stream management, rooms) is the transport's.

use std::borrow::Cow;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures::{SinkExt, StreamExt};
use opsbot::transport::TransportError;
use sasl::common::{ChannelBinding, Credentials};
use tokio::io::{AsyncRead, AsyncWrite, BufStream, ReadBuf};
use tokio::net::TcpStream;
use tokio_xmpp::connect::DnsConfig;
use tokio_xmpp::jid::BareJid;
use tokio_xmpp::parsers::ns;
use tokio_xmpp::parsers::sm;
use tokio_xmpp::parsers::starttls;
use tokio_xmpp::parsers::stream_features::StreamFeatures;
use tokio_xmpp::xmlstream::{
    FallibleStreamElement, PendingFeaturesRecv, ReadError, RecvFeaturesError, StreamElementError,
    StreamHeader, Timeouts, XmppStream, XmppStreamElement, initiate_stream,
};

use super::config::XmppConfig;
use super::depth::Nesting;
use crate::common::{TLS_HANDSHAKE, TlsFailure, tls_connect};

/// A connected byte stream, plain or TLS.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

type BoxStream = Pin<Box<dyn Stream>>;

/// The logged-in stream the session reads and writes: the size cap on the raw bytes, then the
/// nesting bound, then the parser.
pub(crate) type Xml = XmppStream<BufStream<Nesting<Capped>>>;

/// A byte stream that refuses to read more than `cap` bytes between two resets: a server (or a
/// peer it relays) cannot make the parser hold an endless element in memory.
pub(crate) struct Capped {
    inner: BoxStream,
    since_reset: Arc<AtomicUsize>,
    cap: usize,
}

impl Capped {
    /// A handle with which the reader of whole elements says "one more arrived".
    pub(crate) fn counter(&self) -> Arc<AtomicUsize> {
        self.since_reset.clone()
    }
}

impl AsyncRead for Capped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match self.inner.as_mut().poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                let total = self.since_reset.fetch_add(n, Ordering::Relaxed) + n;
                if total > self.cap {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("an element of over {} bytes from the server", self.cap),
                    )));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.inner.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }
}

/// What login produced.
pub(crate) struct LoggedIn {
    pub(crate) stream: Xml,
    pub(crate) features: StreamFeatures,
    /// Resets the element size cap; call it for every element read.
    pub(crate) received: Arc<AtomicUsize>,
    /// Where the connection went, for `!status`.
    pub(crate) peer: String,
    pub(crate) security: &'static str,
}

fn conn_err(what: impl std::fmt::Display) -> TransportError {
    TransportError::Connection(what.to_string())
}

fn features_err(e: RecvFeaturesError) -> TransportError {
    match e {
        RecvFeaturesError::Io(e) => TransportError::Io(e),
        RecvFeaturesError::StreamError(e) => stream_error(&e.0),
    }
}

/// A stream error from the server: a refusal when retrying cannot help soon.
pub(crate) fn stream_error(e: &tokio_xmpp::parsers::stream_error::StreamError) -> TransportError {
    use tokio_xmpp::parsers::stream_error::DefinedCondition as C;
    let text = e.texts.values().next().cloned().unwrap_or_default();
    let why = format!("stream error {:?} {text}", e.condition);
    match e.condition {
        // Another client took our resource, or the server will not have us: reconnecting at
        // once would only fight the other client or anger the server.
        C::Conflict | C::NotAuthorized | C::PolicyViolation | C::HostUnknown => {
            TransportError::Refused(why.trim_end().to_owned())
        }
        _ => TransportError::Connection(why.trim_end().to_owned()),
    }
}

async fn tcp(cfg: &XmppConfig, domain: &str) -> Result<(TcpStream, String), TransportError> {
    let tcp = match &cfg.server {
        Some(host) => {
            let port = cfg.port.unwrap_or(if cfg.direct_tls { 5223 } else { 5222 });
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| conn_err(format!("connecting to {host}:{port}: {e}")))?;
            return Ok((tcp, format!("{host}:{port}")));
        }
        None => {
            let dns = if cfg.direct_tls {
                DnsConfig::srv_xmpps(domain)
            } else {
                DnsConfig::srv_default_client(domain)
            };
            dns.resolve()
                .await
                .map_err(|e| conn_err(format!("connecting to {domain}: {e}")))?
        }
    };
    let peer = tcp
        .peer_addr()
        .map_or_else(|_| domain.to_owned(), |a| a.to_string());
    Ok((tcp, peer))
}

async fn tls(stream: BoxStream, domain: &str, ca_file: Option<&Path>) -> io::Result<BoxStream> {
    match tls_connect(stream, domain, ca_file).await {
        Ok(stream) => Ok(Box::pin(stream)),
        Err(TlsFailure::Setup(e) | TlsFailure::Handshake(e)) => Err(e),
        Err(TlsFailure::TimedOut) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no TLS answer from {domain} within {}s",
                TLS_HANDSHAKE.as_secs()
            ),
        )),
    }
}

async fn open<S: tokio::io::AsyncBufRead + AsyncWrite + Unpin>(
    io: S,
    domain: &str,
    timeouts: Timeouts,
) -> Result<PendingFeaturesRecv<S>, TransportError> {
    Ok(initiate_stream(
        io,
        ns::JABBER_CLIENT,
        StreamHeader {
            to: Some(Cow::Borrowed(domain)),
            from: None,
            id: None,
        },
        timeouts,
    )
    .await?)
}

/// The next element while logging in and setting the stream up (binding, acknowledgements);
/// soft timeouts are waited out (the hard one ends it).
pub(crate) async fn next<S: tokio::io::AsyncBufRead + AsyncWrite + Unpin>(
    stream: &mut XmppStream<S>,
) -> Result<XmppStreamElement, TransportError> {
    loop {
        match stream.next().await {
            None | Some(Err(ReadError::StreamFooterReceived)) => {
                return Err(conn_err("the server closed the stream while logging in"));
            }
            Some(Err(ReadError::SoftTimeout)) => {}
            Some(Err(ReadError::HardError(e))) => return Err(e.into()),
            Some(Err(ReadError::ParseError(e))) => {
                return Err(conn_err(format!("unreadable XML while logging in: {e}")));
            }
            Some(Ok(FallibleStreamElement::Err(StreamElementError::InvalidNonza {
                qname,
                ..
            }))) if qname.0.as_str() == ns::SM && qname.1.as_str() == "failed" => {
                // XEP-0198 makes `h` optional on <failed/> (Prosody leaves it out);
                // xmpp-parsers 0.23 requires it.
                return Ok(XmppStreamElement::SM(sm::Nonza::Failed(sm::Failed {
                    h: None,
                    error: None,
                })));
            }
            Some(Ok(el)) => match el.into_read_error() {
                Ok(XmppStreamElement::StreamError(e)) => return Err(stream_error(&e.0)),
                Ok(el) => return Ok(el),
                Err(e) => return Err(conn_err(format!("while logging in: {e}"))),
            },
        }
    }
}

/// Connects, encrypts and authenticates; answers the stream after SASL with its features
/// (resource binding and stream management are the session's).
/// Elements the nesting bound empties are counted in `emptied`.
pub(crate) async fn login(
    cfg: &XmppConfig,
    timeouts: Timeouts,
    max_element: usize,
    emptied: Arc<std::sync::atomic::AtomicU64>,
) -> Result<LoggedIn, TransportError> {
    let jid: BareJid = cfg.bare_jid();
    let domain = jid.domain().to_string();
    let (tcp, peer) = tcp(cfg, &domain).await?;
    tcp.set_nodelay(true)?;
    let mut raw: BoxStream = Box::pin(QuickAck(tcp));
    let security;
    if cfg.tls && cfg.direct_tls {
        raw = tls(raw, &domain, cfg.ca_file.as_deref()).await?;
        security = "direct TLS";
    } else if cfg.tls {
        let (features, mut plain) = open(BufStream::new(raw), &domain, timeouts)
            .await?
            .recv_features::<FallibleStreamElement>()
            .await
            .map_err(features_err)?;
        if !features.can_starttls() {
            // A downgrade, or a server that cannot encrypt: never send the password in clear.
            return Err(TransportError::Refused(format!(
                "{domain} does not offer STARTTLS; set tls = false only for a local server"
            )));
        }
        plain
            .send(&XmppStreamElement::Starttls(starttls::Nonza::Request(
                starttls::Request,
            )))
            .await?;
        match next(&mut plain).await? {
            XmppStreamElement::Starttls(starttls::Nonza::Proceed(_)) => {}
            other => {
                return Err(conn_err(format!(
                    "STARTTLS refused by the server: {other:?}"
                )));
            }
        }
        raw = tls(
            plain.into_inner().into_inner(),
            &domain,
            cfg.ca_file.as_deref(),
        )
        .await?;
        security = "STARTTLS";
    } else {
        security = "plaintext (loopback)";
    }
    let capped = Capped {
        inner: raw,
        since_reset: Arc::default(),
        cap: max_element,
    };
    let received = capped.counter();
    let nesting = Nesting::new(capped, emptied);
    let restart = nesting.restart_handle();
    let (features, stream) = open(BufStream::new(nesting), &domain, timeouts)
        .await?
        .recv_features::<FallibleStreamElement>()
        .await
        .map_err(features_err)?;
    let node = jid.node().map(ToString::to_string).unwrap_or_default();
    let creds = Credentials::default()
        .with_username(node)
        .with_password(cfg.password.expose())
        .with_channel_binding(ChannelBinding::None);
    let authed = tokio_xmpp::client_login(stream, features.sasl_mechanisms, creds)
        .await
        .map_err(|e| match e {
            tokio_xmpp::Error::Auth(e) => {
                TransportError::Refused(format!("authentication failed: {e}"))
            }
            tokio_xmpp::Error::Io(e) => TransportError::Io(e),
            other => conn_err(format!("logging in: {other}")),
        })?;
    // The server starts a new stream after SASL: its root is the new top.
    restart.store(true, Ordering::Release);
    let (features, stream) = authed
        .send_header(StreamHeader {
            to: Some(Cow::Borrowed(&domain)),
            from: None,
            id: None,
        })
        .await?
        .recv_features::<FallibleStreamElement>()
        .await
        .map_err(features_err)?;
    received.store(0, Ordering::Relaxed);
    Ok(LoggedIn {
        stream,
        features,
        received,
        peer,
        security,
    })
}

/// A TCP stream that acknowledges what it reads at once (`TCP_QUICKACK`, set again after each
/// read: Linux leaves quick-ack mode by itself). Stream management answers the server's
/// questions lazily, so no data of ours may go out soon after one; a delayed acknowledgement
/// then keeps the server's next stanza back for up to 40 ms where the server leaves Nagle's
/// algorithm on (Prosody does).
struct QuickAck(TcpStream);

impl QuickAck {
    fn ack_now(&self) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let _ = socket2::SockRef::from(&self.0).set_tcp_quickack(true);
        }
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.0).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.ack_now();
        }
        r
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

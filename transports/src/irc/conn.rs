//! The socket: TCP or TLS, lenient line reading, and writing whole lines.
//!
//! Reading is byte-based: a line that is not valid UTF-8 is decoded as Latin-1 (old networks and
//! channels send it every day), and a line longer than [`MAX_LINE`] is skipped whole and logged.
//! Neither ends the connection: one bad line is an event, not a stream error.

use std::io;
use std::path::Path;
use std::pin::Pin;

use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf,
};
use tokio::net::TcpStream;

use crate::common::{TLS_HANDSHAKE, TlsFailure, tls_connect};

/// Longest line read from a server: 512 bytes of message plus 8 KiB of IRCv3 tags.
pub(crate) const MAX_LINE: usize = 512 + 8192;

/// A connected stream, plain or TLS.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

pub(crate) type BoxStream = Pin<Box<dyn Stream>>;

/// Connects to `host:port`, over TLS if asked.
pub(crate) async fn connect(
    host: &str,
    port: u16,
    tls: bool,
    ca_file: Option<&Path>,
) -> io::Result<BoxStream> {
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    if !tls {
        return Ok(Box::pin(tcp));
    }
    match tls_connect(tcp, host, ca_file).await {
        Ok(stream) => Ok(Box::pin(stream)),
        Err(TlsFailure::Setup(e)) => Err(e),
        Err(TlsFailure::Handshake(e)) => {
            // A plain-text server answers a TLS hello with an IRC line (not a TLS record) or
            // by hanging up.
            let text = e.to_string();
            let plain = e.kind() == io::ErrorKind::UnexpectedEof
                || text.contains("InvalidContentType")
                || text.contains("corrupt message");
            if plain {
                Err(io::Error::new(
                    e.kind(),
                    format!("TLS handshake with {host}:{port} failed ({text}): {PLAIN_HINT}"),
                ))
            } else {
                Err(io::Error::new(
                    e.kind(),
                    format!("TLS handshake with {host}:{port} failed: {text}"),
                ))
            }
        }
        Err(TlsFailure::TimedOut) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no TLS answer from {host}:{port} within {}s: {PLAIN_HINT}",
                TLS_HANDSHAKE.as_secs()
            ),
        )),
    }
}

/// What to try when a TLS handshake fails the way it does with a plain-text server.
const PLAIN_HINT: &str =
    "the server may not speak TLS on this port: set tls = false, or use its TLS port (often 6697)";

/// What the reader produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    /// A decoded line, without its line ending.
    Line(String),
    /// A line that was too long and was skipped (its length so far).
    Oversized(usize),
}

/// Reads lines leniently.
pub(crate) struct LineReader {
    inner: BufReader<ReadHalf<BoxStream>>,
    buf: Vec<u8>,
}

impl LineReader {
    pub(crate) fn new(inner: ReadHalf<BoxStream>) -> Self {
        Self {
            inner: BufReader::with_capacity(16 * 1024, inner),
            buf: Vec::with_capacity(1024),
        }
    }

    /// The next line; `None` at the end of the stream. Cancel-safe: a partial line stays
    /// buffered for the next call.
    pub(crate) async fn next(&mut self) -> io::Result<Option<Read>> {
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                return Ok(None);
            }
            let (take, done) = match available.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (available.len(), false),
            };
            // Keep at most MAX_LINE + 1 bytes of a line: enough to know it was too long.
            let room = (MAX_LINE + 1).saturating_sub(self.buf.len());
            self.buf.extend_from_slice(&available[..take.min(room)]);
            self.inner.consume(take);
            if done {
                let raw = std::mem::take(&mut self.buf);
                if raw.len() > MAX_LINE {
                    return Ok(Some(Read::Oversized(raw.len())));
                }
                return Ok(Some(Read::Line(decode(&raw))));
            }
        }
    }
}

/// UTF-8 if it is, else Latin-1; line endings removed.
pub(crate) fn decode(raw: &[u8]) -> String {
    let trimmed = raw.strip_suffix(b"\n").unwrap_or(raw);
    let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
    match std::str::from_utf8(trimmed) {
        Ok(s) => s.to_owned(),
        Err(_) => trimmed.iter().map(|&b| char::from(b)).collect(),
    }
}

/// Writes whole lines.
pub(crate) struct LineWriter {
    inner: WriteHalf<BoxStream>,
}

impl LineWriter {
    pub(crate) fn new(inner: WriteHalf<BoxStream>) -> Self {
        Self { inner }
    }

    /// Writes one line, which must already end with CRLF and hold no other line break.
    pub(crate) async fn write_line(&mut self, line: &str) -> io::Result<()> {
        debug_assert!(
            line.ends_with("\r\n") && !line[..line.len() - 2].contains(['\r', '\n', '\0'])
        );
        self.inner.write_all(line.as_bytes()).await?;
        self.inner.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_lines_decode_instead_of_failing() {
        assert_eq!(decode(b"caf\xe9 ok\r\n"), "café ok");
        assert_eq!(decode("café\n".as_bytes()), "café");
    }

    #[tokio::test]
    async fn oversized_lines_are_skipped_and_reading_goes_on() {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let stream: BoxStream = Box::pin(client);
        let (r, _w) = tokio::io::split(stream);
        let mut reader = LineReader::new(r);
        let mut data = vec![b'x'; 20_000];
        data.extend_from_slice(b"\r\nPING :ok\r\n\xff\xfe\r\n");
        tokio::spawn(async move {
            server.write_all(&data).await.unwrap();
        });
        assert!(matches!(reader.next().await.unwrap(), Some(Read::Oversized(n)) if n > MAX_LINE));
        assert_eq!(
            reader.next().await.unwrap(),
            Some(Read::Line("PING :ok".into()))
        );
        assert_eq!(reader.next().await.unwrap(), Some(Read::Line("ÿþ".into())));
    }
}

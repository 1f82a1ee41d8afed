//! A bound on how deeply the elements a server sends may nest, enforced on the bytes before
//! the XML parser sees them.
//!
//! The parser builds each stanza as a tree and frees it recursively, so a stanza nested some
//! thousands of levels deep (about 56 KB of `<a>`, well under any size limit, and relayed by
//! servers as it is) would overflow the stack of the bot's thread and abort the whole process.
//! [`Nesting`] reads the stream with a small XML lexer (tags, attribute quotes, comments, CDATA,
//! processing instructions), holds each top-level element (a stanza, or a stream-management
//! nonza) until it is complete, and hands it on unchanged when it stays within
//! [`MAX_NESTING`] levels. A deeper one is handed on *emptied*: its own start tag, closed at
//! once (`<message from=… id=…/>`), so the stream stays well-formed, the stanza counts for
//! stream management (the server's count and ours stay equal), and with no body it runs
//! nothing. The connection carries on; nothing deeper than the bound is ever parsed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Levels an element read from the server may span, itself included (a stanza with a child
/// that has a child is three). Real stanzas use a handful; `pubsub` events about eight.
pub(crate) const MAX_NESTING: usize = 16;

/// Where the lexer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lex {
    /// Character data.
    Text,
    /// Just after `<`.
    Open,
    /// Inside a start tag; `quote` while in an attribute value, `slash` after a `/`.
    Start { quote: Option<u8>, slash: bool },
    /// Inside an end tag.
    End,
    /// A processing instruction (or the XML declaration); `q` after a `?`.
    Pi { q: bool },
    /// After `<!`: the bytes that tell a comment from CDATA from a declaration.
    Bang { seen: u8 },
    /// A comment; `dashes` counts the `-` just before.
    Comment { dashes: u8 },
    /// A CDATA section; `brackets` counts the `]` just before.
    Cdata { brackets: u8 },
    /// A declaration (`<!DOCTYPE …>`, which XMPP forbids; the parser refuses it).
    Decl,
}

const CDATA: &[u8] = b"[CDATA[";

/// The nesting bound as a filter over bytes; see the [module documentation](self).
#[derive(Debug)]
pub(crate) struct Filter {
    lex: Lex,
    /// Open elements, the stream's root included.
    depth: usize,
    /// The top-level element being held back, from its `<`.
    held: Vec<u8>,
    /// Whether bytes are being held (a top-level element has begun).
    holding: bool,
    /// Where the held element's start tag ends (just past its `>`), once it has.
    start_end: Option<usize>,
    /// The depth of the element being dropped, while one is.
    dropping: Option<usize>,
    /// Whether the held element lost a part.
    emptied: bool,
    /// Elements emptied so far.
    count: Arc<AtomicU64>,
    /// The names of the open elements (while not dropping), to see an end tag that closes
    /// another element than the open one: XML that does not parse.
    names: Vec<Vec<u8>>,
    /// The name of the tag being read (its first bytes).
    name: Vec<u8>,
    /// Whether the tag's name is still being read.
    in_name: bool,
    /// Set once the XML is broken (a mismatched end tag): everything is handed on as it is,
    /// so that the parser sees the fault and the stream ends.
    broken: bool,
}

/// The longest element name compared; a longer one is compared by its start.
const NAME_MAX: usize = 256;

impl Filter {
    pub(crate) fn new(count: Arc<AtomicU64>) -> Self {
        Self {
            lex: Lex::Text,
            depth: 0,
            held: Vec::new(),
            holding: false,
            start_end: None,
            dropping: None,
            emptied: false,
            count,
            names: Vec::new(),
            name: Vec::new(),
            in_name: false,
            broken: false,
        }
    }

    /// Starts over, for a new stream on the same connection (after STARTTLS or SASL).
    pub(crate) fn reset(&mut self) {
        *self = Self::new(self.count.clone());
    }

    /// Passes `input` on into `out`, holding back and emptying as described above.
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for (i, &b) in input.iter().enumerate() {
            if self.broken {
                out.extend_from_slice(&input[i..]);
                return;
            }
            self.byte(b, out);
        }
    }

    /// Collects a byte of the tag's name, until the name ends.
    fn name_byte(&mut self, b: u8) {
        if !self.in_name {
            return;
        }
        if b.is_ascii_whitespace() || b == b'/' || b == b'>' {
            self.in_name = false;
        } else if self.name.len() < NAME_MAX {
            self.name.push(b);
        }
    }

    /// The XML is broken: hand on what is held and everything after it.
    fn break_open(&mut self, out: &mut Vec<u8>) {
        if self.holding {
            out.extend_from_slice(&self.held);
            self.held.clear();
            self.holding = false;
        }
        self.broken = true;
    }

    fn keep(&mut self, b: u8, out: &mut Vec<u8>) {
        if self.dropping.is_some() {
            return;
        }
        if self.holding {
            if !(self.emptied && self.start_end.is_some()) {
                self.held.push(b);
            }
        } else {
            out.push(b);
        }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        match self.lex {
            Lex::Text => {
                if b == b'<' {
                    self.lex = Lex::Open;
                    if self.depth == 1 && !self.holding {
                        // Perhaps a top-level element: hold it until we know.
                        self.holding = true;
                        self.held.clear();
                        self.start_end = None;
                        self.emptied = false;
                    }
                }
                self.keep(b, out);
            }
            Lex::Open => match b {
                b'/' => {
                    self.lex = Lex::End;
                    self.name.clear();
                    self.in_name = true;
                    self.keep(b, out);
                }
                b'?' => {
                    self.lex = Lex::Pi { q: false };
                    self.keep(b, out);
                }
                b'!' => {
                    self.lex = Lex::Bang { seen: 0 };
                    self.keep(b, out);
                }
                _ => {
                    self.lex = Lex::Start {
                        quote: None,
                        slash: false,
                    };
                    self.name.clear();
                    self.name.push(b);
                    self.in_name = true;
                    self.depth += 1;
                    if self.dropping.is_none() && self.depth > MAX_NESTING + 1 {
                        // Too deep: of the held element, only its start tag is kept (this
                        // element's `<`, already held, goes with the rest).
                        self.dropping = Some(self.depth);
                        self.emptied = true;
                        if let Some(end) = self.start_end {
                            self.held.truncate(end);
                        }
                    }
                    self.keep(b, out);
                }
            },
            Lex::Start { quote, slash } => {
                self.keep(b, out);
                if quote.is_none() {
                    let was = self.in_name;
                    self.name_byte(b);
                    if was && !self.in_name && self.dropping.is_none() {
                        self.names.push(std::mem::take(&mut self.name));
                    }
                }
                match (quote, b) {
                    (Some(q), c) if c == q => {
                        self.lex = Lex::Start { quote: None, slash };
                    }
                    (Some(_), _) => {}
                    (None, b'"' | b'\'') => {
                        self.lex = Lex::Start {
                            quote: Some(b),
                            slash: false,
                        };
                    }
                    (None, b'/') => {
                        self.lex = Lex::Start {
                            quote: None,
                            slash: true,
                        };
                    }
                    (None, b'>') => {
                        self.lex = Lex::Text;
                        if self.holding && self.depth == 2 && self.start_end.is_none() {
                            self.start_end = Some(self.held.len());
                        }
                        if slash {
                            if self.dropping.is_none() {
                                self.names.pop();
                            }
                            self.close(out);
                        }
                    }
                    (None, _) => {
                        self.lex = Lex::Start {
                            quote: None,
                            slash: false,
                        };
                    }
                }
            }
            Lex::End => {
                self.keep(b, out);
                self.name_byte(b);
                if b == b'>' {
                    self.lex = Lex::Text;
                    if self.dropping.is_none() {
                        let open = self.names.pop();
                        if open.as_deref() != Some(self.name.as_slice()) {
                            self.break_open(out);
                            return;
                        }
                    }
                    self.close(out);
                }
            }
            Lex::Pi { q } => {
                self.keep(b, out);
                self.lex = match (q, b) {
                    (true, b'>') => {
                        self.release(out);
                        Lex::Text
                    }
                    (_, b'?') => Lex::Pi { q: true },
                    _ => Lex::Pi { q: false },
                };
            }
            Lex::Bang { seen } => {
                self.keep(b, out);
                self.lex = if seen == 0 && b == b'-' {
                    Lex::Comment { dashes: 0 }
                } else if usize::from(seen) < CDATA.len() && CDATA[usize::from(seen)] == b {
                    if usize::from(seen) + 1 == CDATA.len() {
                        Lex::Cdata { brackets: 0 }
                    } else {
                        Lex::Bang { seen: seen + 1 }
                    }
                } else if b == b'>' {
                    self.release(out);
                    Lex::Text
                } else {
                    Lex::Decl
                };
            }
            Lex::Comment { dashes } => {
                self.keep(b, out);
                // `<!--` leaves one dash counted; the comment ends at the first `-->` after it.
                self.lex = match b {
                    b'-' => Lex::Comment {
                        dashes: dashes.saturating_add(1),
                    },
                    b'>' if dashes >= 2 => {
                        self.release(out);
                        Lex::Text
                    }
                    _ => Lex::Comment { dashes: 0 },
                };
            }
            Lex::Cdata { brackets } => {
                self.keep(b, out);
                self.lex = match b {
                    b']' => Lex::Cdata {
                        brackets: brackets.saturating_add(1),
                    },
                    b'>' if brackets >= 2 => Lex::Text,
                    _ => Lex::Cdata { brackets: 0 },
                };
            }
            Lex::Decl => {
                self.keep(b, out);
                if b == b'>' {
                    self.release(out);
                    self.lex = Lex::Text;
                }
            }
        }
    }

    /// An element ended (an end tag, or a start tag that closed itself).
    fn close(&mut self, out: &mut Vec<u8>) {
        if self.dropping == Some(self.depth) {
            self.dropping = None;
        }
        self.depth = self.depth.saturating_sub(1);
        if self.depth <= 1 {
            self.release(out);
        }
    }

    /// Hands on what is held, if anything: at depth 1 nothing is open but the stream, so the
    /// held bytes are a whole top-level element (or the stream's own end, or a comment).
    fn release(&mut self, out: &mut Vec<u8>) {
        if !self.holding || self.depth > 1 {
            return;
        }
        self.holding = false;
        match (self.emptied, self.start_end) {
            (true, Some(end)) => {
                // The start tag alone, closed at once: `<message a='b'>` becomes
                // `<message a='b'/>`.
                let tag = &self.held[..end.saturating_sub(1)];
                out.extend_from_slice(tag);
                out.extend_from_slice(b"/>");
                self.count.fetch_add(1, Ordering::Relaxed);
                let shown: String = String::from_utf8_lossy(&tag[..tag.len().min(200)])
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                tracing::warn!(
                    stanza = %opsbot::text::Escaped(&shown),
                    max = MAX_NESTING,
                    "an element from the server nested too deeply was emptied"
                );
            }
            _ => out.extend_from_slice(&self.held),
        }
        self.held.clear();
        self.start_end = None;
        self.emptied = false;
    }
}

/// A byte stream read through a [`Filter`].
pub(crate) struct Nesting<S> {
    inner: S,
    filter: Filter,
    /// Filtered bytes not yet read, from `pos`.
    out: Vec<u8>,
    pos: usize,
    scratch: Box<[u8]>,
    reset: Arc<AtomicBool>,
}

impl<S> Nesting<S> {
    /// Reads `inner` through a filter that counts what it empties in `emptied`.
    pub(crate) fn new(inner: S, emptied: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            filter: Filter::new(emptied),
            out: Vec::new(),
            pos: 0,
            scratch: vec![0; 8192].into_boxed_slice(),
            reset: Arc::default(),
        }
    }

    /// A handle that makes the filter start over before its next read (a stream restart).
    pub(crate) fn restart_handle(&self) -> Arc<AtomicBool> {
        self.reset.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Nesting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.pos < this.out.len() {
                let n = (this.out.len() - this.pos).min(buf.remaining());
                buf.put_slice(&this.out[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.out.len() {
                    this.out.clear();
                    this.pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.reset.swap(false, Ordering::AcqRel) {
                this.filter.reset();
            }
            let mut rb = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let got = rb.filled();
            if got.is_empty() {
                return Poll::Ready(Ok(())); // the end of the stream
            }
            this.filter.feed(got, &mut this.out);
            // All of it may have been held back: read on.
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Nesting<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (String, u64) {
        let mut f = Filter::new(Arc::default());
        let mut out = Vec::new();
        for c in chunks {
            f.feed(c, &mut out);
        }
        (
            String::from_utf8(out).unwrap(),
            f.count.load(Ordering::Relaxed),
        )
    }

    fn nested(levels: usize) -> String {
        format!("{}{}", "<a>".repeat(levels), "</a>".repeat(levels))
    }

    const HEAD: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
                        xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

    #[test]
    fn ordinary_streams_pass_unchanged_in_any_chunking() {
        let text = format!(
            "{HEAD}<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>\
             </stream:features> <message from='a@b/c' id='1' title=\"x > y / z\"><body>1 &lt; 2 \
             &amp; 3 > 2</body><x><![CDATA[<not><a><tag>]]></x></message>\n\
             <r xmlns='urn:xmpp:sm:3'/><!-- a <comment> --></stream:stream>"
        );
        for size in [1, 2, 3, 7, 64, 10_000] {
            let chunks: Vec<&[u8]> = text.as_bytes().chunks(size).collect();
            assert_eq!(run(&chunks), (text.clone(), 0), "chunks of {size}");
        }
    }

    #[test]
    fn a_stanza_within_the_bound_passes_and_a_deeper_one_is_emptied() {
        let ok = format!(
            "{HEAD}<message id='1'>{}</message>",
            nested(MAX_NESTING - 1)
        );
        assert_eq!(run(&[ok.as_bytes()]), (ok.clone(), 0));
        let deep = format!(
            "{HEAD}<message from='m@x/y' id='2'><body>!echo hi</body>{}</message>\
             <message id='3'><body>next</body></message>",
            nested(8000)
        );
        let (out, n) = run(&[deep.as_bytes()]);
        assert_eq!(
            out,
            format!(
                "{HEAD}<message from='m@x/y' id='2'/><message id='3'><body>next</body></message>"
            )
        );
        assert_eq!(n, 1);
        // One level over the bound is enough to empty it.
        let over = format!("{HEAD}<message id='4'>{}</message>", nested(MAX_NESTING));
        assert_eq!(
            run(&[over.as_bytes()]),
            (format!("{HEAD}<message id='4'/>"), 1)
        );
    }

    #[test]
    fn deep_nesting_split_across_reads_and_self_closing_tags_are_counted_right() {
        let deep = format!(
            "{HEAD}<iq type='get' id='q'>{}<b/><c x='/>'/></iq><a xmlns='urn:xmpp:sm:3' h='1'/>",
            nested(50)
        );
        let chunks: Vec<&[u8]> = deep.as_bytes().chunks(5).collect();
        assert_eq!(
            run(&chunks),
            (
                format!("{HEAD}<iq type='get' id='q'/><a xmlns='urn:xmpp:sm:3' h='1'/>"),
                1
            )
        );
    }

    #[test]
    fn markup_inside_comments_cdata_and_attributes_does_not_count() {
        let tricky = format!(
            "{HEAD}<message id='1' a='<<<<' b=\"<x><y>\"><!--<a><a><a>--><body><![CDATA[{}]]></body></message>",
            "<a>".repeat(100)
        );
        assert_eq!(run(&[tricky.as_bytes()]), (tricky.clone(), 0));
    }

    /// XML that does not parse is handed on at once, so that the parser sees it: an end tag
    /// that closes another element than the open one was held back with the element.
    #[test]
    fn a_mismatched_end_tag_is_handed_on_at_once() {
        let text = format!("{HEAD}<message from='a@b/c'><body>x</wrong><message id='2'/>");
        let (out, n) = run(&[text.as_bytes()]);
        assert_eq!(out, text);
        assert_eq!(n, 0);
        let ok = format!("{HEAD}<a><b/><c x='1'></c><d:e xmlns:d='u'></d:e></a>");
        assert_eq!(run(&[ok.as_bytes()]), (ok.clone(), 0));
    }

    #[test]
    fn a_restarted_stream_counts_from_its_own_root() {
        let mut f = Filter::new(Arc::default());
        let mut out = Vec::new();
        f.feed(format!("{HEAD}<success/>").as_bytes(), &mut out);
        f.reset();
        out.clear();
        let second = format!("{HEAD}<message>{}</message>", nested(MAX_NESTING - 1));
        f.feed(second.as_bytes(), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), second);
    }
}

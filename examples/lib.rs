//! Runnable opsbot examples; see `hello.rs` (a handler) and `poller.rs` (a poller), and the
//! `*.toml` configs beside them (`opsbot run --config examples/<file>.toml`).

/// The README's Rust snippets, compiled (and where they can be, run) as this crate's doctests,
/// so that what a newcomer copies works as copied.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeSnippets;

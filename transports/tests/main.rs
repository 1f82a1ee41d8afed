//! The crate's integration tests, one module per subject, linked into one test binary:
//! the crate's dependencies are linked once, not once per file. Run one subject with
//! `cargo test -p opsbot-transports --test transports irc::`.

mod support;

#[cfg(feature = "irc")]
mod irc;
#[cfg(feature = "irc")]
mod irc_hostile;
#[cfg(feature = "matrix")]
mod matrix;
#[cfg(feature = "webex")]
mod webex;
#[cfg(feature = "xmpp")]
mod xmpp;
#[cfg(feature = "xmpp")]
mod xmpp_hostile;

//! The crate's integration tests, one module per subject, linked into one test binary:
//! the crate's dependencies are linked once, not once per file. Run one subject with
//! `cargo test -p opsbot-bots --test bots cli::`.

mod common;
#[cfg(feature = "kubernetes")]
#[path = "../../transports/tests/support/kubernetes.rs"]
mod fake_kubernetes;
#[cfg(all(feature = "cluster", feature = "irc"))]
#[path = "common/node.rs"]
mod node;
#[path = "../../transports/tests/support/mod.rs"]
mod support;

mod cli;
mod engine;
mod first_hour;
#[cfg(all(feature = "cluster", feature = "irc"))]
mod standby;
mod status_api;

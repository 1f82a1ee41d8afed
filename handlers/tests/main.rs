//! The crate's integration tests, one module per subject, linked into one test binary:
//! the crate's dependencies are linked once, not once per file. Run one subject with
//! `cargo test -p opsbot-handlers --test handlers links::`.

mod support;

mod breakers;
mod builtins;
mod dns;
mod links;
mod pollers;

//! The crate's integration tests, one module per subject, linked into one test binary:
//! the crate's dependencies are linked once, not once per file. Run one subject with
//! `cargo test -p opsbot --test framework router::`.

mod cards;
mod conversation;
mod faults;
mod layers;
mod lead;
mod livez;
mod outbox;
mod poller;
mod resilience;
mod rich;
mod router;
mod supervision;
mod systemd;
mod voice;
mod window;

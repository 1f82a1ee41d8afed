//! The self-healing engine: alerts from Alertmanager and signed events from anything else come
//! in over the status API's HTTP server; routes post them to rooms; rules decide what to do,
//! people approve in chat, actions run once, and every step is an entry in a hash-chained
//! audit trail.
//!
//! The framework knows nothing of this crate: it is built on the framework's public surface
//! (the state store, the shared HTTP client, handlers), as any crate of one's own could be.

pub mod action;
pub mod alert;
pub mod audit;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod core;
pub mod driver;
pub mod http;
pub mod kubernetes;
pub mod record;
pub mod rules;
pub mod signature;

pub use commands::EngineCommands;
pub use driver::Engine;

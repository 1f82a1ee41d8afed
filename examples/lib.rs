//! Runnable opsbot examples; see `hello.rs` (a handler) and `poller.rs` (a poller), and the
//! `*.toml` configs beside them (`opsbot run --config examples/<file>.toml`).

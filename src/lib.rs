//! Headwater: a headless, Node-RED-like IoT gateway with its own MQTT broker.
//!
//! The library is the whole gateway; `main.rs` only calls [`cli::main`].

/// mimalloc instead of glibc's malloc: messages are allocated on one worker thread and
/// freed on another, which glibc serialises on an arena lock (measured: a third of the
/// built-in chain benchmark went to futex waits). See docs/decisions/001-allocator.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod broker;
pub mod cli;
pub mod engine;
pub mod flow;
pub mod nodes;
pub mod plugin;
pub mod script;
pub mod store;

//! Headwater: a headless, Node-RED-like IoT gateway with its own MQTT broker.
//!
//! The library is the whole gateway; `main.rs` only calls [`cli::main`].

pub mod cli;
pub mod engine;
pub mod flow;
pub mod nodes;
pub mod script;

//! Node kinds: one file per `type:`, under `sources/`, `transforms/` and `sinks/`,
//! each listed once in `registry.rs`; `mqtt.rs` holds what the MQTT kinds share.

pub mod mqtt;
pub mod registry;
pub mod serial;
pub mod sinks;
pub mod sources;
pub mod transforms;

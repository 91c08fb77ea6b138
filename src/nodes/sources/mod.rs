//! Source node kinds: they produce messages and take no inputs.

pub mod mqtt_in;
pub mod serial_in;
pub mod timer;

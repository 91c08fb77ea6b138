//! Sink node kinds: they commit messages somewhere; only their `error` port feeds others.

pub mod file;
pub mod log;
pub mod mqtt_out;
pub mod serial_out;

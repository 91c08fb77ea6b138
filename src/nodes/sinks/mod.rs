//! Sink node kinds: they commit messages somewhere; only their `error` port feeds others.

pub mod file;
pub mod gpio_out;
pub mod http_out;
pub mod http_retry;
pub mod influx_out;
pub mod log;
pub mod mqtt_out;
pub mod serial_out;
pub mod sql_out;

//! Source node kinds: they produce messages and take no inputs.

pub mod gpio_in;
pub mod gpio_pulse;
pub mod mqtt_in;
pub mod serial_in;
pub mod timer;

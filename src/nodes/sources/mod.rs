//! Source node kinds: they produce messages and take no inputs.

pub mod timer;

//! Transform node kinds: they read inputs and emit on their ports.

pub mod condition;
pub mod filter;
pub mod switch;

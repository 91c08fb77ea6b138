//! Transform node kinds: they read inputs and emit on their ports.

pub mod change;
pub mod condition;
pub mod dedupe;
pub mod delay;
pub mod filter;
pub mod json;
pub mod rate_limit;
pub mod script;
pub mod switch;
pub mod trigger;
pub mod wasm;
pub mod window;

//! Transform node kinds: they read inputs and emit on their ports.

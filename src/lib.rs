//! Headwater: a headless, Node-RED-like IoT gateway with its own MQTT broker.
//!
//! The library is the whole gateway; `main.rs` only calls [`cli::main`].

/// mimalloc instead of glibc's malloc: messages are allocated on one worker thread and
/// freed on another, which glibc serialises on an arena lock (measured: a third of the
/// built-in chain benchmark went to futex waits). See docs/decisions/001-allocator.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe extern "C" {
    /// mimalloc's own: frees what other threads released into this thread's pages and
    /// returns empty pages to the OS.
    fn mi_collect(force: bool);
}

/// Called by a runtime worker each time it goes idle: lets mimalloc take back the blocks
/// other threads freed into this thread's pages, and give empty pages back to the OS.
///
/// mimalloc does that by itself only when the owning thread allocates again, and an idle
/// worker does not: after a burst of connections is parked (`broker/park.rs`) their
/// tasks' memory would stay resident with no one to claim it. It runs on every park, not
/// at most once a second: the park that follows the last free of a burst is the one that
/// matters, a rate limit skips it as often as not, and the worker may then sleep for
/// hours (measured: RSS per idle connection 723-1394 B rate-limited, 626-748 B on every
/// park). One call costs 0.6-1.7 µs on heaps up to 7 MB (docs/benchmarks.md).
pub fn release_freed_memory() {
    // SAFETY: mi_collect takes no pointers and only touches the calling thread's heap
    // (and the process's free page lists, under mimalloc's own locks).
    unsafe { mi_collect(false) };
}

pub mod api;
pub mod broker;
pub mod cli;
pub mod engine;
pub mod flow;
pub mod nodes;
pub mod plugin;
pub mod script;
pub mod store;

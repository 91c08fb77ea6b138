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

/// How often a worker thread going idle gives back memory freed by other threads.
const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Called by a runtime worker as it goes idle: at most every `COLLECT_EVERY` per thread,
/// lets mimalloc take back the blocks other threads freed into this thread's pages.
///
/// mimalloc does that by itself only when the owning thread allocates again, and an idle
/// worker does not: after a burst of connections is parked (`broker/park.rs`) their
/// tasks' memory would stay resident with no one to claim it.
pub fn release_freed_memory() {
    thread_local! {
        static LAST: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    }
    let now = std::time::Instant::now();
    let due = LAST.with(|last| match last.get() {
        Some(at) if now.duration_since(at) < COLLECT_EVERY => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        // SAFETY: mi_collect takes no pointers and only touches the calling thread's heap
        // (and the process's free page lists, under mimalloc's own locks).
        unsafe { mi_collect(false) };
    }
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

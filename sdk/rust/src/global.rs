//! `Global<T>`: plugin state in a `static` (the config read in init, counters).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// A value in a `static`, set in init and read per message.
///
/// A plugin instance runs one call at a time, so there is never contention on wasm; the
/// flag only turns a re-entrant `with` (a bug) into a panic instead of two `&mut` to one
/// value, and keeps native tests sound when they run on several threads.
///
/// ```
/// use headwater_plugin::Global;
/// static THRESHOLD: Global<f64> = Global::new(30.0);
/// THRESHOLD.set(42.0);
/// assert_eq!(THRESHOLD.get(), 42.0);
/// ```
pub struct Global<T> {
    busy: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: every access to `value` goes through `with`, which holds `busy`.
unsafe impl<T: Send> Sync for Global<T> {}

impl<T> Global<T> {
    /// A global holding `value`.
    pub const fn new(value: T) -> Self {
        Global {
            busy: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Runs `f` with the value. Other threads (native tests only) wait; calling `with`
    /// again from inside `f` panics.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let mut spins = 0u32;
        while self
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            // On wasm nothing else can hold it: a failure there is re-entrance.
            if cfg!(target_arch = "wasm32") || spins > 100_000_000 {
                panic!("Global::with called while the value is already in use");
            }
            spins += 1;
            core::hint::spin_loop();
        }
        struct Release<'a>(&'a AtomicBool);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _release = Release(&self.busy);
        // SAFETY: `busy` is held until `_release` drops.
        f(unsafe { &mut *self.value.get() })
    }

    /// Replaces the value.
    pub fn set(&self, value: T) {
        self.with(|slot| *slot = value);
    }

    /// A copy of the value.
    pub fn get(&self) -> T
    where
        T: Clone,
    {
        self.with(|value| value.clone())
    }
}

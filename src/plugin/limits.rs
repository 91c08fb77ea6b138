//! What one plugin call may use: time (an epoch deadline), linear memory (a resource
//! limiter that remembers what it refused, so the reason can be named), stack, and
//! emits (count and bytes per call).

use std::time::Duration;

/// Limits on one call into a plugin (`hw_init`, or one `hw_on_message` with its allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time a call may take.
    pub timeout: Duration,
    /// Largest linear memory, in bytes.
    pub memory: u64,
    /// Most WebAssembly stack a call may use, in bytes.
    pub stack: u64,
    /// Most emits per call.
    pub max_emits: u32,
    /// Most bytes of emitted records per call.
    pub max_emit_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_millis(100),
            memory: 16 << 20,
            stack: 512 << 10,
            max_emits: 1024,
            max_emit_bytes: 16 << 20,
        }
    }
}

/// Smallest accepted `stack`: less cannot run even a small Rust plugin's frames.
pub const MIN_STACK: u64 = 64 << 10;
/// Largest accepted `stack`: WebAssembly runs on the calling thread's native stack, and
/// tokio's blocking-pool threads have 2 MiB; half of it leaves room for the host's frames.
pub const MAX_STACK: u64 = 1 << 20;
/// Largest accepted `memory`: a 32-bit guest cannot address more than 4 GiB.
pub const MAX_MEMORY: u64 = 4 << 30;

/// How often the epoch ticker advances every engine's epoch.
pub const TICK: Duration = Duration::from_millis(10);

impl Limits {
    /// Epoch ticks to allow for a call of at most `timeout`: one extra tick, because the
    /// first one may come at once (the ticker is not aligned with calls).
    pub fn deadline_ticks(&self) -> u64 {
        let tick = TICK.as_nanos();
        let ticks = self.timeout.as_nanos().div_ceil(tick);
        u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
    }

    /// What is wrong with these limits, as `(option, message)` pairs.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.timeout < Duration::from_millis(1) {
            problems.push(("timeout", "the timeout must be at least 1ms".to_string()));
        }
        if self.memory < 64 << 10 {
            problems.push((
                "memory",
                "the memory limit must be at least 64KiB (one WebAssembly page)".to_string(),
            ));
        } else if self.memory > MAX_MEMORY {
            problems.push((
                "memory",
                "the memory limit must be at most 4GiB (a 32-bit plugin cannot use more)"
                    .to_string(),
            ));
        }
        if !(MIN_STACK..=MAX_STACK).contains(&self.stack) {
            problems.push((
                "stack",
                format!(
                    "the stack limit must be between {} and {} (plugins run on the host thread's stack)",
                    size_text(MIN_STACK),
                    size_text(MAX_STACK)
                ),
            ));
        }
        if self.max_emits == 0 {
            problems.push((
                "max_emits",
                "max_emits must be at least 1 (a plugin that emits nothing needs no limit)"
                    .to_string(),
            ));
        }
        problems
    }
}

/// `16MiB`, `512KiB`, `100B`: sizes in messages, as users write them.
pub fn size_text(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes}B")
}

/// `100ms`, `1.5s`: durations in messages.
pub fn duration_text(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else if d.as_millis() >= 1000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The store's resource limiter: one memory of at most `memory` bytes, one table of a
/// bounded size. A refused growth traps (rather than `memory.grow` returning -1) so a
/// plugin that ignores the failure cannot spin, and the refusal is remembered so the
/// message fails with "memory limit" rather than a bare trap.
#[derive(Debug)]
pub struct MemoryLimiter {
    /// Largest memory, in bytes.
    pub memory: u64,
    /// The size a refused growth asked for, since the last reset.
    pub refused: Option<u64>,
}

/// Most table elements (function pointers) a plugin may have.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory {
            self.refused = Some(desired as u64);
            return Err(wasmtime::Error::msg(format!(
                "plugin exceeded its memory limit of {}",
                size_text(self.memory)
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }

    fn memories(&self) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_and_ticks() {
        assert_eq!(size_text(16 << 20), "16MiB");
        assert_eq!(size_text(512 << 10), "512KiB");
        assert_eq!(size_text(1000), "1000B");
        assert_eq!(duration_text(Duration::from_millis(100)), "100ms");
        assert_eq!(duration_text(Duration::from_secs(2)), "2s");
        let limits = Limits::default();
        assert_eq!(limits.deadline_ticks(), 11);
        assert!(limits.problems().is_empty());
        let bad = Limits {
            stack: 8 << 20,
            max_emits: 0,
            ..limits
        };
        let names: Vec<_> = bad.problems().into_iter().map(|p| p.0).collect();
        assert_eq!(names, ["stack", "max_emits"]);
    }
}

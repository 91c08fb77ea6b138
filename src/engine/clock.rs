//! The engine's clock: monotonic time for timers and wall time for timestamps.
//!
//! All waiting goes through `tokio::time`, so a runtime with paused time (tests,
//! `start_paused = true`, `tokio::time::advance`) is a virtual clock for every node.
//! The wall clock must follow it too, or timestamps and cron schedules would drift
//! from the timers: [`Clock::virtual_at`] derives wall time from tokio's instant.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// A cheap, clonable handle to the engine's notion of time.
#[derive(Clone, Debug)]
pub struct Clock {
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    /// Real time.
    System,
    /// Wall time = `epoch_ms` at `start`, advancing with tokio's (possibly paused) clock.
    Virtual { start: Instant, epoch_ms: i64 },
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl Clock {
    /// The real clock.
    pub fn system() -> Self {
        Clock { kind: Kind::System }
    }

    /// A clock whose wall time starts at `epoch_ms` now and follows tokio's time; use it
    /// with a paused runtime for deterministic tests.
    pub fn virtual_at(epoch_ms: i64) -> Self {
        Clock {
            kind: Kind::Virtual {
                start: Instant::now(),
                epoch_ms,
            },
        }
    }

    /// Monotonic now (tokio's, so it is virtual when tokio's time is paused).
    pub fn now(&self) -> Instant {
        Instant::now()
    }

    /// Milliseconds since the Unix epoch.
    pub fn wall_ms(&self) -> i64 {
        match &self.kind {
            Kind::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Kind::Virtual { start, epoch_ms } => {
                let elapsed = Instant::now().saturating_duration_since(*start);
                epoch_ms + i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
            }
        }
    }

    /// Waits for `duration`.
    pub async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }

    /// Waits until `deadline`.
    pub async fn sleep_until(&self, deadline: Instant) {
        tokio::time::sleep_until(deadline).await;
    }

    /// Waits until the wall clock reads `epoch_ms` (for cron-like schedules). Computed
    /// once from the current offset; fine for schedules, which re-plan after each tick.
    pub async fn sleep_until_wall(&self, epoch_ms: i64) {
        let wait = epoch_ms.saturating_sub(self.wall_ms()).max(0);
        self.sleep(Duration::from_millis(wait.unsigned_abs())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn virtual_wall_time_follows_tokio() {
        let clock = Clock::virtual_at(1_000_000);
        assert_eq!(clock.wall_ms(), 1_000_000);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.wall_ms(), 1_090_000);
        clock.sleep(Duration::from_millis(500)).await;
        assert_eq!(clock.wall_ms(), 1_090_500);
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_until_wall() {
        let clock = Clock::virtual_at(10_000);
        clock.sleep_until_wall(70_000).await;
        assert_eq!(clock.wall_ms(), 70_000);
    }
}

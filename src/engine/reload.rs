//! Hot reload, the engine's side: which flows a new definition adds, removes, changes or
//! leaves alone (compared by fingerprint), what a reload reports, and the channel that
//! serializes reload requests from the API, SIGHUP and the file watcher.
//!
//! The engine knows nothing of flow files: a [`Fingerprint`] is an opaque digest the
//! flow loader computes from a flow's canonical definition and the files it references.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// A digest of one flow's whole definition (its canonical options, wiring, delivery,
/// directory, and the content of files its nodes name). Equal digests mean the flow
/// would run exactly as it runs now.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0[..6] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// `reload:` in the settings file: how `run` watches its files. Read at start only.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Reload when a flow file given to `run`, or a file a flow names (a script `file:`,
    /// a `wasm` plugin, a certificate), changes on disk (default true). SIGHUP and
    /// `POST /api/reload` work either way.
    #[serde(default = "watch_by_default")]
    pub watch: bool,
    /// How often the watched files are looked at (default `1s`); a change is applied once
    /// the file stayed the same for one more interval, so a half-written file is not read.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: crate::flow::values::HumanDuration,
}

fn watch_by_default() -> bool {
    true
}

fn default_poll_interval() -> crate::flow::values::HumanDuration {
    std::time::Duration::from_secs(1).into()
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: watch_by_default(),
            poll_interval: default_poll_interval(),
        }
    }
}

impl ReloadConfig {
    /// Problems serde cannot see, as `(key, message)`.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let interval = self.poll_interval.get();
        if interval < std::time::Duration::from_millis(10)
            || interval > std::time::Duration::from_secs(3600)
        {
            vec![(
                "poll_interval",
                "must be between 10ms and 1h; e.g. `1s`".to_string(),
            )]
        } else {
            Vec::new()
        }
    }
}

/// How a new set of flows differs from the running one. Every list is sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowChanges {
    /// New flows: started.
    pub added: Vec<String>,
    /// Flows no longer defined: stopped (drained).
    pub removed: Vec<String>,
    /// Flows whose definition changed: stopped (drained), then started anew.
    pub changed: Vec<String>,
    /// Flows with the same definition: not touched at all.
    pub unchanged: Vec<String>,
}

impl FlowChanges {
    /// Whether the reload touches any flow.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// The flows to stop: removed and changed ones.
    pub fn to_stop(&self) -> Vec<String> {
        self.removed.iter().chain(&self.changed).cloned().collect()
    }

    /// Whether the flow `name` must be started from the new definition.
    pub fn starts(&self, name: &str) -> bool {
        self.added.iter().chain(&self.changed).any(|n| n == name)
    }
}

/// Compares the running flows with a new definition, both as name -> fingerprint.
pub fn diff(
    running: &BTreeMap<String, Fingerprint>,
    fresh: &BTreeMap<String, Fingerprint>,
) -> FlowChanges {
    let mut changes = FlowChanges::default();
    for (name, print) in fresh {
        match running.get(name) {
            None => changes.added.push(name.clone()),
            Some(old) if old == print => changes.unchanged.push(name.clone()),
            Some(_) => changes.changed.push(name.clone()),
        }
    }
    changes.removed = running
        .keys()
        .filter(|name| !fresh.contains_key(*name))
        .cloned()
        .collect();
    changes
}

/// What asked for a reload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// `POST /api/reload`.
    Api,
    /// SIGHUP.
    Signal,
    /// A watched file changed on disk (the file named).
    FileChanged(String),
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Api => f.write_str("api"),
            Trigger::Signal => f.write_str("SIGHUP"),
            Trigger::FileChanged(path) => write!(f, "{path} changed"),
        }
    }
}

/// One located problem in the new files, as `check` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LocatedError {
    /// The file.
    pub file: String,
    /// 1-based line; `None` for the file as a whole (unreadable, say).
    pub line: Option<u32>,
    /// 1-based column; `None` with `line`.
    pub col: Option<u32>,
    /// What is wrong and what to do.
    pub message: String,
    /// `file:line:col: message`, as `headwater check` prints it first.
    pub headline: String,
}

impl fmt::Display for LocatedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.headline)
    }
}

/// The result of one reload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The new files were valid and the flows now run them.
    Applied {
        /// What changed.
        #[serde(flatten)]
        changes: FlowChanges,
        /// Flows whose drain ran out of time: their remaining in-flight messages were
        /// failed (a QoS 1/2 source did not acknowledge them; the broker sends them again).
        drain_timed_out: Vec<String>,
        /// Settings that changed but only take effect after a restart (`broker:`,
        /// `api:`, `data_dir:`, `reload:`).
        restart_needed: Vec<String>,
    },
    /// The new files have errors: nothing changed.
    Invalid {
        /// Every problem, located.
        errors: Vec<LocatedError>,
    },
}

/// A reload request with where to send its outcome.
pub struct ReloadRequest {
    /// Who asked.
    pub trigger: Trigger,
    /// Receives the outcome; dropped by the asker when it stops waiting.
    pub reply: Option<oneshot::Sender<ReloadOutcome>>,
}

/// Queues reload requests to the one task that applies them, one at a time.
#[derive(Clone)]
pub struct Reloads {
    requests: mpsc::Sender<ReloadRequest>,
}

/// Requests waiting for the reloading task; a burst beyond this is refused.
pub const MAX_QUEUED_RELOADS: usize = 8;

/// Why a reload could not be asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// Too many reloads are already waiting.
    #[error("{MAX_QUEUED_RELOADS} reloads are already waiting; retry once they are done")]
    Busy,
    /// The process is shutting down.
    #[error("the process is shutting down; reloads are no longer taken")]
    Closed,
}

impl Reloads {
    /// A request queue and its receiving end (kept by the task that reloads).
    pub fn channel() -> (Reloads, mpsc::Receiver<ReloadRequest>) {
        let (requests, receiver) = mpsc::channel(MAX_QUEUED_RELOADS);
        (Reloads { requests }, receiver)
    }

    /// Asks for a reload and waits for its outcome.
    pub async fn reload(&self, trigger: Trigger) -> Result<ReloadOutcome, ReloadError> {
        let (reply, outcome) = oneshot::channel();
        self.requests
            .try_send(ReloadRequest {
                trigger,
                reply: Some(reply),
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ReloadError::Busy,
                mpsc::error::TrySendError::Closed(_) => ReloadError::Closed,
            })?;
        outcome.await.map_err(|_| ReloadError::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prints(items: &[(&str, u8)]) -> BTreeMap<String, Fingerprint> {
        items
            .iter()
            .map(|(name, byte)| (name.to_string(), Fingerprint([*byte; 32])))
            .collect()
    }

    fn names(items: &[&str]) -> Vec<String> {
        items.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn diff_sorts_flows_into_added_removed_changed_and_unchanged() {
        let running = prints(&[("a", 1), ("b", 2), ("c", 3)]);
        let fresh = prints(&[("b", 2), ("c", 9), ("d", 4)]);
        let changes = diff(&running, &fresh);
        assert_eq!(
            changes,
            FlowChanges {
                added: names(&["d"]),
                removed: names(&["a"]),
                changed: names(&["c"]),
                unchanged: names(&["b"]),
            }
        );
        assert_eq!(changes.to_stop(), names(&["a", "c"]));
        assert!(changes.starts("c") && changes.starts("d"));
        assert!(!changes.starts("b") && !changes.starts("a"));
        assert!(!changes.is_empty());
    }

    #[test]
    fn the_same_definition_changes_nothing() {
        let running = prints(&[("a", 1), ("b", 2)]);
        let changes = diff(&running, &running.clone());
        assert!(changes.is_empty());
        assert_eq!(changes.unchanged, names(&["a", "b"]));
    }

    #[test]
    fn from_nothing_everything_is_added_and_to_nothing_everything_is_removed() {
        let flows = prints(&[("a", 1), ("b", 2)]);
        assert_eq!(diff(&BTreeMap::new(), &flows).added, names(&["a", "b"]));
        assert_eq!(diff(&flows, &BTreeMap::new()).removed, names(&["a", "b"]));
    }

    #[test]
    fn an_outcome_serializes_as_the_api_answers_it() {
        let outcome = ReloadOutcome::Applied {
            changes: FlowChanges {
                changed: names(&["x"]),
                ..FlowChanges::default()
            },
            drain_timed_out: vec![],
            restart_needed: names(&["broker"]),
        };
        let json = serde_json::to_value(&outcome).unwrap();
        assert_eq!(json["result"], "applied");
        assert_eq!(json["changed"], serde_json::json!(["x"]));
        assert_eq!(json["restart_needed"], serde_json::json!(["broker"]));
    }

    #[tokio::test]
    async fn requests_beyond_the_queue_are_refused_and_a_closed_queue_says_so() {
        let (reloads, receiver) = Reloads::channel();
        let mut waiting = Vec::new();
        for _ in 0..MAX_QUEUED_RELOADS {
            let reloads = reloads.clone();
            waiting.push(tokio::spawn(
                async move { reloads.reload(Trigger::Api).await },
            ));
        }
        // Every spawned request is queued before the next one is tried.
        while receiver.len() < MAX_QUEUED_RELOADS {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            reloads.reload(Trigger::Signal).await,
            Err(ReloadError::Busy)
        );
        drop(receiver);
        for task in waiting {
            assert_eq!(task.await.unwrap(), Err(ReloadError::Closed));
        }
    }
}

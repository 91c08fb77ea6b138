//! Hot reload in `run`: reads the flow files again through the same load, check and
//! build as `headwater check`, and when they are valid applies the difference to the
//! engine (only changed, added and removed flows are touched); watches the files by
//! polling them. One reload at a time: the run loop owns the [`Reloader`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ring::digest::{SHA256, digest};

use crate::api::{FlowInfo, Graph, RunningApi};
use crate::engine::reload::{self, Fingerprint, FlowChanges, LocatedError, ReloadOutcome, Trigger};
use crate::engine::{Clock, Engine, GraphPlan};
use crate::flow::{self, Diagnostics, FlowSet, Settings, interpolate::ProcessEnv};

/// What a reload keeps between runs: the running flows' fingerprints and the settings
/// that cannot change while the process runs.
pub(super) struct Reloader {
    files: Vec<PathBuf>,
    data_dir: PathBuf,
    clock: Clock,
    settings: Settings,
    running: BTreeMap<String, Fingerprint>,
    /// The files the running flows read (scripts, plugins), watched with `files`.
    referenced: Vec<PathBuf>,
    /// Polls the files for changes; `None` with `reload.watch: false`.
    pub(super) watcher: Option<Watcher>,
    /// How often the watcher polls (`reload.poll_interval`).
    pub(super) poll_interval: std::time::Duration,
}

/// A freshly loaded and built set of flows.
struct Loaded {
    set: FlowSet,
    plan: GraphPlan,
    prints: BTreeMap<String, Fingerprint>,
    referenced: Vec<PathBuf>,
}

impl Reloader {
    /// A reloader for the flows of `set` that `run` started from `files`.
    pub(super) fn new(files: &[PathBuf], data_dir: PathBuf, clock: Clock, set: &FlowSet) -> Self {
        let (running, referenced) = fingerprints(set);
        let config = set.settings.reload.clone().unwrap_or_default();
        let mut reloader = Reloader {
            files: files.to_vec(),
            data_dir,
            clock,
            settings: set.settings.clone(),
            running,
            referenced,
            watcher: config.watch.then(Watcher::default),
            poll_interval: config.poll_interval.get(),
        };
        reloader.rebaseline(None);
        reloader
    }

    /// Loads the files again; if they are valid, restarts what changed and updates the
    /// API's view. Logs the outcome as one line and returns it.
    pub(super) async fn reload(
        &mut self,
        trigger: Trigger,
        engine: &mut Engine,
        api: Option<&RunningApi>,
    ) -> ReloadOutcome {
        let files = self.files.clone();
        let data_dir = self.data_dir.clone();
        let clock = self.clock.clone();
        // Parsing, compiling scripts and plugins is CPU work: keep it off the runtime.
        let loaded = tokio::task::spawn_blocking(move || load(&files, &data_dir, &clock)).await;
        let (loaded, texts) = match loaded {
            Ok(result) => result,
            Err(e) => {
                let errors = vec![whole_file_error("(all)", format!("loading failed: {e}"))];
                return self.refused(&trigger, errors, HashMap::new());
            }
        };
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(diagnostics) => return self.refused(&trigger, located(&diagnostics), texts),
        };
        let changes = reload::diff(&self.running, &loaded.prints);
        let restart_needed = self.restart_needed(&loaded.set.settings);
        let Loaded {
            set,
            plan,
            prints,
            referenced,
        } = loaded;
        let start = plan
            .flows
            .into_iter()
            .filter(|f| changes.starts(&f.name))
            .collect();
        let drain_timed_out = if changes.is_empty() {
            Vec::new()
        } else {
            engine.replace(&changes.to_stop(), start).await
        };
        if let Some(api) = api {
            api.state.set_graph(Graph {
                flows: FlowInfo::from_set(&set),
                nodes: engine.nodes().to_vec(),
            });
        }
        self.running = prints;
        self.referenced = referenced;
        self.rebaseline(Some(&texts));
        log_applied(&trigger, &changes, &drain_timed_out, &restart_needed);
        ReloadOutcome::Applied {
            changes,
            drain_timed_out,
            restart_needed,
        }
    }

    fn refused(
        &mut self,
        trigger: &Trigger,
        errors: Vec<LocatedError>,
        texts: HashMap<PathBuf, Option<[u8; 32]>>,
    ) -> ReloadOutcome {
        // Remember the broken content: the watcher tries again once it changes, not on
        // every poll.
        self.rebaseline(Some(&texts));
        let listed: Vec<String> = errors.iter().map(ToString::to_string).collect();
        tracing::error!(
            trigger = %trigger,
            errors = errors.len(),
            "reload refused, the running flows are unchanged: {}",
            listed.join("; ")
        );
        ReloadOutcome::Invalid { errors }
    }

    /// Settings sections that differ from the ones the process started with; they are
    /// not applied (the broker's clients and the API's connections stay as they are).
    fn restart_needed(&self, fresh: &Settings) -> Vec<String> {
        let old = &self.settings;
        let mut differ = Vec::new();
        if old.broker != fresh.broker {
            differ.push("broker settings changed: restart needed".to_string());
        }
        if old.api != fresh.api {
            differ.push("api settings changed: restart needed".to_string());
        }
        if old.data_dir != fresh.data_dir {
            differ.push("data_dir changed: restart needed".to_string());
        }
        if old.reload != fresh.reload {
            differ.push("reload settings changed: restart needed".to_string());
        }
        differ
    }

    /// Takes the files as they are now (or as the reload read them) as the watcher's
    /// baseline, so only a later change triggers the next reload.
    fn rebaseline(&mut self, read: Option<&HashMap<PathBuf, Option<[u8; 32]>>>) {
        let Some(watcher) = &mut self.watcher else {
            return;
        };
        let paths: Vec<PathBuf> = self.files.iter().chain(&self.referenced).cloned().collect();
        watcher.rebaseline(paths, read);
    }
}

/// Reads the files and runs the same load and build as `check`; also returns the
/// digests of the texts read, for the watcher.
#[allow(clippy::type_complexity)]
fn load(
    files: &[PathBuf],
    data_dir: &Path,
    clock: &Clock,
) -> (
    Result<Loaded, Diagnostics>,
    HashMap<PathBuf, Option<[u8; 32]>>,
) {
    let mut sources = Vec::new();
    let mut texts = HashMap::new();
    let mut diagnostics = Diagnostics::default();
    for path in files {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                texts.insert(path.clone(), Some(content_digest(text.as_bytes())));
                sources.push((path.clone(), text));
            }
            Err(e) => {
                texts.insert(path.clone(), None);
                diagnostics.push(flow::diag::unreadable(path, &e));
            }
        }
    }
    if !diagnostics.is_empty() {
        return (Err(diagnostics), texts);
    }
    let result = flow::load_sources(sources, &ProcessEnv).and_then(|set| {
        let plan = set.plan(data_dir, clock)?;
        let (prints, referenced) = fingerprints(&set);
        Ok(Loaded {
            set,
            plan,
            prints,
            referenced,
        })
    });
    (result, texts)
}

/// Every flow's fingerprint, and the files they read.
fn fingerprints(set: &FlowSet) -> (BTreeMap<String, Fingerprint>, Vec<PathBuf>) {
    let mut prints = BTreeMap::new();
    let mut referenced = Vec::new();
    for flow in &set.flows {
        let (print, files) = flow::fingerprint::fingerprint(flow);
        prints.insert(flow.name.clone(), print);
        referenced.extend(files);
    }
    referenced.sort();
    referenced.dedup();
    (prints, referenced)
}

fn located(diagnostics: &Diagnostics) -> Vec<LocatedError> {
    diagnostics
        .0
        .iter()
        .map(|d| LocatedError {
            file: d.file.path.display().to_string(),
            line: d.pos.map(|p| p.line),
            col: d.pos.map(|p| p.col),
            message: d.message.clone(),
            headline: d.headline(),
        })
        .collect()
}

fn whole_file_error(file: &str, message: String) -> LocatedError {
    LocatedError {
        file: file.to_string(),
        line: None,
        col: None,
        headline: format!("{file}: {message}"),
        message,
    }
}

fn log_applied(
    trigger: &Trigger,
    changes: &FlowChanges,
    drain_timed_out: &[String],
    restart_needed: &[String],
) {
    let FlowChanges {
        added,
        removed,
        changed,
        unchanged,
    } = changes;
    if !drain_timed_out.is_empty() || !restart_needed.is_empty() {
        tracing::warn!(
            trigger = %trigger,
            ?added, ?removed, ?changed, ?unchanged,
            drain_timed_out = ?drain_timed_out,
            "flows reloaded{}{}",
            if drain_timed_out.is_empty() {
                String::new()
            } else {
                "; in-flight messages of flows that did not drain in time were failed (not acknowledged)".to_string()
            },
            if restart_needed.is_empty() {
                String::new()
            } else {
                format!("; not applied: {}", restart_needed.join(", "))
            }
        );
    } else if changes.is_empty() {
        tracing::info!(trigger = %trigger, ?unchanged, "flows reloaded: nothing changed");
    } else {
        tracing::info!(trigger = %trigger, ?added, ?removed, ?changed, ?unchanged, "flows reloaded");
    }
}

fn content_digest(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// What a stat says about a file: enough to notice a write without reading it.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Polls files: a change of modification time or size marks them; once they stayed
/// the same for one more poll (a file written in several steps is finished), their
/// content is compared with the baseline, and a different content asks for a reload.
#[derive(Default)]
pub(super) struct Watcher {
    paths: Vec<PathBuf>,
    stamps: HashMap<PathBuf, Stamp>,
    /// Content digests as of the last reload (`None`: missing or unreadable).
    baseline: HashMap<PathBuf, Option<[u8; 32]>>,
    /// A stamp changed at the last poll: wait one poll for the file to settle.
    settling: bool,
}

impl Watcher {
    /// Watches `paths` from now on, taking `read` (digests of what a reload just read)
    /// or the content now as the baseline.
    fn rebaseline(
        &mut self,
        paths: Vec<PathBuf>,
        read: Option<&HashMap<PathBuf, Option<[u8; 32]>>>,
    ) {
        self.stamps = paths.iter().map(|p| (p.clone(), stamp(p))).collect();
        self.baseline = paths
            .iter()
            .map(|p| {
                let known = read.and_then(|r| r.get(p)).copied();
                (p.clone(), known.unwrap_or_else(|| read_digest(p)))
            })
            .collect();
        self.paths = paths;
        self.settling = false;
    }

    /// One poll: `Some(file)` when `file` changed and settled, so a reload is due.
    pub(super) fn poll(&mut self) -> Option<PathBuf> {
        let now: HashMap<PathBuf, Stamp> =
            self.paths.iter().map(|p| (p.clone(), stamp(p))).collect();
        if now != self.stamps {
            self.stamps = now;
            self.settling = true;
            return None;
        }
        if !std::mem::take(&mut self.settling) {
            return None;
        }
        self.paths
            .iter()
            .find(|p| self.baseline.get(*p).copied().flatten() != read_digest(p))
            .cloned()
    }
}

fn read_digest(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| content_digest(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_reported_once_the_file_settled_and_only_if_the_content_differs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("flow.yaml");
        std::fs::write(&file, "version: 1\n").unwrap();
        let mut watcher = Watcher::default();
        watcher.rebaseline(vec![file.clone()], None);
        assert_eq!(watcher.poll(), None, "nothing changed");

        // A write in two steps: the first poll sees a change and waits.
        std::fs::write(&file, "version: 1\nflows:\n").unwrap();
        assert_eq!(watcher.poll(), None, "still settling");
        std::fs::write(&file, "version: 1\nflows: {}\n").unwrap();
        assert_eq!(watcher.poll(), None, "changed again: still settling");
        assert_eq!(watcher.poll(), Some(file.clone()), "settled and different");

        // The reload takes the new content as its baseline.
        watcher.rebaseline(vec![file.clone()], None);
        assert_eq!(watcher.poll(), None);

        // Rewriting the same content (a touch, an editor's save without edits) is no
        // change.
        let text = std::fs::read(&file).unwrap();
        std::fs::remove_file(&file).unwrap();
        assert_eq!(watcher.poll(), None, "gone: settling");
        std::fs::write(&file, &text).unwrap();
        assert_eq!(watcher.poll(), None, "back: settling");
        assert_eq!(watcher.poll(), None, "same content as the baseline");
    }

    #[test]
    fn a_deleted_file_counts_as_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("main.rhai");
        std::fs::write(&file, "msg").unwrap();
        let mut watcher = Watcher::default();
        watcher.rebaseline(vec![file.clone()], None);
        std::fs::remove_file(&file).unwrap();
        assert_eq!(watcher.poll(), None);
        assert_eq!(watcher.poll(), Some(file));
    }
}

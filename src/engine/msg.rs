//! `Msg`, the unit that flows along edges, and the acknowledgement tracker that tells a
//! source when a message and everything derived from it has reached a terminal state.
//!
//! Every `Msg` value is one *branch* of its tracker. Cloning (fan-out) opens a branch;
//! a sink's commit or a filter's drop closes one with [`Msg::done`]; a failure closes one
//! with [`Msg::fail`]. A `Msg` dropped without a verdict (a panicking node, a task aborted
//! at the shutdown deadline) closes its branch as failed, so nothing is ever reported
//! delivered by accident. When the last branch closes, the source's callback runs once
//! with the overall outcome.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

/// Message headers: small, string-valued, shared between fan-out copies.
pub type Headers = BTreeMap<String, String>;

/// How a message (with all its derived copies) ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every branch was committed by a sink or deliberately ended by a transform.
    Done,
    /// At least one branch was dropped by a lossy overflow policy; none failed.
    Dropped,
    /// At least one branch failed; the first reason is kept.
    Failed(String),
}

type AckCallback = Box<dyn FnOnce(Outcome) + Send>;

/// State shared by all branches of one source message.
struct AckState {
    branches: AtomicUsize,
    /// 0 = done, 1 = dropped, 2 = failed; only ever raised.
    severity: AtomicU8,
    reason: Mutex<Option<String>>,
    callback: Mutex<Option<AckCallback>>,
}

impl AckState {
    fn close(&self, severity: u8, reason: Option<String>) {
        if severity == 2 {
            let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = reason;
            }
        }
        self.severity.fetch_max(severity, Ordering::AcqRel);
        if self.branches.fetch_sub(1, Ordering::AcqRel) == 1 {
            let outcome = match self.severity.load(Ordering::Acquire) {
                0 => Outcome::Done,
                1 => Outcome::Dropped,
                _ => Outcome::Failed(
                    self.reason
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take()
                        .unwrap_or_else(|| "failed".to_string()),
                ),
            };
            let callback = self
                .callback
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(callback) = callback {
                callback(outcome);
            }
        }
    }
}

/// One branch of an acknowledgement tracker; closing it is explicit, dropping it fails it.
struct AckBranch(Option<Arc<AckState>>);

impl AckBranch {
    fn fork(&self) -> AckBranch {
        match &self.0 {
            Some(state) => {
                state.branches.fetch_add(1, Ordering::AcqRel);
                AckBranch(Some(state.clone()))
            }
            None => AckBranch(None),
        }
    }

    fn close(mut self, severity: u8, reason: Option<String>) {
        if let Some(state) = self.0.take() {
            state.close(severity, reason);
        }
    }
}

impl Drop for AckBranch {
    fn drop(&mut self) {
        if let Some(state) = self.0.take() {
            state.close(2, Some("message dropped without a verdict".to_string()));
        }
    }
}

/// Low bits of a message id that count messages within one epoch second: an id is
/// `epoch << ID_COUNTER_BITS` plus a counter, where the epoch is the run's start in
/// seconds since [`ID_EPOCH_START_S`]. A run whose counter outgrows its second simply
/// continues into the next seconds' ids; the next run starts at its own start time
/// (or later, see [`begin_id_epoch`]), which is above them unless the run made more than
/// 2^23 (8.4 million) messages per second of its uptime. 30 bits of seconds (until
/// 2059) and 23 bits of count keep ids below 2^53: exact as JSON numbers in JavaScript,
/// and positive as the `i64` of SQL integers and Rhai.
const ID_COUNTER_BITS: u32 = 23;
/// 2025-01-01T00:00:00Z in seconds since the Unix epoch: where id epochs count from.
const ID_EPOCH_START_S: u64 = 1_735_689_600;

/// The next id to hand out. 0 until the first id: the first caller raises it to the
/// clock's epoch ([`clock_epoch`]); the store's claim ([`begin_id_epoch`]) may raise it
/// further. It never goes down, so ids are unique within the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Message ids unique across runs of the process (see [`ID_COUNTER_BITS`]), so sinks
/// can upsert on them: one relaxed increment, plus a one-time start.
fn next_id() -> u64 {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    if id >= 1 << ID_COUNTER_BITS {
        return id;
    }
    // The first ids of the process: start at the clock's epoch, then take a fresh one.
    begin_id_epoch(clock_epoch());
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The id epoch the clock gives now: whole seconds since [`ID_EPOCH_START_S`], at least 1
/// (a clock before 2025 is wrong, and epoch 0 is "not started").
pub(crate) fn clock_epoch() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    now.saturating_sub(ID_EPOCH_START_S).max(1)
}

/// Makes every later id at least `epoch << ID_COUNTER_BITS`. Called once per start with
/// an epoch stored durably in the process's store (`engine::state::claim_id_epoch`), so
/// a restart within the same second, or after the clock went back, still cannot repeat
/// the previous run's ids.
pub(crate) fn begin_id_epoch(epoch: u64) {
    NEXT_ID.fetch_max(epoch << ID_COUNTER_BITS, Ordering::Relaxed);
}

/// The payload parsed as JSON, remembered with the exact buffer it was parsed from.
/// Holding that `Bytes` keeps the buffer alive, so a payload replaced later can never
/// share its address and length and be mistaken for the parsed one.
struct ParsedPayload {
    source: Bytes,
    value: Option<Arc<serde_json::Value>>,
}

/// Parse cache shared by fan-out copies: a chain of nodes reading fields parses once.
/// Allocated on first use (a parse or a fan-out copy), so a message that is only read
/// through field scans never pays for it.
type JsonCache = OnceLock<Arc<Mutex<Option<ParsedPayload>>>>;

fn same_buffer(a: &Bytes, b: &Bytes) -> bool {
    a.as_ptr() == b.as_ptr() && a.len() == b.len()
}

/// A message: topic, payload bytes, headers, timestamp, id and an acknowledgement branch.
///
/// Cheap to clone for fan-out: topic, payload and headers are reference-counted.
pub struct Msg {
    /// The topic (MQTT topic, or a name the source chose).
    pub topic: Arc<str>,
    /// The payload bytes; JSON is parsed lazily by whoever needs it.
    pub payload: Bytes,
    /// String headers, shared until modified.
    pub headers: Arc<Headers>,
    /// Milliseconds since the Unix epoch, from the engine's clock when the source made it.
    pub timestamp_ms: i64,
    /// A stable id shared by all messages derived from the same source message.
    pub id: u64,
    ack: AckBranch,
    json: JsonCache,
}

impl Msg {
    /// A message with no acknowledgement tracking (a timer tick, a test).
    pub fn new(topic: impl Into<Arc<str>>, payload: impl Into<Bytes>, timestamp_ms: i64) -> Self {
        Msg {
            topic: topic.into(),
            payload: payload.into(),
            headers: Arc::default(),
            timestamp_ms,
            id: next_id(),
            ack: AckBranch(None),
            json: JsonCache::default(),
        }
    }

    /// A message whose terminal outcome is reported once to `on_complete`, after it and
    /// every message derived from it ended.
    pub fn tracked(
        topic: impl Into<Arc<str>>,
        payload: impl Into<Bytes>,
        timestamp_ms: i64,
        on_complete: impl FnOnce(Outcome) + Send + 'static,
    ) -> Self {
        let state = Arc::new(AckState {
            branches: AtomicUsize::new(1),
            severity: AtomicU8::new(0),
            reason: Mutex::new(None),
            callback: Mutex::new(Some(Box::new(on_complete))),
        });
        Msg {
            ack: AckBranch(Some(state)),
            ..Msg::new(topic, payload, timestamp_ms)
        }
    }

    /// Whether a source is waiting for this message's outcome.
    pub fn is_tracked(&self) -> bool {
        self.ack.0.is_some()
    }

    /// A new message derived from this one: same id, timestamp and ack tracker, new
    /// topic and payload. Use it for one-to-many transforms; the original still needs
    /// its own verdict (usually [`Msg::done`]).
    pub fn derive(&self, topic: impl Into<Arc<str>>, payload: impl Into<Bytes>) -> Msg {
        Msg {
            topic: topic.into(),
            payload: payload.into(),
            headers: self.headers.clone(),
            timestamp_ms: self.timestamp_ms,
            id: self.id,
            ack: self.ack.fork(),
            json: JsonCache::default(),
        }
    }

    /// Replaces the payload, keeping everything else (one-to-one transforms).
    pub fn with_payload(mut self, payload: impl Into<Bytes>) -> Msg {
        self.payload = payload.into();
        self
    }

    /// Replaces the topic, keeping everything else.
    pub fn with_topic(mut self, topic: impl Into<Arc<str>>) -> Msg {
        self.topic = topic.into();
        self
    }

    /// Mutable headers (copied on first write if shared).
    pub fn headers_mut(&mut self) -> &mut Headers {
        Arc::make_mut(&mut self.headers)
    }

    /// The payload as UTF-8 text, if it is.
    pub fn payload_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.payload).ok()
    }

    /// The payload parsed as JSON, if it is. Parsed once per payload and shared with
    /// fan-out copies, so consecutive nodes reading fields do not parse again.
    pub fn payload_json(&self) -> Option<Arc<serde_json::Value>> {
        let mut cache = self
            .json
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(parsed) = cache.as_ref()
            && same_buffer(&parsed.source, &self.payload)
        {
            return parsed.value.clone();
        }
        let value = serde_json::from_slice(&self.payload).ok().map(Arc::new);
        *cache = Some(ParsedPayload {
            source: self.payload.clone(),
            value: value.clone(),
        });
        value
    }

    /// The parsed payload if it was parsed already (by this node or one before), without
    /// parsing: `Some(None)` when it is known not to be JSON.
    pub fn cached_json(&self) -> Option<Option<Arc<serde_json::Value>>> {
        let cache = self.json.get()?.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .as_ref()
            .filter(|parsed| same_buffer(&parsed.source, &self.payload))
            .map(|parsed| parsed.value.clone())
    }

    /// Replaces the payload with `value` serialized as JSON, remembering `value` so the
    /// next node reading fields does not parse it back.
    pub fn set_json_payload(&mut self, value: serde_json::Value) {
        self.payload = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
        // A fresh cache: fan-out copies keep theirs, which still matches their payload.
        self.json = OnceLock::from(Arc::new(Mutex::new(Some(ParsedPayload {
            source: self.payload.clone(),
            value: Some(Arc::new(value)),
        }))));
    }

    /// This branch reached a terminal state normally: committed by a sink, or ended on
    /// purpose by a transform (filtered out, absorbed into a window).
    pub fn done(self) {
        self.ack.close(0, None);
    }

    /// This branch was discarded by a lossy overflow policy.
    pub fn dropped(self) {
        self.ack.close(1, None);
    }

    /// This branch failed; `reason` reaches the source.
    pub fn fail(self, reason: impl fmt::Display) {
        self.ack.close(2, Some(reason.to_string()));
    }
}

impl Clone for Msg {
    /// A fan-out copy: opens a new branch on the same tracker.
    fn clone(&self) -> Self {
        Msg {
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            headers: self.headers.clone(),
            timestamp_ms: self.timestamp_ms,
            id: self.id,
            ack: self.ack.fork(),
            json: OnceLock::from(self.json.get_or_init(Default::default).clone()),
        }
    }
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Msg")
            .field("topic", &self.topic)
            .field("payload", &String::from_utf8_lossy(&self.payload))
            .field("headers", &self.headers)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("id", &self.id)
            .field("tracked", &self.is_tracked())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn tracked() -> (Msg, mpsc::Receiver<Outcome>) {
        let (tx, rx) = mpsc::channel();
        let msg = Msg::tracked("t", "p", 0, move |outcome| tx.send(outcome).unwrap());
        (msg, rx)
    }

    #[test]
    fn done_after_all_branches() {
        let (msg, rx) = tracked();
        let a = msg.clone();
        let b = msg.derive("other", "x");
        msg.done();
        a.done();
        assert!(rx.try_recv().is_err(), "reported before every branch ended");
        b.done();
        assert_eq!(rx.try_recv().unwrap(), Outcome::Done);
    }

    #[test]
    fn failure_wins_and_keeps_first_reason() {
        let (msg, rx) = tracked();
        let a = msg.clone();
        let b = msg.clone();
        a.fail("sink refused");
        b.dropped();
        msg.fail("second");
        assert_eq!(
            rx.try_recv().unwrap(),
            Outcome::Failed("sink refused".into())
        );
    }

    #[test]
    fn drop_without_verdict_is_failure() {
        let (msg, rx) = tracked();
        drop(msg);
        assert!(matches!(rx.try_recv().unwrap(), Outcome::Failed(_)));
    }

    #[test]
    fn dropped_by_overflow() {
        let (msg, rx) = tracked();
        let copy = msg.clone();
        msg.done();
        copy.dropped();
        assert_eq!(rx.try_recv().unwrap(), Outcome::Dropped);
    }

    #[test]
    fn json_is_parsed_once_and_never_stale() {
        let msg = Msg::new("t", r#"{"a":1}"#, 0);
        let copy = msg.clone();
        let first = msg.payload_json().unwrap();
        assert!(
            Arc::ptr_eq(&first, &copy.payload_json().unwrap()),
            "fan-out copies share the parse"
        );
        // A payload replaced through the public field is noticed.
        let mut changed = copy;
        changed.payload = Bytes::from_static(br#"{"a":2}"#);
        assert_eq!(changed.payload_json().unwrap()["a"], 2);
        assert_eq!(msg.payload_json().unwrap()["a"], 1);
        let mut set = Msg::new("t", "x", 0);
        set.set_json_payload(serde_json::json!({"b": true}));
        assert_eq!(set.payload_str(), Some(r#"{"b":true}"#));
        assert_eq!(set.payload_json().unwrap()["b"], true);
        assert!(Msg::new("t", "not json", 0).payload_json().is_none());
    }

    #[test]
    fn ids_start_at_the_epoch_and_never_repeat() {
        let first = Msg::new("t", "p", 0).id;
        assert!(
            first >= clock_epoch().saturating_sub(1) << ID_COUNTER_BITS,
            "ids start at this second's epoch: {first}"
        );
        assert!(first < 1 << 53, "ids stay exact as JSON numbers: {first}");
        // A later start (the store's claim) moves every later id above it; an earlier one
        // never moves ids back.
        let later = clock_epoch() + 1000;
        begin_id_epoch(later);
        let after = Msg::new("t", "p", 0).id;
        assert!(after >= later << ID_COUNTER_BITS);
        begin_id_epoch(1);
        let again = Msg::new("t", "p", 0).id;
        assert!(again > after);
        // Fan-out copies and derived messages share the id.
        let msg = Msg::new("t", "p", 0);
        assert_eq!(msg.clone().id, msg.id);
        assert_eq!(msg.derive("u", "q").id, msg.id);
    }

    #[test]
    fn untracked_messages_are_free() {
        let msg = Msg::new("t", "p", 0);
        assert!(!msg.is_tracked());
        msg.clone().done();
        drop(msg);
    }
}

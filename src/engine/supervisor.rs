//! Runs one node: each run is its own task, so a panic ends only that run; the node is
//! then restarted with exponential backoff while the rest of the graph keeps flowing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::node::{NodeContext, NodeFactory, NodeState, panic_message};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run that lasted this long counts as healthy: the next crash starts the backoff over.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

pub(super) async fn supervise(
    factory: Arc<dyn NodeFactory>,
    cx: NodeContext,
    abort: CancellationToken,
) {
    let id = cx.id.clone();
    let stats = cx.stats.clone();
    let mut backoff = FIRST_BACKOFF;
    loop {
        stats.set_state(NodeState::Running);
        let started = cx.clock.now();
        // The run keeps the node's span (flow and node on every log line).
        let run_future = factory.start(cx.clone());
        let mut run = tokio::spawn(tracing::Instrument::in_current_span(run_future));
        let result = tokio::select! {
            result = &mut run => result,
            () = abort.cancelled() => {
                run.abort();
                let _ = run.await;
                tracing::warn!(node = %id, "aborted at the shutdown deadline");
                stats.set_state(NodeState::Failed);
                break;
            }
        };
        let reason = match result {
            Ok(Ok(())) => {
                stats.set_state(NodeState::Stopped);
                tracing::debug!(node = %id, "finished");
                break;
            }
            Ok(Err(error)) => error.to_string(),
            Err(join) if join.is_panic() => {
                format!("panicked: {}", panic_message(&*join.into_panic()))
            }
            Err(_) => "task cancelled".to_string(),
        };
        stats.set_last_error(reason.clone());
        if cx.shutdown.is_cancelled() && cx.inbox.edges().is_empty() {
            // A source that fails while the engine stops is not worth restarting.
            tracing::warn!(node = %id, "stopped with an error during shutdown: {reason}");
            stats.set_state(NodeState::Failed);
            break;
        }
        if cx.clock.now().duration_since(started) >= HEALTHY_RUN {
            backoff = FIRST_BACKOFF;
        }
        stats.restarts.fetch_add(1, Ordering::Relaxed);
        stats.set_state(NodeState::Restarting);
        tracing::error!(node = %id, backoff_ms = backoff.as_millis() as u64, "node crashed, restarting: {reason}");
        tokio::select! {
            () = cx.clock.sleep(backoff) => {}
            () = abort.cancelled() => {
                stats.set_state(NodeState::Failed);
                break;
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    // Nothing more will be sent, and nothing more will be read: downstream drains and
    // finishes; anything still queued for this node fails rather than vanishing.
    cx.outputs.close();
    cx.inbox.abandon(&format!("{id} stopped"));
}

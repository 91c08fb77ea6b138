//! `headwater run`: load and check the flows, start the engine, reload changed flows on
//! SIGHUP, `POST /api/reload` or a change of a watched file, stop on SIGINT/SIGTERM.

mod reload;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::engine::reload::{ReloadRequest, Reloads, Trigger};
use crate::engine::{Clock, Engine, EngineOptions, ShutdownReport, StateStore};
use crate::flow::{self, interpolate::ProcessEnv};

/// Runs the flows in `files` until a signal arrives or every node has finished.
/// The built-in broker starts first (unless `broker_args` is `None` or the settings say
/// `enabled: false`) and stops last, after the flows drained.
pub fn run(
    files: &[PathBuf],
    data_dir_flag: Option<PathBuf>,
    broker_args: Option<&super::broker::BrokerArgs>,
    api_args: &ApiArgs,
) -> anyhow::Result<ExitCode> {
    let set = match flow::load(files, &ProcessEnv) {
        Ok(set) => set,
        Err(diagnostics) => return Ok(super::check::report(&diagnostics)),
    };
    let data_dir = super::data_dir(data_dir_flag, set.settings.data_dir.clone());
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    for warning in &set.settings.broker_warnings {
        tracing::warn!("{warning}");
    }
    let broker_config = match broker_args {
        Some(args) => {
            let config = args.apply(set.settings.broker.clone().unwrap_or_default())?;
            config.enabled.then_some(config)
        }
        None => None,
    };
    let (api_config, api_explicit) = api_args.apply(set.settings.api.clone())?;
    let clock = Clock::system();
    let plan = match set.plan(&data_dir, &clock) {
        Ok(plan) => plan,
        Err(diagnostics) => return Ok(super::check::report(&diagnostics)),
    };
    let runtime = super::runtime("headwater")?;
    // Made even when the settings turn the broker off: one idle thread then.
    let broker_runtime = super::BrokerRuntime::start()?;
    let on_broker = broker_runtime.handle().clone();
    let code = runtime.block_on(async move {
        let mut signals = ShutdownSignals::listen()?;
        // Listened for before anything starts: SIGHUP's default action ends the process.
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP")?;
        let api_socket = crate::api::bind_configured(&api_config, api_explicit).await?;
        let flows: Vec<&str> = set.flows.iter().map(|f| f.name.as_str()).collect();
        tracing::info!(flows = ?flows, data_dir = %data_dir.display(), "starting");
        let persistence = broker_config
            .as_ref()
            .map_or(crate::broker::Persistence::Durable, |c| c.persistence);
        let store = super::open_store(&data_dir, persistence)?;
        let broker = match broker_config {
            Some(config) => Some(super::broker::start(config, store.clone(), &on_broker).await?),
            None => None,
        };
        let mut reloader = reload::Reloader::new(files, data_dir.clone(), clock.clone(), &set);
        let mut engine = Engine::start(
            plan,
            EngineOptions {
                clock: clock.clone(),
                data_dir,
                broker: broker.clone(),
                state: StateStore::new(store.clone()),
                ..EngineOptions::default()
            },
        );
        let (reloads, mut reload_requests) = Reloads::channel();
        let api = api_socket.map(|bound| {
            let graph = crate::api::Graph {
                flows: crate::api::FlowInfo::from_set(&set),
                nodes: engine.nodes().to_vec(),
            };
            let api = crate::api::start(bound, graph, broker.clone(), Some(store.clone()), clock);
            api.state.set_reloads(reloads.clone());
            api
        });
        let notify = super::notify::Notifier::from_env();
        notify.ready(&format!("running {} flows", flows.len()));
        drop(set);
        let mut poll = tokio::time::interval(reloader.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reason = loop {
            // With the broker running the process serves clients even when no flow node
            // is left (a settings file with `flows: {}`), until a signal.
            let request = tokio::select! {
                signal = signals.recv() => break signal,
                () = async {
                    engine.finished().await;
                    if broker.is_some() {
                        std::future::pending::<()>().await;
                    }
                } => break "every node finished",
                Some(request) = reload_requests.recv() => request,
                Some(()) = hangup.recv() => ReloadRequest { trigger: Trigger::Signal, reply: None },
                _ = poll.tick(), if reloader.watcher.is_some() => {
                    match reloader.watcher.as_mut().and_then(|w| w.poll()) {
                        Some(path) => ReloadRequest {
                            trigger: Trigger::FileChanged(path.display().to_string()),
                            reply: None,
                        },
                        None => continue,
                    }
                }
            };
            let outcome = reloader
                .reload(request.trigger, &mut engine, api.as_ref())
                .await;
            if let Some(reply) = request.reply {
                let _ = reply.send(outcome);
            }
        };
        // Reloads asked for from now on are refused (503), not left waiting.
        drop(reload_requests);
        tracing::info!("shutting down: {reason}");
        if let Some(api) = &api {
            api.not_ready("shutting down");
        }
        notify.stopping(reason);
        let report = engine.shutdown().await;
        if let Some(broker) = broker {
            broker.shutdown().await;
        }
        if let Some(api) = api {
            api.stop().await;
        }
        if let Err(e) = store.close().await {
            tracing::error!("closing the store: {e}");
        }
        match report {
            ShutdownReport::Drained => Ok(ExitCode::SUCCESS),
            ShutdownReport::Aborted => Ok(ExitCode::FAILURE),
        }
    });
    // Outside the main runtime: a runtime may not be dropped inside another.
    drop(broker_runtime);
    code
}

/// Admin API options of `run` (override the settings file's `api:` section).
#[derive(Debug, Default, clap::Args)]
pub struct ApiArgs {
    /// Serve the admin API, /metrics and the status page on this address:port
    /// [default: api.listen, else 127.0.0.1:9080]
    #[arg(long, value_name = "ADDR")]
    pub api_listen: Option<String>,
    /// Do not start the admin API
    #[arg(long, conflicts_with = "api_listen")]
    pub no_api: bool,
}

impl ApiArgs {
    /// The settings to use, and whether they were asked for (a section or a flag) rather
    /// than defaults.
    fn apply(
        &self,
        settings: Option<crate::api::ApiConfig>,
    ) -> anyhow::Result<(crate::api::ApiConfig, bool)> {
        let explicit = settings.is_some() || self.api_listen.is_some();
        let mut config = settings.unwrap_or_default();
        if let Some(listen) = &self.api_listen {
            config.listen = listen.clone();
        }
        if self.no_api {
            config.enabled = false;
        }
        Ok((config, explicit))
    }
}

/// SIGINT and SIGTERM, listened for from the moment this is made: made before anything
/// starts, so a signal during start-up stops the process cleanly instead of killing it.
pub(super) struct ShutdownSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Starts listening (inside the runtime).
    pub(super) fn listen() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(ShutdownSignals {
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        })
    }

    /// Waits for SIGINT or SIGTERM and says which.
    pub(super) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

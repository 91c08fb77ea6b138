//! `headwater broker`: the built-in MQTT broker alone, and the broker start-up that
//! `run` shares.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::broker::mosquitto_conf::{self, ConfError};
use crate::broker::{Broker, BrokerConfig, ListenerConfig, Persistence};
use crate::store::Store;

/// Options of `headwater broker` (and the broker flags of `run`).
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// Address to listen on, host:port (repeat for several; port 0 picks a free one)
    /// [default: the settings file's listeners, else 127.0.0.1:1883]
    #[arg(long = "listen", value_name = "HOST:PORT")]
    pub listen: Vec<String>,
    /// Keep nothing on disk (default: durable, under the data directory)
    #[arg(long)]
    pub memory: bool,
    /// Read a Mosquitto configuration file (mosquitto.conf, with its include_dir) with
    /// Mosquitto's meaning, except that persistence is on unless `persistence false` is
    /// written; unsupported keys are warnings, unsupported security keys and malformed
    /// lines stop the start. --listen, --memory and --data-dir override it. See
    /// docs/mosquitto-conf.md
    #[arg(short = 'c', long = "config-file", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
}

impl BrokerArgs {
    /// `config` with these flags applied; for `run`, which has its own settings file and
    /// does not read a Mosquitto file (yet).
    pub fn apply(&self, config: BrokerConfig) -> anyhow::Result<BrokerConfig> {
        if let Some(file) = &self.config_file {
            // Refused rather than ignored: a user who wrote it expects it to count.
            anyhow::bail!(
                "`-c {}`: a Mosquitto configuration file is read by `headwater broker` only; give `run` its broker settings in the `broker:` section of its settings file",
                file.display()
            );
        }
        self.overrides(config)
    }

    /// The broker settings of `headwater broker`: the Mosquitto file of `-c` (its
    /// warnings logged, one line each) or the defaults, with the flags applied; and the
    /// data directory the file names (`persistence_location`).
    pub fn load(&self) -> anyhow::Result<(BrokerConfig, Option<PathBuf>)> {
        let Some(file) = &self.config_file else {
            return Ok((self.overrides(BrokerConfig::default())?, None));
        };
        let loaded = mosquitto_conf::load(file).map_err(|error| match &error {
            ConfError::Invalid(errors) => anyhow::anyhow!(
                "{} has {} error{}; the broker does not start:\n{error}",
                file.display(),
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            ),
            ConfError::Read { .. } => {
                anyhow::Error::new(error).context("cannot read the Mosquitto configuration")
            }
        })?;
        for warning in &loaded.warnings {
            tracing::warn!("{warning}");
        }
        tracing::info!(file = %file.display(), "read Mosquitto configuration");
        Ok((self.overrides(loaded.config)?, loaded.data_dir))
    }

    /// `config` with --listen and --memory applied.
    fn overrides(&self, mut config: BrokerConfig) -> anyhow::Result<BrokerConfig> {
        if !self.listen.is_empty() {
            config.listeners = self
                .listen
                .iter()
                .map(|address| {
                    let (host, port) = address
                        .rsplit_once(':')
                        .with_context(|| format!("`{address}`: write HOST:PORT"))?;
                    let port = port
                        .parse()
                        .with_context(|| format!("`{address}`: the port is not a number"))?;
                    Ok(ListenerConfig::tcp(host.trim_matches(['[', ']']), port))
                })
                .collect::<anyhow::Result<_>>()?;
        }
        if self.memory {
            config.persistence = Persistence::Memory;
        }
        Ok(config)
    }
}

/// Opens the broker on `store` (the process's store, see `headwater::broker::open_store`),
/// binds its listeners and starts it; its tasks run on `runtime` ([`super::BrokerRuntime`]).
pub async fn start(
    config: BrokerConfig,
    store: Store,
    runtime: &tokio::runtime::Handle,
) -> anyhow::Result<Broker> {
    raise_open_file_limit();
    let broker = {
        let _on_broker_runtime = runtime.enter();
        Broker::open_on(config, store)?
    };
    let listeners = broker.bind().await?;
    broker.start(listeners);
    reload_on_sighup(broker.clone())?;
    Ok(broker)
}

/// SIGHUP rereads certificates, CRLs, password and ACL files, as it does for
/// Mosquitto; broken new files leave the old ones in force.
fn reload_on_sighup(broker: Broker) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the broker's files");
            broker.reload();
        }
    });
    Ok(())
}

/// Runs the broker alone until SIGINT or SIGTERM; `data_dir` is the --data-dir flag,
/// which wins over the Mosquitto file's `persistence_location`.
pub fn broker(args: &BrokerArgs, data_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let (config, from_file) = args.load()?;
    let data_dir = super::data_dir(data_dir, from_file);
    let runtime = super::runtime("headwater")?;
    let broker_runtime = super::BrokerRuntime::start()?;
    let on_broker = broker_runtime.handle().clone();
    let code = runtime.block_on(async move {
        let mut signals = super::run::ShutdownSignals::listen()?;
        let store = super::open_store(&data_dir, config.persistence)?;
        let broker = start(config, store, &on_broker).await?;
        let notify = super::notify::Notifier::from_env();
        notify.ready("broker running");
        let reason = signals.recv().await;
        tracing::info!("shutting down: {reason}");
        notify.stopping(reason);
        broker.shutdown().await;
        anyhow::Ok(ExitCode::SUCCESS)
    });
    // Outside the main runtime: a runtime may not be dropped inside another.
    drop(broker_runtime);
    code
}

/// A broker holds one descriptor per client: lift the soft limit to the hard one, as
/// DESIGN.md asks (Mosquitto leaves this to systemd's LimitNOFILE).
pub(super) fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

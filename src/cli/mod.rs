//! The command line: parses arguments without touching the system, sets up logging,
//! then runs one command. `anyhow` lives here and in `main.rs` only.

mod bench;
mod broker;
mod check;
mod graph;
mod logging;
mod notify;
mod passwd;
mod plugin;
mod plugin_project;
mod run;
mod tap;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// A headless, Node-RED-like IoT gateway: YAML flows from sensors and MQTT through
/// scripts to sinks, in one binary.
#[derive(Debug, Parser)]
#[command(name = "headwater", version, about, long_about = None)]
pub struct Cli {
    /// Where state and files are kept [default: data_dir from the flow files, else
    /// $STATE_DIRECTORY (set by systemd), else ./data]
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Log line format; the level comes from RUST_LOG (default `info`)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// What to do
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run flows until SIGINT or SIGTERM
    ///
    /// SIGHUP, `POST /api/reload` or a change of a flow file (or of a script or plugin
    /// file a flow reads; polled every second, `reload: { watch: false }` turns it off)
    /// reloads the flows: the files are checked first, then only the flows that changed
    /// are restarted. See docs/reload.md.
    Run {
        /// Flow files (YAML); each flow is loaded and checked on its own
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Broker options (override the settings file's `broker:` section)
        #[command(flatten)]
        broker: broker::BrokerArgs,
        /// Do not start the built-in MQTT broker
        #[arg(long)]
        no_broker: bool,
        /// Admin API options
        #[command(flatten)]
        api: run::ApiArgs,
    },
    /// Run the built-in MQTT broker alone (MQTT 3.1, 3.1.1 and 5.0) until SIGINT or SIGTERM
    Broker {
        /// Broker options
        #[command(flatten)]
        args: broker::BrokerArgs,
    },
    /// Check flow files and report every problem as file:line:col; exit 1 if any
    Check {
        /// Flow files (YAML)
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Print the wired graph of flow files as Graphviz DOT or Mermaid
    Graph {
        /// Flow files (YAML)
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Output format
        #[arg(long, value_enum, default_value_t = graph::GraphFormat::Dot)]
        format: graph::GraphFormat,
    },
    /// Print the live messages leaving a node, or published on the broker, from a
    /// running process's admin API
    Tap(tap::TapArgs),
    /// Print the JSON Schema of the flow file format (for editor autocompletion)
    Schema,
    /// Manage a Mosquitto password file: add or change a user, delete one (-D), or hash
    /// a plain-text file (-U), as mosquitto_passwd does
    Passwd(passwd::PasswdArgs),
    /// WebAssembly plugin tools: start a plugin project, build it, check a module
    /// against the plugin ABI
    Plugin {
        /// What to do
        #[command(subcommand)]
        command: plugin::PluginCommand,
    },
    /// Measure Headwater against the software it replaces (see docs/benchmarks.md)
    Bench {
        /// What to measure
        #[command(subcommand)]
        target: bench::BenchTarget,
    },
}

/// Parses the arguments, runs the command, and turns its result into an exit code:
/// 0 on success, 1 on any error (printed with its chain), 2 on bad arguments (clap).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match dispatch(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run {
            files,
            broker,
            no_broker,
            api,
        } => run::run(&files, cli.data_dir, (!no_broker).then_some(&broker), &api),
        Command::Broker { args } => broker::broker(&args, cli.data_dir),
        Command::Check { files } => Ok(check::check(&files, cli.data_dir)),
        Command::Graph { files, format } => graph::graph(&files, format),
        Command::Bench { target } => bench::bench(target),
        Command::Passwd(args) => passwd::passwd(&args),
        Command::Plugin { command } => plugin::plugin(command),
        Command::Tap(args) => tap::tap(&args),
        Command::Schema => {
            let schema = crate::flow::schema::flow_file_schema();
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_logging(format: LogFormat) {
    logging::init(format);
}

/// The multi-threaded tokio runtime every long-running command runs on; `name` names
/// its worker threads. A worker going idle gives back memory other threads freed
/// (`release_freed_memory`).
fn runtime(name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(name)
        .on_thread_park(crate::release_freed_memory)
        .build()
        .context("cannot start the async runtime")
}

/// The broker's own runtime, for every connection, listener and timer of the built-in
/// broker, beside the process's main runtime (flows, the API): a current-thread tokio
/// runtime driven by one thread of its own, named `broker`. One thread because at a
/// home hub's rates the broker's tasks mostly hand messages to one another: with two
/// workers each hand-over could wake the other worker on the other core, which on a VM
/// whose idle vCPUs halt is a trip through the hypervisor; current-thread because tokio's
/// multi-threaded scheduler, even with one worker, keeps per-poll statistics and
/// cross-worker bookkeeping the broker's latency pays for
/// (docs/decisions/019-broker-runtime.md). Its own runtime because a busy flow then never
/// delays a PUBACK. Dropping it ends the thread and drops what tasks are left.
struct BrokerRuntime {
    /// Spawns onto the runtime, or enters it, from any thread.
    handle: tokio::runtime::Handle,
    /// Dropped to end the thread's `block_on`.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The `broker` thread; joined on drop.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BrokerRuntime {
    fn start() -> anyhow::Result<BrokerRuntime> {
        use anyhow::Context;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // Names the blocking pool's threads (password hashing) after the broker too.
            .thread_name("broker")
            .on_thread_park(crate::release_freed_memory)
            .build()
            .context("cannot start the broker's runtime")?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("broker".into())
            .spawn(move || {
                runtime.block_on(async {
                    // Err when the sender is dropped: the same order to stop.
                    let _ = stopped.await;
                });
                // Outside `block_on`: the tasks still spawned are dropped here.
                drop(runtime);
            })
            .context("cannot start the broker's thread")?;
        Ok(BrokerRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for BrokerRuntime {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the broker's thread panicked");
        }
    }
}

/// The data directory: the flag, else the flow files' `data_dir`, else systemd's
/// `$STATE_DIRECTORY`, else `./data`.
fn data_dir(flag: Option<PathBuf>, from_files: Option<PathBuf>) -> PathBuf {
    flag.or(from_files)
        .or_else(|| {
            // systemd may pass several colon-separated directories; the first is ours.
            std::env::var_os("STATE_DIRECTORY").and_then(|v| {
                v.to_str()
                    .and_then(|s| s.split(':').next())
                    .map(PathBuf::from)
            })
        })
        .unwrap_or_else(|| PathBuf::from("data"))
}

/// The process's one store: `DATA_DIR/store.redb`, or memory when the broker's
/// persistence is `memory` (then flow state is not kept either).
fn open_store(
    data_dir: &std::path::Path,
    persistence: crate::broker::Persistence,
) -> anyhow::Result<crate::store::Store> {
    use anyhow::Context;
    match persistence {
        crate::broker::Persistence::Durable => crate::broker::open_store(data_dir)
            .with_context(|| format!("cannot open the store in {}", data_dir.display())),
        crate::broker::Persistence::Memory => Ok(crate::store::Store::open(
            crate::store::StoreOptions::default(),
        )?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn data_dir_precedence() {
        assert_eq!(
            data_dir(Some("a".into()), Some("b".into())),
            PathBuf::from("a")
        );
        assert_eq!(data_dir(None, Some("b".into())), PathBuf::from("b"));
    }
}

//! The wasmtime host for WebAssembly plugins: the shared engine and its epoch ticker,
//! loading a module through the precompiled cache, checking it against the ABI
//! (`abi.rs`), and instances with their limits (`host.rs`, `limits.rs`).
//!
//! Invariants:
//! - A module is checked before anything of it runs: exports present with the ABI's
//!   signatures, no import outside [`abi::HOST_IMPORTS`] (no WASI), and
//!   `hw_abi_version` returning [`abi::ABI_VERSION`].
//! - Every call into a guest runs under an epoch deadline, the store's memory limiter
//!   and the engine's stack limit; none of them can stop the process, only the call.
//! - One engine per stack limit, shared by every plugin of the process (normally just
//!   the one for the default 512 KiB), and one ticker thread for all of them.

pub mod abi;
pub mod cache;
pub mod host;
pub mod limits;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use wasmtime::{Config, Engine, ExternType, InstancePre, Module};

pub use cache::Loaded;
pub use host::{Binding, CallOutput, Emitted, Fault, Instance};
pub use limits::Limits;

/// Largest module file accepted (a plugin is typically tens of KiB).
pub const MAX_MODULE_BYTES: u64 = 64 << 20;

/// Why a plugin cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be read.
    #[error("cannot read plugin `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is bigger than [`MAX_MODULE_BYTES`].
    #[error("plugin `{path}` is {size} bytes; at most {MAX_MODULE_BYTES} are accepted")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Not a valid WebAssembly module, or wasmtime refused it.
    #[error("plugin `{path}` is not a valid WebAssembly module: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// wasmtime's reason.
        message: String,
    },
    /// The module does not follow the ABI; every problem is listed.
    #[error("plugin `{path}` does not follow the headwater plugin ABI: {}", problems.join("; "))]
    Abi {
        /// The file.
        path: PathBuf,
        /// Each problem, as `plugin check` prints it.
        problems: Vec<String>,
    },
    /// `hw_abi_version` answered another version.
    #[error("plugin `{path}`: {}", version_problem(*version))]
    WrongVersion {
        /// The file.
        path: PathBuf,
        /// The version it speaks.
        version: i32,
    },
    /// Instantiating the module or calling `hw_abi_version` failed.
    #[error("plugin `{path}` failed to start: {fault}")]
    Start {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        fault: Fault,
    },
    /// The engine could not be configured (a bug or an unsupported platform).
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

/// The process's engines by stack limit, plus the ticker that advances their epochs.
/// A process-wide registry because `build()` gets no handle to share one through, and
/// because one engine (and one ticker) must serve every node of every flow.
struct Engines {
    by_stack: Mutex<Vec<(u64, Arc<Engine>)>>,
}

fn engines() -> &'static Engines {
    static ENGINES: OnceLock<Engines> = OnceLock::new();
    ENGINES.get_or_init(|| Engines {
        by_stack: Mutex::new(Vec::new()),
    })
}

/// The shared engine for plugins with a stack limit of `stack` bytes.
pub fn engine(stack: u64) -> Result<Arc<Engine>, PluginError> {
    let registry = engines();
    let mut engines = registry.by_stack.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, engine)) = engines.iter().find(|(s, _)| *s == stack) {
        return Ok(engine.clone());
    }
    let engine = Arc::new(new_engine(stack)?);
    let first = engines.is_empty();
    engines.push((stack, engine.clone()));
    drop(engines);
    if first {
        start_ticker();
    }
    Ok(engine)
}

fn new_engine(stack: u64) -> Result<Engine, PluginError> {
    let mut config = Config::new();
    // Deadlines: the ticker bumps the epoch; a store traps once its deadline passes.
    config.epoch_interruption(true);
    config.max_wasm_stack(usize::try_from(stack).unwrap_or(usize::MAX));
    // Small address-space reservations: a Pi runs many instances, and a 32-bit armv7
    // process has only 3 GiB of address space (wasmtime's defaults reserve 4 GiB plus
    // guards per memory on 64-bit hosts). Bounds checks become explicit, and a memory
    // growing beyond its reservation is moved; both are cheap at plugin sizes.
    config.memory_reservation(16 << 20);
    config.memory_guard_size(64 << 10);
    config.memory_reservation_for_growth(1 << 20);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    Engine::new(&config).map_err(|e| PluginError::Engine(e.to_string()))
}

/// One `std::thread` advancing every engine's epoch every [`limits::TICK`]: deadlines
/// are wall-clock and must tick whatever the async runtime is doing.
fn start_ticker() {
    let spawned = std::thread::Builder::new()
        .name("hw-plugin-epoch".into())
        .spawn(|| {
            loop {
                std::thread::sleep(limits::TICK);
                let engines = engines().by_stack.lock().unwrap_or_else(|p| p.into_inner());
                for (_, engine) in engines.iter() {
                    engine.increment_epoch();
                }
            }
        });
    if let Err(e) = spawned {
        // Without a ticker no deadline fires; say so loudly rather than hang later.
        tracing::error!("cannot start the plugin epoch ticker, plugin timeouts will not fire: {e}");
    }
}

/// What a module declares, for `plugin check` and messages.
#[derive(Clone, Debug, Default)]
pub struct Inspection {
    /// Exports as `name: type`.
    pub exports: Vec<(String, String)>,
    /// Imports as `module.name: type`.
    pub imports: Vec<(String, String)>,
    /// Everything wrong with the module's shape, one sentence each.
    pub problems: Vec<String>,
}

/// Checks a compiled module's exports and imports against the ABI.
pub fn inspect(module: &Module) -> Inspection {
    let mut inspection = Inspection::default();
    for export in module.exports() {
        inspection.exports.push((
            export.name().to_string(),
            abi::describe_extern(&export.ty()),
        ));
    }
    for import in module.imports() {
        inspection.imports.push((
            format!("{}.{}", import.module(), import.name()),
            abi::describe_extern(&import.ty()),
        ));
    }
    match module.get_export("memory") {
        Some(ExternType::Memory(memory)) => {
            if memory.is_64() {
                inspection.problems.push(
                    "export `memory` is a 64-bit memory; the ABI uses 32-bit pointers".into(),
                );
            } else if memory.is_shared() {
                inspection
                    .problems
                    .push("export `memory` is a shared memory; plugins are single-threaded".into());
            }
        }
        Some(other) => inspection.problems.push(format!(
            "export `memory` is a {}, expected a memory",
            abi::describe_extern(&other)
        )),
        None => inspection
            .problems
            .push("missing export `memory` (memory)".into()),
    }
    for export in abi::GUEST_EXPORTS {
        match module.get_export(export.name) {
            Some(ExternType::Func(ty)) if export.signature.matches(&ty) => {}
            Some(other) => inspection.problems.push(format!(
                "export `{}` has type {}, expected {}",
                export.name,
                abi::describe_extern(&other),
                export.signature
            )),
            None if export.required => inspection.problems.push(format!(
                "missing export `{}` ({})",
                export.name, export.signature
            )),
            None => {}
        }
    }
    for import in module.imports() {
        let known = abi::HOST_IMPORTS
            .iter()
            .find(|h| h.module == import.module() && h.name == import.name());
        match (known, import.ty()) {
            (Some(host), ExternType::Func(ty)) if host.signature.matches(&ty) => {}
            (Some(host), other) => inspection.problems.push(format!(
                "import `{}.{}` has type {}, expected {}",
                import.module(),
                import.name(),
                abi::describe_extern(&other),
                host.signature
            )),
            (None, other) => inspection.problems.push(format!(
                "unknown import `{}.{}` ({}); a plugin may import only hw.emit, hw.log, hw.kv_get, hw.kv_set, hw.now_ms and env.abort",
                import.module(),
                import.name(),
                abi::describe_extern(&other)
            )),
        }
    }
    inspection
}

/// A loaded, checked plugin module, ready to be instantiated; shared by the runs of a node.
pub struct Plugin {
    /// The module file.
    pub path: PathBuf,
    /// The engine it was compiled for.
    pub engine: Arc<Engine>,
    /// The module, pre-linked.
    pre: InstancePre<host::HostState>,
    /// Its exports and imports.
    pub inspection: Inspection,
    /// The limits each instance gets.
    pub limits: Limits,
    /// Whether the module came from the cache.
    pub loaded: Loaded,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("limits", &self.limits)
            .field("loaded", &self.loaded)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// Reads, compiles (through the cache in `data_dir/plugin-cache` when given) and
    /// checks the module at `path`, then instantiates it once to ask its ABI version.
    pub fn load(
        path: &Path,
        limits: Limits,
        data_dir: Option<&Path>,
    ) -> Result<Plugin, PluginError> {
        let bytes = read_module(path)?;
        Self::from_bytes(path, &bytes, limits, data_dir)
    }

    /// Like [`Plugin::load`] with the module's bytes already read.
    pub fn from_bytes(
        path: &Path,
        bytes: &[u8],
        limits: Limits,
        data_dir: Option<&Path>,
    ) -> Result<Plugin, PluginError> {
        let engine = engine(limits.stack)?;
        let cache_dir = data_dir.map(|d| d.join(cache::CACHE_DIR));
        let (module, loaded) = cache::load(&engine, bytes, cache_dir.as_deref()).map_err(|e| {
            PluginError::Invalid {
                path: path.to_path_buf(),
                message: format!("{e:#}"),
            }
        })?;
        match &loaded {
            Loaded::FromCache => tracing::debug!(plugin = %path.display(), "loaded from cache"),
            Loaded::Compiled => tracing::debug!(plugin = %path.display(), "compiled and cached"),
            Loaded::CompiledUncached(why) => {
                tracing::debug!(plugin = %path.display(), "compiled, not cached: {why}")
            }
        }
        let inspection = inspect(&module);
        if !inspection.problems.is_empty() {
            return Err(PluginError::Abi {
                path: path.to_path_buf(),
                problems: inspection.problems,
            });
        }
        let linker = host::linker(&engine).map_err(|e| PluginError::Engine(e.to_string()))?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| PluginError::Invalid {
                path: path.to_path_buf(),
                message: format!("{e:#}"),
            })?;
        let plugin = Plugin {
            path: path.to_path_buf(),
            engine,
            pre,
            inspection,
            limits,
            loaded,
        };
        let mut probe = plugin
            .instantiate(Binding {
                node: crate::engine::NodeId::new("plugin", "check"),
                clock: crate::engine::Clock::system(),
                kv: None,
                ports: vec!["out".into()],
            })
            .map_err(|fault| PluginError::Start {
                path: path.to_path_buf(),
                fault,
            })?;
        let version = probe.abi_version().map_err(|fault| PluginError::Start {
            path: path.to_path_buf(),
            fault,
        })?;
        if version != abi::ABI_VERSION {
            return Err(PluginError::WrongVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        Ok(plugin)
    }

    /// A new instance (no `hw_init` yet).
    pub fn instantiate(&self, binding: Binding) -> Result<Instance, Fault> {
        Instance::new(&self.engine, &self.pre, self.limits, binding)
    }
}

/// The message for a module answering another ABI version.
pub fn version_problem(version: i32) -> String {
    format!(
        "plugin ABI version {version}, this headwater speaks version {}",
        abi::ABI_VERSION
    )
}

/// Reads a module file, refusing one larger than [`MAX_MODULE_BYTES`].
pub fn read_module(path: &Path) -> Result<Vec<u8>, PluginError> {
    let read_err = |source| PluginError::Read {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_err)?.len();
    if size > MAX_MODULE_BYTES {
        return Err(PluginError::TooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    std::fs::read(path).map_err(read_err)
}

#[cfg(test)]
mod tests;

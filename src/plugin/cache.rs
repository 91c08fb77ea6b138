//! The precompiled module cache in `DATA_DIR/plugin-cache/`: compiling a plugin with
//! Cranelift takes tens to hundreds of milliseconds (seconds under Pulley on a Pi), so the
//! machine code is kept and reloaded on later starts.
//!
//! A file is named by the engine's compatibility hash (wasmtime version, target, every
//! setting that changes the code) and the SHA-256 of the module's bytes, so a new
//! headwater, other limits or a changed plugin simply miss. Each file starts with the
//! SHA-256 of the rest: wasmtime checks that an artifact is compatible, not that it is
//! intact, and a torn or bit-flipped file must never be run. Any failure to read, verify
//! or deserialize is a miss: the module is compiled again and the file rewritten
//! (temporary file + rename, so a reader never sees half a file).

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ring::digest::{SHA256, digest};
use wasmtime::{Engine, Module};

/// The cache's folder under the data directory.
pub const CACHE_DIR: &str = "plugin-cache";

/// Length of the digest that starts every cache file.
const DIGEST_LEN: usize = 32;

/// Where a module came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loaded {
    /// Deserialized from the cache file.
    FromCache,
    /// Compiled, and the cache file written.
    Compiled,
    /// Compiled; the cache could not be used (the reason, for a debug line).
    CompiledUncached(String),
}

/// The cache file for `module_bytes` under `dir` with `engine`'s settings.
pub fn cache_path(dir: &Path, engine: &Engine, module_bytes: &[u8]) -> PathBuf {
    // `DefaultHasher::new()` has fixed keys: stable within one build, which is all the
    // engine hash needs (a new build may have a new wasmtime anyway).
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let engine_hash = hasher.finish();
    let module = digest(&SHA256, module_bytes);
    let module_hex: String = module.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    dir.join(format!("{engine_hash:016x}-{module_hex}.cwasm"))
}

/// Loads `module_bytes` through the cache in `dir` (`None`: no cache, just compile).
pub fn load(
    engine: &Engine,
    module_bytes: &[u8],
    dir: Option<&Path>,
) -> wasmtime::Result<(Module, Loaded)> {
    let Some(dir) = dir else {
        let module = Module::new(engine, module_bytes)?;
        return Ok((
            module,
            Loaded::CompiledUncached("no cache directory".into()),
        ));
    };
    let path = cache_path(dir, engine, module_bytes);
    if let Some(module) = read_cached(engine, &path) {
        return Ok((module, Loaded::FromCache));
    }
    // Compile once, both to run and to store: `precompile_module` gives the artifact,
    // and deserializing it is cheaper than compiling twice.
    let artifact = engine.precompile_module(module_bytes)?;
    // SAFETY: the bytes were produced just now by `precompile_module` on this engine.
    let module = unsafe { Module::deserialize(engine, &artifact)? };
    let loaded = match write_atomically(dir, &path, &artifact) {
        Ok(()) => Loaded::Compiled,
        Err(e) => Loaded::CompiledUncached(format!("cannot write {}: {e}", path.display())),
    };
    Ok((module, loaded))
}

/// The cached module at `path`, if the file is there, intact and loads.
fn read_cached(engine: &Engine, path: &Path) -> Option<Module> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < DIGEST_LEN {
        return None;
    }
    let (stored, artifact) = bytes.split_at(DIGEST_LEN);
    if digest(&SHA256, artifact).as_ref() != stored {
        tracing::debug!(path = %path.display(), "plugin cache file is damaged; compiling again");
        return None;
    }
    // SAFETY: the artifact is one this process family wrote (its digest matches), in a
    // directory only headwater writes; wasmtime refuses artifacts of another version or
    // configuration, and any refusal is a miss.
    match unsafe { Module::deserialize(engine, artifact) } {
        Ok(module) => Some(module),
        Err(e) => {
            tracing::debug!(path = %path.display(), "plugin cache file not usable ({e}); compiling again");
            None
        }
    }
}

fn write_atomically(dir: &Path, path: &Path, artifact: &[u8]) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(dir)?;
    let temp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("module"),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(digest(&SHA256, artifact).as_ref())?;
        file.write_all(artifact)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

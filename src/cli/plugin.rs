//! `headwater plugin`: tools for WebAssembly plugins. `check` loads a module the way the
//! `wasm` node does and says what it exports, imports and what is wrong with it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use crate::plugin::{self, Limits, Plugin, PluginError};

/// Plugin tools.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Check a plugin module against the plugin ABI: prints its ABI version, exports and
    /// imports, and every problem; exits 1 if the module cannot be used
    Check {
        /// The plugin module (.wasm)
        #[arg(value_name = "FILE.wasm")]
        file: PathBuf,
    },
}

/// Runs a `plugin` subcommand.
pub fn plugin(command: PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::Check { file } => check(&file),
    }
}

fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let bytes = plugin::read_module(path)?;
    let engine = plugin::engine(Limits::default().stack)?;
    let module = match wasmtime::Module::new(&engine, &bytes) {
        Ok(module) => module,
        Err(e) => {
            eprintln!(
                "error: {}: not a valid WebAssembly module: {e:#}",
                path.display()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let inspection = plugin::inspect(&module);
    println!("plugin: {}", path.display());
    let list = |items: &[(String, String)]| {
        if items.is_empty() {
            println!("  (none)");
        }
        for (name, ty) in items {
            println!("  {name}: {ty}");
        }
    };
    println!("exports:");
    list(&inspection.exports);
    println!("imports:");
    list(&inspection.imports);
    if !inspection.problems.is_empty() {
        for problem in &inspection.problems {
            eprintln!("error: {problem}");
        }
        return Ok(ExitCode::FAILURE);
    }
    // The shape is right: instantiate it as the node would, to ask its ABI version.
    match Plugin::from_bytes(path, &bytes, Limits::default(), None) {
        Ok(_) => {
            println!("ABI version: {}", plugin::abi::ABI_VERSION);
            println!("ok: the plugin follows the headwater plugin ABI");
            Ok(ExitCode::SUCCESS)
        }
        Err(PluginError::WrongVersion { version, .. }) => {
            println!("ABI version: {version}");
            eprintln!("error: {}", plugin::version_problem(version));
            Ok(ExitCode::FAILURE)
        }
        Err(PluginError::Start { fault, .. }) => {
            eprintln!("error: the plugin failed to start: {fault}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e).with_context(|| format!("cannot check {}", path.display())),
    }
}

//! `headwater check`: load, validate and build every node without running anything.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::engine::Clock;
use crate::flow::{self, interpolate::ProcessEnv};

/// Prints every problem of the files and returns exit code 1 if there is any.
pub fn check(files: &[PathBuf], data_dir_flag: Option<PathBuf>) -> ExitCode {
    let set = match flow::load(files, &ProcessEnv) {
        Ok(set) => set,
        Err(diagnostics) => return report(&diagnostics),
    };
    // Warnings of a `mosquitto_conf:` file (unknown keys and the like), with file:line.
    for warning in &set.settings.broker_warnings {
        eprintln!("warning: {warning}");
    }
    let data_dir = super::data_dir(data_dir_flag, set.settings.data_dir.clone());
    if let Err(diagnostics) = set.plan(&data_dir, &Clock::system()) {
        return report(&diagnostics);
    }
    let nodes: usize = set.flows.iter().map(|f| f.nodes.len()).sum();
    println!(
        "ok: {} flow{}, {nodes} node{} in {} file{}",
        set.flows.len(),
        plural(set.flows.len()),
        plural(nodes),
        files.len(),
        plural(files.len())
    );
    ExitCode::SUCCESS
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Prints diagnostics to stderr and returns exit code 1.
pub fn report(diagnostics: &flow::Diagnostics) -> ExitCode {
    eprintln!("{diagnostics}");
    let n = diagnostics.0.len();
    eprintln!("\n{n} error{}", plural(n));
    ExitCode::FAILURE
}

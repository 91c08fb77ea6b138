//! Plugin projects for authors: `headwater plugin new` writes a ready project from the
//! templates in `sdk/template/` (embedded in the binary, with the SDK of this version),
//! and `headwater plugin build` finds the project's language and runs its toolchain.

use std::ffi::OsStr;
use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// The languages a plugin project can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with the `headwater-plugin` crate (wasm32-unknown-unknown)
    Rust,
    /// C, with the single header `headwater_plugin.h` (clang --target=wasm32 + lld)
    C,
    /// AssemblyScript, with the SDK file `headwater_plugin.ts` (npm `assemblyscript`)
    #[value(alias = "as")]
    Assemblyscript,
}

/// The AssemblyScript compiler a new project pins (the one `sdk/assemblyscript` is
/// tested with, through its package-lock.json).
const ASSEMBLYSCRIPT_VERSION: &str = "0.28.20";

/// One file of a template: where it goes in the project, and its text.
struct File {
    path: &'static str,
    text: &'static str,
    /// Whether `{{name}}` and the like are filled in (the SDK's own files are copied
    /// as they are).
    template: bool,
}

macro_rules! files {
    ($template:literal; $($path:literal => $source:literal),* $(,)?) => {
        &[$(File {
            path: $path,
            text: include_str!(concat!("../../", $source)),
            template: $template,
        }),*]
    };
}

const RUST_FILES: &[File] = files![true;
    "Cargo.toml" => "sdk/template/rust/Cargo.toml",
    "src/lib.rs" => "sdk/template/rust/src/lib.rs",
    "flow.yaml" => "sdk/template/rust/flow.yaml",
    ".gitignore" => "sdk/template/rust/.gitignore",
];

const RUST_SDK: &[File] = files![false;
    "headwater-plugin/Cargo.toml" => "sdk/rust/Cargo.toml",
    "headwater-plugin/README.md" => "sdk/rust/README.md",
    "headwater-plugin/src/lib.rs" => "sdk/rust/src/lib.rs",
    "headwater-plugin/src/error.rs" => "sdk/rust/src/error.rs",
    "headwater-plugin/src/global.rs" => "sdk/rust/src/global.rs",
    "headwater-plugin/src/host.rs" => "sdk/rust/src/host.rs",
    "headwater-plugin/src/json.rs" => "sdk/rust/src/json.rs",
    "headwater-plugin/src/kv.rs" => "sdk/rust/src/kv.rs",
    "headwater-plugin/src/log.rs" => "sdk/rust/src/log.rs",
    "headwater-plugin/src/record.rs" => "sdk/rust/src/record.rs",
    "headwater-plugin/src/testing.rs" => "sdk/rust/src/testing.rs",
];

const C_FILES: &[File] = files![true;
    "plugin.c" => "sdk/template/c/plugin.c",
    "flow.yaml" => "sdk/template/c/flow.yaml",
    ".gitignore" => "sdk/template/c/.gitignore",
];

const C_SDK: &[File] = files![false;
    "headwater_plugin.h" => "sdk/c/headwater_plugin.h",
];

const AS_FILES: &[File] = files![true;
    "package.json" => "sdk/template/assemblyscript/package.json",
    "assembly/index.ts" => "sdk/template/assemblyscript/assembly/index.ts",
    "flow.yaml" => "sdk/template/assemblyscript/flow.yaml",
    ".gitignore" => "sdk/template/assemblyscript/.gitignore",
];

const AS_SDK: &[File] = files![false;
    "assembly/headwater_plugin.ts" => "sdk/assemblyscript/assembly/index.ts",
];

/// Checks a plugin name: it names the crate, the package and the `.wasm` file.
fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !starts_well || !rest_ok || name.len() > 64 {
        bail!(
            "invalid plugin name `{name}`: use 1 to 64 lowercase letters, digits, `_` and `-`, \
             starting with a letter"
        );
    }
    Ok(())
}

fn fill(text: &str, name: &str) -> String {
    text.replace("{{name}}", name)
        .replace("{{crate_name}}", &name.replace('-', "_"))
        .replace("{{assemblyscript_version}}", ASSEMBLYSCRIPT_VERSION)
}

/// Writes a new plugin project called `name` in `dir` (default: `./NAME`), which must
/// not exist or be empty. Returns the project's folder.
pub fn new_project(name: &str, lang: Lang, dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let root = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if root.exists() {
        let mut entries = fs::read_dir(&root).with_context(|| {
            format!(
                "cannot read {}: give a new folder with --dir",
                root.display()
            )
        })?;
        if entries.next().is_some() {
            bail!(
                "{} exists and is not empty: give a new folder with --dir",
                root.display()
            );
        }
    }
    let sets: [&[File]; 2] = match lang {
        Lang::Rust => [RUST_FILES, RUST_SDK],
        Lang::C => [C_FILES, C_SDK],
        Lang::Assemblyscript => [AS_FILES, AS_SDK],
    };
    for file in sets.into_iter().flatten() {
        let path = root.join(file.path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let text = if file.template {
            fill(file.text, name)
        } else {
            file.text.to_owned()
        };
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(root)
}

/// Builds the plugin project in `dir` into `DIR/build/NAME.wasm` and returns that path.
/// The language comes from the project's files: `Cargo.toml` (Rust), `package.json`
/// (AssemblyScript), `.c` files (C).
pub fn build_project(dir: &Path) -> anyhow::Result<PathBuf> {
    if !dir.is_dir() {
        bail!(
            "{} is not a folder: give the plugin project's folder",
            dir.display()
        );
    }
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let out_dir = dir.join("build");
    let wasm = if dir.join("Cargo.toml").is_file() {
        build_rust(&dir, &out_dir)?
    } else if dir.join("package.json").is_file() {
        build_assemblyscript(&dir, &out_dir)?
    } else if !c_sources(&dir)?.is_empty() {
        build_c(&dir, &out_dir)?
    } else {
        bail!(
            "{} holds no plugin project: expected Cargo.toml (Rust), package.json \
             (AssemblyScript) or .c files (C); `headwater plugin new` writes one",
            dir.display()
        );
    };
    Ok(wasm)
}

/// The path of `program` on PATH, if it is there.
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn require(program: &str, install: &str) -> anyhow::Result<PathBuf> {
    find_program(program).with_context(|| format!("{program} is not installed: {install}"))
}

/// Runs a build command with its output on our stderr; fails with the command's name.
fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    // Our stdout carries only the path of the built module (scripts read it), so the
    // tools' own chatter (npm's "added 3 packages") goes to stderr.
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot duplicate stderr")?;
    let status = command
        .stdout(Stdio::from(stderr))
        .stderr(Stdio::inherit())
        .status()
        .with_context(|| format!("cannot start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status}): see its messages above");
    }
    Ok(())
}

fn copy_into(from: &Path, out_dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let to = out_dir.join(format!("{name}.wasm"));
    fs::copy(from, &to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(to)
}

fn build_rust(dir: &Path, out_dir: &Path) -> anyhow::Result<PathBuf> {
    let cargo = require(
        "cargo",
        "install Rust with rustup, then `rustup target add wasm32-unknown-unknown`",
    )?;
    if find_program("rustup").is_some() {
        let installed = Command::new("rustup")
            .args(["target", "list", "--installed"])
            .output()
            .context("cannot run rustup")?;
        let targets = String::from_utf8_lossy(&installed.stdout);
        if !targets
            .lines()
            .any(|line| line.trim() == "wasm32-unknown-unknown")
        {
            bail!(
                "the wasm32 target of Rust is not installed: rustup target add wasm32-unknown-unknown"
            );
        }
    }
    // The artifact's path comes from cargo's own report, so CARGO_TARGET_DIR and
    // workspaces are honoured.
    let output = Command::new(cargo)
        .current_dir(dir)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start cargo")?;
    if !output.status.success() {
        bail!(
            "cargo build failed ({}): see its messages above",
            output.status
        );
    }
    let manifest = dir.join("Cargo.toml");
    let mut artifact = None;
    for line in output.stdout.split(|byte| *byte == b'\n') {
        let Ok(message) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact"
            || message["manifest_path"].as_str().map(Path::new) != Some(manifest.as_path())
        {
            continue;
        }
        let wasm = message["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|file| file.as_str())
            .find(|file| file.ends_with(".wasm"));
        if let Some(wasm) = wasm {
            artifact = Some(PathBuf::from(wasm));
        }
    }
    let artifact = artifact
        .context("cargo built no .wasm: the crate needs `crate-type = [\"cdylib\"]` under [lib]")?;
    let name = artifact
        .file_stem()
        .and_then(OsStr::to_str)
        .context("the .wasm cargo built has no usable name")?
        .to_owned();
    copy_into(&artifact, out_dir, &name)
}

fn c_sources(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut sources = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension() == Some(OsStr::new("c")) && path.is_file() {
            sources.push(path);
        }
    }
    sources.sort();
    Ok(sources)
}

fn build_c(dir: &Path, out_dir: &Path) -> anyhow::Result<PathBuf> {
    let clang = require("clang", "apt-get install -y clang lld")?;
    require("wasm-ld", "apt-get install -y lld")?;
    let name = dir
        .file_name()
        .and_then(OsStr::to_str)
        .context("the project folder has no usable name")?
        .to_owned();
    fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let wasm = out_dir.join(format!("{name}.wasm"));
    run(
        Command::new(clang)
            .current_dir(dir)
            .args(["--target=wasm32", "-nostdlib", "-O2", "-Wall", "-I"])
            .arg(dir)
            .args(["-Wl,--no-entry", "-Wl,--strip-debug", "-o"])
            .arg(&wasm)
            .args(c_sources(dir)?),
        "clang",
    )?;
    Ok(wasm)
}

fn build_assemblyscript(dir: &Path, out_dir: &Path) -> anyhow::Result<PathBuf> {
    let manifest =
        fs::read_to_string(dir.join("package.json")).context("cannot read package.json")?;
    let manifest: serde_json::Value =
        serde_json::from_str(&manifest).context("package.json is not JSON")?;
    let name = manifest["name"]
        .as_str()
        .context("package.json has no \"name\": it names the .wasm")?
        .to_owned();
    let entry = dir.join("assembly/index.ts");
    if !entry.is_file() {
        bail!(
            "{} is missing: it is the plugin's entry file",
            entry.display()
        );
    }
    let asc = dir.join("node_modules/.bin/asc");
    if !asc.is_file() {
        let npm = require("npm", "apt-get install -y nodejs npm")?;
        let install = if dir.join("package-lock.json").is_file() {
            "ci"
        } else {
            "install"
        };
        eprintln!("installing the AssemblyScript compiler (npm {install})");
        run(
            Command::new(npm).current_dir(dir).args([
                install,
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ]),
            "npm",
        )?;
        if !asc.is_file() {
            bail!(
                "npm installed no asc: add \"assemblyscript\" to the devDependencies of package.json"
            );
        }
    }
    require("node", "apt-get install -y nodejs")?;
    fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let wasm = out_dir.join(format!("{name}.wasm"));
    run(
        Command::new(&asc)
            .current_dir(dir)
            .arg("assembly/index.ts")
            // incremental: its allocator reuses what the host frees (stub never frees).
            .args(["--runtime", "incremental", "-O3", "--noAssert", "-o"])
            .arg(&wasm),
        "asc",
    )?;
    Ok(wasm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["a", "my-filter", "meter_2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "2fast", "My", "a b", "a/b", "../x", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_language_writes_a_filled_project_and_refuses_a_full_folder() {
        let tmp = tempfile::tempdir().unwrap();
        for (lang, marker) in [
            (Lang::Rust, "Cargo.toml"),
            (Lang::C, "plugin.c"),
            (Lang::Assemblyscript, "package.json"),
        ] {
            let dir = tmp.path().join(format!("{lang:?}"));
            let root = new_project("demo-plugin", lang, Some(&dir)).unwrap();
            let text = fs::read_to_string(root.join(marker)).unwrap();
            assert!(
                !text.contains("{{"),
                "{marker} of {lang:?} keeps a placeholder"
            );
            let flow = fs::read_to_string(root.join("flow.yaml")).unwrap();
            assert!(
                flow.contains("plugin: build/demo") && flow.contains(".wasm"),
                "{flow}"
            );
            let again = new_project("demo-plugin", lang, Some(&dir)).unwrap_err();
            assert!(format!("{again:#}").contains("is not empty"), "{again:#}");
        }
        let rust = tmp.path().join("Rust");
        assert!(rust.join("headwater-plugin/src/record.rs").is_file());
        assert!(tmp.path().join("C/headwater_plugin.h").is_file());
        assert!(
            tmp.path()
                .join("Assemblyscript/assembly/headwater_plugin.ts")
                .is_file()
        );
    }

    #[test]
    fn a_folder_without_a_project_is_named_as_such() {
        let tmp = tempfile::tempdir().unwrap();
        let error = build_project(tmp.path()).unwrap_err();
        assert!(
            format!("{error:#}").contains("holds no plugin project"),
            "{error:#}"
        );
    }
}

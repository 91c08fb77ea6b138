//! A flow's fingerprint for hot reload: a digest of its canonical definition (options
//! after interpolation with keys sorted, wiring, queues, state keys, buffers, delivery,
//! the directory relative paths resolve against) and of the content of the files its
//! nodes read at build time (a script's `file:` and the Rhai modules it imports, a
//! `wasm` plugin, a `ca_file`). Equal fingerprints mean the flow would run as it runs.
//!
//! Comments, descriptions, key order and the flow's place in its file do not count, so
//! reformatting a file restarts nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ring::digest::{Context, SHA256};
use serde_json::Value;

use super::FlowDef;
use crate::engine::reload::Fingerprint;

/// Option keys whose string value names a file read when the node is built.
fn names_a_file(key: &str) -> bool {
    matches!(key, "file" | "plugin") || key.ends_with("_file")
}

/// How deep `import` chains of Rhai modules are followed, and how many files one flow
/// may pull in: bounds the work on a hostile or circular set of modules.
const MAX_IMPORT_DEPTH: usize = 8;
const MAX_FILES: usize = 256;

/// The flow's fingerprint and the files it read (to watch for changes).
pub fn fingerprint(flow: &FlowDef) -> (Fingerprint, Vec<PathBuf>) {
    let base_dir = flow
        .file
        .path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut nodes: Vec<Value> = flow
        .nodes
        .iter()
        .map(|node| {
            serde_json::json!({
                "name": node.name,
                "type": node.kind.type_name(),
                "options": canonical(node.options_json()),
                "inputs": node.inputs.iter().map(|i| serde_json::json!([
                    i.node, i.port, i.capacity, format!("{:?}", i.overflow)
                ])).collect::<Vec<_>>(),
                "state_key": node.state_key,
                "buffer": node.buffer.as_ref().map(|(b, _)| format!("{b:?}")),
            })
        })
        .collect();
    nodes.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let definition = serde_json::json!({
        "delivery": format!("{:?}", flow.delivery),
        "base_dir": base_dir.to_string_lossy(),
        "nodes": nodes,
    });

    let mut files = BTreeSet::new();
    for node in &flow.nodes {
        let options = node.options_json();
        referenced_files(&options, &base_dir, &mut files);
        if node.kind.type_name() == "script" {
            let (source, dir) = match options.get("file").and_then(Value::as_str) {
                Some(file) => {
                    let path = base_dir.join(file);
                    let dir = path
                        .parent()
                        .map_or_else(|| base_dir.clone(), Path::to_path_buf);
                    (std::fs::read_to_string(&path).unwrap_or_default(), dir)
                }
                None => (
                    options
                        .get("rhai")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    base_dir.clone(),
                ),
            };
            rhai_imports(&source, &dir, 0, &mut files);
        }
    }

    let mut digest = Context::new(&SHA256);
    digest.update(definition.to_string().as_bytes());
    for path in &files {
        digest.update(path.to_string_lossy().as_bytes());
        digest.update(&[0]);
        match std::fs::read(path) {
            Ok(content) => {
                digest.update(&(content.len() as u64).to_le_bytes());
                digest.update(&content);
            }
            // A missing file is part of the definition too (build would have failed).
            Err(_) => digest.update(b"\xffmissing"),
        }
    }
    let mut print = [0u8; 32];
    print.copy_from_slice(digest.finish().as_ref());
    (Fingerprint(print), files.into_iter().collect())
}

/// `value` with every object's keys sorted (serde_json keeps insertion order here).
fn canonical(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, canonical(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// Files named by `file`, `plugin` and `*_file` options anywhere in `options`.
fn referenced_files(options: &Value, base_dir: &Path, files: &mut BTreeSet<PathBuf>) {
    match options {
        Value::Object(map) => {
            for (key, value) in map {
                match value {
                    Value::String(name) if names_a_file(key) && files.len() < MAX_FILES => {
                        files.insert(base_dir.join(name));
                    }
                    _ => referenced_files(value, base_dir, files),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                referenced_files(item, base_dir, files);
            }
        }
        _ => {}
    }
}

/// Rhai modules a script imports (`import "name"` -> `dir/name.rhai`), followed through
/// the modules' own imports up to [`MAX_IMPORT_DEPTH`].
fn rhai_imports(source: &str, dir: &Path, depth: usize, files: &mut BTreeSet<PathBuf>) {
    if depth >= MAX_IMPORT_DEPTH {
        return;
    }
    for name in import_names(source) {
        if files.len() >= MAX_FILES {
            return;
        }
        let file = if name.ends_with(".rhai") {
            name.to_string()
        } else {
            format!("{name}.rhai")
        };
        let path = dir.join(file);
        if files.insert(path.clone())
            && let Ok(text) = std::fs::read_to_string(&path)
        {
            rhai_imports(&text, dir, depth + 1, files);
        }
    }
}

/// The string literals after each `import` keyword. A scan, not a parse: an `import`
/// inside a comment or a string adds one file to watch, which costs nothing.
fn import_names(source: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("import") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "import".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let trimmed = rest.trim_start();
        if let Some(literal) = trimmed.strip_prefix('"')
            && let Some(end) = literal.find('"')
        {
            names.push(&literal[..end]);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::interpolate::ProcessEnv;

    fn load(dir: &Path, name: &str, yaml: &str) -> Vec<(String, Fingerprint, Vec<PathBuf>)> {
        let path = dir.join(name);
        std::fs::write(&path, yaml).unwrap();
        let set = crate::flow::load(&[path], &ProcessEnv).expect("the flow file loads");
        set.flows
            .iter()
            .map(|flow| {
                let (print, files) = fingerprint(flow);
                (flow.name.clone(), print, files)
            })
            .collect()
    }

    const TWO_FLOWS: &str = r#"version: 1
flows:
  a:
    nodes:
      tick: { type: timer, interval: 1s, topic: t }
      out: { type: log, inputs: tick }
  b:
    nodes:
      tick: { type: timer, interval: 1s }
      out: { type: log, inputs: tick }
"#;

    #[test]
    fn reformatting_comments_and_key_order_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let before = load(dir.path(), "f.yaml", TWO_FLOWS);
        let after = load(
            dir.path(),
            "f.yaml",
            r#"# a comment
version: 1
flows:
  b:
    description: moved up
    nodes:
      out: { inputs: tick, type: log }   # keys reordered
      tick:
        type: timer
        interval: 1s
  a:
    nodes:
      tick: { topic: t, interval: 1s, type: timer, description: same }
      out: { type: log, inputs: tick }
"#,
        );
        let find = |set: &[(String, Fingerprint, Vec<PathBuf>)], name: &str| {
            set.iter().find(|f| f.0 == name).unwrap().1
        };
        assert_eq!(find(&before, "a"), find(&after, "a"));
        assert_eq!(find(&before, "b"), find(&after, "b"));
    }

    #[test]
    fn an_option_wiring_or_queue_change_changes_only_that_flow() {
        let dir = tempfile::tempdir().unwrap();
        let before = load(dir.path(), "f.yaml", TWO_FLOWS);
        for edited in [
            TWO_FLOWS.replace("interval: 1s, topic: t", "interval: 2s, topic: t"),
            TWO_FLOWS.replace(
                "out: { type: log, inputs: tick }\n  b:",
                "out: { type: log, inputs: tick, queue: { capacity: 5 } }\n  b:",
            ),
            TWO_FLOWS.replace(
                "out: { type: log, inputs: tick }\n  b:",
                "out: { type: log, inputs: tick, state_key: k }\n  b:",
            ),
        ] {
            assert_ne!(edited, TWO_FLOWS);
            let after = load(dir.path(), "f.yaml", &edited);
            assert_ne!(before[0].1, after[0].1, "flow a changed in:\n{edited}");
            assert_eq!(
                before[1].1, after[1].1,
                "flow b did not change in:\n{edited}"
            );
        }
    }

    #[test]
    fn a_script_file_and_the_modules_it_imports_are_part_of_the_definition() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("helpers.rhai"), "fn double(x) { x * 2 }\n").unwrap();
        std::fs::write(
            dir.path().join("main.rhai"),
            "import \"helpers\" as h;\nmsg\n",
        )
        .unwrap();
        let yaml = r#"version: 1
flows:
  s:
    nodes:
      tick: { type: timer, interval: 1s }
      run: { type: script, inputs: tick, file: main.rhai }
"#;
        let before = load(dir.path(), "f.yaml", yaml);
        assert_eq!(
            before[0].2,
            vec![
                dir.path().join("helpers.rhai"),
                dir.path().join("main.rhai")
            ]
        );
        std::fs::write(dir.path().join("helpers.rhai"), "fn double(x) { x + x }\n").unwrap();
        let after_module = load(dir.path(), "f.yaml", yaml);
        assert_ne!(before[0].1, after_module[0].1);
        std::fs::write(
            dir.path().join("main.rhai"),
            "import \"helpers\" as h;\nmsg.payload = \"x\";\nmsg\n",
        )
        .unwrap();
        let after_script = load(dir.path(), "f.yaml", yaml);
        assert_ne!(after_module[0].1, after_script[0].1);
    }

    #[test]
    fn imports_are_found_by_a_scan_of_the_source() {
        assert_eq!(
            import_names("import \"a\" as a;\nlet reimport = 1; import  \"b/c\" as c;"),
            vec!["a", "b/c"]
        );
        assert!(import_names("let x = \"import\";").is_empty());
    }
}

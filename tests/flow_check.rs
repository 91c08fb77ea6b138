//! `headwater check` as a user runs it: the real binary on real files.
//!
//! Every file in `tests/bad_flows/` carries its expected diagnostics as
//! `# expect: LINE:COL: MESSAGE` comments (the comment lines shift nothing: positions
//! are those of the file as written). The test runs `headwater check FILE` and compares
//! the complete list of reported `file:line:col: message` lines with the expectations,
//! so a missing, extra or moved diagnostic fails it. Every file in `flows/` must pass.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn headwater(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_headwater"))
        .args(args)
        .env_remove("HEADWATER_TEST_UNSET")
        .output()
        .expect("run headwater")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The `file:line:col: message` headlines printed by `check` for `path`.
fn reported(path: &str, stderr: &str) -> Vec<String> {
    let prefix = format!("{path}:");
    stderr
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|rest| rest.replacen(": error: ", ": ", 1))
        .collect()
}

#[test]
fn every_bad_flow_reports_exactly_its_expected_errors() {
    let known_types = headwater::nodes::registry::type_names().join(", ");
    let files = yaml_files(&root().join("tests/bad_flows"));
    assert!(files.len() >= 10, "the bad flow corpus is missing");
    let mut failures = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut expected: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .map(|l| l.replace("KNOWN_TYPES", &known_types))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            file.display()
        );
        let path = file.to_str().unwrap();
        let output = headwater(&["check", path]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{path}: exit code\n{stderr}");
        assert!(!stderr.contains("panicked"), "{path} panicked:\n{stderr}");
        let mut actual = reported(path, &stderr);
        expected.sort();
        actual.sort();
        if expected != actual {
            failures.push(format!(
                "{path}\n  expected: {expected:#?}\n  reported: {actual:#?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn diagnostics_quote_the_line_with_a_caret() {
    let file = root().join("tests/bad_flows/unknown_type.yaml");
    let output = headwater(&["check", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let quoted = format!(
        "7 |       t: {{ type: timr, interval: 1s }}\n  | {}^\n",
        " ".repeat(17)
    );
    assert!(stderr.contains(&quoted), "{stderr}");
}

#[test]
fn every_example_flow_passes_check_and_has_the_schema_line() {
    let files = yaml_files(&root().join("flows"));
    assert!(!files.is_empty(), "flows/ is empty");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema=../docs/flow.schema.json\n"),
            "{} must start with the schema line",
            file.display()
        );
        let output = headwater(&["check", file.to_str().unwrap()]);
        assert!(
            output.status.success(),
            "{}:\n{}",
            file.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).starts_with("ok: "));
    }
}

#[test]
fn the_committed_schema_is_current() {
    let output = headwater(&["schema"]);
    assert!(output.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let committed = std::fs::read_to_string(root().join("docs/flow.schema.json")).unwrap();
    let committed: serde_json::Value = serde_json::from_str(&committed).unwrap();
    assert!(
        printed == committed,
        "docs/flow.schema.json is stale: run `cargo run -- schema > docs/flow.schema.json`"
    );
}

#[test]
fn flows_are_checked_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    std::fs::write(&a, "version: 1\ndata_dir: state\nflows:\n  shared:\n    nodes:\n      t: { type: timer, interval: 1s }\n").unwrap();
    std::fs::write(&b, "version: 1\ndata_dir: other\nflows:\n  shared:\n    nodes:\n      t: { type: timer, interval: 1s }\n").unwrap();
    let output = headwater(&["check", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let b_path = b.to_str().unwrap();
    let a_path = a.to_str().unwrap();
    assert_eq!(
        reported(b_path, &stderr),
        [
            format!(
                "2:1: process settings are already given in {a_path}:2:1; keep them in one file"
            ),
            format!("4:3: flow `shared` is already defined in {a_path}:4:3"),
        ]
    );
}

#[test]
fn unreadable_file_is_an_error_not_a_panic() {
    let output = headwater(&["check", "/nonexistent/flow.yaml"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/flow.yaml: error: cannot read the file"),
        "{stderr}"
    );
}

#[test]
fn graph_prints_dot_and_mermaid() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("g.yaml");
    std::fs::write(
        &file,
        "version: 1\nflows:\n  home-energy:\n    nodes:\n      tick: { type: timer, interval: 1s }\n      show: { type: log, inputs: tick }\n      dead: { type: log, inputs: show.error }\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let dot = headwater(&["graph", path]);
    assert!(dot.status.success());
    let dot = String::from_utf8(dot.stdout).unwrap();
    assert!(dot.starts_with("digraph headwater {"), "{dot}");
    assert!(
        dot.contains("\"home-energy/tick\" -> \"home-energy/show\";"),
        "{dot}"
    );
    assert!(
        dot.contains("\"home-energy/show\" -> \"home-energy/dead\" [label=\"error\"];"),
        "{dot}"
    );
    let mermaid = headwater(&["graph", "--format", "mermaid", path]);
    let mermaid = String::from_utf8(mermaid.stdout).unwrap();
    assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");
    assert!(
        mermaid.contains("home_h_energy__tick --> home_h_energy__show"),
        "{mermaid}"
    );
    assert!(
        mermaid.contains("home_h_energy__show -- error --> home_h_energy__dead"),
        "{mermaid}"
    );
}

#[test]
fn the_readme_flow_example_passes_check() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("```yaml\n")
        .expect("a yaml block in the README")
        + 8;
    let end = start + readme[start..].find("```").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("readme.yaml");
    std::fs::write(&path, &readme[start..end]).unwrap();
    let output = headwater(&["check", path.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

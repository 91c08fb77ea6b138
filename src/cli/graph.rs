//! `headwater graph`: the wired graph as Graphviz DOT or Mermaid.

use std::fmt::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;

use crate::flow::{self, FlowSet, interpolate::ProcessEnv};

/// Output formats of `graph`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GraphFormat {
    /// Graphviz DOT (`dot -Tsvg`).
    Dot,
    /// Mermaid flowchart (renders in GitHub and many editors).
    Mermaid,
}

/// Loads the files and prints their graph.
pub fn graph(files: &[PathBuf], format: GraphFormat) -> anyhow::Result<ExitCode> {
    let set = match flow::load(files, &ProcessEnv) {
        Ok(set) => set,
        Err(diagnostics) => return Ok(super::check::report(&diagnostics)),
    };
    let text = match format {
        GraphFormat::Dot => dot(&set),
        GraphFormat::Mermaid => mermaid(&set),
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// Graphviz DOT: one cluster per flow, nodes labelled with name and type, edges
/// labelled with the port when it is not `out`.
pub fn dot(set: &FlowSet) -> String {
    let mut out =
        String::from("digraph headwater {\n  rankdir=LR;\n  node [shape=box, style=rounded];\n");
    for flow in &set.flows {
        let _ = writeln!(
            out,
            "  subgraph \"cluster_{}\" {{\n    label=\"{}\";",
            flow.name, flow.name
        );
        for node in &flow.nodes {
            let _ = writeln!(
                out,
                "    \"{}/{}\" [label=\"{}\\n({})\"];",
                flow.name,
                node.name,
                node.name,
                node.kind.type_name()
            );
        }
        out.push_str("  }\n");
        for node in &flow.nodes {
            for input in &node.inputs {
                let label = if input.port == "out" {
                    String::new()
                } else {
                    format!(" [label=\"{}\"]", input.port)
                };
                let _ = writeln!(
                    out,
                    "  \"{}/{}\" -> \"{}/{}\"{label};",
                    flow.name, input.node, flow.name, node.name
                );
            }
        }
    }
    out.push_str("}\n");
    out
}

/// Mermaid flowchart: one subgraph per flow. Mermaid ids cannot hold `/` or `-`, so
/// ids are `flow__node` with `-` replaced by `_h_`.
pub fn mermaid(set: &FlowSet) -> String {
    fn id(flow: &str, node: &str) -> String {
        format!("{}__{}", flow.replace('-', "_h_"), node.replace('-', "_h_"))
    }
    let mut out = String::from("flowchart LR\n");
    for flow in &set.flows {
        let _ = writeln!(
            out,
            "  subgraph {}[\"{}\"]",
            id(&flow.name, "flow"),
            flow.name
        );
        for node in &flow.nodes {
            let _ = writeln!(
                out,
                "    {}[\"{}<br/>({})\"]",
                id(&flow.name, &node.name),
                node.name,
                node.kind.type_name()
            );
        }
        out.push_str("  end\n");
        for node in &flow.nodes {
            for input in &node.inputs {
                let arrow = if input.port == "out" {
                    "-->".to_string()
                } else {
                    format!("-- {} -->", input.port)
                };
                let _ = writeln!(
                    out,
                    "  {} {arrow} {}",
                    id(&flow.name, &input.node),
                    id(&flow.name, &node.name)
                );
            }
        }
    }
    out
}

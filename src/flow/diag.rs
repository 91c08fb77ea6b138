//! Located diagnostics: `file:line:col: message`, the offending line and a caret.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::tree::Pos;

/// A source file kept in memory so diagnostics can quote it.
#[derive(Debug)]
pub struct SourceFile {
    /// The path as the user gave it.
    pub path: PathBuf,
    /// The text after reading (before interpolation).
    pub text: String,
}

impl SourceFile {
    /// The 1-based line `line`, without its newline.
    pub fn line(&self, line: u32) -> Option<&str> {
        self.text.lines().nth(line.checked_sub(1)? as usize)
    }
}

/// One located problem in a flow file.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    /// The file it concerns.
    pub file: Arc<SourceFile>,
    /// Where; `None` when the problem concerns the whole file (unreadable, say).
    pub pos: Option<Pos>,
    /// What is wrong, lowercase, no trailing period.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic at `pos` in `file`.
    pub fn at(file: &Arc<SourceFile>, pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.clone(),
            pos: Some(pos),
            message: message.into(),
        }
    }

    /// The short form `file:line:col: message`, as tests and the API use it.
    pub fn headline(&self) -> String {
        let path = self.file.path.display();
        match self.pos {
            Some(pos) => format!("{path}:{}:{}: {}", pos.line, pos.col, self.message),
            None => format!("{path}: {}", self.message),
        }
    }
}

impl fmt::Display for Diagnostic {
    /// `file:line:col: error: message`, then the line and a caret under the column.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.file.path.display();
        let Some(pos) = self.pos else {
            return write!(f, "{path}: error: {}", self.message);
        };
        writeln!(
            f,
            "{path}:{}:{}: error: {}",
            pos.line, pos.col, self.message
        )?;
        let Some(line) = self.file.line(pos.line) else {
            return Ok(());
        };
        let gutter = pos.line.to_string();
        let pad = " ".repeat(gutter.len());
        // Tabs are kept so that the caret lines up however the terminal renders them.
        let caret_pad: String = line
            .chars()
            .take(pos.col.saturating_sub(1) as usize)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        writeln!(f, "{pad} |")?;
        writeln!(f, "{gutter} | {line}")?;
        write!(f, "{pad} | {caret_pad}^")
    }
}

/// Every problem found while loading a set of flow files.
#[derive(Debug, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Adds one.
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sorted by file, then position, for stable output.
    pub fn sort(&mut self) {
        self.0
            .sort_by(|a, b| (a.file.path.as_path(), a.pos).cmp(&(b.file.path.as_path(), b.pos)));
    }

    /// The headlines, one per problem.
    pub fn headlines(&self) -> Vec<String> {
        self.0.iter().map(Diagnostic::headline).collect()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// A file that could not be read, as a diagnostic.
pub fn unreadable(path: &Path, error: &std::io::Error) -> Diagnostic {
    Diagnostic {
        file: Arc::new(SourceFile {
            path: path.to_path_buf(),
            text: String::new(),
        }),
        pos: None,
        message: format!("cannot read the file: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_line_and_caret() {
        let file = Arc::new(SourceFile {
            path: "f.yaml".into(),
            text: "a: 1\n  bad: here\n".into(),
        });
        let d = Diagnostic::at(&file, Pos { line: 2, col: 3 }, "unknown field `bad`");
        assert_eq!(
            d.to_string(),
            "f.yaml:2:3: error: unknown field `bad`\n  |\n2 |   bad: here\n  |   ^"
        );
        assert_eq!(d.headline(), "f.yaml:2:3: unknown field `bad`");
    }
}

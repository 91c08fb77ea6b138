//! Load-time interpolation of `${NAME}`, `${NAME:-default}` and `${file:/path}` in the
//! string values of a flow file; `$${` is a literal `${`.
//!
//! It runs on the parsed tree, not on the text, so a secret containing YAML syntax can
//! never change the file's structure, and positions stay exact. Values under a `rhai:`
//! key are left alone: Rhai uses `${}` for its own string interpolation.
//!
//! A value that is exactly one `${...}` and whose result reads as a YAML number or
//! boolean becomes that number or boolean, so `port: ${PORT}` works.

use std::path::Path;

use super::tree::{Node, Pos, Value};

/// Where variables come from.
pub trait Env {
    /// The variable's value, if set.
    fn var(&self, name: &str) -> Option<String>;
    /// The content of a secret file.
    fn read_file(&self, path: &Path) -> std::io::Result<String>;
}

/// The process environment and the real file system.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn read_file(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// An interpolation problem at a position.
#[derive(Debug, PartialEq)]
pub struct InterpolationError {
    /// The string value's position.
    pub pos: Pos,
    /// What is wrong.
    pub message: String,
}

/// Keys whose values are never interpolated.
const VERBATIM_KEYS: &[&str] = &["rhai"];

/// Interpolates every string in `node`, collecting all errors.
pub fn interpolate(node: &mut Node, env: &dyn Env, errors: &mut Vec<InterpolationError>) {
    let pos = node.pos;
    match &mut node.value {
        Value::Str(text) => {
            if !text.contains('$') {
                return;
            }
            match expand(text, env) {
                Ok(Expanded { text: out, whole }) => {
                    node.value = if whole { retype(out) } else { Value::Str(out) };
                }
                Err(message) => errors.push(InterpolationError { pos, message }),
            }
        }
        Value::Seq(items) => items.iter_mut().for_each(|i| interpolate(i, env, errors)),
        Value::Map(entries) => {
            for (key, value) in entries {
                if !VERBATIM_KEYS.contains(&key.name.as_str()) {
                    interpolate(value, env, errors);
                }
            }
        }
        _ => {}
    }
}

struct Expanded {
    text: String,
    /// The input was exactly one `${...}` expression.
    whole: bool,
}

fn expand(input: &str, env: &dyn Env) -> Result<Expanded, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    let mut expressions = 0;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
        } else if let Some(body_start) = after.strip_prefix("${") {
            let Some(end) = body_start.find('}') else {
                return Err(
                    "unclosed `${`: write `}` after the variable name, or `$${` for a literal"
                        .into(),
                );
            };
            out.push_str(&resolve(&body_start[..end], env)?);
            expressions += 1;
            rest = &body_start[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    let whole = expressions == 1
        && input.starts_with("${")
        && input.ends_with('}')
        && input.matches("${").count() == 1;
    Ok(Expanded { text: out, whole })
}

fn resolve(body: &str, env: &dyn Env) -> Result<String, String> {
    if let Some(path) = body.strip_prefix("file:") {
        let content = env
            .read_file(Path::new(path))
            .map_err(|e| format!("cannot read secret file `{path}`: {e}"))?;
        // A trailing newline is an editor's, not part of the secret.
        return Ok(content.strip_suffix('\n').map_or(content.clone(), |c| {
            c.strip_suffix('\r').unwrap_or(c).to_string()
        }));
    }
    let (name, default) = match body.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (body, None),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "`${{{body}}}` is not a variable: use `${{NAME}}`, `${{NAME:-default}}` or `${{file:/path}}`"
        ));
    }
    match (env.var(name), default) {
        (Some(value), _) => Ok(value),
        (None, Some(default)) => Ok(default.to_string()),
        (None, None) => Err(format!(
            "environment variable `{name}` is not set: set it, or give a default with `${{{name}:-value}}`"
        )),
    }
}

fn retype(text: String) -> Value {
    if let Ok(i) = text.parse::<i64>() {
        return Value::Int(i);
    }
    if let Ok(f) = text.parse::<f64>()
        && f.is_finite()
        && text.chars().any(|c| c.is_ascii_digit())
    {
        return Value::Float(f);
    }
    match text.as_str() {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::Str(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::tree::parse;
    use std::collections::HashMap;

    struct FakeEnv(HashMap<&'static str, &'static str>);

    impl Env for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
        fn read_file(&self, path: &Path) -> std::io::Result<String> {
            match path.to_str() {
                Some("/run/secret") => Ok("s3cret\n".into()),
                _ => Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file",
                )),
            }
        }
    }

    fn run(yaml: &str) -> (Node, Vec<InterpolationError>) {
        let env = FakeEnv(HashMap::from([("HOST", "pi.local"), ("PORT", "1884")]));
        let mut node = parse(yaml).unwrap();
        let mut errors = Vec::new();
        interpolate(&mut node, &env, &mut errors);
        (node, errors)
    }

    #[test]
    fn variables_defaults_files_and_literals() {
        let (node, errors) = run(
            "url: mqtt://${HOST}:${PORT}\nport: ${PORT}\nx: ${MISSING:-fallback}\npw: ${file:/run/secret}\nlit: cost $${5} and $5\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            node.get("url").unwrap().as_str(),
            Some("mqtt://pi.local:1884")
        );
        assert_eq!(node.get("port").unwrap().value, Value::Int(1884));
        assert_eq!(node.get("x").unwrap().as_str(), Some("fallback"));
        assert_eq!(node.get("pw").unwrap().as_str(), Some("s3cret"));
        assert_eq!(node.get("lit").unwrap().as_str(), Some("cost ${5} and $5"));
    }

    #[test]
    fn rhai_bodies_are_left_alone() {
        let (node, errors) = run("rhai: 'let s = `${x}`; s'\n");
        assert!(errors.is_empty());
        assert_eq!(
            node.get("rhai").unwrap().as_str(),
            Some("let s = `${x}`; s")
        );
    }

    #[test]
    fn errors_are_located() {
        let (_, errors) =
            run("a: ok\nb: ${NOPE}\nc: ${file:/missing}\nd: ${bad name}\ne: ${OPEN\n");
        let lines: Vec<_> = errors.iter().map(|e| (e.pos.line, e.pos.col)).collect();
        assert_eq!(lines, [(2, 4), (3, 4), (4, 4), (5, 4)]);
        assert!(errors[0].message.contains("`NOPE` is not set"));
        assert!(
            errors[1]
                .message
                .contains("cannot read secret file `/missing`")
        );
    }
}

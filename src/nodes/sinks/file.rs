//! `file.out`: appends messages to a file, one per line (the payload, a CSV row or a
//! JSON record), with size-based rotation. A message is done once its batch is written
//! and flushed (and synced with `fsync: true`); a write error fails the batch and the
//! node restarts with backoff, so nothing is acknowledged that is not on disk.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::engine::edge::BATCH;
use crate::engine::fields::{FieldPath, MsgView, to_text};
use crate::engine::{Msg, NodeContext, NodeError, NodeFactory, NodeFuture};
use crate::flow::values::ByteSize;
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};

/// Options of a `file.out` node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileOutConfig {
    /// The file; relative paths are inside the data directory. Parent directories are
    /// created.
    pub path: String,
    /// `lines` (default): the payload as text, a newline in it written as `\n`;
    /// `csv`: one row of `columns` per message; `json`: one JSON object per message with
    /// `topic`, `payload`, `headers`, `timestamp` and `id` (a dead-letter file).
    #[serde(default)]
    pub format: Format,
    /// CSV columns: message fields such as `timestamp`, `topic`, `payload.w`.
    #[serde(default)]
    pub columns: Vec<FieldPath>,
    /// Write a CSV header row at the top of each new file (default true).
    #[serde(default = "yes")]
    pub header: bool,
    /// A message without one of the `columns`: `empty` (default) writes an empty cell,
    /// `error` sends the message to the `error` port.
    #[serde(default)]
    pub missing: Missing,
    /// Rotate when the file would grow past `size`, keeping `keep` old files
    /// (`x.csv.1` is the newest).
    pub rotate: Option<Rotate>,
    /// Sync to disk after each batch (default false). Safer across power loss; on an SD
    /// card it costs throughput and card wear.
    #[serde(default)]
    pub fsync: bool,
}

fn yes() -> bool {
    true
}

/// What a `file.out` line holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// The payload as text.
    #[default]
    Lines,
    /// A CSV row of `columns`.
    Csv,
    /// A JSON record of the whole message.
    Json,
}

/// What to do with a missing CSV column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Missing {
    /// Write an empty cell.
    #[default]
    Empty,
    /// Send the message to the `error` port.
    Error,
}

/// Size-based rotation.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    /// Largest size of the file, e.g. `10MiB`.
    pub size: ByteSize,
    /// How many rotated files to keep (default 5).
    #[serde(default = "default_keep")]
    #[schemars(range(min = 1))]
    pub keep: u32,
}

fn default_keep() -> u32 {
    5
}

impl Config for FileOutConfig {
    const TYPE: &'static str = "file.out";
    const ROLE: Role = Role::Sink;
    const DOC: &'static str = "Appends messages to a file as lines, CSV rows or JSON records";

    fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.path.trim().is_empty() {
            issues.push(ConfigIssue::new("path", "name the file to write"));
        }
        match self.format {
            Format::Csv if self.columns.is_empty() => issues.push(ConfigIssue::new(
                "columns",
                "a CSV file needs `columns`, e.g. [timestamp, topic, payload.w]",
            )),
            Format::Lines | Format::Json if !self.columns.is_empty() => {
                issues.push(ConfigIssue::new(
                    "columns",
                    "`columns` apply to `format: csv`",
                ));
            }
            _ => {}
        }
        if let Some(rotate) = self.rotate {
            if rotate.size.0 == 0 {
                issues.push(ConfigIssue::new("rotate.size", "the size must be above 0"));
            }
            if rotate.keep == 0 {
                issues.push(ConfigIssue::new(
                    "rotate.keep",
                    "keep at least 1 rotated file (without `rotate` the file just grows)",
                ));
            }
        }
        issues
    }

    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        let settings = Arc::new(Settings {
            path: cx.data_dir.join(&self.path),
            format: self.format,
            columns: self.columns.clone(),
            header: self.header,
            missing: self.missing,
            rotate: self.rotate,
            fsync: self.fsync,
        });
        Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
            Box::pin(run(settings.clone(), cx))
        }))
    }
}

struct Settings {
    path: PathBuf,
    format: Format,
    columns: Vec<FieldPath>,
    header: bool,
    missing: Missing,
    rotate: Option<Rotate>,
    fsync: bool,
}

/// The open file and its size.
struct Output {
    file: BufWriter<File>,
    size: u64,
}

async fn run(settings: Arc<Settings>, cx: NodeContext) -> Result<(), NodeError> {
    let mut inbox = cx.inbox.clone();
    let mut batch = Vec::with_capacity(BATCH);
    let mut output: Option<Output> = None;
    loop {
        if inbox.recv_many(&mut batch, BATCH).await == 0 {
            return Ok(());
        }
        cx.stats
            .received
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        // Render on the runtime (cheap), write on the blocking pool (the disk may stall).
        let mut lines = Vec::with_capacity(batch.len());
        let mut written = Vec::with_capacity(batch.len());
        for msg in batch.drain(..) {
            match render(&settings, &msg) {
                Ok(line) => {
                    lines.push(line);
                    written.push(msg);
                }
                Err(reason) => cx.outputs.emit_error(msg, reason).await,
            }
        }
        if lines.is_empty() {
            continue;
        }
        let job_settings = settings.clone();
        let open = output.take();
        let result = tokio::task::spawn_blocking(move || {
            let mut open = open;
            let result = write_batch(&job_settings, &mut open, &lines);
            (open, result)
        })
        .await;
        match result {
            Ok((open, Ok(()))) => {
                output = open;
                for msg in written {
                    msg.done();
                }
            }
            Ok((_, Err(e))) => {
                let reason = format!("cannot write {}: {e}", settings.path.display());
                for msg in written {
                    msg.fail(&reason);
                }
                return Err(NodeError::new(reason));
            }
            Err(e) => {
                for msg in written {
                    msg.fail("the write task was lost");
                }
                return Err(NodeError::new(format!("the write task was lost: {e}")));
            }
        }
    }
}

/// One message as one line, newline included.
fn render(settings: &Settings, msg: &Msg) -> Result<String, String> {
    let mut line = match settings.format {
        Format::Lines => match msg.payload_str() {
            Some(text) => escape_newlines(text),
            None => String::from_utf8_lossy(&msg.payload).into_owned(),
        },
        Format::Csv => {
            let view = MsgView::new(msg);
            let mut cells = Vec::with_capacity(settings.columns.len());
            for column in &settings.columns {
                match view.get(column) {
                    Some(value) => cells.push(csv_cell(&to_text(&value))),
                    None if settings.missing == Missing::Error => {
                        return Err(format!("the message has no `{column}` for the CSV row"));
                    }
                    None => cells.push(String::new()),
                }
            }
            cells.join(",")
        }
        Format::Json => {
            let mut record = Map::new();
            record.insert("topic".into(), Value::from(&*msg.topic));
            let payload = match msg.payload_json() {
                Some(json) => (*json).clone(),
                None => Value::from(String::from_utf8_lossy(&msg.payload).into_owned()),
            };
            record.insert("payload".into(), payload);
            let headers: Map<String, Value> = msg
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect();
            record.insert("headers".into(), Value::Object(headers));
            record.insert("timestamp".into(), Value::from(msg.timestamp_ms));
            record.insert("id".into(), Value::from(msg.id));
            Value::Object(record).to_string()
        }
    };
    line.push('\n');
    Ok(line)
}

fn escape_newlines(text: &str) -> String {
    if text.contains(['\n', '\r']) {
        text.replace('\r', "\\r").replace('\n', "\\n")
    } else {
        text.to_string()
    }
}

/// A CSV cell per RFC 4180: quoted when it holds a comma, quote or line break.
fn csv_cell(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn header_line(settings: &Settings) -> Option<String> {
    (settings.format == Format::Csv && settings.header).then(|| {
        let names: Vec<String> = settings
            .columns
            .iter()
            .map(|c| csv_cell(&c.to_string()))
            .collect();
        format!("{}\n", names.join(","))
    })
}

fn open(settings: &Settings) -> std::io::Result<Output> {
    if let Some(parent) = settings.path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&settings.path)?;
    let size = file.metadata()?.len();
    let mut output = Output {
        file: BufWriter::new(file),
        size,
    };
    if size == 0
        && let Some(header) = header_line(settings)
    {
        output.file.write_all(header.as_bytes())?;
        output.size += header.len() as u64;
    }
    Ok(output)
}

/// Renames `x` to `x.1`, `x.1` to `x.2`... dropping the oldest beyond `keep`.
fn rotate_files(path: &Path, keep: u32) -> std::io::Result<()> {
    let numbered = |n: u32| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    match std::fs::remove_file(numbered(keep)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    for n in (1..keep).rev() {
        match std::fs::rename(numbered(n), numbered(n + 1)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::rename(path, numbered(1))
}

fn ensure_open<'a>(
    settings: &Settings,
    output: &'a mut Option<Output>,
) -> std::io::Result<&'a mut Output> {
    if output.is_none() {
        *output = Some(open(settings)?);
    }
    output
        .as_mut()
        .ok_or_else(|| std::io::Error::other("the file is not open"))
}

fn write_batch(
    settings: &Settings,
    output: &mut Option<Output>,
    lines: &[String],
) -> std::io::Result<()> {
    for line in lines {
        let out = ensure_open(settings, output)?;
        if let Some(rotate) = settings.rotate {
            let header = header_line(settings).map_or(0, |h| h.len() as u64);
            // Rotate when this line would pass the size, unless the file holds nothing
            // but its header (a line longer than the size still gets written).
            if out.size + line.len() as u64 > rotate.size.0 && out.size > header {
                out.file.flush()?;
                *output = None;
                rotate_files(&settings.path, rotate.keep)?;
            }
        }
        let out = ensure_open(settings, output)?;
        out.file.write_all(line.as_bytes())?;
        out.size += line.len() as u64;
    }
    if let Some(out) = output.as_mut() {
        out.file.flush()?;
        if settings.fsync {
            out.file.get_ref().sync_data()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;
    use crate::engine::harness::NodeHarness;
    use crate::engine::{Clock, Outcome};

    fn start(dir: &Path, options: &str) -> NodeHarness {
        NodeHarness::start_in("file.out", options, Clock::system(), dir.to_path_buf()).unwrap()
    }

    fn tracked(topic: &str, payload: &str) -> (Msg, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let msg = Msg::tracked(topic, payload.to_string(), 1_700_000_000_000, move |o| {
            let _ = tx.send(o);
        });
        (msg, rx)
    }

    /// Sends messages and waits for each outcome (the file is written when they end).
    async fn write(h: &NodeHarness, msgs: &[(&str, &str)]) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        for (topic, payload) in msgs {
            let (msg, outcome) = tracked(topic, payload);
            h.send(msg).await;
            outcomes.push(outcome);
        }
        let mut done = Vec::new();
        for o in outcomes {
            done.push(o.await.unwrap());
        }
        done
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[tokio::test]
    async fn lines_are_on_disk_when_messages_are_done() {
        let dir = tempfile::tempdir().unwrap();
        let h = start(dir.path(), "path: logs/out.txt");
        let outcomes = write(&h, &[("t", "one"), ("t", "two\nlines")]).await;
        assert_eq!(outcomes, [Outcome::Done, Outcome::Done]);
        assert_eq!(read(&dir.path().join("logs/out.txt")), "one\ntwo\\nlines\n");
        h.shutdown().await;
    }

    #[tokio::test]
    async fn csv_rows_with_header_quoting_and_missing_cells() {
        let dir = tempfile::tempdir().unwrap();
        let options =
            "path: r.csv\nformat: csv\ncolumns: [timestamp, topic, payload.w, payload.note]";
        let h = start(dir.path(), options);
        write(
            &h,
            &[
                ("m/1", r#"{"w": 5, "note": "a, \"b\""}"#),
                ("m/2", r#"{"w": 6}"#),
            ],
        )
        .await;
        h.shutdown().await;
        assert_eq!(
            read(&dir.path().join("r.csv")),
            "timestamp,topic,payload.w,payload.note\n1700000000000,m/1,5,\"a, \"\"b\"\"\"\n1700000000000,m/2,6,\n"
        );
        // Appending to the existing file: no second header.
        let h = start(dir.path(), options);
        write(&h, &[("m/3", r#"{"w": 7, "note": "x"}"#)]).await;
        h.shutdown().await;
        assert!(read(&dir.path().join("r.csv")).ends_with("6,\n1700000000000,m/3,7,x\n"));

        let mut h = start(
            dir.path(),
            "path: strict.csv\nformat: csv\ncolumns: [payload.w]\nmissing: error",
        );
        h.send(Msg::new("t", "{}", 0)).await;
        let refused = h.recv("error").await.unwrap();
        assert_eq!(
            refused.headers["error"],
            "the message has no `payload.w` for the CSV row"
        );
        h.shutdown().await;
    }

    #[tokio::test]
    async fn json_records_keep_the_error_reason_of_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let h = start(dir.path(), "path: dead.jsonl\nformat: json");
        let (mut msg, outcome) = tracked("in/x", r#"{"w": 1}"#);
        msg.headers_mut()
            .insert("error".into(), "script error: boom".into());
        h.send(msg).await;
        assert_eq!(outcome.await.unwrap(), Outcome::Done);
        let text = read(&dir.path().join("dead.jsonl"));
        let record: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(record["topic"], "in/x");
        assert_eq!(record["payload"], serde_json::json!({"w": 1}));
        assert_eq!(record["headers"]["error"], "script error: boom");
        assert_eq!(record["timestamp"], 1_700_000_000_000i64);
        h.shutdown().await;
    }

    #[tokio::test]
    async fn rotation_keeps_the_newest_files_with_their_headers() {
        let dir = tempfile::tempdir().unwrap();
        let h = start(
            dir.path(),
            "path: r.csv\nformat: csv\ncolumns: [payload]\nrotate: { size: 20, keep: 2 }",
        );
        // Header "payload\n" is 8 bytes, each row "rowN\n" 5: two rows per file.
        for n in 1..=7 {
            write(&h, &[("t", &format!("row{n}"))]).await;
        }
        h.shutdown().await;
        let path = dir.path().join("r.csv");
        assert_eq!(read(&path), "payload\nrow7\n");
        assert_eq!(read(&dir.path().join("r.csv.1")), "payload\nrow5\nrow6\n");
        assert_eq!(read(&dir.path().join("r.csv.2")), "payload\nrow3\nrow4\n");
        assert!(!dir.path().join("r.csv.3").exists());
    }

    #[tokio::test]
    async fn a_write_failure_fails_the_messages() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("plain"), "a file, not a directory").unwrap();
        let h = start(dir.path(), "path: plain/out.txt");
        let outcomes = write(&h, &[("t", "x")]).await;
        assert!(
            matches!(&outcomes[0], Outcome::Failed(r) if r.contains("cannot write")),
            "{outcomes:?}"
        );
        h.shutdown().await;
    }

    #[test]
    fn options_are_checked_and_located() {
        let yaml = "\
version: 1
flows:
  f:
    nodes:
      tick: { type: timer, interval: 1s }
      csv: { type: file.out, inputs: tick, path: a.csv, format: csv }
      rot: { type: file.out, inputs: tick, path: b.txt, rotate: { size: 1MiB, keep: 0 } }
";
        let err = crate::flow::load_sources(
            vec![(PathBuf::from("f.yaml"), yaml.to_string())],
            &crate::flow::interpolate::ProcessEnv,
        )
        .err()
        .unwrap();
        assert_eq!(
            err.headlines(),
            [
                "f.yaml:6:12: f/csv: `columns`: a CSV file needs `columns`, e.g. [timestamp, topic, payload.w]",
                "f.yaml:7:85: f/rot: `rotate.keep`: keep at least 1 rotated file (without `rotate` the file just grows)"
            ]
        );
    }
}

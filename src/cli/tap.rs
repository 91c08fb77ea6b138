//! `headwater tap`: prints the admin API's live tap (`/api/tap`, server-sent events) in
//! a terminal: one line per message leaving a node, or published on the broker.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{ACCEPT, AUTHORIZATION, HOST};

use crate::api::tap::{PayloadFormat, TapMessage};

/// Options of `headwater tap`.
#[derive(Debug, clap::Args)]
pub struct TapArgs {
    /// The flow of the node to watch
    #[arg(long, requires = "node")]
    pub flow: Option<String>,
    /// The node whose outputs to watch
    #[arg(long, requires = "flow")]
    pub node: Option<String>,
    /// An MQTT topic filter: alone, watches the built-in broker; with --flow and
    /// --node, keeps the node's messages whose topic matches
    #[arg(long)]
    pub topic: Option<String>,
    /// The admin API
    #[arg(long, default_value = "http://127.0.0.1:9080", value_name = "URL")]
    pub url: String,
    /// A file whose first line is the API's bearer token
    #[arg(long, value_name = "FILE", env = "HEADWATER_API_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// How payloads are shown
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// Most messages per second to show; more are counted as dropped
    #[arg(long, default_value_t = crate::api::tap::DEFAULT_RATE)]
    pub rate: u32,
    /// Print each message as the API's JSON object instead of a line of text
    #[arg(long)]
    pub json: bool,
    /// Stop after this many messages
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// `--format` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    /// JSON when it parses, else text when UTF-8, else base64
    Auto,
    /// As JSON
    Json,
    /// As text
    Text,
    /// As base64
    Base64,
}

impl From<Format> for PayloadFormat {
    fn from(format: Format) -> PayloadFormat {
        match format {
            Format::Auto => PayloadFormat::Auto,
            Format::Json => PayloadFormat::Json,
            Format::Text => PayloadFormat::Text,
            Format::Base64 => PayloadFormat::Base64,
        }
    }
}

impl Format {
    /// The `format=` value, as the API names it (its serde name, so the two agree).
    fn query(self) -> String {
        serde_json::to_value(PayloadFormat::from(self))
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "auto".into())
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The request path and query for `args`.
fn path(args: &TapArgs) -> anyhow::Result<String> {
    let mut query = Vec::new();
    match (&args.flow, &args.node, &args.topic) {
        (Some(flow), Some(node), _) => {
            query.push(format!("flow={}", encode(flow)));
            query.push(format!("node={}", encode(node)));
        }
        (None, None, Some(_)) => {}
        _ => bail!("give --flow and --node (a node's outputs), or --topic alone (the broker)"),
    }
    if let Some(topic) = &args.topic {
        query.push(format!("topic={}", encode(topic)));
    }
    query.push(format!("format={}", args.format.query()));
    query.push(format!("rate={}", args.rate));
    Ok(format!("/api/tap?{}", query.join("&")))
}

/// Runs the tap until the stream ends, `--count` messages were shown, or Ctrl-C.
pub fn tap(args: &TapArgs) -> anyhow::Result<ExitCode> {
    let path = path(args)?;
    let uri: hyper::Uri = args
        .url
        .parse()
        .with_context(|| format!("`{}` is not a URL", args.url))?;
    if uri.scheme_str() != Some("http") {
        bail!(
            "--url must be http://HOST:PORT (the admin API speaks plain HTTP; reach a remote one through an SSH tunnel)"
        );
    }
    let authority = uri
        .authority()
        .context("--url needs a host, e.g. http://127.0.0.1:9080")?
        .clone();
    let token = match &args.token_file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the token file {}", file.display()))?;
            Some(text.lines().next().unwrap_or("").trim().to_string())
        }
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .with_context(|| format!("cannot connect to the admin API at {}; is `headwater run` running with the API on?", args.url))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .context("HTTP handshake with the admin API failed")?;
        tokio::spawn(connection);
        let mut request = hyper::Request::get(path.as_str())
            .header(HOST, authority.as_str())
            .header(ACCEPT, "text/event-stream");
        if let Some(token) = &token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Empty::<Bytes>::new())?;
        let response = sender
            .send_request(request)
            .await
            .context("the admin API did not answer")?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            bail!("the admin API refused the tap ({status}): {message}");
        }
        let mut printer = Printer {
            json: args.json,
            shown: 0,
            what: match (&args.flow, &args.node) {
                (Some(flow), Some(node)) => format!("{flow}/{node}"),
                _ => "broker".to_string(),
            },
        };
        let mut buffer = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("the tap stream broke off")?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buffer.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                printer.event(&block)?;
                if args.count.is_some_and(|n| printer.shown >= n) {
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        eprintln!("tap: the stream ended (the process stopped)");
        Ok(ExitCode::SUCCESS)
    })
}

struct Printer {
    json: bool,
    shown: u64,
    what: String,
}

impl Printer {
    /// Handles one server-sent event block.
    fn event(&mut self, block: &str) -> anyhow::Result<()> {
        let mut event = "message";
        let mut data = String::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim_start();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        let mut out = std::io::stdout().lock();
        match event {
            "ready" => eprintln!("tap: watching {} (Ctrl-C to stop)", self.what),
            "dropped" => {
                let dropped = serde_json::from_str::<serde_json::Value>(&data)
                    .ok()
                    .and_then(|v| v["dropped"].as_u64())
                    .unwrap_or(0);
                eprintln!(
                    "tap: {dropped} messages not shown so far (over --rate, or the terminal fell behind)"
                );
            }
            "message" if !data.is_empty() => {
                self.shown += 1;
                if self.json {
                    writeln!(out, "{data}")?;
                } else {
                    let message: TapMessage = serde_json::from_str(&data)
                        .with_context(|| format!("unreadable tap event: {data}"))?;
                    writeln!(out, "{}", line(&self.what, &message))?;
                }
                out.flush()?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// One message as a line: time, where it left, topic, payload.
fn line(what: &str, message: &TapMessage) -> String {
    let time = chrono::DateTime::from_timestamp_millis(message.timestamp_ms)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%H:%M:%S%.3f")
                .to_string()
        })
        .unwrap_or_else(|| message.timestamp_ms.to_string());
    let payload = match (&message.payload, message.encoding.as_str()) {
        (serde_json::Value::String(text), "text") => text.clone(),
        (serde_json::Value::String(text), "base64") => format!("base64:{text}"),
        (value, _) => value.to_string(),
    };
    let port = if message.port == "broker" {
        String::new()
    } else {
        format!(".{}", message.port)
    };
    format!("{time} {what}{port} {} {payload}", message.topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_encoded_and_checked() {
        let args = TapArgs {
            flow: Some("demo".into()),
            node: Some("pass".into()),
            topic: Some("home/+/#".into()),
            url: "http://127.0.0.1:9080".into(),
            token_file: None,
            format: Format::Text,
            rate: 7,
            json: false,
            count: None,
        };
        assert_eq!(
            path(&args).unwrap(),
            "/api/tap?flow=demo&node=pass&topic=home%2F%2B%2F%23&format=text&rate=7"
        );
        let none = TapArgs {
            flow: None,
            node: None,
            topic: None,
            ..args
        };
        assert!(path(&none).is_err());
    }

    #[test]
    fn lines_show_where_what_and_payload() {
        let message = TapMessage {
            port: "out".into(),
            topic: "t".into(),
            encoding: "base64".into(),
            payload: serde_json::Value::String("AAE=".into()),
            headers: Default::default(),
            timestamp_ms: 0,
            id: 1,
        };
        assert!(line("demo/pass", &message).ends_with(" demo/pass.out t base64:AAE="));
    }
}

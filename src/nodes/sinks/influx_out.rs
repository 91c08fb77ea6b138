//! `influx.out`: writes messages to InfluxDB as line protocol over HTTP (the v2
//! `/api/v2/write` and v3 `/api/v3/write_lp` APIs), in batches of N lines or T ms,
//! gzipped. Measurement, tags, fields and the timestamp come from the message. A batch's
//! messages are done only after a 2xx; retries follow `http.out`'s rules.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::engine::fields::{FieldPath, MsgView, to_text};
use crate::engine::template::{Escape, Template};
use crate::engine::{Msg, NodeContext, NodeError, NodeFactory, NodeFuture};
use crate::flow::values::HumanDuration;
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};

use super::http_retry::{
    Backoff, Health, RetryConfig, RetryPolicy, TlsConfig, Verdict, attempt, client, deliver,
    random_seed, redact,
};

/// Options of an `influx.out` node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InfluxOutConfig {
    /// The server's base URL, e.g. `http://localhost:8086` (v2) or
    /// `http://localhost:8181` (v3); the API path is added to it.
    pub url: String,
    /// The write API: `v2` (default; InfluxDB 2 and 3 both serve it) or `v3`.
    #[serde(default)]
    pub api: Api,
    /// v2: the organization.
    pub org: Option<String>,
    /// v2: the bucket.
    pub bucket: Option<String>,
    /// v3: the database.
    pub database: Option<String>,
    /// The API token, usually `${file:/run/secrets/influx-token}`; sent as
    /// `Authorization: Token ...` (v2) or `Bearer ...` (v3).
    pub token: Option<String>,
    /// The timestamps' unit on the wire: `s`, `ms` (default), `us` or `ns`.
    #[serde(default)]
    pub precision: Precision,
    /// The measurement, a template: `power` or `{{payload.kind}}`.
    pub measurement: String,
    /// Tags: tag key -> message field, e.g. `{ room: payload.room, topic: topic }`. A
    /// missing or empty value leaves the tag out.
    #[serde(default)]
    pub tags: BTreeMap<String, FieldPath>,
    /// Fields: field key -> message field. Without it, every top-level number, boolean
    /// and string of a JSON object payload is a field (except those used as tags).
    pub fields: Option<BTreeMap<String, FieldPath>>,
    /// Fields written as integers (`5i`); every other number is written as a float, so
    /// a value that is sometimes `5` and sometimes `5.5` never changes type.
    #[serde(default)]
    pub integers: Vec<String>,
    /// The point's time: a field holding ms since the epoch or an RFC 3339 string
    /// (default: the message's timestamp).
    pub timestamp: Option<FieldPath>,
    /// When a batch is sent.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Compress request bodies with gzip (default true).
    #[serde(default = "yes")]
    pub gzip: bool,
    /// How long one write may take (default `10s`).
    pub timeout: Option<HumanDuration>,
    /// Retries on connection errors, timeouts, 5xx and 429, as for `http.out`.
    #[serde(default)]
    pub retry: RetryConfig,
    /// TLS settings for `https://` URLs.
    #[serde(default)]
    pub tls: TlsConfig,
}

fn yes() -> bool {
    true
}

/// Which write API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// `/api/v2/write?org=&bucket=&precision=`.
    #[default]
    V2,
    /// `/api/v3/write_lp?db=&precision=`.
    V3,
}

/// The unit of timestamps on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Seconds.
    S,
    /// Milliseconds.
    #[default]
    Ms,
    /// Microseconds.
    Us,
    /// Nanoseconds.
    Ns,
}

impl Precision {
    fn scale_ms(self, ms: i64) -> i64 {
        match self {
            Precision::S => ms.div_euclid(1000),
            Precision::Ms => ms,
            Precision::Us => ms.saturating_mul(1000),
            Precision::Ns => ms.saturating_mul(1_000_000),
        }
    }

    fn v2(self) -> &'static str {
        match self {
            Precision::S => "s",
            Precision::Ms => "ms",
            Precision::Us => "us",
            Precision::Ns => "ns",
        }
    }

    fn v3(self) -> &'static str {
        match self {
            Precision::S => "second",
            Precision::Ms => "millisecond",
            Precision::Us => "microsecond",
            Precision::Ns => "nanosecond",
        }
    }
}

/// `batch:` options.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Send when this many lines are waiting (default 1000, at most 100000).
    #[schemars(range(min = 1, max = 100000))]
    pub max_lines: Option<usize>,
    /// Send at the latest this long after the first line of a batch (default `1s`).
    pub max_wait: Option<HumanDuration>,
}

const DEFAULT_MAX_LINES: usize = 1000;
const MAX_LINES: usize = 100_000;
const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(1);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl InfluxOutConfig {
    fn issues(&self) -> (Vec<ConfigIssue>, Option<Template>, Option<Url>) {
        let mut issues = Vec::new();
        let url = match Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.query().is_none() => {
                Some(url)
            }
            Ok(_) => {
                issues.push(ConfigIssue::new(
                    "url",
                    "give the server's base URL, http:// or https:// with no query, e.g. http://localhost:8086",
                ));
                None
            }
            Err(e) => {
                issues.push(ConfigIssue::new(
                    "url",
                    format!("`{}` is not a URL: {e}", self.url),
                ));
                None
            }
        };
        match self.api {
            Api::V2 => {
                for (name, value) in [("org", &self.org), ("bucket", &self.bucket)] {
                    if value.as_deref().is_none_or(str::is_empty) {
                        issues.push(ConfigIssue::new(name, format!("the v2 API needs `{name}`")));
                    }
                }
                if self.database.is_some() {
                    issues.push(ConfigIssue::new(
                        "database",
                        "`database` is for `api: v3`; v2 writes to `org` and `bucket`",
                    ));
                }
            }
            Api::V3 => {
                if self.database.as_deref().is_none_or(str::is_empty) {
                    issues.push(ConfigIssue::new("database", "the v3 API needs `database`"));
                }
                if self.org.is_some() || self.bucket.is_some() {
                    issues.push(ConfigIssue::new(
                        if self.org.is_some() { "org" } else { "bucket" },
                        "`org` and `bucket` are for `api: v2`; v3 writes to `database`",
                    ));
                }
            }
        }
        if let Some(token) = &self.token
            && HeaderValue::from_str(&format!("Token {token}")).is_err()
        {
            issues.push(ConfigIssue::new(
                "token",
                "the token holds characters a header cannot carry (a line break?)",
            ));
        }
        let measurement = match Template::parse(&self.measurement, Escape::None) {
            Ok(t) if t.literal() == Some("") => {
                issues.push(ConfigIssue::new("measurement", "name the measurement"));
                None
            }
            Ok(t) => Some(t),
            Err(e) => {
                issues.push(ConfigIssue::new("measurement", e.message));
                None
            }
        };
        for key in self.tags.keys() {
            if let Err(e) = check_name(key) {
                issues.push(ConfigIssue::new(format!("tags.{key}"), e));
            }
        }
        if let Some(fields) = &self.fields {
            if fields.is_empty() {
                issues.push(ConfigIssue::new(
                    "fields",
                    "list at least one field, or leave `fields` out to write the payload's",
                ));
            }
            for key in fields.keys() {
                if let Err(e) = check_name(key) {
                    issues.push(ConfigIssue::new(format!("fields.{key}"), e));
                }
                if self.tags.contains_key(key) {
                    issues.push(ConfigIssue::new(
                        format!("fields.{key}"),
                        format!("`{key}` is a tag too; a key is either a tag or a field"),
                    ));
                }
            }
            for (i, name) in self.integers.iter().enumerate() {
                if !fields.contains_key(name) {
                    issues.push(ConfigIssue::new(
                        format!("integers[{i}]"),
                        format!("`{name}` is not one of the `fields`"),
                    ));
                }
            }
        }
        if let Some(n) = self.batch.max_lines
            && !(1..=MAX_LINES).contains(&n)
        {
            issues.push(ConfigIssue::new(
                "batch.max_lines",
                format!("between 1 and {MAX_LINES} lines per batch"),
            ));
        }
        if self.timeout.is_some_and(|t| t.get().is_zero()) {
            issues.push(ConfigIssue::new("timeout", "the timeout must be above 0"));
        }
        issues.extend(self.retry.validate());
        (issues, measurement, url)
    }

    /// The write URL with its query.
    fn write_url(&self, base: &Url) -> Url {
        let mut url = base.clone();
        let (segments, query): (&[&str], Vec<(&str, &str)>) = match self.api {
            Api::V2 => (
                &["api", "v2", "write"],
                vec![
                    ("org", self.org.as_deref().unwrap_or_default()),
                    ("bucket", self.bucket.as_deref().unwrap_or_default()),
                    ("precision", self.precision.v2()),
                ],
            ),
            Api::V3 => (
                &["api", "v3", "write_lp"],
                vec![
                    ("db", self.database.as_deref().unwrap_or_default()),
                    ("precision", self.precision.v3()),
                    // A batch is written whole or refused whole, so its messages share
                    // one verdict.
                    ("accept_partial", "false"),
                ],
            ),
        };
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url.query_pairs_mut().extend_pairs(query);
        url
    }
}

/// Tag and field keys: anything but line breaks (the rest is escaped).
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("a key cannot be empty".into())
    } else if name.contains(['\n', '\r']) {
        Err("a key cannot hold a line break".into())
    } else {
        Ok(())
    }
}

impl Config for InfluxOutConfig {
    const TYPE: &'static str = "influx.out";
    const ROLE: Role = Role::Sink;
    const DOC: &'static str =
        "Writes messages to InfluxDB (v2 or v3 API) as line protocol, batched and gzipped";

    fn validate(&self) -> Vec<ConfigIssue> {
        self.issues().0
    }

    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        let (issues, measurement, url) = self.issues();
        let (Some(measurement), Some(base), true) = (measurement, url, issues.is_empty()) else {
            return Err(issues);
        };
        let auth = self.token.as_ref().and_then(|token| {
            let scheme = match self.api {
                Api::V2 => "Token",
                Api::V3 => "Bearer",
            };
            let mut value = HeaderValue::from_str(&format!("{scheme} {token}")).ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        let settings = Arc::new(Settings {
            url: self.write_url(&base),
            auth,
            lines: Lines {
                measurement,
                tags: self.tags.clone().into_iter().collect(),
                fields: self.fields.clone().map(|f| f.into_iter().collect()),
                integers: self.integers.clone(),
                timestamp: self.timestamp.clone(),
                precision: self.precision,
            },
            max_lines: self.batch.max_lines.unwrap_or(DEFAULT_MAX_LINES),
            max_wait: self
                .batch
                .max_wait
                .map_or(DEFAULT_MAX_WAIT, HumanDuration::get),
            gzip: self.gzip,
            timeout: self.timeout.map_or(DEFAULT_TIMEOUT, HumanDuration::get),
            retry: self.retry.policy(),
            tls: self.tls.clone(),
            base_dir: cx.base_dir.clone(),
        });
        Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
            Box::pin(run(settings.clone(), cx))
        }))
    }
}

struct Settings {
    url: Url,
    auth: Option<HeaderValue>,
    lines: Lines,
    max_lines: usize,
    max_wait: Duration,
    gzip: bool,
    timeout: Duration,
    retry: RetryPolicy,
    tls: TlsConfig,
    base_dir: PathBuf,
}

/// How a message becomes one line of line protocol.
struct Lines {
    measurement: Template,
    /// Sorted by key (InfluxDB's advice: sorted tags write faster).
    tags: Vec<(String, FieldPath)>,
    fields: Option<Vec<(String, FieldPath)>>,
    integers: Vec<String>,
    timestamp: Option<FieldPath>,
    precision: Precision,
}

impl Lines {
    /// One line, without its newline.
    fn render(&self, msg: &Msg) -> Result<String, String> {
        let view = MsgView::new(msg);
        let measurement = self.measurement.fill(msg).map_err(|e| e.to_string())?;
        if measurement.is_empty() {
            return Err("the measurement is empty".into());
        }
        let mut line = String::with_capacity(64);
        escape(&measurement, &[',', ' '], "the measurement", &mut line)?;
        for (key, path) in &self.tags {
            let Some(value) = view.get(path) else {
                continue;
            };
            if value.is_null() {
                continue;
            }
            let text = to_text(&value);
            if text.is_empty() {
                continue;
            }
            line.push(',');
            escape(key, KEY_SPECIALS, "a tag key", &mut line)?;
            line.push('=');
            escape(&text, KEY_SPECIALS, &format!("tag `{key}`"), &mut line)?;
        }
        let mut fields = 0;
        let mut push_field = |key: &str, value: &Value, line: &mut String| -> Result<(), String> {
            if value.is_null() {
                return Ok(());
            }
            line.push(if fields == 0 { ' ' } else { ',' });
            escape(key, KEY_SPECIALS, "a field key", line)?;
            line.push('=');
            field_value(key, value, self.integers.iter().any(|i| i == key), line)?;
            fields += 1;
            Ok(())
        };
        match &self.fields {
            Some(mapped) => {
                for (key, path) in mapped {
                    if let Some(value) = view.get(path) {
                        push_field(key, &value, &mut line)?;
                    }
                }
            }
            None => {
                if let Some(Value::Object(payload)) = view.json() {
                    for (key, value) in payload {
                        // Members written as tags or as the time are not fields too.
                        let used = self
                            .tags
                            .iter()
                            .map(|(_, path)| path)
                            .chain(&self.timestamp)
                            .any(|path| is_payload_member(path, key));
                        if used || value.is_object() || value.is_array() {
                            continue;
                        }
                        push_field(key, value, &mut line)?;
                    }
                }
            }
        }
        if fields == 0 {
            return Err(
                "the message has no field to write (line protocol needs at least one)".into(),
            );
        }
        let ms = match &self.timestamp {
            None => msg.timestamp_ms,
            Some(path) => {
                let value = view
                    .get(path)
                    .ok_or_else(|| format!("the message has no `{path}` for the timestamp"))?;
                timestamp_ms(&value).ok_or_else(|| {
                    format!("`{path}` is not a time (ms since the epoch or RFC 3339)")
                })?
            }
        };
        line.push(' ');
        line.push_str(&self.precision.scale_ms(ms).to_string());
        Ok(line)
    }
}

/// Whether `path` is `payload.KEY`.
fn is_payload_member(path: &FieldPath, key: &str) -> bool {
    matches!(path, FieldPath::Payload(steps)
        if matches!(steps.as_slice(), [crate::engine::fields::Step::Key(k)] if k == key))
}

/// What tag keys, tag values and field keys escape.
const KEY_SPECIALS: &[char] = &[',', '=', ' '];

/// Appends `text` with `specials` and backslashes escaped; line breaks cannot be carried.
fn escape(text: &str, specials: &[char], what: &str, out: &mut String) -> Result<(), String> {
    if text.contains(['\n', '\r']) {
        return Err(format!(
            "{what} holds a line break, which line protocol cannot carry"
        ));
    }
    for c in text.chars() {
        if c == '\\' || specials.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    Ok(())
}

/// Appends a field value: a float, an integer (`5i`) for fields listed in `integers`, a
/// boolean, or a quoted string (objects and arrays as their JSON text).
fn field_value(key: &str, value: &Value, integer: bool, out: &mut String) -> Result<(), String> {
    match value {
        Value::Number(n) if integer => {
            let i = n
                .as_i64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
                        .map(|f| f as i64)
                })
                .ok_or_else(|| format!("field `{key}` is listed in `integers` but is {n}"))?;
            out.push_str(&i.to_string());
            out.push('i');
        }
        Value::Number(n) => {
            let f = n
                .as_f64()
                .ok_or_else(|| format!("field `{key}` is not a number InfluxDB takes"))?;
            out.push_str(&f.to_string());
        }
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::String(s) if integer => {
            let i: i64 = s
                .trim()
                .parse()
                .map_err(|_| format!("field `{key}` is listed in `integers` but is \"{s}\""))?;
            out.push_str(&i.to_string());
            out.push('i');
        }
        other => {
            let text = to_text(other);
            if text.contains(['\n', '\r']) {
                return Err(format!(
                    "field `{key}` holds a line break, which line protocol cannot carry"
                ));
            }
            out.push('"');
            for c in text.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
    }
    Ok(())
}

/// A time as ms since the epoch: a number (ms) or an RFC 3339 string.
fn timestamp_ms(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && f.abs() < 9.2e18)
                .map(|f| f.round() as i64)
        }),
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s.trim())
            .ok()
            .map(|t| t.timestamp_millis()),
        _ => None,
    }
}

async fn run(settings: Arc<Settings>, mut cx: NodeContext) -> Result<(), NodeError> {
    let client =
        client(&settings.tls, &settings.base_dir, settings.timeout, 1).map_err(NodeError::new)?;
    let seed = random_seed();
    let health = Health::new(cx.id.clone());
    let target = redact(&settings.url);
    let mut batch_number: u64 = 0;
    let mut lines = String::new();
    let mut msgs: Vec<Msg> = Vec::with_capacity(settings.max_lines);
    let mut open = true;
    while open {
        // The first line of a batch starts its clock.
        let Some(first) = cx.recv().await else { break };
        add(&settings, &cx, first, &mut lines, &mut msgs).await;
        let clock = cx.clock.clone();
        let deadline = clock.now() + settings.max_wait;
        while msgs.len() < settings.max_lines {
            let next = tokio::select! {
                next = cx.recv() => next,
                () = clock.sleep_until(deadline) => break,
            };
            match next {
                Some(msg) => add(&settings, &cx, msg, &mut lines, &mut msgs).await,
                None => {
                    open = false;
                    break;
                }
            }
        }
        if msgs.is_empty() {
            continue;
        }
        let body = match encode(&lines, settings.gzip) {
            Ok(body) => body,
            Err(e) => return Err(NodeError::new(format!("cannot gzip a batch: {e}"))),
        };
        lines.clear();
        batch_number += 1;
        let mut backoff = Backoff::new(&settings.retry, seed ^ batch_number.rotate_left(17));
        let verdict = deliver(
            &settings.retry,
            &mut backoff,
            &cx.clock,
            &cx.shutdown,
            &health,
            || {
                let mut request = client
                    .post(settings.url.clone())
                    .header(CONTENT_TYPE, "text/plain; charset=utf-8")
                    .timeout(settings.timeout)
                    .body(body.clone());
                if settings.gzip {
                    request = request.header(CONTENT_ENCODING, "gzip");
                }
                if let Some(auth) = &settings.auth {
                    request = request.header(AUTHORIZATION, auth.clone());
                }
                attempt(
                    request.build().map_err(|e| e.to_string()),
                    &client,
                    &cx.clock,
                    &target,
                )
            },
        )
        .await;
        match verdict {
            Verdict::Delivered => msgs.drain(..).for_each(Msg::done),
            Verdict::Refused(reason) | Verdict::GaveUp(reason) => {
                for msg in msgs.drain(..) {
                    cx.outputs.emit_error(msg, &reason).await;
                }
            }
            Verdict::Shutdown(reason) => {
                for msg in msgs.drain(..) {
                    msg.fail(format!(
                        "{}: shutting down while retrying ({reason}); it is written again after the restart",
                        cx.id
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Renders `msg` into the batch, or sends it to the error port.
async fn add(
    settings: &Settings,
    cx: &NodeContext,
    msg: Msg,
    lines: &mut String,
    msgs: &mut Vec<Msg>,
) {
    match settings.lines.render(&msg) {
        Ok(line) => {
            lines.push_str(&line);
            lines.push('\n');
            msgs.push(msg);
        }
        Err(reason) => cx.outputs.emit_error(msg, reason).await,
    }
}

fn encode(lines: &str, gzip: bool) -> std::io::Result<Bytes> {
    if !gzip {
        return Ok(Bytes::copy_from_slice(lines.as_bytes()));
    }
    // Fast compression: line protocol is repetitive, the fast level gets most of the gain
    // for a fraction of the CPU (this runs on the runtime, between batches).
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(lines.len() / 4),
        flate2::Compression::fast(),
    );
    encoder.write_all(lines.as_bytes())?;
    encoder.finish().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(options: serde_json::Value) -> Lines {
        let mut base = serde_json::json!({
            "url": "http://h:8086", "org": "o", "bucket": "b", "measurement": "m"
        });
        base.as_object_mut()
            .unwrap()
            .extend(options.as_object().unwrap().clone());
        let config: InfluxOutConfig = serde_json::from_value(base).unwrap();
        let (issues, measurement, _) = config.issues();
        assert!(issues.is_empty(), "{issues:?}");
        Lines {
            measurement: measurement.unwrap(),
            tags: config.tags.into_iter().collect(),
            fields: config.fields.map(|f| f.into_iter().collect()),
            integers: config.integers,
            timestamp: config.timestamp,
            precision: config.precision,
        }
    }

    fn msg(payload: &str) -> Msg {
        let mut msg = Msg::new("home/living room", payload.to_string(), 1_700_000_000_123);
        msg.headers_mut().insert("site".into(), "north".into());
        msg
    }

    #[test]
    fn escapes_every_part_as_line_protocol_says() {
        let l = lines(serde_json::json!({
            "measurement": "{{payload.kind}}",
            "tags": {"room name": "payload.room", "topic": "topic", "site": "headers.site", "none": "payload.nope"},
            "fields": {"w": "payload.w", "count": "payload.n", "note": "payload.note", "ok": "payload.ok", "a=b": "payload.w"},
            "integers": ["count"],
        }));
        let m = msg(
            r#"{"kind": "power meter,1", "room": "living=room\\x", "w": 5, "n": 7, "note": "say \"hi\" \\ bye", "ok": true}"#,
        );
        assert_eq!(
            l.render(&m).unwrap(),
            r#"power\ meter\,1,room\ name=living\=room\\x,site=north,topic=home/living\ room a\=b=5,count=7i,note="say \"hi\" \\ bye",ok=true,w=5 1700000000123"#
        );
    }

    #[test]
    fn default_fields_types_and_timestamps() {
        let l = lines(serde_json::json!({
            "tags": {"id": "payload.id"},
            "timestamp": "payload.at",
            "precision": "ns",
        }));
        let m = msg(
            r#"{"id": "meter-1", "w": 21.5, "on": false, "unit": "W", "nested": {"x": 1}, "list": [1], "nil": null, "at": 1700000000000}"#,
        );
        assert_eq!(
            l.render(&m).unwrap(),
            r#"m,id=meter-1 w=21.5,on=false,unit="W" 1700000000000000000"#
        );
        let m = msg(r#"{"w": 1, "at": "2023-11-14T22:13:20.5Z"}"#);
        assert_eq!(l.render(&m).unwrap(), "m w=1 1700000000500000000");
        let l = lines(serde_json::json!({"precision": "s"}));
        assert_eq!(l.render(&msg(r#"{"w": 1}"#)).unwrap(), "m w=1 1700000000");
    }

    #[test]
    fn what_cannot_be_written_is_an_error() {
        let l = lines(serde_json::json!({"fields": {"n": "payload.n"}, "integers": ["n"]}));
        assert_eq!(
            l.render(&msg(r#"{"n": 1.5}"#)).unwrap_err(),
            "field `n` is listed in `integers` but is 1.5"
        );
        assert_eq!(
            l.render(&msg(r#"{"n": 2.0}"#)).unwrap(),
            "m n=2i 1700000000123"
        );
        assert_eq!(
            l.render(&msg(r#"{"x": 1}"#)).unwrap_err(),
            "the message has no field to write (line protocol needs at least one)"
        );
        let l = lines(serde_json::json!({"tags": {"t": "payload.t"}}));
        assert_eq!(
            l.render(&msg(r#"{"t": "a\nb", "w": 1}"#)).unwrap_err(),
            "tag `t` holds a line break, which line protocol cannot carry"
        );
        let l = lines(serde_json::json!({"timestamp": "payload.at"}));
        assert_eq!(
            l.render(&msg(r#"{"w": 1, "at": "yesterday"}"#))
                .unwrap_err(),
            "`payload.at` is not a time (ms since the epoch or RFC 3339)"
        );
    }

    #[test]
    fn urls_and_options() {
        let config = |v: serde_json::Value| serde_json::from_value::<InfluxOutConfig>(v).unwrap();
        let v2 = config(serde_json::json!({
            "url": "http://h:8086/influx/", "org": "my org", "bucket": "b&c", "measurement": "m"
        }));
        assert!(v2.validate().is_empty());
        assert_eq!(
            v2.write_url(&Url::parse(&v2.url).unwrap()).as_str(),
            "http://h:8086/influx/api/v2/write?org=my+org&bucket=b%26c&precision=ms"
        );
        let v3 = config(serde_json::json!({
            "url": "https://h", "api": "v3", "database": "home", "measurement": "m", "precision": "s"
        }));
        assert_eq!(
            v3.write_url(&Url::parse(&v3.url).unwrap()).as_str(),
            "https://h/api/v3/write_lp?db=home&precision=second&accept_partial=false"
        );
        let bad = config(serde_json::json!({
            "url": "http://h?x=1", "api": "v3", "org": "o", "measurement": "",
            "fields": {"a": "payload.a"}, "tags": {"a": "topic"}, "integers": ["b"],
            "batch": {"max_lines": 0}
        }));
        let paths: Vec<String> = bad.validate().into_iter().map(|i| i.path).collect();
        assert_eq!(
            paths,
            [
                "url",
                "database",
                "org",
                "measurement",
                "fields.a",
                "integers[0]",
                "batch.max_lines"
            ]
        );
    }
}

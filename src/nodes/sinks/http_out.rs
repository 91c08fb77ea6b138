//! `http.out`: sends each message as an HTTP request (method, URL, headers and body
//! filled from the message), retrying with backoff until a 2xx, which alone makes the
//! message done. A refusal (4xx other than 429) or the retry bound sends it to the
//! `error` port with the status and an excerpt of the answer.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::engine::template::{Escape, Template};
use crate::engine::{Msg, NodeContext, NodeError, NodeFactory, NodeFuture};
use crate::flow::values::HumanDuration;
use crate::nodes::registry::{BuildContext, Config, ConfigIssue, Role};

use super::http_retry::{
    Backoff, Health, RetryConfig, RetryPolicy, TlsConfig, Verdict, attempt, client, deliver,
    random_seed, redact,
};

/// Options of an `http.out` node.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpOutConfig {
    /// The URL, a template: `https://api.example/rooms/{{payload.room}}`; values filled
    /// in are percent-encoded.
    pub url: String,
    /// The method (default `POST`): `GET`, `POST`, `PUT`, `PATCH` or `DELETE`, or a
    /// template that fills to one.
    #[serde(default = "default_method")]
    pub method: String,
    /// The body, a template; without it the payload is sent as it is (nothing for `GET`).
    pub body: Option<String>,
    /// Request headers; values are templates, and `${file:...}` puts a secret in at load.
    /// Without `content-type`, a JSON body is sent as `application/json`, other text as
    /// `text/plain; charset=utf-8`, bytes as `application/octet-stream`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How long one attempt may take, connection and answer included (default `10s`).
    pub timeout: Option<HumanDuration>,
    /// Retries on connection errors, timeouts, 5xx and 429.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Most requests in flight at once (default 4, at most 64). With 1, messages are sent
    /// strictly in order, each after the one before was delivered or failed.
    #[schemars(range(min = 1, max = 64))]
    pub concurrency: Option<usize>,
    /// TLS settings for `https://` URLs.
    #[serde(default)]
    pub tls: TlsConfig,
}

fn default_method() -> String {
    "POST".to_string()
}

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CONCURRENCY: usize = 4;
const MAX_CONCURRENCY: usize = 64;

/// The templates of a config, parsed; also what `validate` checks.
struct Parsed {
    url: Template,
    method: Template,
    body: Option<Template>,
    headers: Vec<(HeaderName, Template)>,
}

impl HttpOutConfig {
    fn parse(&self) -> Result<Parsed, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let template = |path: String, text: &str, escape, issues: &mut Vec<ConfigIssue>| {
            Template::parse(text, escape)
                .map_err(|e| issues.push(ConfigIssue::new(path, e.message)))
                .ok()
        };
        let url = template("url".into(), &self.url, Escape::Url, &mut issues);
        if let Some(url) = &url {
            check_url(url, &mut issues);
        }
        let method = template("method".into(), &self.method, Escape::None, &mut issues);
        if let Some(literal) = method.as_ref().and_then(Template::literal)
            && !METHODS.contains(&literal)
        {
            issues.push(ConfigIssue::new(
                "method",
                format!("`{literal}` is not a method this sink sends; use one of {METHODS:?}"),
            ));
        }
        let body = self
            .body
            .as_deref()
            .and_then(|b| template("body".into(), b, Escape::None, &mut issues));
        let mut headers = Vec::new();
        for (name, value) in &self.headers {
            let path = format!("headers.{name}");
            let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
                issues.push(ConfigIssue::new(
                    path,
                    format!("`{name}` is not a valid header name"),
                ));
                continue;
            };
            if let Some(value) = template(path.clone(), value, Escape::None, &mut issues) {
                if let Some(literal) = value.literal()
                    && HeaderValue::from_str(literal).is_err()
                {
                    issues.push(ConfigIssue::new(
                        path,
                        "the value holds characters a header cannot carry (a line break?)",
                    ));
                }
                headers.push((header, value));
            }
        }
        if self.timeout.is_some_and(|t| t.get().is_zero()) {
            issues.push(ConfigIssue::new("timeout", "the timeout must be above 0"));
        }
        if let Some(n) = self.concurrency
            && !(1..=MAX_CONCURRENCY).contains(&n)
        {
            issues.push(ConfigIssue::new(
                "concurrency",
                format!("between 1 and {MAX_CONCURRENCY} requests in flight"),
            ));
        }
        issues.extend(self.retry.validate());
        match (url, method, issues.is_empty()) {
            (Some(url), Some(method), true) => Ok(Parsed {
                url,
                method,
                body,
                headers,
            }),
            _ => Err(issues),
        }
    }
}

/// A constant URL must parse; a templated one must at least start with its scheme, so
/// that no message can pick where it goes beyond what the flow allows.
fn check_url(url: &Template, issues: &mut Vec<ConfigIssue>) {
    let text = url.to_string();
    if let Some(literal) = url.literal() {
        match Url::parse(literal) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
            Ok(parsed) => issues.push(ConfigIssue::new(
                "url",
                format!(
                    "`{}` URLs are not sent; use http:// or https://",
                    parsed.scheme()
                ),
            )),
            Err(e) => issues.push(ConfigIssue::new(
                "url",
                format!("`{literal}` is not a URL: {e}"),
            )),
        }
    } else if !(text.starts_with("http://") || text.starts_with("https://")) {
        issues.push(ConfigIssue::new(
            "url",
            "a templated URL must start with http:// or https:// (the scheme cannot come from a message)",
        ));
    }
}

impl Config for HttpOutConfig {
    const TYPE: &'static str = "http.out";
    const ROLE: Role = Role::Sink;
    const DOC: &'static str =
        "Sends each message as an HTTP request, retrying with backoff until a 2xx";

    fn validate(&self) -> Vec<ConfigIssue> {
        self.parse().err().unwrap_or_default()
    }

    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn NodeFactory>, Vec<ConfigIssue>> {
        let parsed = self.parse()?;
        let settings = Arc::new(Settings {
            url: parsed.url,
            method: parsed.method,
            body: parsed.body,
            headers: parsed.headers,
            timeout: self.timeout.map_or(DEFAULT_TIMEOUT, HumanDuration::get),
            retry: self.retry.policy(),
            concurrency: self.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
            tls: self.tls.clone(),
            base_dir: cx.base_dir.clone(),
        });
        Ok(Arc::new(move |cx: NodeContext| -> NodeFuture {
            Box::pin(run(settings.clone(), cx))
        }))
    }
}

/// A built node's settings, shared by its runs.
struct Settings {
    url: Template,
    method: Template,
    body: Option<Template>,
    headers: Vec<(HeaderName, Template)>,
    timeout: Duration,
    retry: RetryPolicy,
    concurrency: usize,
    tls: TlsConfig,
    base_dir: PathBuf,
}

/// One message made into a request, built again for each attempt from these parts.
struct Rendered {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Bytes>,
}

impl Settings {
    fn render(&self, msg: &Msg) -> Result<Rendered, String> {
        let method_text = self.method.fill(msg).map_err(|e| e.to_string())?;
        let method = match method_text.to_ascii_uppercase().as_str() {
            m if METHODS.contains(&m) => {
                Method::from_bytes(m.as_bytes()).map_err(|e| e.to_string())?
            }
            _ => {
                return Err(format!(
                    "the method `{method_text}` is not one of {METHODS:?}"
                ));
            }
        };
        let url_text = self.url.fill(msg).map_err(|e| e.to_string())?;
        let url = Url::parse(&url_text).map_err(|e| format!("`{url_text}` is not a URL: {e}"))?;
        let mut headers = HeaderMap::with_capacity(self.headers.len() + 1);
        for (name, template) in &self.headers {
            let value = template.fill(msg).map_err(|e| e.to_string())?;
            let value = HeaderValue::from_str(&value).map_err(|_| {
                format!("header `{name}` would hold characters a header cannot carry")
            })?;
            headers.append(name.clone(), value);
        }
        let body = match &self.body {
            Some(template) => Some(Bytes::from(template.fill(msg).map_err(|e| e.to_string())?)),
            None if method == Method::GET => None,
            None => Some(msg.payload.clone()),
        };
        if let Some(body) = &body
            && !headers.contains_key(CONTENT_TYPE)
        {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type(body)));
        }
        Ok(Rendered {
            method,
            url,
            headers,
            body,
        })
    }
}

/// The content type of a body the flow did not label.
fn content_type(body: &[u8]) -> &'static str {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        "application/json"
    } else if std::str::from_utf8(body).is_ok() {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

async fn run(settings: Arc<Settings>, cx: NodeContext) -> Result<(), NodeError> {
    let client = client(
        &settings.tls,
        &settings.base_dir,
        settings.timeout,
        settings.concurrency,
    )
    .map_err(NodeError::new)?;
    let seed = random_seed();
    let health = Health::new(cx.id.clone());
    let messages = futures::stream::unfold(cx.clone(), |mut cx| async move {
        let msg = cx.recv().await?;
        Some((msg, cx))
    });
    messages
        .for_each_concurrent(settings.concurrency, |msg| {
            send(&settings, &client, &cx, &health, seed, msg)
        })
        .await;
    Ok(())
}

/// Delivers one message, then gives it its verdict.
async fn send(
    settings: &Settings,
    client: &reqwest::Client,
    cx: &NodeContext,
    health: &Health,
    seed: u64,
    msg: Msg,
) {
    let rendered = match settings.render(&msg) {
        Ok(rendered) => rendered,
        Err(reason) => return cx.outputs.emit_error(msg, reason).await,
    };
    let target = redact(&rendered.url);
    let mut backoff = Backoff::new(&settings.retry, seed ^ msg.id.rotate_left(17));
    let verdict = deliver(
        &settings.retry,
        &mut backoff,
        &cx.clock,
        &cx.shutdown,
        health,
        || {
            let mut request = client
                .request(rendered.method.clone(), rendered.url.clone())
                .headers(rendered.headers.clone())
                .timeout(settings.timeout);
            if let Some(body) = &rendered.body {
                request = request.body(body.clone());
            }
            attempt(
                request.build().map_err(|e| e.to_string()),
                client,
                &cx.clock,
                &target,
            )
        },
    )
    .await;
    match verdict {
        Verdict::Delivered => msg.done(),
        Verdict::Refused(reason) | Verdict::GaveUp(reason) => {
            cx.outputs.emit_error(msg, reason).await;
        }
        Verdict::Shutdown(reason) => msg.fail(format!(
            "{}: shutting down while retrying ({reason}); it is delivered again after the restart",
            cx.id
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::harness::NodeHarness;
    use crate::engine::{Clock, Msg};

    fn err(options: &str) -> String {
        NodeHarness::start("http.out", options, Clock::system())
            .err()
            .unwrap()
    }

    #[tokio::test]
    async fn options_are_checked() {
        assert_eq!(
            err("url: ftp://h/x"),
            "url: `ftp` URLs are not sent; use http:// or https://"
        );
        assert_eq!(
            err("url: '{{payload.host}}/x'"),
            "url: a templated URL must start with http:// or https:// (the scheme cannot come from a message)"
        );
        assert_eq!(
            err("url: http://h/\nmethod: FETCH"),
            "method: `FETCH` is not a method this sink sends; use one of [\"GET\", \"POST\", \"PUT\", \"PATCH\", \"DELETE\"]"
        );
        assert_eq!(
            err("url: http://h/\nheaders: { 'bad name': x }\nconcurrency: 0\ntimeout: 0s"),
            "headers.bad name: `bad name` is not a valid header name; timeout: the timeout must be above 0; concurrency: between 1 and 64 requests in flight"
        );
        assert_eq!(
            err("url: 'http://h/{{payload.a'"),
            "url: `{{` is not closed by `}}`"
        );
    }

    #[test]
    fn requests_are_rendered_from_the_message() {
        let config: HttpOutConfig = serde_json::from_value(serde_json::json!({
            "url": "http://h.example/rooms/{{payload.room}}?site={{headers.site}}",
            "method": "{{headers.verb}}",
            "headers": {"authorization": "Bearer s3cret", "x-id": "{{id}}"},
        }))
        .unwrap();
        let parsed = config.parse().map_err(|_| "parse").unwrap();
        let settings = Settings {
            url: parsed.url,
            method: parsed.method,
            body: parsed.body,
            headers: parsed.headers,
            timeout: DEFAULT_TIMEOUT,
            retry: RetryConfig::default().policy(),
            concurrency: 1,
            tls: TlsConfig::default(),
            base_dir: PathBuf::from("."),
        };
        let mut msg = Msg::new("t", r#"{"room": "Living room/1", "w": 5}"#, 0);
        msg.headers_mut().insert("site".into(), "a&b".into());
        msg.headers_mut().insert("verb".into(), "put".into());
        let r = settings.render(&msg).unwrap();
        assert_eq!(r.method, Method::PUT);
        assert_eq!(
            r.url.as_str(),
            "http://h.example/rooms/Living%20room%2F1?site=a%26b"
        );
        assert_eq!(r.headers["authorization"], "Bearer s3cret");
        assert_eq!(r.headers["x-id"], msg.id.to_string());
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.body.as_deref(), Some(&msg.payload[..]));

        msg.headers_mut().insert("verb".into(), "TRACE".into());
        assert_eq!(
            settings.render(&msg).err().unwrap(),
            "the method `TRACE` is not one of [\"GET\", \"POST\", \"PUT\", \"PATCH\", \"DELETE\"]"
        );
        let missing = Msg::new("t", "{}", 0);
        assert!(
            settings
                .render(&missing)
                .err()
                .unwrap()
                .starts_with("the message has no")
        );
        assert_eq!(content_type(b"plain"), "text/plain; charset=utf-8");
        assert_eq!(content_type(&[0xff, 0]), "application/octet-stream");
    }
}

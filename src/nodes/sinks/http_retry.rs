//! What `http.out` and `influx.out` share: the `retry:` and `tls:` options, exponential
//! backoff with jitter, `Retry-After`, the HTTP client (rustls with ring, HTTP/1.1) and
//! how one response decides the fate of a delivery.
//!
//! A delivery is tried until a 2xx (done), a refusal (a 3xx or a 4xx other than 429:
//! retrying would get the same answer) or the retry bound. Connection errors, timeouts,
//! 5xx and 429 are retried; `Retry-After` (seconds or an HTTP date) replaces the backoff
//! when the server sends it.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::engine::{Clock, NodeId};
use crate::flow::values::HumanDuration;
use crate::nodes::registry::ConfigIssue;

/// The longest `Retry-After` obeyed; a server asking for more is retried after this.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(600);

/// How much of a refused response's body goes into the error reason.
pub const EXCERPT_BYTES: usize = 512;

/// How much of a successful response's body is read (so the connection can be reused)
/// before it is dropped.
const DRAIN_BYTES: usize = 64 * 1024;

/// `retry:` options: exponential backoff with jitter, bounded by attempts or time.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Most attempts per delivery, the first included. Without it (and without
    /// `max_elapsed`) a delivery is given up after 5 minutes.
    #[schemars(range(min = 1))]
    pub max_attempts: Option<u32>,
    /// Give up when the next attempt would start later than this after the first one.
    pub max_elapsed: Option<HumanDuration>,
    /// The first backoff (default `500ms`); each retry doubles it.
    pub initial: Option<HumanDuration>,
    /// The longest backoff (default `30s`).
    pub max: Option<HumanDuration>,
}

/// The bound used when `retry:` names neither attempts nor time.
const DEFAULT_MAX_ELAPSED: Duration = Duration::from_secs(300);

impl RetryConfig {
    /// Checks the values; issues are under `retry.`.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if self.max_attempts == Some(0) {
            issues.push(ConfigIssue::new(
                "retry.max_attempts",
                "at least 1 attempt (1 means no retries)",
            ));
        }
        if self.initial.is_some_and(|d| d.get().is_zero()) {
            issues.push(ConfigIssue::new(
                "retry.initial",
                "the first backoff must be above 0",
            ));
        }
        let policy = self.policy();
        if policy.max < policy.initial {
            issues.push(ConfigIssue::new(
                "retry.max",
                format!(
                    "the longest backoff ({:?}) is shorter than the first ({:?})",
                    policy.max, policy.initial
                ),
            ));
        }
        issues
    }

    /// The policy with defaults filled in.
    pub fn policy(&self) -> RetryPolicy {
        let max_elapsed = match (self.max_attempts, self.max_elapsed) {
            (None, None) => Some(DEFAULT_MAX_ELAPSED),
            (_, elapsed) => elapsed.map(HumanDuration::get),
        };
        RetryPolicy {
            max_attempts: self.max_attempts,
            max_elapsed,
            initial: self
                .initial
                .map_or(Duration::from_millis(500), HumanDuration::get),
            max: self.max.map_or(Duration::from_secs(30), HumanDuration::get),
        }
    }
}

/// A retry policy with its defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most attempts, the first included.
    pub max_attempts: Option<u32>,
    /// Longest time from the first attempt to the start of the last.
    pub max_elapsed: Option<Duration>,
    /// The first backoff.
    pub initial: Duration,
    /// The longest backoff.
    pub max: Duration,
}

/// Exponential backoff with "equal jitter": the n-th retry waits a random time in
/// `[d/2, d]` with `d = min(max, initial * 2^n)`, so clients that failed together do not
/// come back together, and none waits less than half its step.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    rng: u64,
}

impl Backoff {
    /// A backoff for `policy`; `seed` picks the jitter sequence.
    pub fn new(policy: &RetryPolicy, seed: u64) -> Backoff {
        Backoff {
            initial: policy.initial,
            max: policy.max,
            // xorshift needs a non-zero state.
            rng: seed | 1,
        }
    }

    /// The wait before retry number `retry` (0 for the first retry).
    pub fn delay(&mut self, retry: u32) -> Duration {
        let step = self
            .initial
            .saturating_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
            .min(self.max);
        let half = step / 2;
        let spread = u64::try_from((step - half).as_nanos()).unwrap_or(u64::MAX);
        let jitter = if spread == 0 {
            0
        } else {
            self.next() % (spread + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    /// xorshift64*: jitter needs spread, not secrecy.
    fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// A random seed for a node's jitter (from the OS; the time if that fails).
pub fn random_seed() -> u64 {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 8];
    if SystemRandom::new().fill(&mut bytes).is_ok() {
        u64::from_le_bytes(bytes)
    } else {
        std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// A 2xx: the delivery is done.
    Delivered,
    /// Worth another try: a connection error, a timeout, a 5xx or a 429; `after` is the
    /// server's `Retry-After`.
    Retry {
        /// What went wrong, for the log and the final error.
        reason: String,
        /// The server's `Retry-After`, when it sent one.
        after: Option<Duration>,
    },
    /// Refused for good: the same request would be refused again.
    Refused(String),
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A 2xx answered it.
    Delivered,
    /// The server refused it (a 4xx other than 429, a redirect) or it could not be sent.
    Refused(String),
    /// The retry bound was reached; the last reason.
    GaveUp(String),
    /// The engine is shutting down; the delivery was abandoned while waiting to retry
    /// (its message fails, so its source delivers it again after the restart).
    Shutdown(String),
}

/// Tries `attempt` until it delivers, is refused, or `policy` says stop. Waits between
/// attempts on `clock` (virtual in tests) and stops waiting when `shutdown` fires.
pub async fn deliver<F, Fut>(
    policy: &RetryPolicy,
    backoff: &mut Backoff,
    clock: &Clock,
    shutdown: &CancellationToken,
    health: &Health,
    mut attempt: F,
) -> Verdict
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt>,
{
    let start = clock.now();
    let mut attempts: u32 = 0;
    loop {
        let outcome = attempt().await;
        attempts = attempts.saturating_add(1);
        let (reason, after) = match outcome {
            Attempt::Delivered => {
                health.up();
                return Verdict::Delivered;
            }
            Attempt::Refused(reason) => {
                // The endpoint answered: it is up, whatever it thought of this request.
                health.up();
                return Verdict::Refused(reason);
            }
            Attempt::Retry { reason, after } => (reason, after),
        };
        health.down(&reason);
        if policy.max_attempts.is_some_and(|max| attempts >= max) {
            return Verdict::GaveUp(format!("{reason} (gave up after {attempts} attempts)"));
        }
        let delay = match after {
            Some(after) => after.min(RETRY_AFTER_CAP),
            None => backoff.delay(attempts - 1),
        };
        let elapsed = clock.now().saturating_duration_since(start);
        if policy
            .max_elapsed
            .is_some_and(|max| elapsed.saturating_add(delay) > max)
        {
            return Verdict::GaveUp(format!(
                "{reason} (gave up after {attempts} attempts in {:.1}s)",
                elapsed.as_secs_f64()
            ));
        }
        if shutdown.is_cancelled() {
            return Verdict::Shutdown(reason);
        }
        tokio::select! {
            () = clock.sleep(delay) => {}
            () = shutdown.cancelled() => return Verdict::Shutdown(reason),
        }
    }
}

/// Whether a node's endpoint works, so that it logs one line when it starts failing and
/// one when it recovers, never one per message.
#[derive(Debug)]
pub struct Health {
    node: NodeId,
    failing: AtomicBool,
}

impl Health {
    /// The endpoint of `node`, assumed up.
    pub fn new(node: NodeId) -> Health {
        Health {
            node,
            failing: AtomicBool::new(false),
        }
    }

    fn down(&self, reason: &str) {
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(node = %self.node, "endpoint failing, retrying with backoff: {reason}");
        }
    }

    fn up(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(node = %self.node, "endpoint recovered");
        }
    }
}

/// A `Retry-After` value: delay-seconds, or an HTTP date (IMF-fixdate, RFC 850 or
/// asctime) compared with `now_ms` (wall time, ms since the epoch). A date in the past
/// means now.
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let at_ms = at.duration_since(UNIX_EPOCH).ok()?.as_millis();
    let at_ms = i64::try_from(at_ms).ok()?;
    Some(Duration::from_millis(
        at_ms.saturating_sub(now_ms).max(0).unsigned_abs(),
    ))
}

/// Sends one request and classifies the outcome. `target` names the endpoint in reasons
/// (without its query, which may hold a key).
pub async fn attempt(
    request: Result<reqwest::Request, String>,
    client: &reqwest::Client,
    clock: &Clock,
    target: &str,
) -> Attempt {
    let request = match request {
        Ok(request) => request,
        Err(reason) => return Attempt::Refused(reason),
    };
    let method = request.method().clone();
    let timeout = request.timeout().copied();
    match client.execute(request).await {
        Err(error) if error.is_builder() => {
            Attempt::Refused(format!("cannot build the request: {}", chain(&error)))
        }
        Err(error) => {
            let reason = if error.is_timeout() {
                match timeout {
                    Some(t) => format!("no response from {method} {target} within {t:?}"),
                    None => format!("{method} {target} timed out"),
                }
            } else {
                format!("{method} {target} failed: {}", chain(&error))
            };
            Attempt::Retry {
                reason,
                after: None,
            }
        }
        Ok(response) => classify(response, clock, &format!("{method} {target}")).await,
    }
}

/// What a response means for the delivery.
async fn classify(mut response: reqwest::Response, clock: &Clock, what: &str) -> Attempt {
    let status = response.status();
    if status.is_success() {
        // Read what is there (bounded) so the connection goes back to the pool.
        let _ = read_bounded(&mut response, DRAIN_BYTES).await;
        return Attempt::Delivered;
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, clock.wall_ms()));
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let excerpt = excerpt(&read_bounded(&mut response, EXCERPT_BYTES).await);
    let reason = if excerpt.is_empty() {
        format!("HTTP {status} from {what}")
    } else {
        format!("HTTP {status} from {what}: {excerpt}")
    };
    if status.as_u16() == 429 || status.is_server_error() {
        Attempt::Retry {
            reason,
            after: retry_after,
        }
    } else if status.is_redirection() {
        let to = location.map_or(String::new(), |l| format!(" to {l}"));
        Attempt::Refused(format!(
            "HTTP {status} from {what}: redirected{to}; point `url` at the final address"
        ))
    } else {
        Attempt::Refused(reason)
    }
}

/// Up to `limit` bytes of the body; errors end the read (what was read is kept).
async fn read_bounded(response: &mut reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(limit - body.len());
                body.extend_from_slice(&chunk[..take]);
            }
            _ => break,
        }
    }
    body
}

/// A response body made fit for one log line: text, whitespace collapsed, bounded.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out = String::with_capacity(text.len().min(EXCERPT_BYTES));
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    if body.len() >= EXCERPT_BYTES {
        out.push_str(" ...");
    }
    out
}

/// An error with its causes: reqwest's own text is terse ("error sending request"), the
/// cause says what happened ("connection refused").
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A URL for logs and reasons: scheme, host, port and path, without the query (which may
/// hold a key) or credentials.
pub fn redact(url: &reqwest::Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    shown
}

/// `tls:` options of HTTP sinks.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// A PEM file of CA certificates trusted besides the system's (a private CA or a
    /// self-signed server); relative to the flow file.
    pub ca_file: Option<String>,
}

/// Builds a node's HTTP client: HTTP/1.1, rustls with the ring provider, the system's
/// CA certificates plus `tls.ca_file`, no redirects (a sink's POST must not turn into a
/// GET elsewhere), at most `pool` idle connections kept.
pub fn client(
    tls: &TlsConfig,
    base_dir: &Path,
    connect_timeout: Duration,
    pool: usize,
) -> Result<reqwest::Client, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut extra = Vec::new();
    if let Some(file) = &tls.ca_file {
        let path = base_dir.join(file);
        let pem = std::fs::read(&path)
            .map_err(|e| format!("cannot read `tls.ca_file` {}: {e}", path.display()))?;
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let cert: CertificateDer<'static> = cert.map_err(|e| {
                format!(
                    "`tls.ca_file` {} is not PEM certificates: {e}",
                    path.display()
                )
            })?;
            extra.push(cert);
        }
        if extra.is_empty() {
            return Err(format!(
                "`tls.ca_file` {} holds no certificate; give a PEM file with `BEGIN CERTIFICATE`",
                path.display()
            ));
        }
    }
    let verifier: Arc<dyn ServerCertVerifier> =
        match rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone()) {
            Ok(verifier) => Arc::new(verifier),
            // No CA certificates on this machine: plain HTTP still works, HTTPS says why not.
            Err(e) => Arc::new(NoRoots {
                reason: e.to_string(),
                provider: provider.clone(),
            }),
        };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .pool_max_idle_per_host(pool)
        .user_agent(concat!("headwater/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot set up the HTTP client: {}", chain(&e)))
}

/// The verifier used when the machine has no CA certificates: refuses every server,
/// saying what to install.
#[derive(Debug)]
struct NoRoots {
    reason: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for NoRoots {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::General(format!(
            "no CA certificates to verify the server ({}); install ca-certificates or set `tls.ca_file`",
            self.reason
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A body for a retried request: `Bytes` clones share the buffer.
pub fn body(bytes: &Bytes) -> reqwest::Body {
    reqwest::Body::from(bytes.clone())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::time::Instant;

    use super::*;

    fn policy(yaml: &str) -> RetryPolicy {
        let config: RetryConfig = serde_json::from_str(yaml).unwrap();
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        config.policy()
    }

    #[test]
    fn backoff_doubles_up_to_the_max_with_bounded_jitter() {
        let p = policy(r#"{"initial": "100ms", "max": "1s"}"#);
        let mut backoff = Backoff::new(&p, 42);
        let steps = [100, 200, 400, 800, 1000, 1000, 1000];
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            for (retry, step) in steps.iter().enumerate() {
                let d = backoff.delay(retry as u32);
                let step = Duration::from_millis(*step);
                assert!(
                    d >= step / 2 && d <= step,
                    "retry {retry}: {d:?} vs {step:?}"
                );
                seen.insert(d);
            }
        }
        assert!(seen.len() > 100, "the jitter spreads the delays");
        // A huge retry count neither overflows nor passes the max.
        assert!(backoff.delay(u32::MAX) <= Duration::from_secs(1));
    }

    #[test]
    fn defaults_and_validation() {
        let p = RetryConfig::default().policy();
        assert_eq!(
            p,
            RetryPolicy {
                max_attempts: None,
                max_elapsed: Some(Duration::from_secs(300)),
                initial: Duration::from_millis(500),
                max: Duration::from_secs(30),
            }
        );
        assert_eq!(policy(r#"{"max_attempts": 3}"#).max_elapsed, None);
        let bad: RetryConfig =
            serde_json::from_str(r#"{"max_attempts": 0, "initial": "2s", "max": "1s"}"#).unwrap();
        let issues: Vec<_> = bad.validate().into_iter().map(|i| i.path).collect();
        assert_eq!(issues, ["retry.max_attempts", "retry.max"]);
    }

    #[test]
    fn retry_after_in_seconds_and_dates() {
        // 2015-10-21T07:28:00Z
        let now = 1_445_412_480_000;
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        // RFC 850 and asctime forms, and a date in the past.
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed Oct 21 07:28:05 2015", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn excerpts_are_bounded_single_lines() {
        assert_eq!(excerpt(b"  bad\n  request \r\n"), "bad request");
        let long = vec![b'x'; EXCERPT_BYTES];
        let text = excerpt(&long);
        assert!(text.len() <= EXCERPT_BYTES + 4 && text.ends_with(" ..."));
    }

    #[test]
    fn urls_are_shown_without_query_or_credentials() {
        let url: reqwest::Url = "https://user:pw@h.example:8443/a/b?key=secret"
            .parse()
            .unwrap();
        assert_eq!(redact(&url), "https://h.example:8443/a/b");
    }

    /// Runs `deliver` against scripted attempt outcomes on the paused clock; returns the
    /// verdict and when (virtual ms after the start) each attempt ran.
    async fn scripted(policy: &RetryPolicy, outcomes: Vec<Attempt>) -> (Verdict, Vec<u64>) {
        let clock = Clock::virtual_at(1_445_412_480_000);
        let start = Instant::now();
        let times = Mutex::new(Vec::new());
        let outcomes = Mutex::new(outcomes.into_iter());
        let health = Health::new(NodeId::new("f", "n"));
        let verdict = deliver(
            policy,
            &mut Backoff::new(policy, 7),
            &clock,
            &CancellationToken::new(),
            &health,
            || {
                times
                    .lock()
                    .unwrap()
                    .push(start.elapsed().as_millis() as u64);
                let next = outcomes
                    .lock()
                    .unwrap()
                    .next()
                    .unwrap_or(Attempt::Delivered);
                async move { next }
            },
        )
        .await;
        (verdict, times.into_inner().unwrap())
    }

    fn retry(after: Option<u64>) -> Attempt {
        Attempt::Retry {
            reason: "HTTP 503".into(),
            after: after.map(Duration::from_secs),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_on_the_virtual_clock() {
        let p = policy(r#"{"initial": "1s", "max": "4s", "max_attempts": 10}"#);
        let (verdict, times) =
            scripted(&p, vec![retry(None), retry(None), retry(None), retry(None)]).await;
        assert_eq!(verdict, Verdict::Delivered);
        assert_eq!(times.len(), 5);
        let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        for (gap, step) in gaps.iter().zip([1000, 2000, 4000, 4000]) {
            assert!(*gap >= step / 2 && *gap <= step, "{gaps:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_replaces_the_backoff_and_is_capped() {
        let p = policy(r#"{"initial": "100ms", "max": "200ms", "max_elapsed": "1h"}"#);
        let (verdict, times) = scripted(&p, vec![retry(Some(7)), retry(Some(3600))]).await;
        assert_eq!(verdict, Verdict::Delivered);
        assert_eq!(times, [0, 7000, 7000 + RETRY_AFTER_CAP.as_millis() as u64]);
    }

    #[tokio::test(start_paused = true)]
    async fn bounds_and_refusals_end_the_delivery() {
        let p = policy(r#"{"initial": "1s", "max": "1s", "max_attempts": 3}"#);
        let (verdict, times) = scripted(&p, vec![retry(None); 5]).await;
        assert_eq!(
            verdict,
            Verdict::GaveUp("HTTP 503 (gave up after 3 attempts)".into())
        );
        assert_eq!(times.len(), 3);

        // Backoffs of 0.5 s to 1 s within 2.5 s: at least 3 attempts, at most 6, none
        // starting after the bound.
        let p = policy(r#"{"initial": "1s", "max": "1s", "max_elapsed": "2500ms"}"#);
        let (verdict, times) = scripted(&p, vec![retry(None); 10]).await;
        let attempts = times.len();
        assert!(
            matches!(verdict, Verdict::GaveUp(ref r) if r.contains(&format!("{attempts} attempts"))),
            "{verdict:?}"
        );
        assert!((3..=6).contains(&attempts), "{times:?}");
        assert!(times.iter().all(|t| *t <= 2500), "{times:?}");
        // A Retry-After beyond the bound gives up at once.
        let (verdict, times) = scripted(&p, vec![retry(Some(60))]).await;
        assert!(matches!(verdict, Verdict::GaveUp(_)));
        assert_eq!(times, [0]);

        let (verdict, times) =
            scripted(&p, vec![retry(None), Attempt::Refused("HTTP 400".into())]).await;
        assert_eq!(verdict, Verdict::Refused("HTTP 400".into()));
        assert_eq!(times.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_the_wait() {
        let p = policy(r#"{"initial": "10s", "max": "10s"}"#);
        let shutdown = CancellationToken::new();
        let clock = Clock::virtual_at(0);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            stop.cancel();
        });
        let start = Instant::now();
        let verdict = deliver(
            &p,
            &mut Backoff::new(&p, 1),
            &clock,
            &shutdown,
            &Health::new(NodeId::new("f", "n")),
            || async { retry(None) },
        )
        .await;
        assert_eq!(verdict, Verdict::Shutdown("HTTP 503".into()));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }
}

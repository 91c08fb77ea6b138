//! The `api:` settings section: where the admin API listens and the bearer token it
//! requires. Validation is pure except for reading the token file (a secret file, as
//! `${file:...}` reads them).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The default address: loopback only, a port free of the usual suspects (1883/8883
/// MQTT, 8080 and 9090 taken by many dashboards and Prometheus itself).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9080";

/// `api:` in the settings file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Serve the admin API, `/metrics` and the status page (default true).
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// `address:port` to listen on (default `127.0.0.1:9080`). Any address other than
    /// loopback needs `token` or `token_file`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// A file whose first line is the bearer token (relative to the settings file);
    /// keep it readable by the service user only.
    pub token_file: Option<PathBuf>,
    /// The bearer token itself; write `${API_TOKEN}` to take it from the environment
    /// rather than writing it into the file.
    pub token: Option<String>,
}

fn enabled_by_default() -> bool {
    true
}

fn default_listen() -> String {
    DEFAULT_LISTEN.to_string()
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            listen: default_listen(),
            token_file: None,
            token: None,
        }
    }
}

/// One problem with `api:`: the key it is about and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiIssue {
    /// The key under `api:` (`listen`, `token`, `token_file`), or empty for the section.
    pub key: &'static str,
    /// The message.
    pub message: String,
}

impl ApiConfig {
    /// The address to bind.
    pub fn address(&self) -> Result<SocketAddr, String> {
        self.listen.parse::<SocketAddr>().map_err(|_| {
            format!(
                "`{}` is not an address:port; write e.g. `127.0.0.1:9080` or `[::1]:9080`",
                self.listen
            )
        })
    }

    /// Makes `token_file` relative to the settings file's directory `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(file) = &self.token_file
            && file.is_relative()
        {
            self.token_file = Some(base.join(file));
        }
    }

    /// Every problem: a bad address, both or an empty token, an unreadable token file,
    /// and no token on an address beyond loopback.
    pub fn validate(&self) -> Vec<ApiIssue> {
        let mut issues = Vec::new();
        let address = self.address();
        if let Err(message) = &address {
            issues.push(ApiIssue {
                key: "listen",
                message: message.clone(),
            });
        }
        let token = match self.token() {
            Ok(token) => token,
            Err(issue) => {
                issues.push(issue);
                return issues;
            }
        };
        if let Ok(address) = address
            && token.is_none()
            && !is_loopback(address.ip())
            && self.enabled
        {
            issues.push(ApiIssue {
                key: "listen",
                message: format!(
                    "the admin API on {address} is reachable beyond this machine without a token; set `token_file` (or `token: ${{API_TOKEN}}`) under `api:`, or listen on 127.0.0.1"
                ),
            });
        }
        issues
    }

    /// The bearer token, read from `token` or `token_file`; `None` when neither is set.
    pub fn token(&self) -> Result<Option<String>, ApiIssue> {
        match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => Err(ApiIssue {
                key: "token",
                message: "`token` and `token_file` both set the token; keep one".into(),
            }),
            (Some(token), None) => non_empty(token.trim(), "token").map(Some),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| ApiIssue {
                    key: "token_file",
                    message: format!(
                        "cannot read the token file {}: {e}; create it with the token on its first line",
                        path.display()
                    ),
                })?;
                non_empty(text.lines().next().unwrap_or("").trim(), "token_file").map(Some)
            }
            (None, None) => Ok(None),
        }
    }
}

fn non_empty(token: &str, key: &'static str) -> Result<String, ApiIssue> {
    if token.is_empty() {
        Err(ApiIssue {
            key,
            message: "the token is empty; give at least 16 random characters (e.g. `openssl rand -hex 32`)".into(),
        })
    } else {
        Ok(token.to_string())
    }
}

/// Whether `ip` reaches this machine only.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str) -> ApiConfig {
        ApiConfig {
            listen: listen.into(),
            ..ApiConfig::default()
        }
    }

    #[test]
    fn loopback_needs_no_token_and_beyond_it_one_is_required() {
        assert!(config("127.0.0.1:9080").validate().is_empty());
        assert!(config("[::1]:0").validate().is_empty());
        let issues = config("0.0.0.0:9080").validate();
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].key, "listen");
        assert!(issues[0].message.contains("without a token"));
        let with_token = ApiConfig {
            token: Some("secret-secret".into()),
            ..config("0.0.0.0:9080")
        };
        assert!(with_token.validate().is_empty());
    }

    #[test]
    fn bad_addresses_and_tokens_are_reported() {
        assert_eq!(config("localhost").validate()[0].key, "listen");
        let both = ApiConfig {
            token: Some("a".into()),
            token_file: Some("b".into()),
            ..ApiConfig::default()
        };
        assert_eq!(both.validate()[0].key, "token");
        let empty = ApiConfig {
            token: Some(" ".into()),
            ..ApiConfig::default()
        };
        assert!(empty.validate()[0].message.contains("empty"));
        let missing = ApiConfig {
            token_file: Some("/nonexistent/token".into()),
            ..ApiConfig::default()
        };
        assert_eq!(missing.validate()[0].key, "token_file");
    }

    #[test]
    fn token_file_first_line_is_the_token() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "abc123\nignored\n").unwrap();
        let mut config = ApiConfig {
            token_file: Some("token".into()),
            ..ApiConfig::default()
        };
        config.resolve_paths(dir.path());
        assert_eq!(config.token().unwrap().as_deref(), Some("abc123"));
    }
}

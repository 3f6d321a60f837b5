//! A remote registry as a client sees it: anonymous, Basic or Bearer-token authentication (the Docker token
//! flow: a 401 with `WWW-Authenticate: Bearer realm=...`, a token from the realm, cached per scope until it
//! expires), TLS verified against the system's roots plus an optional CA file.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};

use crate::error::RegistryError;

/// Every manifest type berth stores, for the remote's content negotiation.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.5";

/// How long a token is used when the token server does not say (the token specification's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// The longest a token is used, whatever the token server says.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The largest token answer read.
const TOKEN_ANSWER_LIMIT: usize = 64 * 1024;
/// Tokens cached at most (one per repository scope); the oldest half goes when full.
const TOKENS_KEPT: usize = 4096;

/// What a remote said, as the registry answers it.
#[derive(Debug, Clone)]
pub enum RemoteError {
    /// 404.
    NotFound,
    /// The remote (or its network) cannot answer: connection failures, timeouts, 5xx.
    Unavailable(String, Option<String>),
    /// 429, with `Retry-After`.
    TooManyRequests(Option<String>),
    /// The remote refused access (401 or 403 with the credentials it asked for): wrong credentials, or a
    /// repository that is private or absent (Docker Hub answers 401 for both).
    Denied,
    /// The remote gave an answer berth cannot use.
    Refused(String),
    /// A blob or manifest that does not match its digest, or a size that does not match.
    Corrupt(String),
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteError::NotFound => write!(f, "not found on the remote"),
            RemoteError::Unavailable(m, _) => write!(f, "remote unavailable: {m}"),
            RemoteError::TooManyRequests(_) => {
                write!(f, "the remote answers 429 Too Many Requests")
            }
            RemoteError::Denied => write!(f, "the remote refused access (401/403)"),
            RemoteError::Refused(m) => write!(f, "remote refused: {m}"),
            RemoteError::Corrupt(m) => write!(f, "remote sent corrupt content: {m}"),
        }
    }
}

impl RemoteError {
    /// Whether a cached answer may stand in for the remote's (it could not be asked, rather than said no).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            RemoteError::Unavailable(..) | RemoteError::TooManyRequests(_)
        )
    }

    /// The registry's answer for this error, for a manifest (`blob`: false) or a blob.
    pub fn to_registry(&self, blob: bool) -> RegistryError {
        match self {
            RemoteError::NotFound if blob => RegistryError::BlobUnknown,
            RemoteError::NotFound => RegistryError::ManifestUnknown,
            RemoteError::TooManyRequests(after) => RegistryError::TooManyRequests {
                message: "the mirror's remote registry limits requests; try again later".into(),
                retry_after: after.clone(),
            },
            RemoteError::Unavailable(m, after) => RegistryError::Unavailable {
                message: format!("the mirror's remote registry is unavailable: {m}"),
                retry_after: after.clone(),
            },
            RemoteError::Denied => RegistryError::Denied(
                "the mirror's remote registry refused access: the repository is private or absent there, or \
                 the mirror's credentials are wrong"
                    .into(),
            ),
            RemoteError::Refused(m) => RegistryError::Unavailable {
                message: format!("the mirror's remote registry refused the request: {m}"),
                retry_after: None,
            },
            RemoteError::Corrupt(m) => RegistryError::Unavailable {
                message: format!("the mirror's remote registry sent corrupt content: {m}"),
                retry_after: None,
            },
        }
    }
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic`.
    Basic,
    /// `Bearer realm=...,service=...,scope=...`.
    Bearer {
        /// The token server.
        realm: String,
        /// `service`, passed back to it.
        service: Option<String>,
        /// `scope`, when the remote names one.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` value: `Basic realm="x"` or `Bearer realm="..",service="..",scope=".."`.
/// `None` for other schemes or a Bearer challenge without a usable realm.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest)?;
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    let realm = get("realm")?;
    if !(realm.starts_with("https://") || realm.starts_with("http://")) || realm.len() > 2048 {
        return None;
    }
    Some(Challenge::Bearer {
        realm,
        service: get("service"),
        scope: get("scope"),
    })
}

/// `k=v` or `k="v"` pairs separated by commas; quoted values may hold commas and `\`-escapes.
fn parse_params(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            if c == ',' || c.is_whitespace() || key.len() > 64 {
                return None;
            }
            key.push(c);
            chars.next();
        }
        if chars.next() != Some('=') || key.is_empty() {
            return None;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => val.push(chars.next()?),
                    c => val.push(c),
                }
                if val.len() > 4096 {
                    return None;
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                val.push(c);
                chars.next();
                if val.len() > 4096 {
                    return None;
                }
            }
        }
        out.push((key, val));
        if out.len() > 32 {
            return None;
        }
    }
}

/// A remote registry.
pub struct Remote {
    base: String,
    client: reqwest::Client,
    credentials: Option<(String, String)>,
    /// The scheme the remote asked for, once it has.
    challenge: Mutex<Option<Challenge>>,
    /// Bearer tokens by scope, with when they stop being used.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

/// The TLS settings for remotes: the system's roots plus `cafile`'s certificates.
pub fn tls_config(cafile: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    let mut config = crate::tls::client_config(cafile, true)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A `Retry-After` header's value, when it is a plain one.
fn retry_after(headers: &HeaderMap) -> Option<String> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() < 64)
        .map(str::to_string)
}

impl Remote {
    /// A client of the registry at `base` (no trailing slash).
    pub fn new(
        base: &str,
        credentials: Option<(String, String)>,
        tls: rustls::ClientConfig,
    ) -> Result<Remote, String> {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!(
                "berth-registry/",
                env!("CARGO_PKG_VERSION"),
                " (mirror)"
            ))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Remote {
            base: base.to_string(),
            client,
            credentials,
            challenge: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn basic(&self) -> Option<String> {
        self.credentials.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        })
    }

    /// The `Authorization` value to send for `scope` without asking anyone, when one is known.
    fn known_authorization(&self, scope: &str) -> Option<String> {
        let challenge = self
            .challenge
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match challenge? {
            Challenge::Basic => self.basic(),
            Challenge::Bearer { .. } => {
                let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
                let (token, until) = tokens.get(scope)?;
                (Instant::now() < *until).then(|| format!("Bearer {token}"))
            }
        }
    }

    /// Gets a token for `scope` from the challenge's realm.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        also: Option<&str>,
    ) -> Result<String, RemoteError> {
        let mut url = reqwest::Url::parse(realm)
            .map_err(|e| RemoteError::Refused(format!("token realm {realm:?}: {e}")))?;
        // Credentials meant for an https remote never travel in clear text to a realm it names.
        let credentials_allowed = url.scheme() == "https" || !self.base.starts_with("https://");
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut req = self.client.get(url).timeout(Duration::from_secs(30));
        if let Some(b) = self.basic().filter(|_| credentials_allowed) {
            req = req.header(AUTHORIZATION, b);
        }
        let resp = req.send().await.map_err(|e| {
            RemoteError::Unavailable(format!("token server: {}", error_chain(&e)), None)
        })?;
        let status = resp.status();
        let after = retry_after(resp.headers());
        let body = read_limited(resp, TOKEN_ANSWER_LIMIT)
            .await
            .map_err(|e| RemoteError::Unavailable(format!("token server: {e}"), None))?;
        match status {
            StatusCode::OK => {}
            StatusCode::TOO_MANY_REQUESTS => return Err(RemoteError::TooManyRequests(after)),
            s if s.is_server_error() => {
                return Err(RemoteError::Unavailable(
                    format!("token server answered {s}"),
                    after,
                ))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return Err(RemoteError::Denied),
            s => return Err(RemoteError::Refused(format!("token server answered {s}"))),
        }
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| RemoteError::Refused("the token server's answer is not JSON".into()))?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty() && t.len() < 32 * 1024 && HeaderValue::from_str(t).is_ok())
            .ok_or_else(|| RemoteError::Refused("the token server gave no token".into()))?
            .to_string();
        let lifetime = v
            .get("expires_in")
            .and_then(|e| e.as_u64())
            .map(|secs| Duration::from_secs(secs.min(MAX_TOKEN_LIFETIME.as_secs())))
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        // Renewed a little before it expires, so that no request goes out with a token about to lapse.
        let until = Instant::now() + lifetime - (lifetime / 10).min(Duration::from_secs(30));
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if tokens.len() >= TOKENS_KEPT {
            let now = Instant::now();
            tokens.retain(|_, (_, u)| *u > now);
            if tokens.len() >= TOKENS_KEPT {
                tokens.clear();
            }
        }
        tokens.insert(scope.to_string(), (token.clone(), until));
        if let Some(ours) = also {
            // Also under the scope later requests look up, when the remote named another one.
            tokens.insert(ours.to_string(), (token.clone(), until));
        }
        Ok(token)
    }

    /// Sends `method path` (below the base URL) for repository `repo` (the remote's name), authenticating as
    /// the remote asks: the first 401 tells the scheme, later requests send what it asked for at once.
    pub async fn send(
        &self,
        method: Method,
        repo: &str,
        path: &str,
        accept: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, RemoteError> {
        let scope = format!("repository:{repo}:pull");
        let url = format!("{}{path}", self.base);
        let build = |auth: Option<String>| {
            let mut r = self.client.request(method.clone(), &url);
            if let Some(a) = accept {
                r = r.header(reqwest::header::ACCEPT, a);
            }
            if let Some(t) = timeout {
                r = r.timeout(t);
            }
            if let Some(a) = auth {
                r = r.header(AUTHORIZATION, a);
            }
            r
        };
        let unavailable = |e: reqwest::Error| RemoteError::Unavailable(error_chain(&e), None);
        let mut resp = build(self.known_authorization(&scope))
            .send()
            .await
            .map_err(unavailable)?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let challenge = resp
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(parse_challenge)
                .max_by_key(|c| matches!(c, Challenge::Bearer { .. }));
            let auth = match &challenge {
                Some(Challenge::Basic) => self.basic().ok_or(RemoteError::Denied)?,
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope: asked,
                }) => {
                    // The scope the remote names is the one it checks; ours otherwise.
                    let named = asked.clone().unwrap_or_else(|| scope.clone());
                    let also = (named != scope).then_some(scope.as_str());
                    let token = self
                        .fetch_token(realm, service.as_deref(), &named, also)
                        .await?;
                    format!("Bearer {token}")
                }
                None => {
                    return Err(RemoteError::Refused(
                        "the remote answers 401 without a challenge berth can answer".into(),
                    ))
                }
            };
            *self.challenge.lock().unwrap_or_else(|p| p.into_inner()) = challenge;
            resp = build(Some(auth)).send().await.map_err(unavailable)?;
        }
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let after = retry_after(resp.headers());
        Err(match status {
            StatusCode::NOT_FOUND => RemoteError::NotFound,
            StatusCode::TOO_MANY_REQUESTS => RemoteError::TooManyRequests(after),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RemoteError::Denied,
            s if s.is_server_error() => {
                RemoteError::Unavailable(format!("the remote answers {s}"), after)
            }
            s => RemoteError::Refused(format!("the remote answers {s}")),
        })
    }
}

/// Reads a response body whole, refusing more than `limit` bytes.
pub async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, String> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(format!("answer larger than {limit} bytes"));
    }
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| error_chain(&e))? {
        if out.len() + chunk.len() > limit {
            return Err(format!("answer larger than {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// An error with its causes, on one line (reqwest's own message says only "error sending request").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(parse_challenge("Basic realm=\"x\""), Some(Challenge::Basic));
        assert_eq!(
            parse_challenge(
                "Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\",scope=\"repository:library/alpine:pull\""
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge("bearer realm=http://a/t, service=s"),
            Some(Challenge::Bearer {
                realm: "http://a/t".into(),
                service: Some("s".into()),
                scope: None,
            })
        );
        assert_eq!(
            parse_challenge("Bearer realm=\"https://a/t\",scope=\"repository:a:pull,push\""),
            Some(Challenge::Bearer {
                realm: "https://a/t".into(),
                service: None,
                scope: Some("repository:a:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge("Bearer service=\"s\""), None);
        assert_eq!(parse_challenge("Bearer realm=\"file:///etc\""), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge("Bearer realm=\"unterminated"), None);
    }
}

//! Configuration: one `#[serde(default)]` struct, loaded from a TOML file, then overridden by `BERTH_*`
//! environment variables (read through an [`EnvSource`] so tests never touch the process environment), then
//! checked by [`Config::validate`], which reports every problem at once with its key.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The user-agent rule nginx deployments used in front of registry:2: Docker clients 1.3 to 1.5 (except
/// 1.5.x-dev builds) and old Go clients are refused with 404, because they cannot speak the v2 protocol.
pub const DEFAULT_USER_AGENT_RULE: &str = r"^(docker\/1\.(3|4|5(?!\.[0-9]-dev))|Go ).*$";

/// Where configuration values come from besides the file: the process environment or, in tests, a map.
pub trait EnvSource {
    /// The value of the variable `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvSource for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Everything `berth-proxy serve` needs to know. Every field has a default; see `docs/proxy.md`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (`BERTH_LISTEN`).
    pub listen: String,
    /// Upstream registries, `http://host:port`, used round-robin with failover (`BERTH_UPSTREAM`, comma-separated).
    pub upstreams: Vec<String>,
    /// The htpasswd file (`BERTH_HTPASSWD`).
    pub htpasswd: PathBuf,
    /// Directory holding `domain.crt`, `domain.key` and the dev CA (`BERTH_CERTS_DIR`).
    pub certs_dir: PathBuf,
    /// Names and IP addresses put in a generated server certificate (`BERTH_TLS_HOSTS`, comma-separated).
    /// Empty means: this machine's hostname, `localhost`, `127.0.0.1`.
    pub tls_hosts: Vec<String>,
    /// Realm sent in `WWW-Authenticate` (`BERTH_REALM`).
    pub realm: String,
    /// User-agent rules (fancy-regex, nginx `~` syntax; a leading `~*` means case-insensitive). A matching
    /// client gets 404.
    pub user_agent_deny: Vec<String>,
    /// Forward the client's `Authorization` header upstream instead of replacing it by `X-Forwarded-User`.
    pub pass_authorization: bool,
    /// Front proxies (CIDRs or addresses) whose `X-Forwarded-*` / `X-Real-IP` headers are kept
    /// (`BERTH_TRUSTED_PROXIES`, comma-separated).
    pub trusted_proxies: Vec<String>,
    /// Largest request body accepted, in bytes; 0 means unlimited (`BERTH_MAX_BODY_SIZE`).
    pub max_body_size: u64,
    /// How long a verified credential is remembered, in seconds (`BERTH_CREDENTIAL_CACHE_TTL`).
    pub credential_cache_ttl_secs: u64,
    /// Most verified credentials remembered at once.
    pub credential_cache_size: usize,
    /// How long a rejected `Authorization` header is remembered and refused again without a hash, in seconds.
    pub negative_cache_ttl_secs: u64,
    /// Longest wait for a password-check slot, in milliseconds; past it the request gets 503 with
    /// `Retry-After`.
    pub auth_verify_wait_ms: u64,
    /// Password checks in flight at once from one client address (IPv6: one /64); more get 429 with
    /// `Retry-After`. 0 means: half the verification slots, at least 2.
    pub auth_client_concurrency: usize,
    /// Failed password checks allowed from one client address per `auth_failure_window_secs`; past them its
    /// checks get 429 with `Retry-After` until the window ends.
    pub auth_client_failures: u32,
    /// The window those failures are counted in, in seconds.
    pub auth_failure_window_secs: u64,
    /// Failed password checks of one user name from one client address before that pair backs off
    /// (further checks get 429 with `Retry-After`, without a hash, until the back-off ends).
    pub auth_user_failures: u32,
    /// The first back-off of a (user, address) pair, in seconds; each further failure doubles it.
    pub auth_user_backoff_secs: u64,
    /// The longest back-off of a (user, address) pair, in seconds.
    pub auth_user_backoff_max_secs: u64,
    /// The access file: who may pull, push and delete which repositories (`BERTH_ACL`; see `docs/access.md`).
    /// Unset: every authenticated user may do everything.
    pub acl: Option<PathBuf>,
    /// A file the audit log (pushes, deletes, refusals) is appended to as JSON lines (`BERTH_AUDIT_LOG`);
    /// it always goes to the log output too, target `berth_proxy::audit`.
    pub audit_log: Option<PathBuf>,
    /// Where Prometheus metrics are served, plain HTTP, `host:port` (`BERTH_METRICS_LISTEN`, for example
    /// `127.0.0.1:9043`); unset: no metrics listener. Keep it off the public network.
    pub metrics_listen: Option<String>,
    /// How long a bearer token from `/_berth/token` is valid, in seconds (used when the access rules let
    /// anonymous clients pull).
    pub token_ttl_secs: u64,
    /// Serve the web interface under `/ui/` (`BERTH_UI`).
    pub ui: bool,
    /// How long a web interface login lasts, in seconds (`BERTH_UI_SESSION_TTL`).
    pub ui_session_ttl_secs: u64,
    /// How often the htpasswd and access files are checked for changes, in milliseconds.
    pub htpasswd_poll_ms: u64,
    /// Upstream connect timeout, in seconds.
    pub connect_timeout_secs: u64,
    /// Idle read timeout on bodies and upstream answers, in seconds (`BERTH_READ_TIMEOUT`).
    pub read_timeout_secs: u64,
    /// TLS handshake timeout, in seconds.
    pub handshake_timeout_secs: u64,
    /// Time a client has to send its request headers, in seconds.
    pub header_read_timeout_secs: u64,
    /// Largest request head (HTTP/1.1 buffer, HTTP/2 header list), in bytes.
    pub max_header_bytes: usize,
    /// Most header fields in a request, HTTP/1.1 and HTTP/2 alike.
    pub max_headers: usize,
    /// On SIGTERM/SIGINT, how long running transfers may go on before the process exits, in seconds.
    pub shutdown_grace_secs: u64,
    /// Most client connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// A client connection with no request in flight for this long is closed (HTTP/2: GOAWAY), in seconds.
    pub idle_timeout_secs: u64,
    /// A write to a client that stays blocked this long (the client stopped reading) closes the connection,
    /// in seconds.
    pub write_timeout_secs: u64,
    /// When the proxy answers a request itself (401, 404, 413, ...) before its body was read, HTTP/1.1: up to
    /// this many bytes of the rest of the body are read and thrown away so the connection can serve the
    /// client's retry; a body declared larger gets `Connection: close` instead.
    pub discard_body_max_bytes: u64,
    /// Most time spent throwing away an unread request body, and lingering on a closed connection (reading
    /// what the client still sends after the proxy's write side is shut) so that no reset destroys the last
    /// answer, in seconds (nginx `lingering_time`).
    pub lingering_time_secs: u64,
    /// Longest pause in what the client sends while a body is thrown away or the connection lingers, in
    /// seconds (nginx `lingering_timeout`).
    pub lingering_timeout_secs: u64,
    /// How often the served certificate is checked for renewal, in seconds (also once at start).
    pub cert_renew_check_secs: u64,
    /// A server certificate issued by the dev CA in `certs_dir` is re-issued when fewer than this many days
    /// are left. Certificates signed by another CA are never touched.
    pub cert_renew_before_days: u64,
    /// Answer `/_ping` and `/v1/_ping` locally with 200 instead of forwarding them.
    pub ping_local: bool,
    /// Log filter, tracing-subscriber syntax (`BERTH_LOG`).
    pub log: String,
    /// How clients reach this proxy, `HOST:PORT`, when it differs from the listen address (a container
    /// published on another port). Only used in the trust instructions logged at first start
    /// (`BERTH_PUBLIC_ADDR`).
    pub public_addr: Option<String>,
    /// Where `certs_dir` is as seen by the user (the host folder mounted into a container). Only used in the
    /// trust instructions logged at first start (`BERTH_PUBLIC_CERTS_DIR`).
    pub public_certs_dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:5043".into(),
            upstreams: vec!["http://127.0.0.1:5000".into()],
            htpasswd: PathBuf::from("auth/htpasswd"),
            certs_dir: PathBuf::from("certs"),
            tls_hosts: Vec::new(),
            realm: "registry.localhost".into(),
            user_agent_deny: vec![DEFAULT_USER_AGENT_RULE.into()],
            pass_authorization: false,
            trusted_proxies: Vec::new(),
            max_body_size: 0,
            credential_cache_ttl_secs: 300,
            credential_cache_size: 10_000,
            negative_cache_ttl_secs: 10,
            auth_verify_wait_ms: 2000,
            auth_client_concurrency: 0,
            auth_client_failures: 30,
            auth_failure_window_secs: 60,
            auth_user_failures: 5,
            auth_user_backoff_secs: 2,
            auth_user_backoff_max_secs: 900,
            acl: None,
            audit_log: None,
            metrics_listen: None,
            token_ttl_secs: 300,
            ui: true,
            ui_session_ttl_secs: 8 * 3600,
            htpasswd_poll_ms: 1000,
            connect_timeout_secs: 5,
            read_timeout_secs: 900,
            handshake_timeout_secs: 10,
            header_read_timeout_secs: 30,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            shutdown_grace_secs: 30,
            max_connections: 4096,
            idle_timeout_secs: 120,
            write_timeout_secs: 300,
            discard_body_max_bytes: 8 * 1024 * 1024,
            lingering_time_secs: 30,
            lingering_timeout_secs: 5,
            cert_renew_check_secs: 12 * 3600,
            cert_renew_before_days: 30,
            ping_local: false,
            log: "info".into(),
            public_addr: None,
            public_certs_dir: None,
        }
    }
}

/// One thing wrong with a configuration, with the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The TOML key (and the environment variable, when there is one).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found while loading a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

fn problem(key: &str, message: impl Into<String>) -> ConfigProblem {
    ConfigProblem {
        key: key.into(),
        message: message.into(),
    }
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// A parsed upstream base address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAddr {
    /// `host:port` as given.
    pub authority: http::uri::Authority,
}

/// An upstream URL for messages, with anything that looks like `user:password@` replaced by `***@`.
fn redacted(s: &str) -> String {
    let (scheme, rest) = match s.find("://") {
        Some(i) => (&s[..i + 3], &s[i + 3..]),
        None => ("", s),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}***{}", &rest[at..]),
        None => s.to_string(),
    }
}

/// Parse `http://host:port` (a path, query, `user:password@` or another scheme is refused). Messages never
/// repeat credentials.
pub fn parse_upstream(s: &str) -> Result<UpstreamAddr, String> {
    let shown = redacted(s);
    let uri: http::Uri = s
        .parse()
        .map_err(|e| format!("{shown:?} is not a URL: {e}"))?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) || shown != s {
        return Err(format!(
            "{shown:?}: credentials (user:password@) are not supported in upstream URLs; the proxy sends \
             X-Forwarded-User instead"
        ));
    }
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!(
                "{s:?}: scheme {other:?} is not supported, use http://"
            ))
        }
        None => return Err(format!("{s:?}: missing http:// scheme")),
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{s:?}: missing host"))?;
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("{s:?}: a path is not supported"));
    }
    if uri.query().is_some() {
        return Err(format!("{s:?}: a query is not supported"));
    }
    Ok(UpstreamAddr { authority })
}

/// Parse one trusted-proxy entry: a CIDR (`10.0.0.0/8`) or a single address.
pub fn parse_trusted(s: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(net);
    }
    s.parse::<IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("{s:?} is neither a CIDR nor an IP address"))
}

impl Config {
    /// Load `file` (if given), apply environment overrides from `env`, and validate.
    pub fn load(file: Option<&Path>, env: &dyn EnvSource) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(vec![problem(
                        "config",
                        format!("cannot read {}: {e}", path.display()),
                    )])
                })?;
                toml::from_str::<Config>(&text).map_err(|e| {
                    ConfigError(vec![problem(
                        "config",
                        format!("{}: {}", path.display(), e.to_string().trim()),
                    )])
                })?
            }
            None => Config::default(),
        };
        let mut problems = config.apply_env(env);
        problems.extend(config.validate());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(problems))
        }
    }

    /// Apply `BERTH_*` overrides; returns problems with values that could not be parsed.
    pub fn apply_env(&mut self, env: &dyn EnvSource) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if let Some(v) = env.var("BERTH_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = env.var("BERTH_UPSTREAM") {
            self.upstreams = split_list(&v);
        }
        if let Some(v) = env.var("BERTH_HTPASSWD") {
            self.htpasswd = PathBuf::from(v);
        }
        if let Some(v) = env.var("BERTH_ACL") {
            self.acl = Some(PathBuf::from(v)).filter(|v| !v.as_os_str().is_empty());
        }
        if let Some(v) = env.var("BERTH_AUDIT_LOG") {
            self.audit_log = Some(PathBuf::from(v)).filter(|v| !v.as_os_str().is_empty());
        }
        if let Some(v) = env.var("BERTH_METRICS_LISTEN") {
            self.metrics_listen = Some(v).filter(|v| !v.trim().is_empty());
        }
        if let Some(v) = env.var("BERTH_CERTS_DIR") {
            self.certs_dir = PathBuf::from(v);
        }
        if let Some(v) = env.var("BERTH_TLS_HOSTS") {
            self.tls_hosts = split_list(&v);
        }
        if let Some(v) = env.var("BERTH_REALM") {
            self.realm = v;
        }
        if let Some(v) = env.var("BERTH_TRUSTED_PROXIES") {
            self.trusted_proxies = split_list(&v);
        }
        if let Some(v) = env.var("BERTH_LOG") {
            self.log = v;
        }
        if let Some(v) = env.var("BERTH_PUBLIC_ADDR") {
            self.public_addr = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = env.var("BERTH_PUBLIC_CERTS_DIR") {
            self.public_certs_dir = Some(PathBuf::from(v)).filter(|v| !v.as_os_str().is_empty());
        }
        let mut number = |name: &str, key: &str, target: &mut u64| {
            if let Some(v) = env.var(name) {
                match v.trim().parse::<u64>() {
                    Ok(n) => *target = n,
                    Err(_) => problems.push(problem(
                        &format!("{key} ({name})"),
                        format!("{v:?} is not a non-negative integer"),
                    )),
                }
            }
        };
        number(
            "BERTH_MAX_BODY_SIZE",
            "max_body_size",
            &mut self.max_body_size,
        );
        number(
            "BERTH_READ_TIMEOUT",
            "read_timeout_secs",
            &mut self.read_timeout_secs,
        );
        number(
            "BERTH_CREDENTIAL_CACHE_TTL",
            "credential_cache_ttl_secs",
            &mut self.credential_cache_ttl_secs,
        );
        number(
            "BERTH_UI_SESSION_TTL",
            "ui_session_ttl_secs",
            &mut self.ui_session_ttl_secs,
        );
        if let Some(v) = env.var("BERTH_UI") {
            match v.trim() {
                "1" | "true" | "yes" => self.ui = true,
                "0" | "false" | "no" => self.ui = false,
                _ => problems.push(problem(
                    "ui (BERTH_UI)",
                    format!("{v:?} is not true or false"),
                )),
            }
        }
        if let Some(v) = env.var("BERTH_PASS_AUTHORIZATION") {
            match v.trim() {
                "1" | "true" | "yes" => self.pass_authorization = true,
                "0" | "false" | "no" | "" => self.pass_authorization = false,
                _ => problems.push(problem(
                    "pass_authorization (BERTH_PASS_AUTHORIZATION)",
                    format!("{v:?} is not a boolean"),
                )),
            }
        }
        problems
    }

    /// Every problem with this configuration, each with its key. Empty means valid.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut p = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            p.push(problem(
                "listen (BERTH_LISTEN)",
                format!("{:?} is not an address:port", self.listen),
            ));
        }
        if self.upstreams.is_empty() {
            p.push(problem(
                "upstreams (BERTH_UPSTREAM)",
                "at least one upstream is needed",
            ));
        }
        for u in &self.upstreams {
            if let Err(e) = parse_upstream(u) {
                p.push(problem("upstreams (BERTH_UPSTREAM)", e));
            }
        }
        if self.htpasswd.as_os_str().is_empty() {
            p.push(problem("htpasswd (BERTH_HTPASSWD)", "must not be empty"));
        }
        if self.certs_dir.as_os_str().is_empty() {
            p.push(problem("certs_dir (BERTH_CERTS_DIR)", "must not be empty"));
        }
        for h in &self.tls_hosts {
            if h.parse::<IpAddr>().is_err() && !valid_dns_name(h) {
                p.push(problem(
                    "tls_hosts (BERTH_TLS_HOSTS)",
                    format!("{h:?} is neither a DNS name nor an IP address"),
                ));
            }
        }
        if self.realm.is_empty()
            || self.realm.contains('"')
            || self.realm.chars().any(char::is_control)
        {
            p.push(problem(
                "realm (BERTH_REALM)",
                "must be non-empty, without quotes or control characters",
            ));
        }
        for rule in &self.user_agent_deny {
            if let Err(e) = crate::filter::UserAgentRule::parse(rule) {
                p.push(problem("user_agent_deny", e));
            }
        }
        for t in &self.trusted_proxies {
            if let Err(e) = parse_trusted(t) {
                p.push(problem("trusted_proxies (BERTH_TRUSTED_PROXIES)", e));
            }
        }
        let positive: [(&str, u64); 19] = [
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("auth_verify_wait_ms", self.auth_verify_wait_ms),
            ("auth_failure_window_secs", self.auth_failure_window_secs),
            ("auth_client_failures", u64::from(self.auth_client_failures)),
            ("lingering_time_secs", self.lingering_time_secs),
            ("lingering_timeout_secs", self.lingering_timeout_secs),
            ("write_timeout_secs", self.write_timeout_secs),
            ("cert_renew_check_secs", self.cert_renew_check_secs),
            (
                "credential_cache_ttl_secs (BERTH_CREDENTIAL_CACHE_TTL)",
                self.credential_cache_ttl_secs,
            ),
            ("htpasswd_poll_ms", self.htpasswd_poll_ms),
            ("auth_user_failures", u64::from(self.auth_user_failures)),
            ("auth_user_backoff_secs", self.auth_user_backoff_secs),
            (
                "auth_user_backoff_max_secs",
                self.auth_user_backoff_max_secs,
            ),
            ("token_ttl_secs", self.token_ttl_secs),
            (
                "ui_session_ttl_secs (BERTH_UI_SESSION_TTL)",
                self.ui_session_ttl_secs,
            ),
            ("connect_timeout_secs", self.connect_timeout_secs),
            (
                "read_timeout_secs (BERTH_READ_TIMEOUT)",
                self.read_timeout_secs,
            ),
            ("handshake_timeout_secs", self.handshake_timeout_secs),
            ("header_read_timeout_secs", self.header_read_timeout_secs),
        ];
        for (key, v) in positive {
            if v == 0 {
                p.push(problem(key, "must be greater than 0"));
            }
        }
        if self.auth_user_backoff_max_secs < self.auth_user_backoff_secs {
            p.push(problem(
                "auth_user_backoff_max_secs",
                "must be at least auth_user_backoff_secs",
            ));
        }
        if self.acl.as_ref().is_some_and(|a| a.as_os_str().is_empty()) {
            p.push(problem("acl (BERTH_ACL)", "must not be empty"));
        }
        if let Some(m) = &self.metrics_listen {
            if m.parse::<SocketAddr>().is_err() {
                p.push(problem(
                    "metrics_listen (BERTH_METRICS_LISTEN)",
                    format!("{m:?} is not an address like 127.0.0.1:9043"),
                ));
            }
        }
        if self.max_connections == 0 {
            p.push(problem("max_connections", "must be greater than 0"));
        }
        if self.credential_cache_size == 0 {
            p.push(problem("credential_cache_size", "must be greater than 0"));
        }
        if self.max_headers < 16 {
            p.push(problem("max_headers", "must be at least 16"));
        }
        if self.max_header_bytes < 8192 {
            p.push(problem("max_header_bytes", "must be at least 8192"));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log).is_err() {
            p.push(problem(
                "log (BERTH_LOG)",
                format!("{:?} is not a log filter", self.log),
            ));
        }
        p
    }

    /// The names and addresses for a generated server certificate: `tls_hosts`, or this machine's hostname,
    /// `localhost` and `127.0.0.1`.
    pub fn effective_tls_hosts(&self) -> Vec<String> {
        if !self.tls_hosts.is_empty() {
            return self.tls_hosts.clone();
        }
        let mut hosts = Vec::new();
        if let Some(h) = machine_hostname() {
            hosts.push(h);
        }
        for h in ["localhost", "127.0.0.1"] {
            if !hosts.iter().any(|x| x == h) {
                hosts.push(h.into());
            }
        }
        hosts
    }

    /// The parsed listen address (call after [`Config::validate`]).
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen
            .parse()
            .map_err(|_| ConfigError(vec![problem("listen", "invalid address")]))
    }
}

/// This machine's hostname, if it can be read.
pub fn machine_hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()?;
    let h = h.trim().to_string();
    (!h.is_empty() && valid_dns_name(&h)).then_some(h)
}

/// A DNS name (optionally a `*.` wildcard) made of letters, digits, `-` and `.`.
pub fn valid_dns_name(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, &env(&[])).unwrap();
        assert_eq!(c.listen, "0.0.0.0:5043");
        assert_eq!(c.upstreams, vec!["http://127.0.0.1:5000"]);
        assert_eq!(c.htpasswd, PathBuf::from("auth/htpasswd"));
        assert_eq!(c.certs_dir, PathBuf::from("certs"));
        assert_eq!(c.realm, "registry.localhost");
    }

    #[test]
    fn env_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("proxy.toml");
        std::fs::write(&f, "listen = \"127.0.0.1:1\"\nrealm = \"file\"\n").unwrap();
        let c = Config::load(
            Some(&f),
            &env(&[
                ("BERTH_REALM", "env"),
                ("BERTH_UPSTREAM", "http://a:1, http://b:2"),
                ("BERTH_TLS_HOSTS", "reg.example,10.0.0.1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:1");
        assert_eq!(c.realm, "env");
        assert_eq!(c.upstreams, vec!["http://a:1", "http://b:2"]);
        assert_eq!(c.tls_hosts, vec!["reg.example", "10.0.0.1"]);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let err = Config::load(
            None,
            &env(&[
                ("BERTH_LISTEN", "nope"),
                ("BERTH_UPSTREAM", "https://x:1,ftp://y"),
                ("BERTH_MAX_BODY_SIZE", "-3"),
                ("BERTH_TLS_HOSTS", "bad host"),
                ("BERTH_TRUSTED_PROXIES", "10.0.0.0/33"),
            ]),
        )
        .unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"listen (BERTH_LISTEN)"), "{keys:?}");
        assert_eq!(
            keys.iter().filter(|k| k.starts_with("upstreams")).count(),
            2
        );
        assert!(keys.contains(&"max_body_size (BERTH_MAX_BODY_SIZE)"));
        assert!(keys.contains(&"tls_hosts (BERTH_TLS_HOSTS)"));
        assert!(keys.contains(&"trusted_proxies (BERTH_TRUSTED_PROXIES)"));
    }

    #[test]
    fn unknown_keys_and_bad_regex_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("proxy.toml");
        std::fs::write(&f, "listn = \"x\"\n").unwrap();
        assert!(Config::load(Some(&f), &env(&[])).is_err());
        let c = Config {
            user_agent_deny: vec!["(".into()],
            ..Config::default()
        };
        assert_eq!(c.validate()[0].key, "user_agent_deny");
    }

    #[test]
    fn upstream_parsing() {
        assert!(parse_upstream("http://127.0.0.1:5000").is_ok());
        assert!(parse_upstream("http://registry:5000/").is_ok());
        assert!(parse_upstream("http://registry:5000/v2").is_err());
        assert!(parse_upstream("registry:5000").is_err());
    }

    #[test]
    fn upstream_credentials_are_refused_and_never_repeated() {
        for url in [
            "http://admin:hunter2@registry:5000",
            "http://admin@registry:5000",
            "http://admin:hunter2@registry:5000/v2",
            "ftp://admin:hunter2@registry",
        ] {
            let err = parse_upstream(url).unwrap_err();
            assert!(!err.contains("hunter2") && !err.contains("admin"), "{err}");
            assert!(err.contains("***@registry"), "{err}");
        }
        let err = Config::load(
            None,
            &env(&[("BERTH_UPSTREAM", "http://u:hunter2@127.0.0.1:5000")]),
        )
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn default_tls_hosts_include_localhost() {
        let hosts = Config::default().effective_tls_hosts();
        assert!(hosts.contains(&"localhost".to_string()));
        assert!(hosts.contains(&"127.0.0.1".to_string()));
    }
}

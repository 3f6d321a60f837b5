//! Configuration: a TOML file, then environment overrides with registry:2's names, then `validate()`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole configuration of berth-registry.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP settings.
    pub http: HttpConfig,
    /// Storage settings.
    pub storage: StorageConfig,
    /// Logging settings.
    pub log: LogConfig,
    /// Garbage collection.
    pub gc: GcConfig,
    /// Health checks, answered on the debug address (`/debug/health`).
    pub health: HealthConfig,
    /// Webhooks on push, pull, mount and delete (docs/notifications.md).
    pub notifications: NotificationsConfig,
    /// `[redis]`: the shared metadata cache, with `storage.cache.blobdescriptor = "redis"`.
    pub redis: RedisConfig,
    /// `[proxy]`, registry:2's pull-through cache: with `remoteurl`, the whole registry mirrors that remote
    /// (docs/mirror.md). Its `cafile`, `max_fetches` and `spool_directory` apply to `[[mirrors]]` too.
    pub proxy: ProxyConfig,
    /// `[[mirrors]]`: namespaces fetched from a remote registry, next to ordinary repositories.
    pub mirrors: Vec<MirrorConfig>,
}

/// `[proxy]`: registry:2's keys, plus berth's own.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// The remote registry the whole registry mirrors (env `REGISTRY_PROXY_REMOTEURL`); pushes are refused.
    pub remoteurl: Option<String>,
    /// User for the remote (env `REGISTRY_PROXY_USERNAME`).
    pub username: Option<String>,
    /// Password for the remote (env `REGISTRY_PROXY_PASSWORD`).
    pub password: Option<String>,
    /// How long a fetched tag is served before it is checked with the remote again, and how long cached
    /// content stays after its last fetch or check before the collector removes it (env `REGISTRY_PROXY_TTL`,
    /// default `168h`; `0` keeps content for good and checks tags on every pull).
    pub ttl: Option<String>,
    /// PEM file of extra CA certificates trusted for remotes, besides the system's (env `BERTH_PROXY_CAFILE`).
    pub cafile: Option<PathBuf>,
    /// Most remote fetches at once, over all mirrors (env `BERTH_PROXY_MAXFETCHES`, default 16).
    pub max_fetches: Option<usize>,
    /// Where blobs being fetched are kept while they stream to clients (env `BERTH_PROXY_SPOOLDIRECTORY`,
    /// default a folder in the system's temporary directory); it must be on disk, not in memory.
    pub spool_directory: Option<PathBuf>,
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("remoteurl", &self.remoteurl)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("ttl", &self.ttl)
            .field("cafile", &self.cafile)
            .field("max_fetches", &self.max_fetches)
            .field("spool_directory", &self.spool_directory)
            .finish()
    }
}

/// `[[mirrors]]`: one mirrored namespace.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    /// The local namespace: `hub` makes `hub/library/alpine` a mirror of the remote's `library/alpine`.
    pub prefix: String,
    /// The remote registry's base URL (`https://registry-1.docker.io`).
    pub url: String,
    /// User for the remote.
    pub username: Option<String>,
    /// Password for the remote.
    pub password: Option<String>,
    /// As `proxy.ttl`, for this mirror (default: `proxy.ttl`).
    pub ttl: Option<String>,
    /// The `ns` query value (OCI registry proxying, as containerd sends it) answered from this mirror; default:
    /// the URL's host (`docker.io` for Docker Hub's hosts).
    pub namespace: Option<String>,
}

impl std::fmt::Debug for MirrorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorConfig")
            .field("prefix", &self.prefix)
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("ttl", &self.ttl)
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// A mirror as the registry runs it: `[[mirrors]]` or `[proxy] remoteurl` (whose prefix is empty).
#[derive(Clone, PartialEq)]
pub struct MirrorSpec {
    /// Local namespace; empty: every repository.
    pub prefix: String,
    /// Remote base URL, without a trailing slash.
    pub url: String,
    /// User and password for the remote.
    pub credentials: Option<(String, String)>,
    /// See [`ProxyConfig::ttl`].
    pub ttl: std::time::Duration,
    /// The `ns` value it answers.
    pub namespace: String,
}

/// Docker Hub's registry hosts, whose namespace is `docker.io`.
const DOCKER_HUB_HOSTS: [&str; 3] = ["registry-1.docker.io", "index.docker.io", "docker.io"];

/// The host (and port) of an `http(s)://` URL, when it is one.
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
    ok.then_some(host)
}

/// The host of a URL, lower case, without the default port of https.
pub fn hub_host(url: &str) -> String {
    let host = url_host(url).unwrap_or_default().to_ascii_lowercase();
    match host.strip_suffix(":443") {
        Some(h) if url.starts_with("https://") => h.to_string(),
        _ => host,
    }
}

/// Whether a remote URL is Docker Hub's registry.
pub fn is_docker_hub(url: &str) -> bool {
    DOCKER_HUB_HOSTS.contains(&hub_host(url).as_str())
}

impl ProxyConfig {
    fn ttl_or_default(&self) -> std::time::Duration {
        self.ttl
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .unwrap_or(std::time::Duration::from_secs(168 * 3600))
    }
}

impl Config {
    /// The mirrors the registry runs, after validation.
    pub fn mirror_specs(&self) -> Vec<MirrorSpec> {
        let creds = |u: &Option<String>, p: &Option<String>| match (u, p) {
            (Some(u), p) if !u.is_empty() => Some((u.clone(), p.clone().unwrap_or_default())),
            _ => None,
        };
        let namespace = |url: &str| {
            let host = hub_host(url);
            if DOCKER_HUB_HOSTS.contains(&host.as_str()) {
                "docker.io".to_string()
            } else {
                host
            }
        };
        if let Some(url) = self.proxy.remoteurl.as_deref().filter(|u| !u.is_empty()) {
            let url = url.trim_end_matches('/').to_string();
            return vec![MirrorSpec {
                prefix: String::new(),
                namespace: namespace(&url),
                credentials: creds(&self.proxy.username, &self.proxy.password),
                ttl: self.proxy.ttl_or_default(),
                url,
            }];
        }
        self.mirrors
            .iter()
            .map(|m| {
                let url = m.url.trim_end_matches('/').to_string();
                MirrorSpec {
                    prefix: m.prefix.trim_matches('/').to_string(),
                    namespace: m.namespace.clone().unwrap_or_else(|| namespace(&url)),
                    credentials: creds(&m.username, &m.password),
                    ttl: m
                        .ttl
                        .as_deref()
                        .and_then(|t| parse_duration(t).ok())
                        .unwrap_or_else(|| self.proxy.ttl_or_default()),
                    url,
                }
            })
            .collect()
    }

    fn mirror_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let check_url = |key: &str, url: &str, p: &mut Vec<String>| {
            if url_host(url.trim_end_matches('/')).is_none()
                || url
                    .trim_end_matches('/')
                    .split_once("://")
                    .is_some_and(|(_, r)| r.contains(['?', '#', '@']))
            {
                p.push(format!(
                    "{key}: {url:?} must be a registry's base URL like https://registry-1.docker.io"
                ));
            }
        };
        let check_ttl = |key: &str, ttl: &Option<String>, p: &mut Vec<String>| {
            if let Some(Err(e)) = ttl.as_deref().map(parse_duration) {
                p.push(format!("{key}: {e}"));
            }
        };
        check_ttl("proxy.ttl", &self.proxy.ttl, &mut p);
        if self.proxy.max_fetches == Some(0) {
            p.push("proxy.max_fetches: must be at least 1".into());
        }
        let remote = self.proxy.remoteurl.as_deref().filter(|u| !u.is_empty());
        if let Some(url) = remote {
            check_url("proxy.remoteurl", url, &mut p);
            if !self.mirrors.is_empty() {
                p.push(
                    "mirrors: not with proxy.remoteurl (REGISTRY_PROXY_REMOTEURL), which makes the whole \
                     registry a mirror; use one or the other"
                        .into(),
                );
            }
        }
        let mut seen: Vec<String> = Vec::new();
        for (i, m) in self.mirrors.iter().enumerate() {
            let prefix = m.prefix.trim_matches('/');
            let valid = format!("{prefix}/x")
                .parse::<crate::oci::RepoName>()
                .is_ok();
            if prefix.is_empty() || !valid {
                p.push(format!(
                    "mirrors[{i}].prefix: {:?} must be a repository path like hub or mirrors/quay",
                    m.prefix
                ));
            }
            for other in &seen {
                if prefix == other
                    || prefix.starts_with(&format!("{other}/"))
                    || other.starts_with(&format!("{prefix}/"))
                {
                    p.push(format!(
                        "mirrors[{i}].prefix: {prefix:?} overlaps the mirror at {other:?}"
                    ));
                }
            }
            seen.push(prefix.to_string());
            check_url(&format!("mirrors[{i}].url"), &m.url, &mut p);
            check_ttl(&format!("mirrors[{i}].ttl"), &m.ttl, &mut p);
            if m.namespace
                .as_deref()
                .is_some_and(|n| !berth_glob::valid_namespace(n))
            {
                p.push(format!(
                    "mirrors[{i}].namespace: {:?} must be a registry host like docker.io",
                    m.namespace.as_deref().unwrap_or_default()
                ));
            }
            if m.username.as_deref().unwrap_or_default().is_empty()
                && m.password.as_deref().is_some_and(|p| !p.is_empty())
            {
                p.push(format!("mirrors[{i}].password: set without a username"));
            }
        }
        if remote.is_none() && (self.proxy.username.is_some() || self.proxy.password.is_some()) {
            p.push(
                "proxy.username: set without proxy.remoteurl (REGISTRY_PROXY_REMOTEURL); a [[mirrors]] \
                 entry takes its own username and password"
                    .into(),
            );
        }
        if remote.is_some()
            && self
                .proxy
                .username
                .as_deref()
                .unwrap_or_default()
                .is_empty()
            && self
                .proxy
                .password
                .as_deref()
                .is_some_and(|p| !p.is_empty())
        {
            p.push("proxy.password: set without proxy.username".into());
        }
        if p.is_empty() {
            // A default namespace (the URL's host) must be one `?ns=` can name; an IPv6 host cannot.
            for (i, s) in self.mirror_specs().iter().enumerate() {
                if !berth_glob::valid_namespace(&s.namespace) {
                    p.push(format!(
                        "mirrors[{i}].namespace: the URL's host {:?} is no namespace ?ns= can name; set one",
                        s.namespace
                    ));
                }
            }
        }
        // Two mirrors of one remote share its default namespace (the first answers it); set ones must differ.
        for (i, a) in self.mirrors.iter().enumerate() {
            let Some(ns) = a.namespace.as_deref() else {
                continue;
            };
            if self.mirrors[..i].iter().any(|b| {
                b.namespace
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(ns))
            }) {
                p.push(format!(
                    "mirrors[{i}].namespace: {ns:?} is set on an earlier mirror already"
                ));
            }
        }
        p
    }
}

/// `[redis]`, registry:2's keys: where the shared metadata cache is.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `host:port` (env `REGISTRY_REDIS_ADDR`).
    pub addr: String,
    /// Password for `AUTH` (env `REGISTRY_REDIS_PASSWORD`).
    pub password: Option<String>,
    /// Database number (env `REGISTRY_REDIS_DB`).
    pub db: u32,
    /// Longest wait for a connection (env `REGISTRY_REDIS_DIALTIMEOUT`, default `100ms`).
    pub dialtimeout: String,
    /// Longest wait for a lookup before the storage is asked instead (env `REGISTRY_REDIS_READTIMEOUT`,
    /// default `20ms`).
    pub readtimeout: String,
    /// Longest wait for a fill or an invalidation (env `REGISTRY_REDIS_WRITETIMEOUT`, default `200ms`).
    pub writetimeout: String,
    /// How long entries that are not content-addressed live in Redis: what bounds staleness when an
    /// invalidation could not reach Redis (env `BERTH_REDIS_TTL`, default `1m`).
    pub ttl: String,
    /// `[redis.tls]`: TLS to Redis.
    pub tls: RedisTlsConfig,
}

/// `[redis.tls]`
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisTlsConfig {
    /// Connect with TLS (env `REGISTRY_REDIS_TLS_ENABLED`).
    pub enabled: bool,
    /// PEM file of the CA certificates that sign Redis' certificate (env `BERTH_REDIS_TLS_CAFILE`); unset: the
    /// system's roots.
    pub cafile: Option<PathBuf>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("addr", &self.addr)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("db", &self.db)
            .field("dialtimeout", &self.dialtimeout)
            .field("readtimeout", &self.readtimeout)
            .field("writetimeout", &self.writetimeout)
            .field("ttl", &self.ttl)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            addr: String::new(),
            password: None,
            db: 0,
            dialtimeout: "100ms".into(),
            readtimeout: "20ms".into(),
            writetimeout: "200ms".into(),
            ttl: "1m".into(),
            tls: RedisTlsConfig::default(),
        }
    }
}

impl RedisConfig {
    /// The client's options (after validation); fails when the TLS roots cannot be read.
    pub fn options(&self) -> Result<crate::redis::RedisOptions, String> {
        let d = |s: &str| parse_duration(s).unwrap_or(std::time::Duration::from_millis(100));
        let tls = if self.tls.enabled {
            Some(
                crate::redis::tls_config(self.tls.cafile.as_deref())
                    .map_err(|e| format!("redis.tls.cafile: {e}"))?,
            )
        } else {
            None
        };
        Ok(crate::redis::RedisOptions {
            addr: self.addr.clone(),
            password: self.password.clone().filter(|p| !p.is_empty()),
            db: self.db,
            dial_timeout: d(&self.dialtimeout),
            read_timeout: d(&self.readtimeout),
            write_timeout: d(&self.writetimeout),
            tls,
        })
    }

    fn problems(&self, used: bool) -> Vec<String> {
        let mut p = Vec::new();
        if used && self.addr.trim().is_empty() {
            p.push(
                "redis.addr: storage.cache.blobdescriptor is redis, so the address (host:port) is needed \
                 (REGISTRY_REDIS_ADDR)"
                    .into(),
            );
        }
        if !self.addr.is_empty() && self.addr.contains(['/', '@']) {
            p.push(format!(
                "redis.addr: {:?} must be host:port, not a URL (the password goes in redis.password)",
                self.addr.split('@').next_back().unwrap_or_default()
            ));
        } else if !self.addr.is_empty()
            && self
                .addr
                .rsplit_once(':')
                .is_none_or(|(h, port)| h.is_empty() || port.parse::<u16>().is_err())
        {
            p.push(format!("redis.addr: {:?} is not host:port", self.addr));
        }
        if self.tls.enabled {
            if let Err(e) = crate::redis::tls_config(self.tls.cafile.as_deref()) {
                p.push(format!("redis.tls.cafile: {e}"));
            }
        } else if self.tls.cafile.is_some() {
            p.push("redis.tls.cafile: set, but redis.tls.enabled is false".into());
        }
        for (key, v) in [
            ("dialtimeout", &self.dialtimeout),
            ("readtimeout", &self.readtimeout),
            ("writetimeout", &self.writetimeout),
            ("ttl", &self.ttl),
        ] {
            match parse_duration(v) {
                Ok(d) if d.is_zero() => p.push(format!("redis.{key}: must be more than 0")),
                Ok(_) => {}
                Err(e) => p.push(format!("redis.{key}: {e}")),
            }
        }
        p
    }
}

/// `[notifications]`: registry:2's structure (a YAML `notifications:` block translates key for key), plus the
/// spool that keeps undelivered events across restarts.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    /// `[notifications.events]`
    pub events: EventsConfig,
    /// `[[notifications.endpoints]]`: where events are sent.
    pub endpoints: Vec<Endpoint>,
    /// `[notifications.spool]`: where events wait until every endpoint has them.
    pub spool: SpoolConfig,
}

/// `[notifications.events]`
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Add the descriptors a manifest references to its push and pull events
    /// (env `REGISTRY_NOTIFICATIONS_EVENTS_INCLUDEREFERENCES`).
    pub includereferences: bool,
}

/// `[[notifications.endpoints]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Endpoint {
    /// The endpoint's name, in logs and as the `endpoint` label of the notification metrics.
    pub name: String,
    /// Where events are POSTed (`http://` or `https://`).
    pub url: String,
    /// Headers added to every delivery, each with a list of values (`Authorization = ["Bearer ..."]`).
    pub headers: std::collections::BTreeMap<String, Vec<String>>,
    /// How long one delivery may take, like `1s` (default `1s`).
    pub timeout: String,
    /// Failures in a row before deliveries wait `backoff` between attempts (default 10).
    pub threshold: u32,
    /// The wait between attempts once `threshold` is reached, like `1s` (default `1s`).
    pub backoff: String,
    /// Media types whose events this endpoint does not get.
    pub ignoredmediatypes: Vec<String>,
    /// `[notifications.endpoints.ignore]`: more events this endpoint does not get.
    pub ignore: IgnoreConfig,
    /// Whether the endpoint is off.
    pub disabled: bool,
}

impl Default for Endpoint {
    fn default() -> Self {
        Endpoint {
            name: String::new(),
            url: String::new(),
            headers: Default::default(),
            timeout: "1s".into(),
            threshold: 10,
            backoff: "1s".into(),
            ignoredmediatypes: Vec::new(),
            ignore: IgnoreConfig::default(),
            disabled: false,
        }
    }
}

/// `[notifications.endpoints.ignore]`
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IgnoreConfig {
    /// Media types (of the event's target) not sent.
    pub mediatypes: Vec<String>,
    /// Actions (`push`, `pull`, `mount`, `delete`) not sent.
    pub actions: Vec<String>,
}

/// `[notifications.spool]`: berth's own. Events are written here before the request that caused them is
/// answered, and removed once every endpoint has them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// The most events kept; when full, the oldest undelivered ones are dropped (and counted)
    /// (env `BERTH_NOTIFICATIONS_SPOOL_MAXEVENTS`).
    pub maxevents: u64,
    /// This registry's spool among others in one bucket: replicas sharing storage need distinct names
    /// (env `BERTH_NOTIFICATIONS_SPOOL_NODE`). Default: `local` on a filesystem, the host name on S3.
    pub node: Option<String>,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            maxevents: 100_000,
            node: None,
        }
    }
}

/// The actions events have.
pub const EVENT_ACTIONS: [&str; 4] = ["push", "pull", "mount", "delete"];

/// `[health]`, registry:2's structure: the storage check and file checks.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// `[health.storagedriver]`: a small write and read of the storage, on a schedule.
    pub storagedriver: StorageDriverCheck,
    /// `[[health.file]]`: a file whose presence makes the node unhealthy (to drain it).
    pub file: Vec<FileCheck>,
}

/// `[health.storagedriver]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageDriverCheck {
    /// Whether the check runs (env `REGISTRY_HEALTH_STORAGEDRIVER_ENABLED`).
    pub enabled: bool,
    /// How often (env `REGISTRY_HEALTH_STORAGEDRIVER_INTERVAL`), like `10s`.
    pub interval: String,
    /// Failures in a row before the check reports unhealthy (env `REGISTRY_HEALTH_STORAGEDRIVER_THRESHOLD`).
    pub threshold: u32,
}

impl Default for StorageDriverCheck {
    fn default() -> Self {
        StorageDriverCheck {
            enabled: true,
            interval: "10s".into(),
            threshold: 3,
        }
    }
}

/// `[[health.file]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FileCheck {
    /// The file whose presence makes the node unhealthy.
    pub file: PathBuf,
    /// How often it is looked for, like `10s`.
    pub interval: String,
}

impl Default for FileCheck {
    fn default() -> Self {
        FileCheck {
            file: PathBuf::new(),
            interval: "10s".into(),
        }
    }
}

/// `[gc]`: online garbage collection (docs/gc.md). Durations are written like `90s`, `10m`, `24h`, `7d` or
/// `1h30m`; `0` is zero.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// Time between two collections run by the registry; `0` turns them off (env `BERTH_GC_INTERVAL`).
    pub interval: String,
    /// Nothing written within this long before a collection starts is swept (env `BERTH_GC_GRACE`).
    pub grace: String,
    /// Also remove manifests that no tag reaches (env `BERTH_GC_DELETE_UNTAGGED`).
    pub delete_untagged: bool,
    /// Upload sessions idle longer than this are removed
    /// (env `REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE`).
    pub upload_max_age: String,
    /// `[[gc.retention]]`: tag retention rules applied before each collection; none by default.
    pub retention: Vec<RetentionRule>,
}

/// `[[gc.retention]]`: which tags of the matching repositories a collection removes (docs/gc.md).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    /// Repositories the rule applies to: a glob (`*` within a path segment, `**` across, `?` one character).
    pub repositories: String,
    /// Keep this many most recently pushed tags.
    pub keep_last: Option<usize>,
    /// Always keep tags matching this regular expression.
    pub keep_tags: Option<String>,
    /// Remove (unprotected) tags pushed longer ago than this.
    pub older_than: Option<String>,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval: "1h".into(),
            grace: "1h".into(),
            delete_untagged: false,
            upload_max_age: "168h".into(),
            retention: Vec::new(),
        }
    }
}

/// Parses `storage.min_free`: `auto`, a size (`0`, `1048576`, `512MiB`, `2GB`, `1G`), or a share (`5%`).
pub fn parse_min_free(text: &str) -> Result<crate::storage::fs::MinFree, String> {
    use crate::storage::fs::MinFree;
    let t = text.trim();
    let bad = || format!("{text:?} is not auto, a size like 512MiB or 2GB, or a share like 5%");
    if t.eq_ignore_ascii_case("auto") {
        return Ok(MinFree::Auto);
    }
    if let Some(p) = t.strip_suffix('%') {
        let p: f64 = p.trim().parse().map_err(|_| bad())?;
        return if (0.0..=100.0).contains(&p) {
            Ok(MinFree::Percent(p))
        } else {
            Err(bad())
        };
    }
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..digits].parse().map_err(|_| bad())?;
    let unit: u64 = match t[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "kb" => 1000,
        "m" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        "t" | "tib" => 1 << 40,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).map(MinFree::Bytes).ok_or_else(bad)
}

/// Parses a duration like `90s`, `10m`, `24h`, `7d`, `1h30m`, `500ms` or `0`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let bad = || format!("{text:?} is not a duration like 90s, 10m, 24h, 7d or 0");
    let mut total = std::time::Duration::ZERO;
    let mut rest = t;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs_per = match &rest[..unit_len] {
            "ms" => None,
            "s" => Some(1),
            "m" => Some(60),
            "h" => Some(3600),
            "d" => Some(86400),
            _ => return Err(bad()),
        };
        let part = match secs_per {
            Some(k) => n.checked_mul(k).map(std::time::Duration::from_secs),
            None => Some(std::time::Duration::from_millis(n)),
        }
        .ok_or_else(bad)?;
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// The longest duration accepted (timers cannot reach past it).
const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86400);

impl GcConfig {
    /// Time between collections; zero when off.
    pub fn interval(&self) -> std::time::Duration {
        parse_duration(&self.interval).unwrap_or_default()
    }
    /// The grace period.
    pub fn grace(&self) -> std::time::Duration {
        parse_duration(&self.grace).unwrap_or(std::time::Duration::from_secs(3600))
    }
    /// The idle age after which upload sessions are removed.
    pub fn upload_max_age(&self) -> std::time::Duration {
        parse_duration(&self.upload_max_age).unwrap_or(std::time::Duration::from_secs(7 * 86400))
    }
    fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (key, v) in [
            ("gc.interval", &self.interval),
            ("gc.grace", &self.grace),
            ("gc.upload_max_age", &self.upload_max_age),
        ] {
            match parse_duration(v) {
                Err(e) => p.push(format!("{key}: {e}")),
                Ok(d) if d > MAX_DURATION => p.push(format!("{key}: {v:?} is more than 100 years")),
                Ok(_) => {}
            }
        }
        if let Err(e) = crate::store::retention::Retention::compile(&self.retention) {
            p.extend(e);
        }
        p
    }
}

/// `[http]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address, `host:port` or `:port` (env `REGISTRY_HTTP_ADDR`).
    pub addr: String,
    /// External base URL used in `Location` headers, e.g. `https://registry.example:5043`
    /// (env `REGISTRY_HTTP_HOST`). When unset, it is built from `X-Forwarded-Proto` and `Host`.
    pub host: Option<String>,
    /// Send relative `Location` headers (env `REGISTRY_HTTP_RELATIVEURLS`).
    pub relative_urls: bool,
    /// Largest manifest accepted, in bytes.
    pub max_manifest_bytes: u64,
    /// `[http.debug]`: the debug address.
    pub debug: DebugConfig,
}

/// `[http.debug]`: a second listener, for operators only (health; keep it off the public network).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DebugConfig {
    /// `host:port` or `:port` (env `REGISTRY_HTTP_DEBUG_ADDR`); unset: no debug listener.
    pub addr: Option<String>,
    /// `[http.debug.prometheus]`: metrics on the debug listener.
    pub prometheus: PrometheusConfig,
}

/// `[http.debug.prometheus]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Serve the metrics (env `REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED`).
    pub enabled: bool,
    /// Their path (env `REGISTRY_HTTP_DEBUG_PROMETHEUS_PATH`), default `/metrics`.
    pub path: String,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            enabled: false,
            path: "/metrics".into(),
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Which backend holds the data (env `REGISTRY_STORAGE`: `filesystem` or `s3`).
    pub driver: StorageDriver,
    /// Root of the filesystem storage (env `REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY`).
    pub root_directory: PathBuf,
    /// Allow DELETE of blobs, manifests and tags (env `REGISTRY_STORAGE_DELETE_ENABLED`).
    pub delete_enabled: bool,
    /// Free space uploads must leave on the filesystem: `auto` (1 GiB or 2 %, whichever is smaller), a size
    /// like `512MiB` or `2GB`, a share like `5%`, or `0` (env `BERTH_STORAGE_MIN_FREE`).
    pub min_free: String,
    /// `[storage.s3]`: the bucket, when `driver = "s3"`.
    pub s3: S3Config,
    /// `[storage.cache]`: the metadata cache (docs/registry.md).
    pub cache: CacheConfig,
}

/// `[storage.cache]`: the in-memory metadata cache (blob sizes, links, tags, small manifests).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// `inmemory`, `redis` (shared by replicas, `[redis]`) or `none` (env `REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR`);
    /// default: `inmemory` on S3, `none` on a filesystem (whose reads the kernel already caches).
    pub blobdescriptor: Option<String>,
    /// How long entries that are not content-addressed (links, tags) are trusted: what bounds how late this
    /// registry sees another replica's changes (env `BERTH_STORAGE_CACHE_TTL`, default `5s`). Its own changes
    /// it sees at once.
    pub ttl: String,
    /// Most entries kept (env `BERTH_STORAGE_CACHE_MAXENTRIES`, default 100000).
    pub max_entries: usize,
    /// Most memory kept, like `32MiB` (env `BERTH_STORAGE_CACHE_MAXBYTES`, default `32MiB`).
    pub max_bytes: String,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            blobdescriptor: None,
            ttl: "5s".into(),
            max_entries: 100_000,
            max_bytes: "32MiB".into(),
        }
    }
}

impl StorageConfig {
    /// The cache's limits, or `None` when the cache is off.
    pub fn cache_limits(&self) -> Option<crate::cache::CacheLimits> {
        let on = match self.cache.blobdescriptor.as_deref().map(str::trim) {
            None | Some("") => self.driver == StorageDriver::S3,
            Some(v) => v.eq_ignore_ascii_case("inmemory") || v.eq_ignore_ascii_case("redis"),
        };
        on.then(|| crate::cache::CacheLimits {
            max_entries: self.cache.max_entries,
            max_bytes: match parse_min_free(&self.cache.max_bytes) {
                Ok(crate::storage::fs::MinFree::Bytes(n)) => {
                    usize::try_from(n).unwrap_or(usize::MAX)
                }
                _ => 0,
            },
            ttl: parse_duration(&self.cache.ttl).unwrap_or_default(),
        })
    }

    /// Whether the cache is shared through Redis.
    pub fn cache_in_redis(&self) -> bool {
        self.cache
            .blobdescriptor
            .as_deref()
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("redis"))
    }

    /// What distinguishes this registry's data from others' in a shared Redis: the endpoint (or AWS and the
    /// region), bucket and root on S3; the machine and the data directory's real path on a filesystem (a local
    /// disk: replicas share data through a bucket).
    pub fn cache_namespace(&self) -> String {
        match self.driver {
            StorageDriver::S3 => {
                let o = self.s3.options();
                let endpoint = match &o.endpoint {
                    Some(e) => e.trim_end_matches('/').to_string(),
                    None => format!("aws:{}", o.region),
                };
                format!(
                    "s3:{endpoint}/{}/{}",
                    self.s3.bucket,
                    self.s3.root_directory.trim_matches('/')
                )
            }
            StorageDriver::Filesystem => {
                let dir = std::fs::canonicalize(&self.root_directory)
                    .unwrap_or_else(|_| self.root_directory.clone());
                let host = crate::events::hostname();
                format!("fs:{host}:{}", dir.display())
            }
        }
    }

    fn cache_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let c = &self.cache;
        if let Some(v) = c.blobdescriptor.as_deref().map(str::trim) {
            if !v.is_empty()
                && !v.eq_ignore_ascii_case("redis")
                && !v.eq_ignore_ascii_case("inmemory")
                && !v.eq_ignore_ascii_case("none")
            {
                p.push(format!(
                    "storage.cache.blobdescriptor: {v:?} is not inmemory, redis or none"
                ));
            }
        }
        if let Err(e) = parse_duration(&c.ttl) {
            p.push(format!("storage.cache.ttl: {e}"));
        }
        match parse_min_free(&c.max_bytes) {
            Ok(crate::storage::fs::MinFree::Bytes(_)) => {}
            _ => p.push(format!(
                "storage.cache.max_bytes: {:?} is not a size like 32MiB or 1GB",
                c.max_bytes
            )),
        }
        p
    }
}

/// The storage backends.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageDriver {
    /// A data directory on a filesystem (`storage.root_directory`).
    #[default]
    Filesystem,
    /// An S3-compatible bucket (`[storage.s3]`).
    S3,
}

/// `[storage.s3]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Bucket name (env `REGISTRY_STORAGE_S3_BUCKET`).
    pub bucket: String,
    /// Region (env `REGISTRY_STORAGE_S3_REGION`, else `AWS_REGION`, `AWS_DEFAULT_REGION`; default `us-east-1`).
    pub region: Option<String>,
    /// Endpoint of an S3-compatible service, e.g. `http://minio:9000` (env `REGISTRY_STORAGE_S3_REGIONENDPOINT`,
    /// else `AWS_ENDPOINT_URL`); AWS itself when unset.
    pub region_endpoint: Option<String>,
    /// Path-style requests (env `REGISTRY_STORAGE_S3_FORCEPATHSTYLE`); default: true when an endpoint is set.
    pub force_path_style: Option<bool>,
    /// HTTPS to the endpoint (env `REGISTRY_STORAGE_S3_SECURE`); `false` allows plain HTTP.
    pub secure: bool,
    /// Key prefix the registry tree lives under (env `REGISTRY_STORAGE_S3_ROOTDIRECTORY`); empty for the root.
    pub root_directory: String,
    /// Access key (env `REGISTRY_STORAGE_S3_ACCESSKEY`, else `AWS_ACCESS_KEY_ID`); unset: instance credentials.
    pub access_key: Option<String>,
    /// Secret key (env `REGISTRY_STORAGE_S3_SECRETKEY`, else `AWS_SECRET_ACCESS_KEY`).
    pub secret_key: Option<String>,
    /// Session token of temporary credentials (env `AWS_SESSION_TOKEN`).
    pub session_token: Option<String>,
    /// Size of upload parts in bytes, at least 5 MiB (env `REGISTRY_STORAGE_S3_CHUNKSIZE`).
    pub chunk_size: u64,
}

impl S3Config {
    fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.bucket.trim().is_empty() {
            p.push("storage.s3.bucket: must be set when storage.driver is s3".into());
        }
        if self.access_key.is_some() != self.secret_key.is_some() {
            p.push("storage.s3.access_key: access_key and secret_key go together".into());
        }
        let (min, max) = (
            crate::storage::s3::MIN_CHUNK_SIZE,
            crate::storage::s3::MAX_CHUNK_SIZE,
        );
        if !(min..=max).contains(&self.chunk_size) {
            p.push(format!(
                "storage.s3.chunk_size: {} is outside {min}..={max} (S3 part sizes)",
                self.chunk_size
            ));
        }
        if let Some(e) = &self.region_endpoint {
            if e.contains("://") && !(e.starts_with("http://") || e.starts_with("https://")) {
                p.push(format!(
                    "storage.s3.region_endpoint: {e:?} must be an http:// or https:// URL"
                ));
            }
        }
        if self
            .root_directory
            .split('/')
            .any(|c| c == "." || c == "..")
        {
            p.push(format!(
                "storage.s3.root_directory: {:?} must not contain . or .. segments",
                self.root_directory
            ));
        }
        p
    }
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            bucket: String::new(),
            region: None,
            region_endpoint: None,
            force_path_style: None,
            secure: true,
            root_directory: String::new(),
            access_key: None,
            secret_key: None,
            session_token: None,
            chunk_size: 10 * 1024 * 1024,
        }
    }
}

impl S3Config {
    /// The backend options this section describes.
    pub fn options(&self) -> crate::storage::s3::S3Options {
        let endpoint = self
            .region_endpoint
            .as_ref()
            .filter(|e| !e.is_empty())
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else if self.secure {
                    format!("https://{e}")
                } else {
                    format!("http://{e}")
                }
            });
        crate::storage::s3::S3Options {
            bucket: self.bucket.clone(),
            region: self.region.clone().unwrap_or_else(|| "us-east-1".into()),
            force_path_style: self.force_path_style.unwrap_or(endpoint.is_some()),
            allow_http: !self.secure
                || endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://")),
            endpoint,
            root_directory: self.root_directory.clone(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
            session_token: self.session_token.clone(),
            chunk_size: self.chunk_size,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Level filter: `error`, `warn`, `info`, `debug`, `trace` (env `REGISTRY_LOG_LEVEL`).
    pub level: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: "127.0.0.1:5000".into(),
            host: None,
            relative_urls: false,
            max_manifest_bytes: 4 * 1024 * 1024,
            debug: DebugConfig::default(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            driver: StorageDriver::Filesystem,
            root_directory: PathBuf::from("data"),
            delete_enabled: false,
            min_free: "auto".into(),
            s3: S3Config::default(),
            cache: CacheConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// The environment variables read, with what they set.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("REGISTRY_HTTP_ADDR", "http.addr"),
    ("REGISTRY_HTTP_HOST", "http.host"),
    ("REGISTRY_HTTP_RELATIVEURLS", "http.relative_urls"),
    (
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
        "storage.root_directory",
    ),
    ("REGISTRY_STORAGE_DELETE_ENABLED", "storage.delete_enabled"),
    ("BERTH_STORAGE_MIN_FREE", "storage.min_free"),
    (
        "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR",
        "storage.cache.blobdescriptor",
    ),
    ("BERTH_STORAGE_CACHE_TTL", "storage.cache.ttl"),
    (
        "BERTH_STORAGE_CACHE_MAXENTRIES",
        "storage.cache.max_entries",
    ),
    ("BERTH_STORAGE_CACHE_MAXBYTES", "storage.cache.max_bytes"),
    ("REGISTRY_REDIS_ADDR", "redis.addr"),
    ("REGISTRY_REDIS_PASSWORD", "redis.password"),
    ("REGISTRY_REDIS_DB", "redis.db"),
    ("REGISTRY_REDIS_DIALTIMEOUT", "redis.dialtimeout"),
    ("REGISTRY_REDIS_READTIMEOUT", "redis.readtimeout"),
    ("REGISTRY_REDIS_WRITETIMEOUT", "redis.writetimeout"),
    ("BERTH_REDIS_TTL", "redis.ttl"),
    ("REGISTRY_REDIS_TLS_ENABLED", "redis.tls.enabled"),
    ("BERTH_REDIS_TLS_CAFILE", "redis.tls.cafile"),
    ("REGISTRY_STORAGE", "storage.driver"),
    ("REGISTRY_STORAGE_S3_BUCKET", "storage.s3.bucket"),
    ("REGISTRY_STORAGE_S3_REGION", "storage.s3.region"),
    (
        "REGISTRY_STORAGE_S3_REGIONENDPOINT",
        "storage.s3.region_endpoint",
    ),
    (
        "REGISTRY_STORAGE_S3_FORCEPATHSTYLE",
        "storage.s3.force_path_style",
    ),
    ("REGISTRY_STORAGE_S3_SECURE", "storage.s3.secure"),
    (
        "REGISTRY_STORAGE_S3_ROOTDIRECTORY",
        "storage.s3.root_directory",
    ),
    ("REGISTRY_STORAGE_S3_ACCESSKEY", "storage.s3.access_key"),
    ("REGISTRY_STORAGE_S3_SECRETKEY", "storage.s3.secret_key"),
    ("REGISTRY_STORAGE_S3_CHUNKSIZE", "storage.s3.chunk_size"),
    ("AWS_ACCESS_KEY_ID", "storage.s3.access_key when unset"),
    ("AWS_SECRET_ACCESS_KEY", "storage.s3.secret_key when unset"),
    ("AWS_SESSION_TOKEN", "storage.s3.session_token when unset"),
    (
        "AWS_REGION, AWS_DEFAULT_REGION",
        "storage.s3.region when unset",
    ),
    ("AWS_ENDPOINT_URL", "storage.s3.region_endpoint when unset"),
    ("REGISTRY_LOG_LEVEL", "log.level"),
    ("REGISTRY_HTTP_DEBUG_ADDR", "http.debug.addr"),
    (
        "REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED",
        "http.debug.prometheus.enabled",
    ),
    (
        "REGISTRY_HTTP_DEBUG_PROMETHEUS_PATH",
        "http.debug.prometheus.path",
    ),
    (
        "REGISTRY_NOTIFICATIONS_EVENTS_INCLUDEREFERENCES",
        "notifications.events.includereferences",
    ),
    (
        "BERTH_NOTIFICATIONS_SPOOL_MAXEVENTS",
        "notifications.spool.maxevents",
    ),
    ("BERTH_NOTIFICATIONS_SPOOL_NODE", "notifications.spool.node"),
    (
        "REGISTRY_HEALTH_STORAGEDRIVER_ENABLED",
        "health.storagedriver.enabled",
    ),
    (
        "REGISTRY_HEALTH_STORAGEDRIVER_INTERVAL",
        "health.storagedriver.interval",
    ),
    (
        "REGISTRY_HEALTH_STORAGEDRIVER_THRESHOLD",
        "health.storagedriver.threshold",
    ),
    ("REGISTRY_PROXY_REMOTEURL", "proxy.remoteurl"),
    ("REGISTRY_PROXY_USERNAME", "proxy.username"),
    ("REGISTRY_PROXY_PASSWORD", "proxy.password"),
    ("REGISTRY_PROXY_TTL", "proxy.ttl"),
    ("BERTH_PROXY_CAFILE", "proxy.cafile"),
    ("BERTH_PROXY_MAXFETCHES", "proxy.max_fetches"),
    ("BERTH_PROXY_SPOOLDIRECTORY", "proxy.spool_directory"),
    ("BERTH_GC_INTERVAL", "gc.interval"),
    ("BERTH_GC_GRACE", "gc.grace"),
    ("BERTH_GC_DELETE_UNTAGGED", "gc.delete_untagged"),
    (
        "REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE",
        "gc.upload_max_age",
    ),
];

fn parse_bool(key: &str, v: &str, problems: &mut Vec<String>) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => {
            problems.push(format!("{key}: {v:?} is not a boolean (true or false)"));
            None
        }
    }
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|v| !v.trim().is_empty())
}

/// `REGISTRY_STORAGE` and `REGISTRY_STORAGE_S3_*` over the file, then the usual AWS variables for what is
/// still unset (as registry:2 does).
fn apply_s3_env(
    storage: &mut StorageConfig,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) {
    if let Some(v) = non_empty(env("REGISTRY_STORAGE")) {
        match v.trim().to_ascii_lowercase().as_str() {
            "filesystem" => storage.driver = StorageDriver::Filesystem,
            "s3" => storage.driver = StorageDriver::S3,
            _ => problems.push(format!(
                "REGISTRY_STORAGE: {v:?} is not a supported driver (filesystem or s3)"
            )),
        }
    }
    let s3 = &mut storage.s3;
    if let Some(v) = env("REGISTRY_STORAGE_S3_BUCKET") {
        s3.bucket = v;
    }
    if let Some(v) = non_empty(env("REGISTRY_STORAGE_S3_REGION")) {
        s3.region = Some(v);
    }
    if let Some(v) = non_empty(env("REGISTRY_STORAGE_S3_REGIONENDPOINT")) {
        s3.region_endpoint = Some(v);
    }
    if let Some(v) = non_empty(env("REGISTRY_STORAGE_S3_FORCEPATHSTYLE")) {
        s3.force_path_style = parse_bool("REGISTRY_STORAGE_S3_FORCEPATHSTYLE", &v, problems);
    }
    if let Some(v) = non_empty(env("REGISTRY_STORAGE_S3_SECURE")) {
        if let Some(b) = parse_bool("REGISTRY_STORAGE_S3_SECURE", &v, problems) {
            s3.secure = b;
        }
    }
    if let Some(v) = env("REGISTRY_STORAGE_S3_ROOTDIRECTORY") {
        s3.root_directory = v;
    }
    if let Some(v) = non_empty(env("REGISTRY_STORAGE_S3_ACCESSKEY")) {
        s3.access_key = Some(v);
    }
    if let Some(v) = non_empty(env("REGISTRY_STORAGE_S3_SECRETKEY")) {
        s3.secret_key = Some(v);
    }
    if let Some(v) = non_empty(env("REGISTRY_STORAGE_S3_CHUNKSIZE")) {
        match v.trim().parse::<u64>() {
            Ok(n) => s3.chunk_size = n,
            Err(_) => problems.push(format!(
                "REGISTRY_STORAGE_S3_CHUNKSIZE: {v:?} is not a number of bytes"
            )),
        }
    }
    if s3.access_key.is_none() && s3.secret_key.is_none() {
        s3.access_key = non_empty(env("AWS_ACCESS_KEY_ID"));
        s3.secret_key = non_empty(env("AWS_SECRET_ACCESS_KEY"));
    }
    if s3.session_token.is_none() {
        s3.session_token = non_empty(env("AWS_SESSION_TOKEN"));
    }
    if s3.region.is_none() {
        s3.region = non_empty(env("AWS_REGION")).or_else(|| non_empty(env("AWS_DEFAULT_REGION")));
    }
    if s3.region_endpoint.is_none() {
        s3.region_endpoint = non_empty(env("AWS_ENDPOINT_URL"));
    }
}

/// `host:port`, or `:port` for all interfaces.
fn socket_addr(a: &str) -> Result<SocketAddr, std::net::AddrParseError> {
    match a.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}").parse(),
        None => a.parse(),
    }
}

impl Config {
    /// Loads `file` (if given), applies environment overrides read through `env`, and validates.
    /// Every problem is reported, each naming its key.
    pub fn load(
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<String>> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
                toml::from_str::<Config>(&text).map_err(|e| {
                    let line = e
                        .span()
                        .map(|s| text[..s.start].matches('\n').count() + 1)
                        .map(|l| format!(" line {l}:"))
                        .unwrap_or_default();
                    vec![format!("{}:{line} {}", path.display(), e.message())]
                })?
            }
            None => Config::default(),
        };
        let mut problems = Vec::new();
        if let Some(v) = env("REGISTRY_HTTP_ADDR") {
            config.http.addr = v;
        }
        if let Some(v) = env("REGISTRY_HTTP_HOST") {
            config.http.host = if v.is_empty() { None } else { Some(v) };
        }
        if let Some(v) = env("REGISTRY_HTTP_RELATIVEURLS") {
            if let Some(b) = parse_bool("REGISTRY_HTTP_RELATIVEURLS", &v, &mut problems) {
                config.http.relative_urls = b;
            }
        }
        if let Some(v) = env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY") {
            config.storage.root_directory = PathBuf::from(v);
        }
        if let Some(v) = env("REGISTRY_STORAGE_DELETE_ENABLED") {
            if let Some(b) = parse_bool("REGISTRY_STORAGE_DELETE_ENABLED", &v, &mut problems) {
                config.storage.delete_enabled = b;
            }
        }
        if let Some(v) = env("REGISTRY_LOG_LEVEL") {
            config.log.level = v;
        }
        if let Some(v) = env("REGISTRY_HTTP_DEBUG_ADDR") {
            config.http.debug.addr = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = non_empty(env("REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED")) {
            if let Some(b) = parse_bool("REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED", &v, &mut problems)
            {
                config.http.debug.prometheus.enabled = b;
            }
        }
        if let Some(v) = non_empty(env("REGISTRY_HTTP_DEBUG_PROMETHEUS_PATH")) {
            config.http.debug.prometheus.path = v;
        }
        if let Some(v) = non_empty(env("REGISTRY_NOTIFICATIONS_EVENTS_INCLUDEREFERENCES")) {
            if let Some(b) = parse_bool(
                "REGISTRY_NOTIFICATIONS_EVENTS_INCLUDEREFERENCES",
                &v,
                &mut problems,
            ) {
                config.notifications.events.includereferences = b;
            }
        }
        if let Some(v) = non_empty(env("BERTH_NOTIFICATIONS_SPOOL_MAXEVENTS")) {
            match v.trim().parse::<u64>() {
                Ok(n) => config.notifications.spool.maxevents = n,
                Err(_) => problems.push(format!(
                    "BERTH_NOTIFICATIONS_SPOOL_MAXEVENTS: {v:?} is not a number"
                )),
            }
        }
        if let Some(v) = non_empty(env("BERTH_NOTIFICATIONS_SPOOL_NODE")) {
            config.notifications.spool.node = Some(v);
        }
        if let Some(v) = non_empty(env("REGISTRY_HEALTH_STORAGEDRIVER_ENABLED")) {
            if let Some(b) = parse_bool("REGISTRY_HEALTH_STORAGEDRIVER_ENABLED", &v, &mut problems)
            {
                config.health.storagedriver.enabled = b;
            }
        }
        if let Some(v) = non_empty(env("REGISTRY_HEALTH_STORAGEDRIVER_INTERVAL")) {
            config.health.storagedriver.interval = v;
        }
        if let Some(v) = non_empty(env("REGISTRY_HEALTH_STORAGEDRIVER_THRESHOLD")) {
            match v.trim().parse::<u32>() {
                Ok(n) => config.health.storagedriver.threshold = n,
                Err(_) => problems.push(format!(
                    "REGISTRY_HEALTH_STORAGEDRIVER_THRESHOLD: {v:?} is not a number"
                )),
            }
        }
        if let Some(v) = non_empty(env("BERTH_STORAGE_MIN_FREE")) {
            config.storage.min_free = v;
        }
        if let Some(v) = non_empty(env("REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR")) {
            config.storage.cache.blobdescriptor = Some(v);
        }
        if let Some(v) = non_empty(env("BERTH_STORAGE_CACHE_TTL")) {
            config.storage.cache.ttl = v;
        }
        if let Some(v) = non_empty(env("BERTH_STORAGE_CACHE_MAXENTRIES")) {
            match v.trim().parse::<usize>() {
                Ok(n) => config.storage.cache.max_entries = n,
                Err(_) => problems.push(format!(
                    "BERTH_STORAGE_CACHE_MAXENTRIES: {v:?} is not a number"
                )),
            }
        }
        if let Some(v) = non_empty(env("BERTH_STORAGE_CACHE_MAXBYTES")) {
            config.storage.cache.max_bytes = v;
        }
        if let Some(v) = non_empty(env("REGISTRY_REDIS_ADDR")) {
            config.redis.addr = v;
        }
        if let Some(v) = non_empty(env("REGISTRY_REDIS_PASSWORD")) {
            config.redis.password = Some(v);
        }
        if let Some(v) = non_empty(env("REGISTRY_REDIS_DB")) {
            match v.trim().parse::<u32>() {
                Ok(n) => config.redis.db = n,
                Err(_) => problems.push(format!("REGISTRY_REDIS_DB: {v:?} is not a number")),
            }
        }
        if let Some(v) = non_empty(env("REGISTRY_REDIS_DIALTIMEOUT")) {
            config.redis.dialtimeout = v;
        }
        if let Some(v) = non_empty(env("REGISTRY_REDIS_READTIMEOUT")) {
            config.redis.readtimeout = v;
        }
        if let Some(v) = non_empty(env("REGISTRY_REDIS_WRITETIMEOUT")) {
            config.redis.writetimeout = v;
        }
        if let Some(v) = non_empty(env("BERTH_REDIS_TTL")) {
            config.redis.ttl = v;
        }
        if let Some(v) = non_empty(env("REGISTRY_REDIS_TLS_ENABLED")) {
            if let Some(b) = parse_bool("REGISTRY_REDIS_TLS_ENABLED", &v, &mut problems) {
                config.redis.tls.enabled = b;
            }
        }
        if let Some(v) = non_empty(env("BERTH_REDIS_TLS_CAFILE")) {
            config.redis.tls.cafile = Some(PathBuf::from(v));
        }
        if let Some(v) = non_empty(env("BERTH_GC_INTERVAL")) {
            config.gc.interval = v;
        }
        let proxy = &mut config.proxy;
        for (key, slot) in [
            ("REGISTRY_PROXY_REMOTEURL", &mut proxy.remoteurl),
            ("REGISTRY_PROXY_USERNAME", &mut proxy.username),
            ("REGISTRY_PROXY_PASSWORD", &mut proxy.password),
            ("REGISTRY_PROXY_TTL", &mut proxy.ttl),
        ] {
            if let Some(v) = non_empty(env(key)) {
                *slot = Some(v);
            }
        }
        if let Some(v) = non_empty(env("BERTH_PROXY_CAFILE")) {
            proxy.cafile = Some(PathBuf::from(v));
        }
        if let Some(v) = non_empty(env("BERTH_PROXY_SPOOLDIRECTORY")) {
            proxy.spool_directory = Some(PathBuf::from(v));
        }
        if let Some(v) = non_empty(env("BERTH_PROXY_MAXFETCHES")) {
            match v.trim().parse() {
                Ok(n) => proxy.max_fetches = Some(n),
                Err(_) => problems.push(format!("BERTH_PROXY_MAXFETCHES: {v:?} is not a number")),
            }
        }
        if let Some(v) = non_empty(env("BERTH_GC_GRACE")) {
            config.gc.grace = v;
        }
        if let Some(v) = non_empty(env("BERTH_GC_DELETE_UNTAGGED")) {
            if let Some(b) = parse_bool("BERTH_GC_DELETE_UNTAGGED", &v, &mut problems) {
                config.gc.delete_untagged = b;
            }
        }
        if let Some(v) = non_empty(env("REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE")) {
            config.gc.upload_max_age = v;
        }
        apply_s3_env(&mut config.storage, env, &mut problems);
        problems.extend(config.validate());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// Every problem with this configuration, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.listen_addr().is_err() {
            p.push(format!(
                "http.addr: {:?} is not an address like 127.0.0.1:5000 or :5000",
                self.http.addr
            ));
        }
        if let Some(h) = &self.http.host {
            let ok = (h.starts_with("http://") || h.starts_with("https://"))
                && h.split("://")
                    .nth(1)
                    .is_some_and(|rest| !rest.is_empty() && !rest.contains(['?', '#', ' ']));
            if !ok {
                p.push(format!(
                    "http.host: {h:?} must be an absolute URL like https://registry.example:5043"
                ));
            }
        }
        if self.http.max_manifest_bytes == 0 {
            p.push("http.max_manifest_bytes: must be greater than 0".into());
        }
        match self.storage.driver {
            StorageDriver::Filesystem => {
                if self.storage.root_directory.as_os_str().is_empty() {
                    p.push("storage.root_directory: must not be empty".into());
                }
            }
            StorageDriver::S3 => p.extend(self.storage.s3.validate()),
        }
        p.extend(self.storage.cache_problems());
        p.extend(self.redis.problems(self.storage.cache_in_redis()));
        p.extend(self.gc.validate());
        let prom = &self.http.debug.prometheus;
        if !prom.path.starts_with('/') || prom.path.contains(['?', '#', ' ']) {
            p.push(format!(
                "http.debug.prometheus.path: {:?} must be a path like /metrics",
                prom.path
            ));
        }
        if prom.enabled && self.http.debug.addr.is_none() {
            p.push(
                "http.debug.prometheus.enabled: needs http.debug.addr (REGISTRY_HTTP_DEBUG_ADDR), \
                 where the metrics are served"
                    .into(),
            );
        }
        p.extend(self.notifications.problems());
        p.extend(self.mirror_problems());
        if self.http.debug.addr.is_some() && self.debug_addr().is_none_or(|a| a.is_err()) {
            p.push(format!(
                "http.debug.addr: {:?} is not an address like 127.0.0.1:5001 or :5001",
                self.http.debug.addr.as_deref().unwrap_or_default()
            ));
        }
        let sd = &self.health.storagedriver;
        match parse_duration(&sd.interval) {
            Ok(d) if d.is_zero() => {
                p.push("health.storagedriver.interval: must be greater than 0".into())
            }
            Ok(_) => {}
            Err(e) => p.push(format!("health.storagedriver.interval: {e}")),
        }
        if sd.threshold == 0 {
            p.push("health.storagedriver.threshold: must be at least 1".into());
        }
        for (i, f) in self.health.file.iter().enumerate() {
            if f.file.as_os_str().is_empty() {
                p.push(format!("health.file[{i}].file: must not be empty"));
            }
            match parse_duration(&f.interval) {
                Ok(d) if d.is_zero() => {
                    p.push(format!("health.file[{i}].interval: must be greater than 0"))
                }
                Ok(_) => {}
                Err(e) => p.push(format!("health.file[{i}].interval: {e}")),
            }
        }
        if let Err(e) = parse_min_free(&self.storage.min_free) {
            p.push(format!("storage.min_free: {e}"));
        }
        if !matches!(
            self.log.level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) {
            p.push(format!(
                "log.level: {:?} is not one of error, warn, info, debug, trace",
                self.log.level
            ));
        }
        p
    }

    /// A short description of where the data is, for the start-up log.
    pub fn storage_description(&self) -> String {
        match self.storage.driver {
            StorageDriver::Filesystem => self.storage.root_directory.display().to_string(),
            StorageDriver::S3 => {
                let s3 = &self.storage.s3;
                let o = s3.options();
                format!(
                    "s3://{}/{}{}",
                    s3.bucket,
                    s3.root_directory.trim_matches('/'),
                    o.endpoint.map(|e| format!(" at {e}")).unwrap_or_default()
                )
            }
        }
    }

    /// The listen address; `:5000` means all interfaces.
    pub fn listen_addr(&self) -> Result<SocketAddr, std::net::AddrParseError> {
        socket_addr(&self.http.addr)
    }

    /// The debug address, when one is configured; `:5001` means all interfaces.
    pub fn debug_addr(&self) -> Option<Result<SocketAddr, std::net::AddrParseError>> {
        self.http.debug.addr.as_deref().map(socket_addr)
    }

    /// The external base URL without a trailing slash, if configured.
    pub fn external_base(&self) -> Option<&str> {
        self.http.host.as_deref().map(|h| h.trim_end_matches('/'))
    }
}

impl NotificationsConfig {
    /// The endpoints events go to (those not disabled).
    pub fn active(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter().filter(|e| !e.disabled)
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.spool.maxevents == 0 {
            p.push("notifications.spool.maxevents: must be at least 1".into());
        }
        if let Some(node) = &self.spool.node {
            if node.is_empty()
                || node.len() > 64
                || !node
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
                || node.starts_with('.')
            {
                p.push(format!(
                    "notifications.spool.node: {node:?} must be 1 to 64 letters, digits, '.', '-' or '_'"
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            let key = format!("notifications.endpoints[{i}]");
            if e.name.is_empty() || e.name.len() > 64 || e.name.chars().any(|c| c.is_control()) {
                p.push(format!("{key}.name: must be 1 to 64 printable characters"));
            } else if !names.insert(e.name.as_str()) {
                p.push(format!("{key}.name: {:?} names two endpoints", e.name));
            }
            match http::Uri::try_from(e.url.as_str()) {
                Ok(u)
                    if matches!(u.scheme_str(), Some("http" | "https"))
                        && u.authority().is_some() => {}
                _ => p.push(format!(
                    "{key}.url: {:?} is not an http:// or https:// URL",
                    e.url
                )),
            }
            for (what, v) in [("timeout", &e.timeout), ("backoff", &e.backoff)] {
                if let Err(m) = parse_duration(v) {
                    p.push(format!("{key}.{what}: {m}"));
                }
            }
            for (name, values) in &e.headers {
                if http::HeaderName::try_from(name.as_str()).is_err()
                    || values
                        .iter()
                        .any(|v| http::HeaderValue::try_from(v.as_str()).is_err())
                {
                    p.push(format!("{key}.headers: {name:?} is not a valid header"));
                }
            }
            for a in &e.ignore.actions {
                if !EVENT_ACTIONS.contains(&a.as_str()) {
                    p.push(format!(
                        "{key}.ignore.actions: {a:?} is not one of push, pull, mount, delete"
                    ));
                }
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn durations_read_like_the_docs_say() {
        use std::time::Duration;
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("168h"), Ok(Duration::from_secs(604800)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        use crate::storage::fs::MinFree;
        assert_eq!(parse_min_free("auto"), Ok(MinFree::Auto));
        assert_eq!(parse_min_free("0"), Ok(MinFree::Bytes(0)));
        assert_eq!(parse_min_free("512MiB"), Ok(MinFree::Bytes(512 << 20)));
        assert_eq!(parse_min_free("2GB"), Ok(MinFree::Bytes(2_000_000_000)));
        assert_eq!(parse_min_free("5%"), Ok(MinFree::Percent(5.0)));
        for bad in ["", "x", "101%", "5 parsecs", "-1"] {
            assert!(parse_min_free(bad).is_err(), "{bad:?}");
        }
        assert_eq!(MinFree::Auto.bytes(10 << 30), (10u64 << 30) / 50);
        assert_eq!(MinFree::Auto.bytes(1 << 40), 1 << 30);
        for bad in ["", "h", "10", "1x", "-1s", "1.5h", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        let problems =
            Config::load(None, &|k| (k == "BERTH_GC_GRACE").then(|| "soon".into())).unwrap_err();
        assert!(
            problems.iter().any(|p| p.starts_with("gc.grace:")),
            "{problems:?}"
        );
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn mirrors_read_registry2s_proxy_variables_and_berths_own_table() {
        use std::time::Duration;
        let c = Config::load(
            None,
            &env_of(&[
                ("REGISTRY_PROXY_REMOTEURL", "https://registry-1.docker.io/"),
                ("REGISTRY_PROXY_USERNAME", "u"),
                ("REGISTRY_PROXY_PASSWORD", "hunter2-pw"),
                ("BERTH_PROXY_MAXFETCHES", "4"),
                ("BERTH_PROXY_SPOOLDIRECTORY", "/var/spool/berth"),
            ]),
        )
        .unwrap();
        let specs = c.mirror_specs();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].prefix, "");
        assert_eq!(specs[0].url, "https://registry-1.docker.io");
        assert_eq!(specs[0].namespace, "docker.io");
        assert_eq!(
            specs[0].credentials,
            Some(("u".into(), "hunter2-pw".into()))
        );
        assert_eq!(specs[0].ttl, Duration::from_secs(168 * 3600));
        assert_eq!(c.proxy.max_fetches, Some(4));
        assert!(
            !format!("{c:?}").contains("hunter2-pw"),
            "a password in the debug form: {c:?}"
        );

        let file = "[proxy]\nttl = \"10m\"\n\n[[mirrors]]\nprefix = \"hub/\"\nurl = \"https://registry-1.docker.io\"\n\n\
                    [[mirrors]]\nprefix = \"quay\"\nurl = \"https://quay.io\"\nttl = \"1h\"\nnamespace = \"quay.io\"\n";
        let c: Config = toml::from_str(file).unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let specs = c.mirror_specs();
        assert_eq!(
            specs
                .iter()
                .map(|s| (s.prefix.as_str(), s.namespace.as_str(), s.ttl))
                .collect::<Vec<_>>(),
            [
                ("hub", "docker.io", Duration::from_secs(600)),
                ("quay", "quay.io", Duration::from_secs(3600))
            ]
        );

        let bad = "[proxy]\nremoteurl = \"https://a.example\"\nttl = \"soon\"\nmax_fetches = 0\n\n\
                   [[mirrors]]\nprefix = \"\"\nurl = \"ftp://x\"\n\n[[mirrors]]\nprefix = \"a\"\nurl = \"https://b\"\nnamespace = \"x y\"\n\n\
                   [[mirrors]]\nprefix = \"a/b\"\nurl = \"https://user@c\"\n";
        let c: Config = toml::from_str(bad).unwrap();
        let p = c.validate();
        for expected in [
            "proxy.ttl:",
            "proxy.max_fetches: must be at least 1",
            "mirrors: not with proxy.remoteurl",
            "mirrors[0].prefix:",
            "mirrors[0].url:",
            "mirrors[1].namespace:",
            "mirrors[2].prefix: \"a/b\" overlaps the mirror at \"a\"",
            "mirrors[2].url:",
        ] {
            assert!(
                p.iter().any(|m| m.starts_with(expected)),
                "{expected} in {p:#?}"
            );
        }
        let bad = "[proxy]\nusername = \"u\"\n\n[[mirrors]]\nprefix = \"v6\"\nurl = \"http://[fd00::5]:5000\"\npassword = \"p\"\n";
        let c: Config = toml::from_str(bad).unwrap();
        let p = c.validate();
        for expected in [
            "proxy.username: set without proxy.remoteurl",
            "mirrors[0].password: set without a username",
        ] {
            assert!(
                p.iter().any(|m| m.starts_with(expected)),
                "{expected} in {p:#?}"
            );
        }
        let c: Config =
            toml::from_str("[[mirrors]]\nprefix = \"v6\"\nurl = \"http://[fd00::5]:5000\"\n")
                .unwrap();
        assert!(
            c.validate()
                .iter()
                .any(|m| m.starts_with("mirrors[0].namespace: the URL's host")),
            "{:?}",
            c.validate()
        );
        let c: Config = toml::from_str(
            "[[mirrors]]\nprefix = \"hub\"\nurl = \"https://registry-1.docker.io:443\"\n",
        )
        .unwrap();
        assert_eq!(c.mirror_specs()[0].namespace, "docker.io");
        let p = Config::load(None, &env_of(&[("BERTH_PROXY_MAXFETCHES", "many")])).unwrap_err();
        assert!(
            p.iter().any(|m| m.starts_with("BERTH_PROXY_MAXFETCHES:")),
            "{p:?}"
        );
    }

    #[test]
    fn the_cache_is_on_for_s3_off_for_a_filesystem_and_redis_needs_an_address() {
        let fs = Config::load(None, &env_of(&[])).unwrap();
        assert_eq!(fs.storage.cache_limits(), None);
        let s3 = [
            ("REGISTRY_STORAGE", "s3"),
            ("REGISTRY_STORAGE_S3_BUCKET", "b"),
            ("REGISTRY_STORAGE_S3_ROOTDIRECTORY", "/r/"),
        ];
        let c = Config::load(None, &env_of(&s3)).unwrap();
        let limits = c.storage.cache_limits().expect("on by default on S3");
        assert_eq!(limits.ttl, std::time::Duration::from_secs(5));
        assert_eq!(limits.max_bytes, 32 << 20);
        assert!(!c.storage.cache_in_redis());
        assert_eq!(c.storage.cache_namespace(), "s3:aws:us-east-1/b/r");
        let off = Config::load(
            None,
            &env_of(&[("REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR", "none")]),
        )
        .unwrap();
        assert_eq!(off.storage.cache_limits(), None);
        let redis = Config::load(
            None,
            &env_of(&[
                ("REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR", "redis"),
                ("REGISTRY_REDIS_ADDR", "cache:6379"),
                ("REGISTRY_REDIS_PASSWORD", "s3cret"),
                ("REGISTRY_REDIS_DB", "2"),
                ("REGISTRY_REDIS_READTIMEOUT", "5ms"),
            ]),
        )
        .unwrap();
        assert!(redis.storage.cache_in_redis());
        let o = redis.redis.options().unwrap();
        assert_eq!((o.addr.as_str(), o.db), ("cache:6379", 2));
        assert_eq!(o.password.as_deref(), Some("s3cret"));
        assert_eq!(o.read_timeout, std::time::Duration::from_millis(5));
        assert!(
            !format!("{redis:?}").contains("s3cret"),
            "the password is printed"
        );
        let problems = Config::load(
            None,
            &env_of(&[
                ("REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR", "redis"),
                ("BERTH_STORAGE_CACHE_MAXBYTES", "lots"),
                ("REGISTRY_REDIS_DB", "x"),
            ]),
        )
        .unwrap_err();
        for key in [
            "redis.addr:",
            "storage.cache.max_bytes:",
            "REGISTRY_REDIS_DB:",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(key)),
                "{key} {problems:?}"
            );
        }
        let problems = Config::load(
            None,
            &env_of(&[
                ("REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR", "memcached"),
                ("REGISTRY_REDIS_ADDR", "nohost"),
            ]),
        )
        .unwrap_err();
        for key in ["storage.cache.blobdescriptor:", "redis.addr:"] {
            assert!(
                problems.iter().any(|p| p.starts_with(key)),
                "{key} {problems:?}"
            );
        }
    }

    #[test]
    fn defaults_and_env() {
        let c = Config::load(None, &env_of(&[])).unwrap();
        assert_eq!(c, Config::default());
        let c = Config::load(
            None,
            &env_of(&[
                ("REGISTRY_HTTP_ADDR", ":5001"),
                ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "/d"),
                ("REGISTRY_STORAGE_DELETE_ENABLED", "true"),
                ("REGISTRY_HTTP_HOST", "https://r.example:5043"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen_addr().unwrap().port(), 5001);
        assert_eq!(c.storage.root_directory, PathBuf::from("/d"));
        assert!(c.storage.delete_enabled);
        assert_eq!(c.external_base(), Some("https://r.example:5043"));
    }

    #[test]
    fn every_problem_is_reported() {
        let e = Config::load(
            None,
            &env_of(&[
                ("REGISTRY_HTTP_ADDR", "nope"),
                ("REGISTRY_STORAGE_DELETE_ENABLED", "maybe"),
                ("REGISTRY_HTTP_HOST", "registry"),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("http.addr")));
        assert!(e
            .iter()
            .any(|m| m.starts_with("REGISTRY_STORAGE_DELETE_ENABLED")));
        assert!(e.iter().any(|m| m.starts_with("http.host")));
    }

    #[test]
    fn s3_from_registry2_env_and_aws_env() {
        let c = Config::load(
            None,
            &env_of(&[
                ("REGISTRY_STORAGE", "s3"),
                ("REGISTRY_STORAGE_S3_BUCKET", "b"),
                ("REGISTRY_STORAGE_S3_REGIONENDPOINT", "127.0.0.1:9000"),
                ("REGISTRY_STORAGE_S3_SECURE", "false"),
                ("REGISTRY_STORAGE_S3_ROOTDIRECTORY", "/reg"),
                ("REGISTRY_STORAGE_S3_CHUNKSIZE", "6291456"),
                ("AWS_ACCESS_KEY_ID", "k"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
                ("AWS_DEFAULT_REGION", "eu-west-1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.storage.driver, StorageDriver::S3);
        let o = c.storage.s3.options();
        assert_eq!(o.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(o.force_path_style && o.allow_http);
        assert_eq!(o.region, "eu-west-1");
        assert_eq!(o.chunk_size, 6 << 20);
        assert_eq!(
            (o.access_key.as_deref(), o.secret_key.as_deref()),
            (Some("k"), Some("s"))
        );
        // registry:2's own keys win over the AWS ones; no endpoint means AWS, virtual-hosted, HTTPS.
        let c = Config::load(
            None,
            &env_of(&[
                ("REGISTRY_STORAGE", "s3"),
                ("REGISTRY_STORAGE_S3_BUCKET", "b"),
                ("REGISTRY_STORAGE_S3_ACCESSKEY", "rk"),
                ("REGISTRY_STORAGE_S3_SECRETKEY", "rs"),
                ("AWS_ACCESS_KEY_ID", "k"),
                ("AWS_SECRET_ACCESS_KEY", "s"),
            ]),
        )
        .unwrap();
        let o = c.storage.s3.options();
        assert_eq!(o.access_key.as_deref(), Some("rk"));
        assert!(!o.force_path_style && !o.allow_http && o.endpoint.is_none());
        assert_eq!(o.region, "us-east-1");
    }

    #[test]
    fn s3_problems_are_reported() {
        let e = Config::load(
            None,
            &env_of(&[
                ("REGISTRY_STORAGE", "s3"),
                ("REGISTRY_STORAGE_S3_CHUNKSIZE", "1024"),
                ("REGISTRY_STORAGE_S3_ACCESSKEY", "k"),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("storage.s3.bucket")));
        assert!(e.iter().any(|m| m.starts_with("storage.s3.chunk_size")));
        assert!(e.iter().any(|m| m.starts_with("storage.s3.access_key")));
        let e = Config::load(None, &env_of(&[("REGISTRY_STORAGE", "gcs")])).unwrap_err();
        assert!(e[0].starts_with("REGISTRY_STORAGE:"), "{e:?}");
    }

    #[test]
    fn s3_table_in_toml() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[storage]\ndriver = \"s3\"\n[storage.s3]\nbucket = \"reg\"\nregion_endpoint = \"https://s3.example\"\nforce_path_style = false\nroot_directory = \"r\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&f), &env_of(&[])).unwrap();
        let o = c.storage.s3.options();
        assert_eq!(o.bucket, "reg");
        assert!(!o.force_path_style && !o.allow_http);
        assert_eq!(c.storage_description(), "s3://reg/r at https://s3.example");
    }

    #[test]
    fn file_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[http]\naddr = \"127.0.0.1:1\"\nbogus = 1\n").unwrap();
        let e = Config::load(Some(&f), &env_of(&[])).unwrap_err();
        assert!(e[0].contains("c.toml: line 3:"), "{e:?}");
    }

    #[test]
    fn notifications_read_registry_2_keys_and_every_problem_is_named() {
        let good: Config = toml::from_str(
            r#"
[http.debug]
addr = "127.0.0.1:5001"
[http.debug.prometheus]
enabled = true
path = "/m"
[notifications.events]
includereferences = true
[[notifications.endpoints]]
name = "ci"
url = "https://hooks.example/registry"
headers = { Authorization = ["Bearer x"], X-Two = ["a", "b"] }
timeout = "500ms"
threshold = 5
backoff = "2s"
ignoredmediatypes = ["application/octet-stream"]
ignore = { mediatypes = ["text/plain"], actions = ["pull"] }
[[notifications.endpoints]]
name = "off"
url = "http://x/"
disabled = true
"#,
        )
        .unwrap();
        assert_eq!(good.validate(), Vec::<String>::new());
        assert_eq!(good.notifications.active().count(), 1);
        assert_eq!(good.notifications.endpoints[0].headers["X-Two"], ["a", "b"]);
        assert_eq!(good.notifications.spool.maxevents, 100_000);
        let bad: Config = toml::from_str(
            r#"
[http.debug.prometheus]
enabled = true
path = "metrics"
[notifications.spool]
maxevents = 0
node = "../x"
[[notifications.endpoints]]
name = "a"
url = "ftp://x/"
timeout = "soon"
ignore = { actions = ["pul"] }
[[notifications.endpoints]]
name = "a"
url = "http://y/"
headers = { "bad header" = ["v"] }
"#,
        )
        .unwrap();
        let p = bad.validate().join("\n");
        for want in [
            "http.debug.prometheus.path",
            "http.debug.prometheus.enabled: needs http.debug.addr",
            "notifications.spool.maxevents",
            "notifications.spool.node",
            "notifications.endpoints[0].url",
            "notifications.endpoints[0].timeout",
            "notifications.endpoints[0].ignore.actions: \"pul\"",
            "notifications.endpoints[1].name: \"a\" names two endpoints",
            "notifications.endpoints[1].headers",
        ] {
            assert!(p.contains(want), "{want} missing from:\n{p}");
        }
        let env = Config::load(
            None,
            &env_of(&[
                ("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0"),
                ("REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED", "true"),
                ("REGISTRY_NOTIFICATIONS_EVENTS_INCLUDEREFERENCES", "true"),
                ("BERTH_NOTIFICATIONS_SPOOL_MAXEVENTS", "7"),
                ("BERTH_NOTIFICATIONS_SPOOL_NODE", "node-1"),
            ]),
        )
        .unwrap();
        assert!(env.http.debug.prometheus.enabled);
        assert!(env.notifications.events.includereferences);
        assert_eq!(env.notifications.spool.maxevents, 7);
        assert_eq!(env.notifications.spool.node.as_deref(), Some("node-1"));
    }
}

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
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Root of the filesystem storage (env `REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY`).
    pub root_directory: PathBuf,
    /// Allow DELETE of blobs, manifests and tags (env `REGISTRY_STORAGE_DELETE_ENABLED`).
    pub delete_enabled: bool,
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
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            root_directory: PathBuf::from("data"),
            delete_enabled: false,
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
    ("REGISTRY_LOG_LEVEL", "log.level"),
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
        if self.storage.root_directory.as_os_str().is_empty() {
            p.push("storage.root_directory: must not be empty".into());
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

    /// The listen address; `:5000` means all interfaces.
    pub fn listen_addr(&self) -> Result<SocketAddr, std::net::AddrParseError> {
        let a = &self.http.addr;
        if let Some(port) = a.strip_prefix(':') {
            format!("0.0.0.0:{port}").parse()
        } else {
            a.parse()
        }
    }

    /// The external base URL without a trailing slash, if configured.
    pub fn external_base(&self) -> Option<&str> {
        self.http.host.as_deref().map(|h| h.trim_end_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
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
    fn file_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[http]\naddr = \"127.0.0.1:1\"\nbogus = 1\n").unwrap();
        let e = Config::load(Some(&f), &env_of(&[])).unwrap_err();
        assert!(e[0].contains("c.toml: line 3:"), "{e:?}");
    }
}

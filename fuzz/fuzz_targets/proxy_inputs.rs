//! What berth-proxy reads besides access files: htpasswd files (from the operator), `Authorization: Basic`
//! headers (from any client), user-agent rules and user agents, and its TOML configuration. No input panics;
//! Basic credentials round-trip; a user-agent decision is the same every time it is asked; a parsed htpasswd
//! file holds each user's first well-formed entry.
#![no_main]

use base64::Engine as _;
use berth_proxy::authn::{parse_basic, parse_line, HashKind, Htpasswd};
use berth_proxy::filter::UserAgentFilter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_basic(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // htpasswd: the first well-formed, supported entry of each user is the one kept.
    let (file, warnings) = Htpasswd::parse(text);
    let mut seen = std::collections::HashSet::new();
    for raw in text.lines() {
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if let Ok((user, hash)) = parse_line(line) {
            if HashKind::detect(hash) != HashKind::Unsupported && seen.insert(user.to_string()) {
                assert_eq!(file.hash_of(user), Some(hash), "{user:?}");
            }
        }
    }
    assert_eq!(file.len(), seen.len());
    // At most two per line: an insecure scheme, and a user seen before.
    assert!(warnings.len() <= 2 * text.lines().count());
    // Basic credentials: what a client encodes is what the proxy decodes.
    let (user, password) = text.split_once('\0').unwrap_or((text, ""));
    if !user.is_empty() && !user.contains(':') {
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let got = parse_basic(header.as_bytes()).expect("a well-formed Basic header");
        assert_eq!((got.user.as_str(), got.password.as_str()), (user, password));
    }
    // User-agent rules: one rule per line, the last line is the agent.
    let mut lines: Vec<&str> = text.lines().collect();
    if let Some(agent) = lines.pop() {
        if let Ok(filter) = UserAgentFilter::new(&lines) {
            assert_eq!(filter.refuses(agent), filter.refuses(agent));
        }
    }
    // The configuration file.
    if let Ok(config) = toml::from_str::<berth_proxy::config::Config>(text) {
        let _ = config.validate();
    }
});

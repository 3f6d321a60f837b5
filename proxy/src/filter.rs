//! User-agent rules, written as in nginx (`if ($http_user_agent ~ "...")`): a client whose `User-Agent` matches
//! a rule is answered 404 before authentication, the way registry deployments turned away Docker clients that
//! cannot speak the v2 protocol.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fancy_regex::Regex;

/// One rule: a regular expression (look-around supported) matched against the whole `User-Agent` value.
#[derive(Debug, Clone)]
pub struct UserAgentRule {
    regex: Regex,
}

impl UserAgentRule {
    /// Parse a rule. A leading `~` is ignored and `~*` makes the rule case-insensitive, as in nginx.
    pub fn parse(rule: &str) -> Result<Self, String> {
        let rule = rule.trim();
        let pattern = if let Some(rest) = rule.strip_prefix("~*") {
            format!("(?i){}", rest.trim_start())
        } else if let Some(rest) = rule.strip_prefix('~') {
            rest.trim_start().to_string()
        } else {
            rule.to_string()
        };
        let pattern = pattern.trim_matches('"').to_string();
        Regex::new(&pattern)
            .map(|regex| UserAgentRule { regex })
            .map_err(|e| format!("{rule:?} is not a valid regular expression: {e}"))
    }

    /// Whether `user_agent` matches. A regex that gives up (backtrack limit) counts as no match.
    pub fn matches(&self, user_agent: &str) -> bool {
        self.regex.is_match(user_agent).unwrap_or(false)
    }
}

/// The list of rules; a request whose user agent matches any of them is refused.
#[derive(Debug, Clone, Default)]
pub struct UserAgentFilter {
    rules: Vec<UserAgentRule>,
    /// Verdicts by user agent: a client sends the same one on every request, and a rule with look-around
    /// runs a backtracking matcher (microseconds per request).
    verdicts: Arc<Mutex<HashMap<String, bool>>>,
}

/// At most this many verdicts are remembered (then the map starts again), each for a user agent of at most
/// [`VERDICT_MAX_LEN`] bytes; longer ones are matched every time.
const VERDICT_CAPACITY: usize = 1024;
const VERDICT_MAX_LEN: usize = 256;

impl UserAgentFilter {
    /// Build from rule strings (see [`UserAgentRule::parse`]).
    pub fn new<S: AsRef<str>>(rules: &[S]) -> Result<Self, String> {
        let rules = rules
            .iter()
            .map(|r| UserAgentRule::parse(r.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(UserAgentFilter {
            rules,
            verdicts: Arc::default(),
        })
    }

    /// Whether a request with this `User-Agent` (empty when absent) is refused.
    pub fn refuses(&self, user_agent: &str) -> bool {
        if self.rules.is_empty() {
            return false;
        }
        if user_agent.len() > VERDICT_MAX_LEN {
            return self.rules.iter().any(|r| r.matches(user_agent));
        }
        let lock = || self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&refused) = lock().get(user_agent) {
            return refused;
        }
        let refused = self.rules.iter().any(|r| r.matches(user_agent));
        let mut verdicts = lock();
        if verdicts.len() >= VERDICT_CAPACITY {
            verdicts.clear();
        }
        verdicts.insert(user_agent.to_string(), refused);
        refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_USER_AGENT_RULE;

    #[test]
    fn default_rule_vectors() {
        let f = UserAgentFilter::new(&[DEFAULT_USER_AGENT_RULE]).unwrap();
        assert!(f.refuses("docker/1.5.0 go/go1.4.1 git-commit/a8a31ef kernel/3.13"));
        assert!(f.refuses("docker/1.3.2 go/go1.3.3"));
        assert!(f.refuses("docker/1.4.1"));
        assert!(f.refuses("Go 1.1 package http"));
        assert!(!f.refuses("docker/1.5.0-dev go/go1.4.1"));
        assert!(!f.refuses("docker/1.6.0 go/go1.4.2"));
        assert!(!f.refuses("Go-http-client/1.1"));
        assert!(!f.refuses("docker/27.3.1 go/go1.22.7 git-commit/41ca978 kernel/6.8"));
        assert!(!f.refuses(""));
    }

    /// Remembered verdicts are the rules' verdicts, the map stays bounded, and long user agents (never
    /// remembered) are still matched.
    #[test]
    fn remembered_verdicts_match_the_rules() {
        let f = UserAgentFilter::new(&[DEFAULT_USER_AGENT_RULE]).unwrap();
        for round in 0..2 {
            for i in 0..1500 {
                let refused = format!("docker/1.4.{i}");
                let allowed = format!("docker/20.10.{i} go/go1.19");
                assert!(f.refuses(&refused), "round {round}: {refused}");
                assert!(!f.refuses(&allowed), "round {round}: {allowed}");
            }
        }
        assert!(f.verdicts.lock().unwrap().len() <= VERDICT_CAPACITY);
        let long = format!("docker/1.3.0 {}", "x".repeat(400));
        assert!(f.refuses(&long) && f.refuses(&long));
        assert!(!f.verdicts.lock().unwrap().contains_key(&long));
    }

    #[test]
    fn nginx_prefixes() {
        let f = UserAgentFilter::new(&["~* ^curl"]).unwrap();
        assert!(f.refuses("CURL/8.0"));
        let f = UserAgentFilter::new(&["~ \"^curl\""]).unwrap();
        assert!(f.refuses("curl/8.0"));
        assert!(!f.refuses("CURL/8.0"));
        assert!(UserAgentFilter::new(&["(unclosed"]).is_err());
    }
}

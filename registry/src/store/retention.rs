//! Retention policies: which tags a collection removes before it marks (docs/gc.md, "Retention").
//!
//! A rule applies to the repositories its glob matches (the first matching rule wins). A tag is removed when
//! it does not match the rule's `keep_tags` regex, is not among the rule's `keep_last` most recently pushed
//! other tags (protected ones take no place), and (when `older_than` is set) was pushed longer ago than that. A rule with neither `keep_last` nor
//! `older_than` removes nothing, and without rules nothing is removed.

use std::time::{Duration, SystemTime};

use crate::config::{parse_duration, RetentionRule};

/// One compiled rule.
#[derive(Debug)]
struct Rule {
    glob: String,
    keep_last: Option<usize>,
    keep_tags: Option<regex::Regex>,
    older_than: Option<Duration>,
}

/// The compiled retention rules of a configuration.
#[derive(Debug, Default)]
pub struct Retention {
    rules: Vec<Rule>,
}

pub use berth_glob::glob_matches;

impl Retention {
    /// Compiles the rules of a configuration; the error names the rule and the problem.
    pub fn compile(rules: &[RetentionRule]) -> Result<Retention, Vec<String>> {
        let mut problems = Vec::new();
        let mut out = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let key = format!("gc.retention[{i}]");
            if r.repositories.trim().is_empty() {
                problems.push(format!(
                    "{key}.repositories: must be a glob like \"team/*\" or \"**\""
                ));
            }
            let keep_tags = match r.keep_tags.as_deref().map(regex::Regex::new) {
                Some(Ok(re)) => Some(re),
                Some(Err(e)) => {
                    let e = e.to_string();
                    let e = e.split_whitespace().collect::<Vec<_>>().join(" ");
                    problems.push(format!("{key}.keep_tags: not a regular expression: {e}"));
                    None
                }
                None => None,
            };
            let older_than = match r.older_than.as_deref().map(parse_duration) {
                Some(Ok(d)) => Some(d),
                Some(Err(e)) => {
                    problems.push(format!("{key}.older_than: {e}"));
                    None
                }
                None => None,
            };
            if r.keep_last.is_none() && r.older_than.is_none() {
                problems.push(format!(
                    "{key}: removes nothing; set keep_last, older_than, or both"
                ));
            }
            out.push(Rule {
                glob: r.repositories.trim().to_string(),
                keep_last: r.keep_last,
                keep_tags,
                older_than,
            });
        }
        if problems.is_empty() {
            Ok(Retention { rules: out })
        } else {
            Err(problems)
        }
    }

    /// Whether any rule is configured.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The tags of `repo` to remove, given each tag's push time (`None`: unknown, never removed).
    pub fn select(
        &self,
        repo: &str,
        tags: &[(String, Option<SystemTime>)],
        now: SystemTime,
    ) -> Vec<String> {
        let Some(rule) = self.rules.iter().find(|r| glob_matches(&r.glob, repo)) else {
            return Vec::new();
        };
        let protected = |t: &str| rule.keep_tags.as_ref().is_some_and(|re| re.is_match(t));
        // Protected tags are kept whatever their age, and take no `keep_last` place.
        let candidates: Vec<&(String, Option<SystemTime>)> =
            tags.iter().filter(|(t, _)| !protected(t)).collect();
        let mut dated: Vec<(&String, SystemTime)> = candidates
            .iter()
            .filter_map(|(t, when)| when.map(|w| (t, w)))
            .collect();
        // Newest first; among equal times, the greater name counts as newer (a stable order).
        dated.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(a.0)));
        // Undated tags count among the newest: they use up `keep_last` places first.
        let undated = candidates.len() - dated.len();
        let keep_last = rule.keep_last.map(|n| n.saturating_sub(undated));
        let mut out: Vec<String> = dated
            .iter()
            .enumerate()
            .filter(|(i, (_, when))| {
                let beyond_last = keep_last.is_none_or(|n| *i >= n);
                let old = rule
                    .older_than
                    .is_none_or(|age| now.duration_since(*when).unwrap_or_default() > age);
                beyond_last && old
            })
            .map(|(_, (tag, _))| (*tag).clone())
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        keep_last: Option<usize>,
        keep_tags: Option<&str>,
        older_than: Option<&str>,
    ) -> Retention {
        Retention::compile(&[RetentionRule {
            repositories: "team/*".into(),
            keep_last,
            keep_tags: keep_tags.map(String::from),
            older_than: older_than.map(String::from),
        }])
        .unwrap()
    }

    #[test]
    fn rules_keep_the_newest_the_protected_and_the_young() {
        let now = SystemTime::now();
        let day = Duration::from_secs(86400);
        let tags: Vec<(String, Option<SystemTime>)> = (0..6)
            .map(|i| (format!("v{i}"), Some(now - day * (10 - i as u32))))
            .chain([
                ("latest".to_string(), Some(now - day * 20)),
                ("x".to_string(), None),
            ])
            .collect();
        // Keep the 3 newest (x is undated: it takes one place), and `latest`.
        let r = rule(Some(3), Some("^latest$"), None);
        assert_eq!(r.select("team/app", &tags, now), ["v0", "v1", "v2", "v3"]);
        // Other repositories are not touched.
        assert!(r.select("other/app", &tags, now).is_empty());
        // Older than 7 days: v0..v2 are 8..10 days old; latest is protected.
        let r = rule(None, Some("^latest$"), Some("7d"));
        assert_eq!(r.select("team/app", &tags, now), ["v0", "v1", "v2"]);
        // Both: old and beyond the 5 newest.
        let r = rule(Some(5), None, Some("7d"));
        assert_eq!(r.select("team/app", &tags, now), ["latest", "v0", "v1"]);
        // A protected tag pushed last takes no `keep_last` place: the newest other tag stays too.
        let fresh: Vec<(String, Option<SystemTime>)> = tags
            .iter()
            .filter(|(t, _)| t != "x")
            .map(|(t, w)| (t.clone(), if t == "latest" { Some(now) } else { *w }))
            .collect();
        let r = rule(Some(1), Some("^latest$"), None);
        assert_eq!(
            r.select("team/app", &fresh, now),
            ["v0", "v1", "v2", "v3", "v4"]
        );
        // No rule: nothing.
        assert!(Retention::default()
            .select("team/app", &tags, now)
            .is_empty());
    }

    #[test]
    fn bad_rules_are_reported_with_their_key() {
        let err = Retention::compile(&[
            RetentionRule {
                repositories: "a/*".into(),
                keep_last: None,
                keep_tags: Some("(".into()),
                older_than: Some("soon".into()),
            },
            RetentionRule {
                repositories: String::new(),
                keep_last: None,
                keep_tags: None,
                older_than: None,
            },
        ])
        .unwrap_err();
        assert!(
            err.iter()
                .any(|e| e.starts_with("gc.retention[0].keep_tags:")),
            "{err:?}"
        );
        assert!(
            err.iter()
                .any(|e| e.starts_with("gc.retention[0].older_than:")),
            "{err:?}"
        );
        assert!(
            err.iter()
                .any(|e| e.starts_with("gc.retention[1]: removes nothing")),
            "{err:?}"
        );
        assert!(
            err.iter().all(|e| !e.contains('\n')),
            "one line each: {err:?}"
        );
        assert!(
            err.iter()
                .any(|e| e.starts_with("gc.retention[1].repositories:")),
            "{err:?}"
        );
    }
}

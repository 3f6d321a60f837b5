//! The access file (`BERTH_ACL`): groups and ordered rules, parsed with the line of every problem, and the
//! decision for (user, repository, action).
//!
//! ```toml
//! [groups]
//! devs = ["alice", "bob"]
//!
//! [[rule]]
//! repos = "public/**"          # * within one segment, ** across segments, ? one character
//! pull = ["anonymous", "*"]    # a user, "@group", "*" (any authenticated user), "anonymous"
//! push = ["@devs"]
//! delete = []
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};

use berth_glob::{Glob, RepoFilter};
use serde::Deserialize;
use toml::Spanned;

use super::request::Action;

/// A problem in an access file, with its line (1-based; 0 when the file has no lines to point at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesError {
    /// The line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Who an action is given to in one rule.
#[derive(Debug, Default, Clone)]
struct Principals {
    anonymous: bool,
    authenticated: bool,
    users: HashSet<Box<str>>,
}

impl Principals {
    fn admits(&self, user: Option<&str>) -> bool {
        match user {
            None => self.anonymous,
            Some(u) => self.authenticated || self.users.contains(u),
        }
    }
}

/// One compiled rule.
#[derive(Debug, Clone)]
struct Rule {
    glob: Glob,
    pull: Principals,
    push: Principals,
    delete: Principals,
}

impl Rule {
    fn principals(&self, action: Action) -> &Principals {
        match action {
            Action::Pull => &self.pull,
            Action::Push => &self.push,
            Action::Delete => &self.delete,
        }
    }
}

/// The compiled rules of an access file: the first rule whose glob matches a repository decides; a repository
/// no rule matches is closed to everyone.
#[derive(Debug, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    anonymous_pulls: bool,
    /// Which rule decides for a repository (whoever asks), remembered: a request costs one lookup however
    /// many rules there are. Bounded; it lives and dies with these rules.
    deciding: std::sync::RwLock<HashMap<Box<str>, Option<u32>>>,
}

/// Most repositories whose deciding rule is remembered; past it the memory starts again.
const DECIDING_MAX: usize = 16_384;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileText {
    #[serde(default)]
    groups: BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    rule: Vec<RuleText>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleText {
    repos: Spanned<String>,
    #[serde(default)]
    pull: Vec<Spanned<String>>,
    #[serde(default)]
    push: Vec<Spanned<String>>,
    #[serde(default)]
    delete: Vec<Spanned<String>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Whether `name` can be a user name of an htpasswd file (no `:`, no spaces or control characters).
fn valid_user(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| (c.is_ascii_graphic() && c != ':') || (!c.is_ascii() && !c.is_control()))
}

impl Rules {
    /// Parses an access file; the error names the line and the problem.
    pub fn parse(text: &str) -> Result<Rules, RulesError> {
        let file: FileText = toml::from_str(text).map_err(|e| RulesError {
            line: e.span().map_or(0, |s| line_of(text, s.start)),
            message: e.message().trim().to_string(),
        })?;
        let err = |offset: usize, message: String| RulesError {
            line: line_of(text, offset),
            message,
        };
        let mut groups: HashMap<&str, Vec<&str>> = HashMap::new();
        for (name, members) in &file.groups {
            if !valid_user(name) {
                return Err(err(
                    members.span().start,
                    format!("group name {name:?} is not valid"),
                ));
            }
            let mut list = Vec::new();
            for m in members.get_ref() {
                if !valid_user(m.get_ref()) || m.get_ref().starts_with('@') || m.get_ref() == "*" {
                    return Err(err(
                        m.span().start,
                        format!(
                            "group {name:?}: {:?} is not a user name (groups hold user names only)",
                            m.get_ref()
                        ),
                    ));
                }
                list.push(m.get_ref().as_str());
            }
            groups.insert(name.as_str(), list);
        }
        let principals = |list: &[Spanned<String>]| -> Result<Principals, RulesError> {
            let mut p = Principals::default();
            for item in list {
                let s = item.get_ref().as_str();
                match s {
                    "anonymous" => p.anonymous = true,
                    "*" => p.authenticated = true,
                    _ => {
                        if let Some(g) = s.strip_prefix('@') {
                            let members = groups.get(g).ok_or_else(|| {
                                err(item.span().start, format!("unknown group {s:?}"))
                            })?;
                            p.users.extend(members.iter().map(|m| Box::from(*m)));
                        } else if valid_user(s) {
                            p.users.insert(s.into());
                        } else {
                            return Err(err(
                                item.span().start,
                                format!(
                                    "{s:?} is not a principal (a user name, \"@group\", \"*\" or \"anonymous\")"
                                ),
                            ));
                        }
                    }
                }
            }
            Ok(p)
        };
        let mut rules = Vec::new();
        for r in &file.rule {
            let glob = Glob::new(r.repos.get_ref())
                .map_err(|m| err(r.repos.span().start, format!("repos: {m}")))?;
            rules.push(Rule {
                glob,
                pull: principals(&r.pull)?,
                push: principals(&r.push)?,
                delete: principals(&r.delete)?,
            });
        }
        let mut parsed = Rules {
            rules,
            anonymous_pulls: false,
            deciding: Default::default(),
        };
        // Only a rule anonymous clients can reach counts (not one after a `**` that decides first).
        parsed.anonymous_pulls = !parsed.pull_filter(None).allows_none();
        Ok(parsed)
    }

    /// The rule that decides for `repo`, if any.
    fn deciding(&self, repo: &str) -> Option<&Rule> {
        let known = self
            .deciding
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(repo)
            .copied();
        let index = match known {
            Some(i) => i,
            None => {
                let i = self
                    .rules
                    .iter()
                    .position(|r| r.glob.matches(repo))
                    .and_then(|i| u32::try_from(i).ok());
                let mut map = self.deciding.write().unwrap_or_else(|e| e.into_inner());
                if map.len() >= DECIDING_MAX {
                    map.clear();
                }
                map.insert(repo.into(), i);
                i
            }
        };
        index.and_then(|i| self.rules.get(i as usize))
    }

    /// Whether `user` (`None`: no credentials) may do `action` on `repo`: the first rule whose glob matches
    /// decides; none matching means no.
    pub fn allows(&self, user: Option<&str>, repo: &str, action: Action) -> bool {
        self.deciding(repo)
            .is_some_and(|r| r.principals(action).admits(user))
    }

    /// The repositories `user` may pull, as a filter for listings.
    pub fn pull_filter(&self, user: Option<&str>) -> RepoFilter {
        RepoFilter::new(
            self.rules
                .iter()
                .map(|r| (r.glob.clone(), r.pull.admits(user))),
        )
    }

    /// Whether some rule lets anonymous clients pull (then they get a token challenge they can answer
    /// without credentials).
    pub fn anonymous_pulls(&self) -> bool {
        self.anonymous_pulls
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules (everything is closed).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../docs/acl.example.toml");

    #[test]
    fn first_match_decides_with_groups_and_principals() {
        use Action::*;
        let r = Rules::parse(EXAMPLE).unwrap();
        assert!(r.allows(None, "public/app", Pull));
        assert!(!r.allows(None, "public/app", Push));
        assert!(
            r.allows(Some("carol"), "public/app", Pull),
            "* is any authenticated user"
        );
        assert!(r.allows(Some("bob"), "public/app", Push));
        assert!(!r.allows(Some("robot"), "public/app", Push));
        assert!(r.allows(Some("robot"), "team/x/y", Pull));
        assert!(r.allows(Some("robot"), "team/x", Push));
        assert!(
            !r.allows(Some("bob"), "team/x", Push),
            "first match, not the later ** rule"
        );
        assert!(!r.allows(Some("carol"), "team/x", Pull));
        assert!(r.allows(Some("alice"), "team/x", Delete));
        assert!(!r.allows(Some("robot"), "team/x", Delete));
        assert!(r.allows(Some("carol"), "other", Push));
        assert!(!r.allows(None, "other", Pull), "anonymous is not *");
        assert!(
            !r.allows(Some("carol"), "other", Delete),
            "no one listed: no one"
        );
        assert!(
            r.allows(Some("carol"), "team", Pull),
            "team/** does not match team itself"
        );
        assert!(r.anonymous_pulls());
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn anonymous_rules_after_a_catch_all_do_not_count() {
        let r = Rules::parse(
            "[[rule]]\nrepos = \"**\"\npull = [\"*\"]\n[[rule]]\nrepos = \"p/**\"\npull = [\"anonymous\"]\n",
        )
        .unwrap();
        assert!(!r.anonymous_pulls());
    }

    #[test]
    fn no_matching_rule_means_closed() {
        let r = Rules::parse("[[rule]]\nrepos = \"a/*\"\npull = [\"*\"]\n").unwrap();
        assert!(r.allows(Some("x"), "a/b", Action::Pull));
        assert!(!r.allows(Some("x"), "a/b/c", Action::Pull));
        assert!(!r.allows(Some("x"), "b", Action::Pull));
        assert!(!r.anonymous_pulls());
        assert!(Rules::parse("").unwrap().is_empty());
    }

    #[test]
    fn pull_filters_follow_the_rules() {
        let r = Rules::parse(EXAMPLE).unwrap();
        assert_eq!(r.pull_filter(None).to_string(), "+public/**,-team/**,-**");
        assert_eq!(
            r.pull_filter(Some("carol")).to_string(),
            "+public/**,-team/**,+**"
        );
        assert_eq!(
            r.pull_filter(Some("bob")).to_string(),
            "+public/**,+team/**,+**"
        );
        assert!(r.pull_filter(Some("bob")).allows_all());
    }

    #[test]
    fn problems_name_their_line() {
        let cases = [
            ("[[rule]]\nrepos = \"A/**\"\n", 2, "repos"),
            (
                "[[rule]]\nrepos = \"a\"\npull = [\"@nobody\"]\n",
                3,
                "unknown group",
            ),
            ("[groups]\nx = [\"@y\"]\n", 2, "user names only"),
            (
                "[[rule]]\nrepos = \"a\"\npul = [\"*\"]\n",
                3,
                "unknown field",
            ),
            (
                "[[rule]]\nrepos = \"a\"\npull = [\"a b\"]\n",
                3,
                "not a principal",
            ),
            ("[[rule]]\npull = [\"*\"]\n", 1, "repos"),
            ("[[rule]\n", 1, ""),
            ("\n\n[[rule]]\nrepos = 5\n", 4, ""),
        ];
        for (text, line, says) in cases {
            let e = Rules::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e:?}");
            assert!(e.message.contains(says), "{text:?}: {e:?}");
        }
    }
}

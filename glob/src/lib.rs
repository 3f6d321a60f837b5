//! Repository-name globs, as berth's access rules (berth-proxy) and retention rules (berth-registry) write them,
//! and the pull filter: the ordered allow/deny list of globs berth-proxy sends berth-registry with listings
//! (`Berth-Pull-Filter`), so that `/v2/_catalog` and `/v1/search` show only what the caller may pull.
//!
//! A glob matches a whole name: `*` matches any run of characters within one path segment, `**` any run across
//! segments, `?` one character other than `/`; everything else matches itself.

use std::fmt;

/// The request header carrying a [`RepoFilter`] from the proxy to the registry.
pub const PULL_FILTER_HEADER: &str = "berth-pull-filter";

/// Longest repository name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Whether `s` is a repository name of the OCI distribution specification: components
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` separated by `/`, at most [`MAX_NAME_LEN`] bytes.
pub fn valid_repo_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_LEN && s.split('/').all(valid_name_component)
}

fn valid_name_component(c: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() {
        return false;
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__", or "-+".
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// Whether `ns` reads as a registry host (`docker.io`, `registry.example:5000`), as a mirror's namespace and the
/// `?ns=` of OCI registry proxying must: berth-registry answers only such namespaces and berth-proxy checks
/// `NS/NAME` for them, so both must agree on what one is.
pub fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 253
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
        && !ns.starts_with(['.', '-', ':', '_'])
}

/// Whether `name` matches `glob` (uncompiled; see [`Glob`] for repeated use).
pub fn glob_matches(glob: &str, name: &str) -> bool {
    dp_matches(glob.as_bytes(), name.as_bytes())
}

/// The general matcher: one pass per glob token, so the time is (glob length) x (name length) whatever the
/// pattern.
fn dp_matches(g: &[u8], n: &[u8]) -> bool {
    // Repository names are short: their tables live on the stack.
    const STACK: usize = 256;
    if n.len() < STACK {
        let (mut ok, mut next) = ([false; STACK], [false; STACK]);
        dp(g, n, &mut ok[..=n.len()], &mut next[..=n.len()])
    } else {
        dp(
            g,
            n,
            &mut vec![false; n.len() + 1],
            &mut vec![false; n.len() + 1],
        )
    }
}

/// `ok` and `next` hold `n.len() + 1` entries, all false.
fn dp<'a>(g: &[u8], n: &[u8], mut ok: &'a mut [bool], mut next: &'a mut [bool]) -> bool {
    // ok[j]: the part of the glob read so far matches name[..j].
    ok[0] = true;
    let mut i = 0;
    while i < g.len() {
        next.iter_mut().for_each(|m| *m = false);
        match g[i] {
            b'*' if g.get(i + 1) == Some(&b'*') => {
                // Any run, across segments: everything from the first match on.
                if let Some(f) = ok.iter().position(|&m| m) {
                    next[f..].iter_mut().for_each(|m| *m = true);
                }
                i += 2;
            }
            b'*' => {
                // Any run within the segment: extend each match up to the next '/'.
                let mut run = false;
                for j in 0..=n.len() {
                    run = ok[j] || (run && n[j - 1] != b'/');
                    next[j] = run;
                }
                i += 1;
            }
            c => {
                for j in 0..n.len() {
                    next[j + 1] = ok[j] && if c == b'?' { n[j] != b'/' } else { n[j] == c };
                }
                i += 1;
            }
        }
        std::mem::swap(&mut ok, &mut next);
        if !ok.iter().any(|&m| m) {
            return false;
        }
    }
    ok[n.len()]
}

/// A glob prepared for matching many names: the common shapes (`**`, a literal name, `prefix/**`) are a
/// comparison, anything else goes through the general matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    shape: Shape,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    Any,
    Literal,
    /// The text before a final `**` (no wildcard in it).
    Prefix(usize),
    /// Anything else, with the literal runs between its wildcards: a name must hold them in order (a quick
    /// test that turns most names away before the general matcher).
    General(Vec<String>),
}

impl Glob {
    /// Prepares `text`, checking that it can match repository names: lower-case letters, digits, `.`, `_`,
    /// `-`, `/` and the wildcards `*`, `**` and `?`; not empty, no empty segment. The error says what is wrong.
    pub fn new(text: &str) -> Result<Glob, String> {
        if text.is_empty() {
            return Err("the glob is empty".into());
        }
        if let Some(c) = text
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/*?".contains(*c)))
        {
            return Err(format!(
                "{text:?}: {c:?} cannot appear in a repository name (use lower-case letters, digits, \
                 . _ - / and the wildcards * ** ?)"
            ));
        }
        if text.contains("***") {
            return Err(format!("{text:?}: use * or **, not ***"));
        }
        if text.starts_with('/') || text.ends_with('/') || text.contains("//") {
            return Err(format!("{text:?}: empty path segment"));
        }
        let wild = |s: &str| s.contains(['*', '?']);
        let shape = if text == "**" {
            Shape::Any
        } else if !wild(text) {
            Shape::Literal
        } else if let Some(p) = text.strip_suffix("**").filter(|p| !wild(p)) {
            Shape::Prefix(p.len())
        } else {
            Shape::General(
                text.split(['*', '?'])
                    .filter(|r| !r.is_empty())
                    .map(String::from)
                    .collect(),
            )
        };
        Ok(Glob {
            text: text.to_string(),
            shape,
        })
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self.shape {
            Shape::Any => true,
            Shape::Literal => self.text == name,
            Shape::Prefix(n) => name.starts_with(&self.text[..n]),
            Shape::General(ref runs) => {
                // Names are short: a plain scan beats building a substring searcher.
                let mut rest = name.as_bytes();
                for run in runs {
                    match rest.windows(run.len()).position(|w| w == run.as_bytes()) {
                        Some(at) => rest = &rest[at + run.len()..],
                        None => return false,
                    }
                }
                dp_matches(self.text.as_bytes(), name.as_bytes())
            }
        }
    }

    /// Whether this glob matches every name.
    pub fn matches_all(&self) -> bool {
        self.shape == Shape::Any
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Which repositories a caller may pull, as an ordered list of globs each allowing or denying: the first glob
/// that matches a name decides, and a name no glob matches is denied. On the wire (`Berth-Pull-Filter`):
/// `+glob` or `-glob`, separated by commas, e.g. `+public/**,-team/**,+**`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoFilter {
    entries: Vec<(Glob, bool)>,
}

impl RepoFilter {
    /// A filter from (glob, allowed) pairs in order; entries after one that matches every name are dropped
    /// (they can never decide).
    pub fn new(entries: impl IntoIterator<Item = (Glob, bool)>) -> RepoFilter {
        let mut out = Vec::new();
        for (glob, allow) in entries {
            let all = glob.matches_all();
            out.push((glob, allow));
            if all {
                break;
            }
        }
        RepoFilter { entries: out }
    }

    /// Parses the header form; the error says what is wrong.
    pub fn parse(s: &str) -> Result<RepoFilter, String> {
        let mut entries = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (allow, glob) = match item.as_bytes()[0] {
                b'+' => (true, &item[1..]),
                b'-' => (false, &item[1..]),
                _ => return Err(format!("{item:?} does not start with + or -")),
            };
            entries.push((Glob::new(glob)?, allow));
        }
        Ok(RepoFilter::new(entries))
    }

    /// Whether `name` may be listed.
    pub fn allows(&self, name: &str) -> bool {
        self.entries
            .iter()
            .find(|(g, _)| g.matches(name))
            .is_some_and(|(_, allow)| *allow)
    }

    /// Whether every name is allowed (no filtering needed).
    pub fn allows_all(&self) -> bool {
        self.entries
            .iter()
            .take_while(|(_, allow)| *allow)
            .any(|(g, _)| g.matches_all())
    }

    /// Whether no name is allowed.
    pub fn allows_none(&self) -> bool {
        self.entries.iter().all(|(_, allow)| !allow)
    }
}

impl fmt::Display for RepoFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (g, allow)) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}{g}", if *allow { '+' } else { '-' })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_matches("team/*", "team/app"));
        assert!(!glob_matches("team/*", "team/app/sub"));
        assert!(glob_matches("team/**", "team/app/sub"));
        assert!(!glob_matches("team/**", "team"));
        assert!(glob_matches("**", "anything/at/all"));
        assert!(glob_matches("app-?", "app-1"));
        assert!(!glob_matches("app-?", "app-12"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exactly"));
        assert!(glob_matches("*/cache", "x/cache"));
        assert!(!glob_matches("*/cache", "x/y/cache"));
        assert!(glob_matches("**/cache", "x/y/cache"));
        assert!(glob_matches("a/**/z", "a/b/c/z"));
        assert!(!glob_matches("a/?", "a//"));
    }

    #[test]
    fn compiled_globs_agree_with_the_general_matcher() {
        let globs = [
            "**", "team/**", "team/*", "exact", "a/**/z", "*", "t?am/**", "team/**x", "**/cache",
        ];
        let names = [
            "team",
            "team/app",
            "team/app/x",
            "exact",
            "a/z",
            "a/b/z",
            "teamx",
            "tram/x",
            "team/x",
            "x/cache",
            "cache",
        ];
        for g in globs {
            let c = Glob::new(g).unwrap();
            for n in names {
                assert_eq!(c.matches(n), glob_matches(g, n), "{g} {n}");
            }
        }
    }

    #[test]
    fn bad_globs_are_named() {
        for bad in ["", "Team/**", "a b", "a//b", "/a", "a/", "***", "a,b", "+a"] {
            let e = Glob::new(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
    }

    #[test]
    fn filters_decide_by_first_match_and_round_trip() {
        let f = RepoFilter::parse("+public/**,-team/secret,+team/**").unwrap();
        assert!(f.allows("public/x"));
        assert!(!f.allows("team/secret"));
        assert!(f.allows("team/app"));
        assert!(!f.allows("other"), "no match means denied");
        assert!(!f.allows_all());
        assert_eq!(RepoFilter::parse(&f.to_string()).unwrap(), f);
        assert!(RepoFilter::parse("+**,-x").unwrap().allows_all());
        assert_eq!(RepoFilter::parse("+**,-x").unwrap().to_string(), "+**");
        assert!(!RepoFilter::parse("-x,+**").unwrap().allows_all());
        assert!(RepoFilter::parse("").unwrap().allows_none());
        assert!(RepoFilter::parse("-a,-**").unwrap().allows_none());
        assert!(RepoFilter::parse("x").is_err());
        assert!(RepoFilter::parse("+A").is_err());
    }
}

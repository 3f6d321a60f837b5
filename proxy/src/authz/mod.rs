//! Authorization ("what may you do"): the access file (`BERTH_ACL`) and its watcher, and the decision for each
//! request. Without an access file every authenticated user may do everything, and nobody else anything.

pub mod request;
pub mod rules;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::watch::{stamp, FileStamp};
pub use request::{valid_namespace, Access, Action};
pub use rules::{Rules, RulesError};

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward it.
    Allow(Grant),
    /// It needs credentials the client did not send: 401 with the challenge.
    NeedCredentials,
    /// The user may not: 403 `DENIED` with this message.
    Denied(String),
}

/// How an allowed request is forwarded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// For listings: the repositories the caller may pull (`Berth-Pull-Filter`); `None`: all.
    pub pull_filter: Option<String>,
    /// Take `mount` and `from` off the query: the caller may not pull the blob's source (or, for a mount
    /// without `from`, may not pull every repository), so it gets a normal upload session instead.
    pub drop_mount: bool,
}

/// The access rules in force, re-read when the file changes.
pub struct Authorizer {
    path: Option<PathBuf>,
    rules: RwLock<Option<Arc<Rules>>>,
    stamp: Mutex<Option<FileStamp>>,
    /// Changes of the file noticed so far (loaded or refused).
    changes: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("path", &self.path)
            .finish()
    }
}

/// Reads and parses an access file; the error is one line: file, line, problem.
pub fn load_rules(path: &Path) -> Result<Rules, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the access file: {e}", path.display()))?;
    Rules::parse(&text).map_err(|e| format!("{}:{}: {}", path.display(), e.line, e.message))
}

impl Authorizer {
    /// Everything allowed to authenticated users (no access file).
    pub fn open() -> Authorizer {
        Authorizer {
            path: None,
            rules: RwLock::new(None),
            stamp: Mutex::new(None),
            changes: Default::default(),
        }
    }

    /// The rules of `path`; a missing or broken file is an error (one line: file, line, problem), so a proxy
    /// never starts with rules other than the ones written.
    pub fn load(path: PathBuf) -> Result<Authorizer, String> {
        let st = stamp(&path);
        let rules = load_rules(&path)?;
        tracing::info!(
            rules = rules.len(),
            "access rules loaded from {}",
            path.display()
        );
        Ok(Authorizer {
            path: Some(path),
            rules: RwLock::new(Some(Arc::new(rules))),
            stamp: Mutex::new(st),
            changes: Default::default(),
        })
    }

    /// Re-reads the file if it changed. A broken or missing file keeps the rules in force and logs why.
    /// Returns whether new rules took effect. Blocking: call it on a blocking thread.
    pub fn reload_if_changed(&self) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        let now = stamp(path);
        {
            let mut current = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
            if *current == now {
                return false;
            }
            *current = now;
        }
        let result = load_rules(path);
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match result {
            Ok(rules) => {
                tracing::info!(
                    rules = rules.len(),
                    "access rules reloaded from {}",
                    path.display()
                );
                *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(rules));
                true
            }
            Err(e) => {
                tracing::error!("{e}; the previous access rules stay in force");
                false
            }
        }
    }

    /// Polls the file every `interval` until the returned task is dropped or aborted (nothing to do without
    /// a file).
    pub fn spawn_watcher(
        self: &Arc<Self>,
        interval: std::time::Duration,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.path.as_ref()?;
        let me = Arc::clone(self);
        Some(crate::watch::spawn_poller(interval, move || {
            me.reload_if_changed();
        }))
    }

    /// Changes of the file noticed so far, each loaded or refused (for tests that wait for a reload).
    pub fn changes_seen(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn rules(&self) -> Option<Arc<Rules>> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether clients without credentials may pull something (then 401s carry a Bearer challenge whose
    /// token endpoint gives them an anonymous token: see [`crate::authn::token`]).
    pub fn anonymous_pulls(&self) -> bool {
        self.rules().is_some_and(|r| r.anonymous_pulls())
    }

    /// Decides a request of `user` (`None`: no credentials).
    pub fn decide(&self, access: &Access, user: Option<&str>) -> Decision {
        let refuse = |message: String| match user {
            None => Decision::NeedCredentials,
            Some(_) => Decision::Denied(message),
        };
        let Some(rules) = self.rules() else {
            return match user {
                None => Decision::NeedCredentials,
                Some(_) => Decision::Allow(Grant::default()),
            };
        };
        match access {
            Access::Login => match user {
                None => Decision::NeedCredentials,
                Some(_) => Decision::Allow(Grant::default()),
            },
            Access::Listing => {
                let filter = rules.pull_filter(user);
                if user.is_none() && filter.allows_none() {
                    return Decision::NeedCredentials;
                }
                Decision::Allow(Grant {
                    pull_filter: (!filter.allows_all()).then(|| filter.to_string()),
                    drop_mount: false,
                })
            }
            Access::Repo {
                repo,
                action,
                mount,
                ..
            } => {
                if !rules.allows(user, repo, *action) {
                    return refuse(format!(
                        "{} access to repository {repo:?} is denied{}",
                        action.as_str(),
                        user.map(|u| format!(" for user {u:?}")).unwrap_or_default()
                    ));
                }
                let drop_mount = match mount {
                    None => false,
                    Some(Some(from)) => {
                        !berth_glob::valid_repo_name(from)
                            || !rules.allows(user, from, Action::Pull)
                    }
                    // The registry mounts from wherever the blob is: only for callers who may pull
                    // everything.
                    Some(None) => !rules.pull_filter(user).allows_all(),
                };
                Decision::Allow(Grant {
                    pull_filter: None,
                    drop_mount,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(a: &Authorizer, method: &str, target: &str, user: Option<&str>) -> Decision {
        a.decide(
            &Access::of(&method.parse().unwrap(), &target.parse().unwrap()),
            user,
        )
    }

    #[test]
    fn decisions_without_and_with_rules() {
        let open = Authorizer::open();
        assert_eq!(
            decide(&open, "DELETE", "/v2/x/manifests/1", Some("a")),
            Decision::Allow(Grant::default())
        );
        assert_eq!(
            decide(&open, "GET", "/v2/x/manifests/1", None),
            Decision::NeedCredentials
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acl.toml");
        std::fs::write(
            &path,
            "[[rule]]\nrepos = \"public/**\"\npull = [\"anonymous\", \"*\"]\npush = [\"a\"]\n\
             [[rule]]\nrepos = \"private/**\"\npull = [\"a\"]\npush = [\"a\"]\n\
             [[rule]]\nrepos = \"**\"\npull = [\"*\"]\npush = [\"*\"]\n",
        )
        .unwrap();
        let acl = Authorizer::load(path.clone()).unwrap();
        assert!(acl.anonymous_pulls());
        let allow = Decision::Allow(Grant::default());
        assert_eq!(decide(&acl, "GET", "/v2/public/x/manifests/1", None), allow);
        assert_eq!(
            decide(&acl, "PUT", "/v2/public/x/manifests/1", None),
            Decision::NeedCredentials
        );
        match decide(&acl, "PUT", "/v2/public/x/manifests/1", Some("b")) {
            Decision::Denied(m) => assert!(m.contains("push") && m.contains("public/x"), "{m}"),
            d => panic!("{d:?}"),
        }
        assert_eq!(decide(&acl, "GET", "/v2/", None), Decision::NeedCredentials);
        assert_eq!(decide(&acl, "GET", "/v2/", Some("b")), allow);
        match decide(&acl, "GET", "/v2/_catalog", None) {
            Decision::Allow(g) => {
                assert_eq!(g.pull_filter.as_deref(), Some("+public/**,-private/**,-**"))
            }
            d => panic!("{d:?}"),
        }
        match decide(&acl, "GET", "/v2/_catalog", Some("a")) {
            Decision::Allow(g) => assert_eq!(g.pull_filter, None, "a may pull everything"),
            d => panic!("{d:?}"),
        }
        let d = "sha256:4355a46b19d348dc2f57c046f8ef63d4538ebb936000f3c9ee954a27460dd865";
        let mount = |from: &str, user: &str| match decide(
            &acl,
            "POST",
            &format!("/v2/mine/blobs/uploads/?mount={d}{from}"),
            Some(user),
        ) {
            Decision::Allow(g) => g.drop_mount,
            d => panic!("{d:?}"),
        };
        assert!(mount("&from=private/x", "b"), "b may not pull private/x");
        assert!(!mount("&from=private/x", "a"));
        assert!(mount("", "b"), "no from, and b cannot pull everything");
        assert!(!mount("", "a"));
        // A broken edit keeps the rules; a good one replaces them.
        std::fs::write(&path, "[[rule]]\nrepos = \"**\"\npull = [\"@ghosts\"]\n").unwrap();
        assert!(!acl.reload_if_changed());
        assert_eq!(decide(&acl, "GET", "/v2/public/x/manifests/1", None), allow);
        std::fs::write(&path, "[[rule]]\nrepos = \"**\"\npull = [\"*\"]\n").unwrap();
        assert!(acl.reload_if_changed());
        assert_eq!(
            decide(&acl, "GET", "/v2/public/x/manifests/1", None),
            Decision::NeedCredentials
        );
        assert!(!acl.anonymous_pulls());
        // A broken file at start is an error naming the file and line.
        std::fs::write(&path, "\n[[rule]]\nrepos = \"**\"\npush = [\"a:b\"]\n").unwrap();
        let e = Authorizer::load(path.clone()).unwrap_err();
        assert!(e.starts_with(&format!("{}:4: ", path.display())), "{e}");
    }
}

//! What a request asks to do: the repository it touches and the action (pull, push, delete), read from the
//! method and path the same way berth-registry routes them.

use http::{Method, Uri};

/// An action on a repository, as the access rules name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Reading manifests, blobs, tag lists, referrers.
    Pull,
    /// Uploading blobs, putting manifests.
    Push,
    /// Deleting manifests, tags, blobs.
    Delete,
}

impl Action {
    /// The name used in access files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }
}

/// What a request under `/v2/` or `/v1/` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// No repository: `GET /v2/`, and paths the registry does not route (it answers 404). Needs an
    /// authenticated user, as without access rules.
    Login,
    /// `/v2/_catalog` and `/v1/search`: listings, filtered to what the caller may pull.
    Listing,
    /// One action on one repository.
    Repo {
        /// The repository name, as in the path.
        repo: String,
        /// What is done to it.
        action: Action,
        /// A cross-repository mount: `Some(from)` for `?mount=` (with `from` when given).
        mount: Option<Option<String>>,
        /// What the audit log names: the tag or digest of a manifest, the digest of a blob or of a
        /// finished upload. `None` for requests the audit log leaves out (reads, upload chunks).
        audited: Option<String>,
    },
}

fn query_param(uri: &Uri, key: &str) -> Option<String> {
    form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

pub use berth_glob::valid_namespace;

impl Access {
    /// Maps a request; the path is split exactly as berth-registry's router splits it, so both agree on the
    /// repository. A request with `?ns=NS` (OCI registry proxying: the client pulls NS's `NAME` through a
    /// mirror) is checked as repository `NS/NAME`: rules for mirrored namespaces name them by their remote
    /// (`docker.io/**`). An `ns` that is no registry host asks for no repository.
    pub fn of(method: &Method, uri: &Uri) -> Access {
        let access = Access::of_path(method, uri);
        let Some(ns) = query_param(uri, "ns") else {
            return access;
        };
        match access {
            Access::Repo {
                repo,
                action,
                mount,
                audited,
            } => {
                if !valid_namespace(&ns) {
                    return Access::Login;
                }
                Access::Repo {
                    repo: format!("{}/{repo}", ns.to_ascii_lowercase()),
                    action,
                    mount,
                    audited,
                }
            }
            other => other,
        }
    }

    fn of_path(method: &Method, uri: &Uri) -> Access {
        let path = uri.path();
        match path {
            "/v2/_catalog" | "/v1/search" => return Access::Listing,
            _ => {}
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return Access::Login;
        };
        let read = matches!(*method, Method::GET | Method::HEAD);
        let write = if *method == Method::DELETE {
            Action::Delete
        } else {
            Action::Push
        };
        // A name the registry would refuse (NAME_INVALID) is no repository: nothing is decided or remembered
        // for it, and only an authenticated user gets as far as that refusal.
        let valid = berth_glob::valid_repo_name;
        let repo = |name: &str, action: Action| Access::Repo {
            repo: name.to_string(),
            action,
            mount: None,
            audited: None,
        };
        if let Some(name) = rest.strip_suffix("/tags/list") {
            if !valid(name) {
                return Access::Login;
            }
            return repo(name, if read { Action::Pull } else { Action::Push });
        }
        if let Some(name) = rest
            .strip_suffix("/blobs/uploads")
            .or_else(|| rest.strip_suffix("/blobs/uploads/"))
        {
            if !valid(name) {
                return Access::Login;
            }
            // Starting a session, a single-request upload (`?digest=`), or a mount.
            let (mount, audited) = if *method == Method::POST {
                let mounted = query_param(uri, "mount");
                let from = mounted.as_ref().map(|_| query_param(uri, "from"));
                (from, mounted.or_else(|| query_param(uri, "digest")))
            } else {
                (None, None)
            };
            return Access::Repo {
                repo: name.to_string(),
                action: Action::Push,
                mount,
                audited,
            };
        }
        let Some((head, last)) = rest.rsplit_once('/') else {
            return Access::Login;
        };
        let Some((name, kind)) = head.rsplit_once('/') else {
            return Access::Login;
        };
        let action = if read { Action::Pull } else { write };
        let (name, action, audited) = match kind {
            "manifests" => (name, action, (!read).then(|| last.to_string())),
            "blobs" => (
                name,
                action,
                (action == Action::Delete).then(|| last.to_string()),
            ),
            "referrers" => (name, if read { Action::Pull } else { Action::Push }, None),
            "uploads" => {
                let Some(name) = name.strip_suffix("/blobs") else {
                    return Access::Login;
                };
                // The PUT that finishes an upload names the blob; chunks and status reads are not audited.
                let done = (*method == Method::PUT)
                    .then(|| query_param(uri, "digest"))
                    .flatten();
                (name, Action::Push, done)
            }
            _ => return Access::Login,
        };
        if !valid(name) {
            return Access::Login;
        }
        Access::Repo {
            repo: name.to_string(),
            action,
            mount: None,
            audited,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(method: &str, target: &str) -> Access {
        Access::of(&method.parse().unwrap(), &target.parse().unwrap())
    }

    fn repo(name: &str, action: Action) -> Access {
        Access::Repo {
            repo: name.into(),
            action,
            mount: None,
            audited: None,
        }
    }

    fn audited(name: &str, action: Action, what: &str) -> Access {
        Access::Repo {
            repo: name.into(),
            action,
            mount: None,
            audited: Some(what.into()),
        }
    }

    const D: &str = "sha256:4355a46b19d348dc2f57c046f8ef63d4538ebb936000f3c9ee954a27460dd865";

    #[test]
    fn a_namespace_query_is_checked_under_the_namespace() {
        use Action::*;
        assert_eq!(
            of("GET", "/v2/library/alpine/manifests/3?ns=docker.io"),
            repo("docker.io/library/alpine", Pull)
        );
        assert_eq!(
            of("HEAD", "/v2/x/blobs/sha256:00?ns=Registry.Example:5000"),
            repo("registry.example:5000/x", Pull)
        );
        assert_eq!(
            of("GET", "/v2/x/manifests/1?ns=a/b"),
            Access::Login,
            "no registry host"
        );
        assert_eq!(of("GET", "/v2/?ns=docker.io"), Access::Login);
        assert!(valid_namespace("docker.io"));
        assert!(!valid_namespace("") && !valid_namespace("..") && !valid_namespace("a b"));
    }

    #[test]
    fn every_route_of_the_api_maps_to_its_action() {
        use Action::*;
        assert_eq!(of("GET", "/v2/"), Access::Login);
        assert_eq!(of("GET", "/v2"), Access::Login);
        assert_eq!(of("GET", "/v2/_catalog?n=10"), Access::Listing);
        assert_eq!(of("GET", "/v1/search?q=x"), Access::Listing);
        assert_eq!(
            of("GET", "/v1/_ping"),
            Access::Login,
            "pings are answered before"
        );
        assert_eq!(of("GET", "/v1/repositories/x/tags"), Access::Login);
        assert_eq!(of("GET", "/v2/a/b/tags/list"), repo("a/b", Pull));
        assert_eq!(of("HEAD", "/v2/a/manifests/1"), repo("a", Pull));
        assert_eq!(of("GET", &format!("/v2/a/manifests/{D}")), repo("a", Pull));
        assert_eq!(of("PUT", "/v2/a/manifests/1"), audited("a", Push, "1"));
        assert_eq!(
            of("DELETE", &format!("/v2/a/manifests/{D}")),
            audited("a", Delete, D)
        );
        assert_eq!(
            of("DELETE", "/v2/a/manifests/v1"),
            audited("a", Delete, "v1")
        );
        assert_eq!(
            of("GET", &format!("/v2/a/b/c/blobs/{D}")),
            repo("a/b/c", Pull)
        );
        assert_eq!(of("HEAD", &format!("/v2/a/blobs/{D}")), repo("a", Pull));
        assert_eq!(
            of("DELETE", &format!("/v2/a/blobs/{D}")),
            audited("a", Delete, D)
        );
        assert_eq!(of("GET", &format!("/v2/a/referrers/{D}")), repo("a", Pull));
        assert_eq!(of("POST", "/v2/a/blobs/uploads/"), repo("a", Push));
        assert_eq!(of("POST", "/v2/a/blobs/uploads"), repo("a", Push));
        assert_eq!(
            of("POST", &format!("/v2/a/blobs/uploads/?digest={D}")),
            audited("a", Push, D)
        );
        assert_eq!(of("PATCH", "/v2/a/blobs/uploads/abc"), repo("a", Push));
        assert_eq!(of("GET", "/v2/a/blobs/uploads/abc"), repo("a", Push));
        assert_eq!(of("DELETE", "/v2/a/blobs/uploads/abc"), repo("a", Push));
        assert_eq!(
            of(
                "PUT",
                &format!("/v2/a/blobs/uploads/abc?_state=x&digest={D}")
            ),
            audited("a", Push, D)
        );
        assert_eq!(
            of("POST", &format!("/v2/a/blobs/uploads/?mount={D}&from=b/c")),
            Access::Repo {
                repo: "a".into(),
                action: Push,
                mount: Some(Some("b/c".into())),
                audited: Some(D.into()),
            }
        );
        assert_eq!(
            of("POST", &format!("/v2/a/blobs/uploads/?mount={D}")),
            Access::Repo {
                repo: "a".into(),
                action: Push,
                mount: Some(None),
                audited: Some(D.into()),
            }
        );
        // Names that contain the route words are split as the registry splits them.
        assert_eq!(
            of("GET", "/v2/manifests/manifests/1"),
            repo("manifests", Pull)
        );
        assert_eq!(of("GET", "/v2/x/blobs/tags/list"), repo("x/blobs", Pull));
        assert_eq!(
            of("PUT", "/v2/blobs/uploads/manifests/1"),
            audited("blobs/uploads", Push, "1")
        );
        // Invalid names (the registry answers NAME_INVALID) decide nothing.
        assert_eq!(of("GET", "/v2/Team/app/manifests/1"), Access::Login);
        assert_eq!(
            of("GET", &format!("/v2/{}/manifests/1", "a".repeat(256))),
            Access::Login
        );
        assert_eq!(of("PUT", "/v2/a%2Fb/manifests/1"), Access::Login);
        assert_eq!(of("GET", "/v2/-a/tags/list"), Access::Login);
        assert_eq!(of("POST", "/v2/a__-b/blobs/uploads/"), Access::Login);
        // Nothing the registry routes as a repository is left as a login-only request.
        assert_eq!(of("GET", "/v2/justone"), Access::Login);
        assert_eq!(of("GET", "/v2/a/unknown/x"), Access::Login);
        assert_eq!(of("GET", "/v2/a/uploads/x"), Access::Login);
        assert_eq!(of("GET", "/_berth/health"), Access::Login);
    }
}

//! Request paths as any client sends them, through berth-registry's router and berth-proxy's access mapping,
//! and the names, tags and digests they carry. Properties: both read the same repository from the same path
//! (a name the registry would act on is always the one the proxy checked); a repository name that parses
//! prints back to itself and maps only to storage keys inside its own folder; tags and digests round-trip.
#![no_main]

use berth_proxy::authz::Access;
use berth_registry::oci::{Digest, RepoName, Tag};
use berth_registry::paths;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = text.split(['?', '#', '\n']).next().unwrap_or("");
    let _ = berth_registry::api::handler_index(path);
    let registry = berth_registry::api::repository_in(path);
    if let Ok(uri) = http::Uri::builder().path_and_query(text).build() {
        let uri_path = uri.path().to_string();
        let registry = berth_registry::api::repository_in(&uri_path);
        for method in ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"] {
            let access = Access::of(&method.parse().unwrap(), &uri);
            // With `?ns=NS` the proxy checks `NS/NAME` (or nothing, for an `ns` that is no host).
            let ns = uri.query().and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "ns")
                    .map(|(_, v)| v.into_owned())
            });
            if let Some(name) = registry.filter(|n| n.parse::<RepoName>().is_ok()) {
                let expected = match &ns {
                    Some(ns) if !berth_proxy::authz::valid_namespace(ns) => {
                        assert_eq!(access, Access::Login, "{method} {uri}");
                        continue;
                    }
                    Some(ns) => format!("{}/{name}", ns.to_ascii_lowercase()),
                    None => name.to_string(),
                };
                match &access {
                    Access::Repo { repo, .. } => {
                        assert_eq!(repo, &expected, "{method} {uri_path}: proxy and registry disagree")
                    }
                    other => panic!("{method} {uri_path}: the registry acts on {name:?}, the proxy checks {other:?}"),
                }
            }
        }
    }
    if let Some(name) = registry {
        if let Ok(repo) = name.parse::<RepoName>() {
            assert_eq!(repo.to_string(), name);
            let dir = paths::repo_dir(&repo);
            assert_eq!(dir, format!("{}/{name}", paths::repositories_root()));
            assert!(
                !dir.split('/').any(|seg| seg.is_empty() || seg == "." || seg == ".."),
                "{dir:?}"
            );
        }
    }
    for word in text.split(['/', '\n', ' ']) {
        if let Ok(t) = word.parse::<Tag>() {
            assert_eq!(t.to_string(), word);
        }
        if let Ok(d) = Digest::parse(word) {
            assert_eq!(d.to_string(), word);
            assert_eq!(Digest::parse(&d.to_string()).ok(), Some(d));
        }
        if let Ok(r) = word.parse::<RepoName>() {
            assert_eq!(r.to_string(), word);
        }
    }
});

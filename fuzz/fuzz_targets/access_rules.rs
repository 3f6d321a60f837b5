//! What berth-proxy reads to decide access: the access file (TOML from an operator), request targets (from any
//! client), the Basic header, and the pull filter the registry parses. No input panics; a parsed filter
//! prints back to itself; the decision of the rules agrees with the pull filter they give the registry.
#![no_main]

use berth_glob::RepoFilter;
use berth_proxy::authz::{Access, Action, Rules};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, rest) = text.split_once('\0').unwrap_or((text, ""));
    let _ = berth_proxy::authn::parse_basic(rest.as_bytes());
    for method in ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"] {
        if let Ok(uri) = rest.parse::<http::Uri>() {
            let _ = Access::of(&method.parse().unwrap(), &uri);
        }
    }
    if let Ok(f) = RepoFilter::parse(rest) {
        assert_eq!(RepoFilter::parse(&f.to_string()).as_ref(), Ok(&f));
    }
    if let Ok(rules) = Rules::parse(file) {
        for user in [None, Some("alice"), Some(rest)] {
            let filter = rules.pull_filter(user);
            for name in [rest, "a", "team/app", "public/x/y"] {
                assert_eq!(
                    rules.allows(user, name, Action::Pull),
                    filter.allows(name),
                    "{user:?} {name:?}"
                );
            }
        }
    }
});

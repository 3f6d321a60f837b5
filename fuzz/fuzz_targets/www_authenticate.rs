//! `WWW-Authenticate` challenges from a mirror's remote registry (berth-registry's pull-through cache reads
//! them to choose Basic or the Bearer token flow). Properties: any input parses or is refused without panic;
//! a Bearer challenge always has an http(s) realm of bounded length; writing a parsed challenge back in the
//! quoted form and parsing it again gives the same challenge.
#![no_main]

use berth_registry::mirror::remote::{parse_challenge, Challenge};
use libfuzzer_sys::fuzz_target;

fn quoted(v: &str) -> String {
    let mut s = String::from("\"");
    for c in v.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(c) = parse_challenge(text) else {
        return;
    };
    if let Challenge::Bearer {
        realm,
        service,
        scope,
    } = &c
    {
        assert!(realm.starts_with("https://") || realm.starts_with("http://"));
        assert!(realm.len() <= 2048);
        let mut again = format!("Bearer realm={}", quoted(realm));
        if let Some(s) = service {
            again.push_str(&format!(",service={}", quoted(s)));
        }
        if let Some(s) = scope {
            again.push_str(&format!(",scope={}", quoted(s)));
        }
        assert_eq!(parse_challenge(&again).as_ref(), Some(&c), "{again:?}");
    }
});

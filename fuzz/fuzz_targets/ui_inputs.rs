//! What the web interface reads from a browser: the session cookie and the text it writes into pages.
//! Properties: any cookie value is refused or accepted without panic, and only a value issued by the key is
//! accepted (a mutated one never); escaped text never holds markup characters and unescapes back to itself.
#![no_main]

use std::time::Duration;

use berth_proxy::ui::html::escape;
use berth_proxy::ui::session::Sessions;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sessions = Sessions::with_key(b"fuzz key", Duration::from_secs(3600));
    let fp = [1u8; 32];
    // Arbitrary values are refused (forging one would need the key).
    assert!(sessions.verify(text, |_| Some(fp)).is_none());
    // A genuine value for this input as the user name round-trips, and any change to it is refused.
    let value = sessions.issue(text, &fp);
    let s = sessions.verify(&value, |_| Some(fp)).expect("a genuine session");
    assert_eq!(s.user, text);
    if let Some(last) = value.chars().last() {
        let flipped = if last == 'A' { 'B' } else { 'A' };
        let mut mutated = value.clone();
        mutated.pop();
        mutated.push(flipped);
        assert!(sessions.verify(&mutated, |_| Some(fp)).is_none());
    }
    let mut out = String::new();
    escape(text, &mut out);
    assert!(!out.contains(['<', '>', '"', '\'']));
    let back = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    assert_eq!(back, text);
});

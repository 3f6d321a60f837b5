//! Values an operator writes in the configuration (durations, the free-space reserve, retention globs): no
//! input panics; a duration written as seconds, minutes or hours reads back as that many; a glob without
//! wildcards matches exactly itself, and `**` matches everything.
#![no_main]

use berth_registry::config::{parse_duration, parse_min_free};
use berth_registry::store::retention::glob_matches;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (num, raw) = match data.split_first_chunk::<4>() {
        Some((n, rest)) => (u32::from_le_bytes(*n) as u64, rest),
        None => (0, data),
    };
    for (unit, secs) in [("s", 1), ("m", 60), ("h", 3600)] {
        assert_eq!(
            parse_duration(&format!("{num}{unit}")).map(|d| d.as_secs()),
            Ok(num * secs)
        );
    }
    let Ok(text) = std::str::from_utf8(raw) else {
        return;
    };
    let _ = parse_duration(text);
    let _ = parse_min_free(text);
    let (glob, name) = text.split_once('\n').unwrap_or((text, text));
    let _ = glob_matches(glob, name);
    assert!(glob_matches("**", name));
    if !glob.contains(['*', '?']) {
        assert_eq!(glob_matches(glob, name), glob == name, "{glob:?} {name:?}");
    }
});

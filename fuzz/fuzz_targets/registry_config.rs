//! The registry's configuration file as an operator writes it (with `[notifications]` endpoints, their URLs,
//! headers, durations and filters, and `[http.debug.prometheus]`), and the request headers an event is made
//! from: no input panics; a configuration that validates has endpoints with distinct names, URLs that parse and
//! durations that read.
#![no_main]

use berth_registry::config::{parse_duration, Config};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = toml::from_str::<Config>(text) {
        if config.validate().is_empty() {
            let mut names = std::collections::HashSet::new();
            for e in &config.notifications.endpoints {
                assert!(names.insert(e.name.clone()), "two endpoints named {:?}", e.name);
                assert!(e.url.parse::<http::Uri>().is_ok(), "{:?}", e.url);
                assert!(parse_duration(&e.timeout).is_ok() && parse_duration(&e.backoff).is_ok());
            }
            assert!(config.http.debug.prometheus.path.starts_with('/'));
        }
    }
    // Header values as a client sends them, through the event's request record.
    let mut headers = http::HeaderMap::new();
    for (name, line) in ["x-forwarded-for", "x-real-ip", "host", "user-agent", "x-forwarded-user"]
        .iter()
        .zip(text.lines())
    {
        if let Ok(v) = http::HeaderValue::from_str(line) {
            headers.insert(*name, v);
        }
    }
    let (record, _actor) =
        berth_registry::events::request_record(&http::Method::GET, &headers, None, "r1");
    if !record.addr.is_empty() {
        assert!(record.addr.parse::<std::net::IpAddr>().is_ok(), "{:?}", record.addr);
    }
});

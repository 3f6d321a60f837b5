//! `Range` (blob reads) and `Content-Range` with `Content-Length` (upload chunks): no input panics, a parsed
//! read range lies inside the object, a chunk's span never wraps and agrees with its range and its length,
//! a parsed range formats back to itself, and the same input always gets the same answer.
#![no_main]

use berth_registry::ranges::{chunk_bounds, parse_content_range, parse_range, RangeRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes, when there are 8: an object size, also used as a Content-Length; the rest: the header.
    let (num, raw) = match data.split_first_chunk::<8>() {
        Some((n, rest)) => (u64::from_le_bytes(*n), rest),
        None => (0, data),
    };
    if let Ok(text) = std::str::from_utf8(raw) {
        let r = parse_range(Some(text), num);
        assert_eq!(r, parse_range(Some(text), num));
        if let RangeRequest::Part(start, end) = r {
            assert!(
                start < end && end <= num,
                "{text:?} on {num}: {start}..{end}"
            );
        }
        if let Some((start, end)) = parse_content_range(text) {
            assert_eq!(
                parse_content_range(&format!("{start}-{end}")),
                Some((start, end))
            );
        }
    }
    for len in [None, Some(num)] {
        let got = chunk_bounds(Some(raw), len);
        if let Ok((start, span)) = got {
            let (Some(start), Some(span)) = (start, span) else {
                panic!("a Content-Range without a start or span: {raw:?}");
            };
            assert!(span >= 1);
            let end = start
                .checked_add(span - 1)
                .unwrap_or_else(|| panic!("span past the end of u64: {raw:?}"));
            let text = std::str::from_utf8(raw).expect("accepted, so text");
            assert_eq!(parse_content_range(text), Some((start, end)));
            if let Some(l) = len {
                assert_eq!(l, span);
            }
        }
    }
});

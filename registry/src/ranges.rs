//! The byte ranges clients send: `Range` on blob reads, `Content-Range` (with `Content-Length`) on upload
//! chunks. Parsed without ever overflowing; the fuzz targets in `fuzz/` check their properties.

use crate::error::RegistryError;

/// A parsed `Range` request header against an object of a known size.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: serve the whole object.
    Whole,
    /// Half-open `start..end`.
    Part(u64, u64),
    /// Syntactically valid, but outside the object.
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-`, `bytes=-n` (one range; multiple ranges are answered whole).
pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (a.is_empty(), b.is_empty()) {
        (true, true) => RangeRequest::Whole,
        (true, false) => match num(b) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Part(size.saturating_sub(n), size),
            None => RangeRequest::Whole,
        },
        (false, _) => {
            let Some(start) = num(a) else {
                return RangeRequest::Whole;
            };
            let end = if b.is_empty() {
                size.saturating_sub(1)
            } else {
                match num(b) {
                    Some(e) if e >= start => e.min(size.saturating_sub(1)),
                    _ => return RangeRequest::Whole,
                }
            };
            if start >= size {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part(start, end + 1)
            }
        }
    }
}

/// Parses `Content-Range: <start>-<end>` (inclusive; `bytes ` or `bytes=` prefixes tolerated).
pub fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let v = v.trim();
    let v = v
        .strip_prefix("bytes")
        .map(|r| r.trim_start_matches([' ', '=']))
        .unwrap_or(v);
    let v = v.split('/').next()?;
    let (a, b) = v.split_once('-')?;
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !ok(a) || !ok(b) {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Start offset and expected length of an upload chunk, from its `Content-Range` (raw header value) and its
/// `Content-Length` (already parsed). The span never wraps: a range is refused when it ends before it starts
/// (416) or spans more bytes than a length can say (416), and the length must match it (400).
pub fn chunk_bounds(
    content_range: Option<&[u8]>,
    len: Option<u64>,
) -> Result<(Option<u64>, Option<u64>), RegistryError> {
    let Some(raw) = content_range else {
        return Ok((None, len));
    };
    let (start, end) = std::str::from_utf8(raw)
        .ok()
        .and_then(parse_content_range)
        .ok_or_else(|| RegistryError::BlobUploadInvalid("invalid Content-Range".into()))?;
    if end < start {
        return Err(RegistryError::RangeInvalid {
            upload_offset: None,
            blob_size: None,
        });
    }
    // `0-18446744073709551615` spans 2^64 bytes: more than any length can say, so it is refused, never wrapped.
    let span = (end - start)
        .checked_add(1)
        .ok_or(RegistryError::RangeInvalid {
            upload_offset: None,
            blob_size: None,
        })?;
    if len.is_some_and(|l| l != span) {
        return Err(RegistryError::SizeInvalid(format!(
            "Content-Length {} does not match Content-Range {start}-{end}",
            len.unwrap_or(0)
        )));
    }
    Ok((Some(start), Some(span)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range(None, 10), Whole);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), Part(0, 5));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Part(5, 10));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Part(7, 10));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Part(0, 10));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Part(8, 10));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-0"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Whole);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Whole);
        assert_eq!(parse_range(Some("items=0-1"), 10), Whole);
        assert_eq!(parse_range(Some("bytes=x-1"), 10), Whole);
        assert_eq!(
            parse_range(Some("bytes=0-18446744073709551615"), u64::MAX),
            Part(0, u64::MAX)
        );
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 5-9/100"), Some((5, 9)));
        assert_eq!(parse_content_range("bytes=5-9"), Some((5, 9)));
        assert_eq!(parse_content_range("-9"), None);
        assert_eq!(parse_content_range("a-b"), None);
        assert_eq!(parse_content_range("99999999999999999999999-1"), None);
    }

    fn bounds(range: &str, len: Option<u64>) -> Result<(Option<u64>, Option<u64>), RegistryError> {
        chunk_bounds(Some(range.as_bytes()), len)
    }

    #[test]
    fn chunk_bounds_never_wrap() {
        assert_eq!(bounds("0-9", Some(10)).unwrap(), (Some(0), Some(10)));
        assert_eq!(chunk_bounds(None, Some(7)).unwrap(), (None, Some(7)));
        assert_eq!(
            bounds("0-18446744073709551614", None).unwrap(),
            (Some(0), Some(u64::MAX))
        );
        assert!(matches!(
            bounds("0-18446744073709551615", Some(0)),
            Err(RegistryError::RangeInvalid { .. })
        ));
        assert!(matches!(
            bounds("0-18446744073709551615", None),
            Err(RegistryError::RangeInvalid { .. })
        ));
        assert!(matches!(
            bounds("5-4", None),
            Err(RegistryError::RangeInvalid { .. })
        ));
        assert!(matches!(
            bounds("0-18446744073709551614", Some(0)),
            Err(RegistryError::SizeInvalid(_))
        ));
        assert!(matches!(
            chunk_bounds(Some(b"\xff-1"), None),
            Err(RegistryError::BlobUploadInvalid(_))
        ));
    }
}

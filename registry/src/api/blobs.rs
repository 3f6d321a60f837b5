//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`, with `Range` support.

use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, RANGE};
use http::{HeaderMap, StatusCode};

use super::{digest, streamed, App, Reply};
use crate::error::RegistryError;
use crate::oci::RepoName;

/// A parsed `Range` request header against an object of a known size.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RangeRequest {
    /// No usable range: serve the whole object.
    Whole,
    /// Half-open `start..end`.
    Part(u64, u64),
    /// Syntactically valid, but outside the object.
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-`, `bytes=-n` (one range; multiple ranges are answered whole).
pub(crate) fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
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

impl App {
    pub(super) async fn get_blob(
        &self,
        name: RepoName,
        d: &str,
        head: bool,
        headers: &HeaderMap,
    ) -> Result<Reply, RegistryError> {
        let d = digest(d)?;
        let size = self
            .store
            .repo_blob_size(&name, &d)
            .await?
            .ok_or(RegistryError::BlobUnknown)?;
        let range = parse_range(headers.get(RANGE).and_then(|v| v.to_str().ok()), size);
        let reply = Reply::new(StatusCode::OK)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header("docker-content-digest", d.to_string())
            .header(ETAG, format!("\"{d}\""))
            .header(ACCEPT_RANGES, "bytes")
            .header("cache-control", "max-age=31536000");
        let (reply, span) = match range {
            RangeRequest::Whole => (reply.header(CONTENT_LENGTH, size.to_string()), None),
            RangeRequest::Part(start, end) => {
                let mut r = reply
                    .header(CONTENT_LENGTH, (end - start).to_string())
                    .header(CONTENT_RANGE, format!("bytes {start}-{}/{size}", end - 1));
                r.status = StatusCode::PARTIAL_CONTENT;
                (r, Some((start, end)))
            }
            RangeRequest::Unsatisfiable => {
                return Err(RegistryError::RangeInvalid {
                    upload_offset: None,
                    blob_size: Some(size),
                })
            }
        };
        if head {
            return Ok(reply);
        }
        let stream = self.store.open_blob(&d, span).await?;
        Ok(reply.body(streamed(stream)))
    }

    pub(super) async fn delete_blob(
        &self,
        name: RepoName,
        d: &str,
    ) -> Result<Reply, RegistryError> {
        let d = digest(d)?;
        self.require_delete()?;
        self.store.delete_blob(&name, &d).await?;
        Ok(Reply::new(StatusCode::ACCEPTED)
            .header("docker-content-digest", d.to_string())
            .header(CONTENT_LENGTH, "0"))
    }
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
    }
}

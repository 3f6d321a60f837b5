//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`, with `Range` support.

use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, RANGE};
use http::{HeaderMap, StatusCode};

use super::{digest, streamed, App, Reply};
use crate::error::RegistryError;
use crate::mirror::BlobSource;
use crate::oci::RepoName;
use crate::ranges::{parse_range, RangeRequest};

impl App {
    pub(super) async fn get_blob(
        &self,
        name: RepoName,
        d: &str,
        head: bool,
        headers: &HeaderMap,
    ) -> Result<Reply, RegistryError> {
        let d = digest(d)?;
        let (size, fetch) = match (self.mirrored(&name), &self.mirrors) {
            (Some((mirror, remote)), Some(mirrors)) => {
                match mirrors.blob(&mirror, &remote, &name, &d, head).await? {
                    BlobSource::Stored(size) | BlobSource::Remote(size) => (size, None),
                    BlobSource::Fetching(f, size) => (size, Some(f)),
                }
            }
            _ => (
                self.store
                    .serve_blob_size(&name, &d)
                    .await?
                    .ok_or(RegistryError::BlobUnknown)?,
                None,
            ),
        };
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
        let reply = reply.notify(self.blob_event("pull", &name, &d, size, None));
        if head {
            return Ok(reply);
        }
        let stream = match fetch {
            // A blob being fetched streams from the fetch's spool as it arrives.
            Some(f) => {
                let (start, end) = span.unwrap_or((0, size));
                f.read(start, end)
            }
            None => self.store.open_blob(&d, span).await?,
        };
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
        let event = self.deletion(&name, Some(&d), None);
        Ok(Reply::new(StatusCode::ACCEPTED)
            .notify(event)
            .header("docker-content-digest", d.to_string())
            .header(CONTENT_LENGTH, "0"))
    }
}

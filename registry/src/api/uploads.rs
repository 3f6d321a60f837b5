//! Blob uploads: `POST` (session, monolithic, mount), `PATCH`, `PUT`, `GET` status, `DELETE`.

use http::header::{CONTENT_LENGTH, LOCATION};
use http::{HeaderMap, Request, StatusCode};

use super::{body_stream, digest, param, query, App, Reply};
use crate::error::RegistryError;
use crate::linger::RequestBody;
use crate::oci::{Digest, RepoName, UploadId};
use crate::store::{RegistryStore, UploadSession};

/// Start offset and expected length of a chunk from the request's `Content-Range` and `Content-Length`.
fn chunk_bounds(headers: &HeaderMap) -> Result<(Option<u64>, Option<u64>), RegistryError> {
    crate::ranges::chunk_bounds(
        headers.get("content-range").map(|v| v.as_bytes()),
        content_length(headers)?,
    )
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, RegistryError> {
    match headers.get(CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| RegistryError::SizeInvalid("invalid Content-Length".into())),
    }
}

/// A single-request upload's session, cancelled in the background when dropped before the upload completed.
struct AbandonedUpload(Option<(RegistryStore, UploadSession)>);

impl Drop for AbandonedUpload {
    fn drop(&mut self) {
        if let Some((store, session)) = self.0.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    // Already gone after a digest mismatch: nothing to do then.
                    let _ = store.cancel_upload(&session).await;
                });
            }
        }
    }
}

fn range_value(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

impl App {
    fn upload_location(&self, headers: &HeaderMap, s: &UploadSession) -> String {
        format!(
            "{}/v2/{}/blobs/uploads/{}",
            self.base_url(headers),
            s.name,
            s.id.as_str()
        )
    }

    fn blob_location(&self, headers: &HeaderMap, name: &RepoName, d: &Digest) -> String {
        format!("{}/v2/{name}/blobs/{d}", self.base_url(headers))
    }

    fn session(name: RepoName, id: &str) -> Result<UploadSession, RegistryError> {
        let id: UploadId = id.parse().map_err(|_| RegistryError::BlobUploadUnknown)?;
        Ok(UploadSession { name, id })
    }

    fn progress(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        s: &UploadSession,
        size: u64,
    ) -> Reply {
        Reply::new(status)
            .header(LOCATION, self.upload_location(headers, s))
            .header("range", range_value(size))
            .header("docker-upload-uuid", s.id.as_str())
            .header(CONTENT_LENGTH, "0")
    }

    fn created_blob(&self, headers: &HeaderMap, name: &RepoName, d: &Digest) -> Reply {
        Reply::new(StatusCode::CREATED)
            .header(LOCATION, self.blob_location(headers, name, d))
            .header("docker-content-digest", d.to_string())
            .header(CONTENT_LENGTH, "0")
    }

    pub(super) async fn start_upload(
        &self,
        name: RepoName,
        req: Request<RequestBody>,
    ) -> Result<Reply, RegistryError> {
        let q = query(&req);
        if let Some(m) = param(&q, "mount") {
            let d = digest(m)?;
            let from = match param(&q, "from") {
                Some(f) => Some(
                    f.parse::<RepoName>()
                        .map_err(|_| RegistryError::NameInvalid)?,
                ),
                None => None,
            };
            if self.store.mount_blob(&name, &d, from.as_ref()).await? {
                let event = match self.notifying() {
                    true => {
                        // The mount is done: a failure to read the size only leaves it out of the event.
                        let size = self.store.blob_size(&d).await.ok().flatten().unwrap_or(0);
                        self.blob_event("mount", &name, &d, size, from.as_ref())
                    }
                    false => None,
                };
                return Ok(self.created_blob(req.headers(), &name, &d).notify(event));
            }
        }
        let monolithic = match param(&q, "digest") {
            Some(d) => Some(digest(d)?),
            None => None,
        };
        let len = content_length(req.headers())?;
        let session = self.store.start_upload(&name).await?;
        let Some(d) = monolithic else {
            return Ok(self.progress(StatusCode::ACCEPTED, req.headers(), &session, 0));
        };
        let (parts, body) = req.into_parts();
        // The client of a single-request upload never learns the session's id, so nobody could cancel it: a
        // body that fails, or a request dropped mid-body, removes the session here.
        let mut abandoned = AbandonedUpload(Some((self.store.clone(), session.clone())));
        let size = self
            .store
            .commit_upload(&session, &d, Some((None, len, body_stream(body))))
            .await?;
        abandoned.0 = None;
        let event = self.blob_event("push", &name, &d, size, None);
        Ok(self.created_blob(&parts.headers, &name, &d).notify(event))
    }

    pub(super) async fn upload_status(
        &self,
        name: RepoName,
        id: &str,
        headers: &HeaderMap,
    ) -> Result<Reply, RegistryError> {
        let s = Self::session(name, id)?;
        let size = self.store.upload_size(&s).await?;
        Ok(self.progress(StatusCode::NO_CONTENT, headers, &s, size))
    }

    pub(super) async fn patch_upload(
        &self,
        name: RepoName,
        id: &str,
        req: Request<RequestBody>,
    ) -> Result<Reply, RegistryError> {
        let s = Self::session(name, id)?;
        let (parts, body) = req.into_parts();
        let (start, len) = chunk_bounds(&parts.headers)?;
        let appended = self
            .fail_full(
                &s,
                self.store
                    .append_upload(&s, start, len, body_stream(body))
                    .await,
            )
            .await?;
        Ok(self.progress(StatusCode::ACCEPTED, &parts.headers, &s, appended.size))
    }

    pub(super) async fn put_upload(
        &self,
        name: RepoName,
        id: &str,
        req: Request<RequestBody>,
    ) -> Result<Reply, RegistryError> {
        let s = Self::session(name, id)?;
        let q = query(&req);
        let d = digest(
            param(&q, "digest")
                .ok_or_else(|| RegistryError::DigestInvalid("digest parameter missing".into()))?,
        )?;
        let (parts, body) = req.into_parts();
        let (start, len) = chunk_bounds(&parts.headers)?;
        let final_chunk = if len == Some(0) && start.is_none() {
            None
        } else {
            Some((start, len, body_stream(body)))
        };
        let size = self
            .fail_full(&s, self.store.commit_upload(&s, &d, final_chunk).await)
            .await?;
        let event = self.blob_event("push", &s.name, &d, size, None);
        Ok(self.created_blob(&parts.headers, &s.name, &d).notify(event))
    }

    /// A session that ran out of space is removed before the answer, so nothing partial stays on the disk;
    /// the client starts again once space is freed.
    async fn fail_full<T>(
        &self,
        s: &UploadSession,
        r: Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        if let Err(RegistryError::StorageFull(_)) = &r {
            if let Err(e) = self.store.cancel_upload(s).await {
                tracing::warn!(error = ?e, "cannot remove an upload that ran out of space");
            }
        }
        r
    }

    pub(super) async fn cancel_upload(
        &self,
        name: RepoName,
        id: &str,
    ) -> Result<Reply, RegistryError> {
        let s = Self::session(name, id)?;
        self.store.cancel_upload(&s).await?;
        Ok(Reply::new(StatusCode::NO_CONTENT))
    }
}

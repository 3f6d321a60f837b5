//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`.

use crate::linger::RequestBody;
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, ETAG, LOCATION};
use http::{Request, StatusCode};
use http_body_util::BodyExt;

use super::{digest, full, App, Reply};
use crate::error::RegistryError;
use crate::events::{Pending, Target};
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::store::StoredManifest;

/// Parses a reference: a digest when it contains `:`, else a tag.
fn reference(r: &str) -> Result<Reference, RegistryError> {
    if r.contains(':') {
        Ok(Reference::Digest(digest(r)?))
    } else {
        Ok(Reference::Tag(
            r.parse::<Tag>().map_err(|_| RegistryError::TagInvalid)?,
        ))
    }
}

/// Reads a body up to `limit` bytes; more is `ManifestTooLarge`. An oversized body is drained (up to a bound)
/// before answering, so the client reads the 413 instead of a reset connection.
async fn read_limited(mut body: RequestBody, limit: u64) -> Result<Bytes, RegistryError> {
    let mut buf = BytesMut::new();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| RegistryError::ManifestInvalid(format!("body read failed: {e}")))?;
        if let Ok(data) = frame.into_data() {
            total += data.len() as u64;
            if total > limit.saturating_mul(4) {
                break;
            }
            if total <= limit {
                buf.extend_from_slice(&data);
            }
        }
    }
    if total > limit {
        return Err(RegistryError::ManifestTooLarge);
    }
    Ok(buf.freeze())
}

impl App {
    async fn find_manifest(
        &self,
        name: &RepoName,
        r: &Reference,
    ) -> Result<StoredManifest, RegistryError> {
        let d = match r {
            Reference::Digest(d) => Some(d.clone()),
            Reference::Tag(t) => self.store.serve_tag(name, t).await?,
        };
        let found = match d {
            Some(d) => self.store.serve_manifest(name, &d).await?,
            None => None,
        };
        match found {
            Some(m) => Ok(m),
            None if !self.store.repo_exists(name).await? => Err(RegistryError::NameUnknown),
            None => Err(RegistryError::ManifestUnknown),
        }
    }

    pub(super) async fn get_manifest(
        &self,
        name: RepoName,
        r: &str,
        head: bool,
    ) -> Result<Reply, RegistryError> {
        // A reference that is neither a tag nor a digest names no manifest: 404, as clients expect.
        let r = reference(r).map_err(|_| RegistryError::ManifestUnknown)?;
        let (m, stale) = match (self.mirrored(&name), &self.mirrors) {
            (Some((mirror, remote)), Some(mirrors)) => {
                let s = mirrors.manifest(&mirror, &remote, &name, &r).await?;
                (s.manifest, s.stale)
            }
            _ => (self.find_manifest(&name, &r).await?, false),
        };
        let tag = match &r {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        };
        let event = self.manifest_event("pull", &name, tag, &m.digest, &m.media_type, &m.bytes);
        let reply = Reply::new(StatusCode::OK)
            .notify(event)
            .header(CONTENT_TYPE, &m.media_type)
            .header(CONTENT_LENGTH, m.bytes.len().to_string())
            .header("docker-content-digest", m.digest.to_string())
            .header(ETAG, format!("\"{}\"", m.digest));
        let reply = if stale {
            reply.header("warning", crate::mirror::STALE_WARNING)
        } else {
            reply
        };
        Ok(if head {
            reply
        } else {
            reply.body(full(m.bytes))
        })
    }

    pub(super) async fn put_manifest(
        &self,
        name: RepoName,
        r: &str,
        req: Request<RequestBody>,
    ) -> Result<Reply, RegistryError> {
        let r = reference(r)?;
        let limit = self.config.http.max_manifest_bytes;
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit.saturating_mul(4)) {
            return Err(RegistryError::ManifestTooLarge);
        }
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string());
        let (parts, body) = req.into_parts();
        let bytes = read_limited(body, limit).await?;
        let (tag, expected) = match &r {
            Reference::Tag(t) => (Some(t), None),
            Reference::Digest(d) => (None, Some(d)),
        };
        let pushed = self
            .store
            .put_manifest(&name, tag, expected, bytes.clone(), content_type.as_deref())
            .await?;
        let event = if self.notifying() {
            // The media type pulls will serve, so that push and pull events agree.
            let media_type = crate::store::detect_media_type(&bytes);
            self.manifest_event("push", &name, tag, &pushed.digest, &media_type, &bytes)
        } else {
            None
        };
        let mut reply = Reply::new(StatusCode::CREATED)
            .notify(event)
            .header(
                LOCATION,
                format!(
                    "{}/v2/{name}/manifests/{}",
                    self.base_url(&parts.headers),
                    pushed.digest
                ),
            )
            .header("docker-content-digest", pushed.digest.to_string())
            .header(CONTENT_LENGTH, "0");
        if let Some(s) = pushed.subject {
            reply = reply.header("oci-subject", s.to_string());
        }
        Ok(reply)
    }

    pub(super) async fn delete_manifest(
        &self,
        name: RepoName,
        r: &str,
    ) -> Result<Reply, RegistryError> {
        let r = reference(r)?;
        self.require_delete()?;
        if !self.store.repo_exists(&name).await? {
            return Err(RegistryError::NameUnknown);
        }
        let event = match &r {
            Reference::Digest(d) => {
                self.store.delete_manifest(&name, d).await?;
                self.deletion(&name, Some(d), None)
            }
            Reference::Tag(t) => {
                self.store.delete_tag(&name, t).await?;
                self.deletion(&name, None, Some(t))
            }
        };
        Ok(Reply::new(StatusCode::ACCEPTED)
            .notify(event)
            .header(CONTENT_LENGTH, "0"))
    }

    /// A manifest's push or pull event, when events are recorded.
    fn manifest_event(
        &self,
        action: &'static str,
        name: &RepoName,
        tag: Option<&Tag>,
        d: &Digest,
        media_type: &str,
        bytes: &[u8],
    ) -> Option<Pending> {
        let notifier = self.events.get()?;
        let size = bytes.len() as u64;
        Some(Pending {
            action,
            target: Target {
                media_type: media_type.to_string(),
                size,
                length: size,
                digest: d.to_string(),
                repository: name.to_string(),
                tag: tag.map(|t| t.to_string()).unwrap_or_default(),
                references: if notifier.include_references() {
                    references_of(bytes)
                } else {
                    Vec::new()
                },
                ..Target::default()
            },
            path: format!("/v2/{name}/manifests/{d}"),
        })
    }

    /// A delete event (of a manifest or blob by digest, or of a tag), when events are recorded.
    pub(super) fn deletion(
        &self,
        name: &RepoName,
        d: Option<&Digest>,
        tag: Option<&Tag>,
    ) -> Option<Pending> {
        self.events.get()?;
        Some(Pending {
            action: "delete",
            target: Target {
                digest: d.map(|d| d.to_string()).unwrap_or_default(),
                repository: name.to_string(),
                tag: tag.map(|t| t.to_string()).unwrap_or_default(),
                ..Target::default()
            },
            path: String::new(),
        })
    }
}

/// The descriptors a manifest references, as registry:2 lists them: an image's config and layers, an index's
/// manifests (with their platform).
fn references_of(bytes: &[u8]) -> Vec<serde_json::Value> {
    let v = crate::oci::json_lenient(bytes);
    let keep = |d: &serde_json::Value| {
        let mut out = serde_json::Map::new();
        for k in [
            "mediaType",
            "size",
            "digest",
            "urls",
            "annotations",
            "platform",
        ] {
            if let Some(x) = d.get(k) {
                out.insert(k.to_string(), x.clone());
            }
        }
        serde_json::Value::Object(out)
    };
    let mut refs = Vec::new();
    if let Some(c) = v.get("config") {
        refs.push(keep(c));
    }
    for list in ["layers", "manifests"] {
        if let Some(items) = v.get(list).and_then(|l| l.as_array()) {
            refs.extend(items.iter().map(keep));
        }
    }
    refs
}

//! The HTTP API: the router and one module per resource.

mod blobs;
mod browse;
mod listing;
mod manifests;
mod uploads;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, BodyStream, Full, StreamBody};

use crate::config::Config;
use crate::error::RegistryError;
use crate::events::{Notifier, Pending, Target, BLOB_MEDIA_TYPE};
use crate::linger::RequestBody;
use crate::oci::{Digest, DigestError, RepoName};
use crate::storage::ByteStream;
use crate::store::{BodyStream as StoreBody, RegistryStore};

/// Response body: small buffers or a stream from storage.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// `Docker-Distribution-Api-Version`, on every response.
pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";

/// Shared state of the API.
pub struct App {
    /// Registry semantics over storage.
    pub store: RegistryStore,
    /// The configuration.
    pub config: Config,
    /// Notifications, once started ([`crate::start_notifications`]); unset when no endpoint is configured.
    pub events: std::sync::OnceLock<Arc<Notifier>>,
    /// Pull-through mirrors, when configured.
    pub mirrors: Option<Arc<crate::mirror::Mirrors>>,
}

/// What the accept loop knows of a request, passed to the handlers in its extensions.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// The TCP peer.
    pub peer: std::net::SocketAddr,
    /// The request's id (`X-Request-Id`, else one of ours).
    pub id: String,
}

/// What the router recognised in a path below `/v2/`.
#[derive(Debug, PartialEq)]
enum Route<'a> {
    Base,
    Catalog,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    Upload(&'a str, &'a str),
    Referrers(&'a str, &'a str),
    V1Ping,
    V1Search,
}

fn route(path: &str) -> Option<Route<'_>> {
    match path {
        "/v1/_ping" | "/v1/_ping/" => return Some(Route::V1Ping),
        "/v1/search" => return Some(Route::V1Search),
        "/v2" | "/v2/" => return Some(Route::Base),
        "/v2/_catalog" => return Some(Route::Catalog),
        _ => {}
    }
    let rest = path.strip_prefix("/v2/")?;
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(name));
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads")
        .or_else(|| rest.strip_suffix("/blobs/uploads/"))
    {
        return Some(Route::Upload(name, ""));
    }
    let (head, last) = rest.rsplit_once('/')?;
    let (name, kind) = head.rsplit_once('/')?;
    match kind {
        "manifests" => Some(Route::Manifest(name, last)),
        "blobs" => Some(Route::Blob(name, last)),
        "referrers" => Some(Route::Referrers(name, last)),
        "uploads" => {
            let name = name.strip_suffix("/blobs")?;
            Some(Route::Upload(name, last))
        }
        _ => None,
    }
}

/// The route's position in [`crate::metrics::HANDLERS`] (registry:2's `handler` label values, plus berth's
/// own routes).
pub fn handler_index(path: &str) -> usize {
    match route(path) {
        Some(Route::Base) => 0,
        Some(Route::Catalog) => 1,
        Some(Route::Tags(_)) => 2,
        Some(Route::Manifest(..)) => 3,
        Some(Route::Blob(..)) => 4,
        Some(Route::Upload(_, "")) => 5,
        Some(Route::Upload(..)) => 6,
        Some(Route::Referrers(..)) => 7,
        Some(Route::V1Ping) => 8,
        Some(Route::V1Search) => 9,
        None => 10,
    }
}

/// The repository a request path names, as the router reads it (`None` for routes without one: the base,
/// the catalog, search, ping, and paths it does not route). berth-proxy's access rules must read the same name
/// from the same path; the `router` fuzz target checks that they do.
pub fn repository_in(path: &str) -> Option<&str> {
    match route(path)? {
        Route::Tags(n)
        | Route::Manifest(n, _)
        | Route::Blob(n, _)
        | Route::Upload(n, _)
        | Route::Referrers(n, _) => Some(n),
        Route::Base | Route::Catalog | Route::V1Ping | Route::V1Search => None,
    }
}

/// Parses a repository name from the path.
fn repo(name: &str) -> Result<RepoName, RegistryError> {
    name.parse().map_err(|_| RegistryError::NameInvalid)
}

/// Parses a digest from the path or query.
fn digest(s: &str) -> Result<Digest, RegistryError> {
    Digest::parse(s).map_err(|e| match e {
        DigestError::Invalid => RegistryError::DigestInvalid(format!("invalid digest {s:?}")),
        DigestError::UnsupportedAlgorithm => {
            RegistryError::Unsupported(format!("digest algorithm of {s:?} is not supported"))
        }
    })
}

/// Query parameters, decoded.
fn query(req: &Request<RequestBody>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A request body as a stream of data bytes.
fn body_stream(body: RequestBody) -> StoreBody {
    Box::pin(
        TryStreamExt::map_err(BodyStream::new(body), std::io::Error::other)
            .try_filter_map(|frame| async move { Ok(frame.into_data().ok()) }),
    )
}

/// A full body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// A streamed body.
pub fn streamed(s: ByteStream) -> Body {
    StreamBody::new(s.map_ok(Frame::data)).boxed_unsync()
}

/// A response under construction.
pub struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Body,
    event: Option<Pending>,
}

impl Reply {
    /// A reply with a status and an empty body.
    pub fn new(status: StatusCode) -> Reply {
        Reply {
            status,
            headers: HeaderMap::new(),
            body: empty(),
            event: None,
        }
    }

    /// Attaches an event, recorded before the reply goes out.
    pub fn notify(mut self, event: Option<Pending>) -> Reply {
        self.event = event;
        self
    }

    /// Adds a header; values that are not valid header text are dropped (they come from our own formatting).
    pub fn header(mut self, name: impl TryInto<HeaderName>, value: impl AsRef<str>) -> Reply {
        if let (Ok(n), Ok(v)) = (name.try_into(), HeaderValue::from_str(value.as_ref())) {
            self.headers.insert(n, v);
        }
        self
    }

    /// Sets a JSON body with its type and length.
    pub fn json(self, v: &serde_json::Value) -> Reply {
        let bytes = Bytes::from(v.to_string());
        let len = bytes.len();
        let mut r = self
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, len.to_string());
        r.body = full(bytes);
        r
    }

    /// Sets the body.
    pub fn body(mut self, body: Body) -> Reply {
        self.body = body;
        self
    }

    fn into_response(self) -> Response<Body> {
        let mut resp = Response::new(self.body);
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        resp
    }
}

/// The response for an error: OCI JSON, plus the headers some errors carry.
pub fn error_response(e: &RegistryError, head: bool) -> Response<Body> {
    let (status, _, _) = e.parts();
    let body = e.body();
    let mut r = Reply::new(status)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, body.len().to_string());
    if let RegistryError::RangeInvalid {
        upload_offset,
        blob_size,
    } = e
    {
        if let Some(off) = upload_offset {
            r = r.header("range", format!("0-{}", off.saturating_sub(1)));
        }
        if let Some(size) = blob_size {
            r = r.header("content-range", format!("bytes */{size}"));
        }
    }
    if let RegistryError::Unavailable {
        retry_after: Some(after),
        ..
    }
    | RegistryError::TooManyRequests {
        retry_after: Some(after),
        ..
    } = e
    {
        r = r.header("retry-after", after);
    }
    if !head {
        r = r.body(full(body));
    }
    r.into_response()
}

impl App {
    /// Base URL for `Location` headers: configured, relative, or from `X-Forwarded-Proto` and `Host`.
    fn base_url(&self, headers: &HeaderMap) -> String {
        if self.config.http.relative_urls {
            return String::new();
        }
        if let Some(base) = self.config.external_base() {
            return base.to_string();
        }
        let first = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let proto = first("x-forwarded-proto")
            .filter(|p| p == "http" || p == "https")
            .unwrap_or_else(|| "http".into());
        match first("x-forwarded-host").or_else(|| first("host")) {
            Some(host)
                if host
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"/?#@\\".contains(&b)) =>
            {
                format!("{proto}://{host}")
            }
            _ => String::new(),
        }
    }

    /// Whether events are being recorded.
    pub(crate) fn notifying(&self) -> bool {
        self.events.get().is_some()
    }

    /// A blob's event, when events are recorded.
    pub(crate) fn blob_event(
        &self,
        action: &'static str,
        name: &RepoName,
        d: &Digest,
        size: u64,
        from: Option<&RepoName>,
    ) -> Option<Pending> {
        if !self.notifying() {
            return None;
        }
        Some(Pending {
            action,
            target: Target {
                media_type: BLOB_MEDIA_TYPE.into(),
                size,
                length: size,
                digest: d.to_string(),
                repository: name.to_string(),
                from_repository: from.map(|f| f.to_string()).unwrap_or_default(),
                ..Target::default()
            },
            path: format!("/v2/{name}/blobs/{d}"),
        })
    }

    /// Handles one request; never fails (errors become OCI error responses).
    pub async fn handle(self: Arc<Self>, req: Request<RequestBody>) -> Response<Body> {
        let head = req.method() == Method::HEAD;
        // What an event needs of the request, taken before the handler consumes it.
        let origin = self.events.get().map(|_| {
            let meta = req.extensions().get::<RequestMeta>();
            let (record, actor) = crate::events::request_record(
                req.method(),
                req.headers(),
                meta.map(|m| m.peer),
                meta.map(|m| m.id.as_str()).unwrap_or_default(),
            );
            (record, actor, self.base_url(req.headers()))
        });
        let mut resp = match self.dispatch(req).await {
            Ok(mut r) => {
                if let (Some(event), Some(notifier), Some((record, actor, base))) =
                    (r.event.take(), self.events.get(), origin)
                {
                    notifier.record(event, &base, record, actor).await;
                }
                r.into_response()
            }
            Err(e) => {
                if let RegistryError::Internal(cause) = &e {
                    tracing::error!(%cause, "request failed");
                }
                error_response(&e, head)
            }
        };
        resp.headers_mut()
            .insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
        if head {
            // Headers as for GET (Content-Length included), never a body.
            *resp.body_mut() = empty();
        }
        resp
    }

    async fn dispatch(&self, req: Request<RequestBody>) -> Result<Reply, RegistryError> {
        // `?ns=`, OCI registry proxying: the namespace a client (containerd) pulls from through this mirror. Only
        // configured namespaces are answered; this is no open proxy.
        let ns = req.uri().query().and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "ns")
                .map(|(_, v)| v.into_owned())
        });
        let Some(ns) = ns else {
            return self.route_request(req, None).await;
        };
        let mirror = self
            .mirrors
            .as_ref()
            .and_then(|m| m.by_namespace(&ns))
            .ok_or_else(|| RegistryError::NamespaceUnknown(ns.clone()))?;
        let prefix = mirror.prefix.clone();
        let reply = self.route_request(req, Some(&prefix)).await?;
        Ok(reply.header("oci-namespace", ns))
    }

    /// The mirror a repository is in, with the remote's name for it.
    fn mirrored(&self, name: &RepoName) -> Option<(Arc<crate::mirror::Mirror>, String)> {
        self.mirrors.as_ref()?.find(name)
    }

    /// Refuses writes to a mirrored repository, as registry:2's pull-through cache does.
    fn writable(&self, name: RepoName) -> Result<RepoName, RegistryError> {
        match self.mirrored(&name) {
            Some((m, _)) => Err(RegistryError::Unsupported(format!(
                "{name} is a mirror of {}: pushes and deletes are refused",
                m.url()
            ))),
            None => Ok(name),
        }
    }

    async fn route_request(
        &self,
        req: Request<RequestBody>,
        ns_prefix: Option<&str>,
    ) -> Result<Reply, RegistryError> {
        let path = req.uri().path().to_string();
        let Some(route) = route(&path) else {
            return Err(RegistryError::NotFound);
        };
        // With `?ns=`, the path's name is the remote's: the mirror's prefix is put in front.
        let repo = |n: &str| match ns_prefix {
            Some(p) if !p.is_empty() => repo(&format!("{p}/{n}")),
            _ => repo(n),
        };
        let method = req.method().clone();
        match (route, method) {
            (Route::Base, Method::GET | Method::HEAD) => {
                Ok(Reply::new(StatusCode::OK).json(&serde_json::json!({})))
            }
            (Route::V1Ping, Method::GET | Method::HEAD) => {
                Ok(Reply::new(StatusCode::OK).json(&serde_json::json!({})))
            }
            // HEAD is answered like GET everywhere, without the body (see `handle`).
            (Route::V1Search, Method::GET | Method::HEAD) => self.v1_search(&req).await,
            (Route::Catalog, Method::GET | Method::HEAD) => self.catalog(&req).await,
            (Route::Tags(n), Method::GET | Method::HEAD) => self.tags(repo(n)?, &req).await,
            (Route::Referrers(n, d), Method::GET | Method::HEAD) => {
                self.referrers(repo(n)?, d, &req).await
            }
            (Route::Manifest(n, r), m) => {
                let name = repo(n)?;
                match m {
                    Method::GET | Method::HEAD => {
                        self.get_manifest(name, r, m == Method::HEAD).await
                    }
                    Method::PUT => self.put_manifest(self.writable(name)?, r, req).await,
                    Method::DELETE => self.delete_manifest(self.writable(name)?, r).await,
                    _ => Err(RegistryError::MethodNotAllowed),
                }
            }
            (Route::Blob(n, d), m) => {
                let name = repo(n)?;
                match m {
                    Method::GET | Method::HEAD => {
                        self.get_blob(name, d, m == Method::HEAD, req.headers())
                            .await
                    }
                    Method::DELETE => self.delete_blob(self.writable(name)?, d).await,
                    _ => Err(RegistryError::MethodNotAllowed),
                }
            }
            (Route::Upload(n, id), m) => {
                let name = self.writable(repo(n)?)?;
                match (m, id.is_empty()) {
                    (Method::POST, true) => self.start_upload(name, req).await,
                    (Method::GET | Method::HEAD, false) => {
                        self.upload_status(name, id, req.headers()).await
                    }
                    (Method::PATCH, false) => self.patch_upload(name, id, req).await,
                    (Method::PUT, false) => self.put_upload(name, id, req).await,
                    (Method::DELETE, false) => self.cancel_upload(name, id).await,
                    _ => Err(RegistryError::MethodNotAllowed),
                }
            }
            _ => Err(RegistryError::MethodNotAllowed),
        }
    }

    fn require_delete(&self) -> Result<(), RegistryError> {
        if self.config.storage.delete_enabled {
            Ok(())
        } else {
            Err(RegistryError::Unsupported(
                "deletes are disabled (storage.delete_enabled / REGISTRY_STORAGE_DELETE_ENABLED)"
                    .into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/v2/"), Some(Route::Base));
        assert_eq!(route("/v2/_catalog"), Some(Route::Catalog));
        assert_eq!(route("/v2/a/b/tags/list"), Some(Route::Tags("a/b")));
        assert_eq!(
            route("/v2/a/b/manifests/latest"),
            Some(Route::Manifest("a/b", "latest"))
        );
        assert_eq!(
            route("/v2/a/manifests/manifests/x"),
            Some(Route::Manifest("a/manifests", "x"))
        );
        assert_eq!(
            route("/v2/a/blobs/sha256:00"),
            Some(Route::Blob("a", "sha256:00"))
        );
        assert_eq!(route("/v2/a/blobs/uploads/"), Some(Route::Upload("a", "")));
        assert_eq!(route("/v2/a/blobs/uploads"), Some(Route::Upload("a", "")));
        assert_eq!(
            route("/v2/a/b/blobs/uploads/123-4"),
            Some(Route::Upload("a/b", "123-4"))
        );
        assert_eq!(
            route("/v2/a/referrers/sha256:1"),
            Some(Route::Referrers("a", "sha256:1"))
        );
        assert_eq!(route("/v1/_ping"), Some(Route::V1Ping));
        assert_eq!(route("/v2/a"), None);
        assert_eq!(route("/v3/"), None);
        assert_eq!(route("/v2/x/uploads/1"), None);
        use crate::metrics::HANDLERS;
        assert_eq!(HANDLERS[handler_index("/v2/")], "base");
        assert_eq!(HANDLERS[handler_index("/v2/_catalog")], "catalog");
        assert_eq!(HANDLERS[handler_index("/v2/a/tags/list")], "tags");
        assert_eq!(HANDLERS[handler_index("/v2/a/manifests/x")], "manifest");
        assert_eq!(HANDLERS[handler_index("/v2/a/blobs/sha256:0")], "blob");
        assert_eq!(
            HANDLERS[handler_index("/v2/a/blobs/uploads/")],
            "blob_upload"
        );
        assert_eq!(
            HANDLERS[handler_index("/v2/a/blobs/uploads/1")],
            "blob_upload_chunk"
        );
        assert_eq!(
            HANDLERS[handler_index("/v2/a/referrers/sha256:0")],
            "referrers"
        );
        assert_eq!(HANDLERS[handler_index("/v1/_ping")], "v1_ping");
        assert_eq!(HANDLERS[handler_index("/v1/search")], "v1_search");
        assert_eq!(HANDLERS[handler_index("/x")], "unknown");
    }
}

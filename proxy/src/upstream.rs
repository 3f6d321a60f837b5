//! The upstream registries: a keep-alive connection pool, connect and read timeouts, and round-robin over
//! several replicas with failover when a connection cannot be made.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::error::ProxyError;
use crate::forward::{DeferredBody, ProxyBody};

/// The upstream replicas and the pool used to reach them.
pub struct Upstreams {
    targets: Vec<Authority>,
    next: AtomicUsize,
    client: Client<HttpConnector, ProxyBody>,
    read_timeout: Duration,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("targets", &self.targets)
            .finish()
    }
}

impl Upstreams {
    /// A pool over `targets` (`host:port`, plain HTTP).
    pub fn new(targets: Vec<Authority>, connect_timeout: Duration, read_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .build(connector);
        Upstreams {
            targets,
            next: AtomicUsize::new(0),
            client,
            read_timeout,
        }
    }

    /// Send a request (its headers already rewritten) to the next replica, trying the others when a connection
    /// cannot be made. The body is only consumed by the replica that accepted the connection.
    pub async fn send<B>(
        &self,
        parts: http::request::Parts,
        body: B,
    ) -> Result<Response<Incoming>, ProxyError>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
        B::Error: Into<crate::forward::BoxError>,
    {
        let slot = Arc::new(Mutex::new(Some(body)));
        let n = self.targets.len();
        if n == 0 {
            return Err(ProxyError::UpstreamUnavailable);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        for i in 0..n {
            let target = &self.targets[(start + i) % n];
            let uri = Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(target.clone())
                .path_and_query(path.clone())
                .build()
                .map_err(|_| ProxyError::Internal)?;
            let mut req = Request::new(DeferredBody::new(Arc::clone(&slot)).boxed());
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = uri;
            *req.version_mut() = Version::HTTP_11;
            *req.headers_mut() = parts.headers.clone();
            match tokio::time::timeout(self.read_timeout, self.client.request(req)).await {
                Ok(Ok(resp)) => return Ok(resp),
                Ok(Err(e)) => {
                    let body_unread = slot.lock().map(|s| s.is_some()).unwrap_or(false);
                    if e.is_connect() && body_unread && i + 1 < n {
                        tracing::warn!(
                            upstream = %target,
                            "cannot connect ({}); trying the next upstream",
                            error_chain(&e)
                        );
                        continue;
                    }
                    tracing::warn!(upstream = %target, "upstream request failed: {}", error_chain(&e));
                    return Err(ProxyError::UpstreamUnavailable);
                }
                Err(_) => {
                    tracing::warn!(upstream = %target, "upstream did not answer within the read timeout");
                    return Err(ProxyError::UpstreamTimeout);
                }
            }
        }
        Err(ProxyError::UpstreamUnavailable)
    }
}

/// An error with its causes, `outer: inner: innermost`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

//! The upstream registries: a keep-alive connection pool, connect and read timeouts, and round-robin over
//! several replicas with failover when a connection cannot be made.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::error::ProxyError;
use crate::forward::{DeferredSlot, Progress, ProxyBody, RelayBody};

/// The upstream replicas and the pool used to reach them.
pub struct Upstreams {
    targets: Vec<Authority>,
    next: AtomicUsize,
    client: Client<HttpConnector, ProxyBody>,
    read_timeout: Duration,
    metrics: Option<Arc<crate::metrics::Metrics>>,
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
            metrics: None,
        }
    }

    /// Counts upstream errors and tracks each replica's state in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        if metrics.enabled() {
            self.metrics = Some(metrics);
        }
        self
    }

    /// Records how reaching `target` went: `None` for an answer, else the kind of error.
    fn note(&self, target: &Authority, error: Option<&str>) {
        let Some(m) = &self.metrics else {
            return;
        };
        let up = match error {
            None => 1,
            Some(kind) => {
                m.upstream_errors
                    .with_label_values(&[target.as_str(), kind])
                    .inc();
                i64::from(kind != "connect")
            }
        };
        m.upstream_up.with_label_values(&[target.as_str()]).set(up);
    }

    /// Send a request (its headers already rewritten) to the next replica, trying the others when a connection
    /// cannot be made. The body is only consumed by the replica that accepted the connection.
    ///
    /// The read timeout is an idle timeout: while the request body streams, the body's own idle timeout covers
    /// a client that stops sending, and this one only fires when the upstream stops taking the body; once the
    /// body has been sent completely, the upstream has `read_timeout` to answer. A failure of the client's body
    /// (broken off, idle, too large) is the client's fault, not the upstream's.
    pub async fn send<B>(
        &self,
        parts: http::request::Parts,
        body: RelayBody<B>,
    ) -> Result<Response<Incoming>, ProxyError>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
        B::Error: Into<crate::forward::BoxError>,
    {
        let progress = Arc::new(Progress::new(http_body::Body::is_end_stream(&body)));
        let slot: DeferredSlot<B> = Arc::new(Mutex::new(Some(body.track(Arc::clone(&progress)))));
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
            let mut req = Request::new(RelayBody::deferred(Arc::clone(&slot)).boxed());
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = uri;
            *req.version_mut() = Version::HTTP_11;
            *req.headers_mut() = parts.headers.clone();
            match answer(self.client.request(req), &progress, self.read_timeout).await {
                Ok(Ok(resp)) => {
                    self.note(target, None);
                    return Ok(resp);
                }
                Ok(Err(e)) => {
                    if let Some(fault) = progress.client_fault() {
                        tracing::debug!(upstream = %target, "request body failed on the client side: {}", error_chain(&e));
                        return Err(fault);
                    }
                    self.note(
                        target,
                        Some(if e.is_connect() { "connect" } else { "failed" }),
                    );
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
                Err(AnswerTimeout::BodyNotTaken) => {
                    self.note(target, Some("timeout"));
                    tracing::warn!(upstream = %target, "upstream stopped reading the request body for the read timeout");
                    return Err(ProxyError::UpstreamTimeout);
                }
                Err(AnswerTimeout::NoAnswer) => {
                    self.note(target, Some("timeout"));
                    tracing::warn!(upstream = %target, "upstream did not answer within the read timeout after the request body");
                    return Err(ProxyError::UpstreamTimeout);
                }
            }
        }
        Err(ProxyError::UpstreamUnavailable)
    }
}

impl Upstreams {
    /// Whether some replica answers `GET /v2/` within `timeout` (each tried in turn): readiness. The error
    /// says what each replica did.
    pub async fn ready(&self, timeout: Duration) -> Result<(), String> {
        let mut why = Vec::new();
        for target in &self.targets {
            let uri = Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(target.clone())
                .path_and_query("/v2/")
                .build()
                .map_err(|e| e.to_string())?;
            let mut req = Request::new(
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed(),
            );
            *req.uri_mut() = uri;
            let answered = tokio::time::timeout(timeout, self.client.request(req)).await;
            if let Some(m) = &self.metrics {
                let up = matches!(&answered, Ok(Ok(_)));
                m.upstream_up
                    .with_label_values(&[target.as_str()])
                    .set(i64::from(up));
            }
            match answered {
                Ok(Ok(resp)) if resp.status().is_success() => return Ok(()),
                Ok(Ok(resp)) => why.push(format!("{target}: {}", resp.status())),
                Ok(Err(e)) => why.push(format!("{target}: {}", error_chain(&e))),
                Err(_) => why.push(format!("{target}: no answer in {timeout:?}")),
            }
        }
        Err(why.join("; "))
    }
}

/// Why [`answer`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AnswerTimeout {
    /// The upstream did not take any of the request body for the read timeout (the client was not the one
    /// holding it up).
    BodyNotTaken,
    /// The request body was sent completely, and no answer came within the read timeout.
    NoAnswer,
}

/// Wait for the upstream's answer with an idle deadline: `timeout` after the request body last moved (or after
/// it ended), but never while the body is waiting for the client (the body's own idle timeout covers that).
async fn answer<F: std::future::Future>(
    fut: F,
    progress: &Progress,
    timeout: Duration,
) -> Result<F::Output, AnswerTimeout> {
    tokio::pin!(fut);
    loop {
        let deadline = {
            let st = progress.state();
            if st.waiting_on_client && !st.ended {
                Instant::now() + timeout
            } else {
                st.last + timeout
            }
        };
        tokio::select! {
            out = &mut fut => return Ok(out),
            _ = tokio::time::sleep_until(deadline) => {
                let st = progress.state();
                let now = Instant::now();
                if st.waiting_on_client && !st.ended {
                    continue;
                }
                if st.last + timeout <= now {
                    return Err(if st.ended { AnswerTimeout::NoAnswer } else { AnswerTimeout::BodyNotTaken });
                }
            }
        }
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

//! Prometheus metrics: one registry of counters the request stages increment, served in the text format on
//! `metrics_listen` (`BERTH_METRICS_LISTEN`), a plain-HTTP operator listener of its own, off the public port
//! (it also answers the health and readiness probes, for probes that do not speak TLS). Labels
//! come from small fixed sets (route class, method, status class, result, configured upstreams); never a
//! repository or a user.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use berth_net::labels::{method_index, slots, METHODS};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The path metrics are served on.
pub const METRICS_PATH: &str = "/metrics";

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0,
    300.0, 900.0,
];

/// Every metric of berth-proxy.
pub struct Metrics {
    registry: Registry,
    /// Whether anything is counted: only when the metrics are served (`metrics_listen`), so that a proxy
    /// without them pays nothing.
    enabled: bool,
    /// `berth_proxy_requests_total{route,method,class}`: requests answered.
    pub requests: IntCounterVec,
    /// `berth_proxy_request_duration_seconds{route,method}`: from the request head to the end of the
    /// response body.
    pub duration: HistogramVec,
    /// `berth_proxy_received_bytes_total{route}`: request body bytes.
    pub received: IntCounterVec,
    /// `berth_proxy_sent_bytes_total{route}`: response body bytes.
    pub sent: IntCounterVec,
    /// `berth_proxy_connections_open`: client connections open (handshakes included).
    pub connections_open: IntGauge,
    /// `berth_proxy_connections_total`: client connections accepted.
    pub connections: IntCounter,
    /// `berth_proxy_tls_handshakes_total{result}`: `ok`, or why it failed (`timeout`, `plain_http`,
    /// `closed`, `protocol`, `incompatible`, `alert`, `other`).
    pub handshakes: IntCounterVec,
    /// `berth_proxy_auth_total{result}`: `success` (every accepted credential), `cache_hit` (those answered
    /// from the verified-credential cache), `failure`, `throttled`, `busy`, `anonymous`.
    pub auth: IntCounterVec,
    /// `berth_proxy_upstream_errors_total{upstream,kind}`: `connect`, `failed`, `timeout`.
    pub upstream_errors: IntCounterVec,
    /// `berth_proxy_upstream_up{upstream}`: 1 when the last attempt to reach the replica connected.
    pub upstream_up: IntGaugeVec,
    /// `berth_proxy_certificate_expiry_timestamp_seconds{certificate}`: `server`, `ca`.
    pub cert_expiry: IntGaugeVec,
    /// The request path's series, looked up once each (by route, method and class indexes) instead of
    /// hashing their labels at every request.
    requests_by: Box<[OnceLock<IntCounter>]>,
    duration_by: Box<[OnceLock<Histogram>]>,
    received_by: Box<[OnceLock<IntCounter>]>,
    sent_by: Box<[OnceLock<IntCounter>]>,
}

/// Route classes, as [`route_index`] numbers them.
pub const ROUTES: [&str; 15] = [
    "base",
    "manifest",
    "blob",
    "blob_upload",
    "blob_upload_chunk",
    "tags",
    "catalog",
    "referrers",
    "search",
    "ping",
    "health",
    "ready",
    "token",
    "ui",
    "other",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

impl Metrics {
    /// Metrics that count nothing (no `metrics_listen`).
    pub fn disabled() -> Metrics {
        Metrics {
            enabled: false,
            ..Metrics::new()
        }
    }

    /// Whether anything is counted.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A fresh set of metrics (each proxy its own: tests run several in one process).
    pub fn new() -> Metrics {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let _ = r.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        let cv = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gv = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        Metrics {
            enabled: true,
            requests: cv(
                "berth_proxy_requests_total",
                "Requests answered, by route class, method and status class.",
                &["route", "method", "class"],
            ),
            duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "berth_proxy_request_duration_seconds",
                        "Time from a request's head to the end of its response body, by route class and method.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["route", "method"],
                )
                .expect("valid metric"),
            ),
            received: cv(
                "berth_proxy_received_bytes_total",
                "Request body bytes received, by route class.",
                &["route"],
            ),
            sent: cv(
                "berth_proxy_sent_bytes_total",
                "Response body bytes sent, by route class.",
                &["route"],
            ),
            connections_open: reg(
                &r,
                IntGauge::new(
                    "berth_proxy_connections_open",
                    "Client connections open, TLS handshakes included.",
                )
                .expect("valid metric"),
            ),
            connections: reg(
                &r,
                IntCounter::new(
                    "berth_proxy_connections_total",
                    "Client connections accepted.",
                )
                .expect("valid metric"),
            ),
            handshakes: cv(
                "berth_proxy_tls_handshakes_total",
                "TLS handshakes, by result (ok, or why they failed).",
                &["result"],
            ),
            auth: cv(
                "berth_proxy_auth_total",
                "Authentication results: success, cache_hit (part of success), failure, throttled, busy, anonymous.",
                &["result"],
            ),
            upstream_errors: cv(
                "berth_proxy_upstream_errors_total",
                "Requests the upstream registry failed, by replica and kind (connect, failed, timeout).",
                &["upstream", "kind"],
            ),
            upstream_up: gv(
                "berth_proxy_upstream_up",
                "Whether the last attempt to reach each upstream replica connected (1) or not (0).",
                &["upstream"],
            ),
            cert_expiry: gv(
                "berth_proxy_certificate_expiry_timestamp_seconds",
                "When the served certificate and the dev CA expire (Unix time).",
                &["certificate"],
            ),
            registry: r,
            requests_by: slots(ROUTES.len() * METHODS.len() * CLASSES.len()),
            duration_by: slots(ROUTES.len() * METHODS.len()),
            received_by: slots(ROUTES.len()),
            sent_by: slots(ROUTES.len()),
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Counts a request whose response body has ended (or was dropped).
    /// `route` is a [`route_index`].
    pub fn request_done(
        &self,
        route: usize,
        method: &Method,
        status: u16,
        took: Duration,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        if !self.enabled {
            return;
        }
        let r = route.min(ROUTES.len() - 1);
        let m = method_index(method);
        let c = class_index(status);
        let (route, method) = (ROUTES[r], METHODS[m]);
        self.requests_by[(r * METHODS.len() + m) * CLASSES.len() + c]
            .get_or_init(|| {
                self.requests
                    .with_label_values(&[route, method, CLASSES[c]])
            })
            .inc();
        self.duration_by[r * METHODS.len() + m]
            .get_or_init(|| self.duration.with_label_values(&[route, method]))
            .observe(took.as_secs_f64());
        if bytes_in > 0 {
            self.received_by[r]
                .get_or_init(|| self.received.with_label_values(&[route]))
                .inc_by(bytes_in);
        }
        if bytes_out > 0 {
            self.sent_by[r]
                .get_or_init(|| self.sent.with_label_values(&[route]))
                .inc_by(bytes_out);
        }
    }

    /// Counts an authentication result.
    pub fn auth(&self, result: &str) {
        if self.enabled {
            self.auth.with_label_values(&[result]).inc();
        }
    }

    /// Counts a TLS handshake's result.
    pub fn handshake(&self, result: &str) {
        if self.enabled {
            self.handshakes.with_label_values(&[result]).inc();
        }
    }
}

/// `2xx`, `4xx`...
pub fn status_class(status: u16) -> &'static str {
    CLASSES[class_index(status)]
}

fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// The route class of a path, as the registry names its routes (`base`, `manifest`, `blob`,
/// `blob_upload`, `blob_upload_chunk`, `tags`, `catalog`, `referrers`, `search`), or the proxy's own
/// (`ping`, `health`, `ready`, `token`, `ui`), else `other`.
pub fn route_label(path: &str) -> &'static str {
    ROUTES[route_index(path)]
}

/// The position of a path's route class in [`ROUTES`].
pub fn route_index(path: &str) -> usize {
    match path {
        "/v2/" | "/v2" => return 0,
        "/v2/_catalog" => return 6,
        "/v1/search" => return 8,
        "/_ping" | "/v1/_ping" | "/v1/_ping/" => return 9,
        crate::forward::HEALTH_PATH => return 10,
        crate::forward::READY_PATH => return 11,
        crate::authn::token::TOKEN_PATH => return 12,
        p if crate::ui::is_ui_path(p) => return 13,
        _ => {}
    }
    let other = ROUTES.len() - 1;
    let Some(rest) = path.strip_prefix("/v2/") else {
        return other;
    };
    if rest.ends_with("/tags/list") {
        return 5;
    }
    if rest.ends_with("/blobs/uploads") || rest.ends_with("/blobs/uploads/") {
        return 3;
    }
    let Some((head, _)) = rest.rsplit_once('/') else {
        return other;
    };
    let kind = head.rsplit_once('/').map_or(head, |(_, k)| k);
    match kind {
        "manifests" => 1,
        "blobs" => 2,
        "referrers" => 7,
        "uploads" if head.ends_with("/blobs/uploads") => 4,
        _ => other,
    }
}

/// Counts a connection from accept to close.
pub struct OpenConnection(Option<Arc<Metrics>>);

impl OpenConnection {
    /// Counts a connection just accepted.
    pub fn start(metrics: &Arc<Metrics>) -> OpenConnection {
        if !metrics.enabled {
            return OpenConnection(None);
        }
        metrics.connections.inc();
        metrics.connections_open.inc();
        OpenConnection(Some(Arc::clone(metrics)))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(m) = &self.0 {
            m.connections_open.dec();
        }
    }
}

/// A request to the operator listener, answered by the server (it knows the upstreams and the certificate).
pub type AdminHandler = Arc<
    dyn Fn(
            Request<Incoming>,
        ) -> std::pin::Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

/// The answer to `GET /metrics`.
pub fn metrics_response(metrics: &Metrics) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(metrics.render())));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(CONTENT_TYPE),
    );
    resp
}

/// A plain-text answer.
pub fn text_response(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Serves the operator listener (plain HTTP/1.1) on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    handler: AdminHandler,
    shutdown: impl Future<Output = ()>,
) {
    let handle = move |req| handler(req);
    berth_net::operator::serve(listener, handle, "metrics listener", shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_have_classes() {
        assert_eq!(route_label("/v2/"), "base");
        assert_eq!(route_label("/v2/a/b/manifests/latest"), "manifest");
        assert_eq!(route_label("/v2/a/blobs/sha256:00"), "blob");
        assert_eq!(route_label("/v2/a/blobs/uploads/"), "blob_upload");
        assert_eq!(
            route_label("/v2/a/b/blobs/uploads/123"),
            "blob_upload_chunk"
        );
        assert_eq!(route_label("/v2/a/tags/list"), "tags");
        assert_eq!(route_label("/v2/_catalog"), "catalog");
        assert_eq!(route_label("/v2/a/referrers/sha256:1"), "referrers");
        assert_eq!(route_label("/_ping"), "ping");
        assert_eq!(route_label("/nope"), "other");
        assert_eq!(status_class(404), "4xx");
        for (i, r) in ROUTES.iter().enumerate() {
            assert_eq!(ROUTES.iter().position(|x| x == r), Some(i));
        }
    }

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::new();
        m.request_done(
            route_index("/v2/a/blobs/sha256:0"),
            &Method::GET,
            200,
            Duration::from_millis(2),
            0,
            7,
        );
        m.auth("cache_hit");
        let text = m.render();
        assert!(text
            .contains("berth_proxy_requests_total{class=\"2xx\",method=\"get\",route=\"blob\"} 1"));
        assert!(text.contains("berth_proxy_sent_bytes_total{route=\"blob\"} 7"));
        assert!(text.contains("berth_proxy_auth_total{result=\"cache_hit\"} 1"));
    }
}

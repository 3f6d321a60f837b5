//! Prometheus metrics: one registry of counters every stage increments, served in the text format on the debug
//! listener (`http.debug.prometheus`). The HTTP and storage metrics keep registry:2's names and labels, so
//! dashboards and alerts written for it keep working; what registry:2 does not measure is named `berth_*`.
//! Labels come from small fixed sets (route, method, status, storage operation, configured endpoint names);
//! never a repository, a digest or a user.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use berth_net::labels::{method_index, slots, METHODS};
use bytes::Bytes;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::storage::{
    AppendWriter, ByteStream, ObjectMeta, ObjectStream, Space, Storage, StorageError,
};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Latency buckets (seconds): registry:2's HTTP buckets.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0,
];
/// Storage latency buckets (seconds): from a page-cache hit to a slow bucket.
const STORAGE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Body size buckets (bytes): registry:2's, 1 KiB to 2 GiB by powers of 2.
fn size_buckets() -> Vec<f64> {
    (0..22).map(|i| 1024.0 * f64::powi(2.0, i)).collect()
}

/// Every metric of berth-registry.
pub struct Metrics {
    registry: Registry,
    /// Collections that recounted the blob store: a count that began before one of them is stale.
    pub census_epoch: std::sync::atomic::AtomicU64,
    /// `registry_http_requests_total{code,handler,method}`.
    pub http_requests: IntCounterVec,
    /// `registry_http_request_duration_seconds{handler,method}`: until the response headers.
    pub http_duration: prometheus::HistogramVec,
    /// `registry_http_request_size_bytes{handler}`: request body bytes.
    pub http_request_size: HistogramVec,
    /// `registry_http_response_size_bytes{handler}`: response body bytes (`Content-Length`).
    pub http_response_size: HistogramVec,
    /// `registry_http_in_flight_requests{handler}`.
    pub http_in_flight: IntGaugeVec,
    /// `registry_storage_action_seconds{driver,action}`.
    pub storage_seconds: HistogramVec,
    /// `berth_registry_storage_errors_total{driver,action}`: failures other than "not found".
    pub storage_errors: IntCounterVec,
    /// `berth_registry_uploads_open`: upload sessions this process holds state for.
    pub uploads_open: IntGauge,
    /// `berth_registry_blobs`: blobs in the blob store (counted at start and by each collection, kept up to
    /// date by this process's pushes and deletions).
    pub blobs: IntGauge,
    /// `berth_registry_blob_bytes`: their total size.
    pub blob_bytes: IntGauge,
    /// `berth_registry_gc_runs_total{result}`: `done`, `skipped` (another collector held the lease), `failed`,
    /// `interrupted` (by a shutdown).
    pub gc_runs: IntCounterVec,
    /// `berth_registry_cache_requests_total{result}`: metadata cache lookups, `hit` (memory), `shared_hit`
    /// (Redis) or `miss`.
    pub cache_requests: IntCounterVec,
    /// `berth_registry_mirror_requests_total{kind,result}`: pulls of mirrored repositories, by kind
    /// (`manifest`, `blob`) and result: `hit` (served from storage), `miss` (fetched), `revalidated` (a tag
    /// checked with the remote after its TTL), `stale` (served while the remote was unreachable), `error`.
    pub mirror_requests: IntCounterVec,
    /// `berth_registry_mirror_fetched_bytes_total`: bytes fetched from remotes.
    pub mirror_fetched_bytes: IntCounter,
    /// `berth_registry_mirror_fetches`: remote blob fetches under way.
    pub mirror_fetches: IntGauge,
    /// `berth_registry_cache_entries`: entries the metadata cache holds.
    pub cache_entries: IntGauge,
    /// `berth_registry_cache_bytes`: memory they take, as counted against `storage.cache.max_bytes`.
    pub cache_bytes: IntGauge,
    /// `berth_registry_redis_errors_total`: Redis exchanges that failed (refused, timed out, an error reply).
    pub redis_errors: IntCounter,
    /// `berth_registry_redis_up`: 1 while the shared cache is used, 0 while its breaker skips it.
    pub redis_up: IntGauge,
    /// `berth_registry_gc_freed_bytes_total`.
    pub gc_freed_bytes: IntCounter,
    /// `berth_registry_gc_deleted_blobs_total`.
    pub gc_deleted_blobs: IntCounter,
    /// `berth_registry_storage_free_bytes`: free space where blobs are written (filesystem only).
    pub free_bytes: IntGauge,
    /// `berth_registry_storage_reserve_bytes`: the part of it uploads never use.
    pub reserve_bytes: IntGauge,
    /// `registry_notifications_events_total{endpoint,type}`; type is `Events` (queued), `Successes`,
    /// `Failures` (sent, refused) or `Errors` (not sent).
    pub notify_events: IntCounterVec,
    /// `registry_notifications_pending{endpoint}`: events spooled and not yet delivered.
    pub notify_pending: IntGaugeVec,
    /// `registry_notifications_status_total{code,endpoint}`: the endpoint's answers (`200 OK`).
    pub notify_status: IntCounterVec,
    /// `berth_registry_notifications_dropped_total{endpoint}`: undelivered events dropped from a full spool.
    pub notify_dropped: IntCounterVec,
    /// `berth_registry_notifications_spool_events`: events in the spool.
    pub spool_events: IntGauge,
    /// `berth_registry_notifications_spool_capacity`: the most it holds.
    pub spool_capacity: IntGauge,
    /// The request path's series, looked up once each (by handler, method and status indexes) instead of
    /// hashing their labels at every request.
    requests_by: Box<[OnceLock<IntCounter>]>,
    duration_by: Box<[OnceLock<Histogram>]>,
    request_size_by: Box<[OnceLock<Histogram>]>,
    response_size_by: Box<[OnceLock<Histogram>]>,
    in_flight_by: Box<[OnceLock<IntGauge>]>,
}

/// The routes (`handler` label), as [`crate::api::handler_index`] numbers them.
pub const HANDLERS: [&str; 11] = [
    "base",
    "catalog",
    "tags",
    "manifest",
    "blob",
    "blob_upload",
    "blob_upload_chunk",
    "referrers",
    "v1_ping",
    "v1_search",
    "unknown",
];
/// The statuses the registry answers with; others are counted through a label lookup.
const CODES: [u16; 22] = [
    200, 201, 202, 204, 206, 301, 302, 304, 307, 400, 401, 403, 404, 405, 409, 413, 416, 429, 500,
    502, 503, 507,
];

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let m = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let m = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let m = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let m = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set of metrics (every instance its own registry: tests run several registries in one process).
    pub fn new() -> Metrics {
        let r = Registry::new();
        // CPU, memory, open files, start time, threads: `process_*`, read from /proc at each scrape.
        #[cfg(target_os = "linux")]
        {
            let _ = r.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        Metrics {
            census_epoch: std::sync::atomic::AtomicU64::new(0),
            http_requests: counter_vec(
                &r,
                "registry_http_requests_total",
                "Requests answered, by status code, route and method.",
                &["code", "handler", "method"],
            ),
            http_duration: histogram_vec(
                &r,
                "registry_http_request_duration_seconds",
                "Time to answer a request (until the response headers), by route and method.",
                &["handler", "method"],
                LATENCY_BUCKETS,
            ),
            http_request_size: histogram_vec(
                &r,
                "registry_http_request_size_bytes",
                "Request body bytes received, by route.",
                &["handler"],
                &size_buckets(),
            ),
            http_response_size: histogram_vec(
                &r,
                "registry_http_response_size_bytes",
                "Response body bytes sent, by route.",
                &["handler"],
                &size_buckets(),
            ),
            http_in_flight: gauge_vec(
                &r,
                "registry_http_in_flight_requests",
                "Requests being handled, by route.",
                &["handler"],
            ),
            storage_seconds: histogram_vec(
                &r,
                "registry_storage_action_seconds",
                "Storage operations and their latency, by backend and operation.",
                &["driver", "action"],
                STORAGE_BUCKETS,
            ),
            storage_errors: counter_vec(
                &r,
                "berth_registry_storage_errors_total",
                "Storage operations that failed (not counting objects found absent), by backend and operation.",
                &["driver", "action"],
            ),
            uploads_open: gauge(
                &r,
                "berth_registry_uploads_open",
                "Upload sessions this process holds state for.",
            ),
            blobs: gauge(&r, "berth_registry_blobs", "Blobs in the blob store."),
            blob_bytes: gauge(
                &r,
                "berth_registry_blob_bytes",
                "Total size of the blobs in the blob store.",
            ),
            gc_runs: counter_vec(
                &r,
                "berth_registry_gc_runs_total",
                "Scheduled garbage collections, by result (done, skipped, failed, interrupted).",
                &["result"],
            ),
            cache_requests: counter_vec(
                &r,
                "berth_registry_cache_requests_total",
                "Metadata cache lookups, by result (hit in memory, shared_hit in Redis, miss).",
                &["result"],
            ),
            mirror_requests: counter_vec(
                &r,
                "berth_registry_mirror_requests_total",
                "Pulls of mirrored repositories, by kind (manifest, blob) and result (hit, miss, revalidated, stale, error).",
                &["kind", "result"],
            ),
            mirror_fetched_bytes: counter(
                &r,
                "berth_registry_mirror_fetched_bytes_total",
                "Bytes fetched from mirrors' remote registries.",
            ),
            mirror_fetches: gauge(
                &r,
                "berth_registry_mirror_fetches",
                "Remote blob fetches under way.",
            ),
            cache_entries: gauge(
                &r,
                "berth_registry_cache_entries",
                "Entries the metadata cache holds.",
            ),
            cache_bytes: gauge(
                &r,
                "berth_registry_cache_bytes",
                "Memory the metadata cache's entries take.",
            ),
            redis_errors: counter(
                &r,
                "berth_registry_redis_errors_total",
                "Redis exchanges of the shared metadata cache that failed (refused, timed out, an error reply).",
            ),
            redis_up: gauge(
                &r,
                "berth_registry_redis_up",
                "1 while the shared metadata cache in Redis is used, 0 while its circuit breaker skips it.",
            ),
            gc_freed_bytes: counter(
                &r,
                "berth_registry_gc_freed_bytes_total",
                "Bytes of blobs deleted by garbage collection.",
            ),
            gc_deleted_blobs: counter(
                &r,
                "berth_registry_gc_deleted_blobs_total",
                "Blobs deleted by garbage collection.",
            ),
            free_bytes: gauge(
                &r,
                "berth_registry_storage_free_bytes",
                "Free space where blobs are written (filesystem storage).",
            ),
            reserve_bytes: gauge(
                &r,
                "berth_registry_storage_reserve_bytes",
                "Free space uploads never use (storage.filesystem.min_free).",
            ),
            notify_events: counter_vec(
                &r,
                "registry_notifications_events_total",
                "Notification events, by endpoint and type (Events, Successes, Failures, Errors).",
                &["endpoint", "type"],
            ),
            notify_pending: gauge_vec(
                &r,
                "registry_notifications_pending",
                "Events spooled and not yet delivered, by endpoint.",
                &["endpoint"],
            ),
            notify_status: counter_vec(
                &r,
                "registry_notifications_status_total",
                "Endpoint answers to notification deliveries, by status code and endpoint.",
                &["code", "endpoint"],
            ),
            notify_dropped: counter_vec(
                &r,
                "berth_registry_notifications_dropped_total",
                "Undelivered events dropped because the spool was full, by endpoint.",
                &["endpoint"],
            ),
            spool_events: gauge(
                &r,
                "berth_registry_notifications_spool_events",
                "Events in the notification spool.",
            ),
            spool_capacity: gauge(
                &r,
                "berth_registry_notifications_spool_capacity",
                "The most events the notification spool holds (notifications.spool.maxevents).",
            ),
            registry: r,
            requests_by: slots(HANDLERS.len() * METHODS.len() * CODES.len()),
            duration_by: slots(HANDLERS.len() * METHODS.len()),
            request_size_by: slots(HANDLERS.len()),
            response_size_by: slots(HANDLERS.len()),
            in_flight_by: slots(HANDLERS.len()),
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Counts a request that was answered; `handler` is a [`crate::api::handler_index`].
    pub fn request_done(
        &self,
        handler: usize,
        method: &http::Method,
        status: u16,
        took: Duration,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let h = handler.min(HANDLERS.len() - 1);
        let m = method_index(method);
        let (handler, method) = (HANDLERS[h], METHODS[m]);
        // The status is turned into text only when its series is first looked up.
        let count = || {
            let code = itoa_status(status);
            let code = std::str::from_utf8(&code[..]).unwrap_or("0");
            self.http_requests
                .with_label_values(&[code, handler, method])
        };
        match CODES.iter().position(|c| *c == status) {
            Some(c) => self.requests_by[(h * METHODS.len() + m) * CODES.len() + c]
                .get_or_init(count)
                .inc(),
            None => count().inc(),
        }
        self.duration_by[h * METHODS.len() + m]
            .get_or_init(|| self.http_duration.with_label_values(&[handler, method]))
            .observe(took.as_secs_f64());
        self.request_size_by[h]
            .get_or_init(|| self.http_request_size.with_label_values(&[handler]))
            .observe(bytes_in as f64);
        self.response_size_by[h]
            .get_or_init(|| self.http_response_size.with_label_values(&[handler]))
            .observe(bytes_out as f64);
    }

    /// Adds a blob of `size` bytes to the census (a new blob written by this process).
    pub fn blob_added(&self, size: u64) {
        self.blobs.inc();
        self.blob_bytes.add(i64::try_from(size).unwrap_or(i64::MAX));
    }
}

fn itoa_status(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

/// A request in flight on a route, for `registry_http_in_flight_requests`.
pub struct InFlight(IntGauge);

impl InFlight {
    /// Counts a request on `handler` (a [`crate::api::handler_index`]) until dropped.
    pub fn start(metrics: &Metrics, handler: usize) -> InFlight {
        let h = handler.min(HANDLERS.len() - 1);
        let g = metrics.in_flight_by[h]
            .get_or_init(|| metrics.http_in_flight.with_label_values(&[HANDLERS[h]]))
            .clone();
        g.inc();
        InFlight(g)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A [`Storage`] that times every operation of the one it wraps (`registry_storage_action_seconds`) and counts
/// its failures. Streams are timed until they are opened, not until they are read.
pub struct MeteredStorage {
    inner: Arc<dyn Storage>,
    driver: &'static str,
    metrics: Arc<Metrics>,
    /// The timer of each action, looked up once.
    timers: [OnceLock<Histogram>; ACTIONS.len()],
}

/// The storage operations timed (`action` label).
const ACTIONS: [&str; 10] = [
    "Stat",
    "Reader",
    "GetContent",
    "PutContent",
    "Writer",
    "Move",
    "List",
    "Delete",
    "Create",
    "DeleteBatch",
];

impl MeteredStorage {
    /// Wraps `inner`, labelled `driver` (`filesystem`, `s3`).
    pub fn new(inner: Arc<dyn Storage>, driver: &'static str, metrics: Arc<Metrics>) -> Self {
        MeteredStorage {
            inner,
            driver,
            metrics,
            timers: Default::default(),
        }
    }

    fn note<T>(&self, action: usize, began: Instant, r: &Result<T, StorageError>) {
        let action = action.min(ACTIONS.len() - 1);
        self.timers[action]
            .get_or_init(|| {
                self.metrics
                    .storage_seconds
                    .with_label_values(&[self.driver, ACTIONS[action]])
            })
            .observe(began.elapsed().as_secs_f64());
        let action = ACTIONS[action];
        if let Err(e) = r {
            if !e.is_not_found() {
                self.metrics
                    .storage_errors
                    .with_label_values(&[self.driver, action])
                    .inc();
            }
        }
    }
}

macro_rules! timed {
    ($self:ident, $action:expr, $call:expr) => {{
        let began = Instant::now();
        let r = $call.await;
        $self.note($action, began, &r);
        r
    }};
}

#[async_trait]
impl Storage for MeteredStorage {
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        timed!(self, 0, self.inner.stat(key))
    }
    async fn read(&self, key: &str, range: Option<(u64, u64)>) -> Result<ByteStream, StorageError> {
        timed!(self, 1, self.inner.read(key, range))
    }
    async fn read_small(&self, key: &str, limit: u64) -> Result<Bytes, StorageError> {
        timed!(self, 2, self.inner.read_small(key, limit))
    }
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        timed!(self, 3, self.inner.put(key, bytes))
    }
    async fn append(&self, key: &str) -> Result<Box<dyn AppendWriter>, StorageError> {
        timed!(self, 4, self.inner.append(key))
    }
    async fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        timed!(self, 5, self.inner.rename(from, to))
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        timed!(self, 6, self.inner.list(prefix))
    }
    async fn list_shared(&self, prefix: &str) -> Result<Arc<[String]>, StorageError> {
        timed!(self, 6, self.inner.list_shared(prefix))
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        timed!(self, 7, self.inner.delete(key))
    }
    async fn create(&self, key: &str, bytes: Bytes) -> Result<bool, StorageError> {
        timed!(self, 8, self.inner.create(key, bytes))
    }
    fn walk(&self, prefix: &str) -> ObjectStream {
        self.inner.walk(prefix)
    }
    async fn delete_batch(&self, keys: &[String], durable: bool) -> Result<(), StorageError> {
        timed!(self, 9, self.inner.delete_batch(keys, durable))
    }
    async fn space(&self) -> Result<Option<Space>, StorageError> {
        self.inner.space().await
    }
    fn local_path(&self, key: &str) -> Option<std::path::PathBuf> {
        self.inner.local_path(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::new();
        m.request_done(4, &http::Method::GET, 200, Duration::from_millis(3), 0, 10);
        m.request_done(4, &http::Method::GET, 200, Duration::from_millis(3), 0, 20);
        m.request_done(4, &http::Method::GET, 418, Duration::from_millis(3), 0, 0);
        let text = m.render();
        assert!(text.contains(
            "registry_http_requests_total{code=\"200\",handler=\"blob\",method=\"get\"} 2"
        ));
        assert!(text.contains("registry_http_response_size_bytes_sum{handler=\"blob\"} 30"));
        assert!(text.contains(
            "registry_http_requests_total{code=\"418\",handler=\"blob\",method=\"get\"} 1"
        ));
        assert_eq!(itoa_status(404), *b"404");
    }
}

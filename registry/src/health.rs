//! Health checks and the debug listener (`http.debug.addr`, env `REGISTRY_HTTP_DEBUG_ADDR`), registry:2's
//! endpoint: `GET /debug/health` answers 200 `{}` while every check passes, and 503 with
//! `{"<check>": "<what failed>", ...}` otherwise. Checks run on their own schedule; the endpoint reports their
//! latest results, so probing it costs nothing.
//!
//! - `storagedriver_<driver>` (`health.storagedriver`): a small object written, read back and deleted under
//!   `_berth/health/`; unhealthy after `threshold` failures in a row.
//! - `storage_free_space` (filesystem): the free space is above the reserve uploads never use.
//! - one check per `[[health.file]]`, named by the file: unhealthy while the file exists (to drain a node).
//! - `notifications_spool`: the notification spool is not full.
//!
//! With `http.debug.prometheus.enabled`, the listener also serves the metrics ([`crate::metrics`]) on
//! `http.debug.prometheus.path`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::api::App;
use crate::config::{parse_duration, StorageDriver};

/// The path answered on the debug listener.
pub const HEALTH_PATH: &str = "/debug/health";

/// The latest result of every check: the failing ones, by name.
#[derive(Debug, Default)]
pub struct Health {
    failing: Mutex<BTreeMap<String, String>>,
}

impl Health {
    fn set(&self, name: &str, result: Result<(), String>) {
        let mut f = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                if f.remove(name).is_some() {
                    tracing::info!(check = name, "health check passes again");
                }
            }
            Err(e) => {
                if f.get(name) != Some(&e) {
                    tracing::warn!(check = name, error = %e, "health check fails");
                }
                f.insert(name.to_string(), e);
            }
        }
    }

    /// Whether every check passes, and the JSON body registry:2 answers (`{}`, or the failing checks).
    pub fn report(&self) -> (bool, String) {
        let f = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        (
            f.is_empty(),
            serde_json::to_string(&*f).unwrap_or_else(|_| "{}".into()),
        )
    }

    /// Starts the configured checks (each runs once at once, then on its interval) until the tasks are
    /// dropped with the runtime.
    pub fn spawn(app: &Arc<App>) -> Arc<Health> {
        let health = Arc::new(Health::default());
        let cfg = &app.config.health;
        if cfg.storagedriver.enabled {
            let interval =
                parse_duration(&cfg.storagedriver.interval).unwrap_or(Duration::from_secs(10));
            let threshold = cfg.storagedriver.threshold.max(1);
            let name = match app.config.storage.driver {
                StorageDriver::Filesystem => "storagedriver_filesystem",
                StorageDriver::S3 => "storagedriver_s3",
            };
            let (h, app) = (Arc::clone(&health), Arc::clone(app));
            let key = format!("_berth/health/{:016x}", rand::random::<u64>());
            tokio::spawn(async move {
                let mut failures = 0u32;
                let mut ticks = tokio::time::interval(interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    let storage = app.store.storage().as_ref();
                    match tokio::time::timeout(
                        interval.max(Duration::from_secs(5)),
                        round_trip(storage, &key),
                    )
                    .await
                    .unwrap_or_else(|_| Err("no answer in time".into()))
                    {
                        Ok(()) => {
                            failures = 0;
                            h.set(name, Ok(()));
                        }
                        Err(e) => {
                            failures = failures.saturating_add(1);
                            if failures >= threshold {
                                h.set(name, Err(e));
                            }
                        }
                    }
                    h.set("storage_free_space", free_space(storage).await);
                }
            });
        }
        for f in &cfg.file {
            let interval = parse_duration(&f.interval).unwrap_or(Duration::from_secs(10));
            let (h, path) = (Arc::clone(&health), f.file.clone());
            tokio::spawn(async move {
                let name = path.display().to_string();
                let mut ticks = tokio::time::interval(interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    let exists = tokio::fs::try_exists(&path).await.unwrap_or(true);
                    h.set(
                        &name,
                        if exists {
                            Err("file exists".into())
                        } else {
                            Ok(())
                        },
                    );
                }
            });
        }
        health
    }
}

/// Writes a small object, reads it back, deletes it.
async fn round_trip(storage: &dyn crate::storage::Storage, key: &str) -> Result<(), String> {
    let token = format!("{:032x}", rand::random::<u128>());
    storage
        .put(key, Bytes::from(token.clone()))
        .await
        .map_err(|e| format!("write: {e}"))?;
    let back = storage
        .read_small(key, 64)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if back != token.as_bytes() {
        return Err("read back something else than was written".into());
    }
    storage
        .delete(key)
        .await
        .map_err(|e| format!("delete: {e}"))
}

/// Whether the free space is above the reserve (always, for storage without a limit).
async fn free_space(storage: &dyn crate::storage::Storage) -> Result<(), String> {
    match storage.space().await {
        Ok(Some(sp)) if sp.available <= sp.reserve => Err(format!(
            "free space {} is at or below the reserve {} (uploads are refused)",
            crate::storage::human_bytes(sp.available),
            crate::storage::human_bytes(sp.reserve)
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("cannot read the free space: {e}")),
    }
}

fn answer(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// Sets the gauges read from the state of things (free space, uploads, the spool) and renders every metric.
pub async fn scrape(app: &App) -> String {
    let m = app.store.metrics();
    m.uploads_open
        .set(i64::try_from(app.store.upload_sessions()).unwrap_or(i64::MAX));
    if let Ok(Some(space)) = app.store.storage().space().await {
        m.free_bytes
            .set(i64::try_from(space.available).unwrap_or(i64::MAX));
        m.reserve_bytes
            .set(i64::try_from(space.reserve).unwrap_or(i64::MAX));
    }
    if let Some(n) = app.events.get() {
        n.refresh_metrics();
    }
    m.render()
}

async fn debug_request(
    health: Arc<Health>,
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let prometheus = &app.config.http.debug.prometheus;
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, path) if prometheus.enabled && path == prometheus.path => {
            let mut resp = answer(StatusCode::OK, scrape(&app).await);
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            resp
        }
        (&Method::GET | &Method::HEAD, HEALTH_PATH) => {
            // The spool check is read at once: it is a comparison of two numbers.
            let spool = app.events.get().filter(|n| n.spool_full()).map(|_| {
                format!(
                    "the notification spool is full ({} events): endpoints are not keeping up, and the \
                     oldest undelivered events are being dropped",
                    app.config.notifications.spool.maxevents
                )
            });
            health.set("notifications_spool", spool.map_or(Ok(()), Err));
            let (ok, body) = health.report();
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            answer(status, body)
        }
        (_, HEALTH_PATH) => answer(StatusCode::METHOD_NOT_ALLOWED, "{}".into()),
        _ => answer(StatusCode::NOT_FOUND, "{}".into()),
    };
    let _ = req.into_body().collect().await;
    Ok(resp)
}

/// Serves the debug endpoints on `listener` until `shutdown` resolves.
pub async fn serve_debug(
    listener: TcpListener,
    health: Arc<Health>,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) {
    let handle = move |req| {
        let (h, a) = (Arc::clone(&health), Arc::clone(&app));
        async move {
            match debug_request(h, a, req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        }
    };
    berth_net::operator::serve(listener, handle, "debug listener", shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_read_like_registry_2() {
        let h = Health::default();
        assert_eq!(h.report(), (true, "{}".into()));
        h.set("storagedriver_filesystem", Err("write: read-only".into()));
        h.set("/srv/drain", Err("file exists".into()));
        let (ok, body) = h.report();
        assert!(!ok);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["storagedriver_filesystem"], "write: read-only");
        assert_eq!(v["/srv/drain"], "file exists");
        h.set("/srv/drain", Ok(()));
        h.set("storagedriver_filesystem", Ok(()));
        assert_eq!(h.report(), (true, "{}".into()));
    }
}

//! berth-registry: an OCI Distribution v1.1 registry over registry:2's storage layout.
//!
//! [`App`] handles requests; [`server::serve`] runs it on a listener. Tests build both in-process, and also
//! start the real binary.

pub mod api;
pub mod cache;
pub mod config;
pub mod error;
pub mod events;
pub mod health;
pub mod linger;
pub mod metrics;
pub mod mirror;
pub mod oci;
pub mod paths;
pub mod ranges;
pub mod redis;
pub mod server;
pub mod storage;
pub mod store;
pub mod tls;

use std::sync::Arc;

pub use api::App;
pub use config::Config;

/// Builds the application for a configuration: opens the storage and the store over it.
pub fn build(config: Config) -> std::io::Result<Arc<App>> {
    let metrics = Arc::new(metrics::Metrics::new());
    let (storage, driver): (Arc<dyn storage::Storage>, &'static str) = match config.storage.driver {
        config::StorageDriver::Filesystem => (
            Arc::new(
                storage::fs::FsStorage::new(&config.storage.root_directory)?.with_min_free(
                    config::parse_min_free(&config.storage.min_free)
                        .unwrap_or(storage::fs::MinFree::Auto),
                ),
            ),
            "filesystem",
        ),
        config::StorageDriver::S3 => (
            Arc::new(
                storage::s3::S3Storage::new(&config.storage.s3.options())
                    .map_err(std::io::Error::other)?,
            ),
            "s3",
        ),
    };
    // Storage operations are timed only when the metrics are served.
    let storage: Arc<dyn storage::Storage> = if config.http.debug.prometheus.enabled {
        Arc::new(metrics::MeteredStorage::new(
            storage,
            driver,
            Arc::clone(&metrics),
        ))
    } else {
        storage
    };
    let mut store = store::RegistryStore::with_metrics(storage, Arc::clone(&metrics));
    if let Some(limits) = config.storage.cache_limits() {
        let mut c = cache::MetaCache::new(limits, Arc::clone(&metrics));
        if config.storage.cache_in_redis() {
            let opts = config.redis.options().map_err(std::io::Error::other)?;
            c = c.with_shared(
                redis::Redis::new(opts, metrics),
                &config.storage.cache_namespace(),
                config::parse_duration(&config.redis.ttl).unwrap_or_default(),
            );
        }
        store = store.with_cache(Arc::new(c));
    }
    let mirrors = mirror::Mirrors::new(&config, store.clone()).map_err(std::io::Error::other)?;
    Ok(Arc::new(App {
        store,
        config,
        events: std::sync::OnceLock::new(),
        mirrors,
    }))
}

/// The collection options a configuration asks for.
pub fn gc_options(config: &Config) -> store::gc::GcOptions {
    store::gc::GcOptions {
        grace: config.gc.grace(),
        delete_untagged: config.gc.delete_untagged,
        upload_max_age: config.gc.upload_max_age(),
        dry_run: false,
        retention: Arc::new(
            store::retention::Retention::compile(&config.gc.retention).unwrap_or_default(),
        ),
        mirrors: config
            .mirror_specs()
            .into_iter()
            .map(|m| (m.prefix, m.ttl))
            .collect(),
    }
}

/// The scheduled collections' task; [`Collector::stop`] ends it before the runtime goes away.
pub struct Collector {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// Stops the schedule. A collection under way is dropped where it stands, as a crash would leave it (the
    /// next collector resumes once its lease expires); it is logged as interrupted, not as failed.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starts the scheduled collections (`gc.interval`; none when it is zero), logging what each freed.
pub fn spawn_collector(app: &Arc<App>) -> Option<Collector> {
    let interval = app.config.gc.interval();
    if interval.is_zero() {
        tracing::info!("garbage collection off (gc.interval is 0)");
        return None;
    }
    let opts = gc_options(&app.config);
    let store = app.store.clone();
    tracing::info!(
        interval = ?interval,
        grace = ?opts.grace,
        delete_untagged = opts.delete_untagged,
        "garbage collection scheduled"
    );
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stopped.changed() => return,
            }
            let began = std::time::Instant::now();
            tracing::debug!("garbage collection started");
            let runs = &store.metrics().gc_runs;
            let result = tokio::select! {
                r = store.collect_garbage(&opts) => r,
                _ = stopped.changed() => {
                    runs.with_label_values(&["interrupted"]).inc();
                    tracing::info!(
                        after_ms = began.elapsed().as_millis() as u64,
                        "garbage collection interrupted by shutdown"
                    );
                    return;
                }
            };
            match result {
                Ok(r) => {
                    runs.with_label_values(&["done"]).inc();
                    tracing::info!(
                        tags = r.tags.len(),
                        blobs = r.blobs.len(),
                        bytes = r.bytes,
                        manifests = r.manifests.len(),
                        links = r.links,
                        uploads = r.uploads.len(),
                        live = r.blobs_live,
                        spared = r.spared,
                        took_ms = began.elapsed().as_millis() as u64,
                        "garbage collection done"
                    )
                }
                Err(store::gc::GcError::Busy(owner)) => {
                    runs.with_label_values(&["skipped"]).inc();
                    tracing::info!(%owner, "garbage collection skipped: another collector runs")
                }
                Err(e) => {
                    runs.with_label_values(&["failed"]).inc();
                    tracing::warn!(error = %e, "garbage collection failed")
                }
            }
        }
    });
    Some(Collector { stop, task })
}

/// Counts the blob store in the background, once, so that `berth_registry_blobs` starts from the truth; from
/// then on pushes and collections keep it up to date.
pub fn spawn_census(app: &Arc<App>) -> tokio::task::JoinHandle<()> {
    let store = app.store.clone();
    tokio::spawn(async move {
        match store.count_blobs().await {
            Ok((n, bytes)) => tracing::debug!(blobs = n, bytes, "blob store counted"),
            Err(e) => tracing::warn!(error = %e, "cannot count the blob store"),
        }
    })
}

/// Starts notifications when endpoints are configured: opens the spool (resuming what an earlier run left)
/// and the delivery tasks. `port` is the one the registry listens on (events name it as their source).
pub async fn start_notifications(app: &Arc<App>, port: u16) -> Result<(), storage::StorageError> {
    let started = events::Notifier::start(
        &app.config,
        port,
        Arc::clone(app.store.storage()),
        Arc::clone(app.store.metrics()),
    )
    .await?;
    if let Some(n) = started {
        let _ = app.events.set(n);
    }
    Ok(())
}

//! The metadata cache on a real S3 endpoint (moto_server): repeated `HEAD`s of blobs and `GET`s of manifests are
//! answered without a request to the bucket; the registry's own changes (a tag moved, a manifest, a tag or a
//! blob deleted, a collection) show at once, however long the TTL; another replica's show within the TTL.
//!
//! moto_server is installed by `scripts/test.sh`; a missing tool fails the test.

mod common;

use std::time::{Duration, Instant};

use common::s3::Moto;
use common::Registry;
use http::StatusCode;

fn start(moto: &Moto, bucket: &str, extra: &[(&str, &str)]) -> (Registry, Registry) {
    let env = moto.registry_env(bucket, "r");
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(&[
        ("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0"),
        ("REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED", "true"),
        ("REGISTRY_STORAGE_DELETE_ENABLED", "true"),
        ("REGISTRY_HEALTH_STORAGEDRIVER_ENABLED", "false"),
    ]);
    all.extend_from_slice(extra);
    let mut reg = Registry::start(&all);
    let line = reg.next_line();
    let debug = Registry::remote(
        line.strip_prefix("berth-registry debug on ")
            .unwrap_or_else(|| panic!("unexpected second line {line:?}")),
    );
    (reg, debug)
}

async fn metrics(debug: &Registry) -> String {
    let r = debug.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    String::from_utf8(r.body.to_vec()).unwrap()
}

/// Requests berth made to the storage so far (every action).
fn storage_requests(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("registry_storage_action_seconds_count{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn hits(text: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix("berth_registry_cache_requests_total{result=\"hit\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn manifest_digest(reg: &Registry, repo: &str, reference: &str) -> Option<String> {
    let r = reg
        .send(
            http::Method::GET,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("accept", "application/vnd.oci.image.manifest.v1+json")],
            common::full(bytes::Bytes::new()),
        )
        .await;
    match r.status {
        StatusCode::OK => Some(r.header("docker-content-digest").unwrap().to_string()),
        StatusCode::NOT_FOUND => None,
        s => panic!("GET manifest {repo}:{reference}: {s} {:?}", r.body),
    }
}

async fn blob_there(reg: &Registry, repo: &str, d: &str) -> bool {
    match reg.head(&format!("/v2/{repo}/blobs/{d}")).await.status {
        StatusCode::OK => true,
        StatusCode::NOT_FOUND => false,
        s => panic!("HEAD blob: {s}"),
    }
}

#[tokio::test]
async fn on_s3_repeated_reads_skip_the_bucket_and_own_changes_show_at_once() {
    let moto = Moto::start();
    moto.create_bucket("cache");
    // A TTL far longer than the test: whatever shows at once shows because the write invalidated it.
    let (reg, debug) = start(
        &moto,
        "cache",
        &[
            ("BERTH_GC_INTERVAL", "0"),
            ("BERTH_STORAGE_CACHE_TTL", "1h"),
        ],
    );
    let (first, _) = reg.push_image("app", "v1", &[b"layer of the first"]).await;
    let layer = common::sha256(b"layer of the first");
    assert!(blob_there(&reg, "app", &layer).await);
    assert_eq!(
        manifest_digest(&reg, "app", "v1").await,
        Some(first.clone())
    );
    assert_eq!(
        manifest_digest(&reg, "app", &first).await,
        Some(first.clone())
    );

    let before = metrics(&debug).await;
    for _ in 0..5 {
        assert!(blob_there(&reg, "app", &layer).await);
        assert_eq!(
            manifest_digest(&reg, "app", "v1").await,
            Some(first.clone())
        );
    }
    let after = metrics(&debug).await;
    assert_eq!(
        storage_requests(&after),
        storage_requests(&before),
        "repeated HEADs and GETs went to the bucket"
    );
    // Two lookups per HEAD (link, size), three per GET by tag (tag, revision, bytes).
    assert_eq!(hits(&after) - hits(&before), 25.0);

    // The tag moves: the next pull sees the new manifest.
    let (second, _) = reg.push_image("app", "v1", &[b"layer of the second"]).await;
    assert_ne!(first, second);
    assert_eq!(
        manifest_digest(&reg, "app", "v1").await,
        Some(second.clone())
    );

    // A manifest deleted by digest is gone at once (its revision link was cached).
    let r = reg.delete(&format!("/v2/app/manifests/{first}")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(manifest_digest(&reg, "app", &first).await, None);

    // A blob deleted from the repository.
    let r = reg.delete(&format!("/v2/app/blobs/{layer}")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(!blob_there(&reg, "app", &layer).await);

    // A tag deleted.
    let r = reg.delete("/v2/app/manifests/v1").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(manifest_digest(&reg, "app", "v1").await, None);
    assert_eq!(manifest_digest(&reg, "app", &second).await, Some(second));
}

fn collections_done(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("garbage collection done")
        .count()
}

#[tokio::test]
async fn on_s3_what_a_collection_removes_is_gone_from_the_cache_at_once() {
    let moto = Moto::start();
    moto.create_bucket("cache-gc");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("registry.log");
    let env = moto.registry_env("cache-gc", "");
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(&[
        ("REGISTRY_STORAGE_DELETE_ENABLED", "true"),
        ("REGISTRY_HEALTH_STORAGEDRIVER_ENABLED", "false"),
        ("BERTH_GC_INTERVAL", "1s"),
        ("BERTH_GC_GRACE", "0"),
        ("BERTH_STORAGE_CACHE_TTL", "1h"),
        ("REGISTRY_LOG_LEVEL", "info"),
    ]);
    let reg = Registry::start_logged(&dir.path().join("unused"), &all, Some(&log));
    let (digest, _) = reg
        .push_image("gone", "v1", &[b"only this image's layer"])
        .await;
    let layer = common::sha256(b"only this image's layer");
    assert!(blob_there(&reg, "gone", &layer).await);
    assert_eq!(
        manifest_digest(&reg, "gone", &digest).await,
        Some(digest.clone())
    );
    let r = reg.delete(&format!("/v2/gone/manifests/{digest}")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // The layer is still linked (deletes remove the manifest's links only) until a collection runs.
    assert!(blob_there(&reg, "gone", &layer).await);
    // Two more collections finished: one of them started after the delete.
    let n = collections_done(&log);
    let deadline = Instant::now() + Duration::from_secs(120);
    while collections_done(&log) < n + 2 {
        assert!(Instant::now() < deadline, "collections did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !blob_there(&reg, "gone", &layer).await,
        "a collected blob is still answered (from the cache)"
    );
}

#[tokio::test]
async fn on_s3_another_replicas_tag_push_shows_within_the_ttl() {
    let moto = Moto::start();
    moto.create_bucket("cache-two");
    let extra = [
        ("BERTH_GC_INTERVAL", "0"),
        ("BERTH_STORAGE_CACHE_TTL", "1s"),
    ];
    let (a, _) = start(&moto, "cache-two", &extra);
    let (b, _) = start(&moto, "cache-two", &extra);
    let (first, _) = a.push_image("shared", "latest", &[b"first"]).await;
    assert_eq!(
        manifest_digest(&b, "shared", "latest").await,
        Some(first.clone())
    );
    let (second, _) = a.push_image("shared", "latest", &[b"second"]).await;
    let pushed = Instant::now();
    loop {
        let seen = manifest_digest(&b, "shared", "latest").await;
        if seen.as_deref() == Some(second.as_str()) {
            break;
        }
        assert_eq!(seen.as_deref(), Some(first.as_str()));
        // The bound is the TTL; the margin is for a loaded machine.
        assert!(
            pushed.elapsed() < Duration::from_secs(10),
            "replica B still serves the old tag"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

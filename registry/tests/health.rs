//! Health on the debug listener (`REGISTRY_HTTP_DEBUG_ADDR`), for real: the registry on a tmpfs, its
//! `/debug/health` 200 `{}`, then 503 naming the storage check while the filesystem is read-only and 200 again
//! once it is writable, and 503 naming the drain file while that file exists. Needs root (mount).

mod common;

use std::time::{Duration, Instant};

use common::{Registry, Tmpfs};
use http::StatusCode;

/// Polls `/debug/health` until it answers `want` (at most 30 s), and returns the body.
async fn health_becomes(debug: &Registry, want: StatusCode, why: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = debug.get("/debug/health").await;
        if r.status == want {
            return r.json();
        }
        assert!(
            Instant::now() < deadline,
            "{why}: /debug/health still {} {:?}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn debug_health_follows_the_storage_and_the_drain_file() {
    let fs = Tmpfs::mount("16m");
    let root = fs.path().join("data");
    let work = tempfile::tempdir().unwrap();
    let drain = work.path().join("drain");
    let config = work.path().join("registry.toml");
    std::fs::write(
        &config,
        format!(
            "[[health.file]]\nfile = {:?}\ninterval = \"1s\"\n",
            drain.display().to_string()
        ),
    )
    .unwrap();
    let mut reg = Registry::start_with_args(
        &root,
        &[
            ("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0"),
            ("REGISTRY_HEALTH_STORAGEDRIVER_INTERVAL", "1s"),
            ("REGISTRY_HEALTH_STORAGEDRIVER_THRESHOLD", "2"),
            ("BERTH_STORAGE_MIN_FREE", "0"),
        ],
        None,
        &["--config", config.to_str().unwrap()],
    );
    let line = reg.next_line();
    let addr = line
        .strip_prefix("berth-registry debug on ")
        .unwrap_or_else(|| panic!("unexpected second line {line:?}"));
    let debug = Registry::remote(addr);
    assert_eq!(
        health_becomes(&debug, StatusCode::OK, "at start").await,
        serde_json::json!({})
    );
    // The API is not on the debug listener, nor health on the API's.
    assert_eq!(debug.get("/v2/").await.status, StatusCode::NOT_FOUND);
    assert_eq!(reg.get("/debug/health").await.status, StatusCode::NOT_FOUND);

    std::fs::write(&drain, "").unwrap();
    let body = health_becomes(
        &debug,
        StatusCode::SERVICE_UNAVAILABLE,
        "drain file present",
    )
    .await;
    assert_eq!(body[drain.display().to_string()], "file exists", "{body}");
    std::fs::remove_file(&drain).unwrap();
    health_becomes(&debug, StatusCode::OK, "drain file removed").await;

    fs.read_only(true);
    let body = health_becomes(&debug, StatusCode::SERVICE_UNAVAILABLE, "read-only storage").await;
    let e = body["storagedriver_filesystem"]
        .as_str()
        .unwrap_or_default();
    assert!(e.starts_with("write:"), "{body}");
    // Pushes fail meanwhile; reads are not what the check is about.
    fs.read_only(false);
    assert_eq!(
        health_becomes(&debug, StatusCode::OK, "storage writable again").await,
        serde_json::json!({})
    );
    // Nothing is left behind by the checks.
    let leftovers = common::files_under(&root)
        .into_iter()
        .filter(|f| f.contains("_berth/health/"))
        .collect::<Vec<_>>();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    drop(reg);
}

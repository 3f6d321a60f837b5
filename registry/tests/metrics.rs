//! The registry's metrics for its lifecycle: the blob census counted at start, a scheduled garbage collection
//! counted with the bytes it freed, uploads open; and `promtool check metrics` on the output.

mod common;

use std::time::{Duration, Instant};

use common::Registry;
use http::StatusCode;

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).filter(|v| v.starts_with(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (apt install prometheus; scripts/install-test-deps.sh does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Scrapes until `series` satisfies `ok` (at most 30 s); returns the text.
async fn until(debug: &Registry, series: &str, ok: impl Fn(f64) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = debug.get("/metrics").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let text = String::from_utf8(r.body.to_vec()).unwrap();
        if ok(sample(&text, series)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stays at {}",
            sample(&text, series)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn debug_of(reg: &mut Registry) -> Registry {
    let line = reg.next_line();
    Registry::remote(
        line.strip_prefix("berth-registry debug on ")
            .unwrap_or_else(|| panic!("unexpected second line {line:?}")),
    )
}

#[tokio::test]
async fn census_collections_and_uploads_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    // First run, no collections: an image and an orphan blob of known sizes, an upload left open.
    let env = [
        ("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0"),
        ("REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED", "true"),
        ("BERTH_GC_INTERVAL", "0"),
        ("BERTH_STORAGE_MIN_FREE", "0"),
    ];
    let mut reg = Registry::start_at(&root, &env);
    let debug = debug_of(&mut reg);
    let (_, manifest) = reg
        .push_image("kept/app", "v1", &[b"layer one", b"layer two"])
        .await;
    let orphan = vec![1u8; 12_345];
    reg.push_blob("kept/app", &orphan).await;
    let r = reg.post("/v2/kept/app/blobs/uploads/").await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let config_len =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.len();
    let total = (config_len + 9 + 9 + manifest.len() + orphan.len()) as f64;
    let text = until(&debug, "berth_registry_blob_bytes", |v| v == total).await;
    assert_eq!(sample(&text, "berth_registry_blobs"), 5.0);
    assert_eq!(sample(&text, "berth_registry_uploads_open"), 1.0);
    assert_eq!(
        sample(
            &text,
            "registry_http_requests_total{code=\"201\",handler=\"manifest\",method=\"put\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "berth_registry_gc_runs_total{result=\"done\"}"),
        0.0
    );
    promtool_check(&text);
    reg.terminate();

    // Second run, collecting every second with no grace: the census starts from the walk at start (or the
    // first collection), and the collection frees exactly the orphan.
    let mut env = env.to_vec();
    env.retain(|(k, _)| *k != "BERTH_GC_INTERVAL");
    env.extend([("BERTH_GC_INTERVAL", "1s"), ("BERTH_GC_GRACE", "0")]);
    let mut reg = Registry::start_at(&root, &env);
    let debug = debug_of(&mut reg);
    let text = until(
        &debug,
        "berth_registry_gc_runs_total{result=\"done\"}",
        |v| v >= 1.0,
    )
    .await;
    assert_eq!(
        sample(&text, "berth_registry_gc_freed_bytes_total"),
        orphan.len() as f64
    );
    assert_eq!(sample(&text, "berth_registry_gc_deleted_blobs_total"), 1.0);
    assert_eq!(sample(&text, "berth_registry_blobs"), 4.0);
    assert_eq!(
        sample(&text, "berth_registry_blob_bytes"),
        total - orphan.len() as f64
    );
    assert_eq!(sample(&text, "berth_registry_uploads_open"), 0.0);
    assert!(sample(&text, "process_resident_memory_bytes") > 0.0);
    promtool_check(&text);
}

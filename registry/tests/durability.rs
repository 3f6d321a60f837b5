//! Crashes, restarts and big bodies: kill -9 in the middle of an upload leaves no visible blob and a
//! resumable session; a large streamed upload keeps memory flat.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{channel_body, full, sha256, Registry, ReqBody};
use http::{Method, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use sha2::{Digest as _, Sha256};

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn kill_during_upload_leaves_no_blob_and_the_upload_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let data = pattern(6 << 20, 7);
    let d = sha256(&data);

    let mut r = Registry::start_at(&root, &[]);
    let start = r.post("/v2/crash/blobs/uploads/").await;
    let loc_path = {
        let loc = start.header("location").unwrap();
        loc[loc.find("/v2/").unwrap()..].to_string()
    };
    let id = start.header("docker-upload-uuid").unwrap().to_string();
    let data_file = root.join(format!(
        "docker/registry/v2/repositories/crash/_uploads/{id}/data"
    ));

    // Stream the first 4 MiB of an unknown-length PATCH, then kill the registry while the request is open.
    let (tx, body) = channel_body();
    let url = r.url(&loc_path);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<ReqBody>();
    let req = http::Request::patch(url).body(body).unwrap();
    let inflight = tokio::spawn(async move { client.request(req).await });
    for part in data[..4 << 20].chunks(1 << 20) {
        tx.send(Ok(Frame::data(Bytes::copy_from_slice(part))))
            .await
            .unwrap();
    }
    // Wait (bounded) until the registry has written what it received to the upload's own file.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&data_file).map(|m| m.len()).unwrap_or(0) < (3 << 20) {
        assert!(
            Instant::now() < deadline,
            "upload data never reached the disk"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    r.kill();
    drop(tx);
    let _ = inflight.await;

    // Nothing partial is visible as a blob.
    let blobs = common::files_under(&root.join("docker/registry/v2/blobs"));
    assert!(
        blobs.is_empty(),
        "no blob may exist after the crash: {blobs:?}"
    );

    // After a restart the session is still there, at the offset that reached storage, and resumes.
    let r = Registry::start_at(&root, &[]);
    let head = r.head(&format!("/v2/crash/blobs/{d}")).await;
    assert_eq!(head.status, StatusCode::NOT_FOUND);
    let status = r.get(&loc_path).await;
    assert_eq!(status.status, StatusCode::NO_CONTENT);
    let range = status.header("range").unwrap();
    let offset: usize = range.strip_prefix("0-").unwrap().parse::<usize>().unwrap() + 1;
    assert!((3 << 20..=4 << 20).contains(&offset), "offset {offset}");
    assert_eq!(
        std::fs::read(&data_file).unwrap(),
        &data[..offset],
        "what was kept is a prefix of the body"
    );

    let rest = data[offset..].to_vec();
    let cr = format!("{}-{}", offset, data.len() - 1);
    let len = rest.len().to_string();
    let patch = r
        .send(
            Method::PATCH,
            &loc_path,
            &[("content-range", &cr), ("content-length", &len)],
            full(rest),
        )
        .await;
    assert_eq!(patch.status, StatusCode::ACCEPTED, "{:?}", patch.body);
    let put = r
        .send(
            Method::PUT,
            &format!("{loc_path}?digest={d}"),
            &[],
            full(Bytes::new()),
        )
        .await;
    assert_eq!(put.status, StatusCode::CREATED, "{:?}", put.body);
    assert_eq!(
        sha256(&r.get(&format!("/v2/crash/blobs/{d}")).await.body),
        d
    );
}

#[tokio::test]
async fn sigterm_stops_cleanly() {
    let mut r = Registry::start(&[]);
    assert_eq!(r.get("/v2/").await.status, StatusCode::OK);
    assert!(r.terminate().success());
}

/// Size of the big streamed upload in MiB (default 1024); the benchmark runs it at 4096.
fn big_mib() -> usize {
    std::env::var("BERTH_BIG_BLOB_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_streamed_upload_keeps_memory_flat() {
    let r = Registry::start(&[]);
    let mib = big_mib();
    let block = Bytes::from(pattern(1 << 20, 42));
    let start = r.post("/v2/big/blobs/uploads/").await;
    let loc = start.header("location").unwrap().to_string();

    let (tx, body) = channel_body();
    let feeder = {
        let block = block.clone();
        tokio::spawn(async move {
            let mut h = Sha256::new();
            for i in 0..mib {
                // Vary each MiB a little so the content is not one repeated block.
                let mut b = block.to_vec();
                b[..8].copy_from_slice(&(i as u64).to_le_bytes());
                h.update(&b);
                if tx.send(Ok(Frame::data(Bytes::from(b)))).await.is_err() {
                    break;
                }
            }
            format!("sha256:{}", hex::encode(h.finalize()))
        })
    };
    let started = Instant::now();
    let patch = r.send(Method::PATCH, &loc, &[], body).await;
    let d = feeder.await.unwrap();
    assert_eq!(patch.status, StatusCode::ACCEPTED, "{:?}", patch.body);
    assert_eq!(
        patch.header("range"),
        Some(format!("0-{}", (mib << 20) - 1).as_str())
    );
    let put = r
        .send(
            Method::PUT,
            &format!("{loc}?digest={d}"),
            &[],
            full(Bytes::new()),
        )
        .await;
    assert_eq!(put.status, StatusCode::CREATED, "{:?}", put.body);
    let upload_secs = started.elapsed().as_secs_f64();

    // Stream it back and hash it without keeping it.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<ReqBody>();
    let resp = client
        .request(
            http::Request::get(r.url(&format!("/v2/big/blobs/{d}")))
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut h = Sha256::new();
    let mut n = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            n += data.len();
            h.update(&data);
        }
    }
    assert_eq!(n, mib << 20);
    assert_eq!(format!("sha256:{}", hex::encode(h.finalize())), d);

    let peak = r.peak_rss_kib();
    println!(
        "big upload: {mib} MiB streamed up in {upload_secs:.1} s ({:.0} MiB/s, debug build) and back; registry peak RSS {} KiB",
        mib as f64 / upload_secs,
        peak
    );
    assert!(
        peak < 64 * 1024,
        "registry peak RSS {peak} KiB is over 64 MiB"
    );
}

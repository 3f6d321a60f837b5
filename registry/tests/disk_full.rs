//! A full disk, for real: the registry on a small tmpfs. Uploads are refused with 507 and the OCI error JSON
//! before they would eat the reserve (and when the device itself is full), nothing partial is left, reads keep
//! working, and pushes work again after a delete and a collection.
//!
//! Mounting needs root, as CI has; without it the test fails with that reason (it never skips).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use common::tools::run;
use common::{files_under, full, sha256, Registry, Tmpfs};
use http::{Method, StatusCode};

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut v);
    v
}

/// An upload's outcome: the digest, or the refusal.
enum Pushed {
    Blob(String),
    Refused(common::Resp),
}

/// Uploads `data` in one PUT, or in 1 MiB PATCHes then a PUT when `chunked`.
async fn upload(reg: &Registry, repo: &str, data: &[u8], chunked: bool) -> Pushed {
    let d = sha256(data);
    let r = reg.post(&format!("/v2/{repo}/blobs/uploads/")).await;
    if r.status != StatusCode::ACCEPTED {
        return Pushed::Refused(r);
    }
    let mut loc = r.header("location").unwrap().to_string();
    let mut rest = data;
    if chunked {
        let mut offset = 0;
        while !rest.is_empty() {
            let n = rest.len().min(1 << 20);
            let range = format!("{offset}-{}", offset + n - 1);
            let r = reg
                .send(
                    Method::PATCH,
                    &loc,
                    &[
                        ("content-range", &range),
                        ("content-type", "application/octet-stream"),
                    ],
                    full(Bytes::copy_from_slice(&rest[..n])),
                )
                .await;
            if r.status != StatusCode::ACCEPTED {
                return Pushed::Refused(r);
            }
            loc = r.header("location").unwrap().to_string();
            offset += n;
            rest = &rest[n..];
        }
    }
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = reg
        .send(
            Method::PUT,
            &format!("{loc}{sep}digest={d}"),
            &[],
            full(Bytes::copy_from_slice(rest)),
        )
        .await;
    if r.status != StatusCode::CREATED {
        return Pushed::Refused(r);
    }
    Pushed::Blob(d)
}

/// Every blob on disk hashes to its name, and no upload session is left.
fn assert_nothing_partial(root: &Path) {
    let repos = root.join("docker/registry/v2/repositories");
    let uploads: Vec<String> = files_under(&repos)
        .into_iter()
        .filter(|f| f.contains("/_uploads/"))
        .collect();
    assert!(uploads.is_empty(), "upload files left: {uploads:?}");
    let blobs = root.join("docker/registry/v2/blobs");
    for f in files_under(&blobs) {
        let parts: Vec<&str> = f.split('/').collect();
        assert!(
            matches!(parts.as_slice(), [_, _, _, "data"]),
            "unexpected file in the blob store: {f}"
        );
        let bytes = std::fs::read(blobs.join(&f)).unwrap();
        assert_eq!(
            sha256(&bytes),
            format!("{}:{}", parts[0], parts[2]),
            "blob {f} is not whole"
        );
    }
}

/// Pushes 4 MiB layers (each in an image, alternating monolithic and chunked uploads) until one is refused;
/// returns the images pushed (tag, manifest digest, layer digest, layer bytes) and the refusal.
async fn fill(reg: &Registry) -> (Vec<(String, String, String, Vec<u8>)>, common::Resp) {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let cd = reg.push_blob("fill", config).await;
    let mut images = Vec::new();
    for i in 0.. {
        assert!(i < 64, "a 64 MiB filesystem never filled up");
        let layer = random(4 << 20);
        match upload(reg, "fill", &layer, i % 2 == 1).await {
            Pushed::Blob(d) => {
                let manifest = serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": cd, "size": config.len()},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": layer.len()}],
                });
                let bytes = serde_json::to_vec(&manifest).unwrap();
                let r = reg
                    .send(
                        Method::PUT,
                        &format!("/v2/fill/manifests/t{i}"),
                        &[("content-type", "application/vnd.oci.image.manifest.v1+json")],
                        full(bytes.clone()),
                    )
                    .await;
                if r.status != StatusCode::CREATED {
                    return (images, r);
                }
                images.push((format!("t{i}"), sha256(&bytes), d, layer));
            }
            Pushed::Refused(r) => return (images, r),
        }
    }
    unreachable!()
}

fn assert_refused(r: &common::Resp, what: &str) {
    assert_eq!(
        r.status,
        StatusCode::INSUFFICIENT_STORAGE,
        "{what}: {:?}",
        r.body
    );
    let j = r.json();
    assert_eq!(j["errors"][0]["code"], "DENIED", "{what}: {j}");
    let msg = j["errors"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("storage full: ") && msg.contains(" free, ") && msg.contains("reserve"),
        "{what}: the message says the disk is full and how much is free: {msg}"
    );
}

/// Deletes the first `n` images, collects, and pushes again.
async fn recover(reg: &Registry, root: &Path, images: &[(String, String, String, Vec<u8>)]) {
    for (_, m, _, _) in images.iter().take(4) {
        let r = reg.delete(&format!("/v2/fill/manifests/{m}")).await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
    }
    let out = run(Command::new(env!("CARGO_BIN_EXE_berth-registry"))
        .env_clear()
        .env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", root)
        .args(["gc", "--json", "--grace", "0"]));
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(
        report["bytes"].as_u64().unwrap() >= 4 * (4 << 20),
        "{report}"
    );
    match upload(reg, "fill", &random(4 << 20), false).await {
        Pushed::Blob(_) => {}
        Pushed::Refused(r) => panic!("push after a collection refused: {:?}", r.body),
    }
}

async fn reads_still_work(reg: &Registry, images: &[(String, String, String, Vec<u8>)]) {
    for (tag, m, d, layer) in images {
        let r = reg.get(&format!("/v2/fill/manifests/{tag}")).await;
        assert_eq!(r.status, StatusCode::OK, "manifest {tag}");
        assert_eq!(sha256(&r.body), *m);
        let r = reg.get(&format!("/v2/fill/blobs/{d}")).await;
        assert_eq!(r.body, &layer[..], "layer of {tag}");
    }
}

/// With the default reserve (2 % of 64 MiB), an upload that would eat into it is refused with 507 before the
/// disk is full; the next one is refused at once.
#[tokio::test(flavor = "multi_thread")]
async fn uploads_stop_at_the_reserve_and_resume_after_a_collection() {
    let fs = Tmpfs::mount("64m");
    let root: PathBuf = fs.path().join("data");
    let reg = Registry::start_at(
        &root,
        &[
            ("REGISTRY_STORAGE_DELETE_ENABLED", "true"),
            ("BERTH_GC_INTERVAL", "0"),
        ],
    );
    let (images, refusal) = fill(&reg).await;
    assert!(images.len() >= 8, "only {} images fit", images.len());
    assert_refused(&refusal, "the upload that reached the reserve");
    match upload(&reg, "fill", b"small", false).await {
        Pushed::Refused(r) => assert_refused(&r, "an upload started below the reserve"),
        Pushed::Blob(_) => {
            // The refused upload freed its space; a small one may still fit above the reserve.
        }
    }
    assert_nothing_partial(&root);
    reads_still_work(&reg, &images).await;
    recover(&reg, &root, &images).await;
    assert_nothing_partial(&root);
}

/// Without a reserve, the device itself fills up in the middle of a write (ENOSPC): the same clean 507.
#[tokio::test(flavor = "multi_thread")]
async fn a_device_full_mid_write_fails_the_upload_cleanly() {
    let fs = Tmpfs::mount("64m");
    let root: PathBuf = fs.path().join("data");
    let reg = Registry::start_at(
        &root,
        &[
            ("REGISTRY_STORAGE_DELETE_ENABLED", "true"),
            ("BERTH_GC_INTERVAL", "0"),
            ("BERTH_STORAGE_MIN_FREE", "0"),
        ],
    );
    let (images, refusal) = fill(&reg).await;
    assert!(images.len() >= 8, "only {} images fit", images.len());
    assert_refused(&refusal, "the upload that hit ENOSPC");
    eprintln!("refused: {:?}", refusal.body);
    assert_nothing_partial(&root);
    reads_still_work(&reg, &images).await;
    recover(&reg, &root, &images).await;
    assert_nothing_partial(&root);
}

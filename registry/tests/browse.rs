//! The tag list's browsing extension (`?berth=summary|details`) that berth-proxy's web interface reads: counts,
//! push times, sizes and platforms (an image's from its config, an index's from its children), sorting by name
//! and by push time, filtering, pages; on the filesystem and on S3.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{full, s3::Moto, sha256, Registry};
use http::{Method, StatusCode};

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// An image whose config says `arch`; returns its digest and the size the view should show.
async fn image(reg: &Registry, repo: &str, arch: &str, layer: &[u8]) -> (String, usize, usize) {
    let config = format!(r#"{{"architecture":"{arch}","os":"linux"}}"#);
    let cd = reg.push_blob(repo, config.as_bytes()).await;
    let ld = reg.push_blob(repo, layer).await;
    let m = serde_json::json!({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}],
    })
    .to_string();
    let r = reg
        .send(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{}", sha256(m.as_bytes())),
            &[("content-type", MANIFEST)],
            full(Bytes::from(m.clone())),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    (sha256(m.as_bytes()), m.len(), config.len() + layer.len())
}

async fn put(reg: &Registry, repo: &str, tag: &str, ct: &str, body: &str) {
    let r = reg
        .send(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("content-type", ct)],
            full(Bytes::from(body.to_string())),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

/// Pushes: `multi` (an index of arm64 and amd64 plus an attestation), `a1`..`a3` and `b1` (the amd64 image).
/// Returns the amd64 image's digest and the view's sizes of it and of the index.
async fn populate(reg: &Registry) -> (String, usize, usize) {
    let (amd, amd_len, amd_size) = image(reg, "app", "amd64", b"amd64 layer").await;
    let (arm, arm_len, arm_size) = image(reg, "app", "arm64", b"arm64 layer, longer").await;
    let (att, att_len, _) = image(reg, "app", "unknown", b"attestation").await;
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": INDEX,
        "manifests": [
            {"mediaType": MANIFEST, "digest": amd, "size": amd_len, "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": MANIFEST, "digest": arm, "size": arm_len, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": MANIFEST, "digest": att, "size": att_len, "platform": {"os": "unknown", "architecture": "unknown"}},
        ],
    })
    .to_string();
    put(reg, "app", "multi", INDEX, &index).await;
    let m = reg
        .get(&format!("/v2/app/manifests/{amd}"))
        .await
        .body
        .clone();
    for tag in ["a1", "a2", "a3", "b1"] {
        put(reg, "app", tag, MANIFEST, std::str::from_utf8(&m).unwrap()).await;
    }
    (amd, amd_size, amd_size + arm_size)
}

fn tags_of(v: &serde_json::Value) -> Vec<&str> {
    v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tag"].as_str().unwrap())
        .collect()
}

async fn json(reg: &Registry, path: &str) -> serde_json::Value {
    let r = reg.get(path).await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {:?}", r.body);
    r.json()
}

/// What the view says on any backend, with push times not checked.
async fn check_view(reg: &Registry, amd: &str, amd_size: usize, index_size: usize) {
    let s = json(reg, "/v2/app/tags/list?berth=info").await;
    assert_eq!(s["tags"], 5);
    assert!(s["deletes"].is_boolean());
    assert!(s.get("pushed").is_none());
    let s = json(reg, "/v2/app/tags/list?berth=summary").await;
    assert_eq!(s["tags"], 5);
    assert!(s["pushed"].as_u64().is_some());
    let d = json(reg, "/v2/app/tags/list?berth=details").await;
    assert_eq!(d["total"], 5);
    assert_eq!(tags_of(&d), ["a1", "a2", "a3", "b1", "multi"]);
    let a1 = &d["tags"][0];
    assert_eq!(a1["digest"], amd);
    assert_eq!(a1["size"], amd_size);
    assert_eq!(a1["platforms"], serde_json::json!(["linux/amd64"]));
    assert_eq!(a1["mediaType"], MANIFEST);
    let multi = &d["tags"][4];
    assert_eq!(multi["mediaType"], INDEX);
    assert_eq!(
        multi["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64/v8"]),
        "the attestation is no platform"
    );
    assert_eq!(multi["size"], index_size);
    let d = json(
        reg,
        "/v2/app/tags/list?berth=details&sort=-name&offset=1&n=2",
    )
    .await;
    assert_eq!(d["total"], 5);
    assert_eq!(tags_of(&d), ["b1", "a3"]);
    let d = json(
        reg,
        "/v2/app/tags/list?berth=details&q=1&sort=-name&offset=1",
    )
    .await;
    assert_eq!(d["total"], 2, "tags holding a 1: a1 b1");
    assert_eq!(tags_of(&d), ["a1"]);
    let d = json(reg, "/v2/app/tags/list?berth=details&offset=99").await;
    assert_eq!(d["total"], 5);
    assert!(tags_of(&d).is_empty());
    for bad in [
        "berth=everything",
        "berth=details&sort=size",
        "berth=details&n=x",
    ] {
        let r = reg.get(&format!("/v2/app/tags/list?{bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let r = reg.get("/v2/nothing/here/tags/list?berth=summary").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "NAME_UNKNOWN");
    // The plain tag list is unchanged.
    let plain = json(reg, "/v2/app/tags/list").await;
    assert_eq!(
        plain["tags"],
        serde_json::json!(["a1", "a2", "a3", "b1", "multi"])
    );
}

#[tokio::test]
async fn details_sizes_platforms_and_push_order_on_a_filesystem() {
    let root = tempfile::tempdir().unwrap();
    let reg = Registry::start_at(root.path(), &[("REGISTRY_STORAGE_DELETE_ENABLED", "true")]);
    let (amd, amd_size, index_size) = populate(&reg).await;
    check_view(&reg, &amd, amd_size, index_size).await;
    // Push times are the tag links' times: set them, then sort by them.
    let base = SystemTime::now() - Duration::from_secs(86_400);
    for (i, tag) in ["b1", "multi", "a2", "a1", "a3"].iter().enumerate() {
        let link = root.path().join(format!(
            "docker/registry/v2/repositories/app/_manifests/tags/{tag}/current/link"
        ));
        std::fs::File::options()
            .write(true)
            .open(&link)
            .unwrap()
            .set_modified(base + Duration::from_secs(60 * i as u64))
            .unwrap();
    }
    let base_secs = base.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let d = json(&reg, "/v2/app/tags/list?berth=details&sort=-pushed").await;
    assert_eq!(tags_of(&d), ["a3", "a1", "a2", "multi", "b1"]);
    assert_eq!(d["tags"][0]["pushed"], base_secs + 240);
    assert_eq!(d["tags"][4]["pushed"], base_secs);
    assert_eq!(d["deletes"], true);
    let d = json(&reg, "/v2/app/tags/list?berth=details&sort=pushed&n=2").await;
    assert_eq!(tags_of(&d), ["b1", "multi"]);
    let s = json(&reg, "/v2/app/tags/list?berth=summary").await;
    assert_eq!(s["pushed"], base_secs + 240);
}

#[tokio::test]
async fn the_same_view_on_s3() {
    let moto = Moto::start();
    moto.create_bucket("browse");
    let env = moto.registry_env("browse", "/");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let reg = Registry::start(&env);
    let (amd, amd_size, index_size) = populate(&reg).await;
    check_view(&reg, &amd, amd_size, index_size).await;
    let d = json(&reg, "/v2/app/tags/list?berth=details&sort=-pushed").await;
    assert_eq!(d["total"], 5);
    assert!(d["tags"][0]["pushed"].as_u64().is_some());
    assert_eq!(d["deletes"], false, "deletes are off by default");
    // Past 16 tags the times come from one listing of the tags folder, not a HEAD per tag: the same answers.
    let m = reg
        .get(&format!("/v2/app/manifests/{amd}"))
        .await
        .body
        .clone();
    for i in 0..20 {
        put(
            &reg,
            "app",
            &format!("many{i:02}"),
            MANIFEST,
            std::str::from_utf8(&m).unwrap(),
        )
        .await;
    }
    let d = json(&reg, "/v2/app/tags/list?berth=details&sort=-pushed&n=100").await;
    assert_eq!(d["total"], 25);
    let times: Vec<u64> = d["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["pushed"].as_u64().expect("every tag has its push time"))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    let s = json(&reg, "/v2/app/tags/list?berth=summary").await;
    assert_eq!(s["tags"], 25);
    assert_eq!(s["pushed"], times[0]);
}

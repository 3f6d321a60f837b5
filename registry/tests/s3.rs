//! The S3 backend against a real S3 endpoint (moto_server, started by each test): the storage conformance
//! suite, upload sessions shared by two instances, real clients (skopeo) with a layer of several parts,
//! resumed chunked uploads and deletes, and registry:2 on the same bucket both ways.
//!
//! moto_server, skopeo and docker-registry are installed by `scripts/test.sh`; a missing tool fails the test.

mod common;

use std::time::Instant;

use berth_registry::storage::Storage;
use bytes::Bytes;
use common::s3::{check_bucket, read_all, Moto};
use common::tools::{blob_bytes, digest_of, oci_layout, pull_to_oci, run, skopeo, Distribution};
use common::{full, sha256, Registry};
use futures_util::TryStreamExt;
use http::{Method, StatusCode};

const MIB: usize = 1024 * 1024;

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut v);
    v
}

fn start_s3(moto: &Moto, bucket: &str, root: &str, extra: &[(&str, &str)]) -> Registry {
    let env = moto.registry_env(bucket, root);
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    Registry::start(&all)
}

#[tokio::test]
async fn conformance_on_moto() {
    let moto = Moto::start();
    for (bucket, root) in [("conf-rooted", "some/root"), ("conf-bare", "")] {
        moto.create_bucket(bucket);
        let s = moto.storage(bucket, root, 5 * MIB as u64);
        berth_registry::storage::conformance::run_all(s.as_ref()).await;
        assert!(
            s.list("").await.unwrap().is_empty(),
            "conformance suite left objects behind"
        );
        assert_eq!(
            moto.keys(bucket),
            Vec::<String>::new(),
            "keys left in {bucket}"
        );
    }
}

/// Two instances on one bucket share an append object (as two replicas share an upload session); a commit
/// of several parts is a multipart upload; a part after a gap is dropped by the next writer.
#[tokio::test]
async fn append_objects_are_shared_and_commit_in_parts() {
    let moto = Moto::start();
    moto.create_bucket("parts");
    let a = moto.storage("parts", "r", 5 * MIB as u64);
    let b = moto.storage("parts", "r", 5 * MIB as u64);
    let data = random(13 * MIB + 123);
    let key = "up/_uploads/x/data";

    let mut w = a.append(key).await.unwrap();
    for c in data[..7 * MIB].chunks(MIB) {
        w.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    w.finish().await.unwrap();
    let mut w = b.append(key).await.unwrap();
    assert_eq!(
        w.size(),
        7 * MIB as u64,
        "the other instance resumes at the end"
    );
    w.write(Bytes::copy_from_slice(&data[7 * MIB..]))
        .await
        .unwrap();
    w.finish().await.unwrap();
    assert_eq!(
        a.stat(key).await.unwrap().map(|m| m.size),
        Some(data.len() as u64)
    );
    assert_eq!(read_all(a.as_ref(), key).await, data);
    let mid: Vec<Bytes> = a
        .read(key, Some((5 * MIB as u64 - 10, 10 * MIB as u64 + 10)))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(mid.concat(), &data[5 * MIB - 10..10 * MIB + 10]);
    assert_eq!(a.list("up/_uploads/x").await.unwrap(), vec!["data"]);

    // A part left after a gap (a writer that died between two parts) is not data, and goes away.
    let stray = "r/up/_uploads/x/data!parts/00000000000999999999";
    a.put(
        "up/_uploads/x/data!parts/00000000000999999999",
        Bytes::from_static(b"junk"),
    )
    .await
    .unwrap();
    assert_eq!(
        a.stat(key).await.unwrap().map(|m| m.size),
        Some(data.len() as u64)
    );
    b.append(key).await.unwrap().finish().await.unwrap();
    assert!(
        !moto.keys("parts").iter().any(|k| k == stray),
        "stray part kept"
    );

    b.rename(key, "blobs/d/data").await.unwrap();
    assert_eq!(read_all(a.as_ref(), "blobs/d/data").await, data);
    assert_eq!(a.stat(key).await.unwrap(), None);
    assert_eq!(moto.keys("parts"), vec!["r/blobs/d/data".to_string()]);
    a.delete("blobs").await.unwrap();
    a.delete("up").await.unwrap();
    assert!(moto.keys("parts").is_empty());
}

#[tokio::test]
async fn skopeo_large_layer_resumed_upload_and_deletes_on_s3() {
    let moto = Moto::start();
    moto.create_bucket("reg");
    let r = start_s3(
        &moto,
        "reg",
        "berth",
        &[("REGISTRY_STORAGE_DELETE_ENABLED", "true")],
    );
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let layers = oci_layout(&src, "v1", &[66 * MIB, MIB]);
    let host = &r.addr;
    let big = blob_bytes(&src, &layers[0]).len();

    let t = Instant::now();
    run(skopeo()
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", src.display()))
        .arg(format!("docker://{host}/s3/img:v1")));
    let push = t.elapsed();
    let t = Instant::now();
    let dst = tmp.path().join("back");
    run(skopeo()
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{host}/s3/img:v1"))
        .arg(format!("oci:{}:v1", dst.display())));
    let pull = t.elapsed();
    for d in &layers {
        assert_eq!(blob_bytes(&dst, d), blob_bytes(&src, d), "layer {d}");
    }
    eprintln!(
        "s3 (moto): pushed {:.1} MiB in {push:?} ({:.1} MiB/s), pulled in {pull:?} ({:.1} MiB/s)",
        big as f64 / MIB as f64,
        big as f64 / MIB as f64 / push.as_secs_f64(),
        big as f64 / MIB as f64 / pull.as_secs_f64()
    );
    let keys = moto.keys("reg");
    let hex = &layers[0]["sha256:".len()..];
    assert!(
        keys.contains(&format!(
            "berth/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        )),
        "layer not at registry:2's key: {keys:?}"
    );

    // A resumed chunked upload: PATCH, status, PATCH, PUT with the last chunk.
    let data = random(11 * MIB + 5);
    let d = sha256(&data);
    let start = r.post("/v2/s3/chunked/blobs/uploads/").await;
    assert_eq!(start.status, StatusCode::ACCEPTED);
    let loc = start.header("location").unwrap().to_string();
    let first = 6 * MIB;
    let p = r
        .send(
            Method::PATCH,
            &loc,
            &[
                ("content-range", &format!("0-{}", first - 1)),
                ("content-length", &first.to_string()),
            ],
            full(Bytes::copy_from_slice(&data[..first])),
        )
        .await;
    assert_eq!(p.status, StatusCode::ACCEPTED, "{:?}", p.body);
    let status = r.get(&loc).await;
    assert_eq!(status.status, StatusCode::NO_CONTENT);
    assert_eq!(
        status.header("range"),
        Some(format!("0-{}", first - 1).as_str())
    );
    let second = 10 * MIB;
    let loc = p.header("location").unwrap().to_string();
    let p = r
        .send(
            Method::PATCH,
            &loc,
            &[
                ("content-range", &format!("{first}-{}", second - 1)),
                ("content-length", &(second - first).to_string()),
            ],
            full(Bytes::copy_from_slice(&data[first..second])),
        )
        .await;
    assert_eq!(p.status, StatusCode::ACCEPTED, "{:?}", p.body);
    let loc = p.header("location").unwrap().to_string();
    let sep = if loc.contains('?') { '&' } else { '?' };
    let put = r
        .send(
            Method::PUT,
            &format!("{loc}{sep}digest={d}"),
            &[("content-length", &(data.len() - second).to_string())],
            full(Bytes::copy_from_slice(&data[second..])),
        )
        .await;
    assert_eq!(put.status, StatusCode::CREATED, "{:?}", put.body);
    let got = r.get(&format!("/v2/s3/chunked/blobs/{d}")).await;
    assert_eq!(got.body.as_ref(), data.as_slice());
    let ranged = r
        .send(
            Method::GET,
            &format!("/v2/s3/chunked/blobs/{d}"),
            &[("range", "bytes=7340032-7340041")],
            full(Bytes::new()),
        )
        .await;
    assert_eq!(ranged.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.body.as_ref(), &data[7 * MIB..7 * MIB + 10]);

    // Deletes: a tag with skopeo, a blob over the API.
    run(skopeo()
        .args(["delete", "--tls-verify=false"])
        .arg(format!("docker://{host}/s3/img:v1")));
    let gone = skopeo()
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{host}/s3/img:v1"))
        .output()
        .unwrap();
    assert!(!gone.status.success(), "deleted image still inspectable");
    let del = r.delete(&format!("/v2/s3/chunked/blobs/{d}")).await;
    assert_eq!(del.status, StatusCode::ACCEPTED);
    assert_eq!(
        r.head(&format!("/v2/s3/chunked/blobs/{d}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert!(check_bucket(&moto, "reg", "berth", false).await >= 4);
}

/// registry:2 and berth on one bucket: what one pushes the other serves, both ways, with registry:2's own
/// default key layout (no root directory: `docker/registry/v2/...` at the bucket root).
#[tokio::test]
async fn registry2_bucket_is_served_by_berth_and_back() {
    let moto = Moto::start();
    moto.create_bucket("shared");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let layers = oci_layout(&src, "v1", &[12 * MIB, 300 * 1024]);
    let mut env = moto.registry_env("shared", "");
    env.retain(|(k, _)| k != "REGISTRY_STORAGE_S3_ROOTDIRECTORY");
    let unused = tmp.path().join("unused-fs-root");

    let d_dist = {
        let dist = Distribution::start_with(&unused, tmp.path(), &env);
        run(skopeo()
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:v1", src.display()))
            .arg(format!("docker://{}/from/dist:v1", dist.addr)));
        digest_of(&dist.addr, "from/dist:v1")
    };
    let keys = moto.keys("shared");
    assert!(
        keys.iter().all(|k| k.starts_with("docker/registry/v2/")),
        "registry:2 wrote keys outside docker/registry/v2: {keys:?}"
    );
    {
        let berth = start_s3(&moto, "shared", "", &[]);
        assert_eq!(digest_of(&berth.addr, "from/dist:v1"), d_dist);
        let out = tmp.path().join("from-berth");
        pull_to_oci(&berth.addr, "from/dist:v1", &out);
        for d in &layers {
            assert_eq!(blob_bytes(&out, d), blob_bytes(&src, d));
        }
        run(skopeo()
            .args(["copy", "--dest-tls-verify=false", "--format", "v2s2"])
            .arg(format!("oci:{}:v1", src.display()))
            .arg(format!("docker://{}/from/berth:v1", berth.addr)));
        let catalog = berth.get("/v2/_catalog").await.json();
        assert_eq!(
            catalog["repositories"],
            serde_json::json!(["from/berth", "from/dist"])
        );
    }
    let dist = Distribution::start_with(&unused, tmp.path(), &env);
    let out = tmp.path().join("from-dist");
    pull_to_oci(&dist.addr, "from/berth:v1", &out);
    for d in &layers {
        assert_eq!(blob_bytes(&out, d), blob_bytes(&src, d));
    }
    let tags: serde_json::Value = serde_json::from_str(&run(skopeo()
        .args(["list-tags", "--tls-verify=false"])
        .arg(format!("docker://{}/from/berth", dist.addr))))
    .unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]));
    check_bucket(&moto, "shared", "", false).await;
}

/// Counts `list` calls on the way to a backend.
struct CountingLists {
    inner: std::sync::Arc<dyn Storage>,
    lists: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl Storage for CountingLists {
    async fn stat(
        &self,
        key: &str,
    ) -> Result<Option<berth_registry::storage::ObjectMeta>, berth_registry::storage::StorageError>
    {
        self.inner.stat(key).await
    }
    async fn read(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<berth_registry::storage::ByteStream, berth_registry::storage::StorageError> {
        self.inner.read(key, range).await
    }
    async fn read_small(
        &self,
        key: &str,
        limit: u64,
    ) -> Result<Bytes, berth_registry::storage::StorageError> {
        self.inner.read_small(key, limit).await
    }
    async fn put(
        &self,
        key: &str,
        bytes: Bytes,
    ) -> Result<(), berth_registry::storage::StorageError> {
        self.inner.put(key, bytes).await
    }
    async fn append(
        &self,
        key: &str,
    ) -> Result<Box<dyn berth_registry::storage::AppendWriter>, berth_registry::storage::StorageError>
    {
        self.inner.append(key).await
    }
    async fn rename(
        &self,
        from: &str,
        to: &str,
    ) -> Result<(), berth_registry::storage::StorageError> {
        self.inner.rename(from, to).await
    }
    async fn list(
        &self,
        prefix: &str,
    ) -> Result<Vec<String>, berth_registry::storage::StorageError> {
        self.lists
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), berth_registry::storage::StorageError> {
        self.inner.delete(key).await
    }
    async fn create(
        &self,
        key: &str,
        bytes: Bytes,
    ) -> Result<bool, berth_registry::storage::StorageError> {
        self.inner.create(key, bytes).await
    }
    fn walk(&self, prefix: &str) -> berth_registry::storage::ObjectStream {
        self.inner.walk(prefix)
    }
}

/// A catalog page costs about one delimiter listing per repository on the page, plus one per folder level
/// and per namespace boundary crossed, wherever the page is: neither the whole bucket nor the whole catalog is walked for a page.
#[tokio::test]
async fn catalog_pages_on_s3_list_only_what_they_show() {
    use std::sync::atomic::Ordering;
    let moto = Moto::start();
    moto.create_bucket("catalog");
    let s3 = moto.storage("catalog", "c", 5 * MIB as u64);
    const REPOS: usize = 200;
    let mut names: Vec<String> = (0..REPOS)
        .map(|i| format!("team{:02}/app{i:03}", i % 10))
        .collect();
    names.sort();
    let link = Bytes::from(sha256(b"x"));
    let puts = names.iter().map(|n| {
        let s3 = s3.clone();
        let link = link.clone();
        async move {
            s3.put(
                &format!("docker/registry/v2/repositories/{n}/_manifests/tags/latest/current/link"),
                link,
            )
            .await
            .unwrap();
            // A layer link next to the tags: a walk of the whole tree would list it too.
            s3.put(
                &format!(
                    "docker/registry/v2/repositories/{n}/_layers/sha256/{:064}/link",
                    0
                ),
                Bytes::from_static(b"l"),
            )
            .await
            .unwrap();
        }
    });
    futures_util::future::join_all(puts).await;
    let counting = std::sync::Arc::new(CountingLists {
        inner: s3,
        lists: Default::default(),
    });
    let store = berth_registry::store::RegistryStore::new(counting.clone());

    let mut report = Vec::new();
    let mut measure = |what: &str, lists: usize, t: std::time::Duration| {
        report.push(format!("{what}: {lists} listings, {t:?}"));
    };
    let t = Instant::now();
    assert_eq!(store.catalog().await.unwrap(), names);
    let full = counting.lists.swap(0, Ordering::Relaxed);
    measure("whole catalog of 200", full, t.elapsed());
    for (what, last) in [
        ("first page of 20", None),
        ("page of 20 in the middle", Some(names[100].as_str())),
        ("last page", Some(names[190].as_str())),
    ] {
        let t = Instant::now();
        let (page, _) = store.catalog_page(Some(20), last).await.unwrap();
        let lists = counting.lists.swap(0, Ordering::Relaxed);
        measure(what, lists, t.elapsed());
        let start = last.map_or(0, |l| names.iter().position(|n| n == l).unwrap() + 1);
        assert_eq!(page, names[start..(start + 20).min(REPOS)]);
        assert!(lists <= 20 + 8, "{what}: {lists} listings for a page of 20");
    }
    eprintln!("catalog on S3 (moto): {}", report.join("; "));
}

//! Garbage collection on the real binary: what a collection removes, what it must keep (tagged images, index
//! children, referrers), that clients still pull everything byte for byte, that registry:2 serves and
//! collects the result, and that pushes racing a collector every second never end up with a broken image.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use common::s3::{check_bucket, Moto};
use common::tools::{blob_bytes, oci_layout, pull_to_oci, run, skopeo, Distribution};
use common::{blobs_on_disk, files_under, full, sha256, Registry};
use http::{Method, StatusCode};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Where a registry under test keeps its data, as the `gc` command and the checks reach it.
enum Place<'a> {
    Fs(std::path::PathBuf),
    S3 {
        moto: &'a Moto,
        bucket: &'a str,
        root: &'a str,
    },
}

impl Place<'_> {
    fn env(&self) -> Vec<(String, String)> {
        match self {
            Place::Fs(root) => vec![(
                "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY".into(),
                root.display().to_string(),
            )],
            Place::S3 { moto, bucket, root } => moto.registry_env(bucket, root),
        }
    }

    /// Every blob in the store.
    fn blobs(&self) -> BTreeSet<String> {
        match self {
            Place::Fs(root) => blobs_on_disk(root),
            Place::S3 { moto, bucket, root } => {
                let prefix = format!("{root}/docker/registry/v2/blobs/");
                moto.keys(bucket)
                    .iter()
                    .filter_map(|k| k.strip_prefix(&prefix))
                    .filter_map(|k| {
                        let p: Vec<&str> = k.split('/').collect();
                        match p.as_slice() {
                            [alg, _, hex, "data"] => Some(format!("{alg}:{hex}")),
                            _ => None,
                        }
                    })
                    .collect()
            }
        }
    }

    /// No link points at a missing blob (on S3 also: every blob hashes to its name, no upload is left).
    async fn check(&self) {
        match self {
            Place::Fs(root) => assert_no_dangling_link(root),
            Place::S3 { moto, bucket, root } => {
                check_bucket(moto, bucket, root, false).await;
            }
        }
    }
}

/// Runs `berth-registry gc --json` with `args` against `place`; returns the report.
fn gc(place: &Place, args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth-registry"));
    cmd.env_clear().args(["gc", "--json"]).args(args);
    for (k, v) in place.env() {
        cmd.env(k, v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    serde_json::from_str(run(&mut cmd).trim()).expect("gc --json prints one JSON object")
}

fn digests(report: &serde_json::Value, field: &str) -> BTreeSet<String> {
    report[field]
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_str().expect("digest").to_string())
        .collect()
}

/// PUTs a manifest under `reference` (a tag), or by its digest when `None`; returns its digest.
async fn put_manifest(
    reg: &Registry,
    repo: &str,
    reference: Option<&str>,
    media_type: &str,
    json: &serde_json::Value,
) -> String {
    let bytes = serde_json::to_vec(json).unwrap();
    let d = sha256(&bytes);
    let r = reg
        .send(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{}", reference.unwrap_or(&d)),
            &[("content-type", media_type)],
            full(bytes),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "PUT manifest: {:?}", r.body);
    d
}

/// An OCI image manifest over blobs already pushed.
fn image(config: (&str, usize), layers: &[(&str, usize)]) -> serde_json::Value {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": layers.iter().map(|(d, n)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n})).collect::<Vec<_>>(),
    })
}

/// Every link in every repository names a blob that is in the blob store.
fn assert_no_dangling_link(root: &Path) {
    let blobs = blobs_on_disk(root);
    let repos = root.join("docker/registry/v2/repositories");
    for f in files_under(&repos) {
        if !f.ends_with("/link") || f.contains("/_uploads/") {
            continue;
        }
        let target = std::fs::read_to_string(repos.join(&f)).unwrap();
        assert!(
            blobs.contains(target.trim()),
            "{f} points at {target}, which is not in the blob store"
        );
    }
}

/// Builds repositories with everything a collection must tell apart, collects (dry run, then for real, then
/// with `--delete-untagged`) while `reg` serves, and checks exactly what went; every tag, index child and
/// referrer still pulls byte for byte.
async fn exact_garbage(reg: &Registry, place: &Place<'_>, work: &Path) {
    // A tagged image pushed by skopeo.
    let layout = work.join("a");
    let a_layers = oci_layout(&layout, "v1", &[3000, 70_000]);
    run(skopeo()
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{}/app/one:v1", reg.addr)));
    let m_a = common::tools::digest_of(&reg.addr, "app/one:v1");

    // A tag pushed twice: the first image becomes untagged.
    let (m_b, _) = reg
        .push_image("app/one", "latest", &[b"layer only b has"])
        .await;
    let l_b = sha256(b"layer only b has");
    let (m_c, _) = reg
        .push_image("app/one", "latest", &[b"layer only c has"])
        .await;

    // A multi-arch index with two children pushed by digest.
    let cfg = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let cfg_d = reg.push_blob("multi", cfg).await;
    let mut children = Vec::new();
    for arch in ["amd64", "arm64"] {
        let layer = format!("layer for {arch}");
        let l = reg.push_blob("multi", layer.as_bytes()).await;
        let m = image((&cfg_d, cfg.len()), &[(&l, layer.len())]);
        let d = put_manifest(reg, "multi", None, OCI_MANIFEST, &m).await;
        let size = serde_json::to_vec(&m).unwrap().len();
        children.push((d, size, arch, l));
    }
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": children.iter().map(|(d, n, arch, _)| serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": d, "size": n,
            "platform": {"architecture": arch, "os": "linux"}})).collect::<Vec<_>>(),
    });
    let m_x = put_manifest(reg, "multi", Some("v1"), OCI_INDEX, &index).await;

    // An artifact whose subject is the skopeo image, pushed by digest only (a signature, untagged).
    let empty = reg.push_blob("app/one", b"{}").await;
    let sig = reg.push_blob("app/one", b"signature bytes").await;
    let a_bytes = run(skopeo()
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}/app/one:v1", reg.addr)));
    let mut referrer = image((&empty, 2), &[(&sig, 15)]);
    referrer["artifactType"] = "application/vnd.example.signature".into();
    referrer["config"]["mediaType"] = "application/vnd.oci.empty.v1+json".into();
    referrer["subject"] =
        serde_json::json!({"mediaType": OCI_MANIFEST, "digest": m_a, "size": a_bytes.len()});
    let m_r = put_manifest(reg, "app/one", None, OCI_MANIFEST, &referrer).await;

    // Orphan blobs, never referenced.
    let o1 = reg.push_blob("app/one", b"orphan one").await;
    let o2 = reg.push_blob("other", b"orphan two").await;

    // An image deleted by digest: its manifest and its own layer become garbage.
    let (m_d, _) = reg
        .push_image("gone", "v1", &[b"layer of a deleted image"])
        .await;
    let l_d = sha256(b"layer of a deleted image");
    let r = reg.delete(&format!("/v2/gone/manifests/{m_d}")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);

    // An abandoned upload.
    let r = reg.post("/v2/app/one/blobs/uploads/").await;
    let loc = r.header("location").unwrap().to_string();
    let r = reg
        .send(
            Method::PATCH,
            &loc,
            &[],
            full(Bytes::from_static(b"half of a layer")),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);

    let garbage: BTreeSet<String> = [o1.clone(), o2.clone(), l_d.clone(), m_d.clone()].into();
    let before = place.blobs();
    let grace0 = ["--grace", "0"];
    let purge = [("REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE", "0")];

    // Dry run: the report names exactly the garbage, and nothing is removed.
    let dry = gc(place, &["--dry-run", "--grace", "0"], &purge);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(digests(&dry, "blobs"), garbage, "dry run: {dry}");
    assert_eq!(dry["uploads"].as_array().unwrap().len(), 1, "{dry}");
    assert_eq!(place.blobs(), before, "a dry run removes nothing");

    // The default grace (1h) keeps everything just written.
    let graced = gc(place, &["--dry-run"], &[]);
    assert!(digests(&graced, "blobs").is_empty(), "{graced}");

    // For real, while the registry serves.
    let done = gc(place, &grace0, &purge);
    assert_eq!(digests(&done, "blobs"), garbage, "{done}");
    let bytes: u64 = [
        b"orphan one".len(),
        b"orphan two".len(),
        b"layer of a deleted image".len(),
    ]
    .iter()
    .map(|n| *n as u64)
    .sum::<u64>();
    assert!(done["bytes"].as_u64().unwrap() > bytes, "{done}");
    let after: BTreeSet<String> = before.difference(&garbage).cloned().collect();
    assert_eq!(place.blobs(), after);
    assert_eq!(done["uploads"].as_array().unwrap().len(), 1);
    assert!(
        reg.get(&loc).await.status == StatusCode::NOT_FOUND,
        "upload purged"
    );
    place.check().await;
    for (repo, d) in [("app/one", &o1), ("other", &o2), ("gone", &l_d)] {
        let r = reg.head(&format!("/v2/{repo}/blobs/{d}")).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{repo}@{d} after collection"
        );
    }
    // Nothing left to collect.
    let again = gc(place, &grace0, &[]);
    assert!(digests(&again, "blobs").is_empty(), "{again}");

    // Untagged manifests go only on request; index children and referrers stay.
    let untagged = gc(place, &["--grace", "0", "--delete-untagged"], &[]);
    assert_eq!(
        digests(&untagged, "blobs"),
        [m_b.clone(), l_b.clone()].into(),
        "{untagged}"
    );
    let manifests: Vec<(String, String)> = untagged["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["repository"].as_str().unwrap().to_string(),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(manifests, vec![("app/one".to_string(), m_b.clone())]);
    place.check().await;

    // Everything that is kept still pulls, byte for byte.
    let out = work.join("pulled-a");
    pull_to_oci(&reg.addr, "app/one:v1", &out);
    for l in &a_layers {
        assert_eq!(blob_bytes(&out, l), blob_bytes(&layout, l), "layer {l}");
    }
    assert_eq!(common::tools::digest_of(&reg.addr, "app/one:latest"), m_c);
    let all = work.join("pulled-multi");
    run(skopeo()
        .args([
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
        ])
        .arg(format!("docker://{}/multi:v1", reg.addr))
        .arg(format!("oci:{}:v1", all.display())));
    let pulled = files_under(&all.join("blobs/sha256"));
    for (d, _, arch, l) in &children {
        let layer = format!("layer for {arch}");
        assert!(
            pulled.contains(&d["sha256:".len()..].to_string()),
            "child {d} pulled: {pulled:?}"
        );
        assert_eq!(blob_bytes(&all, l), layer.as_bytes(), "layer of {arch}");
        let r = reg.get(&format!("/v2/multi/manifests/{d}")).await;
        assert_eq!(r.status, StatusCode::OK, "index child {d}");
    }
    assert_eq!(common::tools::digest_of(&reg.addr, "multi:v1"), m_x);
    let r = reg.get(&format!("/v2/app/one/referrers/{m_a}")).await;
    assert_eq!(r.json()["manifests"][0]["digest"], m_r.as_str());
    for (d, want) in [(&sig, &b"signature bytes"[..]), (&empty, &b"{}"[..])] {
        let r = reg.get(&format!("/v2/app/one/blobs/{d}")).await;
        assert_eq!(r.body, want, "referrer blob {d}");
    }
    assert_eq!(
        reg.get(&format!("/v2/app/one/manifests/{m_b}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

/// On the filesystem; then registry:2 serves the collected directory, and its own collector finds nothing
/// berth should have removed, and no dangling link.
#[tokio::test(flavor = "multi_thread")]
async fn collection_removes_exactly_the_garbage() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start(&[
        ("REGISTRY_STORAGE_DELETE_ENABLED", "true"),
        ("BERTH_GC_INTERVAL", "0"),
    ]);
    let root = reg.root.clone();
    exact_garbage(&reg, &Place::Fs(root.clone()), work.path()).await;
    let dist = Distribution::start(&root, work.path());
    for image in ["app/one:v1", "app/one:latest", "multi:v1"] {
        let out = work
            .path()
            .join(format!("r2-{}", image.replace([':', '/'], "-")));
        pull_to_oci(&dist.addr, image, &out);
    }
    let cfg = work.path().join("r2-gc.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n",
            root.display()
        ),
    )
    .unwrap();
    let out = run(Command::new("docker-registry")
        .args(["garbage-collect", "--dry-run"])
        .arg(&cfg));
    assert!(
        out.contains("0 blobs and 0 manifests eligible for deletion"),
        "registry:2 garbage-collect --dry-run after berth's collection:\n{out}"
    );
}

/// The same on S3 (moto_server), with the registry and the `gc` command on one bucket.
#[tokio::test(flavor = "multi_thread")]
async fn on_s3_collection_removes_exactly_the_garbage() {
    let work = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    moto.create_bucket("collect");
    let place = Place::S3 {
        moto: &moto,
        bucket: "collect",
        root: "reg",
    };
    let mut env = place.env();
    env.push(("REGISTRY_STORAGE_DELETE_ENABLED".into(), "true".into()));
    env.push(("BERTH_GC_INTERVAL".into(), "0".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let reg = Registry::start(&env);
    exact_garbage(&reg, &place, work.path()).await;
}

/// Both collectors on copies of one directory written by registry:2 (tagged images, a tag pushed twice, a
/// manifest deleted by digest, an orphan blob) delete the same blobs.
#[tokio::test(flavor = "multi_thread")]
async fn berth_and_registry2_collect_the_same_blobs() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("r2-data");
    std::fs::create_dir_all(&src).unwrap();
    {
        let dist = Distribution::start(&src, work.path());
        // Pushes through the registry:2 API with the same helpers (a berth `Registry` pointed at it).
        let client = Registry::remote(&dist.addr);
        let (_, _) = client.push_image("lib/kept", "v1", &[b"kept layer"]).await;
        client
            .push_image("lib/kept", "latest", &[b"first latest"])
            .await;
        client
            .push_image("lib/kept", "latest", &[b"second latest"])
            .await;
        let (gone, _) = client
            .push_image("lib/gone", "v1", &[b"deleted layer"])
            .await;
        let r = client
            .delete(&format!("/v2/lib/gone/manifests/{gone}"))
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "registry:2 delete");
        client.push_blob("lib/kept", b"an orphan").await;
    }
    let copy = |name: &str| {
        let dst = work.path().join(name);
        run(Command::new("cp").arg("-a").arg(&src).arg(&dst));
        dst
    };
    let (ours, theirs) = (copy("berth"), copy("registry2"));
    let report = gc(&Place::Fs(ours.clone()), &["--grace", "0"], &[]);
    let cfg = work.path().join("r2-gc.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n",
            theirs.display()
        ),
    )
    .unwrap();
    let out = run(Command::new("docker-registry")
        .arg("garbage-collect")
        .arg(&cfg));
    let before = blobs_on_disk(&src);
    let ours_gone: BTreeSet<String> = before.difference(&blobs_on_disk(&ours)).cloned().collect();
    let theirs_gone: BTreeSet<String> = before
        .difference(&blobs_on_disk(&theirs))
        .cloned()
        .collect();
    assert_eq!(digests(&report, "blobs"), ours_gone, "{report}");
    assert_eq!(
        ours_gone.len(),
        3,
        "orphan, deleted manifest, its layer: {report}"
    );
    assert_eq!(
        ours_gone, theirs_gone,
        "registry:2 garbage-collect said:\n{out}"
    );
    assert_no_dangling_link(&ours);
}

/// One image push with its own error handling (a race may fail it; the pusher then starts over).
struct Pushed {
    repo: String,
    manifest: String,
    bytes: Vec<u8>,
    blobs: Vec<String>,
    /// An index's children.
    children: Vec<Pushed>,
}

async fn try_push_blob(reg: &Registry, repo: &str, data: &[u8]) -> Result<Option<String>, String> {
    let d = sha256(data);
    let r = reg.post(&format!("/v2/{repo}/blobs/uploads/")).await;
    if r.status != StatusCode::ACCEPTED {
        return Err(format!("POST {}", r.status));
    }
    let loc = r.header("location").unwrap_or_default().to_string();
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = reg
        .send(
            Method::PUT,
            &format!("{loc}{sep}digest={d}"),
            &[],
            full(Bytes::copy_from_slice(data)),
        )
        .await;
    if r.status == StatusCode::BAD_REQUEST && r.code() == "BLOB_UPLOAD_INVALID" {
        // Collected while it was committed (grace 0): the client uploads again.
        return Ok(None);
    }
    if r.status != StatusCode::CREATED {
        return Err(format!("PUT blob {}: {}", r.status, r.code()));
    }
    Ok(Some(d))
}

/// Pushes a small random image (sharing a layer with others) to `repo:tag`. `Ok(None)` when the registry
/// said a blob is unknown (swept before the manifest landed), or collected one during its commit: the caller
/// pushes again.
async fn try_push_image(
    reg: &Registry,
    repo: &str,
    tag: Option<&str>,
    shared: &[u8],
) -> Result<Option<Pushed>, String> {
    let (config, own): (String, Vec<Vec<u8>>) = {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","n":{}}}"#,
            rng.gen::<u64>()
        );
        let own = (0..rng.gen_range(1..3))
            .map(|_| {
                let mut l = vec![0u8; rng.gen_range(1..20_000)];
                rng.fill(&mut l[..]);
                l
            })
            .collect();
        (config, own)
    };
    let Some(cd) = try_push_blob(reg, repo, config.as_bytes()).await? else {
        return Ok(None);
    };
    let mut layers = Vec::new();
    for l in std::iter::once(shared).chain(own.iter().map(Vec::as_slice)) {
        let Some(d) = try_push_blob(reg, repo, l).await? else {
            return Ok(None);
        };
        layers.push((d, l.len()));
    }
    let refs: Vec<(&str, usize)> = layers.iter().map(|(d, n)| (d.as_str(), *n)).collect();
    let m = image((&cd, config.len()), &refs);
    let blobs = std::iter::once(cd)
        .chain(layers.into_iter().map(|(d, _)| d))
        .collect();
    try_put_manifest(reg, repo, tag, OCI_MANIFEST, &m, blobs, Vec::new()).await
}

/// PUTs a manifest (by tag, or by digest); `Ok(None)` on `MANIFEST_BLOB_UNKNOWN`.
async fn try_put_manifest(
    reg: &Registry,
    repo: &str,
    tag: Option<&str>,
    media_type: &str,
    m: &serde_json::Value,
    blobs: Vec<String>,
    children: Vec<Pushed>,
) -> Result<Option<Pushed>, String> {
    let bytes = serde_json::to_vec(m).unwrap();
    let d = sha256(&bytes);
    let r = reg
        .send(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{}", tag.unwrap_or(&d)),
            &[("content-type", media_type)],
            full(bytes.clone()),
        )
        .await;
    match r.status {
        StatusCode::CREATED => Ok(Some(Pushed {
            repo: repo.to_string(),
            manifest: d,
            bytes,
            blobs,
            children,
        })),
        StatusCode::BAD_REQUEST if r.code() == "MANIFEST_BLOB_UNKNOWN" => Ok(None),
        s => Err(format!("PUT manifest {s}: {:?}", r.body)),
    }
}

/// Pushes two images by digest (untagged until the index lands), then an index of them under `tag`.
async fn try_push_index(
    reg: &Registry,
    repo: &str,
    tag: &str,
    shared: &[u8],
) -> Result<Option<Pushed>, String> {
    let mut children = Vec::new();
    for _ in 0..2 {
        match try_push_image(reg, repo, None, shared).await? {
            Some(c) => children.push(c),
            None => return Ok(None),
        }
    }
    // The children wait, untagged, for a while (up to about a collection) before the index names them: a
    // collection may find them garbage meanwhile, with their layers.
    let pause = rand::Rng::gen_range(&mut rand::thread_rng(), 0..1500);
    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": children.iter().map(|c| serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": c.manifest, "size": c.bytes.len(),
            "platform": {"architecture": "amd64", "os": "linux"}})).collect::<Vec<_>>(),
    });
    try_put_manifest(
        reg,
        repo,
        Some(tag),
        OCI_INDEX,
        &index,
        Vec::new(),
        children,
    )
    .await
}

fn count_collections(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("garbage collection done")
        .count()
}

/// Waits until the log shows `n` finished collections.
async fn wait_for_collections(log: &Path, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while count_collections(log) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "collections did not go on: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Checks every pushed manifest and blob, byte for byte, and that no orphan is left.
async fn check_race_outcome(reg: &Registry, pushed: &[Pushed], orphans: &[(String, String)]) {
    let mut all: Vec<&Pushed> = pushed.iter().collect();
    while let Some(p) = all.pop() {
        let r = reg
            .get(&format!("/v2/{}/manifests/{}", p.repo, p.manifest))
            .await;
        assert_eq!(r.status, StatusCode::OK, "manifest {} got 201", p.manifest);
        assert_eq!(&r.body[..], &p.bytes[..]);
        for b in &p.blobs {
            let r = reg.get(&format!("/v2/{}/blobs/{b}", p.repo)).await;
            assert_eq!(
                r.status,
                StatusCode::OK,
                "blob {b} of {} ({})",
                p.manifest,
                p.repo
            );
            assert_eq!(sha256(&r.body), *b, "blob content hashes to its name");
        }
        all.extend(p.children.iter());
    }
    for (repo, d) in orphans {
        let r = reg.head(&format!("/v2/{repo}/blobs/{d}")).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "orphan {d} still in {repo}"
        );
    }
}

/// What the pushers of a race did.
#[derive(Default)]
struct RaceLog {
    pushed: Vec<Pushed>,
    /// What each tag points at in the end (the last push that got 201).
    current: Vec<Pushed>,
    orphans: Vec<(String, String)>,
    abandoned: usize,
    retried: usize,
}

/// Several pushers for a while (`BERTH_GC_RACE_SECS`, default 60) against `regs` (round robin): images with
/// shared layers, tags pushed again, orphan blobs, abandoned uploads.
async fn race(regs: Vec<std::sync::Arc<Registry>>, pushers: usize) -> RaceLog {
    let secs: u64 = std::env::var("BERTH_GC_RACE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let tasks: Vec<_> = (0..pushers)
        .map(|i| {
            let regs = regs.clone();
            tokio::spawn(async move {
                use rand::Rng;
                let mut log = RaceLog::default();
                let mut current: std::collections::BTreeMap<String, usize> = Default::default();
                let shared = format!("layer shared by pusher {i}").into_bytes();
                let mut n = 0usize;
                while std::time::Instant::now() < until {
                    n += 1;
                    let reg = &regs[n % regs.len()];
                    let repo = format!("race/p{i}");
                    // Each pusher leaves an orphan and an abandoned upload first, then picks at random.
                    let roll = if n <= 2 {
                        n - 1
                    } else {
                        rand::thread_rng().gen_range(0..10)
                    };
                    if roll == 0 {
                        let mut o = vec![0u8; 1000];
                        rand::thread_rng().fill(&mut o[..]);
                        if let Some(d) = try_push_blob(reg, &repo, &o).await.expect("orphan push") {
                            log.orphans.push((repo, d));
                        }
                    } else if roll == 1 {
                        let r = reg.post(&format!("/v2/{repo}/blobs/uploads/")).await;
                        let loc = r.header("location").expect("Location").to_string();
                        let r = reg
                            .send(
                                Method::PATCH,
                                &loc,
                                &[],
                                full(Bytes::from_static(b"abandoned")),
                            )
                            .await;
                        assert_eq!(r.status, StatusCode::ACCEPTED);
                        log.abandoned += 1;
                    } else {
                        let tag = format!("t{}", n % 3);
                        loop {
                            let pushed = if roll == 2 {
                                try_push_index(reg, &repo, &tag, &shared).await
                            } else {
                                try_push_image(reg, &repo, Some(&tag), &shared).await
                            };
                            match pushed {
                                Ok(Some(p)) => {
                                    current.insert(tag.clone(), log.pushed.len());
                                    log.pushed.push(p);
                                    break;
                                }
                                Ok(None) => log.retried += 1,
                                Err(e) => panic!("push failed: {e}"),
                            }
                        }
                    }
                }
                // Split what the tags point at now from the rest.
                let last: std::collections::BTreeSet<usize> = current.into_values().collect();
                let (now, before): (Vec<_>, Vec<_>) = std::mem::take(&mut log.pushed)
                    .into_iter()
                    .enumerate()
                    .partition(|(k, _)| last.contains(k));
                log.current = now.into_iter().map(|(_, p)| p).collect();
                log.pushed = before.into_iter().map(|(_, p)| p).collect();
                log
            })
        })
        .collect();
    let mut all = RaceLog::default();
    for t in tasks {
        let log = t.await.expect("pusher");
        all.current.extend(log.current);
        all.pushed.extend(log.pushed);
        all.orphans.extend(log.orphans);
        all.abandoned += log.abandoned;
        all.retried += log.retried;
    }
    all
}

/// Pushers (images and multi-arch indexes, tags pushed again) race a collector that runs every second with a
/// grace of 0 on the filesystem. Every manifest that got 201 pulls completely (with `delete_untagged`: every
/// manifest a tag points at, index children included, while the ones tags left are gone), every blob hashes to
/// its name, the orphans are gone once collections have run after the pushes stopped, and abandoned uploads
/// are purged.
async fn race_on_fs(delete_untagged: bool) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let log = dir.path().join("registry.log");
    let reg = std::sync::Arc::new(Registry::start_logged(
        &root,
        &[
            ("BERTH_GC_INTERVAL", "1s"),
            ("BERTH_GC_GRACE", "0"),
            (
                "BERTH_GC_DELETE_UNTAGGED",
                if delete_untagged { "true" } else { "false" },
            ),
            ("REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE", "2s"),
            ("REGISTRY_LOG_LEVEL", "info"),
        ],
        Some(&log),
    ));
    let out = race(vec![reg.clone()], 4).await;
    let stopped = std::time::Instant::now();
    let during = count_collections(&log);
    assert!(during >= 5, "only {during} collections ran during the race");
    // Abandoned uploads age past the purge age; then two whole collections run.
    tokio::time::sleep(std::time::Duration::from_secs(2).saturating_sub(stopped.elapsed())).await;
    let n = count_collections(&log);
    wait_for_collections(&log, n + 2).await;
    check_race_outcome(&reg, &out.current, &out.orphans).await;
    if delete_untagged {
        for p in &out.pushed {
            let r = reg
                .get(&format!("/v2/{}/manifests/{}", p.repo, p.manifest))
                .await;
            assert_eq!(
                r.status,
                StatusCode::NOT_FOUND,
                "untagged {} collected",
                p.manifest
            );
        }
    } else {
        check_race_outcome(&reg, &out.pushed, &[]).await;
    }
    let uploads: Vec<String> = files_under(&root.join("docker/registry/v2/repositories"))
        .into_iter()
        .filter(|f| f.contains("/_uploads/"))
        .collect();
    assert!(uploads.is_empty(), "abandoned uploads left: {uploads:?}");
    assert_no_dangling_link(&root);
    let indexes = out
        .current
        .iter()
        .chain(out.pushed.iter())
        .filter(|p| !p.children.is_empty())
        .count();
    eprintln!(
        "race (delete_untagged {delete_untagged}): {} manifests pushed ({indexes} indexes), {} pushes retried after MANIFEST_BLOB_UNKNOWN, {} orphans, {} abandoned uploads, {} collections during",
        out.pushed.len() + out.current.len(),
        out.retried,
        out.orphans.len(),
        out.abandoned,
        during
    );
    assert!(
        out.pushed.len() + out.current.len() >= 50 && indexes > 0,
        "too few pushes to mean anything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_racing_a_collector_every_second_never_break() {
    race_on_fs(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_racing_a_collector_that_deletes_untagged_keep_every_tag_whole() {
    race_on_fs(true).await;
}

/// The race on S3 with two replicas, both collecting every second (one at a time, by lease) while pushers go
/// through either replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_s3_two_replicas_race_pushes_and_collections() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    moto.create_bucket("race");
    let mut env = moto.registry_env("race", "reg");
    for (k, v) in [
        ("BERTH_GC_INTERVAL", "1s"),
        ("BERTH_GC_GRACE", "0"),
        ("REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE", "2s"),
        ("REGISTRY_LOG_LEVEL", "info"),
    ] {
        env.push((k.into(), v.into()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let logs = [dir.path().join("a.log"), dir.path().join("b.log")];
    let unused = dir.path().join("unused");
    let regs: Vec<_> = logs
        .iter()
        .map(|l| std::sync::Arc::new(Registry::start_logged(&unused, &env, Some(l))))
        .collect();
    let total = || logs.iter().map(|l| count_collections(l)).sum::<usize>();
    let out = race(regs.clone(), 4).await;
    let stopped = std::time::Instant::now();
    let during = total();
    assert!(during >= 3, "only {during} collections ran during the race");
    let skipped: usize = logs
        .iter()
        .map(|l| {
            std::fs::read_to_string(l)
                .unwrap_or_default()
                .matches("another collector runs")
                .count()
        })
        .sum();
    tokio::time::sleep(std::time::Duration::from_secs(2).saturating_sub(stopped.elapsed())).await;
    let n = total();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while total() < n + 2 {
        assert!(std::time::Instant::now() < deadline, "collections stopped");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for reg in &regs {
        check_race_outcome(reg, &out.pushed, &out.orphans).await;
        check_race_outcome(reg, &out.current, &[]).await;
    }
    check_bucket(&moto, "race", "reg", false).await;
    eprintln!(
        "s3 race: {} images pushed, {} retried, {} orphans, {} abandoned uploads, {during} collections, {skipped} skipped for the lease",
        out.pushed.len() + out.current.len(),
        out.retried,
        out.orphans.len(),
        out.abandoned,
    );
    assert!(
        out.pushed.len() + out.current.len() >= 5,
        "too few pushes to mean anything"
    );
}

/// Retention rules from the config file: the oldest tags of matching repositories go (dry run first), with
/// the manifests only they needed and those manifests' layers; protected tags, the newest tags, index children
/// still needed by a kept index, and other repositories stay.
#[tokio::test(flavor = "multi_thread")]
async fn retention_rules_remove_old_tags_and_what_only_they_needed() {
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start(&[("BERTH_GC_INTERVAL", "0")]);
    let place = Place::Fs(reg.root.clone());
    let config = work.path().join("registry.toml");
    std::fs::write(
        &config,
        "[[gc.retention]]\nrepositories = \"team/*\"\nkeep_last = 2\nkeep_tags = \"^(latest|multi)$\"\n",
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let mut images = std::collections::BTreeMap::new();
    for tag in ["latest", "v1", "multi", "v2", "v3", "v4", "v5"] {
        if tag == "multi" {
            let v1 = &images["v1"];
            let (_, bytes): &(String, Vec<u8>) = v1;
            let index = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
                "manifests": [{"mediaType": OCI_MANIFEST, "digest": v1.0, "size": bytes.len()}]});
            let d = put_manifest(&reg, "team/app", Some("multi"), OCI_INDEX, &index).await;
            images.insert(tag, (d, Vec::new()));
        } else {
            let layer = format!("layer of {tag}");
            images.insert(
                tag,
                reg.push_image("team/app", tag, &[layer.as_bytes()]).await,
            );
        }
        reg.push_image("other/app", tag, &[format!("other {tag}").as_bytes()])
            .await;
    }
    let tags = |r: &serde_json::Value| -> Vec<String> {
        r["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                format!(
                    "{}:{}",
                    t["repository"].as_str().unwrap(),
                    t["tag"].as_str().unwrap()
                )
            })
            .collect()
    };
    let want = ["team/app:v1", "team/app:v2", "team/app:v3"];
    let dry = gc(&place, &["--config", cfg, "--dry-run", "--grace", "0"], &[]);
    assert_eq!(tags(&dry), want, "{dry}");
    assert_eq!(
        reg.get("/v2/team/app/manifests/v1").await.status,
        StatusCode::OK
    );

    let done = gc(&place, &["--config", cfg, "--grace", "0"], &[]);
    assert_eq!(tags(&done), want, "{done}");
    // v2 and v3 go with their own layers; v1's manifest stays (the kept index needs it).
    let gone: BTreeSet<String> = ["v2", "v3"]
        .iter()
        .flat_map(|t| {
            [
                images[t].0.clone(),
                sha256(format!("layer of {t}").as_bytes()),
            ]
        })
        .collect();
    assert_eq!(digests(&done, "blobs"), gone, "{done}");
    for t in ["v1", "v2", "v3"] {
        let r = reg.get(&format!("/v2/team/app/manifests/{t}")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "tag {t} removed");
    }
    for t in ["v2", "v3"] {
        let r = reg
            .get(&format!("/v2/team/app/manifests/{}", images[t].0))
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "manifest of {t} removed");
    }
    let r = reg
        .get(&format!("/v2/team/app/manifests/{}", images["v1"].0))
        .await;
    assert_eq!(r.status, StatusCode::OK, "the index child stays");
    for t in ["latest", "multi", "v4", "v5"] {
        let r = reg.get(&format!("/v2/team/app/manifests/{t}")).await;
        assert_eq!(r.status, StatusCode::OK, "tag {t} kept");
    }
    let r = reg.get("/v2/other/app/tags/list").await;
    assert_eq!(
        r.json()["tags"].as_array().unwrap().len(),
        7,
        "other repositories untouched"
    );
    place.check().await;
    // Applied again, the rule finds nothing more to remove.
    let again = gc(&place, &["--config", cfg, "--grace", "0"], &[]);
    assert!(
        tags(&again).is_empty() && digests(&again, "blobs").is_empty(),
        "{again}"
    );
}

/// A registry stopped (SIGTERM) while its scheduled collection walks a large store exits cleanly and logs the
/// collection as interrupted: a shutdown is not a failed collection (operators alert on those).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_stopped_during_a_collection_logs_it_interrupted_not_failed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    // Enough blobs that a collection's walk takes a while (all recent, so the grace spares them all).
    let blobs = root.join("docker/registry/v2/blobs/sha256");
    for i in 0..20_000u32 {
        let d = sha256(&i.to_le_bytes());
        let hex = d.trim_start_matches("sha256:");
        let dir = blobs.join(&hex[..2]).join(hex);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("data"), i.to_le_bytes()).unwrap();
    }
    let mut interrupted = 0;
    for attempt in 0..10 {
        let log = dir.path().join(format!("registry-{attempt}.log"));
        let mut reg = Registry::start_logged(
            &root,
            &[
                ("BERTH_GC_INTERVAL", "1s"),
                ("BERTH_GC_GRACE", "1h"),
                ("REGISTRY_LOG_LEVEL", "debug"),
            ],
            Some(&log),
        );
        let read = || std::fs::read_to_string(&log).unwrap_or_default();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        // A collection has started and not yet ended.
        while {
            let l = read();
            l.matches("garbage collection started").count()
                <= l.matches("garbage collection done").count()
                    + l.matches("garbage collection skipped").count()
                    + l.matches("garbage collection failed").count()
        } {
            assert!(
                std::time::Instant::now() < deadline,
                "no collection started: {}",
                read()
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let status = reg.terminate();
        let l = read();
        assert!(status.success(), "exit {status:?}: {l}");
        assert!(
            !l.contains("garbage collection failed"),
            "a shutdown was logged as a failed collection: {l}"
        );
        if l.contains("garbage collection interrupted by shutdown") {
            interrupted += 1;
            // The lease the interrupted collection held expires; until then a new process skips, never fails.
            let log = dir.path().join(format!("registry-{attempt}-after.log"));
            let mut reg = Registry::start_logged(
                &root,
                &[
                    ("BERTH_GC_INTERVAL", "1s"),
                    ("BERTH_GC_GRACE", "1h"),
                    ("REGISTRY_LOG_LEVEL", "info"),
                ],
                Some(&log),
            );
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("garbage collection skipped")
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the next collection did not skip: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            assert!(reg.terminate().success());
            let after = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(!after.contains("garbage collection failed"), "{after}");
            break;
        }
    }
    assert!(
        interrupted > 0,
        "no attempt stopped the registry while a collection ran"
    );
}

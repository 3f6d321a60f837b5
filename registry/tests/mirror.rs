//! Pull-through mirrors against real remotes started here: a second berth stack (registry + berth-proxy with
//! its own dev CA and an htpasswd user) as a Basic-auth remote over TLS; registry:2 with token authentication
//! and a token server (tests/fixtures/token_server.py) for the Bearer flow; a plain berth registry for
//! anonymous pulls; and a remote written here that pauses mid-blob, counts its requests, or flips a byte.
//!
//! berth-proxy is built next to berth-registry and docker-registry, skopeo and python3-cryptography are
//! installed by `scripts/test.sh`; anything missing fails the test.

mod common;

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::proxy::start_proxy;
use common::tools::{oci_layout, run, skopeo};
use common::{files_under, full, sha256, Registry};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use sha2::{Digest as _, Sha256};

const MIB: u64 = 1024 * 1024;

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut v);
    v
}

/// A berth-registry with `toml` as its configuration file, logging at info into `dir/mirror.log`.
fn start_mirror(dir: &Path, toml: &str, env: &[(&str, &str)]) -> Registry {
    let config = dir.join("mirror.toml");
    std::fs::write(&config, toml).unwrap();
    let mut all = vec![("REGISTRY_LOG_LEVEL", "info")];
    all.extend_from_slice(env);
    Registry::start_with_args(
        &dir.join("mirror-data"),
        &all,
        Some(&dir.join("mirror.log")),
        &["--config", config.to_str().unwrap()],
    )
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("mirror.log")).unwrap_or_default()
}

/// Blob data files under a registry root, as `sha256:HEX`.
fn stored_blobs(root: &Path) -> std::collections::BTreeSet<String> {
    common::blobs_on_disk(root)
}

fn upload_sessions(root: &Path) -> Vec<String> {
    files_under(&root.join("docker/registry/v2/repositories"))
        .into_iter()
        .filter(|f| f.contains("/_uploads/"))
        .collect()
}

/// The manifest's layer digests.
fn layers_of(manifest: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrored_prefix_pulls_from_a_basic_auth_berth_stack_next_to_local_repositories() {
    let dir = tempfile::tempdir().unwrap();
    // The remote: a second berth stack, registry behind berth-proxy (TLS with its own dev CA, user bob).
    let remote = Registry::start(&[]);
    let layer = random(3 * MIB as usize);
    let (digest, manifest) = remote
        .push_image("team/app", "1", &[&layer, b"second layer"])
        .await;
    // An image made by a client (gzip layers, copied as they are), for skopeo to pull through the mirror.
    let gz = dir.path().join("gz");
    let gz_layers = oci_layout(&gz, "v1", &[200_000, 50_000]);
    run(skopeo()
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", gz.display()))
        .arg(format!("docker://{}/team/gz:1", remote.addr)));
    let proxy = start_proxy(dir.path(), &[&remote.addr], "bob", "bob-pw");
    let url = format!("https://{}", proxy.addr);
    let toml = format!(
        r#"
[[mirrors]]
prefix = "hub"
url = "{url}"
username = "bob"
password = "bob-pw"
namespace = "remote.test"

[[mirrors]]
prefix = "live"
url = "{url}"
username = "bob"
password = "bob-pw"
ttl = "0"

[[mirrors]]
prefix = "wrong"
url = "{url}"
username = "bob"
password = "not-bobs"
"#
    );
    let m = start_mirror(
        dir.path(),
        &toml,
        &[("BERTH_PROXY_CAFILE", proxy.ca.to_str().unwrap())],
    );

    // A tag through the prefix: the remote's manifest, byte for byte, and its blobs.
    let r = m.get("/v2/hub/team/app/manifests/1").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(&r.body[..], &manifest[..]);
    assert_eq!(r.header("warning"), None);
    let r = m
        .get(&format!(
            "/v2/hub/team/app/blobs/{}",
            layers_of(&manifest)[0]
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(sha256(&r.body), sha256(&layer));
    let r = m
        .get(&format!(
            "/v2/hub/team/app/blobs/{}",
            layers_of(&manifest)[1]
        ))
        .await;
    assert_eq!(&r.body[..], b"second layer");
    let r = m.get("/v2/live/team/app/manifests/1").await;
    assert_eq!(r.status, StatusCode::OK);

    // skopeo pulls the whole image through the prefix and pushes to a local repository on the same berth.
    let out = dir.path().join("pulled");
    run(skopeo()
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{}/hub/team/gz:1", m.addr))
        .arg(format!("oci:{}:v1", out.display())));
    for l in &gz_layers {
        let pulled = std::fs::read(out.join("blobs/sha256").join(&l["sha256:".len()..]))
            .unwrap_or_else(|e| panic!("skopeo did not pull layer {l}: {e}"));
        assert_eq!(&sha256(&pulled), l);
    }
    let own = dir.path().join("own");
    oci_layout(&own, "v1", &[100_000]);
    run(skopeo()
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", own.display()))
        .arg(format!("docker://{}/own/app:1", m.addr)));
    assert_eq!(
        m.head("/v2/own/app/manifests/1").await.status,
        StatusCode::OK
    );

    // Pushes and deletes into a mirror are refused as registry:2's cache refuses them.
    let r = m.post("/v2/hub/team/app/blobs/uploads/").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.code(), "UNSUPPORTED");
    let r = m
        .send(
            Method::PUT,
            "/v2/hub/team/app/manifests/2",
            &[("content-type", "application/vnd.oci.image.manifest.v1+json")],
            full(manifest.clone()),
        )
        .await;
    assert_eq!(r.code(), "UNSUPPORTED");

    // What the remote does not have, and credentials it refuses.
    let r = m.get("/v2/hub/team/app/manifests/nope").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
    );
    let r = m
        .get(&format!("/v2/hub/team/app/blobs/{}", sha256(b"absent")))
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN")
    );
    let r = m.get("/v2/wrong/team/app/manifests/1").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "DENIED"),
        "{:?}",
        r.body
    );
    // A pull-only mirror reads nothing else this berth holds: a blob of a local repository is not served
    // through the prefix unless the remote has it in that repository.
    let own_blobs: Vec<String> = std::fs::read_dir(own.join("blobs/sha256"))
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    for d in &own_blobs {
        let r = m.get(&format!("/v2/hub/team/app/blobs/{d}")).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            "{d}"
        );
    }
    // What the remote does have, stored for another prefix, is linked after the remote's HEAD.
    let r = m
        .get(&format!("/v2/live/team/gz/blobs/{}", gz_layers[0]))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&sha256(&r.body), &gz_layers[0]);

    // The OCI proxying convention: `?ns=` names the remote; only configured namespaces are answered.
    let r = m.get("/v2/team/app/manifests/1?ns=remote.test").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("oci-namespace"), Some("remote.test"));
    assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
    let r = m.get("/v2/team/app/manifests/1?ns=docker.io").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "NAME_UNKNOWN")
    );
    let tags = m.get("/v2/hub/team/app/tags/list").await.json();
    assert_eq!(
        tags,
        serde_json::json!({"name": "hub/team/app", "tags": ["1"]})
    );

    // The remote goes away: what was pulled is still served. `hub` (TTL 168h) answers from storage as
    // usual; `live` (TTL 0: checked on every pull) cannot check and serves its stored tag, marked stale.
    drop(proxy);
    drop(remote);
    let r = m.get("/v2/hub/team/app/manifests/1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("warning"), None);
    for l in layers_of(&manifest) {
        let r = m.get(&format!("/v2/hub/team/app/blobs/{l}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(sha256(&r.body), l);
    }
    let r = m.get("/v2/live/team/app/manifests/1").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(r.header("warning"), Some("110 berth \"Response is Stale\""));
    // Never pulled, so nothing to fall back on: the remote's absence is said, not hidden.
    let r = m.get("/v2/hub/team/other/manifests/1").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
    );
    let log = log_of(dir.path());
    assert!(log.contains("serving the stored tag"), "{log}");
    assert!(
        !log.contains("bob-pw") && !log.contains("not-bobs"),
        "a password was logged:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_moved_on_the_remote_is_seen_after_the_ttl_and_expired_content_is_collected() {
    let dir = tempfile::tempdir().unwrap();
    // An anonymous remote: a plain berth registry.
    let remote = Registry::start(&[]);
    let (first, first_manifest) = remote.push_image("app", "1", &[b"layer one"]).await;
    remote.push_image("app2", "1", &[b"layer of app2"]).await;
    // Before the namespace was mirrored, a repository in it was pushed to: it is not the mirror's to expire.
    let root = dir.path().join("mirror-data");
    let mut before = Registry::start_at(&root, &[]);
    let (old_local, _) = before.push_image("m/local", "1", &[b"pushed before"]).await;
    before.terminate();
    let ttl = Duration::from_secs(5);
    let toml = format!(
        "[[mirrors]]\nprefix = \"m\"\nurl = \"http://{}\"\nttl = \"5s\"\n",
        remote.addr
    );
    let m = start_mirror(dir.path(), &toml, &[]);
    let fetched = Instant::now();
    let r = m.get("/v2/m/app/manifests/1").await;
    assert_eq!(r.header("docker-content-digest"), Some(first.as_str()));
    let l1 = layers_of(&first_manifest)[0].clone();
    assert_eq!(
        m.get(&format!("/v2/m/app/blobs/{l1}")).await.status,
        StatusCode::OK
    );
    m.push_image("own/app", "1", &[b"a local layer"]).await;

    let (second, _) = remote.push_image("app", "1", &[b"layer two"]).await;
    // Within the TTL the stored tag is served without asking the remote.
    let r = m.get("/v2/m/app/manifests/1").await;
    assert!(
        fetched.elapsed() < ttl,
        "the machine took the whole TTL to get here: nothing to check"
    );
    assert_eq!(r.header("docker-content-digest"), Some(first.as_str()));
    // After it, the remote is asked and the move is seen (polled, bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = m.get("/v2/m/app/manifests/1").await;
        assert_eq!(r.status, StatusCode::OK);
        if r.header("docker-content-digest") == Some(second.as_str()) {
            assert!(
                fetched.elapsed() >= ttl,
                "the move was seen before the TTL ran out"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the moved tag was never seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Once the TTL has passed since the last check, a collection removes the mirrored tag, its manifests
    // and blobs, and leaves the local repository alone.
    let checked = Instant::now();
    while checked.elapsed() < ttl + Duration::from_millis(200) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Fetched within the TTL: kept.
    assert_eq!(m.get("/v2/m/app2/manifests/1").await.status, StatusCode::OK);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth-registry"));
    cmd.env_clear()
        .env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", &root)
        .args(["--config", dir.path().join("mirror.toml").to_str().unwrap()])
        .args(["gc", "--json", "--grace", "0"]);
    let report: serde_json::Value = serde_json::from_str(run(&mut cmd).trim()).unwrap();
    let tags: Vec<String> = report["tags"]
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
        .collect();
    assert_eq!(tags, ["m/app:1"], "{report}");
    let blobs = stored_blobs(&root);
    assert!(!blobs.contains(&l1), "the mirrored layer is still stored");
    assert!(
        !blobs.contains(&first) && !blobs.contains(&second),
        "{blobs:?}"
    );
    assert!(
        blobs.contains(&sha256(b"a local layer")),
        "a local blob was collected"
    );
    assert_eq!(
        m.head("/v2/own/app/manifests/1").await.status,
        StatusCode::OK
    );
    assert!(
        blobs.contains(&old_local),
        "a manifest pushed before the mirror was collected"
    );
    assert!(root
        .join("docker/registry/v2/repositories/m/local/_manifests/tags/1/current/link")
        .exists());
    assert_eq!(
        m.head("/v2/m/app2/manifests/1").await.status,
        StatusCode::OK
    );
    // And the next pull fetches it again.
    let r = m.get("/v2/m/app/manifests/1").await;
    assert_eq!(r.header("docker-content-digest"), Some(second.as_str()));
}

// ---- a remote written for the tests ----

/// A remote registry serving one image whose only layer is `size` bytes of a fixed pattern. It counts the
/// `GET`s of that layer, can pause after the first half until `open` is sent, and can flip one byte.
struct FakeRemote {
    addr: String,
    layer_gets: Arc<AtomicUsize>,
    open: tokio::sync::watch::Sender<bool>,
    layer: String,
    manifest: Vec<u8>,
}

const PATTERN_CHUNK: u64 = 64 * 1024;

/// Chunk `i` of the layer pattern.
fn pattern(i: u64) -> Bytes {
    let mut x = i
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    let mut v = Vec::with_capacity(PATTERN_CHUNK as usize);
    for _ in 0..PATTERN_CHUNK / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    Bytes::from(v)
}

fn pattern_digest(size: u64) -> String {
    let mut h = Sha256::new();
    for i in 0..size / PATTERN_CHUNK {
        h.update(pattern(i));
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

impl FakeRemote {
    async fn start(size: u64, paused: bool, corrupt: bool) -> FakeRemote {
        assert_eq!(size % PATTERN_CHUNK, 0);
        let layer = pattern_digest(size);
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": size}],
        }))
        .unwrap();
        let (open, opened) = tokio::sync::watch::channel(!paused);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let layer_gets = Arc::new(AtomicUsize::new(0));
        let state = Arc::new((
            layer.clone(),
            manifest.clone(),
            config.clone(),
            Arc::clone(&layer_gets),
            opened,
        ));
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: Request<hyper::body::Incoming>| {
                            let state = Arc::clone(&state);
                            async move { Ok::<_, Infallible>(fake_answer(&state, req, size, corrupt)) }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        FakeRemote {
            addr,
            layer_gets,
            open,
            layer,
            manifest,
        }
    }
}

type FakeState = (
    String,
    Vec<u8>,
    Vec<u8>,
    Arc<AtomicUsize>,
    tokio::sync::watch::Receiver<bool>,
);
type FakeBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn fake_answer(
    state: &FakeState,
    req: Request<hyper::body::Incoming>,
    size: u64,
    corrupt: bool,
) -> Response<FakeBody> {
    let (layer, manifest, config, gets, opened) = state;
    let path = req.uri().path().to_string();
    let head = req.method() == Method::HEAD;
    let whole = |status: StatusCode, ct: &str, body: Vec<u8>| {
        let len = body.len();
        Response::builder()
            .status(status)
            .header("content-type", ct)
            .header("content-length", len)
            .header("docker-content-digest", sha256(&body))
            .body(if head {
                http_body_util::Empty::new().boxed()
            } else {
                http_body_util::Full::new(Bytes::from(body)).boxed()
            })
            .unwrap()
    };
    if path == "/v2/" {
        return whole(StatusCode::OK, "application/json", b"{}".to_vec());
    }
    if path == "/v2/test/img/manifests/1"
        || path == format!("/v2/test/img/manifests/{}", sha256(manifest))
    {
        return whole(
            StatusCode::OK,
            "application/vnd.oci.image.manifest.v1+json",
            manifest.clone(),
        );
    }
    if path == format!("/v2/test/img/blobs/{}", sha256(config)) {
        return whole(StatusCode::OK, "application/octet-stream", config.clone());
    }
    if path == format!("/v2/test/img/blobs/{layer}") {
        let builder = Response::builder()
            .header("content-type", "application/octet-stream")
            .header("content-length", size);
        if head {
            return builder.body(http_body_util::Empty::new().boxed()).unwrap();
        }
        gets.fetch_add(1, Ordering::SeqCst);
        let chunks = size / PATTERN_CHUNK;
        let opened = opened.clone();
        let stream =
            futures_util::stream::unfold((0u64, opened), move |(i, mut opened)| async move {
                if i >= chunks {
                    return None;
                }
                if i == chunks / 2 {
                    let _ = opened.wait_for(|o| *o).await;
                }
                let mut c = pattern(i);
                if corrupt && i == chunks / 2 {
                    let mut v = c.to_vec();
                    v[100] ^= 0x01;
                    c = Bytes::from(v);
                }
                Some((
                    Ok::<_, Infallible>(http_body::Frame::data(c)),
                    (i + 1, opened),
                ))
            });
        return builder.body(StreamBody::new(stream).boxed()).unwrap();
    }
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .header("content-type", "application/json")
        .body(
            http_body_util::Full::new(Bytes::from_static(
                br#"{"errors":[{"code":"NOT_FOUND","message":"not here"}]}"#,
            ))
            .boxed(),
        )
        .unwrap()
}

/// A streaming `GET`: status, headers, and a task that hashes the body, counting bytes into `seen`. The task
/// answers the digest, or `None` when the body broke off.
async fn streaming_get(
    addr: &str,
    path: &str,
    range: Option<&str>,
    seen: Arc<AtomicU64>,
) -> (
    StatusCode,
    http::HeaderMap,
    tokio::task::JoinHandle<Option<(String, u64)>>,
) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let mut b = Request::builder().uri(format!("http://{addr}{path}"));
    if let Some(r) = range {
        b = b.header("range", r);
    }
    let resp = client
        .request(b.body(http_body_util::Empty::new()).unwrap())
        .await
        .expect("request");
    let (parts, mut body) = resp.into_parts();
    let task = tokio::spawn(async move {
        let mut h = Sha256::new();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return None;
            };
            if let Ok(data) = frame.into_data() {
                h.update(&data);
                n += data.len() as u64;
                seen.fetch_add(data.len() as u64, Ordering::SeqCst);
            }
        }
        Some((format!("sha256:{}", hex::encode(h.finalize())), n))
    });
    (parts.status, parts.headers, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_pulls_of_a_missing_256_mib_blob_stream_from_one_remote_fetch() {
    let size = 256 * MIB;
    let remote = FakeRemote::start(size, true, false).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[[mirrors]]\nprefix = \"fake\"\nurl = \"http://{}\"\n",
        remote.addr
    );
    let m = start_mirror(dir.path(), &toml, &[]);
    let path = format!("/v2/fake/test/img/blobs/{}", remote.layer);
    let mut pulls = Vec::new();
    let mut progress = Vec::new();
    for _ in 0..10 {
        let seen = Arc::new(AtomicU64::new(0));
        let (status, headers, task) = streaming_get(&m.addr, &path, None, Arc::clone(&seen)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-length"], size.to_string().as_str());
        pulls.push(task);
        progress.push(seen);
    }
    // The remote has sent half the blob and waits. Every client receives bytes meanwhile: the blob streams,
    // nobody waits for the whole of it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while progress.iter().any(|p| p.load(Ordering::SeqCst) < MIB) {
        assert!(
            Instant::now() < deadline,
            "clients got no bytes while the remote was mid-blob: {:?}",
            progress
                .iter()
                .map(|p| p.load(Ordering::SeqCst))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(progress
        .iter()
        .all(|p| p.load(Ordering::SeqCst) <= size / 2));
    // A range within what has arrived is served now.
    let seen = Arc::new(AtomicU64::new(0));
    let (status, headers, task) = streaming_get(
        &m.addr,
        &path,
        Some(&format!(
            "bytes={}-{}",
            PATTERN_CHUNK,
            2 * PATTERN_CHUNK - 1
        )),
        seen,
    )
    .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        headers["content-range"],
        format!("bytes {}-{}/{size}", PATTERN_CHUNK, 2 * PATTERN_CHUNK - 1).as_str()
    );
    assert_eq!(
        task.await.unwrap(),
        Some((sha256(&pattern(1)), PATTERN_CHUNK))
    );
    assert_eq!(remote.layer_gets.load(Ordering::SeqCst), 1);

    remote.open.send(true).unwrap();
    for p in pulls {
        assert_eq!(p.await.unwrap(), Some((remote.layer.clone(), size)));
    }
    assert_eq!(
        remote.layer_gets.load(Ordering::SeqCst),
        1,
        "one remote fetch for ten pulls"
    );
    // Stored once checked; served from storage from then on, with the remote out of the way.
    let root = dir.path().join("mirror-data");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log_of(dir.path()).contains("mirror: blob fetched") {
        assert!(
            Instant::now() < deadline,
            "the fetched blob was never stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stored_blobs(&root).contains(&remote.layer));
    let (status, _, task) = streaming_get(&m.addr, &path, None, Arc::new(AtomicU64::new(0))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(task.await.unwrap(), Some((remote.layer.clone(), size)));
    assert_eq!(remote.layer_gets.load(Ordering::SeqCst), 1);
    assert!(upload_sessions(&root).is_empty());
    let log = log_of(dir.path());
    assert_eq!(log.matches("mirror: blob fetched").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_that_corrupts_a_blob_leaves_nothing_stored_and_the_client_gets_an_error() {
    let size = 4 * MIB;
    let remote = FakeRemote::start(size, false, true).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[[mirrors]]\nprefix = \"fake\"\nurl = \"http://{}\"\n",
        remote.addr
    );
    let m = start_mirror(dir.path(), &toml, &[]);
    // The manifest and config are fine and are stored.
    let r = m.get("/v2/fake/test/img/manifests/1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], &remote.manifest[..]);
    let path = format!("/v2/fake/test/img/blobs/{}", remote.layer);
    for attempt in 1..=2 {
        let seen = Arc::new(AtomicU64::new(0));
        let (status, _, task) = streaming_get(&m.addr, &path, None, Arc::clone(&seen)).await;
        // The size was known, so the answer began; it never completes.
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            task.await.unwrap(),
            None,
            "a corrupt blob was delivered whole"
        );
        assert!(seen.load(Ordering::SeqCst) < size);
        // A failed fetch is not remembered: the next pull asks again.
        assert_eq!(remote.layer_gets.load(Ordering::SeqCst), attempt);
    }
    let root = dir.path().join("mirror-data");
    assert!(!stored_blobs(&root).contains(&remote.layer));
    assert!(
        upload_sessions(&root).is_empty(),
        "{:?}",
        upload_sessions(&root)
    );
    let log = log_of(dir.path());
    assert!(log.contains("has digest"), "{log}");
    assert!(stored_blobs(&root).contains(&sha256(&remote.manifest)));
}

// ---- registry:2 with token authentication ----

struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// tests/fixtures/token_server.py with user alice; returns the process and its address.
fn token_server(dir: &Path) -> (Spawned, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/token_server.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(["--dir", dir.to_str().unwrap(), "--user", "alice:alice-pw"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("token.log")).unwrap())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("token server said {line:?}"))
        .to_string();
    (Spawned(child), addr)
}

/// registry:2 that trusts the token server's signing certificate.
fn token_registry(dir: &Path, token_addr: &str) -> (Spawned, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.join("registry2.yml");
    let mut f = std::fs::File::create(&config).unwrap();
    writeln!(
        f,
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\nauth:\n  token:\n    realm: http://{token_addr}/token\n    service: berth-test-registry\n    issuer: berth-test-issuer\n    rootcertbundle: {}\n",
        dir.join("registry2-data").display(),
        dir.join("root.crt").display()
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .env_remove("AWS_CA_BUNDLE")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("registry2.log")).unwrap())
        .spawn()
        .expect("docker-registry (scripts/test.sh installs it)");
    let child = Spawned(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "registry:2 did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, addr)
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// Pushes a blob to registry:2 with a Bearer token.
async fn push_blob_with(reg: &Registry, repo: &str, data: &[u8], auth: &str) -> String {
    let d = sha256(data);
    let r = reg
        .send(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            &[("authorization", auth)],
            full(Bytes::new()),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let loc = r.header("location").unwrap().to_string();
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = reg
        .send(
            Method::PUT,
            &format!("{loc}{sep}digest={d}"),
            &[
                ("authorization", auth),
                ("content-type", "application/octet-stream"),
            ],
            full(Bytes::copy_from_slice(data)),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_of_registry2_with_token_auth_gets_and_reuses_bearer_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (_tokens, token_addr) = token_server(dir.path());
    let (_r2, r2_addr) = token_registry(dir.path(), &token_addr);
    let r2 = Registry::remote(&r2_addr);
    // Without a token registry:2 asks for one, as Docker Hub does.
    let r = r2.get("/v2/library/tool/manifests/1").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .starts_with("Bearer realm="));
    // Push an image with a token for push.
    let tok = Registry::remote(&token_addr)
        .send(
            Method::GET,
            "/token?service=berth-test-registry&scope=repository:library/tool:pull,push",
            &[("authorization", &basic("alice", "alice-pw"))],
            full(Bytes::new()),
        )
        .await
        .json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let auth = format!("Bearer {tok}");
    let layer = random(MIB as usize);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let cd = push_blob_with(&r2, "library/tool", config, &auth).await;
    let ld = push_blob_with(&r2, "library/tool", &layer, &auth).await;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}],
    }))
    .unwrap();
    let r = r2
        .send(
            Method::PUT,
            "/v2/library/tool/manifests/1",
            &[
                ("authorization", &auth),
                ("content-type", "application/vnd.oci.image.manifest.v1+json"),
            ],
            full(manifest.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let counts = || async {
        Registry::remote(&token_addr).get("/_counts").await.json()["tokens"]
            .as_u64()
            .unwrap()
    };
    let before = counts().await;

    let toml = format!(
        "[[mirrors]]\nprefix = \"r2\"\nurl = \"http://{r2_addr}\"\nusername = \"alice\"\npassword = \"alice-pw\"\n\n\
         [[mirrors]]\nprefix = \"nocreds\"\nurl = \"http://{r2_addr}\"\n"
    );
    let m = start_mirror(dir.path(), &toml, &[]);
    let r = m.get("/v2/r2/library/tool/manifests/1").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(&r.body[..], &manifest[..]);
    let r = m.get(&format!("/v2/r2/library/tool/blobs/{ld}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(sha256(&r.body), ld);
    let r = m.get(&format!("/v2/r2/library/tool/blobs/{cd}")).await;
    assert_eq!(&r.body[..], &config[..]);
    // One token for the repository's scope, reused by the manifest and both blobs.
    assert_eq!(counts().await - before, 1);
    // Without credentials the token server grants nothing, and registry:2 refuses: passed on as DENIED.
    let r = m.get("/v2/nocreds/library/tool/manifests/1").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::FORBIDDEN, "DENIED"),
        "{:?}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_s3_a_fetched_blob_goes_through_the_spool_into_the_bucket_and_a_corrupt_one_does_not() {
    let moto = common::s3::Moto::start();
    moto.create_bucket("mirror");
    let good = FakeRemote::start(8 * MIB, false, false).await;
    let bad = FakeRemote::start(2 * MIB, false, true).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let toml = format!(
        "[proxy]\nspool_directory = \"{}\"\n\n[[mirrors]]\nprefix = \"good\"\nurl = \"http://{}\"\n\n\
         [[mirrors]]\nprefix = \"bad\"\nurl = \"http://{}\"\n",
        spool.display(),
        good.addr,
        bad.addr
    );
    let env = moto.registry_env("mirror", "m");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let m = start_mirror(dir.path(), &toml, &env);
    let path = format!("/v2/good/test/img/blobs/{}", good.layer);
    let (status, _, task) = streaming_get(&m.addr, &path, None, Arc::new(AtomicU64::new(0))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(task.await.unwrap(), Some((good.layer.clone(), 8 * MIB)));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log_of(dir.path()).contains("mirror: blob fetched") {
        assert!(
            Instant::now() < deadline,
            "the fetched blob was never stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hex = &good.layer["sha256:".len()..];
    let blob_key = format!("m/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]);
    assert!(
        moto.keys("mirror").contains(&blob_key),
        "{:?}",
        moto.keys("mirror")
    );
    // Served from the bucket now, with the remote's count unchanged.
    let (_, _, task) = streaming_get(&m.addr, &path, None, Arc::new(AtomicU64::new(0))).await;
    assert_eq!(task.await.unwrap(), Some((good.layer.clone(), 8 * MIB)));
    assert_eq!(good.layer_gets.load(Ordering::SeqCst), 1);

    let path = format!("/v2/bad/test/img/blobs/{}", bad.layer);
    let (status, _, task) = streaming_get(&m.addr, &path, None, Arc::new(AtomicU64::new(0))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        task.await.unwrap(),
        None,
        "a corrupt blob was delivered whole"
    );
    let hex = &bad.layer["sha256:".len()..];
    assert!(!moto.keys("mirror").iter().any(|k| k.contains(hex)));
    // The bucket holds only checked blobs and no upload.
    common::s3::check_bucket(&moto, "mirror", "m", false).await;
    // The spool's files are unlinked as soon as they are made.
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
}

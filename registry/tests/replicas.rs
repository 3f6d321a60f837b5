//! Several berth-registry replicas on one S3 bucket (a moto_server each test starts): an upload session moves
//! between replicas, and two replicas behind the real berth-proxy take concurrent pushes and pulls, and a
//! replica killed in the middle of a push is survived by the client's retry through the other.
//!
//! moto_server and skopeo are installed by `scripts/test.sh`, and berth-proxy is built next to
//! berth-registry by it (`cargo build --workspace --bins`); anything missing fails the test.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::proxy::start_proxy;
use common::s3::{check_bucket, Moto};
use common::tools::{blob_bytes, oci_layout, skopeo};
use common::{full, sha256, Registry};
use http::{Method, StatusCode};

const MIB: usize = 1024 * 1024;

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut v);
    v
}

fn replica(moto: &Moto, bucket: &str, log: Option<&Path>) -> Registry {
    let env = moto.registry_env(bucket, "replicated");
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.push(("REGISTRY_STORAGE_DELETE_ENABLED", "true"));
    all.push(("REGISTRY_LOG_LEVEL", "info"));
    let unused = std::env::temp_dir().join("berth-unused-fs-root");
    Registry::start_logged(&unused, &all, log)
}

/// The path and query of a `Location` header.
fn path_of(loc: &str) -> String {
    loc[loc.find("/v2/").expect("location path")..].to_string()
}

#[tokio::test]
async fn upload_session_moves_between_replicas() {
    let moto = Moto::start();
    moto.create_bucket("replicas");
    let a = replica(&moto, "replicas", None);
    let b = replica(&moto, "replicas", None);
    let data = random(12 * MIB + 77);
    let d = sha256(&data);
    let cuts = [0, 3 * MIB, 9 * MIB, data.len()];

    // POST on A, PATCH on B, PATCH on A, PUT (with no body) on A: A's running hash is stale, so it re-hashes.
    let start = a.post("/v2/moving/blobs/uploads/").await;
    assert_eq!(start.status, StatusCode::ACCEPTED);
    let mut loc = path_of(start.header("location").unwrap());
    for (i, r) in [&b, &a, &b].iter().enumerate() {
        let (s, e) = (cuts[i], cuts[i + 1]);
        let p = r
            .send(
                Method::PATCH,
                &loc,
                &[
                    ("content-range", &format!("{s}-{}", e - 1)),
                    ("content-length", &(e - s).to_string()),
                ],
                full(Bytes::copy_from_slice(&data[s..e])),
            )
            .await;
        assert_eq!(p.status, StatusCode::ACCEPTED, "PATCH {i}: {:?}", p.body);
        assert_eq!(p.header("range"), Some(format!("0-{}", e - 1).as_str()));
        loc = path_of(p.header("location").unwrap());
    }
    // Either replica reports the session's progress.
    let status = a.get(&loc).await;
    assert_eq!(status.status, StatusCode::NO_CONTENT);
    assert_eq!(
        status.header("range"),
        Some(format!("0-{}", data.len() - 1).as_str())
    );
    let sep = if loc.contains('?') { '&' } else { '?' };
    let put = a
        .send(
            Method::PUT,
            &format!("{loc}{sep}digest={d}"),
            &[],
            full(Bytes::new()),
        )
        .await;
    assert_eq!(put.status, StatusCode::CREATED, "{:?}", put.body);
    let got = b.get(&format!("/v2/moving/blobs/{d}")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body.as_ref(), data.as_slice());

    // A wrong digest committed on the replica that never saw the data is refused, and the session is gone.
    let start = b.post("/v2/moving/blobs/uploads/").await;
    let loc = path_of(start.header("location").unwrap());
    let p = a
        .send(
            Method::PATCH,
            &loc,
            &[],
            full(Bytes::from_static(b"some bytes")),
        )
        .await;
    assert_eq!(p.status, StatusCode::ACCEPTED);
    let loc = path_of(p.header("location").unwrap());
    let sep = if loc.contains('?') { '&' } else { '?' };
    let bad = b
        .send(
            Method::PUT,
            &format!("{loc}{sep}digest={}", sha256(b"other bytes")),
            &[],
            full(Bytes::new()),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{:?}", bad.body);
    assert_eq!(a.get(&loc).await.status, StatusCode::NOT_FOUND);
    assert!(
        !moto.keys("replicas").iter().any(|k| k.contains("_uploads")),
        "sessions left in the bucket"
    );
}

/// Bytes received so far by each open TCP connection to `port` (by peer address), from `ss`.
fn received_by_connection(port: u16) -> std::collections::HashMap<String, u64> {
    let out = Command::new("ss")
        .args(["-Htni", "state", "established"])
        .arg(format!("( sport = :{port} )"))
        .output()
        .expect("ss (iproute2, installed by scripts/test.sh)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut map = std::collections::HashMap::new();
    let mut peer = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            peer = line.split_whitespace().nth(3).map(str::to_string);
        } else if let (Some(p), Some(n)) = (
            &peer,
            line.split_whitespace()
                .find_map(|f| f.strip_prefix("bytes_received:"))
                .and_then(|n| n.parse::<u64>().ok()),
        ) {
            map.insert(p.clone(), n);
        }
    }
    map
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port")
}

/// Whether some connection to `port` received more than `threshold` bytes beyond `baseline`.
fn receiving(port: u16, baseline: &std::collections::HashMap<String, u64>, threshold: u64) -> bool {
    received_by_connection(port)
        .iter()
        .any(|(peer, n)| *n > baseline.get(peer).copied().unwrap_or(0) + threshold)
}

/// Waits (bounded) for spawned skopeo processes and asserts they all succeeded.
fn wait_all(children: Vec<(String, Child)>) {
    for (what, child) in children {
        let out = child.wait_with_output().expect("wait skopeo");
        assert!(
            out.status.success(),
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn skopeo")
}

/// Requests a replica's access log shows for `method`.
fn served(log: &Path, method: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!("method={method}")))
        .count()
}

#[tokio::test]
async fn two_replicas_behind_the_proxy_share_pushes_and_survive_a_kill() {
    let moto = Moto::start();
    moto.create_bucket("fleet");
    let tmp = tempfile::tempdir().unwrap();
    let (log_a, log_b) = (tmp.path().join("a.log"), tmp.path().join("b.log"));
    let mut reps = [
        replica(&moto, "fleet", Some(&log_a)),
        replica(&moto, "fleet", Some(&log_b)),
    ];
    let proxy = start_proxy(
        tmp.path(),
        &[&reps[0].addr, &reps[1].addr],
        "ci",
        "ci-secret",
    );
    let host = proxy.addr.clone();
    let creds = "ci:ci-secret";

    // Concurrent pushes of different images, then concurrent pulls of all of them.
    const IMAGES: usize = 6;
    let mut layouts = Vec::new();
    for i in 0..IMAGES {
        let src = tmp.path().join(format!("src{i}"));
        let layers = oci_layout(&src, "v1", &[(2 + i) * MIB, 200 * 1024]);
        layouts.push((src, layers));
    }
    let t = Instant::now();
    let pushes = layouts
        .iter()
        .enumerate()
        .map(|(i, (src, _))| {
            let child = spawn(
                skopeo()
                    .args(["copy", "--dest-tls-verify=false", "--dest-creds", creds])
                    .arg(format!("oci:{}:v1", src.display()))
                    .arg(format!("docker://{host}/fleet/img{i}:v1")),
            );
            (format!("push img{i}"), child)
        })
        .collect();
    wait_all(pushes);
    let push_time = t.elapsed();
    let t = Instant::now();
    let pulls = (0..IMAGES)
        .map(|i| {
            let dst = tmp.path().join(format!("back{i}"));
            let child = spawn(
                skopeo()
                    .args(["copy", "--src-tls-verify=false", "--src-creds", creds])
                    .arg(format!("docker://{host}/fleet/img{i}:v1"))
                    .arg(format!("oci:{}:v1", dst.display())),
            );
            (format!("pull img{i}"), child)
        })
        .collect();
    wait_all(pulls);
    eprintln!(
        "{IMAGES} concurrent pushes through the proxy in {push_time:?}, pulls in {:?}",
        t.elapsed()
    );
    for (i, (src, layers)) in layouts.iter().enumerate() {
        let dst = tmp.path().join(format!("back{i}"));
        for d in layers {
            assert_eq!(blob_bytes(&dst, d), blob_bytes(src, d), "img{i} layer {d}");
        }
    }
    for method in ["POST", "PATCH", "PUT", "GET"] {
        let (na, nb) = (served(&log_a, method), served(&log_b, method));
        eprintln!("{method}: replica a served {na}, replica b served {nb}");
        assert!(
            na > 0 && nb > 0,
            "{method} requests not spread: a {na}, b {nb}"
        );
    }

    // Kill the replica that receives the big layer, in the middle; the client's retry goes through the other.
    let src = tmp.path().join("big");
    let layers = oci_layout(&src, "v1", &[48 * MIB]);
    let ports = reps.each_ref().map(|r| port_of(&r.addr));
    let before = ports.map(received_by_connection);
    let mut push = spawn(
        skopeo()
            .args([
                "copy",
                "--retry-times",
                "3",
                "--dest-tls-verify=false",
                "--dest-creds",
                creds,
            ])
            .arg(format!("oci:{}:v1", src.display()))
            .arg(format!("docker://{host}/fleet/big:v1")),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut killed = None;
    while Instant::now() < deadline && killed.is_none() {
        for (i, r) in reps.iter_mut().enumerate() {
            if receiving(ports[i], &before[i], 8 * MIB as u64) {
                r.kill();
                killed = Some(i);
                break;
            }
        }
        if killed.is_none() && push.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if killed.is_none() {
        let out = push.wait_with_output().unwrap();
        panic!(
            "no replica was seen receiving the big layer ({:?} -> {:?}); push: {} {}",
            before,
            ports.map(received_by_connection),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = push.wait_with_output().unwrap();
    if !out.status.success() {
        // skopeo's own retries skip HTTP 5xx answers; the request cut by the kill comes back as the proxy's
        // 502. The client's retry (what `docker push` does for a failed layer, and what a user or CI does
        // with skopeo) starts the layer again, and the proxy sends it to the surviving replica.
        // Depending on timing the client sees the 502, or the proxy closing the connection after answering it
        // while the client was still writing the chunk.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            ["502", "broken pipe", "connection reset"]
                .iter()
                .any(|cut| err.contains(cut)),
            "the cut push failed otherwise: {err}"
        );
        let retry = spawn(
            skopeo()
                .args(["copy", "--dest-tls-verify=false", "--dest-creds", creds])
                .arg(format!("oci:{}:v1", src.display()))
                .arg(format!("docker://{host}/fleet/big:v1")),
        );
        wait_all(vec![("retried push after the kill".into(), retry)]);
    }
    let dst = tmp.path().join("big-back");
    let pull = spawn(
        skopeo()
            .args(["copy", "--src-tls-verify=false", "--src-creds", creds])
            .arg(format!("docker://{host}/fleet/big:v1"))
            .arg(format!("oci:{}:v1", dst.display())),
    );
    wait_all(vec![("pull big".into(), pull)]);
    assert_eq!(blob_bytes(&dst, &layers[0]), blob_bytes(&src, &layers[0]));
    drop(proxy);
    drop(reps);

    // Nothing corrupt: every blob hashes to its name, every link and tag resolves.
    let blobs = check_bucket(&moto, "fleet", "replicated", true).await;
    assert!(blobs > IMAGES * 3, "only {blobs} blobs in the bucket");
}

//! A real S3 endpoint for tests: moto_server started on a free port, stopped by PID when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_registry::storage::s3::{S3Options, S3Storage};
use berth_registry::storage::Storage;
use bytes::Bytes;
use futures_util::TryStreamExt;

use super::sha256;

const MIB: usize = 1024 * 1024;

/// An object read whole.
pub async fn read_all(s: &dyn Storage, key: &str) -> Vec<u8> {
    let chunks: Vec<Bytes> = s
        .read(key, None)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    chunks.concat()
}

/// A running moto_server.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    addr: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// One HTTP/1.1 request with an empty body; returns the status code and the body.
fn raw_request(addr: &str, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Ok((status, body))
}

impl Moto {
    /// Starts moto_server (installed by scripts/install-test-deps.sh; a missing binary fails the test).
    pub fn start() -> Moto {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server must be installed (scripts/install-test-deps.sh: pip install 'moto[server]')");
        let mut m = Moto {
            child,
            endpoint: format!("http://{addr}"),
            addr,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = raw_request(&m.addr, "GET", "/") {
                break;
            }
            if let Ok(Some(status)) = m.child.try_wait() {
                panic!("moto_server exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, name: &str) {
        let (status, body) =
            raw_request(&self.addr, "PUT", &format!("/{name}")).expect("PUT bucket");
        assert_eq!(status, 200, "create bucket {name}: {body}");
    }

    /// Every key in a bucket, sorted (raw listing, no berth code involved).
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!("/{bucket}?list-type=2&max-keys=1000");
            if let Some(t) = &token {
                let q: String = form_urlencoded::byte_serialize(t.as_bytes()).collect();
                path.push_str(&format!("&continuation-token={q}"));
            }
            let (status, body) = raw_request(&self.addr, "GET", &path).expect("list bucket");
            assert_eq!(status, 200, "list {bucket}: {body}");
            for k in body.split("<Key>").skip(1) {
                if let Some((k, _)) = k.split_once("</Key>") {
                    keys.push(k.replace("&amp;", "&"));
                }
            }
            token = body
                .split_once("<NextContinuationToken>")
                .and_then(|(_, r)| r.split_once("</NextContinuationToken>"))
                .map(|(t, _)| t.to_string());
            if token.is_none() {
                break;
            }
        }
        keys.sort();
        keys
    }

    /// berth's S3 storage on `bucket` under `root`.
    pub fn storage(&self, bucket: &str, root: &str, chunk_size: u64) -> Arc<S3Storage> {
        Arc::new(
            S3Storage::new(&S3Options {
                bucket: bucket.into(),
                region: "us-east-1".into(),
                endpoint: Some(self.endpoint.clone()),
                force_path_style: true,
                allow_http: true,
                root_directory: root.into(),
                access_key: Some("berth-test".into()),
                secret_key: Some("berth-test-secret".into()),
                session_token: None,
                chunk_size,
            })
            .expect("S3 storage"),
        )
    }

    /// The environment that points berth-registry (or registry:2) at `bucket` under `root`.
    pub fn registry_env(&self, bucket: &str, root: &str) -> Vec<(String, String)> {
        [
            ("REGISTRY_STORAGE", "s3"),
            ("REGISTRY_STORAGE_S3_BUCKET", bucket),
            ("REGISTRY_STORAGE_S3_REGION", "us-east-1"),
            ("REGISTRY_STORAGE_S3_REGIONENDPOINT", &self.endpoint),
            ("REGISTRY_STORAGE_S3_ACCESSKEY", "berth-test"),
            ("REGISTRY_STORAGE_S3_SECRETKEY", "berth-test-secret"),
            ("REGISTRY_STORAGE_S3_SECURE", "false"),
            ("REGISTRY_STORAGE_S3_ROOTDIRECTORY", root),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks a registry tree in a bucket: every blob's content hashes to its digest, every link names a blob that
/// exists, every tag points at a revision; no upload part or session is left over unless `uploads_allowed` (an
/// abandoned session is legitimate after a crash; its parts must still be contiguous). Returns the blob count.
pub async fn check_bucket(moto: &Moto, bucket: &str, root: &str, uploads_allowed: bool) -> usize {
    let keys = moto.keys(bucket);
    let prefix = if root.is_empty() {
        String::new()
    } else {
        format!("{}/", root.trim_matches('/'))
    };
    let s = moto.storage(bucket, root, 5 * MIB as u64);
    let mut blobs = 0;
    for k in &keys {
        let rel = k
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("key {k} outside the root {root:?}"));
        // The garbage collector's lease and pins live beside the registry tree (docs/gc.md).
        if ["_berth/gc/lease/", "_berth/gc/pins/", "_berth/gc/sweep/"]
            .iter()
            .any(|p| rel.starts_with(p))
        {
            continue;
        }
        assert!(
            rel.starts_with("docker/registry/v2/"),
            "key {k} outside docker/registry/v2"
        );
        if rel.contains("/_uploads/") {
            assert!(uploads_allowed, "upload session left over: {k}");
            if let Some((data, _)) = rel.split_once("!parts/") {
                assert!(
                    s.stat(data).await.unwrap().is_some(),
                    "unreadable session {k}"
                );
            }
            continue;
        }
        assert!(
            !rel.contains("!parts"),
            "upload part outside a session: {k}"
        );
        if let Some(b) = rel.strip_prefix("docker/registry/v2/blobs/") {
            let mut it = b.split('/');
            let (alg, _, hex, file) = (it.next(), it.next(), it.next(), it.next());
            assert_eq!(file, Some("data"), "unexpected blob key {k}");
            let d = format!("{}:{}", alg.unwrap_or(""), hex.unwrap_or(""));
            assert_eq!(
                sha256(&read_all(s.as_ref(), rel).await),
                d,
                "corrupt blob {k}"
            );
            blobs += 1;
        } else if rel.ends_with("/link") {
            let link = String::from_utf8(s.read_small(rel, 1024).await.unwrap().to_vec()).unwrap();
            let hex = &link["sha256:".len()..];
            let blob = format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]);
            assert!(
                s.stat(&blob).await.unwrap().is_some(),
                "{k} links to missing {link}"
            );
            if rel.ends_with("/current/link") {
                let repo = rel
                    .strip_prefix("docker/registry/v2/repositories/")
                    .and_then(|r| r.split("/_manifests/").next())
                    .unwrap();
                let rev = format!(
                    "docker/registry/v2/repositories/{repo}/_manifests/revisions/sha256/{hex}/link"
                );
                assert!(
                    s.stat(&rev).await.unwrap().is_some(),
                    "tag {k} points at a missing revision"
                );
            }
        }
    }
    blobs
}

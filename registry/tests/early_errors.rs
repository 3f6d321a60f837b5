//! The registry's own early errors reach a client that talks to it directly and writes its whole request
//! before reading (no reset destroys them; within the discard bound the connection serves the next request),
//! answers to HEAD never carry a body, and a reference that is neither a tag nor a digest is "manifest unknown".

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{full, Registry};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: u64 = 1024 * 1024;

/// One response read off a raw connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body));
        v["errors"][0]["code"].as_str().unwrap_or("").to_string()
    }
}

/// A plain HTTP/1.1 client that writes a whole request, body included, before reading its answer.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(r: &Registry) -> Raw {
        Raw {
            tcp: TcpStream::connect(&r.addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, head: &str, body_len: u64) -> std::io::Result<()> {
        self.tcp.write_all(head.as_bytes()).await?;
        self.tcp.write_all(b"\r\n").await?;
        let chunk = vec![0x5au8; 64 * 1024];
        let mut left = body_len;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            self.tcp.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        self.tcp.flush().await
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.tcp.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next answer (no body read for a HEAD); an error when the connection ends or fails first.
    async fn answer(&mut self, head: bool) -> Answer {
        tokio::time::timeout(Duration::from_secs(60), async {
            let end = loop {
                if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i;
                }
                assert!(
                    self.fill().await.expect("connection failed (reset?)") > 0,
                    "connection ended before the answer"
                );
            };
            let text = String::from_utf8_lossy(&self.buf[..end]).to_string();
            self.buf.drain(..end + 4);
            let mut lines = text.split("\r\n");
            let status = lines
                .next()
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no status line: {text:?}"));
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let len: usize = if head {
                0
            } else {
                headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .map(|(_, v)| v.parse().unwrap())
                    .unwrap_or(0)
            };
            while self.buf.len() < len {
                assert!(
                    self.fill().await.expect("connection failed mid-body") > 0,
                    "connection ended mid-body"
                );
            }
            let body = self.buf.drain(..len).collect();
            Answer {
                status,
                headers,
                body,
            }
        })
        .await
        .expect("no answer within 60 s")
    }

    /// True when the registry ended the connection within `limit`.
    async fn closed_within(&mut self, limit: Duration) -> bool {
        matches!(
            tokio::time::timeout(limit, self.fill()).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

fn put(target: &str, len: u64) -> String {
    format!(
        "PUT {target} HTTP/1.1\r\nHost: registry.test\r\nContent-Length: {len}\r\n\
         Content-Type: application/octet-stream\r\n"
    )
}

/// After an early error on a body within the discard bound, the same connection serves the next request;
/// past it, the answer is still whole and the connection then ends.
async fn then_next_request(raw: &mut Raw, len: u64) {
    if len <= 8 * MIB {
        raw.send("GET /v2/ HTTP/1.1\r\nHost: registry.test\r\n", 0)
            .await
            .unwrap();
        assert_eq!(raw.answer(false).await.status, 200);
    } else {
        assert!(raw.closed_within(Duration::from_secs(40)).await);
    }
}

#[tokio::test]
async fn early_errors_reach_a_client_that_sends_its_whole_body_first() {
    let r = Registry::start(&[]);
    for len in [2, 3 * MIB, 64 * MIB] {
        // 404: an upload session that does not exist.
        let mut raw = Raw::connect(&r).await;
        let target = "/v2/early/blobs/uploads/2b7e1516-28ae-4d2a-a6f0-7f2c9d1a3b4c?digest=sha256:\
                      0000000000000000000000000000000000000000000000000000000000000000";
        raw.send(&put(target, len), len).await.unwrap();
        let a = raw.answer(false).await;
        assert_eq!(a.status, 404, "{len}: {a:?}");
        assert_eq!(a.code(), "BLOB_UPLOAD_UNKNOWN");
        then_next_request(&mut raw, len).await;

        // 400: a digest that is not one.
        let start = r.post("/v2/early/blobs/uploads/").await;
        let loc = start.header("location").unwrap().to_string();
        let path = &loc[loc.find("/v2/").unwrap()..];
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut raw = Raw::connect(&r).await;
        raw.send(&put(&format!("{path}{sep}digest=sha256:nothex"), len), len)
            .await
            .unwrap();
        let a = raw.answer(false).await;
        assert_eq!(a.status, 400, "{len}: {a:?}");
        assert_eq!(a.code(), "DIGEST_INVALID");
        then_next_request(&mut raw, len).await;

        // 405: deletes are disabled (a DELETE with a body, as odd clients send).
        let mut raw = Raw::connect(&r).await;
        raw.send(
            &format!(
                "DELETE /v2/early/manifests/sha256:{} HTTP/1.1\r\nHost: registry.test\r\n\
                 Content-Length: {len}\r\n",
                "1".repeat(64)
            ),
            len,
        )
        .await
        .unwrap();
        let a = raw.answer(false).await;
        assert_eq!(a.status, 405, "{len}: {a:?}");
        assert_eq!(a.code(), "UNSUPPORTED");
        then_next_request(&mut raw, len).await;
    }
    // 413: a manifest declared far past the limit is refused before its body is read.
    let mut raw = Raw::connect(&r).await;
    let len = 64 * MIB;
    raw.send(
        &format!(
            "PUT /v2/early/manifests/big HTTP/1.1\r\nHost: registry.test\r\nContent-Length: {len}\r\n\
             Content-Type: application/vnd.oci.image.manifest.v1+json\r\n"
        ),
        len,
    )
    .await
    .unwrap();
    let a = raw.answer(false).await;
    assert_eq!(a.status, 413, "{a:?}");
    assert_eq!(a.code(), "SIZE_INVALID");
    then_next_request(&mut raw, len).await;
}

#[tokio::test]
async fn no_answer_to_head_has_a_body() {
    let r = Registry::start(&[("REGISTRY_STORAGE_DELETE_ENABLED", "true")]);
    let (manifest_digest, _) = r.push_image("heads/app", "1", &[b"layer one"]).await;
    let blob = r.push_blob("heads/app", b"a blob").await;
    let start = r.post("/v2/heads/app/blobs/uploads/").await;
    let loc = start.header("location").unwrap().to_string();
    let upload = loc[loc.find("/v2/").unwrap()..].to_string();
    let paths = [
        "/v2/".to_string(),
        "/v2/_catalog".into(),
        "/v2/_catalog?n=1".into(),
        "/v2/heads/app/tags/list".into(),
        "/v2/heads/app/manifests/1".into(),
        format!("/v2/heads/app/manifests/{manifest_digest}"),
        "/v2/heads/app/manifests/missing".into(),
        "/v2/heads/app/manifests/.INVALID_MANIFEST_NAME".into(),
        "/v2/nowhere/manifests/1".into(),
        format!("/v2/heads/app/blobs/{blob}"),
        format!("/v2/heads/app/blobs/sha256:{}", "0".repeat(64)),
        upload,
        format!("/v2/heads/app/referrers/{manifest_digest}"),
        "/v1/_ping".into(),
        "/v1/search?q=app".into(),
        "/v2/Bad_Name/tags/list".into(),
        "/nowhere".into(),
    ];
    let mut raw = Raw::connect(&r).await;
    for p in &paths {
        raw.send(&format!("GET {p} HTTP/1.1\r\nHost: registry.test\r\n"), 0)
            .await
            .unwrap();
        let get = raw.answer(false).await;
        raw.send(&format!("HEAD {p} HTTP/1.1\r\nHost: registry.test\r\n"), 0)
            .await
            .unwrap();
        let head = raw.answer(true).await;
        assert_eq!(head.status, get.status, "HEAD {p}");
        assert_eq!(
            head.header("content-length"),
            Some(get.body.len().to_string().as_str()),
            "HEAD {p}"
        );
    }
    // Any body bytes after a HEAD's headers would have been read as this answer's status line.
    raw.send("GET /v2/ HTTP/1.1\r\nHost: registry.test\r\n", 0)
        .await
        .unwrap();
    assert_eq!(raw.answer(false).await.status, 200);
}

#[tokio::test]
async fn a_reference_that_is_neither_tag_nor_digest_is_manifest_unknown() {
    let r = Registry::start(&[]);
    r.push_image("refs/app", "1", &[b"layer"]).await;
    for bad in [
        ".INVALID_MANIFEST_NAME",
        "-lead",
        &"t".repeat(129),
        "sha256:nothex",
    ] {
        let path = format!("/v2/refs/app/manifests/{bad}");
        let get = r.get(&path).await;
        assert_eq!(get.status, StatusCode::NOT_FOUND, "GET {bad}");
        assert_eq!(get.code(), "MANIFEST_UNKNOWN", "GET {bad}");
        assert_eq!(
            r.head(&path).await.status,
            StatusCode::NOT_FOUND,
            "HEAD {bad}"
        );
    }
    // A PUT with an invalid tag is still a 400.
    let put = r
        .send(
            Method::PUT,
            "/v2/refs/app/manifests/.INVALID_MANIFEST_NAME",
            &[("content-type", "application/vnd.oci.image.manifest.v1+json")],
            full(Bytes::from_static(b"{}")),
        )
        .await;
    assert_eq!(put.status, StatusCode::BAD_REQUEST);
    assert_eq!(put.code(), "TAG_INVALID");
}

/// Upload sessions left in the repository's `_uploads` folder.
fn sessions(r: &Registry, repo: &str) -> Vec<String> {
    let dir = r
        .root
        .join("docker/registry/v2/repositories")
        .join(repo)
        .join("_uploads");
    match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn a_single_request_upload_cut_halfway_leaves_nothing_behind() {
    let r = Registry::start(&[]);
    let len = 10 * MIB;
    let mut raw = Raw::connect(&r).await;
    raw.tcp
        .write_all(
            format!(
                "POST /v2/cut/blobs/uploads/?digest=sha256:{} HTTP/1.1\r\nHost: registry.test\r\n\
                 Content-Length: {len}\r\n\r\n",
                "2".repeat(64)
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    raw.tcp
        .write_all(&vec![7u8; 3 * MIB as usize])
        .await
        .unwrap();
    raw.tcp.flush().await.unwrap();
    // The session exists while the body arrives.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sessions(&r, "cut").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no session was started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The client goes away halfway: the session and its data are removed.
    drop(raw);
    while !sessions(&r, "cut").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the cut upload's session stayed: {:?}",
            sessions(&r, "cut")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A complete one with the wrong digest leaves nothing either.
    let data = vec![9u8; 1000];
    let resp = r
        .send(
            Method::POST,
            &format!("/v2/cut/blobs/uploads/?digest=sha256:{}", "3".repeat(64)),
            &[("content-length", "1000")],
            full(Bytes::from(data)),
        )
        .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert!(sessions(&r, "cut").is_empty(), "{:?}", sessions(&r, "cut"));
}

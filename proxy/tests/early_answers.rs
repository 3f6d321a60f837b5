//! Answers the proxy gives on its own while a request body is unread (401, the user-agent 404, 413) reach the
//! client whole, over HTTP/1.1 (the body thrown away and the connection kept, or `Connection: close` and a
//! lingering close) and HTTP/2 (the stream ended, the connection kept); the client's retry then lands in the
//! real berth-registry. And no answer to a HEAD carries a body.

mod common;

use std::time::Duration;

use common::*;
use http_body_util::BodyExt;

const MIB: u64 = 1024 * 1024;

/// Over the proxy's default `discard_body_max_bytes` (8 MiB): such a body is not thrown away in full.
const BIG: u64 = 64 * MIB;

/// Starts an upload in the real registry through the proxy (with credentials); returns the path and query
/// of its `Location`.
async fn start_upload(proxy: &Proxy, repo: &str) -> String {
    let mut c = proxy.client().await;
    let req = c
        .request("POST", &format!("/v2/{repo}/blobs/uploads/"))
        .header("authorization", basic("alice", "alice-pw"))
        .header("user-agent", UA)
        .body(empty())
        .unwrap();
    let (parts, body) = c.send(req).await;
    assert_eq!(parts.status, 202, "{body:?}");
    let loc = parts.headers["location"].to_str().unwrap();
    loc[loc.find("/v2/").unwrap()..].to_string()
}

fn with_digest(path: &str, size: u64) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}digest=sha256:{}", pattern_sha256(size))
}

fn head(method: &str, target: &str, host: &str, extra: &[String]) -> String {
    let mut h = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    for line in extra {
        h.push_str(line);
        h.push_str("\r\n");
    }
    h
}

fn host(proxy: &Proxy) -> String {
    format!("localhost:{}", proxy.addr.port())
}

fn assert_unauthorized(resp: &RawResponse) {
    assert_eq!(resp.status, 401, "{resp:?}");
    assert_eq!(
        resp.header("www-authenticate"),
        Some("Basic realm=\"test-realm\"")
    );
    assert_eq!(
        resp.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    assert_eq!(resp.code(), "UNAUTHORIZED");
}

/// Reads the answer to a request whose body was written in full first, as simple clients do.
async fn answer(conn: &mut RawTls) -> RawResponse {
    tokio::time::timeout(Duration::from_secs(60), conn.read_response(false))
        .await
        .expect("no answer within 60 s")
        .expect("the connection failed before the answer was read (reset?)")
        .expect("the connection ended before a complete answer")
}

/// A connection for the retry: the same one when the server kept it, a new one when it said it closes.
async fn next_conn(proxy: &Proxy, conn: RawTls, closes: bool) -> RawTls {
    if closes {
        let mut conn = conn;
        assert!(
            conn.closed_within(Duration::from_secs(30)).await,
            "the proxy said Connection: close but kept the connection"
        );
        RawTls::tls(proxy.addr, &proxy.ca).await
    } else {
        conn
    }
}

#[tokio::test]
async fn a_monolithic_put_without_credentials_gets_the_whole_401_and_the_retry_lands() {
    let registry = RealRegistry::start();
    let proxy = Proxy::start(vec![registry.url()], |_| {}).await;
    for size in [0, 2, 3 * MIB, BIG] {
        let target = with_digest(&start_upload(&proxy, "early/put").await, size);
        let mut conn = RawTls::tls(proxy.addr, &proxy.ca).await;
        let request = |auth: bool| {
            let mut extra = vec![
                format!("Content-Length: {size}"),
                "Content-Type: application/octet-stream".to_string(),
                format!("User-Agent: {UA}"),
            ];
            if auth {
                extra.push(format!("Authorization: {}", basic("alice", "alice-pw")));
            }
            head("PUT", &target, &host(&proxy), &extra)
        };
        conn.write_request(&request(false), size, false)
            .await
            .unwrap();
        let resp = answer(&mut conn).await;
        assert_unauthorized(&resp);
        // Bodies up to the discard bound are thrown away and the connection serves the retry; a body declared
        // larger gets Connection: close (and the proxy lingers so the answer is not reset away).
        assert_eq!(resp.closes(), size > 8 * MIB, "size {size}");
        let mut conn = next_conn(&proxy, conn, resp.closes()).await;
        conn.write_request(&request(true), size, false)
            .await
            .unwrap();
        let resp = answer(&mut conn).await;
        assert_eq!(resp.status, 201, "size {size}: {resp:?}");
        assert_eq!(
            resp.header("docker-content-digest"),
            Some(format!("sha256:{}", pattern_sha256(size)).as_str())
        );
    }
}

#[tokio::test]
async fn a_chunked_patch_without_credentials_gets_the_whole_401_and_the_retry_lands() {
    let registry = RealRegistry::start();
    let proxy = Proxy::start(vec![registry.url()], |_| {}).await;
    for size in [3 * MIB, BIG] {
        let target = start_upload(&proxy, "early/patch").await;
        let mut conn = RawTls::tls(proxy.addr, &proxy.ca).await;
        let request = |auth: bool| {
            let mut extra = vec![
                "Transfer-Encoding: chunked".to_string(),
                format!("User-Agent: {UA}"),
            ];
            if auth {
                extra.push(format!("Authorization: {}", basic("alice", "alice-pw")));
            }
            head("PATCH", &target, &host(&proxy), &extra)
        };
        conn.write_request(&request(false), size, true)
            .await
            .unwrap();
        let resp = answer(&mut conn).await;
        assert_unauthorized(&resp);
        // Its length unknown in advance, the body is thrown away up to the bound: within it the connection
        // stays; past it the connection ends after the (complete) answer.
        let mut conn = if size <= 8 * MIB {
            assert!(!resp.closes());
            conn
        } else {
            next_conn(&proxy, conn, true).await
        };
        conn.write_request(&request(true), size, true)
            .await
            .unwrap();
        let resp = answer(&mut conn).await;
        assert_eq!(resp.status, 202, "size {size}: {resp:?}");
        assert_eq!(
            resp.header("range"),
            Some(format!("0-{}", size - 1).as_str())
        );
    }
}

#[tokio::test]
async fn expect_continue_gets_the_401_instead_of_100_and_no_body_is_read() {
    let registry = RealRegistry::start();
    let proxy = Proxy::start(vec![registry.url()], |_| {}).await;
    let size = 3 * MIB;
    let target = with_digest(&start_upload(&proxy, "early/expect").await, size);
    let request = |auth: bool| {
        let mut extra = vec![
            format!("Content-Length: {size}"),
            "Expect: 100-continue".to_string(),
            format!("User-Agent: {UA}"),
        ];
        if auth {
            extra.push(format!("Authorization: {}", basic("alice", "alice-pw")));
        }
        head("PUT", &target, &host(&proxy), &extra)
    };
    let mut conn = RawTls::tls(proxy.addr, &proxy.ca).await;
    conn.write_request(&request(false), 0, false).await.unwrap();
    let resp = answer(&mut conn).await;
    assert_unauthorized(&resp);
    assert!(resp.closes(), "{resp:?}");
    let mut conn = next_conn(&proxy, conn, true).await;
    conn.write_request(&request(true), 0, false).await.unwrap();
    let resp = answer(&mut conn).await;
    assert_eq!(resp.status, 100, "{resp:?}");
    conn.write_body(size, false).await.unwrap();
    let resp = answer(&mut conn).await;
    assert_eq!(resp.status, 201, "{resp:?}");
}

#[tokio::test]
async fn a_refused_user_agent_and_a_too_large_body_get_their_whole_answer() {
    let registry = RealRegistry::start();
    let proxy = Proxy::start(vec![registry.url()], |c| c.max_body_size = MIB).await;
    for size in [3 * MIB, BIG] {
        let target = "/v2/early/ua/blobs/uploads/x?digest=sha256:00";
        let mut conn = RawTls::tls(proxy.addr, &proxy.ca).await;
        let old_client = head(
            "PUT",
            target,
            &host(&proxy),
            &[
                format!("Content-Length: {size}"),
                "User-Agent: docker/1.4.1 go/go1.3.3".to_string(),
                format!("Authorization: {}", basic("alice", "alice-pw")),
            ],
        );
        conn.write_request(&old_client, size, false).await.unwrap();
        let resp = answer(&mut conn).await;
        assert_eq!(resp.status, 404, "{resp:?}");
        assert_eq!(resp.code(), "UNSUPPORTED");
        assert_eq!(resp.closes(), size > 8 * MIB);
        let mut conn = next_conn(&proxy, conn, resp.closes()).await;
        let too_large = head(
            "PUT",
            target,
            &host(&proxy),
            &[
                format!("Content-Length: {size}"),
                format!("User-Agent: {UA}"),
                format!("Authorization: {}", basic("alice", "alice-pw")),
            ],
        );
        conn.write_request(&too_large, size, false).await.unwrap();
        let resp = answer(&mut conn).await;
        assert_eq!(resp.status, 413, "{resp:?}");
        assert_eq!(resp.code(), "SIZE_INVALID");
        assert_eq!(resp.closes(), size > 8 * MIB);
        let mut conn = next_conn(&proxy, conn, resp.closes()).await;
        conn.write_request(
            &head(
                "GET",
                "/v2/",
                &host(&proxy),
                &[format!("Authorization: {}", basic("alice", "alice-pw"))],
            ),
            0,
            false,
        )
        .await
        .unwrap();
        assert_eq!(answer(&mut conn).await.status, 200);
    }
}

#[tokio::test]
async fn http2_ends_the_stream_and_keeps_the_connection_for_the_retry() {
    let registry = RealRegistry::start();
    let proxy = Proxy::start(vec![registry.url()], |_| {}).await;
    let (mut send, _conn) = h2_client(&proxy).await;
    for size in [2, 3 * MIB, BIG] {
        let target = with_digest(&start_upload(&proxy, "early/h2").await, size);
        let uri = format!("https://localhost:{}{target}", proxy.addr.port());
        for auth in [false, true] {
            let mut b = http::Request::builder()
                .method("PUT")
                .uri(&uri)
                .header("user-agent", UA)
                .header("content-length", size);
            if auth {
                b = b.header("authorization", basic("alice", "alice-pw"));
            }
            send.ready().await.unwrap();
            let resp = send
                .send_request(b.body(pattern_body(size)).unwrap())
                .await
                .unwrap();
            let status = resp.status();
            let www = resp.headers().get("www-authenticate").cloned();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            if auth {
                assert_eq!(status, 201, "size {size}: {body:?}");
            } else {
                assert_eq!(status, 401, "size {size}");
                assert_eq!(www.unwrap(), "Basic realm=\"test-realm\"");
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["errors"][0]["code"], "UNAUTHORIZED");
            }
        }
    }
}

/// Sends an unauthenticated chunked PATCH whose body never ends: a chunk of `chunk` bytes every `every`, or
/// after the first chunk nothing at all (`every` = None). Returns when the proxy has cut the connection, with how
/// long that took after the 401 arrived.
async fn endless_body(proxy: &Proxy, chunk: usize, every: Option<Duration>) -> Duration {
    let tls = tls_connect(
        proxy.addr,
        client_config(&proxy.ca, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    let (rd, mut wr) = tokio::io::split(tls);
    let request = head(
        "PATCH",
        "/v2/endless/blobs/uploads/1",
        &host(proxy),
        &[
            "Transfer-Encoding: chunked".to_string(),
            format!("User-Agent: {UA}"),
        ],
    );
    // A client that keeps sending (bounded: at most two minutes) until a write fails, or sends one chunk and
    // then waits.
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        wr.write_all(format!("{request}\r\n").as_bytes()).await?;
        let data = vec![7u8; chunk];
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(120) {
            wr.write_all(format!("{chunk:x}\r\n").as_bytes()).await?;
            wr.write_all(&data).await?;
            wr.write_all(b"\r\n").await?;
            wr.flush().await?;
            match every {
                Some(d) => tokio::time::sleep(d).await,
                None => tokio::time::sleep(Duration::from_secs(120)).await,
            }
        }
        Ok::<(), std::io::Error>(())
    });
    let mut reader = RawConn::new(rd);
    let resp = tokio::time::timeout(Duration::from_secs(30), reader.read_response(false))
        .await
        .expect("no answer")
        .expect("connection failed before the answer")
        .expect("connection ended before the answer");
    assert_unauthorized(&resp);
    let answered = std::time::Instant::now();
    assert!(reader.closed_within(Duration::from_secs(30)).await);
    let took = answered.elapsed();
    if every.is_some() {
        let written = tokio::time::timeout(Duration::from_secs(30), writer)
            .await
            .expect("the client could go on writing")
            .unwrap();
        assert!(written.is_err(), "the endless body was accepted to its end");
    } else {
        writer.abort();
    }
    took
}

#[tokio::test]
async fn a_body_that_never_ends_is_cut_within_the_bounds_and_the_proxy_stays_healthy() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![up.url()], |c| {
        c.lingering_time_secs = 3;
        c.lingering_timeout_secs = 1;
        // One connection at a time: a connection that kept its slot after being cut would block the next.
        c.max_connections = 1;
    })
    .await;
    // A trickle (1 KiB every 20 ms, far below the 8 MiB discard bound): thrown away until lingering_time
    // (3 s), then the connection is cut.
    let took = endless_body(&proxy, 1024, Some(Duration::from_millis(20))).await;
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "a trickling body was cut after {took:?}, not after lingering_time (3 s)"
    );
    // A client that stops sending mid-body: cut after lingering_timeout (1 s).
    let took = endless_body(&proxy, 1024, None).await;
    assert!(
        took < Duration::from_secs(2),
        "a stalled body was cut after {took:?}, not after lingering_timeout (1 s)"
    );
    // Both connections gave their slot back: the only one is free for the next client.
    let mut c = tokio::time::timeout(Duration::from_secs(30), proxy.client())
        .await
        .expect("the connection slot was not given back");
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(30), c.get("/_berth/health", None, UA))
            .await
            .expect("the connection slot was not given back")
            .0
            .status,
        200
    );
    assert_eq!(up.count(), 0);
}

/// Every kind of route, as (path, whether it needs credentials at the proxy).
fn routes(blob: &str, upload: &str) -> Vec<String> {
    vec![
        "/v2/".into(),
        "/v2/_catalog".into(),
        "/v2/heads/app/tags/list".into(),
        "/v2/heads/app/manifests/1".into(),
        "/v2/heads/app/manifests/missing".into(),
        "/v2/heads/app/manifests/.INVALID_MANIFEST_NAME".into(),
        format!("/v2/heads/app/blobs/{blob}"),
        "/v2/heads/app/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000"
            .into(),
        upload.into(),
        format!("/v2/heads/app/referrers/{blob}"),
        "/v1/search?q=app".into(),
        "/_ping".into(),
        "/v1/_ping".into(),
        "/_berth/health".into(),
        "/nowhere".into(),
    ]
}

/// Pushes a tiny image to the real registry through the proxy: returns a blob digest and an upload path.
async fn seed(proxy: &Proxy) -> (String, String) {
    let mut c = proxy.client().await;
    let auth = basic("alice", "alice-pw");
    let config = b"{}".to_vec();
    let d = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&config))
    );
    let put = with_digest_of(&start_upload(proxy, "heads/app").await, &d);
    let req = c
        .request("PUT", &put)
        .header("authorization", &auth)
        .header("user-agent", UA)
        .body(full(config.clone()))
        .unwrap();
    assert_eq!(c.send(req).await.0.status, 201);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d, "size": config.len()},
        "layers": []
    })
    .to_string();
    let req = c
        .request("PUT", "/v2/heads/app/manifests/1")
        .header("authorization", &auth)
        .header("user-agent", UA)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(full(manifest))
        .unwrap();
    assert_eq!(c.send(req).await.0.status, 201);
    (d, start_upload(proxy, "heads/app").await)
}

fn with_digest_of(path: &str, d: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}digest={d}")
}

#[tokio::test]
async fn no_answer_to_head_has_a_body_over_http1() {
    let registry = RealRegistry::start();
    let proxy = Proxy::start(vec![registry.url()], |_| {}).await;
    let (blob, upload) = seed(&proxy).await;
    let mut conn = RawTls::tls(proxy.addr, &proxy.ca).await;
    for path in routes(&blob, &upload) {
        for auth in [false, true] {
            let mut extra = vec![format!("User-Agent: {UA}")];
            if auth {
                extra.push(format!("Authorization: {}", basic("alice", "alice-pw")));
            }
            conn.write_request(&head("GET", &path, &host(&proxy), &extra), 0, false)
                .await
                .unwrap();
            let get = answer(&mut conn).await;
            conn.write_request(&head("HEAD", &path, &host(&proxy), &extra), 0, false)
                .await
                .unwrap();
            let got = tokio::time::timeout(Duration::from_secs(30), conn.read_response(true))
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(got.status, get.status, "HEAD {path} (auth {auth})");
            assert_eq!(
                got.header("content-length"),
                Some(get.body.len().to_string().as_str()),
                "HEAD {path} (auth {auth})"
            );
            // A body after the HEAD's headers would be read as the next answer's status line here.
        }
    }
    conn.write_request(&head("GET", "/_berth/health", &host(&proxy), &[]), 0, false)
        .await
        .unwrap();
    assert_eq!(answer(&mut conn).await.status, 200);
}

#[tokio::test]
async fn no_answer_to_head_has_a_body_over_http2() {
    let registry = RealRegistry::start();
    let proxy = Proxy::start(vec![registry.url()], |_| {}).await;
    let (blob, upload) = seed(&proxy).await;
    let (mut send, _conn) = h2_client(&proxy).await;
    for path in routes(&blob, &upload) {
        for auth in [false, true] {
            let mut answers = Vec::new();
            for method in ["GET", "HEAD"] {
                let mut b = http::Request::builder()
                    .method(method)
                    .uri(format!("https://localhost:{}{path}", proxy.addr.port()))
                    .header("user-agent", UA);
                if auth {
                    b = b.header("authorization", basic("alice", "alice-pw"));
                }
                send.ready().await.unwrap();
                let resp = send.send_request(b.body(empty()).unwrap()).await.unwrap();
                // The stream of a HEAD answer ends with its HEADERS frame: no DATA frame follows.
                let ended_with_headers = http_body::Body::is_end_stream(resp.body());
                let (parts, body) = resp.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                answers.push((parts, body, ended_with_headers));
            }
            let (get, get_body, _) = &answers[0];
            let (head, head_body, ended) = &answers[1];
            assert_eq!(head.status, get.status, "HEAD {path} (auth {auth})");
            assert!(*ended, "HEAD {path} (auth {auth}): DATA after the headers");
            assert!(head_body.is_empty(), "HEAD {path} (auth {auth})");
            assert_eq!(
                head.headers
                    .get("content-length")
                    .map(|v| v.to_str().unwrap().to_string()),
                Some(get_body.len().to_string()),
                "HEAD {path} (auth {auth})"
            );
        }
    }
}

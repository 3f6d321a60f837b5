//! The proxy in-process over real TLS against a recording upstream.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn api_version_once(h: &http::HeaderMap) {
    let values: Vec<_> = h
        .get_all("docker-distribution-api-version")
        .iter()
        .collect();
    assert_eq!(values.len(), 1, "{values:?}");
    assert_eq!(values[0], "registry/2.0");
}

#[tokio::test]
async fn tls_is_verified_against_the_dev_ca() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![up.url()], |_| {}).await;
    // Trusting devdockerCA.crt, by name and by IP.
    tls_connect(proxy.addr, client_config(&proxy.ca, &[]), "localhost")
        .await
        .unwrap();
    tls_connect(proxy.addr, client_config(&proxy.ca, &[]), "127.0.0.1")
        .await
        .unwrap();
    // A name not in the certificate is refused.
    assert!(
        tls_connect(proxy.addr, client_config(&proxy.ca, &[]), "other.example")
            .await
            .is_err()
    );
    // A client trusting another CA is refused.
    let other = tempfile::tempdir().unwrap();
    berth_proxy::ca::init(
        other.path(),
        &["localhost".into()],
        berth_proxy::ca::KeyType::EcdsaP256,
        false,
    )
    .unwrap();
    let err = tls_connect(
        proxy.addr,
        client_config(&other.path().join("devdockerCA.crt"), &[]),
        "localhost",
    )
    .await;
    assert!(err.is_err());
    // ALPN: h2 is offered.
    let tls = tls_connect(
        proxy.addr,
        client_config(&proxy.ca, &[b"h2", b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn missing_or_wrong_credentials_get_401_with_challenge() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![up.url()], |_| {}).await;
    let mut c = proxy.client().await;
    for auth in [None, Some(("alice", "wrong")), Some(("nobody", "alice-pw"))] {
        let (parts, body) = c.get("/v2/", auth, UA).await;
        assert_eq!(parts.status, 401);
        assert_eq!(
            parts.headers["www-authenticate"],
            "Basic realm=\"test-realm\""
        );
        api_version_once(&parts.headers);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]})
        );
    }
    let (parts, _) = c.get("/v2/", Some(("alice", "alice-pw")), UA).await;
    assert_eq!(parts.status, 200);
    api_version_once(&parts.headers);
    assert_eq!(
        up.count(),
        1,
        "nothing unauthenticated reached the upstream"
    );
}

/// Readiness follows the registry behind the proxy: 200 while a replica answers, 503 naming what each did when
/// none does (the proxy itself stays live).
#[tokio::test]
async fn readiness_follows_the_upstreams() {
    let registry = RealRegistry::start();
    let dead = dead_port().await;
    let proxy = Proxy::start(vec![format!("http://{dead}"), registry.url()], |c| {
        c.connect_timeout_secs = 2
    })
    .await;
    let mut c = proxy.client().await;
    let (parts, body) = c.get("/_berth/ready", None, UA).await;
    assert_eq!(parts.status, 200, "{body:?}");
    assert_eq!(&body[..], br#"{"status":"ready"}"#);
    api_version_once(&parts.headers);
    drop(registry);
    let (parts, body) = c.get("/_berth/ready", None, UA).await;
    assert_eq!(parts.status, 503, "{body:?}");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["status"], "unavailable");
    assert!(
        v["upstreams"].as_str().unwrap().contains(&dead.to_string()),
        "{v}"
    );
    let (parts, _) = c.get("/_berth/health", None, UA).await;
    assert_eq!(
        parts.status, 200,
        "liveness does not depend on the upstreams"
    );
}

#[tokio::test]
async fn pings_and_health_need_no_credentials() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![up.url()], |_| {}).await;
    let mut c = proxy.client().await;
    for p in ["/_ping", "/v1/_ping"] {
        let (parts, _) = c.get(p, None, UA).await;
        assert_eq!(parts.status, 200, "{p}");
        api_version_once(&parts.headers);
        assert_eq!(up.last().uri.path(), p);
    }
    let (parts, body) = c.get("/_berth/health", None, UA).await;
    assert_eq!(parts.status, 200);
    assert_eq!(&body[..], br#"{"status":"ok"}"#);
    let (parts, _) = c.get("/", None, UA).await;
    assert_eq!(parts.status, 404);
    api_version_once(&parts.headers);
    assert_eq!(up.count(), 2);
    // Only reads bypass authentication.
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let req = c.request(method, "/_ping").body(full("x")).unwrap();
        assert_eq!(c.send(req).await.0.status, 401, "{method} /_ping");
    }
    let req = c.request("HEAD", "/v1/_ping").body(empty()).unwrap();
    assert_eq!(c.send(req).await.0.status, 200);
    assert_eq!(up.count(), 3);
    let req = c
        .request("POST", "/_ping")
        .header("authorization", basic("alice", "alice-pw"))
        .body(full("x"))
        .unwrap();
    assert_eq!(c.send(req).await.0.status, 200);
    assert_eq!(up.count(), 4);
    let local = Proxy::start(vec![up.url()], |c| c.ping_local = true).await;
    let mut c = local.client().await;
    assert_eq!(c.get("/_ping", None, UA).await.0.status, 200);
    assert_eq!(up.count(), 4);
}

#[tokio::test]
async fn headers_are_rewritten_for_the_upstream() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![up.url()], |_| {}).await;
    let mut c = proxy.client().await;
    let req = c
        .request("GET", "/v2/library/alpine/manifests/3.20?x=1")
        .header("user-agent", UA)
        .header("authorization", basic("alice", "alice-pw"))
        .header("x-forwarded-user", "root")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("connection", "x-drop-me")
        .header("x-drop-me", "1")
        .body(empty())
        .unwrap();
    let (parts, _) = c.send(req).await;
    assert_eq!(parts.status, 200);
    api_version_once(&parts.headers);
    assert!(
        !parts.headers.contains_key("connection") || parts.headers["connection"] != "keep-alive"
    );
    let seen = up.last();
    assert_eq!(
        seen.uri.path_and_query().unwrap().as_str(),
        "/v2/library/alpine/manifests/3.20?x=1"
    );
    let h = &seen.headers;
    assert_eq!(h["host"], format!("localhost:{}", proxy.addr.port()));
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-user"], "alice");
    assert_eq!(h.get_all("x-forwarded-user").iter().count(), 1);
    assert!(!h.contains_key("authorization"));
    assert!(!h.contains_key("x-drop-me"));
    assert_eq!(h["user-agent"], UA);

    // Trusted front proxy: its X-Forwarded-* are kept and appended to; Authorization passed through on request.
    let proxy = Proxy::start(vec![up.url()], |c| {
        c.trusted_proxies = vec!["127.0.0.0/8".into()];
        c.pass_authorization = true;
    })
    .await;
    let mut c = proxy.client().await;
    let req = c
        .request("GET", "/v2/")
        .header("authorization", basic("alice", "alice-pw"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-real-ip", "203.0.113.9")
        .body(empty())
        .unwrap();
    assert_eq!(c.send(req).await.0.status, 200);
    let h = up.last().headers;
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-real-ip"], "203.0.113.9");
    assert_eq!(h["authorization"], basic("alice", "alice-pw"));
}

#[tokio::test]
async fn http2_uses_the_authority_as_host() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![up.url()], |_| {}).await;
    let (mut send, _conn) = h2_client(&proxy).await;
    let uri = format!("https://localhost:{}/v2/", proxy.addr.port());
    let req = http::Request::builder()
        .uri(uri)
        .header("authorization", basic("alice", "alice-pw"))
        .body(empty())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    api_version_once(resp.headers());
    assert_eq!(
        up.last().headers["host"],
        format!("localhost:{}", proxy.addr.port())
    );
}

#[tokio::test]
async fn user_agent_rules() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![up.url()], |_| {}).await;
    let mut c = proxy.client().await;
    let vectors = [
        (
            "docker/1.5.0 go/go1.4.1 git-commit/a8a31ef kernel/3.13",
            404,
        ),
        ("docker/1.4.1 go/go1.3.3", 404),
        ("Go 1.1 package http", 404),
        ("docker/1.5.0-dev go/go1.4.1", 200),
        ("docker/1.6.0 go/go1.4.2", 200),
        ("Go-http-client/1.1", 200),
        (UA, 200),
    ];
    for (ua, want) in vectors {
        let (parts, _) = c.get("/v2/", Some(("alice", "alice-pw")), ua).await;
        assert_eq!(parts.status, want, "{ua}");
        api_version_once(&parts.headers);
    }
}

/// Send a raw request head over TLS and return the status code.
async fn raw_status(proxy: &Proxy, head: &str) -> u16 {
    let mut tls = tls_connect(
        proxy.addr,
        client_config(&proxy.ca, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

#[tokio::test]
async fn path_tricks_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![up.url()], |_| {}).await;
    for target in [
        "/_ping/../v2/",
        "/v1/_ping/../../v2/_catalog",
        "/_ping/%2e%2e/v2/",
        "/_berth/health/../../v2/",
        "//v2/",
        "/v2/../v2/",
        "/v2/%2E%2E/x",
        "/v2/a%2fb",
        "http://localhost/v2/",
        "/./v2/",
    ] {
        for auth in ["", "Authorization: Basic YWxpY2U6d3Jvbmc=\r\n"] {
            let status = raw_status(
                &proxy,
                &format!(
                    "GET {target} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
                ),
            )
            .await;
            assert!(
                status == 400 || status == 401 || status == 404,
                "{target}: {status}"
            );
        }
    }
    assert_eq!(up.count(), 0, "{:?}", up.seen.lock().unwrap());
}

#[tokio::test]
async fn plain_http_on_the_tls_port_gets_a_short_answer() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![up.url()], |_| {}).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400"));
    // A client that connects and says nothing is dropped after the handshake timeout (set to 1 s here).
    let proxy = Proxy::start(vec![up.url()], |c| c.handshake_timeout_secs = 1).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut [0u8; 16]))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn upstream_down_gives_a_fast_502_and_replicas_fail_over() {
    let dead = dead_port().await;
    let proxy = Proxy::start(vec![format!("http://{dead}")], |_| {}).await;
    let mut c = proxy.client().await;
    let started = Instant::now();
    let (parts, body) = c.get("/v2/", Some(("alice", "alice-pw")), UA).await;
    assert_eq!(parts.status, 502);
    assert!(started.elapsed() < Duration::from_secs(3));
    api_version_once(&parts.headers);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["errors"][0]["code"], "UNAVAILABLE");

    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![format!("http://{dead}"), up.url()], |_| {}).await;
    let mut c = proxy.client().await;
    for i in 0..4 {
        let req = c
            .request("PUT", "/v2/x/blobs/uploads/1")
            .header("authorization", basic("alice", "alice-pw"))
            .body(full(format!("body {i}")))
            .unwrap();
        let (parts, body) = c.send(req).await;
        assert_eq!(parts.status, 200, "request {i}");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json["bytes"],
            format!("body {i}").len(),
            "the body survives failover"
        );
    }
    assert_eq!(up.count(), 4);
}

#[tokio::test]
async fn every_htpasswd_format_made_by_apache_htpasswd() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![up.url()], |_| {}).await;
    let file = proxy.htpasswd.to_str().unwrap().to_string();
    let formats = [
        ("bcrypt", "-bB"),
        ("apr1", "-bm"),
        ("sha1", "-bs"),
        ("sha256", "-b2"),
        ("sha512", "-b5"),
        ("crypt", "-bd"),
        ("plain", "-bp"),
    ];
    for (user, flag) in formats {
        htpasswd(&[flag, &file, user, &format!("{user}-secret")]);
    }
    let text = std::fs::read_to_string(&proxy.htpasswd).unwrap();
    for prefix in [
        "$2y$",
        "$apr1$",
        "{SHA}",
        "$5$",
        "$6$",
        "plain:plain-secret",
    ] {
        assert!(text.contains(prefix), "{prefix} in {text}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut c = proxy.client().await;
    // Wait for the reload (file polled every 100 ms here).
    while c
        .get("/v2/", Some(("plain", "plain-secret")), UA)
        .await
        .0
        .status
        != 200
    {
        assert!(Instant::now() < deadline, "htpasswd change not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (user, _) in formats {
        let good = format!("{user}-secret");
        // DES crypt only uses 8 characters; "crypt-se" is the significant part.
        assert_eq!(
            c.get("/v2/", Some((user, &good)), UA).await.0.status,
            200,
            "{user} right password"
        );
        assert_eq!(
            c.get("/v2/", Some((user, "nope")), UA).await.0.status,
            401,
            "{user} wrong password"
        );
        assert_eq!(
            c.get("/v2/", Some((user, &good)), UA).await.0.status,
            200,
            "{user} cached"
        );
    }
}

#[tokio::test]
async fn removed_user_is_refused_after_the_file_changes() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![up.url()], |c| c.credential_cache_ttl_secs = 3600).await;
    let mut c = proxy.client().await;
    assert_eq!(
        c.get("/v2/", Some(("alice", "alice-pw")), UA)
            .await
            .0
            .status,
        200
    );
    assert_eq!(
        c.get("/v2/", Some(("alice", "alice-pw")), UA)
            .await
            .0
            .status,
        200
    );
    htpasswd(&["-D", proxy.htpasswd.to_str().unwrap(), "alice"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = c
            .get("/v2/", Some(("alice", "alice-pw")), UA)
            .await
            .0
            .status;
        if status == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "removed user still accepted after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn chunked_upload_with_expect_continue_streams_through() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![up.url()], |_| {}).await;
    let mut c = proxy.client().await;
    let total = 48 * 1024 * 1024 + 123;
    let req = c
        .request("PATCH", "/v2/x/blobs/uploads/abc")
        .header("authorization", basic("alice", "alice-pw"))
        .header("expect", "100-continue")
        .body(pattern_body(total))
        .unwrap();
    let (parts, body) = c.send(req).await;
    assert_eq!(parts.status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["bytes"], total);
    assert_eq!(json["sha256"], pattern_sha256(total));
    let seen = up.last();
    assert!(!seen.headers.contains_key("expect"));
    assert!(!seen.headers.contains_key("content-length"));

    // Download streams back.
    let req = c
        .request("GET", &format!("/v2/big/{total}"))
        .header("authorization", basic("alice", "alice-pw"))
        .body(empty())
        .unwrap();
    let resp = c.send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            sha2::Digest::update(&mut h, &d);
            n += d.len() as u64;
        }
    }
    assert_eq!(n, total);
    assert_eq!(
        hex::encode(sha2::Digest::finalize(h)),
        pattern_sha256(total)
    );
}

#[tokio::test]
async fn max_body_size_gives_413() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![up.url()], |c| c.max_body_size = 1000).await;
    let mut c = proxy.client().await;
    let req = c
        .request("PUT", "/v2/x/blobs/uploads/1")
        .header("authorization", basic("alice", "alice-pw"))
        .body(full(vec![0u8; 2000]))
        .unwrap();
    let (parts, _) = c.send(req).await;
    assert_eq!(parts.status, 413);
    api_version_once(&parts.headers);
    let mut c = proxy.client().await;
    let req = c
        .request("PATCH", "/v2/x/blobs/uploads/1")
        .header("authorization", basic("alice", "alice-pw"))
        .body(pattern_body(5000))
        .unwrap();
    let (parts, _) = c.send(req).await;
    assert_eq!(parts.status, 413);
    let mut c = proxy.client().await;
    let req = c
        .request("PATCH", "/v2/x/blobs/uploads/1")
        .header("authorization", basic("alice", "alice-pw"))
        .body(pattern_body(1000))
        .unwrap();
    assert_eq!(c.send(req).await.0.status, 200);
}

#[tokio::test]
async fn certificate_reload_keeps_open_connections() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![up.url()], |_| {}).await;
    let mut old = proxy.client().await;
    assert_eq!(old.get("/_ping", None, UA).await.0.status, 200);
    berth_proxy::ca::issue(
        &proxy.dir.path().join("certs"),
        &["renamed.localhost".into()],
        berth_proxy::ca::KeyType::EcdsaP256,
    )
    .unwrap();
    proxy.cert.reload().unwrap();
    tls_connect(
        proxy.addr,
        client_config(&proxy.ca, &[]),
        "renamed.localhost",
    )
    .await
    .unwrap();
    assert!(
        tls_connect(proxy.addr, client_config(&proxy.ca, &[]), "localhost")
            .await
            .is_err()
    );
    assert_eq!(
        old.get("/_ping", None, UA).await.0.status,
        200,
        "open connection survives"
    );
}

#[tokio::test]
async fn graceful_shutdown_lets_a_transfer_finish() {
    let up = Upstream::start().await;
    let mut proxy = Proxy::start(vec![up.url()], |_| {}).await;
    let mut c = proxy.client().await;
    let total = 16 * 1024 * 1024u64;
    let req = c
        .request("GET", &format!("/v2/big/{total}"))
        .header("authorization", basic("alice", "alice-pw"))
        .body(empty())
        .unwrap();
    let resp = c.send.send_request(req).await.unwrap();
    let mut body = resp.into_body();
    let first = body
        .frame()
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap()
        .len() as u64;
    proxy.shutdown.take().unwrap().send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New connections are refused once the listener is gone.
    assert!(tokio::net::TcpStream::connect(proxy.addr).await.is_err());
    let mut n = first;
    while let Some(f) = body.frame().await {
        n += f.unwrap().into_data().map(|d| d.len() as u64).unwrap_or(0);
    }
    assert_eq!(n, total);
    tokio::time::timeout(Duration::from_secs(5), &mut proxy.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn read_timeout_is_idle_not_total() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![up.url()], |c| c.read_timeout_secs = 1).await;
    let mut c = proxy.client().await;
    // 8 chunks, one every 300 ms: 2.4 s in all, over twice the read timeout, with steady progress.
    let req = c
        .request("PATCH", "/v2/x/blobs/uploads/slow")
        .header("authorization", basic("alice", "alice-pw"))
        .body(slow_pattern_body(8, Duration::from_millis(300)))
        .unwrap();
    let started = Instant::now();
    let (parts, body) = c.send(req).await;
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(started.elapsed() > Duration::from_secs(2));
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["bytes"], 8 * 65536);

    // The body ended, then the upstream says nothing: 504 after about the read timeout.
    let mut c = proxy.client().await;
    let req = c
        .request("PATCH", "/v2/stall/blobs/uploads/1")
        .header("authorization", basic("alice", "alice-pw"))
        .body(slow_pattern_body(3, Duration::from_millis(300)))
        .unwrap();
    let started = Instant::now();
    let (parts, _) = c.send(req).await;
    assert_eq!(parts.status, 504);
    api_version_once(&parts.headers);
    let took = started.elapsed();
    assert!(
        took > Duration::from_millis(1800) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // The upstream stops taking the body: 504 too, not a hang.
    let mut c = proxy.client().await;
    let req = c
        .request("PATCH", "/v2/deaf/blobs/uploads/1")
        .header("authorization", basic("alice", "alice-pw"))
        .body(pattern_body(256 * 1024 * 1024))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.send.send_request(req))
        .await
        .expect("a deaf upstream must not hang the request")
        .unwrap();
    assert_eq!(resp.status(), 504);
}

#[tokio::test]
async fn client_side_body_failures_are_4xx_not_upstream_faults() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![up.url()], |c| c.read_timeout_secs = 1).await;
    // A client that sends a little, then nothing: 408 (the client's fault), not 502.
    let mut c = proxy.client().await;
    let (body, _hold) = stalled_body(bytes::Bytes::from_static(b"some bytes"));
    let req = c
        .request("PATCH", "/v2/x/blobs/uploads/1")
        .header("authorization", basic("alice", "alice-pw"))
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), c.send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 408);
    api_version_once(resp.headers());

    // A client that closes its side mid-body: 400.
    let mut tls = tls_connect(
        proxy.addr,
        client_config(&proxy.ca, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    let head = format!(
        "PATCH /v2/x/blobs/uploads/2 HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\
         Content-Length: 100000\r\n\r\n0123456789",
        basic("alice", "alice-pw")
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tls.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
}

/// The served leaf of a new connection: (serial, not_after in Unix seconds).
async fn served_leaf(proxy: &Proxy) -> (String, i64) {
    let tls = tls_connect(proxy.addr, client_config(&proxy.ca, &[]), "localhost")
        .await
        .unwrap();
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, c) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    (c.raw_serial_as_string(), c.validity().not_after.timestamp())
}

fn file_leaf(path: &std::path::Path) -> (String, i64) {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(path).unwrap();
    let (_, c) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    (c.raw_serial_as_string(), c.validity().not_after.timestamp())
}

async fn wait_for_renewal(proxy: &Proxy, old_serial: &str) -> (String, i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leaf = served_leaf(proxy).await;
        if leaf.0 != old_serial {
            return leaf;
        }
        assert!(Instant::now() < deadline, "certificate not renewed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn dev_ca_certificate_near_expiry_is_renewed_without_restart() {
    let up = Upstream::start().await;
    let hosts = ["localhost".to_string(), "127.0.0.1".to_string()];
    let short = std::sync::Arc::new(std::sync::Mutex::new(None));
    let s = std::sync::Arc::clone(&short);
    let h = hosts.clone();
    // Started with a dev-CA leaf that has 10 days left (threshold: 30 days): renewed by the check at start.
    let proxy = Proxy::start(vec![up.url()], move |c| {
        c.cert_renew_check_secs = 1;
        berth_proxy::ca::issue_for(
            &c.certs_dir,
            &h,
            berth_proxy::ca::KeyType::EcdsaP256,
            time::Duration::days(10),
        )
        .unwrap();
        *s.lock().unwrap() = Some(file_leaf(&c.certs_dir.join("domain.crt")));
    })
    .await;
    let (old_serial, old_end) = short.lock().unwrap().clone().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(old_end - now < 11 * 86400);
    let (serial, end) = wait_for_renewal(&proxy, &old_serial).await;
    assert!(end - now > 390 * 86400, "new not_after {end}");
    let certs = proxy.dir.path().join("certs");
    assert_eq!(
        file_leaf(&certs.join("domain.crt")).0,
        serial,
        "written to domain.crt"
    );

    // Later (here: the periodic check, every second): a leaf getting close to its end is renewed again.
    berth_proxy::ca::issue_for(
        &certs,
        &hosts,
        berth_proxy::ca::KeyType::EcdsaP256,
        time::Duration::days(5),
    )
    .unwrap();
    proxy.cert.reload().unwrap();
    let (short_serial, _) = file_leaf(&certs.join("domain.crt"));
    let (serial2, end2) = wait_for_renewal(&proxy, &short_serial).await;
    assert_ne!(serial2, serial);
    assert!(end2 - now > 390 * 86400);
    let mut c = proxy.client().await;
    assert_eq!(c.get("/_berth/health", None, UA).await.0.status, 200);
}

#[tokio::test]
async fn a_certificate_the_user_brought_is_never_renewed() {
    let up = Upstream::start().await;
    let other = tempfile::tempdir().unwrap();
    let o = other.path().to_path_buf();
    let proxy = Proxy::start(vec![up.url()], move |c| {
        c.cert_renew_check_secs = 1;
        // Another CA's leaf with 2 days left replaces the dev CA's one; the dev CA stays in certs_dir.
        berth_proxy::ca::init(
            &o,
            &["localhost".into()],
            berth_proxy::ca::KeyType::EcdsaP256,
            false,
        )
        .unwrap();
        berth_proxy::ca::issue_for(
            &o,
            &["localhost".into()],
            berth_proxy::ca::KeyType::EcdsaP256,
            time::Duration::days(2),
        )
        .unwrap();
        for f in ["domain.crt", "domain.key"] {
            std::fs::copy(o.join(f), c.certs_dir.join(f)).unwrap();
        }
    })
    .await;
    let certs = proxy.dir.path().join("certs");
    let before = std::fs::read(certs.join("domain.crt")).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(std::fs::read(certs.join("domain.crt")).unwrap(), before);
    let served = proxy.cert.current();
    let (_, c) = x509_parser::parse_x509_certificate(served.cert[0].as_ref()).unwrap();
    assert_eq!(
        c.raw_serial_as_string(),
        file_leaf(&certs.join("domain.crt")).0
    );
}

#[tokio::test]
async fn connections_are_capped() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![up.url()], |c| c.max_connections = 2).await;
    let cfg = client_config(&proxy.ca, &[b"http/1.1"]);
    let first = tls_connect(proxy.addr, cfg.clone(), "localhost")
        .await
        .unwrap();
    let _second = tls_connect(proxy.addr, cfg.clone(), "localhost")
        .await
        .unwrap();
    // The third waits in the backlog: no handshake while two are open.
    let third = tokio::spawn(tls_connect(proxy.addr, cfg.clone(), "localhost"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!third.is_finished(), "a third connection was served");
    drop(first);
    let third = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert!(third.is_ok());
}

#[tokio::test]
async fn idle_http2_connections_get_goaway() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![up.url()], |c| c.idle_timeout_secs = 1).await;
    let (mut send, conn) = h2_client(&proxy).await;
    // A request in flight for longer than the idle timeout (a slow upload) is not cut.
    let uri = format!(
        "https://localhost:{}/v2/x/blobs/uploads/1",
        proxy.addr.port()
    );
    let req = http::Request::builder()
        .method("PATCH")
        .uri(uri)
        .header("authorization", basic("alice", "alice-pw"))
        .body(slow_pattern_body(6, Duration::from_millis(400)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    // Then nothing: the proxy closes the connection after about a second.
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("idle HTTP/2 connection still open")
        .unwrap()
        .ok();
    assert!(started.elapsed() >= Duration::from_millis(800));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![up.url()], |c| c.write_timeout_secs = 1).await;
    let mut tls = tls_connect(
        proxy.addr,
        client_config(&proxy.ca, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    let total: u64 = 512 * 1024 * 1024;
    let head = format!(
        "GET /v2/big/{total} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\r\n",
        basic("alice", "alice-pw")
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    // Read nothing for a while: every buffer fills, the proxy's writes block.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut n = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let drained = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k as u64,
            }
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "connection still open after the write timeout"
    );
    assert!(n < total, "the whole body was sent ({n} bytes)");
}

#[tokio::test]
async fn an_upstream_body_that_stops_is_cut_after_the_read_timeout() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![up.url()], |c| c.read_timeout_secs = 1).await;
    let mut c = proxy.client().await;
    let req = c
        .request("GET", "/v2/hang-body/x")
        .header("authorization", basic("alice", "alice-pw"))
        .body(empty())
        .unwrap();
    let resp = c.send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("a stalled upstream body must be cut");
    assert!(
        got.is_err(),
        "the client sees the transfer fail, not a short success"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

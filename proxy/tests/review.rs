//! Defects found in a security review, each checked against the proxy over real TLS: a flood of bad logins
//! from one address does not hold up another address's login, and a client that gives up on its checks is
//! still counted; a request without `Host` never sees the upstream's address; HTTP/1.1 and HTTP/2 share one
//! header-count limit. (Equal failure timing has a test binary of its own: tests/auth_timing.rs.)

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http_body_util::BodyExt;

#[tokio::test]
async fn a_flood_of_bad_logins_from_one_address_does_not_hold_up_another() {
    let up = Upstream::start().await;
    // No failure budget runs out during the test: what keeps the flood from holding up other logins is the
    // per-address limit on checks in flight (and the bounded wait for a slot), not the failure throttle.
    let proxy = Proxy::start(vec![up.url()], |c| c.auth_client_failures = 1_000_000).await;
    let users = ["bob", "carol", "dave", "erin", "frank"];
    for u in users {
        htpasswd(&[
            "-bB",
            proxy.htpasswd.to_str().unwrap(),
            u,
            &format!("{u}-pw"),
        ]);
    }
    // Wait until the proxy has reloaded the file with every user.
    let mut probe = proxy.client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe
        .get("/v2/", Some(("frank", "frank-pw")), UA)
        .await
        .0
        .status
        != 200
    {
        assert!(
            Instant::now() < deadline,
            "the htpasswd file was not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The flood: one HTTP/2 connection from 127.0.0.1 with 200 streams of wrong passwords for a real user
    // (each one different, so no cache helps, and each a real hash) until told to stop (at most 30 s).
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let flooder = h2_from("127.0.0.1", &proxy).await;
    let mut flood = Vec::new();
    for i in 0..200u64 {
        let (stop, answered, mut send) = (stop.clone(), answered.clone(), flooder.clone());
        let port = proxy.addr.port();
        flood.push(tokio::spawn(async move {
            // Spread over the 200 ms between a stream's guesses, so the flood is continuous.
            tokio::time::sleep(Duration::from_millis(i)).await;
            let started = Instant::now();
            let mut n = 0u32;
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
                n += 1;
                let req = http::Request::builder()
                    .uri(format!("https://localhost:{port}/v2/"))
                    .header("authorization", basic("alice", &format!("guess-{i}-{n}")))
                    .header("user-agent", UA)
                    .body(empty())
                    .unwrap();
                if send.ready().await.is_err() {
                    break;
                }
                let Ok(resp) = send.send_request(req).await else {
                    break;
                };
                let status = resp.status().as_u16();
                statuses.push(status);
                let _ = resp.into_body().collect().await;
                answered.fetch_add(1, Ordering::Relaxed);
                // The next guess at once after a 401; a short pause after a 429 (this is a flood of checks,
                // not a measure of how fast the proxy can answer 429).
                if status == 429 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            statuses
        }));
    }
    // The flood is under way.
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered.load(Ordering::Relaxed) < 400 {
        assert!(Instant::now() < deadline, "the flood got no answers");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Meanwhile, first (uncached) logins of five users from another address.
    let before = answered.load(Ordering::Relaxed);
    let mut legit = h2_from("127.0.0.2", &proxy).await;
    let mut took = Vec::new();
    for u in users {
        let t = Instant::now();
        assert_eq!(
            h2_get(&mut legit, &proxy, &basic(u, &format!("{u}-pw"))).await,
            200
        );
        took.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let during = answered.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut statuses = Vec::new();
    for f in flood {
        statuses.extend(f.await.unwrap());
    }
    assert!(
        during > before,
        "the flood got no answers while the logins were measured"
    );
    took.sort();
    println!("uncached logins from another address during the flood: {took:?}");
    assert!(
        took[2] < Duration::from_millis(100),
        "median login took {:?} during the flood",
        took[2]
    );
    // The flood itself was refused: 401 for each check, 429 past the per-address limits.
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert!(statuses.contains(&429), "the flood was never throttled");
}

#[tokio::test]
async fn a_check_the_client_gives_up_on_is_still_counted_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    let p = path.to_str().unwrap();
    htpasswd(&["-cbB", "-C", "5", p, "cheap", "pw"]);
    htpasswd(&["-bB", "-C", "12", p, "dear", "pw2"]);
    let limits = berth_proxy::authn::AuthLimits {
        client_failures: 3,
        per_client: usize::MAX,
        ..Default::default()
    };
    let auth = Arc::new(berth_proxy::authn::Authenticator::with_limits(
        path.clone(),
        Duration::from_secs(60),
        1000,
        limits,
    ));
    let client: std::net::IpAddr = "192.0.2.7".parse().unwrap();
    // A wrong password for the cheap user answers only after the padding to the dear user's cost (about a
    // quarter of a second): a client that gives up on every guess after 20 ms, hoping not to be counted.
    for i in 0..3 {
        let a = Arc::clone(&auth);
        let header = basic("cheap", &format!("guess-{i}"));
        let guess =
            tokio::spawn(async move { a.authenticate_from(Some(header.as_bytes()), client).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        guess.abort();
        assert!(guess.await.unwrap_err().is_cancelled());
    }
    // Every abandoned check still ran to its end: three failures counted, so the next guess is throttled.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = auth
            .authenticate_from(Some(basic("cheap", "guess-next").as_bytes()), client)
            .await;
        if matches!(r, Err(berth_proxy::authn::AuthFailure::Throttled(_))) {
            break;
        }
        assert_eq!(r, Err(berth_proxy::authn::AuthFailure::Rejected));
        assert!(
            Instant::now() < deadline,
            "abandoned failures were never counted"
        );
    }
    // Another address is not affected, and no check entry outlives its check.
    let other: std::net::IpAddr = "198.51.100.9".parse().unwrap();
    assert_eq!(
        auth.authenticate_from(Some(basic("cheap", "pw").as_bytes()), other)
            .await,
        Ok("cheap".to_string())
    );
    while auth.checks_in_flight() > 0 {
        assert!(Instant::now() < deadline, "check entries left behind");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends a raw request head over TLS and reads the whole answer (until the proxy closes).
async fn raw_exchange(proxy: &Proxy, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = tls_connect(
        proxy.addr,
        client_config(&proxy.ca, &[b"http/1.1"]),
        "localhost",
    )
    .await
    .unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test]
async fn a_request_without_host_gets_400_and_never_the_upstream_s_address() {
    let registry = RealRegistry::start();
    let proxy = Proxy::start(vec![registry.url()], |_| {}).await;
    let auth = basic("alice", "alice-pw");
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        let answer = raw_exchange(
            &proxy,
            &format!(
                "POST /v2/nohost/blobs/uploads/ {version}\r\nAuthorization: {auth}\r\nUser-Agent: {UA}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert!(
            answer.starts_with(&format!("{version} 400")) || answer.starts_with("HTTP/1.1 400"),
            "{answer}"
        );
        assert!(!answer.contains(&registry.addr.to_string()), "{answer}");
        assert!(!answer.contains("127.0.0.1"), "{answer}");
    }
    // With Host, the Location is the client's.
    let answer = raw_exchange(
        &proxy,
        &format!(
            "POST /v2/nohost/blobs/uploads/ HTTP/1.1\r\nHost: registry.example:5043\r\nAuthorization: {auth}\r\n\
             User-Agent: {UA}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("location: https://registry.example:5043/v2/nohost/blobs/uploads/"),
        "{answer}"
    );
}

#[tokio::test]
async fn http1_and_http2_refuse_the_same_number_of_header_fields() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![up.url()], |_| {}).await;
    let auth = basic("alice", "alice-pw");
    // 90 fields pass (the proxy adds its forwarding headers, which the upstream must still take); 101 fields,
    // one past the default `max_headers`, are refused over both protocols.
    for (fields, want) in [(90usize, 200u16), (101, 431)] {
        // Host, Authorization, User-Agent, Connection and the extras.
        let mut head = format!(
            "GET /v2/h1-{fields} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {auth}\r\nUser-Agent: {UA}\r\n\
             Connection: close\r\n"
        );
        for i in 0..fields - 4 {
            head.push_str(&format!("x-extra-{i}: 1\r\n"));
        }
        head.push_str("\r\n");
        let answer = raw_exchange(&proxy, &head).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {want}")),
            "HTTP/1.1 with {fields} fields: {answer}"
        );
    }
    let mut send = h2_from("127.0.0.1", &proxy).await;
    for (fields, want) in [(90usize, 200u16), (101, 431)] {
        // Authorization, User-Agent and the extras (the authority is a pseudo-header).
        let mut b = http::Request::builder()
            .uri(format!(
                "https://localhost:{}/v2/h2-{fields}",
                proxy.addr.port()
            ))
            .header("authorization", &auth)
            .header("user-agent", UA);
        for i in 0..fields - 2 {
            b = b.header(format!("x-extra-{i}"), "1");
        }
        send.ready().await.unwrap();
        let resp = send.send_request(b.body(empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status().as_u16(), want, "HTTP/2 with {fields} fields");
        if want == 431 {
            assert_eq!(
                resp.headers()["docker-distribution-api-version"],
                "registry/2.0"
            );
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["errors"][0]["code"], "UNSUPPORTED");
        }
    }
    let seen: Vec<String> = up
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.uri.path().to_string())
        .collect();
    assert_eq!(seen, ["/v2/h1-90", "/v2/h2-90"]);
}

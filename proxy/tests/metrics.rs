//! Metrics and events through the real chain: berth-proxy (in-process, `metrics_listen`) in front of the real
//! berth-registry binary (debug listener with Prometheus on, one notification endpoint). Known traffic moves
//! the counters by known amounts; `promtool check metrics` passes on both outputs; the registry's events name
//! the user the proxy authenticated.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;

const UA: &str = "docker/27.0.3 go/go1.21.11";

/// A notification endpoint that keeps every event it is sent.
async fn receiver() -> (std::net::SocketAddr, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let g = g.clone();
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let g = g.clone();
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        g.lock()
                            .unwrap()
                            .extend(v["events"].as_array().unwrap().iter().cloned());
                        Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
                            Bytes::new(),
                        )))
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (addr, got)
}

/// Reads the registry's debug address off its stdout (the line after the listen line).
fn debug_addr(registry: &mut RealRegistry) -> std::net::SocketAddr {
    use std::io::BufRead;
    let mut line = String::new();
    registry.stdout.read_line(&mut line).unwrap();
    line.trim()
        .strip_prefix("berth-registry debug on ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn counters_move_by_the_traffic_and_promtool_accepts_both_outputs() {
    let (hook, events) = receiver().await;
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("registry.toml");
    std::fs::write(
        &cfg,
        format!("[[notifications.endpoints]]\nname = \"ci\"\nurl = \"http://{hook}/\"\n"),
    )
    .unwrap();
    let mut registry = RealRegistry::start_with(&[
        ("REGISTRY_CONFIGURATION_PATH", cfg.to_str().unwrap()),
        ("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0"),
        ("REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED", "true"),
        ("BERTH_GC_INTERVAL", "0"),
    ]);
    let debug = debug_addr(&mut registry);
    let proxy = Proxy::start(vec![registry.url()], |c| {
        c.metrics_listen = Some("127.0.0.1:0".into());
    })
    .await;
    let metrics = proxy.metrics.expect("metrics listener bound");
    let before = scrape(metrics).await;
    let reg_before = scrape(debug).await;
    assert!(
        sample(
            &before,
            "berth_proxy_certificate_expiry_timestamp_seconds{certificate=\"server\"}"
        ) > 1.7e9
    );
    assert!(
        sample(
            &before,
            "berth_proxy_certificate_expiry_timestamp_seconds{certificate=\"ca\"}"
        ) > 1.7e9
    );

    // A monolithic push of N bytes, a pull of it, a wrong password, a cache hit.
    const N: usize = 300_000;
    let data = vec![7u8; N];
    let digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data))
    );
    let mut c = proxy.client().await;
    let req = c
        .request(
            "POST",
            &format!("/v2/metrics/test/blobs/uploads/?digest={digest}"),
        )
        .header("authorization", basic("alice", "alice-pw"))
        .header("user-agent", UA)
        .header("content-length", N.to_string())
        .body(full(data.clone()))
        .unwrap();
    let (parts, body) = c.send(req).await;
    assert_eq!(parts.status, 201, "{body:?}");
    let (parts, body) = c
        .get(
            &format!("/v2/metrics/test/blobs/{digest}"),
            Some(("alice", "alice-pw")),
            UA,
        )
        .await;
    assert_eq!(parts.status, 200);
    assert_eq!(body.len(), N);
    let (parts, _) = c.get("/v2/", Some(("alice", "wrong")), UA).await;
    assert_eq!(parts.status, 401);
    let (parts, _) = c.get("/v2/", None, UA).await;
    assert_eq!(parts.status, 401);

    // The access log and the metrics are written when a response body ends: poll until the last one is in.
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let m = scrape(metrics).await;
        let total: f64 = ["route=\"base\"", "route=\"blob\"", "route=\"blob_upload\""]
            .iter()
            .flat_map(|route| {
                ["get", "post"].into_iter().flat_map(move |method| {
                    ["2xx", "4xx"].into_iter().map(move |class| {
                        format!("berth_proxy_requests_total{{class=\"{class}\",method=\"{method}\",{route}}}")
                    })
                })
            })
            .map(|series| sample(&m, &series) - sample(&before, &series))
            .sum();
        if total >= 4.0 {
            break m;
        }
        assert!(Instant::now() < deadline, "requests not counted:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(
        delta("berth_proxy_requests_total{class=\"2xx\",method=\"post\",route=\"blob_upload\"}"),
        1.0
    );
    assert_eq!(
        delta("berth_proxy_requests_total{class=\"2xx\",method=\"get\",route=\"blob\"}"),
        1.0
    );
    assert_eq!(
        delta("berth_proxy_requests_total{class=\"4xx\",method=\"get\",route=\"base\"}"),
        2.0
    );
    assert_eq!(
        delta("berth_proxy_received_bytes_total{route=\"blob_upload\"}"),
        N as f64
    );
    assert_eq!(
        delta("berth_proxy_sent_bytes_total{route=\"blob\"}"),
        N as f64
    );
    assert_eq!(delta("berth_proxy_auth_total{result=\"success\"}"), 2.0);
    assert_eq!(delta("berth_proxy_auth_total{result=\"cache_hit\"}"), 1.0);
    assert_eq!(delta("berth_proxy_auth_total{result=\"failure\"}"), 1.0);
    assert_eq!(
        delta("berth_proxy_tls_handshakes_total{result=\"ok\"}"),
        1.0
    );
    assert_eq!(delta("berth_proxy_connections_total"), 1.0);
    assert_eq!(
        sample(
            &after,
            &format!("berth_proxy_upstream_up{{upstream=\"{}\"}}", registry.addr)
        ),
        1.0
    );
    assert!(sample(&after, "process_resident_memory_bytes") > 0.0);
    promtool_check(&after);

    // The registry's own counters, under registry:2's names.
    let reg_after = scrape(debug).await;
    let rdelta = |series: &str| sample(&reg_after, series) - sample(&reg_before, series);
    assert_eq!(
        rdelta(
            "registry_http_requests_total{code=\"201\",handler=\"blob_upload\",method=\"post\"}"
        ),
        1.0
    );
    assert_eq!(
        rdelta("registry_http_requests_total{code=\"200\",handler=\"blob\",method=\"get\"}"),
        1.0
    );
    assert_eq!(
        rdelta("registry_http_request_size_bytes_sum{handler=\"blob_upload\"}"),
        N as f64
    );
    assert_eq!(
        rdelta("registry_http_response_size_bytes_sum{handler=\"blob\"}"),
        N as f64
    );
    assert_eq!(rdelta("berth_registry_blob_bytes"), N as f64);
    assert_eq!(rdelta("berth_registry_blobs"), 1.0);
    assert!(
        rdelta("registry_storage_action_seconds_count{action=\"Move\",driver=\"filesystem\"}")
            >= 1.0
    );
    assert!(sample(&reg_after, "berth_registry_storage_free_bytes") > 0.0);
    promtool_check(&reg_after);

    // The events carry the user the proxy authenticated, and the client's address.
    let deadline = Instant::now() + Duration::from_secs(20);
    while events.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "events not delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = events.lock().unwrap().clone();
    assert_eq!(got[0]["action"], "push");
    assert_eq!(got[1]["action"], "pull");
    for e in &got {
        assert_eq!(e["actor"]["name"], "alice", "{e}");
        assert_eq!(e["target"]["digest"], digest.as_str());
        assert_eq!(e["target"]["size"], N);
        assert_eq!(e["request"]["addr"], "127.0.0.1");
        assert_eq!(e["request"]["useragent"], UA);
    }
}

#[tokio::test]
async fn the_operator_listener_answers_probes_and_follows_the_upstream() {
    let registry = RealRegistry::start();
    let proxy = Proxy::start(vec![registry.url()], |c| {
        c.metrics_listen = Some("127.0.0.1:0".into());
        c.connect_timeout_secs = 2;
    })
    .await;
    let admin = proxy.metrics.unwrap();
    let (head, body) = plain_get(admin, "/_berth/ready").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head} {body}");
    let (head, _) = plain_get(admin, "/_berth/health").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, _) = plain_get(admin, "/v2/").await;
    assert!(
        head.starts_with("HTTP/1.1 404"),
        "the registry API is not served here: {head}"
    );
    let up = format!("berth_proxy_upstream_up{{upstream=\"{}\"}}", registry.addr);
    assert_eq!(sample(&scrape(admin).await, &up), 1.0);
    let addr = registry.addr;
    drop(registry);
    let (head, body) = plain_get(admin, "/_berth/ready").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(body.contains(&addr.to_string()), "{body}");
    assert_eq!(sample(&scrape(admin).await, &up), 0.0);
    // A request the upstream cannot take is counted against it.
    let mut c = proxy.client().await;
    let (parts, _) = c.get("/v2/", Some(("alice", "alice-pw")), UA).await;
    assert_eq!(parts.status, 502);
    let m = scrape(admin).await;
    assert_eq!(
        sample(
            &m,
            &format!("berth_proxy_upstream_errors_total{{kind=\"connect\",upstream=\"{addr}\"}}")
        ),
        1.0,
        "{m}"
    );
    let (head, _) = plain_get(admin, "/_berth/health").await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "liveness does not depend on the upstream"
    );
    // Plain HTTP sent to the TLS port is a handshake failure of its own kind.
    let (head, _) = plain_get(proxy.addr, "/v2/").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let m = scrape(admin).await;
    assert_eq!(
        sample(
            &m,
            "berth_proxy_tls_handshakes_total{result=\"plain_http\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "berth_proxy_tls_handshakes_total{result=\"ok\"}"),
        1.0
    );
}

#[tokio::test]
async fn without_a_metrics_listener_nothing_is_counted() {
    let registry = RealRegistry::start();
    let proxy = Proxy::start(vec![registry.url()], |_| {}).await;
    assert!(proxy.metrics.is_none());
    let mut c = proxy.client().await;
    let (parts, _) = c.get("/v2/", Some(("alice", "alice-pw")), UA).await;
    assert_eq!(parts.status, 200);
    let text = proxy.state.metrics().render();
    assert!(!proxy.state.metrics().enabled());
    assert!(!text.contains("berth_proxy_requests_total{"), "{text}");
}

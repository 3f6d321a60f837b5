//! Hot paths of a request, measured in isolation through the crates' public APIs:
//!
//! - proxy: the credential check with a warm cache (`CredentialCache::lookup`, and the whole
//!   `Authenticator::authenticate` on a cached header), the user-agent filter, the upstream header rewrite;
//! - registry: digest hashing of a stream (`oci::Hasher`, 1 MiB batches as uploads arrive; next to ring's
//!   implementation of the same digests as a reference), digest and name
//!   parsing, and one request through the router and handlers (`GET /v2/`, `HEAD` of a blob, tags list) over an
//!   in-process HTTP/1.1 connection on loopback. The router function itself is private to `berth_registry::api`,
//!   so it is measured with the request around it.

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use berth_proxy::authn::{bcrypt_hash, Authenticator, CredentialCache};
use berth_proxy::filter::UserAgentFilter;
use berth_proxy::forward::{rewrite_request_headers, ClientContext};
use berth_registry::oci::{Algorithm, Digest, Hasher, RepoName};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

const DEFAULT_UA_RULE: &str = r"^(docker\/1\.(3|4|5(?!\.[0-9]-dev))|Go ).*$";
const DOCKER_UA: &str =
    "docker/20.10.24+dfsg1 go/go1.19.8 git-commit/5d6db84 kernel/6.1.0-18-amd64 os/linux \
                         arch/amd64 UpstreamClient(Docker-Client/20.10.24+dfsg1 \\(linux\\))";

fn basic(user: &str, password: &str) -> Vec<u8> {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
    .into_bytes()
}

fn credentials(c: &mut Criterion) {
    let header = basic("bench", "bench-Pa55word-0f-some-length");
    let cache = CredentialCache::new(Duration::from_secs(300), 10_000);
    cache.insert(&header, "bench");
    c.bench_function("proxy/credential cache lookup (hit)", |b| {
        b.iter(|| cache.lookup(std::hint::black_box(&header)))
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("htpasswd");
    let hash = bcrypt_hash("bench-Pa55word-0f-some-length", 5).expect("bcrypt");
    std::fs::write(&path, format!("bench:{hash}\n")).expect("htpasswd");
    let auth = std::sync::Arc::new(Authenticator::new(path, Duration::from_secs(300), 10_000));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(auth.authenticate(Some(&header)))
        .expect("first check verifies bcrypt");
    c.bench_function(
        "proxy/authenticate, warm cache (bcrypt cost 5 entry)",
        |b| b.iter(|| rt.block_on(auth.authenticate(Some(std::hint::black_box(&header))))),
    );
}

fn user_agent(c: &mut Criterion) {
    let filter = UserAgentFilter::new(&[DEFAULT_UA_RULE]).expect("rule");
    c.bench_function("proxy/user-agent filter (docker 20.10 UA)", |b| {
        b.iter(|| filter.refuses(std::hint::black_box(DOCKER_UA)))
    });
}

/// An access file of 100 rules whose last one is the first to match `bench/small` (literal names, prefixes and
/// general globs before it, a third each), as the side-by-side benchmark uses.
fn hundred_rules() -> String {
    let mut text = String::from("[groups]\ndevs = [\"alice\", \"bob\"]\n");
    for i in 0..99 {
        let glob = match i % 3 {
            0 => format!("team{i:03}/app"),
            1 => format!("team{i:03}/**"),
            _ => format!("*-team{i:03}/**/app-?"),
        };
        text += &format!("[[rule]]\nrepos = \"{glob}\"\npull = [\"@devs\"]\npush = [\"@devs\"]\n");
    }
    text + "[[rule]]\nrepos = \"**\"\npull = [\"*\"]\npush = [\"*\"]\n"
}

fn access_rules(c: &mut Criterion) {
    let rules = berth_proxy::authz::Rules::parse(&hundred_rules()).expect("rules");
    let method = http::Method::HEAD;
    let uri: http::Uri = "/v2/bench/small/blobs/sha256:4355a46b19d348dc2f57c046f8ef63d4538ebb936000f3c9ee954a27460dd865"
        .parse()
        .expect("uri");
    c.bench_function(
        "proxy/access rules: decide, 100 rules, last one matches",
        |b| {
            b.iter(|| {
                rules.allows(
                    Some(std::hint::black_box("carol")),
                    std::hint::black_box("bench/small"),
                    berth_proxy::authz::Action::Pull,
                )
            })
        },
    );
    c.bench_function("proxy/access rules: map a HEAD blob request", |b| {
        b.iter(|| berth_proxy::authz::Access::of(&method, std::hint::black_box(&uri)))
    });
}

fn docker_request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("registry.example:5043"));
    h.insert("user-agent", HeaderValue::from_static(DOCKER_UA));
    h.insert(
        "authorization",
        HeaderValue::from_static("Basic YmVuY2g6YmVuY2gtUGE1NXdvcmQtMGYtc29tZS1sZW5ndGg="),
    );
    h.insert(
        "accept",
        HeaderValue::from_static(
            "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
        ),
    );
    h.insert("accept-encoding", HeaderValue::from_static("gzip"));
    h.insert("connection", HeaderValue::from_static("keep-alive"));
    h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
    h
}

fn header_rewrite(c: &mut Criterion) {
    let headers = docker_request_headers();
    let client = ClientContext {
        peer_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
        peer_trusted: false,
    };
    let host = HeaderValue::from_static("registry.example:5043");
    c.bench_function("proxy/rewrite request headers (docker pull request)", |b| {
        b.iter_batched(
            || headers.clone(),
            |mut h| {
                rewrite_request_headers(&mut h, Some(host.clone()), &client, Some("bench"), false);
                h
            },
            BatchSize::SmallInput,
        )
    });
}

fn hashing(c: &mut Criterion) {
    let chunk = vec![0x5au8; 1 << 20];
    let mut g = c.benchmark_group("registry/digest of a stream");
    g.throughput(Throughput::Bytes(16 << 20));
    g.sample_size(20);
    for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
        g.bench_function(format!("{}, 16 x 1 MiB", algorithm.as_str()), |b| {
            b.iter(|| {
                let mut h = Hasher::new(algorithm);
                for _ in 0..16 {
                    h.update(&chunk);
                }
                h.finish()
            })
        });
    }
    // Reference point: the same stream through ring's SHA-256/512 (OpenSSL's assembly, which has AVX2 and
    // SHA-NI paths), the crate rustls already brings in.
    for (name, alg) in [
        ("sha256", &ring::digest::SHA256),
        ("sha512", &ring::digest::SHA512),
    ] {
        g.bench_function(
            format!("{name} (reference: ring::digest), 16 x 1 MiB"),
            |b| {
                b.iter(|| {
                    let mut ctx = ring::digest::Context::new(alg);
                    for _ in 0..16 {
                        ctx.update(&chunk);
                    }
                    ctx.finish()
                })
            },
        );
    }
    g.finish();
}

fn parsing(c: &mut Criterion) {
    let digest = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b";
    c.bench_function("registry/parse digest", |b| {
        b.iter(|| Digest::parse(std::hint::black_box(digest)))
    });
    c.bench_function("registry/parse repository name", |b| {
        b.iter(|| RepoName::from_str(std::hint::black_box("team/backend/api-server")))
    });
}

fn registry_requests(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = berth_registry::Config::default();
    config.storage.root_directory = dir.path().to_path_buf();
    let app = berth_registry::build(config).expect("registry app");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(berth_registry::server::serve(listener, app, async move {
        let _ = stop_rx.await;
    }));

    let mut sender = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        sender
    });

    // One blob and one tag to ask for.
    let blob = Bytes::from_static(b"berth bench blob");
    let digest = Digest::sha256_of(&blob);
    rt.block_on(async {
        let req = Request::post(format!("/v2/bench/app/blobs/uploads/?digest={digest}"))
            .header("host", addr.to_string())
            .body(http_body_util::Full::new(blob.clone()).boxed())
            .expect("request");
        sender.ready().await.expect("connection ready");
        let resp = sender.send_request(req).await.expect("upload");
        assert_eq!(resp.status(), 201, "monolithic upload");
        resp.into_body().collect().await.expect("body");
    });

    let cases = [
        ("GET /v2/", Method::GET, "/v2/".to_string()),
        (
            "HEAD blob",
            Method::HEAD,
            format!("/v2/bench/app/blobs/{digest}"),
        ),
        (
            "GET _catalog",
            Method::GET,
            "/v2/_catalog?n=100".to_string(),
        ),
    ];
    let mut g = c.benchmark_group("registry/request round trip (in-process, HTTP/1.1, loopback)");
    for (name, method, path) in cases {
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let req = Request::builder()
                        .method(method.clone())
                        .uri(path.as_str())
                        .header("host", addr.to_string())
                        .body(Empty::<Bytes>::new().boxed())
                        .expect("request");
                    sender.ready().await.expect("connection ready");
                    let resp = sender.send_request(req).await.expect("response");
                    let status = resp.status();
                    resp.into_body().collect().await.expect("body");
                    status
                })
            })
        });
    }
    g.finish();
    let _ = stop_tx.send(());
}

criterion_group!(
    benches,
    credentials,
    user_agent,
    access_rules,
    header_rewrite,
    hashing,
    parsing,
    registry_requests
);
criterion_main!(benches);

//! The metadata cache on a real S3 endpoint (moto_server): repeated `HEAD`s of blobs and `GET`s of manifests are
//! answered without a request to the bucket; the registry's own changes (a tag moved, a manifest, a tag or a
//! blob deleted, a collection) show at once, however long the TTL; another replica's show within the TTL, or at
//! once when the replicas share the cache in a real redis-server (also over TLS); Redis down or silent fails
//! no request.
//!
//! moto_server and redis-server are installed by `scripts/test.sh`; a missing tool fails the test.

mod common;

use std::time::{Duration, Instant};

use common::s3::Moto;
use common::Registry;
use http::StatusCode;

fn start(moto: &Moto, bucket: &str, extra: &[(&str, &str)]) -> (Registry, Registry) {
    let env = moto.registry_env(bucket, "r");
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(&[
        ("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0"),
        ("REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED", "true"),
        ("REGISTRY_STORAGE_DELETE_ENABLED", "true"),
        ("REGISTRY_HEALTH_STORAGEDRIVER_ENABLED", "false"),
    ]);
    all.extend_from_slice(extra);
    let mut reg = Registry::start(&all);
    let line = reg.next_line();
    let debug = Registry::remote(
        line.strip_prefix("berth-registry debug on ")
            .unwrap_or_else(|| panic!("unexpected second line {line:?}")),
    );
    (reg, debug)
}

async fn metrics(debug: &Registry) -> String {
    let r = debug.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    String::from_utf8(r.body.to_vec()).unwrap()
}

/// Requests berth made to the storage so far (every action).
fn storage_requests(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("registry_storage_action_seconds_count{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn hits(text: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix("berth_registry_cache_requests_total{result=\"hit\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn manifest_digest(reg: &Registry, repo: &str, reference: &str) -> Option<String> {
    let r = reg
        .send(
            http::Method::GET,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("accept", "application/vnd.oci.image.manifest.v1+json")],
            common::full(bytes::Bytes::new()),
        )
        .await;
    match r.status {
        StatusCode::OK => Some(r.header("docker-content-digest").unwrap().to_string()),
        StatusCode::NOT_FOUND => None,
        s => panic!("GET manifest {repo}:{reference}: {s} {:?}", r.body),
    }
}

async fn blob_there(reg: &Registry, repo: &str, d: &str) -> bool {
    match reg.head(&format!("/v2/{repo}/blobs/{d}")).await.status {
        StatusCode::OK => true,
        StatusCode::NOT_FOUND => false,
        s => panic!("HEAD blob: {s}"),
    }
}

#[tokio::test]
async fn on_s3_repeated_reads_skip_the_bucket_and_own_changes_show_at_once() {
    let moto = Moto::start();
    moto.create_bucket("cache");
    // A TTL far longer than the test: whatever shows at once shows because the write invalidated it.
    let (reg, debug) = start(
        &moto,
        "cache",
        &[
            ("BERTH_GC_INTERVAL", "0"),
            ("BERTH_STORAGE_CACHE_TTL", "1h"),
        ],
    );
    let (first, _) = reg.push_image("app", "v1", &[b"layer of the first"]).await;
    let layer = common::sha256(b"layer of the first");
    assert!(blob_there(&reg, "app", &layer).await);
    assert_eq!(
        manifest_digest(&reg, "app", "v1").await,
        Some(first.clone())
    );
    assert_eq!(
        manifest_digest(&reg, "app", &first).await,
        Some(first.clone())
    );

    let before = metrics(&debug).await;
    for _ in 0..5 {
        assert!(blob_there(&reg, "app", &layer).await);
        assert_eq!(
            manifest_digest(&reg, "app", "v1").await,
            Some(first.clone())
        );
    }
    let after = metrics(&debug).await;
    assert_eq!(
        storage_requests(&after),
        storage_requests(&before),
        "repeated HEADs and GETs went to the bucket"
    );
    // Two lookups per HEAD (link, size), three per GET by tag (tag, revision, bytes).
    assert_eq!(hits(&after) - hits(&before), 25.0);

    // The tag moves: the next pull sees the new manifest.
    let (second, _) = reg.push_image("app", "v1", &[b"layer of the second"]).await;
    assert_ne!(first, second);
    assert_eq!(
        manifest_digest(&reg, "app", "v1").await,
        Some(second.clone())
    );

    // A manifest deleted by digest is gone at once (its revision link was cached).
    let r = reg.delete(&format!("/v2/app/manifests/{first}")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(manifest_digest(&reg, "app", &first).await, None);

    // A blob deleted from the repository.
    let r = reg.delete(&format!("/v2/app/blobs/{layer}")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(!blob_there(&reg, "app", &layer).await);

    // A tag deleted.
    let r = reg.delete("/v2/app/manifests/v1").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(manifest_digest(&reg, "app", "v1").await, None);
    assert_eq!(manifest_digest(&reg, "app", &second).await, Some(second));
}

fn field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .and_then(|n| n.parse().ok())
}

/// Whether the collections logged so far freed blobs and the last one left none live.
fn everything_collected(log: &std::path::Path) -> bool {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let done: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("garbage collection done"))
        .collect();
    done.iter()
        .any(|l| field(l, "blobs").is_some_and(|n| n > 0))
        && done.last().and_then(|l| field(l, "live")) == Some(0)
}

#[tokio::test]
async fn on_s3_what_a_collection_removes_is_gone_from_the_cache_at_once() {
    let moto = Moto::start();
    moto.create_bucket("cache-gc");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("registry.log");
    let env = moto.registry_env("cache-gc", "");
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(&[
        ("REGISTRY_STORAGE_DELETE_ENABLED", "true"),
        ("REGISTRY_HEALTH_STORAGEDRIVER_ENABLED", "false"),
        ("BERTH_GC_INTERVAL", "1s"),
        // Long enough for the push to finish (a grace of 0 sweeps a layer before its manifest arrives).
        ("BERTH_GC_GRACE", "3s"),
        ("BERTH_STORAGE_CACHE_TTL", "1h"),
        ("REGISTRY_LOG_LEVEL", "info"),
    ]);
    let reg = Registry::start_logged(&dir.path().join("unused"), &all, Some(&log));
    let (digest, _) = reg
        .push_image("gone", "v1", &[b"only this image's layer"])
        .await;
    let layer = common::sha256(b"only this image's layer");
    assert!(blob_there(&reg, "gone", &layer).await);
    assert_eq!(
        manifest_digest(&reg, "gone", &digest).await,
        Some(digest.clone())
    );
    let r = reg.delete(&format!("/v2/gone/manifests/{digest}")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // The layer is still linked (deletes remove the manifest's links only) until a collection runs.
    assert!(blob_there(&reg, "gone", &layer).await);
    // The only blobs here are this image's (its manifest, config and layer): wait until collections have
    // removed them all (each once older than the grace).
    let deadline = Instant::now() + Duration::from_secs(120);
    while !everything_collected(&log) {
        assert!(
            Instant::now() < deadline,
            "no collection freed the image's blobs: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !blob_there(&reg, "gone", &layer).await,
        "a collected blob is still answered (from the cache): {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[tokio::test]
async fn on_s3_another_replicas_tag_push_shows_within_the_ttl() {
    let moto = Moto::start();
    moto.create_bucket("cache-two");
    let extra = [
        ("BERTH_GC_INTERVAL", "0"),
        ("BERTH_STORAGE_CACHE_TTL", "1s"),
    ];
    let (a, _) = start(&moto, "cache-two", &extra);
    let (b, _) = start(&moto, "cache-two", &extra);
    let (first, _) = a.push_image("shared", "latest", &[b"first"]).await;
    assert_eq!(
        manifest_digest(&b, "shared", "latest").await,
        Some(first.clone())
    );
    let (second, _) = a.push_image("shared", "latest", &[b"second"]).await;
    let pushed = Instant::now();
    loop {
        let seen = manifest_digest(&b, "shared", "latest").await;
        if seen.as_deref() == Some(second.as_str()) {
            break;
        }
        assert_eq!(seen.as_deref(), Some(first.as_str()));
        // The bound is the TTL; the margin is for a loaded machine.
        assert!(
            pushed.elapsed() < Duration::from_secs(10),
            "replica B still serves the old tag"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- Redis, shared by replicas ----

/// A real redis-server (installed by `scripts/test.sh`), as the operator guide runs it: no persistence,
/// bounded memory, `allkeys-lru`.
struct RedisServer {
    child: std::process::Child,
    port: u16,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        RedisServer::start_on(port)
    }

    fn start_on(port: u16) -> RedisServer {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--maxmemory", "64mb"])
            .args(["--maxmemory-policy", "allkeys-lru"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/install-test-deps.sh)");
        let server = RedisServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.ping().is_none() {
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A raw command with no arguments' quoting needs; the first reply line.
    fn command(&self, cmd: &str) -> Option<String> {
        use std::io::{BufRead, Write};
        let s = std::net::TcpStream::connect(self.addr()).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        (&s).write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
        let mut line = String::new();
        std::io::BufReader::new(&s).read_line(&mut line).ok()?;
        Some(line.trim_end().to_string())
    }

    fn ping(&self) -> Option<String> {
        self.command("PING").filter(|l| l == "+PONG")
    }

    fn keys(&self) -> usize {
        self.command("DBSIZE")
            .and_then(|l| l.strip_prefix(':').and_then(|n| n.parse().ok()))
            .expect("DBSIZE")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).filter(|v| v.starts_with(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Reads `tag` and `digest` of `repo` (when given) and HEADs `layer`, checking what each answers, until a
/// round of them costs no storage request: until the keys are cached (a key written in the last seconds is
/// read from the bucket while the write's tombstone lasts). Returns the shared hits of that last round.
async fn settle(
    reg: &Registry,
    debug: &Registry,
    repo: &str,
    tag: Option<(&str, &str)>,
    digest: Option<&str>,
    layer: Option<&str>,
) -> f64 {
    let shared = "berth_registry_cache_requests_total{result=\"shared_hit\"}";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let before = metrics(debug).await;
        if let Some((t, want)) = tag {
            assert_eq!(manifest_digest(reg, repo, t).await.as_deref(), Some(want));
        }
        if let Some(d) = digest {
            assert_eq!(manifest_digest(reg, repo, d).await.as_deref(), Some(d));
        }
        if let Some(l) = layer {
            assert!(blob_there(reg, repo, l).await);
        }
        let after = metrics(debug).await;
        if storage_requests(&after) == storage_requests(&before) {
            return sample(&after, shared) - sample(&before, shared);
        }
        assert!(Instant::now() < deadline, "reads keep going to the bucket");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn on_s3_two_replicas_sharing_redis_see_each_others_changes_at_once() {
    let moto = Moto::start();
    moto.create_bucket("cache-redis");
    let redis = RedisServer::start();
    let addr = redis.addr();
    let extra = [
        ("BERTH_GC_INTERVAL", "0"),
        ("REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR", "redis"),
        ("REGISTRY_REDIS_ADDR", addr.as_str()),
        // Generous for a loaded test machine: a timeout here would make the test pass without Redis.
        ("REGISTRY_REDIS_READTIMEOUT", "2s"),
        ("REGISTRY_REDIS_WRITETIMEOUT", "2s"),
    ];
    let (a, a_debug) = start(&moto, "cache-redis", &extra);
    let (b, b_debug) = start(&moto, "cache-redis", &extra);
    let (first, _) = a.push_image("app", "v1", &[b"first layer"]).await;
    let layer = common::sha256(b"first layer");
    // B's reads end up answered by Redis (links, tag) and its memory (sizes, manifest bytes), not the bucket:
    // tag link + revision link for the GET by tag, revision link for the GET by digest, layer link for the HEAD.
    let hits = settle(
        &b,
        &b_debug,
        "app",
        Some(("v1", &first)),
        Some(&first),
        Some(&layer),
    )
    .await;
    assert_eq!(hits, 4.0);
    assert!(redis.keys() > 0);

    // Each change made through A shows through B at once, though B had the old answer cached.
    let (second, _) = a.push_image("app", "v1", &[b"second layer"]).await;
    assert_eq!(manifest_digest(&b, "app", "v1").await, Some(second.clone()));

    settle(&b, &b_debug, "app", None, Some(&second), Some(&layer)).await;
    let r = a.delete(&format!("/v2/app/blobs/{layer}")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(!blob_there(&b, "app", &layer).await);

    settle(
        &b,
        &b_debug,
        "app",
        Some(("v1", &second)),
        Some(&second),
        None,
    )
    .await;
    let r = a.delete(&format!("/v2/app/manifests/{second}")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(manifest_digest(&b, "app", &second).await, None);
    assert_eq!(manifest_digest(&b, "app", "v1").await, None);

    // And the other way round.
    let (third, _) = b.push_image("app", "v2", &[b"third layer"]).await;
    settle(&a, &a_debug, "app", Some(("v2", &third)), None, None).await;
    let (fourth, _) = b.push_image("app", "v2", &[b"fourth layer"]).await;
    assert_eq!(manifest_digest(&a, "app", "v2").await, Some(fourth));
}

#[tokio::test]
async fn redis_down_or_silent_never_fails_a_request() {
    let moto = Moto::start();
    moto.create_bucket("cache-down");
    let redis = RedisServer::start();
    let port = redis.port;
    let addr = redis.addr();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("registry.log");
    let env = moto.registry_env("cache-down", "");
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(&[
        ("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0"),
        ("REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED", "true"),
        ("REGISTRY_HEALTH_STORAGEDRIVER_ENABLED", "false"),
        ("BERTH_GC_INTERVAL", "0"),
        ("REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR", "redis"),
        ("REGISTRY_REDIS_ADDR", addr.as_str()),
        ("REGISTRY_LOG_LEVEL", "info"),
    ]);
    let mut reg = Registry::start_logged(&dir.path().join("unused"), &all, Some(&log));
    let line = reg.next_line();
    let debug = Registry::remote(line.strip_prefix("berth-registry debug on ").unwrap());
    let (first, _) = reg.push_image("app", "v1", &[b"a layer"]).await;
    let layer = common::sha256(b"a layer");
    assert_eq!(
        manifest_digest(&reg, "app", "v1").await,
        Some(first.clone())
    );

    // Redis goes away: every request still succeeds, from the bucket.
    drop(redis);
    for i in 0..10 {
        assert_eq!(
            manifest_digest(&reg, "app", "v1").await,
            Some(first.clone())
        );
        assert!(blob_there(&reg, "app", &layer).await);
        let tag = format!("down{i}");
        reg.push_image("app", &tag, &[format!("layer {i}").as_bytes()])
            .await;
        assert!(manifest_digest(&reg, "app", &tag).await.is_some());
    }
    let text = metrics(&debug).await;
    assert!(sample(&text, "berth_registry_redis_errors_total") >= 3.0);
    assert_eq!(sample(&text, "berth_registry_redis_up"), 0.0);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("the shared cache is skipped"),
        "no log line says Redis is skipped: {logged}"
    );

    // A Redis that accepts connections and never answers: lookups time out (the breaker lets one through
    // each second) and the bucket answers every request.
    let silent = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let errors = sample(&text, "berth_registry_redis_errors_total");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert_eq!(
            manifest_digest(&reg, "app", "v1").await,
            Some(first.clone())
        );
        assert!(blob_there(&reg, "app", &layer).await);
        let now = sample(&metrics(&debug).await, "berth_registry_redis_errors_total");
        if now > errors {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the silent redis was never tried"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    holder.abort();
    let _ = holder.await;

    // Redis comes back on the same address: the breaker lets a request through and the cache is used again.
    let redis = RedisServer::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert_eq!(
            manifest_digest(&reg, "app", "v1").await,
            Some(first.clone())
        );
        let text = metrics(&debug).await;
        if sample(&text, "berth_registry_redis_up") == 1.0 && redis.keys() > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "redis is not used again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs openssl with `args` (split at spaces) in `dir`.
fn openssl(dir: &std::path::Path, args: &str) {
    let out = std::process::Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn redis_cli(port: u16, ca: &std::path::Path, password: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(ca)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--no-auth-warning",
            "-a",
            password,
        ])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test]
async fn the_shared_cache_reaches_redis_over_tls_with_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A CA and a server certificate for 127.0.0.1, made the way an operator would.
    for key in ["ca.key", "redis.key"] {
        openssl(
            d,
            &format!("ecparam -name prime256v1 -genkey -noout -out {key}"),
        );
    }
    openssl(
        d,
        "req -x509 -new -key ca.key -subj /CN=berth-test-CA -days 2 -out ca.crt",
    );
    openssl(d, "req -new -key redis.key -subj /CN=redis -out redis.csr");
    std::fs::write(d.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        d,
        "x509 -req -in redis.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out redis.crt",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = std::process::Command::new("redis-server")
        .current_dir(d)
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            "redis.crt",
            "--tls-key-file",
            "redis.key",
        ])
        .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"])
        .args([
            "--requirepass",
            "s3cret pass",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    let ca = d.join("ca.crt");
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis_cli(port, &ca, "s3cret pass", &["PING"]).as_deref() != Some("PONG") {
        assert!(
            Instant::now() < deadline,
            "redis-server over TLS did not answer"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let moto = Moto::start();
    moto.create_bucket("cache-tls");
    let addr = format!("127.0.0.1:{port}");
    let ca_path = ca.to_string_lossy().to_string();
    let extra = [
        ("BERTH_GC_INTERVAL", "0"),
        ("REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR", "redis"),
        ("REGISTRY_REDIS_ADDR", addr.as_str()),
        ("REGISTRY_REDIS_PASSWORD", "s3cret pass"),
        ("REGISTRY_REDIS_DB", "3"),
        ("REGISTRY_REDIS_TLS_ENABLED", "true"),
        ("BERTH_REDIS_TLS_CAFILE", ca_path.as_str()),
        ("REGISTRY_REDIS_READTIMEOUT", "2s"),
        ("REGISTRY_REDIS_WRITETIMEOUT", "2s"),
        ("REGISTRY_REDIS_DIALTIMEOUT", "2s"),
    ];
    let (reg, debug) = start(&moto, "cache-tls", &extra);
    let (digest, _) = reg.push_image("tls", "v1", &[b"over tls"]).await;
    assert_eq!(manifest_digest(&reg, "tls", "v1").await, Some(digest));
    let text = metrics(&debug).await;
    assert_eq!(sample(&text, "berth_registry_redis_errors_total"), 0.0);
    assert_eq!(sample(&text, "berth_registry_redis_up"), 1.0);
    // The push's tombstones and the pull's lookups reached database 3 over TLS, authenticated.
    let keys: usize = redis_cli(port, &ca, "s3cret pass", &["-n", "3", "DBSIZE"])
        .and_then(|n| n.parse().ok())
        .expect("DBSIZE");
    assert!(keys > 0, "nothing reached redis");
    let _ = server.kill();
    let _ = server.wait();
}

#[tokio::test]
async fn on_s3_what_one_replicas_collection_removes_is_gone_from_the_shared_cache_at_once() {
    let moto = Moto::start();
    moto.create_bucket("cache-redis-gc");
    let redis = RedisServer::start();
    let addr = redis.addr();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("collector.log");
    let shared = [
        ("REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR", "redis"),
        ("REGISTRY_REDIS_ADDR", addr.as_str()),
        ("REGISTRY_REDIS_READTIMEOUT", "2s"),
        ("REGISTRY_REDIS_WRITETIMEOUT", "2s"),
    ];
    // A collects every second; the grace outlasts B's caching below, so nothing is collected before.
    let env = moto.registry_env("cache-redis-gc", "r");
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(&shared);
    all.extend_from_slice(&[
        ("REGISTRY_STORAGE_DELETE_ENABLED", "true"),
        ("REGISTRY_HEALTH_STORAGEDRIVER_ENABLED", "false"),
        ("BERTH_GC_INTERVAL", "1s"),
        ("BERTH_GC_GRACE", "30s"),
        ("REGISTRY_LOG_LEVEL", "info"),
    ]);
    let a = Registry::start_logged(&dir.path().join("unused"), &all, Some(&log));
    let mut extra = shared.to_vec();
    extra.push(("BERTH_GC_INTERVAL", "0"));
    let (b, b_debug) = start(&moto, "cache-redis-gc", &extra);
    let (digest, _) = a.push_image("gone", "v1", &[b"collected layer"]).await;
    let layer = common::sha256(b"collected layer");
    let r = a.delete(&format!("/v2/gone/manifests/{digest}")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // The layer stays linked until a collection: B caches that answer in Redis.
    assert!(blob_there(&a, "gone", &layer).await);
    settle(&b, &b_debug, "gone", None, None, Some(&layer)).await;
    assert!(
        !everything_collected(&log),
        "collected before B cached the layer: the grace is too short for this machine"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !everything_collected(&log) {
        assert!(Instant::now() < deadline, "no collection removed the image");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !blob_there(&b, "gone", &layer).await,
        "B still answers a blob A's collection removed"
    );
}

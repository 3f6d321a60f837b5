//! Notifications against a real HTTP receiver started here: registry:2-shaped envelopes for push, pull, mount
//! and delete, in order; a receiver that refuses for a while loses nothing; events pending when the registry
//! is killed with SIGKILL are delivered after the restart; a full spool drops the oldest events and counts
//! them. The envelope is parsed by a strict struct definition written from registry:2's notifications
//! documentation (every field it names, nothing else).

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{full, sha256, Registry};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;

// ---- registry:2's envelope, from its documentation (docs/notifications.md: "Envelope", "Event") ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    events: Vec<Event>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Event {
    id: String,
    timestamp: String,
    action: String,
    target: Target,
    request: RequestRecord,
    actor: Actor,
    source: Source,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Target {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    length: u64,
    #[serde(default)]
    repository: String,
    #[serde(default)]
    from_repository: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    references: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    size: u64,
    digest: String,
    #[serde(default)]
    platform: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestRecord {
    id: String,
    #[serde(default)]
    addr: String,
    #[serde(default)]
    host: String,
    method: String,
    useragent: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Actor {
    #[serde(default)]
    name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Source {
    addr: String,
    #[serde(rename = "instanceID")]
    instance_id: String,
}

// ---- the receiver ----

/// An HTTP endpoint that records the events it accepts; while `refuse` is set it answers 503 to everything.
struct Receiver {
    addr: std::net::SocketAddr,
    events: Arc<Mutex<Vec<Event>>>,
    refuse: Arc<AtomicBool>,
    refused: Arc<AtomicU32>,
    changed: Arc<tokio::sync::Notify>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let refuse = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU32::new(0));
        let changed = Arc::new(tokio::sync::Notify::new());
        let (e, r, n, c) = (
            events.clone(),
            refuse.clone(),
            refused.clone(),
            changed.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (e, r, n, c) = (e.clone(), r.clone(), n.clone(), c.clone());
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (e, r, n, c) = (e.clone(), r.clone(), n.clone(), c.clone());
                        async move {
                            let ct = req
                                .headers()
                                .get("content-type")
                                .map(|v| v.to_str().unwrap().to_string());
                            let auth = req
                                .headers()
                                .get("authorization")
                                .map(|v| v.to_str().unwrap().to_string());
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let status = if r.load(Ordering::SeqCst) {
                                n.fetch_add(1, Ordering::SeqCst);
                                StatusCode::SERVICE_UNAVAILABLE
                            } else {
                                assert_eq!(
                                    ct.as_deref(),
                                    Some("application/vnd.docker.distribution.events.v1+json")
                                );
                                assert_eq!(auth.as_deref(), Some("Bearer hook-secret"));
                                let env: Envelope =
                                    serde_json::from_slice(&body).unwrap_or_else(|err| {
                                        panic!(
                                            "not registry:2's envelope: {err}: {}",
                                            String::from_utf8_lossy(&body)
                                        )
                                    });
                                e.lock().unwrap().extend(env.events);
                                StatusCode::OK
                            };
                            c.notify_waiters();
                            let mut resp = Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() = status;
                            Ok::<_, Infallible>(resp)
                        }
                    });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        Receiver {
            addr,
            events,
            refuse,
            refused,
            changed,
        }
    }

    fn count(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    /// Waits (at most 60 s) until `cond` holds, woken by each request the receiver answers.
    async fn wait_until(&self, what: &str, cond: impl Fn(&Receiver) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let woken = self.changed.notified();
            if cond(self) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}: {} events",
                self.count()
            );
            let _ = tokio::time::timeout(left, woken).await;
        }
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
}

fn config(dir: &std::path::Path, receiver: &Receiver, extra: &str) -> std::path::PathBuf {
    let path = dir.join("registry.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[storage]
delete_enabled = true
[notifications.events]
includereferences = true
[[notifications.endpoints]]
name = "hook"
url = "http://{}/events"
headers = {{ Authorization = ["Bearer hook-secret"] }}
timeout = "2s"
threshold = 2
backoff = "100ms"
[[notifications.endpoints]]
name = "off"
url = "http://127.0.0.1:9/never"
disabled = true
{extra}
"#,
            receiver.addr
        ),
    )
    .unwrap();
    path
}

const USER: (&str, &str) = ("x-forwarded-user", "alice");
const CLIENT: (&str, &str) = ("x-forwarded-for", "10.9.8.7, 127.0.0.1");

/// Pushes a blob as berth-proxy forwards it (with the user and client headers); returns its digest.
async fn push_blob(reg: &Registry, repo: &str, data: &[u8]) -> String {
    let d = sha256(data);
    let r = reg
        .send(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            &[USER, CLIENT, ("user-agent", "docker/27.0 go/1.22")],
            full(Bytes::copy_from_slice(data)),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    d
}

/// A request without a body, as berth-proxy forwards one for alice; the status.
async fn as_alice(reg: &Registry, method: Method, path: &str) -> StatusCode {
    reg.send(method, path, &[USER], full(Bytes::new()))
        .await
        .status
}

/// The environment of a registry notifying per `cfg`, with metrics on the debug listener.
fn notifying(cfg: &std::path::Path) -> Vec<(&str, &str)> {
    vec![
        ("REGISTRY_CONFIGURATION_PATH", cfg.to_str().unwrap()),
        ("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0"),
        ("REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED", "true"),
        ("BERTH_STORAGE_MIN_FREE", "0"),
    ]
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls the metrics until `ok` holds for the value of the sample named by `line_start` (at most 30 s).
async fn metric_becomes(debug: &Registry, line_start: &str, ok: impl Fn(f64) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = String::from_utf8(debug.get("/metrics").await.body.to_vec()).unwrap();
        let v = metric(&m, line_start);
        if ok(v) {
            return m;
        }
        assert!(Instant::now() < deadline, "{line_start} stays at {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn debug_of(reg: &mut Registry) -> Registry {
    let line = reg.next_line();
    let addr = line
        .strip_prefix("berth-registry debug on ")
        .unwrap_or_else(|| panic!("unexpected second line {line:?}"));
    Registry::remote(addr)
}

#[tokio::test]
async fn events_are_registry_2_shaped_in_order_and_survive_refusals_and_sigkill() {
    let receiver = Receiver::start().await;
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("data");
    let cfg = config(work.path(), &receiver, "");
    let env = notifying(&cfg);
    let mut reg = Registry::start_at(&root, &env);
    let debug = debug_of(&mut reg);

    // Push an image, pull it, mount a layer elsewhere, delete a tag and a manifest.
    let config_blob =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = b"layer bytes".as_slice();
    let cd = push_blob(&reg, "team/app", config_blob).await;
    let ld = push_blob(&reg, "team/app", layer).await;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType":"application/vnd.oci.image.config.v1+json","digest":cd,"size":config_blob.len()},
        "layers": [{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":ld,"size":layer.len()}],
    }))
    .unwrap();
    let md = sha256(&manifest);
    let r = reg
        .send(
            Method::PUT,
            "/v2/team/app/manifests/v1",
            &[
                USER,
                CLIENT,
                ("content-type", "application/vnd.oci.image.manifest.v1+json"),
                ("host", "registry.example:5043"),
                ("x-forwarded-proto", "https"),
            ],
            full(manifest.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = reg
        .send(
            Method::GET,
            "/v2/team/app/manifests/v1",
            &[
                USER,
                ("accept", "application/vnd.oci.image.manifest.v1+json"),
            ],
            full(Bytes::new()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        as_alice(&reg, Method::GET, &format!("/v2/team/app/blobs/{ld}")).await,
        StatusCode::OK
    );
    assert_eq!(
        as_alice(
            &reg,
            Method::POST,
            &format!("/v2/other/blobs/uploads/?mount={ld}&from=team/app")
        )
        .await,
        StatusCode::CREATED
    );
    // A manifest by digest too, so a tag delete leaves something to delete by digest.
    assert_eq!(
        as_alice(&reg, Method::DELETE, "/v2/team/app/manifests/v1").await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        as_alice(
            &reg,
            Method::DELETE,
            &format!("/v2/team/app/manifests/{md}")
        )
        .await,
        StatusCode::ACCEPTED
    );
    // Failures make no events.
    assert_eq!(
        as_alice(&reg, Method::GET, "/v2/team/app/manifests/nope").await,
        StatusCode::NOT_FOUND
    );

    receiver.wait_until("8 events", |r| r.count() >= 8).await;
    let events = receiver.events();
    let summary: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            (
                e.action.clone(),
                e.target.repository.clone(),
                e.target.digest.clone(),
            )
        })
        .collect();
    let s = |a: &str, r: &str, d: &str| (a.to_string(), r.to_string(), d.to_string());
    assert_eq!(
        summary,
        vec![
            s("push", "team/app", &cd),
            s("push", "team/app", &ld),
            s("push", "team/app", &md),
            s("pull", "team/app", &md),
            s("pull", "team/app", &ld),
            s("mount", "other", &ld),
            s("delete", "team/app", ""),
            s("delete", "team/app", &md),
        ]
    );
    let push = &events[2];
    assert_eq!(
        push.target.media_type,
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(push.target.size, manifest.len() as u64);
    assert_eq!(push.target.length, manifest.len() as u64);
    assert_eq!(push.target.tag, "v1");
    assert_eq!(
        push.target.url,
        format!("https://registry.example:5043/v2/team/app/manifests/{md}")
    );
    let refs: Vec<&str> = push
        .target
        .references
        .iter()
        .map(|d| d.digest.as_str())
        .collect();
    assert_eq!(refs, vec![cd.as_str(), ld.as_str()]);
    assert_eq!(push.target.references[1].size, layer.len() as u64);
    assert_eq!(
        push.target.references[1].media_type,
        "application/vnd.oci.image.layer.v1.tar"
    );
    assert!(push.target.references[0].platform.is_none());
    assert_eq!(push.request.method, "PUT");
    assert_eq!(push.request.addr, "10.9.8.7");
    assert_eq!(push.request.host, "registry.example:5043");
    assert!(!push.request.id.is_empty());
    assert_eq!(events[0].request.useragent, "docker/27.0 go/1.22");
    assert_eq!(events[0].target.media_type, "application/octet-stream");
    assert_eq!(events[0].target.size, config_blob.len() as u64);
    assert!(events.iter().all(|e| e.actor.name == "alice"), "{events:?}");
    assert!(events
        .iter()
        .all(|e| e.source.instance_id == events[0].source.instance_id));
    assert!(events[0]
        .source
        .addr
        .ends_with(&format!(":{}", reg.addr.rsplit(':').next().unwrap())));
    let ids: std::collections::HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "event ids are unique");
    assert!(events
        .iter()
        .all(|e| e.timestamp.contains('T') && e.timestamp.ends_with('Z')));
    assert_eq!(events[3].target.tag, "v1", "a pull by tag names the tag");
    assert_eq!(events[5].target.from_repository, "team/app");
    assert_eq!(events[6].target.tag, "v1");
    let m = metric_becomes(
        &debug,
        "registry_notifications_events_total{endpoint=\"hook\",type=\"Successes\"}",
        |v| v >= 8.0,
    )
    .await;
    assert_eq!(
        metric(
            &m,
            "registry_notifications_events_total{endpoint=\"hook\",type=\"Successes\"}"
        ),
        8.0
    );
    assert!(
        metric(
            &m,
            "registry_notifications_status_total{code=\"200 OK\",endpoint=\"hook\"}"
        ) >= 1.0
    );
    assert!(
        !m.contains("endpoint=\"off\""),
        "a disabled endpoint is not started"
    );

    // The receiver refuses: events wait in the spool, in order, and the pushes do not wait for them.
    receiver.refuse.store(true, Ordering::SeqCst);
    let mut pushed = Vec::new();
    for i in 0..5 {
        pushed.push(push_blob(&reg, "team/later", format!("blob {i}").as_bytes()).await);
    }
    receiver
        .wait_until("refusals past the threshold", |r| {
            r.refused.load(Ordering::SeqCst) >= 3
        })
        .await;
    let m = String::from_utf8(debug.get("/metrics").await.body.to_vec()).unwrap();
    assert_eq!(
        metric(&m, "registry_notifications_pending{endpoint=\"hook\"}"),
        5.0
    );
    assert!(
        metric(
            &m,
            "registry_notifications_events_total{endpoint=\"hook\",type=\"Failures\"}"
        ) >= 3.0
    );
    assert!(metric(&m, "registry_notifications_status_total{code=\"503 Service Unavailable\",endpoint=\"hook\"}") >= 3.0);

    // Killed while they are pending; two more before the kill are spooled too.
    pushed.push(push_blob(&reg, "team/later", b"blob 5").await);
    reg.kill();
    assert_eq!(receiver.count(), 8);
    let spool = root.join("_berth/events/local/batches");
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        6,
        "one batch per sequential request, on disk"
    );
    receiver.refuse.store(false, Ordering::SeqCst);
    let mut reg = Registry::start_at(&root, &env);
    let debug = debug_of(&mut reg);
    receiver
        .wait_until("the spooled events", |r| r.count() >= 14)
        .await;
    let events = receiver.events();
    let later: Vec<&str> = events[8..]
        .iter()
        .map(|e| e.target.digest.as_str())
        .collect();
    let want: Vec<&str> = pushed.iter().map(String::as_str).collect();
    assert_eq!(later, want, "nothing lost, order kept across the kill");
    assert!(events[8..]
        .iter()
        .all(|e| e.action == "push" && e.target.repository == "team/later"));
    // Delivered ones are not sent again, and the spool empties.
    let after = push_blob(&reg, "team/last", b"last").await;
    receiver
        .wait_until("the event after the restart", |r| r.count() >= 15)
        .await;
    assert_eq!(receiver.events()[14].target.digest, after);
    assert_eq!(receiver.count(), 15);
    metric_becomes(
        &debug,
        "registry_notifications_pending{endpoint=\"hook\"}",
        |v| v == 0.0,
    )
    .await;
    // Delivered batches are removed from storage once the endpoint's position has moved past them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0) > 0 {
        assert!(
            Instant::now() < deadline,
            "delivered batches stay in the spool"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(receiver.count(), 15, "nothing delivered twice");

    // Restarted with the spool drained (the delivered batches and their numbers gone, the endpoint's position
    // kept): new events are numbered after that position and delivered.
    reg.kill();
    let reg = Registry::start_at(&root, &env);
    let again = push_blob(&reg, "team/last", b"after a drained restart").await;
    receiver
        .wait_until("the event after a drained restart", |r| r.count() >= 16)
        .await;
    assert_eq!(receiver.events()[15].target.digest, again);
}

#[tokio::test]
async fn a_full_spool_drops_the_oldest_events_and_counts_them() {
    let receiver = Receiver::start().await;
    receiver.refuse.store(true, Ordering::SeqCst);
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("data");
    let cfg = config(
        work.path(),
        &receiver,
        "[notifications.spool]\nmaxevents = 3\n",
    );
    let env = notifying(&cfg);
    let mut reg = Registry::start_at(&root, &env);
    let debug = debug_of(&mut reg);
    let mut pushed = Vec::new();
    for i in 0..6 {
        pushed.push(push_blob(&reg, "spool/test", format!("event {i}").as_bytes()).await);
    }
    // Full: health says so, and 3 were dropped.
    let r = debug.get("/debug/health").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    let health: BTreeMap<String, String> = serde_json::from_slice(&r.body).unwrap();
    assert!(health["notifications_spool"].contains("full"), "{health:?}");
    let m = String::from_utf8(debug.get("/metrics").await.body.to_vec()).unwrap();
    assert_eq!(
        metric(
            &m,
            "berth_registry_notifications_dropped_total{endpoint=\"hook\"}"
        ),
        3.0
    );
    assert_eq!(metric(&m, "berth_registry_notifications_spool_events"), 3.0);
    receiver.refuse.store(false, Ordering::SeqCst);
    receiver
        .wait_until("the 3 newest events", |r| r.count() >= 3)
        .await;
    let got: Vec<String> = receiver
        .events()
        .iter()
        .map(|e| e.target.digest.clone())
        .collect();
    assert_eq!(got, pushed[3..].to_vec());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = debug.get("/debug/health").await;
        if r.status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "health stays {:?}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn on_s3_each_replica_spools_in_the_bucket_and_delivers_after_sigkill() {
    let moto = common::s3::Moto::start();
    moto.create_bucket("events");
    let receiver = Receiver::start().await;
    receiver.refuse.store(true, Ordering::SeqCst);
    let work = tempfile::tempdir().unwrap();
    let cfg = config(work.path(), &receiver, "");
    let start = |node: &'static str| {
        let mut env: Vec<(String, String)> = moto.registry_env("events", "");
        env.push((
            "REGISTRY_CONFIGURATION_PATH".into(),
            cfg.to_str().unwrap().into(),
        ));
        env.push(("BERTH_NOTIFICATIONS_SPOOL_NODE".into(), node.into()));
        env.push(("BERTH_GC_INTERVAL".into(), "0".into()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Registry::start(&env)
    };
    let (mut a, mut b) = (start("replica-a"), start("replica-b"));
    let mut from_a = Vec::new();
    let mut from_b = Vec::new();
    for i in 0..3 {
        from_a.push(push_blob(&a, "s3/app", format!("a{i}").as_bytes()).await);
        from_b.push(push_blob(&b, "s3/app", format!("b{i}").as_bytes()).await);
    }
    receiver
        .wait_until("refusals", |r| r.refused.load(Ordering::SeqCst) >= 2)
        .await;
    a.kill();
    b.kill();
    assert_eq!(receiver.count(), 0);
    // Each replica's events are in the bucket, under its own name.
    let keys = moto.keys("events");
    for node in ["replica-a", "replica-b"] {
        let batches = keys
            .iter()
            .filter(|k| k.starts_with(&format!("_berth/events/{node}/batches/")))
            .count();
        assert_eq!(batches, 3, "{node}: {keys:?}");
    }
    receiver.refuse.store(false, Ordering::SeqCst);
    let (_a, _b) = (start("replica-a"), start("replica-b"));
    receiver.wait_until("both spools", |r| r.count() >= 6).await;
    let got = receiver.events();
    assert_eq!(got.len(), 6, "nothing delivered twice");
    let of = |instance_prefix: &[String]| -> Vec<String> {
        got.iter()
            .map(|e| e.target.digest.clone())
            .filter(|d| instance_prefix.contains(d))
            .collect()
    };
    assert_eq!(of(&from_a), from_a, "replica-a's order kept");
    assert_eq!(of(&from_b), from_b, "replica-b's order kept");
}

#[tokio::test]
async fn a_corrupt_batch_is_skipped_and_counted() {
    let receiver = Receiver::start().await;
    receiver.refuse.store(true, Ordering::SeqCst);
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("data");
    let cfg = config(work.path(), &receiver, "");
    let env = notifying(&cfg);
    let mut reg = Registry::start_at(&root, &env);
    let _ = debug_of(&mut reg);
    let mut pushed = Vec::new();
    for i in 0..3 {
        pushed.push(push_blob(&reg, "lost/app", format!("lost {i}").as_bytes()).await);
    }
    reg.kill();
    let dir = root.join("_berth/events/local/batches");
    let mut batches: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    batches.sort();
    assert_eq!(batches.len(), 3);
    std::fs::write(&batches[0], b"not json").unwrap();
    receiver.refuse.store(false, Ordering::SeqCst);
    let mut reg = Registry::start_at(&root, &env);
    let debug = debug_of(&mut reg);
    receiver
        .wait_until("the two readable events", |r| r.count() >= 2)
        .await;
    let got: Vec<String> = receiver
        .events()
        .iter()
        .map(|e| e.target.digest.clone())
        .collect();
    assert_eq!(
        got,
        pushed[1..].to_vec(),
        "the corrupt batch is skipped, the rest kept in order"
    );
    let m = metric_becomes(
        &debug,
        "registry_notifications_pending{endpoint=\"hook\"}",
        |v| v == 0.0,
    )
    .await;
    assert_eq!(
        metric(
            &m,
            "berth_registry_notifications_dropped_total{endpoint=\"hook\"}"
        ),
        1.0
    );
}

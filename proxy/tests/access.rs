//! Access rules and brute-force throttling through the real proxy (TLS, in-process) and the real
//! berth-registry: a matrix of users x repositories x actions with every cell's status checked, mounts with
//! and without `from`, filtered catalog and search with pagination, tokens for anonymous pulls, rules reloaded
//! on change (a broken edit keeps the old ones), the audit log; and a password-guessing run that gets 429
//! without costing a hash while the right password from another address still logs in.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use sha2::{Digest as _, Sha256};

const RULES: &str = include_str!("../../docs/acl.example.toml");

const REPOS: [&str; 3] = ["public/app", "team/app", "misc/app"];

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn auth_of(user: Option<&str>) -> Option<String> {
    user.map(|u| basic(u, &format!("{u}-pw")))
}

async fn call(
    c: &mut Client,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Bytes,
    content_type: Option<&str>,
) -> (http::response::Parts, Bytes) {
    let mut b = c
        .request(method, path)
        .header("user-agent", UA)
        .header("content-length", body.len());
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    if let Some(t) = content_type {
        b = b.header("content-type", t);
    }
    c.send(b.body(full(body)).unwrap()).await
}

/// A single-request blob upload; returns the status.
async fn push_blob(c: &mut Client, user: Option<&str>, repo: &str, blob: &[u8]) -> u16 {
    let a = auth_of(user);
    let path = format!("/v2/{repo}/blobs/uploads/?digest={}", digest(blob));
    let (p, _) = call(
        c,
        "POST",
        &path,
        a.as_deref(),
        Bytes::copy_from_slice(blob),
        None,
    )
    .await;
    p.status.as_u16()
}

/// Pushes a one-layer image as `user` and tags it `1`.
async fn push_image(c: &mut Client, user: &str, repo: &str) {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","repo":"{repo}"}}"#);
    let layer = format!("layer of {repo}");
    assert_eq!(push_blob(c, Some(user), repo, config.as_bytes()).await, 201);
    assert_eq!(push_blob(c, Some(user), repo, layer.as_bytes()).await, 201);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(config.as_bytes()), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest(layer.as_bytes()), "size": layer.len()}],
    })
    .to_string();
    let a = auth_of(Some(user));
    let (p, b) = call(
        c,
        "PUT",
        &format!("/v2/{repo}/manifests/1"),
        a.as_deref(),
        Bytes::from(manifest),
        Some("application/vnd.oci.image.manifest.v1+json"),
    )
    .await;
    assert_eq!(p.status, 201, "{repo}: {b:?}");
}

/// Whether the rules above give `user` `action` on `repo` (the test's own table, not the proxy's matcher).
fn expected(user: Option<&str>, repo: &str, action: &str) -> bool {
    let dev = matches!(user, Some("alice" | "bob"));
    let ci = user == Some("robot");
    let authenticated = user.is_some();
    match (repo, action) {
        ("public/app", "pull") => true,
        ("public/app", "push") => dev,
        ("team/app", "pull") => dev || ci,
        ("team/app", "push") => ci,
        ("team/app", "delete") => user == Some("alice"),
        ("misc/app", "pull" | "push") => authenticated,
        _ => false,
    }
}

/// Follows `Link` pages of `path` (n=1) and returns the names collected under `key`.
async fn pages(c: &mut Client, auth: Option<&str>, first: &str, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut next = Some(first.to_string());
    while let Some(path) = next.take() {
        let (p, b) = call(c, "GET", &path, auth, Bytes::new(), None).await;
        assert_eq!(p.status, 200, "{path}");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        for n in v[key].as_array().unwrap() {
            out.push(n.as_str().unwrap().to_string());
        }
        next = p.headers.get("link").map(|l| {
            l.to_str()
                .unwrap()
                .split(['<', '>'])
                .nth(1)
                .unwrap()
                .to_string()
        });
        assert!(out.len() <= 10, "pagination does not end");
    }
    out
}

async fn wait_for_reload(proxy: &Proxy, before: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while proxy.state.authz().changes_seen() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the access file change was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_access_rules_decide_every_cell_and_follow_the_file() {
    let registry = RealRegistry::start_with(&[("REGISTRY_STORAGE_DELETE_ENABLED", "true")]);
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.toml");
    let audit = dir.path().join("audit.log");
    std::fs::write(&acl, RULES).unwrap();
    let (acl2, audit2) = (acl.clone(), audit.clone());
    let proxy = Proxy::start(vec![registry.url()], move |c| {
        for u in ["bob", "robot", "carol"] {
            htpasswd(&["-bB", c.htpasswd.to_str().unwrap(), u, &format!("{u}-pw")]);
        }
        c.acl = Some(acl2);
        c.audit_log = Some(audit2);
    })
    .await;
    let mut c = proxy.client().await;
    for (user, repo) in [
        ("alice", "public/app"),
        ("robot", "team/app"),
        ("carol", "misc/app"),
    ] {
        push_image(&mut c, user, repo).await;
    }
    let manifests: Vec<String> = REPOS
        .iter()
        .map(|r| format!("/v2/{r}/manifests/1"))
        .collect();

    // The matrix: pull (manifest, tag list), push (a blob), delete (a blob put there for the cell).
    let principals = [
        None,
        Some("alice"),
        Some("bob"),
        Some("robot"),
        Some("carol"),
    ];
    let mut cells = 0;
    for (i, repo) in REPOS.iter().enumerate() {
        let pusher = ["alice", "robot", "carol"][i];
        for user in principals {
            let a = auth_of(user);
            let refused = if user.is_some() { 403 } else { 401 };
            let want = |action: &str, ok: u16| {
                if expected(user, repo, action) {
                    ok
                } else {
                    refused
                }
            };
            let who = format!("{user:?} on {repo}");
            let (p, b) = call(
                &mut c,
                "GET",
                &manifests[i],
                a.as_deref(),
                Bytes::new(),
                None,
            )
            .await;
            assert_eq!(p.status, want("pull", 200), "pull manifest, {who}: {b:?}");
            if p.status == 403 {
                let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
                assert_eq!(v["errors"][0]["code"], "DENIED", "{who}");
                let m = v["errors"][0]["message"].as_str().unwrap();
                assert!(m.contains("pull") && m.contains(repo), "{who}: {m}");
            }
            if p.status == 401 {
                assert!(p.headers.contains_key("www-authenticate"), "{who}");
            }
            let (p, _) = call(
                &mut c,
                "GET",
                &format!("/v2/{repo}/tags/list"),
                a.as_deref(),
                Bytes::new(),
                None,
            )
            .await;
            assert_eq!(p.status, want("pull", 200), "tags, {who}");
            let blob = format!("pushed by {user:?} into {repo}");
            assert_eq!(
                push_blob(&mut c, user, repo, blob.as_bytes()).await,
                want("push", 201),
                "push, {who}"
            );
            let doomed = format!("to delete by {user:?} in {repo}");
            assert_eq!(
                push_blob(&mut c, Some(pusher), repo, doomed.as_bytes()).await,
                201
            );
            let (p, _) = call(
                &mut c,
                "DELETE",
                &format!("/v2/{repo}/blobs/{}", digest(doomed.as_bytes())),
                a.as_deref(),
                Bytes::new(),
                None,
            )
            .await;
            assert_eq!(p.status, want("delete", 202), "delete, {who}");
            cells += 4;
        }
    }
    assert_eq!(cells, 60);

    // Mounts: with `from`, only from a repository the user may pull; without, only for users who may pull
    // everything. A refused mount is a normal upload session, and the blob stays out of reach.
    let team_layer = digest(b"layer of team/app");
    let secret = b"only in team/app";
    assert_eq!(
        push_blob(&mut c, Some("robot"), "team/app", secret).await,
        201
    );
    let status_as = async |c: &mut Client, user: &str, method: &str, path: &str| {
        let a = auth_of(Some(user));
        let (p, _) = call(c, method, path, a.as_deref(), Bytes::new(), None).await;
        p.status.as_u16()
    };
    let mount = async |c: &mut Client, user: &str, repo: &str, d: &str, from: Option<&str>| {
        let q = from.map(|f| format!("&from={f}")).unwrap_or_default();
        status_as(
            c,
            user,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/?mount={d}{q}"),
        )
        .await
    };
    let blob_status = async |c: &mut Client, user: &str, repo: &str, d: &str| {
        status_as(c, user, "HEAD", &format!("/v2/{repo}/blobs/{d}")).await
    };
    let secret_d = digest(secret);
    // (who mounts, into, what, from, the answer, then carol's HEAD of it there when checked)
    type Mount<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, u16, Option<u16>);
    let cases: [Mount; 4] = [
        (
            "carol",
            "misc/app",
            &team_layer,
            Some("team/app"),
            202,
            Some(404),
        ),
        ("carol", "misc/app", &secret_d, None, 202, Some(404)),
        (
            "robot",
            "misc/app",
            &team_layer,
            Some("team/app"),
            201,
            Some(200),
        ),
        ("bob", "public/app", &secret_d, None, 201, None),
    ];
    for (user, repo, d, from, want, then) in cases {
        let what = format!("{user} mounts {d} into {repo} from {from:?}");
        assert_eq!(mount(&mut c, user, repo, d, from).await, want, "{what}");
        if let Some(w) = then {
            assert_eq!(
                blob_status(&mut c, "carol", repo, d).await,
                w,
                "after: {what}"
            );
        }
    }

    // Catalog and search show what each may pull, paginated over the filtered list.
    for user in principals {
        let a = auth_of(user);
        let want: Vec<String> = REPOS
            .iter()
            .filter(|r| expected(user, r, "pull"))
            .map(|r| r.to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(
            pages(&mut c, a.as_deref(), "/v2/_catalog?n=1", "repositories").await,
            want,
            "{user:?}"
        );
        assert_eq!(
            pages(&mut c, a.as_deref(), "/v2/_catalog", "repositories").await,
            want,
            "{user:?}"
        );
        let (p, b) = call(
            &mut c,
            "GET",
            "/v1/search?q=app&n=1",
            a.as_deref(),
            Bytes::new(),
            None,
        )
        .await;
        assert_eq!(p.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["num_results"], want.len(), "{user:?}: {v}");
        assert_eq!(v["num_pages"], want.len(), "{user:?}");
    }
    // A client cannot hand the registry a filter of its own.
    let a = auth_of(Some("carol"));
    let mut b = c.request("GET", "/v2/_catalog").header("user-agent", UA);
    b = b
        .header("authorization", a.as_deref().unwrap())
        .header("berth-pull-filter", "+**");
    let (_, body) = c.send(b.body(empty()).unwrap()).await;
    assert!(
        !String::from_utf8_lossy(&body).contains("team/app"),
        "{body:?}"
    );

    // Tokens: with anonymous pulls in the rules, 401s carry a Bearer challenge whose endpoint gives anonymous
    // clients a token that pulls public repositories only, and users a token for their own rights.
    let (p, _) = call(&mut c, "GET", "/v2/", None, Bytes::new(), None).await;
    assert_eq!(p.status, 401, "GET /v2/ without credentials stays 401");
    let challenge = p.headers["www-authenticate"].to_str().unwrap().to_string();
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"https://localhost:{}/_berth/token\",service=\"test-realm\"",
            proxy.addr.port()
        )
    );
    let token = async |c: &mut Client, auth: Option<&str>| -> (u16, String) {
        let (p, b) = call(
            c,
            "GET",
            "/_berth/token?service=test-realm&scope=x",
            auth,
            Bytes::new(),
            None,
        )
        .await;
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
        (
            p.status.as_u16(),
            v["token"].as_str().unwrap_or_default().to_string(),
        )
    };
    let (s, anon) = token(&mut c, None).await;
    assert_eq!(s, 200);
    let bearer = |t: &str| format!("Bearer {t}");
    let with = async |c: &mut Client, path: &str, t: &str| {
        call(c, "GET", path, Some(&bearer(t)), Bytes::new(), None)
            .await
            .0
            .status
            .as_u16()
    };
    assert_eq!(with(&mut c, &manifests[0], &anon).await, 200);
    assert_eq!(with(&mut c, &manifests[1], &anon).await, 401);
    assert_eq!(with(&mut c, "/v2/", &anon).await, 401);
    let (s, carol) = token(&mut c, auth_of(Some("carol")).as_deref()).await;
    assert_eq!(s, 200);
    assert_eq!(with(&mut c, "/v2/", &carol).await, 200);
    assert_eq!(with(&mut c, &manifests[2], &carol).await, 200);
    assert_eq!(with(&mut c, &manifests[1], &carol).await, 403);
    assert_eq!(with(&mut c, &manifests[2], "forged.token").await, 401);
    let (s, _) = token(&mut c, Some(&basic("carol", "wrong"))).await;
    assert_eq!(
        s, 401,
        "a wrong password gets no token, not an anonymous one"
    );
    let (s, _) = token(&mut c, Some(&bearer(&carol))).await;
    assert_eq!(s, 401, "a token does not buy a new token");
    // A name the registry refuses decides nothing: anonymous clients are asked to log in, users reach the
    // registry's NAME_INVALID.
    let bad = format!("/v2/{}/manifests/1", "public/".repeat(40) + "x");
    let carol_basic = auth_of(Some("carol"));
    let (p, _) = call(&mut c, "GET", &bad, None, Bytes::new(), None).await;
    assert_eq!(p.status, 401);
    let (p, b) = call(
        &mut c,
        "GET",
        &bad,
        carol_basic.as_deref(),
        Bytes::new(),
        None,
    )
    .await;
    assert_eq!(p.status, 400, "{b:?}");
    assert!(String::from_utf8_lossy(&b).contains("NAME_INVALID"));

    // Rules changed on disk take effect without a restart; a broken edit keeps the rules in force.
    let carol_auth = auth_of(Some("carol"));
    for (text, why) in [
        (
            format!("[[rule]]\nrepos = \"team/**\"\npull = [\"carol\"]\n{RULES}"),
            "the new rule lets carol pull team/app (the matrix had her refused)",
        ),
        (
            "[[rule]]\nrepos = \"**\"\npull = [\"@nobody\"]\n".to_string(),
            "the broken file was refused and the previous rules stay",
        ),
    ] {
        let seen = proxy.state.authz().changes_seen();
        std::fs::write(&acl, text).unwrap();
        wait_for_reload(&proxy, seen).await;
        let a = carol_auth.as_deref();
        let (p, _) = call(&mut c, "GET", &manifests[1], a, Bytes::new(), None).await;
        assert_eq!(p.status, 200, "{why}");
    }

    // The audit log: pushes, deletes and refusals, with user, address, action, repository, reference and
    // status, and never a password.
    let log = std::fs::read_to_string(&audit).unwrap();
    assert!(!log.contains("-pw"), "a password reached the audit log");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let has = |f: &dyn Fn(&serde_json::Value) -> bool| lines.iter().any(f);
    assert!(has(&|l| l["user"] == "robot"
        && l["action"] == "push"
        && l["repository"] == "team/app"
        && l["reference"] == "1"
        && l["status"] == 201
        && l["client"] == "127.0.0.1"));
    assert!(has(&|l| l["user"] == "carol"
        && l["action"] == "push"
        && l["repository"] == "team/app"
        && l["status"] == 403
        && l["reason"].as_str().is_some_and(|r| r.contains("denied"))));
    assert!(has(&|l| l["user"] == "alice"
        && l["action"] == "delete"
        && l["status"] == 202));
    assert!(has(&|l| l["user"] == "carol"
        && l["action"] == "login"
        && l["status"] == 401));
    assert!(
        !has(&|l| l["action"] == "pull" && l["status"] == 200),
        "reads are not audited"
    );
}

/// Password guessing: after a few failures the (user, address) pair gets 429 without a hash being checked,
/// for a name that exists and one that does not alike, while the right password from another address logs
/// in at once.
#[tokio::test]
async fn guessing_a_password_is_throttled_per_user_and_address_without_hashing() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(vec![up.url()], |c| {
        // A slow hash, so that a single verification shows in the CPU time.
        htpasswd(&[
            "-bB",
            "-C",
            "12",
            c.htpasswd.to_str().unwrap(),
            "victim",
            "right-pw",
        ]);
        c.auth_user_failures = 5;
        c.auth_user_backoff_secs = 300;
        c.auth_client_failures = 1000;
    })
    .await;
    let one_check = {
        let hash = std::fs::read_to_string(&proxy.htpasswd).unwrap();
        let hash = hash.lines().find(|l| l.starts_with("victim:")).unwrap()[7..].to_string();
        let t = cpu_time();
        assert!(!berth_proxy::authn::verify_hash(&hash, "nope"));
        cpu_time() - t
    };
    for name in ["victim", "ghost"] {
        let mut attacker = h2_from("127.0.0.1", &proxy).await;
        for i in 0..5 {
            let s = h2_get(&mut attacker, &proxy, &basic(name, &format!("guess-{i}"))).await;
            assert_eq!(s, 401, "{name}: failure {i} is an ordinary 401");
        }
        let before = cpu_time();
        for i in 5..200 {
            let (s, headers) =
                h2_get_headers(&mut attacker, &proxy, &basic(name, &format!("guess-{i}"))).await;
            let retry = headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            assert_eq!(s, 429, "{name}: attempt {i}");
            assert!(retry.is_some_and(|r| r > 0), "{name}: Retry-After");
        }
        let spent = cpu_time() - before;
        assert!(
            spent < one_check,
            "{name}: 195 throttled attempts used {spent:?} of CPU, one bcrypt check takes {one_check:?}"
        );
    }
    // The right password from another address is not affected; from the locked pair it waits too.
    let mut other = h2_from("127.0.0.2", &proxy).await;
    assert_eq!(
        h2_get(&mut other, &proxy, &basic("victim", "right-pw")).await,
        200
    );
    let mut same = h2_from("127.0.0.1", &proxy).await;
    assert_eq!(
        h2_get(&mut same, &proxy, &basic("victim", "right-pw")).await,
        429
    );
}

/// This process's CPU time (user + system).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = 100; // USER_HZ on Linux
    Duration::from_millis(ticks * 1000 / hz)
}

//! The web interface through the real proxy (TLS, in-process) and the real berth-registry: login (wrong
//! password, other origin, the cookie's attributes), the pages a user may see and the 403 page for one they may
//! not, delete controls only for those who may delete, a delete refused without the form token or from another
//! origin and done with both, logout and a changed password ending sessions. The browser test
//! (scripts/ui-test.py) does the same with chromium.

mod common;

use bytes::Bytes;
use common::*;
use sha2::{Digest as _, Sha256};

const RULES: &str = include_str!("../../docs/acl.example.toml");
const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0 Safari/537.36";

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

struct Web {
    c: Client,
    origin: String,
}

impl Web {
    async fn new(proxy: &Proxy) -> Web {
        let c = proxy.client().await;
        let origin = format!("https://{}", c.host);
        Web { c, origin }
    }

    async fn get(&mut self, path: &str, cookie: Option<&str>) -> (http::response::Parts, String) {
        let mut b = self.c.request("GET", path).header("user-agent", BROWSER);
        if let Some(v) = cookie {
            b = b.header("cookie", format!("__Host-berth_session={v}"));
        }
        let (p, body) = self.c.send(b.body(empty()).unwrap()).await;
        (p, String::from_utf8_lossy(&body).into_owned())
    }

    async fn post(
        &mut self,
        path: &str,
        cookie: Option<&str>,
        origin: Option<&str>,
        form: &[(&str, &str)],
    ) -> (http::response::Parts, String) {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut b = self
            .c
            .request("POST", path)
            .header("user-agent", BROWSER)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("content-length", body.len());
        if let Some(v) = cookie {
            b = b.header("cookie", format!("__Host-berth_session={v}"));
        }
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        let (p, body) = self.c.send(b.body(full(body)).unwrap()).await;
        (p, String::from_utf8_lossy(&body).into_owned())
    }

    /// Logs in; returns the session cookie's value.
    async fn login(&mut self, user: &str, password: &str) -> String {
        let origin = self.origin.clone();
        let (p, body) = self
            .post(
                "/ui/login",
                None,
                Some(&origin),
                &[("user", user), ("password", password), ("next", "/ui/")],
            )
            .await;
        assert_eq!(p.status, 303, "{body}");
        assert_eq!(p.headers["location"], "/ui/");
        let set = p.headers["set-cookie"].to_str().unwrap().to_string();
        for attribute in [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/;",
            "Max-Age=",
        ] {
            assert!(set.contains(attribute), "{set} lacks {attribute}");
        }
        set.strip_prefix("__Host-berth_session=")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string()
    }
}

/// The value of the hidden `csrf` field of a page's forms.
fn form_token(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("no form token") + 19;
    page[at..].split('"').next().unwrap().to_string()
}

async fn api(
    c: &mut Client,
    method: &str,
    path: &str,
    user: &str,
    body: Bytes,
    ct: Option<&str>,
) -> (http::response::Parts, Bytes) {
    let mut b = c
        .request(method, path)
        .header("user-agent", UA)
        .header("authorization", basic(user, &format!("{user}-pw")))
        .header("content-length", body.len());
    if let Some(t) = ct {
        b = b.header("content-type", t);
    }
    c.send(b.body(full(body)).unwrap()).await
}

/// Pushes one image under several tags; returns its digest.
async fn push(c: &mut Client, user: &str, repo: &str, tags: &[&str]) -> String {
    let config = br#"{"architecture":"arm64","os":"linux","config":{"Labels":{"evil":"<script>alert(1)</script>"}}}"#;
    let layer = format!("a layer of {repo}");
    for blob in [&config[..], layer.as_bytes()] {
        let path = format!("/v2/{repo}/blobs/uploads/?digest={}", digest(blob));
        let (p, _) = api(c, "POST", &path, user, Bytes::copy_from_slice(blob), None).await;
        assert_eq!(p.status, 201);
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest(layer.as_bytes()), "size": layer.len()}],
    })
    .to_string();
    for tag in tags {
        let (p, b) = api(
            c,
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            user,
            Bytes::from(manifest.clone()),
            Some("application/vnd.oci.image.manifest.v1+json"),
        )
        .await;
        assert_eq!(p.status, 201, "{b:?}");
    }
    digest(manifest.as_bytes())
}

async fn tags_of(c: &mut Client, repo: &str) -> Vec<String> {
    let (p, b) = api(
        c,
        "GET",
        &format!("/v2/{repo}/tags/list"),
        "alice",
        Bytes::new(),
        None,
    )
    .await;
    assert_eq!(p.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn browse_delete_and_log_out_under_the_access_rules() {
    let registry = RealRegistry::start_with(&[("REGISTRY_STORAGE_DELETE_ENABLED", "true")]);
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(&acl, RULES).unwrap();
    let proxy = Proxy::start(vec![registry.url()], |c| c.acl = Some(acl.clone())).await;
    for user in ["bob", "robot", "carol"] {
        let pw = format!("{user}-pw");
        htpasswd(&["-bB", proxy.htpasswd.to_str().unwrap(), user, &pw]);
    }
    let reloaded = proxy.state.auth().clone();
    tokio::task::spawn_blocking(move || reloaded.reload_if_changed())
        .await
        .unwrap();
    let mut c = proxy.client().await;
    let d = push(&mut c, "robot", "team/app", &["1.0", "2.0", "latest"]).await;
    push(&mut c, "alice", "public/tool", &["1"]).await;

    let mut web = Web::new(&proxy).await;
    let origin = web.origin.clone();
    // Without a session: to the login page, and back after it.
    let (p, _) = web.get("/ui/r/team/app", None).await;
    assert_eq!(p.status, 303);
    assert_eq!(
        p.headers["location"],
        "/ui/login?next=%2Fui%2Fr%2Fteam%2Fapp"
    );
    let (p, body) = web
        .post(
            "/ui/login",
            None,
            Some(&origin),
            &[("user", "alice"), ("password", "wrong")],
        )
        .await;
    assert_eq!(p.status, 401);
    assert!(body.contains("Wrong user name or password."));
    let (p, _) = web
        .post(
            "/ui/login",
            None,
            Some("https://evil.example"),
            &[("user", "alice"), ("password", "alice-pw")],
        )
        .await;
    assert_eq!(p.status, 403, "a login posted from another site");
    let alice = web.login("alice", "alice-pw").await;

    // The list, a repository's tags, an image.
    let (p, list) = web.get("/ui/", Some(&alice)).await;
    assert_eq!(p.status, 200);
    assert!(list.contains("href=\"/ui/r/team/app\""), "{list}");
    assert!(list.contains("href=\"/ui/r/public/tool\""));
    assert!(p.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    let (p, tags) = web.get("/ui/r/team/app?sort=-name", Some(&alice)).await;
    assert_eq!(p.status, 200);
    assert!(tags.contains("3 tags"));
    assert!(tags.contains("<span class=\"chip\">linux/arm64</span>"));
    let (latest, one) = (tags.find(">latest<").unwrap(), tags.find(">1.0<").unwrap());
    assert!(latest < one, "sorted by name, descending");
    assert!(
        tags.contains("/ui/r/team/app/-/delete?ref=2.0"),
        "alice may delete"
    );
    let (p, image) = web.get("/ui/r/team/app/-/image/2.0", Some(&alice)).await;
    assert_eq!(p.status, 200);
    assert!(image.contains(&d));
    assert!(image.contains("<span class=\"layer-count\">1</span>"));
    assert!(image.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!image.contains("<script>alert"));
    let host = web.c.host.clone();
    assert!(image.contains(&format!("docker pull {host}/team/app:2.0")));
    assert!(image.contains(&format!("docker pull {host}/team/app@{d}")));

    // An index shows its platforms; a referrer (an SBOM) shows on the image it refers to.
    let (p, m) = api(
        &mut c,
        "GET",
        &format!("/v2/team/app/manifests/{d}"),
        "robot",
        Bytes::new(),
        None,
    )
    .await;
    assert_eq!(p.status, 200);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d,
                       "size": m.len(), "platform": {"os": "linux", "architecture": "arm64"}}],
    })
    .to_string();
    let (p, _) = api(
        &mut c,
        "PUT",
        "/v2/team/app/manifests/multi",
        "robot",
        Bytes::from(index),
        Some("application/vnd.oci.image.index.v1+json"),
    )
    .await;
    assert_eq!(p.status, 201);
    let empty = b"{}";
    let (p, _) = api(
        &mut c,
        "POST",
        &format!("/v2/team/app/blobs/uploads/?digest={}", digest(empty)),
        "robot",
        Bytes::from_static(empty),
        None,
    )
    .await;
    assert_eq!(p.status, 201);
    let sbom = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/spdx+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest(empty), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest(empty), "size": 2}],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": m.len()},
    })
    .to_string();
    let sbom_digest = digest(sbom.as_bytes());
    let (p, _) = api(
        &mut c,
        "PUT",
        &format!("/v2/team/app/manifests/{sbom_digest}"),
        "robot",
        Bytes::from(sbom),
        Some("application/vnd.oci.image.manifest.v1+json"),
    )
    .await;
    assert_eq!(p.status, 201);
    let (p, page) = web.get("/ui/r/team/app/-/image/multi", Some(&alice)).await;
    assert_eq!(p.status, 200);
    assert!(page.contains("<h2>Platforms</h2>"));
    assert!(page.contains("linux/arm64"));
    assert!(page.contains(&format!("href=\"/ui/r/team/app/-/image/{d}\"")));
    let (_, image) = web
        .get(&format!("/ui/r/team/app/-/image/{d}"), Some(&alice))
        .await;
    assert!(
        image.contains("application/spdx+json"),
        "the SBOM is listed"
    );
    assert!(image.contains(&format!("/ui/r/team/app/-/image/{sbom_digest}")));

    // Deleting: the confirmation carries the form token; without it, or from elsewhere, nothing goes.
    let (p, confirm) = web
        .get("/ui/r/team/app/-/delete?ref=2.0", Some(&alice))
        .await;
    assert_eq!(p.status, 200);
    let token = form_token(&confirm);
    let (p, _) = web
        .post(
            "/ui/r/team/app/-/delete",
            Some(&alice),
            Some(&origin),
            &[("ref", "2.0"), ("csrf", "forged")],
        )
        .await;
    assert_eq!(p.status, 403);
    let (p, _) = web
        .post(
            "/ui/r/team/app/-/delete",
            Some(&alice),
            Some("https://evil.example"),
            &[("ref", "2.0"), ("csrf", &token)],
        )
        .await;
    assert_eq!(p.status, 403);
    assert_eq!(
        tags_of(&mut c, "team/app").await,
        ["1.0", "2.0", "latest", "multi"]
    );
    let (p, _) = web
        .post(
            "/ui/r/team/app/-/delete",
            Some(&alice),
            Some(&origin),
            &[("ref", "2.0"), ("csrf", &token)],
        )
        .await;
    assert_eq!(p.status, 303);
    assert_eq!(p.headers["location"], "/ui/r/team/app?deleted=2.0");
    assert_eq!(
        tags_of(&mut c, "team/app").await,
        ["1.0", "latest", "multi"]
    );

    // bob may pull team/** but not delete there; carol may not even see it.
    let bob = web.login("bob", "bob-pw").await;
    let (p, tags) = web.get("/ui/r/team/app", Some(&bob)).await;
    assert_eq!(p.status, 200);
    assert!(!tags.contains("/-/delete"), "bob may not delete");
    let (p, _) = web.get("/ui/r/team/app/-/delete?ref=1.0", Some(&bob)).await;
    assert_eq!(p.status, 403);
    let carol = web.login("carol", "carol-pw").await;
    let (_, list) = web.get("/ui/", Some(&carol)).await;
    assert!(list.contains("public/tool"));
    assert!(!list.contains("team/app"), "{list}");
    for path in ["/ui/r/team/app", "/ui/r/team/app/-/image/1.0"] {
        let (p, page) = web.get(path, Some(&carol)).await;
        assert_eq!(p.status, 403, "{path}");
        assert!(page.contains("Not allowed"));
    }

    // Logging out ends that session only.
    let (_, page) = web.get("/ui/", Some(&bob)).await;
    let token = form_token(&page);
    let (p, _) = web
        .post("/ui/logout", Some(&bob), Some(&origin), &[("csrf", &token)])
        .await;
    assert_eq!(p.status, 303);
    let (p, _) = web.get("/ui/", Some(&bob)).await;
    assert_eq!(p.status, 303, "a logged-out session is refused");
    let (p, _) = web.get("/ui/", Some(&carol)).await;
    assert_eq!(p.status, 200);

    // A changed password ends the user's sessions.
    htpasswd(&["-bB", proxy.htpasswd.to_str().unwrap(), "carol", "new-pw"]);
    let auth = proxy.state.auth().clone();
    assert!(
        tokio::task::spawn_blocking(move || auth.reload_if_changed())
            .await
            .unwrap()
    );
    let (p, _) = web.get("/ui/", Some(&carol)).await;
    assert_eq!(p.status, 303);
}

#[tokio::test]
async fn the_help_page_and_the_ca_need_no_login() {
    let registry = RealRegistry::start();
    let proxy = Proxy::start(vec![registry.url()], |_| {}).await;
    let mut web = Web::new(&proxy).await;
    let (p, help) = web.get("/ui/help", None).await;
    assert_eq!(p.status, 200);
    assert!(help.contains("href=\"/ui/ca.crt\""));
    let host = web.c.host.clone();
    assert!(help.contains(&format!("/etc/docker/certs.d/{host}/ca.crt")));
    let (p, pem) = web.get("/ui/ca.crt", None).await;
    assert_eq!(p.status, 200);
    assert_eq!(pem.as_bytes(), std::fs::read(&proxy.ca).unwrap());
    // An empty registry says how to push.
    let cookie = web.login("alice", "alice-pw").await;
    let (_, list) = web.get("/ui/", Some(&cookie)).await;
    assert!(list.contains("No images yet"));
    assert!(list.contains(&format!("docker push {host}/name:tag")));
}

#[tokio::test]
async fn behind_a_trusted_front_proxy_the_forwarded_host_is_the_origin() {
    let registry = RealRegistry::start();
    for trusted in [false, true] {
        let proxy = Proxy::start(vec![registry.url()], |c| {
            if trusted {
                c.trusted_proxies = vec!["127.0.0.1".into()];
            }
        })
        .await;
        let mut web = Web::new(&proxy).await;
        let body = "user=alice&password=alice-pw&next=%2Fui%2F";
        let req = web
            .c
            .request("POST", "/ui/login")
            .header("user-agent", BROWSER)
            .header("x-forwarded-host", "registry.example:443")
            .header("origin", "https://registry.example:443")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("content-length", body.len())
            .body(full(body))
            .unwrap();
        let (p, _) = web.c.send(req).await;
        let want = if trusted { 303 } else { 403 };
        assert_eq!(p.status, want, "trusted front proxy: {trusted}");
    }
}

#[tokio::test]
async fn the_interface_can_be_turned_off() {
    let registry = RealRegistry::start();
    let proxy = Proxy::start(vec![registry.url()], |c| c.ui = false).await;
    let mut web = Web::new(&proxy).await;
    let (p, _) = web.get("/ui/login", None).await;
    assert_eq!(p.status, 404);
}

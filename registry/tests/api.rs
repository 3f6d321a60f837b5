//! Every endpoint and error of the API, against the real binary over HTTP.

mod common;

use bytes::Bytes;
use common::{full, sha256, Registry};
use http::{Method, StatusCode};

const API: &str = "docker-distribution-api-version";

#[tokio::test]
async fn base_and_pings() {
    let r = Registry::start(&[]);
    let resp = r.get("/v2/").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.json(), serde_json::json!({}));
    assert_eq!(resp.header(API), Some("registry/2.0"));
    assert_eq!(r.get("/v1/_ping").await.status, StatusCode::OK);
    let missing = r.get("/v2/nothing/here/at/all").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.header(API),
        Some("registry/2.0"),
        "the header is on errors too"
    );
}

#[tokio::test]
async fn monolithic_upload_and_blob_reads() {
    let r = Registry::start(&[]);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let d = r.push_blob("lib/app", &data).await;
    let path = format!("/v2/lib/app/blobs/{d}");

    let got = r.get(&path).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(&got.body[..], &data[..]);
    assert_eq!(got.header("docker-content-digest"), Some(d.as_str()));
    assert_eq!(got.header("content-length"), Some("100000"));

    let head = r.head(&path).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("content-length"), Some("100000"));
    assert!(head.body.is_empty());

    let part = r
        .send(
            Method::GET,
            &path,
            &[("range", "bytes=10-19")],
            full(Bytes::new()),
        )
        .await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&part.body[..], &data[10..20]);
    assert_eq!(part.header("content-range"), Some("bytes 10-19/100000"));

    let tail = r
        .send(
            Method::GET,
            &path,
            &[("range", "bytes=-5")],
            full(Bytes::new()),
        )
        .await;
    assert_eq!(&tail.body[..], &data[99_995..]);

    let bad = r
        .send(
            Method::GET,
            &path,
            &[("range", "bytes=100000-")],
            full(Bytes::new()),
        )
        .await;
    assert_eq!(bad.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(bad.header("content-range"), Some("bytes */100000"));

    // The blob is in registry:2's layout, and only linked into its repository.
    let hex = &d["sha256:".len()..];
    let blob_file = r.root.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    assert_eq!(std::fs::read(&blob_file).unwrap(), data);
    let link = r.root.join(format!(
        "docker/registry/v2/repositories/lib/app/_layers/sha256/{hex}/link"
    ));
    assert_eq!(std::fs::read_to_string(link).unwrap(), d);
    let other = r.get(&format!("/v2/other/blobs/{d}")).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    assert_eq!(other.code(), "BLOB_UNKNOWN");
}

#[tokio::test]
async fn single_post_upload_and_zero_byte_blob() {
    let r = Registry::start(&[]);
    let d = sha256(b"");
    let resp = r.post(&format!("/v2/z/blobs/uploads/?digest={d}")).await;
    assert_eq!(resp.status, StatusCode::CREATED);
    assert_eq!(
        resp.header("location"),
        Some(r.url(&format!("/v2/z/blobs/{d}")).as_str())
    );
    let got = r.get(&format!("/v2/z/blobs/{d}")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body.is_empty());
    assert_eq!(got.header("content-length"), Some("0"));
}

#[tokio::test]
async fn digest_mismatch_leaves_nothing_behind() {
    let r = Registry::start(&[]);
    let wrong = sha256(b"something else");
    let resp = r
        .send(
            Method::POST,
            &format!("/v2/m/blobs/uploads/?digest={wrong}"),
            &[],
            full(&b"actual"[..]),
        )
        .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert_eq!(resp.code(), "DIGEST_INVALID");
    let files = common::files_under(&r.root);
    assert!(
        files
            .iter()
            .all(|f| !f.contains("/blobs/") && !f.contains("_layers")),
        "no blob or link may remain: {files:?}"
    );
    assert!(
        files.iter().all(|f| !f.contains("_uploads")),
        "the upload is removed: {files:?}"
    );
    let malformed = r
        .send(
            Method::POST,
            "/v2/m/blobs/uploads/?digest=sha256:zz",
            &[],
            full(&b"x"[..]),
        )
        .await;
    assert_eq!(malformed.code(), "DIGEST_INVALID");
    let unsupported = r
        .send(
            Method::POST,
            "/v2/m/blobs/uploads/?digest=md5:abcd",
            &[],
            full(&b"x"[..]),
        )
        .await;
    assert_eq!(unsupported.code(), "UNSUPPORTED");
}

#[tokio::test]
async fn chunked_upload_with_ranges_status_and_final_chunk() {
    let r = Registry::start(&[]);
    let data: Vec<u8> = (0..30_000u32).map(|i| (i * 31 % 256) as u8).collect();
    let start = r
        .send(
            Method::POST,
            "/v2/c/blobs/uploads/",
            &[("content-length", "0")],
            full(Bytes::new()),
        )
        .await;
    assert_eq!(start.status, StatusCode::ACCEPTED);
    assert_eq!(start.header("range"), Some("0-0"));
    let uuid = start
        .header("docker-upload-uuid")
        .expect("uuid")
        .to_string();
    let loc = start.header("location").expect("location").to_string();
    assert!(loc.ends_with(&uuid));

    let p1 = r
        .send(
            Method::PATCH,
            &loc,
            &[("content-range", "0-9999"), ("content-length", "10000")],
            full(data[..10_000].to_vec()),
        )
        .await;
    assert_eq!(p1.status, StatusCode::ACCEPTED);
    assert_eq!(p1.header("range"), Some("0-9999"));

    // Out of order: 416 with the current range.
    let ooo = r
        .send(
            Method::PATCH,
            &loc,
            &[
                ("content-range", "20000-29999"),
                ("content-length", "10000"),
            ],
            full(data[20_000..].to_vec()),
        )
        .await;
    assert_eq!(ooo.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(ooo.header("range"), Some("0-9999"));

    let status = r.get(&loc).await;
    assert_eq!(status.status, StatusCode::NO_CONTENT);
    assert_eq!(status.header("range"), Some("0-9999"));
    assert_eq!(status.header("docker-upload-uuid"), Some(uuid.as_str()));

    let p2 = r
        .send(
            Method::PATCH,
            &loc,
            &[
                ("content-range", "10000-19999"),
                ("content-length", "10000"),
            ],
            full(data[10_000..20_000].to_vec()),
        )
        .await;
    assert_eq!(p2.header("range"), Some("0-19999"));

    let d = sha256(&data);
    let done = r
        .send(
            Method::PUT,
            &format!("{loc}?digest={d}"),
            &[
                ("content-range", "20000-29999"),
                ("content-length", "10000"),
            ],
            full(data[20_000..].to_vec()),
        )
        .await;
    assert_eq!(done.status, StatusCode::CREATED, "{:?}", done.body);
    assert_eq!(done.header("docker-content-digest"), Some(d.as_str()));
    assert_eq!(
        &r.get(&format!("/v2/c/blobs/{d}")).await.body[..],
        &data[..]
    );
    // The session is gone.
    let gone = r.get(&loc).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.code(), "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn streamed_patch_without_length_as_docker_sends_it() {
    let r = Registry::start(&[]);
    let start = r.post("/v2/s/blobs/uploads/").await;
    let loc = start.header("location").unwrap().to_string();
    // A body of unknown length: hyper sends it with Transfer-Encoding: chunked.
    let (tx, body) = common::channel_body();
    let mut all = Vec::new();
    let sender = tokio::spawn(async move {
        for i in 0..50u8 {
            let chunk = vec![i; 65_536 + i as usize];
            tx.send(Ok(http_body::Frame::data(Bytes::from(chunk))))
                .await
                .unwrap();
        }
    });
    for i in 0..50u8 {
        all.extend(std::iter::repeat_n(i, 65_536 + i as usize));
    }
    let resp = r.send(Method::PATCH, &loc, &[], body).await;
    sender.await.unwrap();
    assert_eq!(resp.status, StatusCode::ACCEPTED);
    assert_eq!(
        resp.header("range"),
        Some(format!("0-{}", all.len() - 1).as_str())
    );
    let d = sha256(&all);
    let done = r
        .send(
            Method::PUT,
            &format!("{loc}?digest={d}"),
            &[],
            full(Bytes::new()),
        )
        .await;
    assert_eq!(done.status, StatusCode::CREATED, "{:?}", done.body);
    assert_eq!(
        r.get(&format!("/v2/s/blobs/{d}")).await.body.len(),
        all.len()
    );
}

#[tokio::test]
async fn sha512_blobs() {
    let r = Registry::start(&[]);
    use sha2::Digest as _;
    let data = b"sha512 content";
    let d = format!("sha512:{}", hex::encode(sha2::Sha512::digest(data)));
    let resp = r
        .send(
            Method::POST,
            &format!("/v2/h/blobs/uploads/?digest={d}"),
            &[],
            full(&data[..]),
        )
        .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{:?}", resp.body);
    assert_eq!(&r.get(&format!("/v2/h/blobs/{d}")).await.body[..], data);
}

#[tokio::test]
async fn cancel_upload() {
    let r = Registry::start(&[]);
    let start = r.post("/v2/x/blobs/uploads/").await;
    let loc = start.header("location").unwrap().to_string();
    assert_eq!(r.delete(&loc).await.status, StatusCode::NO_CONTENT);
    assert_eq!(r.get(&loc).await.code(), "BLOB_UPLOAD_UNKNOWN");
    let unknown = r.get("/v2/x/blobs/uploads/not-a-session").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.code(), "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn cross_repository_mount() {
    let r = Registry::start(&[]);
    let d = r.push_blob("src/repo", b"shared layer").await;
    let m = r
        .post(&format!("/v2/dst/blobs/uploads/?mount={d}&from=src/repo"))
        .await;
    assert_eq!(m.status, StatusCode::CREATED);
    assert_eq!(m.header("docker-content-digest"), Some(d.as_str()));
    assert_eq!(
        &r.get(&format!("/v2/dst/blobs/{d}")).await.body[..],
        b"shared layer"
    );
    // Automatic mount without `from`.
    let auto = r.post(&format!("/v2/auto/blobs/uploads/?mount={d}")).await;
    assert_eq!(auto.status, StatusCode::CREATED);
    // Unknown blob: a new session instead.
    let unknown = sha256(b"never pushed");
    let fallback = r
        .post(&format!(
            "/v2/dst/blobs/uploads/?mount={unknown}&from=src/repo"
        ))
        .await;
    assert_eq!(fallback.status, StatusCode::ACCEPTED);
    assert!(fallback.header("location").is_some());
    // Mounting from a repository that does not hold the blob does not leak it.
    let wrong_from = r
        .post(&format!("/v2/dst2/blobs/uploads/?mount={d}&from=nothere"))
        .await;
    assert_eq!(wrong_from.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn manifests_push_pull_and_validation() {
    let r = Registry::start(&[]);
    let (md, bytes) = r
        .push_image("img", "v1", &[b"layer one", b"layer two"])
        .await;

    for reference in ["v1", md.as_str()] {
        let got = r.get(&format!("/v2/img/manifests/{reference}")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(&got.body[..], &bytes[..], "exact bytes");
        assert_eq!(
            got.header("content-type"),
            Some("application/vnd.oci.image.manifest.v1+json")
        );
        assert_eq!(got.header("docker-content-digest"), Some(md.as_str()));
        let head = r.head(&format!("/v2/img/manifests/{reference}")).await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(
            head.header("content-length"),
            Some(bytes.len().to_string().as_str())
        );
    }
    let missing = r.get("/v2/img/manifests/nope").await;
    assert_eq!(
        (missing.status, missing.code().as_str()),
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
    );
    let no_repo = r.get("/v2/no/such/manifests/latest").await;
    assert_eq!(
        (no_repo.status, no_repo.code().as_str()),
        (StatusCode::NOT_FOUND, "NAME_UNKNOWN")
    );

    let put = |body: Vec<u8>, ct: &'static str, reference: &'static str| {
        let r = &r;
        async move {
            r.send(
                Method::PUT,
                &format!("/v2/img/manifests/{reference}"),
                &[("content-type", ct)],
                full(body),
            )
            .await
        }
    };
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let bad_json = put(b"{not json".to_vec(), oci, "bad").await;
    assert_eq!(
        (bad_json.status, bad_json.code().as_str()),
        (StatusCode::BAD_REQUEST, "MANIFEST_INVALID")
    );

    let unknown_layer = serde_json::json!({
        "schemaVersion": 2, "mediaType": oci,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(b"nope"), "size": 4},
        "layers": []
    });
    let resp = put(serde_json::to_vec(&unknown_layer).unwrap(), oci, "bad").await;
    assert_eq!(
        (resp.status, resp.code().as_str()),
        (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN")
    );

    let mismatch = put(
        bytes.clone(),
        "application/vnd.docker.distribution.manifest.v2+json",
        "bad",
    )
    .await;
    assert_eq!(
        mismatch.code(),
        "MANIFEST_INVALID",
        "media type must match Content-Type"
    );

    let wrong_digest = r
        .send(
            Method::PUT,
            &format!("/v2/img/manifests/{}", sha256(b"other")),
            &[("content-type", oci)],
            full(bytes.clone()),
        )
        .await;
    assert_eq!(wrong_digest.code(), "DIGEST_INVALID");

    let by_digest = r
        .send(
            Method::PUT,
            &format!("/v2/img/manifests/{md}"),
            &[("content-type", oci)],
            full(bytes.clone()),
        )
        .await;
    assert_eq!(by_digest.status, StatusCode::CREATED);

    let huge = vec![b' '; 4 * 1024 * 1024 + 1];
    let too_big = put(huge, oci, "big").await;
    assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);

    let bad_tag = put(bytes.clone(), oci, "-bad").await;
    assert_eq!(bad_tag.status, StatusCode::BAD_REQUEST);

    // An index needs its children in the repository.
    let index = |child: &str| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": oci, "digest": child, "size": bytes.len(),
                           "platform": {"architecture": "amd64", "os": "linux"}}]
        }))
        .unwrap()
    };
    let idx_ct = "application/vnd.oci.image.index.v1+json";
    let missing_child = put(index(&sha256(b"absent")), idx_ct, "multi").await;
    assert_eq!(missing_child.code(), "MANIFEST_BLOB_UNKNOWN");
    let ok = put(index(&md), idx_ct, "multi").await;
    assert_eq!(ok.status, StatusCode::CREATED, "{:?}", ok.body);
    assert_eq!(
        r.get("/v2/img/manifests/multi")
            .await
            .header("content-type"),
        Some(idx_ct)
    );
}

#[tokio::test]
async fn docker_schema2_manifest_and_list() {
    let r = Registry::start(&[]);
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = r.push_blob("d", config).await;
    let ld = r.push_blob("d", b"gzip layer").await;
    let ct = "application/vnd.docker.distribution.manifest.v2+json";
    let m = serde_json::json!({
        "schemaVersion": 2, "mediaType": ct,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": ld, "size": 10}]
    });
    let bytes = serde_json::to_vec_pretty(&m).unwrap();
    let put = r
        .send(
            Method::PUT,
            "/v2/d/manifests/latest",
            &[("content-type", ct)],
            full(bytes.clone()),
        )
        .await;
    assert_eq!(put.status, StatusCode::CREATED, "{:?}", put.body);
    let got = r.get("/v2/d/manifests/latest").await;
    assert_eq!(got.header("content-type"), Some(ct));
    let list_ct = "application/vnd.docker.distribution.manifest.list.v2+json";
    let list = serde_json::json!({"schemaVersion": 2, "mediaType": list_ct, "manifests": [
        {"mediaType": ct, "digest": sha256(&bytes), "size": bytes.len(), "platform": {"architecture": "amd64", "os": "linux"}}]});
    let put = r
        .send(
            Method::PUT,
            "/v2/d/manifests/list",
            &[("content-type", list_ct)],
            full(serde_json::to_vec(&list).unwrap()),
        )
        .await;
    assert_eq!(put.status, StatusCode::CREATED, "{:?}", put.body);
    assert_eq!(
        r.get("/v2/d/manifests/list").await.header("content-type"),
        Some(list_ct)
    );
}

#[tokio::test]
async fn tags_and_catalog_pagination() {
    let r = Registry::start(&[]);
    let (md, bytes) = r.push_image("p/q", "a", &[b"l"]).await;
    let _ = md;
    for t in ["b", "c", "d", "e"] {
        let resp = r
            .send(
                Method::PUT,
                &format!("/v2/p/q/manifests/{t}"),
                &[("content-type", "application/vnd.oci.image.manifest.v1+json")],
                full(bytes.clone()),
            )
            .await;
        assert_eq!(resp.status, StatusCode::CREATED);
    }
    let all = r.get("/v2/p/q/tags/list").await;
    assert_eq!(
        all.json(),
        serde_json::json!({"name": "p/q", "tags": ["a", "b", "c", "d", "e"]})
    );
    let first = r.get("/v2/p/q/tags/list?n=2").await;
    assert_eq!(first.json()["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(
        first.header("link"),
        Some("</v2/p/q/tags/list?n=2&last=b>; rel=\"next\"")
    );
    let next = r.get("/v2/p/q/tags/list?n=2&last=b").await;
    assert_eq!(next.json()["tags"], serde_json::json!(["c", "d"]));
    let last = r.get("/v2/p/q/tags/list?n=2&last=d").await;
    assert_eq!(last.json()["tags"], serde_json::json!(["e"]));
    assert!(last.header("link").is_none());
    let zero = r.get("/v2/p/q/tags/list?n=0").await;
    assert_eq!(zero.json()["tags"], serde_json::json!([]));
    assert!(zero.header("link").is_none());
    let unknown = r.get("/v2/nope/tags/list").await;
    assert_eq!(
        (unknown.status, unknown.code().as_str()),
        (StatusCode::NOT_FOUND, "NAME_UNKNOWN")
    );

    for name in ["a/b/c", "zz", "m"] {
        r.push_image(name, "latest", &[b"x"]).await;
    }
    let cat = r.get("/v2/_catalog").await;
    assert_eq!(
        cat.json(),
        serde_json::json!({"repositories": ["a/b/c", "m", "p/q", "zz"]})
    );
    let page = r.get("/v2/_catalog?n=2").await;
    assert_eq!(
        page.json()["repositories"],
        serde_json::json!(["a/b/c", "m"])
    );
    assert_eq!(
        page.header("link"),
        Some("</v2/_catalog?n=2&last=m>; rel=\"next\"")
    );
    let page2 = r.get("/v2/_catalog?n=2&last=m").await;
    assert_eq!(
        page2.json()["repositories"],
        serde_json::json!(["p/q", "zz"])
    );
}

#[tokio::test]
async fn referrers_and_subject() {
    let r = Registry::start(&[]);
    let (subject, sbytes) = r.push_image("art", "v1", &[b"base"]).await;
    let empty = r.push_blob("art", b"{}").await;
    let artifact = |atype: &str, note: &str| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": atype,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [],
            "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject, "size": sbytes.len()},
            "annotations": {"note": note}
        }))
        .unwrap()
    };
    let sbom = artifact("application/vnd.example.sbom", "s");
    let sig = artifact("application/vnd.example.sig", "g");
    for body in [&sbom, &sig] {
        let d = sha256(body);
        let resp = r
            .send(
                Method::PUT,
                &format!("/v2/art/manifests/{d}"),
                &[("content-type", "application/vnd.oci.image.manifest.v1+json")],
                full(body.clone()),
            )
            .await;
        assert_eq!(resp.status, StatusCode::CREATED, "{:?}", resp.body);
        assert_eq!(resp.header("oci-subject"), Some(subject.as_str()));
    }
    let list = r.get(&format!("/v2/art/referrers/{subject}")).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(
        list.header("content-type"),
        Some("application/vnd.oci.image.index.v1+json")
    );
    let v = list.json();
    let mut types: Vec<&str> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["artifactType"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            "application/vnd.example.sbom",
            "application/vnd.example.sig"
        ]
    );
    let m0 = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["artifactType"] == "application/vnd.example.sbom")
        .unwrap();
    assert_eq!(m0["digest"], sha256(&sbom));
    assert_eq!(m0["size"], sbom.len());
    assert_eq!(m0["annotations"]["note"], "s");

    let filtered = r
        .get(&format!(
            "/v2/art/referrers/{subject}?artifactType=application/vnd.example.sig"
        ))
        .await;
    assert_eq!(filtered.header("oci-filters-applied"), Some("artifactType"));
    assert_eq!(filtered.json()["manifests"].as_array().unwrap().len(), 1);

    let none = r
        .get(&format!("/v2/art/referrers/{}", sha256(b"no referrers")))
        .await;
    assert_eq!(none.status, StatusCode::OK);
    assert_eq!(none.json()["manifests"], serde_json::json!([]));
    let unknown_repo = r.get(&format!("/v2/unknown/referrers/{subject}")).await;
    assert_eq!(unknown_repo.status, StatusCode::OK, "never 404");
    let bad = r.get("/v2/art/referrers/sha256:nothex").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn deletes_are_off_by_default() {
    let r = Registry::start(&[]);
    let (md, _) = r.push_image("del", "v1", &[b"x"]).await;
    let d = sha256(b"x");
    for path in [
        format!("/v2/del/manifests/{md}"),
        format!("/v2/del/blobs/{d}"),
        "/v2/del/manifests/v1".into(),
    ] {
        let resp = r.delete(&path).await;
        assert_eq!(
            (resp.status, resp.code().as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            "{path}"
        );
    }
    assert_eq!(r.get("/v2/del/manifests/v1").await.status, StatusCode::OK);
}

#[tokio::test]
async fn deletes_when_enabled() {
    let r = Registry::start(&[("REGISTRY_STORAGE_DELETE_ENABLED", "true")]);
    let (md, bytes) = r.push_image("del", "v1", &[b"x"]).await;
    let oci = "application/vnd.oci.image.manifest.v1+json";
    r.send(
        Method::PUT,
        "/v2/del/manifests/v2",
        &[("content-type", oci)],
        full(bytes),
    )
    .await;

    let tag = r.delete("/v2/del/manifests/v2").await;
    assert_eq!(tag.status, StatusCode::ACCEPTED);
    assert_eq!(
        r.get("/v2/del/manifests/v2").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        r.get("/v2/del/manifests/v1").await.status,
        StatusCode::OK,
        "other tags stay"
    );

    let m = r.delete(&format!("/v2/del/manifests/{md}")).await;
    assert_eq!(m.status, StatusCode::ACCEPTED);
    assert_eq!(
        r.get(&format!("/v2/del/manifests/{md}")).await.code(),
        "MANIFEST_UNKNOWN"
    );
    assert_eq!(
        r.get("/v2/del/manifests/v1").await.status,
        StatusCode::NOT_FOUND,
        "tags of a deleted manifest go"
    );
    let again = r.delete(&format!("/v2/del/manifests/{md}")).await;
    assert_eq!(again.code(), "MANIFEST_UNKNOWN");

    let d = sha256(b"x");
    let b = r.delete(&format!("/v2/del/blobs/{d}")).await;
    assert_eq!(b.status, StatusCode::ACCEPTED);
    assert_eq!(
        r.get(&format!("/v2/del/blobs/{d}")).await.code(),
        "BLOB_UNKNOWN"
    );
    let b2 = r.delete(&format!("/v2/del/blobs/{d}")).await;
    assert_eq!(b2.status, StatusCode::NOT_FOUND);
    let no_repo = r.delete(&format!("/v2/ghost/manifests/{md}")).await;
    assert_eq!(no_repo.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn names_and_digests_are_checked_before_storage() {
    let r = Registry::start(&[]);
    let long = "a".repeat(256);
    for path in [
        "/v2/UPPER/tags/list".to_string(),
        "/v2/a..b/tags/list".into(),
        format!("/v2/{long}/tags/list"),
        "/v2/a/%2e%2e/tags/list".into(),
    ] {
        let resp = r.get(&path).await;
        assert_eq!(
            (resp.status, resp.code().as_str()),
            (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            "{path}"
        );
    }
    let bad_digest = r.get("/v2/ok/blobs/sha256:zz").await;
    assert_eq!(bad_digest.code(), "DIGEST_INVALID");
    assert!(
        common::files_under(&r.root).is_empty(),
        "nothing was written"
    );
}

#[tokio::test]
async fn locations_behind_a_tls_proxy_on_a_non_standard_port() {
    let r = Registry::start(&[]);
    let hdrs = [
        ("host", "registry.example:5043"),
        ("x-forwarded-proto", "https"),
    ];
    let resp = r
        .send(
            Method::POST,
            "/v2/loc/blobs/uploads/",
            &hdrs,
            full(Bytes::new()),
        )
        .await;
    let loc = resp.header("location").unwrap();
    assert!(
        loc.starts_with("https://registry.example:5043/v2/loc/blobs/uploads/"),
        "{loc}"
    );

    let rel = Registry::start(&[("REGISTRY_HTTP_RELATIVEURLS", "true")]);
    let resp = rel
        .send(
            Method::POST,
            "/v2/loc/blobs/uploads/",
            &hdrs,
            full(Bytes::new()),
        )
        .await;
    assert!(resp
        .header("location")
        .unwrap()
        .starts_with("/v2/loc/blobs/uploads/"));

    let fixed = Registry::start(&[("REGISTRY_HTTP_HOST", "https://public.example:8443")]);
    let resp = fixed
        .send(
            Method::POST,
            "/v2/loc/blobs/uploads/",
            &hdrs,
            full(Bytes::new()),
        )
        .await;
    assert!(resp
        .header("location")
        .unwrap()
        .starts_with("https://public.example:8443/v2/loc/blobs/uploads/"));
}

#[tokio::test]
async fn v1_search_over_the_catalog() {
    let r = Registry::start(&[]);
    for name in ["team/webapp", "team/db", "tools/webhook"] {
        r.push_image(name, "latest", &[b"l"]).await;
    }
    let resp = r.get("/v1/search?q=web&n=25").await;
    assert_eq!(resp.status, StatusCode::OK);
    let v = resp.json();
    assert_eq!(v["num_results"], 2);
    assert_eq!(v["query"], "web");
    let names: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["team/webapp", "tools/webhook"]);
    assert_eq!(v["results"][0]["description"], "");
    let paged = r.get("/v1/search?q=&n=1&page=3").await.json();
    assert_eq!(paged["results"][0]["name"], "tools/webhook");
    assert_eq!(paged["num_pages"], 3);
}

#[tokio::test]
async fn concurrent_uploads_of_one_blob_and_pushes_of_one_tag() {
    let r = std::sync::Arc::new(Registry::start(&[]));
    let data: Vec<u8> = (0..500_000u32).map(|i| (i % 241) as u8).collect();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (r, data) = (r.clone(), data.clone());
        tasks.push(tokio::spawn(
            async move { r.push_blob("same", &data).await },
        ));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        r.get(&format!("/v2/same/blobs/{}", sha256(&data)))
            .await
            .body
            .len(),
        data.len()
    );

    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            r.push_image("same", "race", &[&[i; 10]]).await.0
        }));
    }
    let mut digests = Vec::new();
    for t in tasks {
        digests.push(t.await.unwrap());
    }
    let got = r.get("/v2/same/manifests/race").await;
    assert_eq!(got.status, StatusCode::OK);
    let current = got.header("docker-content-digest").unwrap().to_string();
    assert!(
        digests.contains(&current),
        "the tag points at one of the pushed manifests"
    );
    assert_eq!(sha256(&got.body), current, "and its content matches");
}

//! Real clients against the real binary: skopeo (push, pull, inspect, list-tags, delete) and interop with
//! registry:2 (CNCF Distribution) on the same data directory, both ways.
//!
//! The tools are installed by `scripts/test.sh`; a missing tool fails the test, it never skips it.

mod common;

use std::process::Command;

use common::tools::{blob_bytes, digest_of, oci_layout, pull_to_oci, run, skopeo, Distribution};
use common::Registry;

#[test]
fn skopeo_push_pull_inspect_list_tags_delete() {
    let r = Registry::start(&[("REGISTRY_STORAGE_DELETE_ENABLED", "true")]);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let layers = oci_layout(&src, "v1", &[3 << 20, 1 << 20]);
    let host = &r.addr;

    // OCI image.
    run(skopeo()
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", src.display()))
        .arg(format!("docker://{host}/team/oci-img:v1")));
    // The same image as a Docker schema 2 image.
    run(skopeo()
        .args(["copy", "--dest-tls-verify=false", "--format", "v2s2"])
        .arg(format!("oci:{}:v1", src.display()))
        .arg(format!("docker://{host}/team/docker-img:v1")));

    let inspect: serde_json::Value = serde_json::from_str(&run(skopeo()
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{host}/team/oci-img:v1"))))
    .unwrap();
    assert_eq!(inspect["Layers"], serde_json::json!(layers));
    let raw = run(skopeo()
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{host}/team/docker-img:v1")));
    let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        raw["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );

    run(skopeo()
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", src.display()))
        .arg(format!("docker://{host}/team/oci-img:v2")));
    let tags: serde_json::Value = serde_json::from_str(&run(skopeo()
        .args(["list-tags", "--tls-verify=false"])
        .arg(format!("docker://{host}/team/oci-img"))))
    .unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["v1", "v2"]));

    // Pull both back and compare the layers byte for byte.
    for (repo, dst) in [
        ("team/oci-img", "back-oci"),
        ("team/docker-img", "back-docker"),
    ] {
        let dst = tmp.path().join(dst);
        run(skopeo()
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{host}/{repo}:v1"))
            .arg(format!("oci:{}:v1", dst.display())));
        for d in &layers {
            assert_eq!(
                blob_bytes(&dst, d),
                blob_bytes(&src, d),
                "layer {d} of {repo}"
            );
        }
    }

    run(skopeo()
        .args(["delete", "--tls-verify=false"])
        .arg(format!("docker://{host}/team/oci-img:v2")));
    let gone = skopeo()
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{host}/team/oci-img:v2"))
        .output()
        .unwrap();
    assert!(!gone.status.success(), "deleted image still inspectable");
}

#[test]
fn registry2_data_is_served_by_berth_and_back() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let layers = oci_layout(&src, "v1", &[2 << 20, 512 << 10]);
    let root = tmp.path().join("data");
    std::fs::create_dir_all(&root).unwrap();

    // registry:2 writes, berth serves.
    let (d_oci, d_docker) = {
        let dist = Distribution::start(&root, tmp.path());
        run(skopeo()
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:v1", src.display()))
            .arg(format!("docker://{}/from/dist:v1", dist.addr)));
        run(skopeo()
            .args(["copy", "--dest-tls-verify=false", "--format", "v2s2"])
            .arg(format!("oci:{}:v1", src.display()))
            .arg(format!("docker://{}/from/dist-docker:v1", dist.addr)));
        (
            digest_of(&dist.addr, "from/dist:v1"),
            digest_of(&dist.addr, "from/dist-docker:v1"),
        )
    };
    {
        let berth = Registry::start_at(&root, &[]);
        assert_eq!(digest_of(&berth.addr, "from/dist:v1"), d_oci);
        assert_eq!(digest_of(&berth.addr, "from/dist-docker:v1"), d_docker);
        let out = tmp.path().join("pulled-from-berth");
        pull_to_oci(&berth.addr, "from/dist:v1", &out);
        for d in &layers {
            assert_eq!(blob_bytes(&out, d), blob_bytes(&src, d));
        }
        // berth writes into the same directory.
        run(skopeo()
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:v1", src.display()))
            .arg(format!("docker://{}/from/berth:v1", berth.addr)));
        run(skopeo()
            .args(["copy", "--dest-tls-verify=false", "--format", "v2s2"])
            .arg(format!("oci:{}:v1", src.display()))
            .arg(format!("docker://{}/from/berth-docker:v1", berth.addr)));
    }
    // registry:2 serves what berth wrote.
    let dist = Distribution::start(&root, tmp.path());
    let out = tmp.path().join("pulled-from-dist");
    pull_to_oci(&dist.addr, "from/berth:v1", &out);
    for d in &layers {
        assert_eq!(blob_bytes(&out, d), blob_bytes(&src, d));
    }
    run(skopeo()
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{}/from/berth-docker:v1", dist.addr)));
    let tags: serde_json::Value = serde_json::from_str(&run(skopeo()
        .args(["list-tags", "--tls-verify=false"])
        .arg(format!("docker://{}/from/berth", dist.addr))))
    .unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]));
    let catalog = Command::new("curl")
        .args(["-sf"])
        .arg(format!("http://{}/v2/_catalog", dist.addr))
        .output()
        .unwrap();
    let catalog: serde_json::Value = serde_json::from_slice(&catalog.stdout).unwrap();
    assert_eq!(
        catalog["repositories"],
        serde_json::json!([
            "from/berth",
            "from/berth-docker",
            "from/dist",
            "from/dist-docker"
        ])
    );
}

//! Real clients against the real binary: skopeo (push, pull, inspect, list-tags, delete) and interop with
//! registry:2 (CNCF Distribution) on the same data directory, both ways.
//!
//! The tools are installed by `scripts/test.sh`; a missing tool fails the test, it never skips it.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{sha256, Registry};

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (scripts/test.sh installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn skopeo() -> Command {
    let mut c = Command::new("skopeo");
    // No user policy file on CI machines: accept anything, as tests copy only their own images.
    c.arg("--insecure-policy");
    c
}

/// Writes an OCI image layout with gzip-compressed random layers and returns the layer digests (compressed
/// layers are copied as they are by clients, so digests can be compared end to end).
fn oci_layout(dir: &Path, tag: &str, layer_sizes: &[usize]) -> Vec<String> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> String {
        let d = sha256(bytes);
        std::fs::write(blobs.join(&d["sha256:".len()..]), bytes).unwrap();
        d
    };
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut descs = Vec::new();
    for &size in layer_sizes {
        let raw: Vec<u8> = (0..size).map(|_| rand::random::<u8>()).collect();
        diff_ids.push(sha256(&raw));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        let data = gz.finish().unwrap();
        let d = put(&data);
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": data.len()}));
        layers.push(d);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {}
    }))
    .unwrap();
    let cd = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let md = put(&manifest);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": tag}}]
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    layers
}

fn blob_bytes(layout: &Path, d: &str) -> Vec<u8> {
    std::fs::read(layout.join("blobs/sha256").join(&d["sha256:".len()..])).unwrap()
}

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

/// A registry:2 process on a free port over `root`.
struct Distribution {
    child: Child,
    addr: String,
}

impl Distribution {
    fn start(root: &Path, work: &Path) -> Distribution {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let cfg = work.join(format!("registry-{port}.yml"));
        let mut f = std::fs::File::create(&cfg).unwrap();
        writeln!(
            f,
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            root.display()
        )
        .unwrap();
        let log = std::fs::File::create(work.join(format!("registry-{port}.log"))).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .env_remove("AWS_CA_BUNDLE")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry (scripts/test.sh installs it)");
        let d = Distribution { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&d.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry:2 did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn digest_of(host: &str, image: &str) -> String {
    let raw = run(skopeo()
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{host}/{image}")));
    sha256(raw.as_bytes())
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
        run(skopeo()
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{}/from/dist:v1", berth.addr))
            .arg(format!("oci:{}:v1", out.display())));
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
    run(skopeo()
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{}/from/berth:v1", dist.addr))
        .arg(format!("oci:{}:v1", out.display())));
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

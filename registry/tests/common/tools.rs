//! Real registry clients and registry:2 for tests: skopeo, OCI layouts, a registry:2 process.
//!
//! The tools are installed by `scripts/test.sh`; a missing tool fails the test, it never skips it.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::sha256;

pub fn run(cmd: &mut Command) -> String {
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

pub fn skopeo() -> Command {
    let mut c = Command::new("skopeo");
    // No user policy file on CI machines: accept anything, as tests copy only their own images.
    c.arg("--insecure-policy");
    c
}

/// Writes an OCI image layout with gzip-compressed random layers and returns the layer digests (compressed
/// layers are copied as they are by clients, so digests can be compared end to end).
pub fn oci_layout(dir: &Path, tag: &str, layer_sizes: &[usize]) -> Vec<String> {
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
        let mut raw = vec![0u8; size];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut raw);
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

/// Pulls `image` (`repo:tag`) from a plain-HTTP registry at `host` into the OCI layout `out` under tag `v1`.
pub fn pull_to_oci(host: &str, image: &str, out: &Path) {
    run(skopeo()
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{host}/{image}"))
        .arg(format!("oci:{}:v1", out.display())));
}

pub fn blob_bytes(layout: &Path, d: &str) -> Vec<u8> {
    std::fs::read(layout.join("blobs/sha256").join(&d["sha256:".len()..])).unwrap()
}

/// A registry:2 process on a free port over `root`.
pub struct Distribution {
    child: Child,
    pub addr: String,
}

impl Distribution {
    /// registry:2 over a data directory.
    pub fn start(root: &Path, work: &Path) -> Distribution {
        Distribution::start_with(root, work, &[])
    }

    /// registry:2 with extra environment (e.g. `REGISTRY_STORAGE=s3` and its keys, which override the
    /// filesystem section of the generated config).
    pub fn start_with(root: &Path, work: &Path, env: &[(String, String)]) -> Distribution {
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
            // These machines point AWS_CA_BUNDLE at a bundle registry:2's S3 client cannot load.
            .env_remove("AWS_CA_BUNDLE")
            .envs(env.iter().map(|(k, v)| (k, v)))
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

pub fn digest_of(host: &str, image: &str) -> String {
    let raw = run(skopeo()
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{host}/{image}")));
    sha256(raw.as_bytes())
}

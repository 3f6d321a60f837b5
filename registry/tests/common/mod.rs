//! Test support: start the real `berth-registry` binary on a free port and talk HTTP to it.
#![allow(dead_code)]

pub mod proxy;
pub mod s3;
pub mod tools;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use sha2::{Digest as _, Sha256};

pub type ReqBody = BoxBody<Bytes, std::io::Error>;

/// A running registry process with its own data directory.
pub struct Registry {
    /// The process, when this one started it (none for a client of another registry).
    pub child: Option<Child>,
    /// What the process prints after its first line (the debug address, when configured).
    stdout: Option<BufReader<std::process::ChildStdout>>,
    pub addr: String,
    pub root: PathBuf,
    _dir: Option<tempfile::TempDir>,
    client: Client<HttpConnector, ReqBody>,
}

/// A response read whole.
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The OCI error code of the first error.
    pub fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// Sends frames of a request body, one `send` at a time.
pub type FrameTx = tokio::sync::mpsc::Sender<Result<http_body::Frame<Bytes>, std::io::Error>>;

/// A request body fed through a channel: the test decides when each chunk goes out. Its length is unknown,
/// so hyper sends it with `Transfer-Encoding: chunked`, as the Docker daemon does.
pub fn channel_body() -> (FrameTx, ReqBody) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let body =
        http_body_util::StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
            .boxed();
    (tx, body)
}

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

pub fn full(b: impl Into<Bytes>) -> ReqBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

impl Registry {
    /// Starts the binary with a fresh data directory and extra environment.
    pub fn start(env: &[(&str, &str)]) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("data");
        let mut r = Registry::start_at(&root, env);
        r._dir = Some(dir);
        r
    }

    /// Starts the binary on an existing data directory.
    pub fn start_at(root: &Path, env: &[(&str, &str)]) -> Registry {
        Registry::start_logged(root, env, None)
    }

    /// Starts the binary with its standard error (the logs) going to `log` when given.
    pub fn start_logged(root: &Path, env: &[(&str, &str)], log: Option<&Path>) -> Registry {
        Registry::start_with_args(root, env, log, &[])
    }

    /// [`Registry::start_logged`] with command-line arguments (`--config FILE`).
    pub fn start_with_args(
        root: &Path,
        env: &[(&str, &str)],
        log: Option<&Path>,
        args: &[&str],
    ) -> Registry {
        let stderr = match log {
            Some(p) => Stdio::from(std::fs::File::create(p).expect("log file")),
            None => Stdio::inherit(),
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth-registry"));
        cmd.env_clear()
            .env("REGISTRY_HTTP_ADDR", "127.0.0.1:0")
            .env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", root)
            .env("REGISTRY_LOG_LEVEL", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.args(args);
        let mut child = cmd.spawn().expect("spawn berth-registry");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read listen line");
        let addr = line
            .trim()
            .strip_prefix("berth-registry listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        let client = Client::builder(TokioExecutor::new()).build_http();
        Registry {
            child: Some(child),
            stdout: Some(stdout),
            addr,
            root: root.to_path_buf(),
            _dir: None,
            client,
        }
    }

    /// A client of a registry this test did not start (registry:2), with the same helpers.
    pub fn remote(addr: &str) -> Registry {
        Registry {
            child: None,
            stdout: None,
            addr: addr.to_string(),
            root: PathBuf::new(),
            _dir: None,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// The next line the process printed (after the listen line).
    pub fn next_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .as_mut()
            .expect("a started registry")
            .read_line(&mut line)
            .expect("read a line");
        line.trim().to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a started registry").id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends a request with a body, reads the whole response.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: ReqBody,
    ) -> Resp {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            self.url(path)
        };
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = self
            .client
            .request(b.body(body).expect("request"))
            .await
            .expect("send");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, &[], full(Bytes::new())).await
    }

    pub async fn head(&self, path: &str) -> Resp {
        self.send(Method::HEAD, path, &[], full(Bytes::new())).await
    }

    /// `POST` with no body and no extra headers.
    pub async fn post(&self, path: &str) -> Resp {
        self.send(Method::POST, path, &[], full(Bytes::new())).await
    }

    /// `DELETE` with no body and no extra headers.
    pub async fn delete(&self, path: &str) -> Resp {
        self.send(Method::DELETE, path, &[], full(Bytes::new()))
            .await
    }

    /// Pushes a blob monolithically (POST then PUT) and returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let d = sha256(data);
        let r = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                full(Bytes::new()),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "POST upload: {:?}", r.body);
        let loc = r.header("location").expect("Location").to_string();
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self
            .send(
                Method::PUT,
                &format!("{loc}{sep}digest={d}"),
                &[("content-type", "application/octet-stream")],
                full(Bytes::copy_from_slice(data)),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "PUT upload: {:?}", r.body);
        d
    }

    /// Pushes an image (config + layers) and its OCI manifest under `tag`; returns the manifest digest.
    pub async fn push_image(&self, repo: &str, tag: &str, layers: &[&[u8]]) -> (String, Vec<u8>) {
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let cd = self.push_blob(repo, config).await;
        let mut descs = Vec::new();
        for l in layers {
            let d = self.push_blob(repo, l).await;
            descs.push(serde_json::json!({"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":d,"size":l.len()}));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType":"application/vnd.oci.image.config.v1+json","digest":cd,"size":config.len()},
            "layers": descs,
        });
        let bytes = serde_json::to_vec(&manifest).expect("json");
        let r = self
            .send(
                Method::PUT,
                &format!("/v2/{repo}/manifests/{tag}"),
                &[("content-type", "application/vnd.oci.image.manifest.v1+json")],
                full(bytes.clone()),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "PUT manifest: {:?}", r.body);
        (sha256(&bytes), bytes)
    }

    /// Peak resident memory of the process in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops with SIGTERM and waits (bounded) for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self
                .child
                .as_mut()
                .expect("a started registry")
                .try_wait()
                .expect("wait")
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "registry did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every blob in a data directory, as `ALG:HEX`.
pub fn blobs_on_disk(root: &Path) -> std::collections::BTreeSet<String> {
    files_under(&root.join("docker/registry/v2/blobs"))
        .into_iter()
        .filter_map(|f| {
            let parts: Vec<&str> = f.split('/').collect();
            match parts.as_slice() {
                [alg, _, hex, "data"] => Some(format!("{alg}:{hex}")),
                _ => None,
            }
        })
        .collect()
}

/// Walks a directory tree and returns every file path relative to it.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(
                    p.strip_prefix(dir)
                        .unwrap_or(&p)
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out.sort();
    out
}

/// A tmpfs mounted for one test, unmounted when dropped. Mounting needs root, as CI has; without it the test
/// fails with that reason (it never skips).
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount(8)");
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Makes the filesystem read-only (`true`) or writable again.
    pub fn read_only(&self, ro: bool) {
        let opt = if ro { "remount,ro" } else { "remount,rw" };
        let out = Command::new("mount")
            .args(["-o", opt])
            .arg(self.dir.path())
            .output()
            .expect("mount(8)");
        assert!(
            out.status.success(),
            "mount -o {opt}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

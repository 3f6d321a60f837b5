//! A real S3 endpoint for tests: moto_server started on a free port, stopped by PID when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_registry::storage::s3::{S3Options, S3Storage};

/// A running moto_server.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    addr: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// One HTTP/1.1 request with an empty body; returns the status code and the body.
fn raw_request(addr: &str, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Ok((status, body))
}

impl Moto {
    /// Starts moto_server (installed by scripts/install-test-deps.sh; a missing binary fails the test).
    pub fn start() -> Moto {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server must be installed (scripts/install-test-deps.sh: pip install 'moto[server]')");
        let mut m = Moto {
            child,
            endpoint: format!("http://{addr}"),
            addr,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = raw_request(&m.addr, "GET", "/") {
                break;
            }
            if let Ok(Some(status)) = m.child.try_wait() {
                panic!("moto_server exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, name: &str) {
        let (status, body) =
            raw_request(&self.addr, "PUT", &format!("/{name}")).expect("PUT bucket");
        assert_eq!(status, 200, "create bucket {name}: {body}");
    }

    /// Every key in a bucket, sorted (raw listing, no berth code involved).
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!("/{bucket}?list-type=2&max-keys=1000");
            if let Some(t) = &token {
                let q: String = form_urlencoded::byte_serialize(t.as_bytes()).collect();
                path.push_str(&format!("&continuation-token={q}"));
            }
            let (status, body) = raw_request(&self.addr, "GET", &path).expect("list bucket");
            assert_eq!(status, 200, "list {bucket}: {body}");
            for k in body.split("<Key>").skip(1) {
                if let Some((k, _)) = k.split_once("</Key>") {
                    keys.push(k.replace("&amp;", "&"));
                }
            }
            token = body
                .split_once("<NextContinuationToken>")
                .and_then(|(_, r)| r.split_once("</NextContinuationToken>"))
                .map(|(t, _)| t.to_string());
            if token.is_none() {
                break;
            }
        }
        keys.sort();
        keys
    }

    /// berth's S3 storage on `bucket` under `root`.
    pub fn storage(&self, bucket: &str, root: &str, chunk_size: u64) -> Arc<S3Storage> {
        Arc::new(
            S3Storage::new(&S3Options {
                bucket: bucket.into(),
                region: "us-east-1".into(),
                endpoint: Some(self.endpoint.clone()),
                force_path_style: true,
                allow_http: true,
                root_directory: root.into(),
                access_key: Some("berth-test".into()),
                secret_key: Some("berth-test-secret".into()),
                session_token: None,
                chunk_size,
            })
            .expect("S3 storage"),
        )
    }

    /// The environment that points berth-registry (or registry:2) at `bucket` under `root`.
    pub fn registry_env(&self, bucket: &str, root: &str) -> Vec<(String, String)> {
        [
            ("REGISTRY_STORAGE", "s3"),
            ("REGISTRY_STORAGE_S3_BUCKET", bucket),
            ("REGISTRY_STORAGE_S3_REGION", "us-east-1"),
            ("REGISTRY_STORAGE_S3_REGIONENDPOINT", &self.endpoint),
            ("REGISTRY_STORAGE_S3_ACCESSKEY", "berth-test"),
            ("REGISTRY_STORAGE_S3_SECRETKEY", "berth-test-secret"),
            ("REGISTRY_STORAGE_S3_SECURE", "false"),
            ("REGISTRY_STORAGE_S3_ROOTDIRECTORY", root),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! The real berth-proxy binary in front of registries started by a test.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A berth-proxy process (the real binary) in front of `upstreams`.
pub struct Proxy {
    pub child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The proxy's dev CA certificate (`devdockerCA.crt`).
    pub ca: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn proxy_binary() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_berth-registry")).with_file_name("berth-proxy");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build --workspace --bins` (scripts/test.sh does)",
        p.display()
    );
    p
}

pub fn start_proxy(dir: &Path, upstreams: &[&str], user: &str, password: &str) -> Proxy {
    let htpasswd = dir.join("htpasswd");
    let mut add = Command::new(proxy_binary())
        .args([
            "user",
            "add",
            user,
            "--password-stdin",
            "--cost",
            "4",
            "--file",
        ])
        .arg(&htpasswd)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("berth-proxy user add");
    writeln!(add.stdin.take().unwrap(), "{password}").unwrap();
    assert!(add.wait().unwrap().success(), "berth-proxy user add failed");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let upstream: Vec<String> = upstreams.iter().map(|u| format!("http://{u}")).collect();
    let log = std::fs::File::create(dir.join("proxy.log")).unwrap();
    let child = Command::new(proxy_binary())
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("BERTH_LISTEN", &addr)
        .env("BERTH_CERTS_DIR", dir.join("certs"))
        .env("BERTH_TLS_HOSTS", "127.0.0.1")
        .env("BERTH_HTPASSWD", &htpasswd)
        .env("BERTH_UPSTREAM", upstream.join(","))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("berth-proxy serve");
    let mut p = Proxy {
        child,
        addr,
        ca: dir.join("certs").join("devdockerCA.crt"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(&p.addr).is_err() {
        if let Ok(Some(s)) = p.child.try_wait() {
            panic!(
                "berth-proxy exited ({s}): {}",
                std::fs::read_to_string(dir.join("proxy.log")).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "berth-proxy did not listen in 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

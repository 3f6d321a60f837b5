//! The real `berth-proxy` binary: `ca`, `user`, `check-config`, and `serve` with generated certificates, a big
//! streamed transfer both ways, and its peak memory.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use http_body_util::BodyExt;

const BIN: &str = env!("CARGO_BIN_EXE_berth-proxy");

fn proxy_cmd() -> Command {
    let mut c = Command::new(BIN);
    // Nothing from the developer's environment leaks in.
    for (k, _) in std::env::vars() {
        if k.starts_with("BERTH_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn ca_init_and_issue() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("certs");
    let out = proxy_cmd()
        .args([
            "ca",
            "init",
            "--host",
            "reg.example",
            "--host",
            "localhost",
            "--ip",
            "10.1.2.3",
            "--dir",
        ])
        .arg(&d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    for (f, mode) in [
        ("devdockerCA.key", 0o600),
        ("domain.key", 0o600),
        ("devdockerCA.crt", 0o644),
        ("domain.crt", 0o644),
    ] {
        let m = std::fs::metadata(d.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, mode, "{f}");
    }
    let ca = std::fs::read(d.join("devdockerCA.crt")).unwrap();
    let again = proxy_cmd()
        .args(["ca", "init", "--host", "x.example", "--dir"])
        .arg(&d)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(
        std::fs::read(d.join("devdockerCA.crt")).unwrap(),
        ca,
        "CA not overwritten"
    );
    // The CA vouches only for the names it was made for: another name is refused with one line that says
    // how to make a wider CA, and nothing is written.
    let domain = std::fs::read(d.join("domain.crt")).unwrap();
    let outside = proxy_cmd()
        .args(["ca", "issue", "--host", "new.example", "--dir"])
        .arg(&d)
        .output()
        .unwrap();
    assert!(!outside.status.success());
    let err = String::from_utf8_lossy(&outside.stderr);
    assert!(
        err.contains("new.example") && err.contains("ca init --force") && err.lines().count() == 1,
        "{err}"
    );
    assert_eq!(std::fs::read(d.join("domain.crt")).unwrap(), domain);
    let issue = proxy_cmd()
        .args(["ca", "issue", "--host", "new.reg.example", "--dir"])
        .arg(&d)
        .output()
        .unwrap();
    assert!(
        issue.status.success(),
        "{}",
        String::from_utf8_lossy(&issue.stderr)
    );
    assert!(String::from_utf8_lossy(&issue.stdout).contains("CA vouches only for: localhost"));
    assert_eq!(std::fs::read(d.join("devdockerCA.crt")).unwrap(), ca);
    // openssl, when present, confirms the SANs, EKU and chain; rustls verification is covered in tests/proxy.rs.
    if let Ok(o) = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(d.join("domain.crt"))
        .output()
    {
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("DNS:new.reg.example"), "{text}");
        assert!(text.contains("TLS Web Server Authentication"), "{text}");
    }
    let rsa = proxy_cmd()
        .args([
            "ca",
            "init",
            "--force",
            "--key-type",
            "rsa2048",
            "--host",
            "localhost",
            "--dir",
        ])
        .arg(&d)
        .output()
        .unwrap();
    assert!(
        rsa.status.success(),
        "{}",
        String::from_utf8_lossy(&rsa.stderr)
    );
    berth_proxy::tls::load_certified_key(&d.join("domain.crt"), &d.join("domain.key")).unwrap();
}

#[test]
fn check_config_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("proxy.toml");
    std::fs::write(&cfg, "realm = \"ok\"\nuser_agent_deny = [\"(\"]\n").unwrap();
    let out = proxy_cmd()
        .args(["check-config", "--config"])
        .arg(&cfg)
        .env("BERTH_LISTEN", "not-an-address")
        .env("BERTH_UPSTREAM", "ftp://x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "listen (BERTH_LISTEN)",
        "upstreams (BERTH_UPSTREAM)",
        "user_agent_deny",
    ] {
        assert!(err.contains(key), "{key} in {err}");
    }
    let ok = proxy_cmd()
        .args(["check-config"])
        .env("BERTH_REALM", "r")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("realm = \"r\""));
}

#[test]
fn a_broken_access_file_is_one_line_naming_file_and_line_and_serve_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        "[groups]\ndevs = [\"a\"]\n\n[[rule]]\nrepos = \"team/**\"\npush = [\"@ops\"]\n",
    )
    .unwrap();
    let want = format!("error: {}:6: unknown group \"@ops\"\n", acl.display());
    let out = proxy_cmd()
        .args(["check-config"])
        .env("BERTH_ACL", &acl)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr), want);
    let out = proxy_cmd()
        .args(["serve"])
        .env("BERTH_ACL", &acl)
        .env("BERTH_LISTEN", "127.0.0.1:0")
        .env("BERTH_CERTS_DIR", dir.path().join("certs"))
        .env("BERTH_HTPASSWD", dir.path().join("htpasswd"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:6: unknown group \"@ops\"", acl.display())),
        "{err}"
    );
    std::fs::write(&acl, "[[rule]]\nrepos = \"**\"\npull = [\"*\"]\n").unwrap();
    let ok = proxy_cmd()
        .args(["check-config"])
        .env("BERTH_ACL", &acl)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("access rules OK: 1 rules"));
}

#[test]
fn user_add_list_remove_is_understood_by_apache_htpasswd() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth/htpasswd");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "# keep me\n").unwrap();
    htpasswd(&["-bm", file.to_str().unwrap(), "old", "old-pw"]);
    let add = |name: &str, pw: &str| {
        let mut child = proxy_cmd()
            .args(["user", "add", name, "--password-stdin", "--cost", "5"])
            .env("BERTH_HTPASSWD", &file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{pw}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    add("alice", "s3cret pw");
    add("bob", "bob-pw");
    add("alice", "changed");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("# keep me\nold:$apr1$"), "{text}");
    assert!(text.contains("alice:$2y$05$"));
    // Apache's own tool verifies the hashes berth wrote.
    let verify = |user: &str, pw: &str| {
        Command::new("/usr/bin/htpasswd")
            .args(["-vb", file.to_str().unwrap(), user, pw])
            .output()
            .expect("/usr/bin/htpasswd is required")
            .status
            .success()
    };
    assert!(verify("alice", "changed"));
    assert!(!verify("alice", "s3cret pw"));
    assert!(verify("bob", "bob-pw"));
    let list = proxy_cmd()
        .args(["user", "list", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&list.stdout), "old\nalice\nbob\n");
    let rm = proxy_cmd()
        .args(["user", "remove", "bob", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(rm.status.success());
    let rm = proxy_cmd()
        .args(["user", "remove", "bob", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!rm.status.success());
    let list = proxy_cmd()
        .args(["user", "list", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&list.stdout), "old\nalice\n");
    let bad = proxy_cmd()
        .args(["user", "add", "a:b", "--password-stdin", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

/// A running `berth-proxy serve` subprocess whose stderr is drained by a thread.
struct Served {
    child: Child,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
    terminated: bool,
}

impl Drop for Served {
    fn drop(&mut self) {
        if !self.terminated {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Served {
    fn start(dir: &Path, upstream: &str) -> Served {
        let mut child = proxy_cmd()
            .env("BERTH_LISTEN", "127.0.0.1:0")
            .env("BERTH_UPSTREAM", upstream)
            .env("BERTH_CERTS_DIR", dir.join("certs"))
            .env("BERTH_HTPASSWD", dir.join("htpasswd"))
            .env("BERTH_TLS_HOSTS", "localhost,127.0.0.1")
            .env("BERTH_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut log = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("no 'listening on' line");
            log.push(line.clone());
            if let Some(a) = line.split("listening on ").nth(1) {
                break a.trim().parse().unwrap();
            }
        };
        Served {
            child,
            addr,
            lines: rx,
            log,
            terminated: false,
        }
    }

    fn drain(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.log.push(l);
        }
    }

    fn vm_hwm_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn terminate(mut self) -> Vec<String> {
        self.terminated = true;
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "berth-proxy did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(100));
        self.drain();
        std::mem::take(&mut self.log)
    }
}

fn big_bytes() -> u64 {
    std::env::var("BERTH_BIG_TEST_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_generates_certs_and_streams_big_bodies_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start().await;
    htpasswd(&[
        "-cbB",
        dir.path().join("htpasswd").to_str().unwrap(),
        "alice",
        "alice-pw",
    ]);
    let served = Served::start(dir.path(), &up.url());
    let startup = served.log.join("\n");
    let ca = dir.path().join("certs/devdockerCA.crt");
    assert!(ca.exists() && dir.path().join("certs/domain.crt").exists());
    assert!(
        startup.contains("scripts/install-ca.sh localhost:"),
        "{startup}"
    );
    assert!(startup.contains("docker login localhost:"), "{startup}");

    let total = big_bytes();
    let mut c = Client::connect(served.addr, &ca).await;
    let (parts, _) = c.get("/v2/", None, UA).await;
    assert_eq!(parts.status, 401);

    let started = Instant::now();
    let req = c
        .request("PATCH", "/v2/bigrepo/blobs/uploads/1")
        .header("authorization", basic("alice", "alice-pw"))
        .body(pattern_body(total))
        .unwrap();
    let (parts, body) = c.send(req).await;
    assert_eq!(parts.status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["bytes"], total);
    assert_eq!(
        json["sha256"],
        pattern_sha256(total),
        "upstream got exactly what was sent"
    );
    let up_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let req = c
        .request("GET", &format!("/v2/big/{total}"))
        .header("authorization", basic("alice", "alice-pw"))
        .body(empty())
        .unwrap();
    let resp = c.send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            sha2::Digest::update(&mut h, &d);
            n += d.len() as u64;
        }
    }
    assert_eq!(n, total);
    assert_eq!(
        hex::encode(sha2::Digest::finalize(h)),
        pattern_sha256(total)
    );
    let down_secs = started.elapsed().as_secs_f64();

    let hwm = served.vm_hwm_kib();
    let mib = total as f64 / 1048576.0;
    println!(
        "berth-proxy streamed {mib:.0} MiB up in {up_secs:.1}s ({:.0} MiB/s) and down in {down_secs:.1}s ({:.0} MiB/s); \
         peak RSS (VmHWM) {} KiB",
        mib / up_secs,
        mib / down_secs,
        hwm
    );
    assert!(
        hwm < 100 * 1024,
        "peak RSS {hwm} KiB: bodies must stream, not buffer"
    );
    drop(c);
    let log = served.terminate().join("\n");
    assert!(log.contains("berth_proxy::access"), "{log}");
    assert!(
        log.contains("user=\"alice\"") || log.contains("user=alice"),
        "{log}"
    );
    assert!(!log.contains("alice-pw"), "passwords never logged");
}

#!/usr/bin/env python3
"""The web interface in a real browser: Chromium (trusting the dev CA through its NSS store) driven by Selenium.

Starts berth-registry and berth-proxy on free ports, pushes an image with skopeo through the proxy, then logs in,
browses, deletes a tag, tries a cross-origin delete, logs out and checks another user's limits. Every page visited
is saved as a PNG in --out.

Usage: BERTH_BIN_DIR=target/release python3 scripts/ui-test.py [--out DIR]   (default DIR: target/ui-test)
"""
import argparse, contextlib, functools, gzip, hashlib, http.server, io, json, os, shutil, socket  # noqa: E401
import ssl, subprocess, sys, tarfile, tempfile, threading, time, traceback, urllib.error, urllib.parse  # noqa: E401
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, TimeoutException, UnexpectedAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parent.parent
PASSWORDS = {"alice": "alice-Secret-1", "bob": "bob-Secret-2"}
HOSTILE_ENV = "X=<script>alert(1)</script>"
HOSTILE_LABEL = "<img src=x onerror=alert(1)>"
ACL = """[[rule]]
repos = "public/**"
pull = ["alice", "bob"]
push = ["alice"]
delete = ["alice"]

[[rule]]
repos = "**"
pull = ["alice"]
push = ["alice"]
delete = ["alice"]
"""


class Failure(Exception):
    """A failed check: its message is the FAILED line."""


def check(cond, message):
    if not cond:
        raise Failure(message)


def step(message):
    print(f"\n==> {message}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    check(r.returncode == 0, f"{cmd[0]} {cmd[1]} failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()[-800:]}")
    return r.stdout


def wait_for(what, probe, proc, timeout=60):
    """Polls probe() until it returns true; fails at the deadline or when proc exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check(proc.poll() is None, f"{what} exited with status {proc.returncode} (log tail below)")
        try:
            if probe():
                return
        except OSError:
            pass
        time.sleep(0.1)  # polling interval, not synchronisation
    raise Failure(f"{what} not ready after {timeout} s (log tail below)")


def tail(path, n=15):
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:]) if Path(path).exists() else "(no log)"


def sha256(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def build_layout(d):
    """An OCI image layout with two gzip layers and a config holding hostile text; returns the manifest digest."""
    blobs = d / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data):
        (blobs / hashlib.sha256(data).hexdigest()).write_bytes(data)
        return sha256(data)

    layers, diff_ids = [], []
    for name, text in (("hello.txt", b"hello from berth\n"), ("etc/app.conf", b"port=8080\n")):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(text), 1700000000, 0o644
            tar.addfile(info, io.BytesIO(text))
        raw = buf.getvalue()
        gz = gzip.compress(raw, mtime=0)
        diff_ids.append(sha256(raw))
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": blob(gz), "size": len(gz)})
    config = json.dumps({
        "created": "2026-01-02T03:04:05Z", "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin", HOSTILE_ENV], "Entrypoint": ["/app"],
                   "Cmd": ["--serve"], "ExposedPorts": {"8080/tcp": {}},
                   "Labels": {"org.opencontainers.image.title": "webapp", "note": HOSTILE_LABEL}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2026-01-02T03:04:05Z", "created_by": "COPY hello.txt /"},
                    {"created": "2026-01-02T03:04:05Z", "created_by": "COPY app.conf /etc/"}],
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(config),
                   "size": len(config)},
        "layers": layers,
    }).encode()
    digest = blob(manifest)
    (d / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (d / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))
    return digest


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def attacker_server(site):
    """Another origin: plain HTTP on 127.0.0.1, serving the files in site."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


class UiTest:
    def __init__(self, out):
        self.out, self.shots = out, 0
        self.procs, self.driver, self.service, self.srv = [], None, None, None
        self.tmp = Path(tempfile.mkdtemp(prefix="berth-ui-test."))

    # ---- helpers ----
    def start(self, name, cmd, env):
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as f:
            p = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        self.procs.append((name, p, log))
        return p, log

    def shot(self, name, width=1280):
        """A full-page screenshot: the window grows to the page's height for the capture."""
        self.shots += 1
        d = self.driver
        height, extra = d.execute_script("return [document.documentElement.scrollHeight, "
                                         "window.outerHeight - window.innerHeight]")
        d.set_window_size(width, max(1000, min(int(height) + int(extra), 6000)))
        path = self.out / f"{self.shots:02d}-{name}.png"
        d.save_screenshot(str(path))
        d.set_window_size(1280, 1000)
        print(f"    screenshot {path}")

    def wait(self, cond, what, timeout=20):
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(cond)
        except TimeoutException as e:
            raise Failure(f"timed out waiting for {what} (at {self.driver.current_url}): {type(e).__name__}") from e

    def css(self, sel):
        return self.driver.find_elements(By.CSS_SELECTOR, sel)

    def text(self, sel):
        found = self.css(sel)
        check(found, f"no element {sel!r} on {self.driver.current_url}")
        return found[0].text.strip()

    def open(self, path):
        self.driver.get(self.base + path)

    def registry_tags(self, repo):
        with urllib.request.urlopen(f"{self.registry}/v2/{repo}/tags/list", timeout=10) as r:
            return json.load(r).get("tags") or []

    def login(self, user, password):
        self.open("/ui/")
        self.wait(EC.presence_of_element_located((By.ID, "user")), "the login form")
        check("/ui/login?next=" in self.driver.current_url, f"/ui/ without a session went to {self.driver.current_url}")
        self.driver.find_element(By.ID, "user").clear()
        self.driver.find_element(By.ID, "user").send_keys(user)
        self.driver.find_element(By.ID, "password").send_keys(password)
        self.driver.find_element(By.CSS_SELECTOR, 'form[action="/ui/login"] button[type="submit"]').click()

    def repo_rows(self):
        cells = [[c.text.strip() for c in tr.find_elements(By.TAG_NAME, "td")]
                 for tr in self.css("table.list tbody tr")]
        return {c[0]: c[1:] for c in cells}

    def tag_rows(self):
        return {tr.find_element(By.CSS_SELECTOR, "td.tag a").text.strip():
                [c.text.strip() for c in tr.find_elements(By.CSS_SELECTOR, "span.chip")]
                for tr in self.css("table.list tbody tr")}

    # ---- the stack ----
    def setup(self, bin_dir):
        step("starting berth-registry and berth-proxy on free ports")
        t = self.tmp
        for b in ("berth-registry", "berth-proxy"):
            check((bin_dir / b).is_file(), f"{bin_dir / b} is missing (BERTH_BIN_DIR={bin_dir})")
        htpasswd = t / "htpasswd"
        run(["htpasswd", "-Bbc", str(htpasswd), "alice", PASSWORDS["alice"]])
        run(["htpasswd", "-Bb", str(htpasswd), "bob", PASSWORDS["bob"]])
        (t / "access.toml").write_text(ACL)
        rport, pport = free_port(), free_port()
        self.registry, self.host = f"http://127.0.0.1:{rport}", f"localhost:{pport}"
        self.base = f"https://{self.host}"
        reg, _ = self.start("registry", [str(bin_dir / "berth-registry")], {
            "PATH": os.environ["PATH"], "REGISTRY_HTTP_ADDR": f"127.0.0.1:{rport}",
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(t / "data"), "REGISTRY_STORAGE_DELETE_ENABLED": "true"})
        wait_for("berth-registry", lambda: urllib.request.urlopen(self.registry + "/v2/", timeout=2).status == 200,
                 reg)
        proxy, _ = self.start("proxy", [str(bin_dir / "berth-proxy")], dict(
            os.environ, BERTH_LISTEN=f"127.0.0.1:{pport}", BERTH_UPSTREAM=self.registry,
            BERTH_CERTS_DIR=str(t / "certs"), BERTH_HTPASSWD=str(htpasswd), BERTH_ACL=str(t / "access.toml"),
            BERTH_TLS_HOSTS="localhost,127.0.0.1"))
        self.ca = t / "certs" / "devdockerCA.crt"

        def healthy():
            if not self.ca.exists():
                return False
            ctx = ssl.create_default_context(cafile=str(self.ca))
            with urllib.request.urlopen(self.base + "/_berth/health", context=ctx, timeout=2) as r:
                return json.load(r).get("status") == "ok"
        wait_for("berth-proxy", healthy, proxy)
        self.tls = ssl.create_default_context(cafile=str(self.ca))
        print(f"    registry {self.registry}, proxy {self.base}")

    def push(self):
        step("pushing an image with skopeo through the proxy (team/webapp:1.0, :latest, public/tool:1.0)")
        certs = self.tmp / "skopeo-certs"
        certs.mkdir()
        shutil.copy(self.ca, certs / "ca.crt")
        layout = self.tmp / "layout"
        layout_digest = build_layout(layout)
        creds = f"alice:{PASSWORDS['alice']}"
        for target in ("team/webapp:1.0", "team/webapp:latest", "public/tool:1.0"):
            digest_file = self.tmp / "digest"
            run(["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-creds", creds, "--dest-cert-dir", str(certs),
                 "--digestfile", str(digest_file), f"oci:{layout}:latest", f"docker://{self.host}/{target}"])
            if target == "team/webapp:1.0":
                self.pushed = digest_file.read_text().strip()
        inspected = json.loads(run(["skopeo", "inspect", "--cert-dir", str(certs), "--creds", creds,
                                    f"docker://{self.host}/team/webapp:1.0"]))
        check(inspected["Digest"] == self.pushed == layout_digest,
              f"digests differ: skopeo copy {self.pushed}, inspect {inspected['Digest']}, layout {layout_digest}")
        print(f"    pushed {self.pushed}")

    def start_browser(self):
        step("starting Chromium (headless) with the dev CA in its NSS store")
        home = self.tmp / "home"
        nss = home / ".pki" / "nssdb"
        nss.mkdir(parents=True)
        run(["certutil", "-d", f"sql:{nss}", "-N", "--empty-password"])
        run(["certutil", "-d", f"sql:{nss}", "-A", "-n", "berth-dev-ca", "-t", "C,,", "-i", str(self.ca)])
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  f"--user-data-dir={self.tmp / 'profile'}", "--window-size=1280,1000"):
            opts.add_argument(a)
        opts.unhandled_prompt_behavior = "ignore"  # an alert stays open, for the check to find it
        # chromedriver passes its environment (HOME, hence the NSS store) on to Chromium.
        self.service = Service(executable_path="/usr/bin/chromedriver", env=dict(os.environ, HOME=str(home)),
                               log_output=str(self.tmp / "chromedriver.log"))
        self.driver = webdriver.Chrome(service=self.service, options=opts)
        self.driver.set_page_load_timeout(60)

    # ---- the checks ----
    def test(self):
        d = self.driver
        step("1. login: a wrong password is refused, the right one lands on the repository list")
        self.open("/ui/")
        self.wait(EC.presence_of_element_located((By.ID, "user")), "the login form")
        self.shot("login")
        self.login("alice", "not-the-password")
        self.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "p.error")), "the login error")
        check(self.text("p.error") == "Wrong user name or password.", f"login error says {self.text('p.error')!r}")
        self.shot("login-wrong-password")
        self.login("alice", PASSWORDS["alice"])
        self.wait(EC.url_to_be(self.base + "/ui/"), "the repository list after logging in")
        self.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "table.list")), "the repository table")
        self.shot("repos")

        step("2. the list shows team/webapp and public/tool")
        rows = self.repo_rows()
        for repo in ("team/webapp", "public/tool"):
            check(self.css(f'table.list a[href="/ui/r/{repo}"]'), f"no link to {repo} on the list: {rows}")
        check(rows["team/webapp"][0] == "2", f"team/webapp should show 2 tags: {rows['team/webapp']}")
        check(rows["team/webapp"][1] not in ("", "—"), f"team/webapp shows no last push: {rows['team/webapp']}")

        step("3. team/webapp lists tags 1.0 and latest, linux/amd64")
        self.css('a[href="/ui/r/team/webapp"]')[0].click()
        self.wait(EC.url_to_be(self.base + "/ui/r/team/webapp"), "the tags page")
        tags = self.tag_rows()
        check(set(tags) == {"1.0", "latest"}, f"tags shown: {sorted(tags)}")
        for t, chips in tags.items():
            check(chips == ["linux/amd64"], f"tag {t} shows platforms {chips}")
        self.shot("tags")
        # On a phone's width the page fits: nothing scrolls sideways.
        d.set_window_size(390, 844)
        self.wait(lambda drv: drv.execute_script("return window.innerWidth") < 500, "a phone-sized window")
        wide = d.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        self.shot("tags-phone", width=390)
        check(wide <= 0, f"the tags page scrolls sideways by {wide} px on a phone's width")

        step("4. the image page of 1.0: digest, layers, escaped config, copy button")
        self.css('td.tag a[href="/ui/r/team/webapp/-/image/1.0"]')[0].click()
        self.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "dd.digest")), "the image page")
        try:
            alert = d.switch_to.alert
            raise Failure(f"an alert ran on the image page: {alert.text!r}")
        except NoAlertPresentException:
            pass
        check(self.text("dd.digest") == self.pushed, f"digest shown {self.text('dd.digest')!r}, pushed {self.pushed}")
        check(self.text("span.layer-count") == "2", f"layer count shown: {self.text('span.layer-count')!r}")
        check(HOSTILE_ENV in [e.text for e in self.css("ul.mono li")], "the hostile Env value is not shown as text")
        check(HOSTILE_LABEL in [e.text for e in self.css("table.list td.mono")], "the hostile label not shown as text")
        check(not self.css('img[src="x"]') and not self.css("main script"), "hostile config text became markup")
        check("8080/tcp" in d.find_element(By.TAG_NAME, "main").text, "exposed port 8080/tcp not shown")
        want = f"docker pull {self.host}/team/webapp:1.0"
        lines = [c for c in self.css("div.copy") if c.find_element(By.TAG_NAME, "textarea").get_attribute("value") == want]
        check(lines, f"no copy line {want!r}; lines: {[i.get_attribute('value') for i in self.css('div.copy textarea')]}")
        button = lines[0].find_element(By.CSS_SELECTOR, "button.copy-button")
        self.wait(EC.visibility_of(button), "the copy button to show (berth.js)")
        button.click()
        self.wait(lambda _: button.text == "Copied", 'the copy button to say "Copied"', timeout=5)
        self.shot("image-1.0")

        step("5. delete tag 1.0 through the confirmation page")
        self.open("/ui/r/team/webapp")
        self.css('a.danger[href="/ui/r/team/webapp/-/delete?ref=1.0"]')[0].click()
        self.wait(EC.presence_of_element_located((By.CSS_SELECTOR, 'form[action="/ui/r/team/webapp/-/delete"]')),
                  "the delete confirmation")
        ref = d.find_element(By.CSS_SELECTOR, 'input[name="ref"]').get_attribute("value")
        check(ref == "1.0", f"the confirmation page deletes {ref!r}, not 1.0")
        self.shot("delete-confirm")
        submit = d.find_element(By.CSS_SELECTOR, 'form[action="/ui/r/team/webapp/-/delete"] button[type="submit"]')
        check(submit.text == "Delete", f"confirm button says {submit.text!r}")
        submit.click()
        self.wait(EC.url_to_be(self.base + "/ui/r/team/webapp?deleted=1.0"), "the tags page after deleting")
        check(self.text("p.notice") == "Deleted 1.0.", f"notice says {self.text('p.notice')!r}")
        check(set(self.tag_rows()) == {"latest"}, f"tags shown after the delete: {sorted(self.tag_rows())}")
        self.shot("tags-after-delete")
        reg_tags = self.registry_tags("team/webapp")
        check("1.0" not in reg_tags and "latest" in reg_tags, f"registry tags after the delete: {reg_tags}")

        step("6. a cross-origin form POST to delete latest is refused")
        site = self.tmp / "site"
        site.mkdir()
        (site / "index.html").write_text(
            f'<!doctype html><title>elsewhere</title><form id="f" method="post" action="{self.base}/ui/r/team/webapp'
            '/-/delete"><input type="hidden" name="ref" value="latest"><input type="hidden" name="csrf" '
            'value="forged-token"></form><script>document.getElementById("f").submit()</script>')
        self.srv = attacker_server(site)
        d.get(f"http://127.0.0.1:{self.srv.server_address[1]}/")
        self.wait(EC.url_contains(self.base + "/ui/"), "the forged form to reach the proxy")
        self.wait(EC.presence_of_element_located((By.TAG_NAME, "h1")), "the answer to the forged form")
        url, h1 = d.current_url, self.text("h1")
        self.shot("cross-origin-refused")
        check(url == self.base + "/ui/r/team/webapp/-/delete", f"the forged POST was redirected to {url}")
        check(h1 == "Refused" and self.text("p.status") == "HTTP 403",
              f"the forged POST was answered {h1!r} {self.text('p.status')!r}")
        print(f"    answered: {h1} ({self.text('p.status')})")
        check("latest" in self.registry_tags("team/webapp"), "the cross-origin POST deleted latest")
        # The browser sent no cookie (SameSite=Strict). Without SameSite, the Origin check must refuse too: the
        # same POST with alice's real session cookie and form token, from the other origin.
        self.open("/ui/")
        csrf = d.find_element(By.CSS_SELECTOR, 'form[action="/ui/logout"] input[name="csrf"]').get_attribute("value")
        cookie = d.get_cookie("__Host-berth_session")
        check(cookie and cookie.get("sameSite") == "Strict" and cookie.get("httpOnly") and cookie.get("secure"),
              f"the session cookie is not HttpOnly, Secure, SameSite=Strict: {cookie}")
        form = urllib.parse.urlencode({"ref": "latest", "csrf": csrf}).encode()
        req = urllib.request.Request(
            self.base + "/ui/r/team/webapp/-/delete", data=form,
            headers={"Cookie": f"__Host-berth_session={cookie['value']}", "Content-Type": "application/x-www-form-urlencoded",
                     "Origin": f"http://127.0.0.1:{self.srv.server_address[1]}"})
        try:
            urllib.request.urlopen(req, context=self.tls, timeout=10)
            raise Failure("a POST with a foreign Origin (and a valid session and token) was accepted")
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")
            check(e.code == 403 and "This form was sent from another site." in body,
                  f"a POST with a foreign Origin got {e.code}, not the cross-site refusal")
        check("latest" in self.registry_tags("team/webapp"), "the POST with a foreign Origin deleted latest")
        print("    with the session cookie and token but a foreign Origin: refused (403)")

        step("help page links the CA, and /ui/ca.crt is devdockerCA.crt")
        self.open("/ui/help")
        self.wait(EC.presence_of_element_located((By.CSS_SELECTOR, 'a[href="/ui/ca.crt"]')), "the CA link on /ui/help")
        self.shot("help")
        with urllib.request.urlopen(self.base + "/ui/ca.crt", context=self.tls, timeout=10) as r:
            check(r.read() == self.ca.read_bytes(), "/ui/ca.crt differs from devdockerCA.crt")

        step("7. logout; /ui/ asks to log in again")
        self.open("/ui/")
        d.find_element(By.CSS_SELECTOR, 'form[action="/ui/logout"] button').click()
        self.wait(EC.presence_of_element_located((By.ID, "user")), "the login form after logging out")
        self.open("/ui/")
        self.wait(EC.presence_of_element_located((By.ID, "password")), "the login form on /ui/ after logging out")
        check("/ui/login" in d.current_url, f"/ui/ after logout is {d.current_url}")
        check(not self.css('form[action="/ui/logout"]'), "still signed in after logging out")
        self.shot("logged-out")

        step("8. bob sees public/tool only, and team/webapp is not allowed")
        self.login("bob", PASSWORDS["bob"])
        self.wait(EC.url_to_be(self.base + "/ui/"), "bob's repository list")
        check(self.css('a[href="/ui/r/public/tool"]'), "bob does not see public/tool")
        check(not self.css('a[href="/ui/r/team/webapp"]'), "bob sees team/webapp")
        self.shot("repos-bob")
        self.open("/ui/r/team/webapp")
        self.wait(EC.presence_of_element_located((By.TAG_NAME, "h1")), "the page of team/webapp for bob")
        check(self.text("h1") == "Not allowed" and self.text("p.status") == "HTTP 403",
              f"bob on team/webapp: {self.text('h1')!r} {self.css('p.status')[0].text if self.css('p.status') else ''}")
        self.shot("not-allowed-bob")
        self.open("/ui/r/public/tool")
        check(set(self.tag_rows()) == {"1.0"} and not self.css("a.danger"),
              "bob's public/tool page: expected tag 1.0 and no delete links")

    def cleanup(self):
        with contextlib.suppress(Exception):
            self.driver and self.driver.quit()
        with contextlib.suppress(Exception):
            self.service and self.service.stop()
        if self.srv:
            self.srv.shutdown()
        for _, p, _ in self.procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "target" / "ui-test", help="where the screenshots go")
    args = ap.parse_args()
    bin_dir = Path(os.environ.get("BERTH_BIN_DIR", "target/release"))
    if not bin_dir.is_absolute() and not bin_dir.exists():
        bin_dir = ROOT / bin_dir
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.png"):
        old.unlink()
    began = time.monotonic()
    t = UiTest(args.out.resolve())
    try:
        t.setup(bin_dir.resolve())
        t.push()
        t.start_browser()
        t.test()
    except BaseException as e:
        if not isinstance(e, Failure):
            traceback.print_exc()
        with contextlib.suppress(Exception):
            t.driver and t.shot("failure")
        for name, _, log in t.procs:
            print(f"--- {name} log tail ---\n{tail(log)}", file=sys.stderr)
        message = str(e) if isinstance(e, Failure) else f"{type(e).__name__}: {e}".strip()
        if isinstance(e, UnexpectedAlertPresentException):
            message = f"an alert ran (hostile text executed?): {e.alert_text!r}"
        print("FAILED: " + " | ".join(line.strip() for line in message.splitlines() if line.strip()), file=sys.stderr)
        sys.exit(1)
    finally:
        t.cleanup()
    print(f"\nweb interface test passed in {time.monotonic() - began:.1f} s; screenshots in {args.out}")


if __name__ == "__main__":
    main()

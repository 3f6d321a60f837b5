"""What bench.py and its sections (bench/sections/) share, and soak.py and s3cache.py use: constants, process and
/proc helpers, the two stacks (Stack, start_berth, start_nginx) and their set-up, a registry reached over plain HTTP
(PlainHttp: berth-registry without its proxy, or Trow, started by start_trow), an S3 endpoint (start_moto), the
test data (Blob, random_file, oci_layout), the clients (curl, skopeo, h2load) and the Context that each section's
measure(ctx) receives. What belongs to one measurement (DockerSide, the floods, the listing and gc seeding, ...)
is in that section's module."""

import argparse
import base64
import hashlib
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
MiB = 1 << 20
GiB = 1 << 30
USER = "bench"
PASSWORD = "bench-Pa55word-0f-some-length"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
# The docker section reaches both stacks on this address, the host side of a veth pair: Docker skips certificate
# checks for registries on 127.0.0.0/8, so a loopback address would not measure the TLS a real client does.
DOCKER_ADDR = "10.232.0.1"


def run_reported(results, body):
    """Runs body() and returns its exit status; a BenchError or a timeout is printed and recorded in
    results["error"] as a failure (status 1)."""
    try:
        return body()
    except BenchError as e:
        print(f"\nFAILED: {e}", file=sys.stderr)
        results["error"] = str(e)
    except subprocess.TimeoutExpired as e:
        print(f"\nFAILED: timeout: {e}", file=sys.stderr)
        results["error"] = f"timeout: {e}"
    return 1


def report_logs(errors, warnings, results):
    """Prints the first of berth's warnings and of the processes' errors (from a scan of their logs) and records
    them in results; returns 1 when there are errors, else 0."""
    if warnings:
        print(f"\nberth logged {len(warnings)} warnings (not failures), the first ones:")
        for w in warnings[:10]:
            print(f"  {w}")
        results["log_warnings"] = warnings
    if errors:
        print(f"\nFAILED: {len(errors)} errors in the processes' logs, the first ones:", file=sys.stderr)
        for e in errors[:10]:
            print(f"  {e}", file=sys.stderr)
        results["log_errors"] = errors
        return 1
    return 0


class BenchError(Exception):
    """A stack failed to serve or a tool failed: the run is invalid."""


def tool_versions(cmds):
    """The first line each version command prints: {name: [argv]} -> {name: line}."""
    out = {}
    for name, cmd in cmds.items():
        p = run(cmd, check=False)
        out[name] = ((p.stdout + p.stderr).strip().splitlines() or ["?"])[0]
    return out


def berth_versions(bin_dir, **more):
    """The versions of the two berth binaries in bin_dir, and of the tools in `more` (name=argv)."""
    cmds = {b: [os.path.join(bin_dir, b), "--version"] for b in ("berth-registry", "berth-proxy")}
    cmds.update(more)
    return tool_versions(cmds)


def preflight(bin_dir, tools, flag):
    """Exits with one FAILED line when a berth binary or a tool is missing (scripts/bench.sh FLAG installs them)."""
    for b in ("berth-proxy", "berth-registry"):
        if not os.access(os.path.join(bin_dir, b), os.X_OK):
            sys.exit(f"FAILED: {bin_dir}/{b} missing: cargo build --release --bins")
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        sys.exit(f"FAILED: {', '.join(missing)} missing: scripts/bench.sh {flag} installs them")


def log(msg):
    print(f"    {msg}", flush=True)


def step(msg):
    print(f"\n==> {msg}", flush=True)


def run(cmd, check=True, timeout=3600, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise BenchError(f"{cmd[0]} failed ({p.returncode}): {' '.join(cmd)[:300]}\n{p.stderr[-2000:]}")
    return p


def free_port(addr="127.0.0.1"):
    s = socket.socket()
    s.bind((addr, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def human_size(n):
    if n >= GiB and n % GiB == 0:
        return f"{n // GiB} GiB"
    if n >= MiB:
        return f"{n // MiB} MiB"
    return f"{n // 1024} KiB"


def parse_size(s):
    m = re.fullmatch(r"(\d+)([KMG]?)", s.strip().upper())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {s!r}")
    return int(m.group(1)) * {"": 1, "K": 1024, "M": MiB, "G": GiB}[m.group(2)]


def median(xs):
    return statistics.median(xs) if xs else None


def percentile(sorted_xs, p):
    if not sorted_xs:
        return None
    k = min(len(sorted_xs) - 1, max(0, int(round(p / 100.0 * len(sorted_xs) + 0.5)) - 1))
    return sorted_xs[k]


# ---------------------------------------------------------------------------------------------------------------
# Processes


def children_of(pid):
    """Direct and indirect children of pid, from /proc."""
    parents = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            parents.setdefault(ppid, []).append(int(d))
        except (OSError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in parents.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def rss_kib(pid, field="VmRSS"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid, reaped=False):
    """User + system CPU time of pid so far; with reaped, plus that of its children that have exited and been
    waited for."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        fields = stat[stat.rindex(")") + 2:].split()
        return sum(int(x) for x in fields[11:15 if reaped else 13]) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return 0.0


def start_time(pid):
    """When pid started (clock ticks since boot), or None: with the pid, it names one process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def reset_peak(pid):
    """Resets the kernel's peak-RSS counter (VmHWM) of pid (proc(5), clear_refs value 5)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Stack:
    """One stack's processes and how to reach it."""

    def __init__(self, name, label, work):
        self.name = name  # "berth" or "nginx"
        self.label = label
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir, exist_ok=True)
        self.procs = []  # (role, Popen)
        self.port = free_port()
        self.h2_port = self.port  # berth serves both on one port
        self.registry_port = free_port()
        self.cacert = None
        self.cert_dir = None  # for skopeo: a directory with ca.crt

    @property
    def base(self):
        return f"https://127.0.0.1:{self.port}"

    @property
    def host(self):
        return f"127.0.0.1:{self.port}"

    def start(self, role, cmd, env=None, stdout=None, stderr=None):
        out = open(os.path.join(self.dir, f"{role}.out"), "w") if stdout is None else stdout
        err = open(os.path.join(self.dir, f"{role}.log"), "w") if stderr is None else stderr
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=self.dir)
        self.procs.append((role, p))
        return p

    def pids(self):
        """Every process of the stack: the ones started and their children (nginx workers)."""
        out = {}
        for role, p in self.procs:
            if p.poll() is None:
                out[p.pid] = role
                for c in children_of(p.pid):
                    out[c] = f"{role} worker"
        return out

    def stop_role(self, role):
        """Stops the processes started as role and forgets them."""
        for r, p in self.procs:
            if r == role and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)
        self.procs = [(r, p) for r, p in self.procs if r != role]

    def check_alive(self):
        for role, p in self.procs:
            if p.poll() is not None:
                raise BenchError(f"{self.label}: {role} exited with {p.returncode}; its log: {self.dir}/{role}.log "
                                 "(run with --keep to keep it)")

    def stop(self):
        for role, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for role, p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


class PlainHttp:
    """A registry process of a stack reached straight over plain HTTP on loopback, without TLS or credentials:
    berth-registry without berth-proxy in front, or Trow. It stands in for a Stack where curl_req, wait_ready and
    RssSampler take one: name (the key of its figures), label, dir, base, pids (only the process of `role`) and
    check_alive (the whole stack's)."""

    cacert = None  # curl_base: plain HTTP, no credentials

    def __init__(self, name, label, stack, port, role):
        self.name = name
        self.label = label
        self.stack = stack
        self.dir = stack.dir
        self.port = port
        self.role = role

    @property
    def base(self):
        return f"http://127.0.0.1:{self.port}"

    def pids(self):
        return {pid: r for pid, r in self.stack.pids().items() if r == self.role}

    def check_alive(self):
        self.stack.check_alive()


class RssSampler:
    """Peak RSS of every process of the given stacks while active: the kernel's VmHWM after a reset, and a
    20 ms sampler as a cross-check (the larger of the two is reported)."""

    def __init__(self, stacks):
        self.stacks = stacks
        self.peaks = {}
        self.stop_ev = threading.Event()

    def __enter__(self):
        self.cpu0 = {}
        for st in self.stacks:
            for pid, role in st.pids().items():
                reset_peak(pid)
                self.cpu0[(st.name, pid, role)] = cpu_seconds(pid)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def _sample(self, field):
        for st in self.stacks:
            for pid, role in st.pids().items():
                key = (st.name, pid, role)
                self.peaks[key] = max(self.peaks.get(key, 0), rss_kib(pid, field))

    def _loop(self):
        while not self.stop_ev.wait(0.02):
            self._sample("VmRSS")

    def __exit__(self, *exc):
        self.stop_ev.set()
        self.thread.join()
        self._sample("VmHWM")
        self.cpu = {}
        for (stack, pid, role), c0 in self.cpu0.items():
            role = role.replace(" worker", "") if stack == "nginx" else role
            d = self.cpu.setdefault(stack, {})
            d[role] = round(d.get(role, 0.0) + cpu_seconds(pid) - c0, 2)

    def result(self):
        """{stack: {role: peak MiB}}; several processes with one role (nginx workers) get max and sum."""
        out = {}
        for (stack, pid, role), kib in self.peaks.items():
            d = out.setdefault(stack, {})
            d.setdefault(role, []).append(kib / 1024.0)
        res = {}
        for stack, roles in out.items():
            res[stack] = {}
            for role, vals in roles.items():
                res[stack][role] = round(max(vals), 1)
                if len(vals) > 1:
                    res[stack][role + "s (sum)"] = round(sum(vals), 1)
            res[stack]["total"] = round(sum(sum(v) for v in roles.values()), 1)
        return res


def cpu_delta(before, after):
    """CPU seconds spent between two {(pid, name): seconds} snapshots, summed by name."""
    out = {}
    for key, c0 in before.items():
        name = key[1]
        out[name] = out.get(name, 0.0) + max(0.0, after.get(key, c0) - c0)
    return {k: round(v, 3) for k, v in out.items()}


def stack_cpu(st):
    """{(pid, name): CPU seconds} of a stack's processes; nginx's workers count as nginx, berth's docker front
    door as berth-proxy."""
    out = {}
    for pid, role in st.pids().items():
        out[(pid, role.replace(" worker", "").replace("-docker", ""))] = cpu_seconds(pid)
    return out


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------------------------------------------------------
# Setting up


def make_certs(d):
    """The tutorial's openssl-made CA and server certificate (RSA 2048), with SANs for loopback and for the
    docker section's address."""
    os.makedirs(d, exist_ok=True)
    o = lambda *a: run(["openssl", *a], cwd=d)  # noqa: E731
    o("genrsa", "-out", "devdockerCA.key", "2048")
    o("req", "-x509", "-new", "-nodes", "-key", "devdockerCA.key", "-days", "3650", "-out", "devdockerCA.crt",
      "-subj", "/CN=bench devdockerCA")
    o("genrsa", "-out", "domain.key", "2048")
    o("req", "-new", "-key", "domain.key", "-out", "domain.csr", "-subj", "/CN=localhost")
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write(f"subjectAltName=DNS:localhost,IP:127.0.0.1,IP:{DOCKER_ADDR}\nextendedKeyUsage=serverAuth\n")
    o("x509", "-req", "-in", "domain.csr", "-CA", "devdockerCA.crt", "-CAkey", "devdockerCA.key",
      "-CAcreateserial", "-out", "domain.crt", "-days", "3650", "-extfile", "san.ext")
    os.makedirs(os.path.join(d, "skopeo"), exist_ok=True)
    shutil.copy(os.path.join(d, "devdockerCA.crt"), os.path.join(d, "skopeo", "ca.crt"))


def make_htpasswd(path, kind):
    args = {"bcrypt5": ["-B", "-C", "5"], "bcrypt10": ["-B", "-C", "10"], "apr1": ["-m"]}[kind]
    p = run(["htpasswd", "-n", "-b", *args, USER, PASSWORD])
    line = p.stdout.strip().splitlines()[0]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(line + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def fill_template(src, dst, **values):
    with open(src) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace(f"@{k}@", str(v))
    with open(dst, "w") as f:
        f.write(text)


def curl_base(stack, http2=False):
    """curl's arguments for every request to a stack: its CA and the user over TLS or, for a PlainHttp (no CA),
    none (plain HTTP, no credentials)."""
    tls = ["--cacert", stack.cacert, "-u", f"{USER}:{PASSWORD}"] if stack.cacert else []
    return ["curl", "-sS", *tls, "--http2" if http2 else "--http1.1"]


def http_status(stack, path, extra=(), base=None):
    p = run(curl_base(stack) + ["-o", "/dev/null", "-w", "%{http_code}", *extra, (base or stack.base) + path],
            check=False, timeout=60)
    return p.stdout.strip()


def wait_ready(stack, timeout=30, base=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check_alive()
        if http_status(stack, "/v2/", base=base) == "200":
            return
        time.sleep(0.2)
    raise BenchError(f"{stack.label} does not answer GET {base or stack.base}/v2/ with 200 within {timeout}s "
                     f"(see {stack.dir})")


def start_berth(stack, bin_dir, certs, htpasswd_path, storage_env=None):
    """berth-registry and berth-proxy, the registry on the filesystem under the stack's directory or, with
    storage_env ({name: value}: REGISTRY_STORAGE=s3 and the rest), on what those variables say (stack.data is
    then None)."""
    env = dict(os.environ)
    env["REGISTRY_HTTP_ADDR"] = f"127.0.0.1:{stack.registry_port}"
    if storage_env is None:
        data = os.path.join(stack.dir, "data")
        os.makedirs(data, exist_ok=True)
        stack.data = data
        env["REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY"] = data
    else:
        stack.data = None
        env.update(storage_env)
    stack.start("berth-registry", [os.path.join(bin_dir, "berth-registry")], env=env)
    start_proxy(stack, bin_dir, certs, htpasswd_path)


def start_proxy(stack, bin_dir, certs, htpasswd_path):
    """berth-proxy in front of the stack's registry (TLS from certs, users from htpasswd_path); returns once it
    answers GET /v2/ with 200."""
    env = dict(os.environ)
    env.update(BERTH_LISTEN=stack.host, BERTH_UPSTREAM=f"http://127.0.0.1:{stack.registry_port}",
               BERTH_CERTS_DIR=certs, BERTH_HTPASSWD=htpasswd_path)
    stack.start("berth-proxy", [os.path.join(bin_dir, "berth-proxy"), "serve"], env=env)
    stack.cacert = os.path.join(certs, "devdockerCA.crt")
    stack.cert_dir = os.path.join(certs, "skopeo")
    stack.htpasswd = htpasswd_path
    wait_ready(stack)


def start_trow(stack, binary):
    """Trow (github.com/Trow-Registry/trow, the --trow binary) as the stack's process "trow": plain HTTP on the
    stack's port, no user configured (so no authentication), its blobs and SQLite database in stack.data under
    the stack's directory; returns a PlainHttp to it once it answers GET /v2/ with 200."""
    stack.data = os.path.join(stack.dir, "data")
    os.makedirs(stack.data, exist_ok=True)
    stack.start("trow", [binary, "--bind", f"127.0.0.1:{stack.port}", "--data-dir", stack.data])
    trow = PlainHttp("trow", "Trow", stack, stack.port, "trow")
    wait_ready(trow)
    return trow


def finish_run(a, results, work, rc):
    """The end of a benchmark run: the load average, the JSON (with --out), and the work directory kept (with
    --keep or after a failure: the processes' logs are there) or removed."""
    results["meta"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nJSON written to {a.out}")
    if a.keep or rc != 0:
        print(f"work directory kept (the processes' logs are in {work}/*/): {work}")
    else:
        t = time.monotonic()
        shutil.rmtree(work, ignore_errors=True)
        print(f"work directory removed ({time.monotonic() - t:.1f} s)")


def start_nginx(stack, certs, htpasswd_src, docker_addr=None, registry_template=None, registry_values=None,
                registry_env=None):
    """nginx in front of registry:2, both configured from templates in bench/: registry_template (default
    registry-config.yml.in, filesystem storage) is filled with DATA and PORT and any registry_values; registry_env,
    when given, is docker-registry's whole environment (default: this process's)."""
    d = stack.dir
    os.chmod(d, 0o755)
    os.chmod(os.path.dirname(d), 0o755)
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi", "static", "data"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    if os.geteuid() == 0:  # the workers run as nobody: they write the temp files and read htpasswd
        for sub in ("tmp", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            shutil.chown(os.path.join(d, sub), "nobody", "nogroup")
    shutil.copytree(certs, os.path.join(d, "certs"))
    for f in ("certs", "static"):
        os.chmod(os.path.join(d, f), 0o755)
    stack.data = os.path.join(d, "data")
    stack.h2_port = free_port()
    fill_template(os.path.join(BENCH_DIR, registry_template or "registry-config.yml.in"),
                  os.path.join(d, "config.yml"), DATA=stack.data, PORT=stack.registry_port, **(registry_values or {}))
    conf = os.path.join(d, "nginx.conf")
    fill_template(os.path.join(BENCH_DIR, "nginx.conf.in"), conf,
                  DIR=d, PORT=stack.port, H2_PORT=stack.h2_port, REGISTRY_PORT=stack.registry_port)
    if docker_addr:
        # the docker section: the tutorial's site also listens on the veth address (one more listen line)
        with open(conf) as f:
            text = f.read()
        line = f"listen 127.0.0.1:{stack.port} ssl;"
        if text.count(line) != 1:
            raise BenchError(f"nginx.conf.in: expected one '{line}'")
        with open(conf, "w") as f:
            f.write(text.replace(line, f"{line}\n        listen {docker_addr}:{stack.port} ssl;"))
    shutil.copy(htpasswd_src, os.path.join(d, "htpasswd"))
    os.chmod(os.path.join(d, "htpasswd"), 0o644)
    stack.htpasswd = os.path.join(d, "htpasswd")
    stack.start("docker-registry", ["docker-registry", "serve", os.path.join(d, "config.yml")], env=registry_env)
    stack.start("nginx", ["nginx", "-p", d + "/", "-c", os.path.join(d, "nginx.conf"), "-g", "daemon off;"])
    stack.cacert = os.path.join(d, "certs", "devdockerCA.crt")
    stack.cert_dir = os.path.join(d, "certs", "skopeo")
    wait_ready(stack)


def create_bucket(port, name):
    """PUT /NAME on the S3 endpoint at 127.0.0.1:port; returns the status (moto answers 200)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("PUT", f"/{name}")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def start_moto(stack, buckets):
    """moto_server (pip 'moto[server]'), an S3 endpoint in memory, started as the stack's process "moto" on a
    free loopback port; creates the buckets (the first as soon as it answers, which is how its start is
    awaited); returns the port."""
    port = free_port()
    stack.start("moto", ["moto_server", "-H", "127.0.0.1", "-p", str(port)])
    deadline = time.monotonic() + 30
    while True:
        stack.check_alive()
        try:
            if create_bucket(port, buckets[0]) == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError("moto_server did not come up")
        time.sleep(0.2)
    for b in buckets[1:]:
        status = create_bucket(port, b)
        if status != 200:
            raise BenchError(f"moto_server: PUT /{b} (create bucket) -> {status}")
    return port


# ---------------------------------------------------------------------------------------------------------------
# Data


class Blob:
    def __init__(self, path):
        self.path = path
        self.size = os.path.getsize(path)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while True:
                b = f.read(4 * MiB)
                if not b:
                    break
                h.update(b)
        self.digest = "sha256:" + h.hexdigest()


def random_file(path, size, base=None):
    """size random bytes; with base, a copy of base whose first 32 bytes are a fresh nonce (a new digest for the
    price of a copy, so that clients cannot skip an upload they already did)."""
    if base is not None:
        with open(base, "rb") as src, open(path, "wb") as dst:
            dst.write(os.urandom(32))
            src.seek(32)
            shutil.copyfileobj(src, dst, 4 * MiB)
            dst.truncate(size)
        return
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 4 * MiB)
            f.write(os.urandom(n))
            left -= n


def oci_layout(dir_, layer, tag):
    """An OCI image layout with one image: one layer (layer: Blob) or several (a list of Blobs, in that order),
    a config, a manifest; returns the manifest digest."""
    layers = layer if isinstance(layer, (list, tuple)) else [layer]
    blobs = os.path.join(dir_, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(data):
        d = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, d), "wb") as f:
            f.write(data)
        return "sha256:" + d, len(data)

    for lay in layers:
        target = os.path.join(blobs, lay.digest.split(":")[1])
        if not os.path.exists(target):
            os.link(lay.path, target)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [lay.digest for lay in layers]}}).encode()
    cd, cs = put(config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": cs},
                           "layers": [{"mediaType": OCI_LAYER, "digest": lay.digest, "size": lay.size}
                                      for lay in layers]}).encode()
    md, ms = put(manifest)
    with open(os.path.join(dir_, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    with open(os.path.join(dir_, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{"mediaType": OCI_MANIFEST, "digest": md, "size": ms,
                                                      "annotations": {"org.opencontainers.image.ref.name": tag}}]},
                  f)
    return md


# ---------------------------------------------------------------------------------------------------------------
# Clients: curl, skopeo, h2load


def location(headers_text, base):
    loc = None
    for line in headers_text.splitlines():
        if line.lower().startswith("location:"):
            loc = line.split(":", 1)[1].strip()
    if not loc:
        raise BenchError(f"no Location in response:\n{headers_text[-500:]}")
    return urllib.parse.urljoin(base + "/", loc)


def with_digest(url, digest):
    return url + ("&" if "?" in url else "?") + "digest=" + urllib.parse.quote(digest)


def curl_req(stack, method, url, extra=(), expect=None, timeout=3600):
    """One curl request; returns (status, headers text, seconds, stats)."""
    hdr = tempfile.NamedTemporaryFile("r", delete=False, dir=stack.dir, suffix=".hdr")
    hdr.close()
    cmd = curl_base(stack) + ["-X", method, "-D", hdr.name, "-o", "/dev/null",
                              "-w", "%{http_code} %{size_upload} %{size_download}", *extra, url]
    t = time.monotonic()
    p = run(cmd, check=False, timeout=timeout)
    dt = time.monotonic() - t
    with open(hdr.name) as f:
        headers = f.read()
    os.unlink(hdr.name)
    parts = p.stdout.split()
    status = int(parts[0]) if parts and parts[0].isdigit() else 0
    if p.returncode != 0 or (expect and status not in expect):
        raise BenchError(f"{stack.label}: {method} {url} -> {status} (curl exit {p.returncode}) {p.stderr[-300:]}\n"
                         f"{headers[-500:]}")
    return status, headers, dt, parts


def raw_monolithic(stack, blob, repo):
    t = time.monotonic()
    _, h, _, _ = curl_req(stack, "POST", f"{stack.base}/v2/{repo}/blobs/uploads/", ["-H", "Content-Length: 0"],
                          expect={202})
    url = with_digest(location(h, stack.base), blob.digest)
    curl_req(stack, "PUT", url, ["-T", blob.path, "-H", "Content-Type: application/octet-stream"], expect={201})
    return time.monotonic() - t


def skopeo_push(stack, layout, tag, repo):
    t = time.monotonic()
    run(["skopeo", "--insecure-policy", "copy", "-q", "--preserve-digests", "--dest-creds", f"{USER}:{PASSWORD}",
         "--dest-cert-dir", stack.cert_dir, f"oci:{layout}:{tag}", f"docker://{stack.host}/{repo}:{tag}"])
    return time.monotonic() - t


def skopeo_alone(layout, tag, out):
    """skopeo copying the image from its OCI layout to a dir: on this machine, no registry in between: the
    client's own ceiling (read, digest check, write), against which its pushes and pulls are read."""
    shutil.rmtree(out, ignore_errors=True)
    t = time.monotonic()
    run(["skopeo", "--insecure-policy", "copy", "-q", "--preserve-digests", f"oci:{layout}:{tag}", f"dir:{out}"])
    dt = time.monotonic() - t
    shutil.rmtree(out, ignore_errors=True)
    return dt


def skopeo_pull(stack, repo, tag, out):
    shutil.rmtree(out, ignore_errors=True)
    t = time.monotonic()
    run(["skopeo", "--insecure-policy", "copy", "-q", "--src-creds", f"{USER}:{PASSWORD}",
         "--src-cert-dir", stack.cert_dir, f"docker://{stack.host}/{repo}:{tag}", f"dir:{out}"])
    dt = time.monotonic() - t
    shutil.rmtree(out, ignore_errors=True)
    return dt


def h2load(stack, path, method, http2, duration, conns, header_extra=(), warmup=1, count=None):
    """h2load for `duration` seconds after `warmup`; when fewer than `conns` requests complete in that time
    (nginx with bcrypt cost 10 on two cores), it runs again with a fixed count of 2 x conns requests instead, so
    the rate and latencies still come from real requests ("mode": "count")."""
    port = stack.h2_port if http2 else stack.port
    logf = os.path.join(stack.dir, "h2load.tsv")
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    cmd = ["h2load", "-c", str(conns), "-t", "1"]
    if count:
        cmd += ["-n", str(count)]
    else:
        cmd += ["-D", f"{int(duration * 1000)}ms", "--warm-up-time", f"{int(warmup * 1000)}ms"]
    cmd += ["-H", f"Authorization: Basic {auth}", "--log-file", logf]
    if method == "HEAD":
        cmd += ["-H", ":method: HEAD"]
    for h in header_extra:
        cmd += ["-H", h]
    if not http2:
        cmd.append("--h1")
    cmd.append(f"https://127.0.0.1:{port}{path}")
    try:
        p = run(cmd, check=False, timeout=300 if count else duration + warmup + 30)
    except subprocess.TimeoutExpired:
        if count:
            raise BenchError(f"{stack.label}: {count} requests {method} {path} did not finish within 300 s")
        # h2load waits for requests still queued when the duration ends (nginx with bcrypt cost 10 over
        # HTTP/2): measure a fixed count instead
        r = h2load(stack, path, method, http2, duration, conns, header_extra, warmup, count=2 * conns)
        r["mode"] = "count"
        return r
    out = p.stdout
    m = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
    st = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    if not m or not st or not req:
        raise BenchError(f"{stack.label}: h2load {path} gave no result:\n{out[-1500:]}\n{p.stderr[-500:]}")
    ok = int(st.group(1))
    bad = int(st.group(2)) + int(st.group(3)) + int(st.group(4)) + int(req.group(5))
    if not count and bad == 0 and ok < conns:
        os.unlink(logf)
        r = h2load(stack, path, method, http2, duration, conns, header_extra, warmup, count=2 * conns)
        r["mode"] = "count"
        return r
    lat = []
    with open(logf) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1].startswith("2"):
                lat.append(int(parts[2]) / 1000.0)
    os.unlink(logf)
    lat.sort()
    if ok == 0 or bad > ok // 100:
        raise BenchError(f"{stack.label}: h2load {method} {path}: {ok} 2xx, {bad} failed or not 2xx\n{out[-800:]}")
    return {"rps": round(float(m.group(1)), 1), "p50_ms": round(percentile(lat, 50), 3),
            "p99_ms": round(percentile(lat, 99), 3), "ok": ok, "errors": bad}


def timed_requests(stack, requests, source="127.0.0.2"):
    """Sends (method, path, headers, body, want_status) requests one after another from `source`, each on a new
    TLS connection that is set up before the clock starts; returns each request's milliseconds."""
    ctx = ssl.create_default_context(cafile=stack.cacert)
    out = []
    for method, path, headers, body, want in requests:
        conn = http.client.HTTPSConnection("127.0.0.1", stack.port, context=ctx, timeout=60,
                                           source_address=(source, 0))
        conn.connect()
        t = time.monotonic()
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        out.append((time.monotonic() - t) * 1000.0)
        conn.close()
        if resp.status != want:
            raise BenchError(f"{stack.label}: {method} {path} from {source} -> {resp.status}, not {want}")
    return out


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ---------------------------------------------------------------------------------------------------------------
# The run


def alternate(stacks, i):
    return stacks if i % 2 == 0 else list(reversed(stacks))


class Context:
    """What the sections share: the run's settings (from the command line), the two stacks, the work directory,
    the JSON being built, and what bench.py's set-up made. Each module in bench/sections/ has one entry point,
    measure(ctx), and adds its key to ctx.results."""

    def __init__(self, args, results, work, berth, nginx, stacks, smoke, runs, size, scaling_sizes, duration,
                 listing_counts, pull_size, hashes, skip, cleanups):
        self.args = args  # the parsed command line (args.bin_dir: where berth-proxy and berth-registry are;
        # args.trow: the Trow binary of the raw section, or None)
        self.results = results  # the JSON written with --out; "meta" holds the run's settings and versions
        self.work = work  # the temporary work directory (removed at the end unless --keep)
        self.berth = berth
        self.nginx = nginx
        self.stacks = stacks  # [berth, nginx]
        self.smoke = smoke
        self.runs = runs  # alternating runs per transfer figure
        self.size = size  # transfer size (raw, skopeo, docker)
        self.scaling_sizes = scaling_sizes  # layer sizes of the scaling section
        self.duration = duration  # seconds per h2load case
        self.listing_counts = listing_counts  # repositories / tags of the listing section
        self.pull_size = pull_size  # blob size of the 64 concurrent pulls
        self.hashes = hashes  # htpasswd kinds of the requests section
        self.skip = skip  # the sections not run
        self.cleanups = cleanups  # called after the stacks have stopped, also on failure
        # Made by bench.py's set-up, after the machine section:
        self.certs = None  # the CA and server certificate's directory (make_certs)
        self.htpasswd = {}  # {kind: path}: the htpasswd line as bcrypt5, bcrypt10, apr1
        self.nginx_bcrypt = None  # whether nginx's crypt() takes bcrypt (if not, nginx gets apr1)
        self.set_hash = None  # set_hash(kind): both stacks' htpasswd as kind; returns the kind nginx got
        self.dk = None  # the docker section's DockerSide (sections/docker.py), or None when it is skipped
        self.data = None  # work/data: the test files
        self.small = None  # the small image's layer (a 4 KiB Blob), pushed to both stacks as bench/small:latest
        self.small_manifest = None  # its manifest digest
        self.rss_push = {}  # {size: {stack: {role: peak MiB}}} during each push (scaling, skopeo; see rss.py)

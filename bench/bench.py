#!/usr/bin/env python3
"""berth side by side with nginx + registry:2 on this machine, in the same run.

Run through scripts/bench.sh (which installs the tools and builds the release binaries). This script starts both
stacks as child processes on loopback ports in a temporary directory, measures them with the same clients, the
same credentials and the same data in alternating runs, prints a table and writes JSON. It stops exactly the
processes it started, by PID, and removes its directory.

Measurements (see bench/README.md for the method):
  machine      openssl speed sha256 / aes-256-gcm (one core), fsync'd sequential write, loopback TCP
  raw          curl over TLS + basic auth: monolithic POST+PUT, streamed chunked PATCH, blob GET to /dev/null,
               and nginx serving the same file as a static file over TLS
  skopeo       push and pull of a single-layer image (random bytes) with skopeo --preserve-digests, and
               skopeo alone (OCI layout to dir:, no registry): the client's own ceiling
  requests     h2load, 64 connections, fixed duration: GET /v2/, HEAD blob, GET manifest; HTTP/1.1 and HTTP/2;
               htpasswd as bcrypt cost 5, bcrypt cost 10, apr1
  rss          peak RSS of every process of each stack during each push (the largest is the "4 GiB push"
               figure) and during 64 concurrent pulls
  scaling      skopeo push/pull time by layer size; _catalog and tags/list latency (first page, n=100) with
               100 / 1,000 / 10,000 repositories and tags
  docker       docker push and pull (a private Docker daemon, vfs storage) of a single-layer image of random
               bytes, both stacks reached with verified TLS on a veth address (needs root; skipped otherwise)
  floods       latency of a legitimate first login and of a legitimate small PATCH, from another address, with
               and without one client flooding (bad logins on one HTTP/2 connection; authenticated PATCHes of
               upload sessions that do not exist), and the registry's RSS before and after the PATCH flood
  gc           garbage collection at 1,000 repositories / 100,000 blobs: berth's online collector and registry:2's
               offline garbage-collect (time, peak RSS), and push throughput while berth collects
"""

import argparse
import base64
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import ssl
import threading
import time
import urllib.parse
import urllib.request
import http.client

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


class BenchError(Exception):
    """A stack failed to serve or a tool failed: the run is invalid."""


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
    return ["curl", "-sS", "--cacert", stack.cacert, "-u", f"{USER}:{PASSWORD}",
            "--http2" if http2 else "--http1.1"]


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


def start_berth(stack, bin_dir, certs, htpasswd_path):
    data = os.path.join(stack.dir, "data")
    os.makedirs(data, exist_ok=True)
    stack.data = data
    env = dict(os.environ)
    env.update(REGISTRY_HTTP_ADDR=f"127.0.0.1:{stack.registry_port}",
               REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=data)
    stack.start("berth-registry", [os.path.join(bin_dir, "berth-registry")], env=env)
    env = dict(os.environ)
    env.update(BERTH_LISTEN=stack.host, BERTH_UPSTREAM=f"http://127.0.0.1:{stack.registry_port}",
               BERTH_CERTS_DIR=certs, BERTH_HTPASSWD=htpasswd_path)
    stack.start("berth-proxy", [os.path.join(bin_dir, "berth-proxy"), "serve"], env=env)
    stack.cacert = os.path.join(certs, "devdockerCA.crt")
    stack.cert_dir = os.path.join(certs, "skopeo")
    stack.htpasswd = htpasswd_path
    wait_ready(stack)


def start_nginx(stack, certs, htpasswd_src, docker_addr=None):
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
    fill_template(os.path.join(BENCH_DIR, "registry-config.yml.in"), os.path.join(d, "config.yml"),
                  DATA=stack.data, PORT=stack.registry_port)
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
    stack.start("docker-registry", ["docker-registry", "serve", os.path.join(d, "config.yml")])
    stack.start("nginx", ["nginx", "-p", d + "/", "-c", os.path.join(d, "nginx.conf"), "-g", "daemon off;"])
    stack.cacert = os.path.join(d, "certs", "devdockerCA.crt")
    stack.cert_dir = os.path.join(d, "certs", "skopeo")
    wait_ready(stack)


class DockerSide:
    """What the docker section sets up on the host, and undoes in close() (safe to call twice, also after a
    failure): a veth pair whose host side carries DOCKER_ADDR (created before the stacks start, so that they can
    listen on it; traffic to a local address still goes through the loopback device), the CA in
    /etc/docker/certs.d/ADDR:PORT/ for each stack, and a private Docker daemon (vfs storage, no bridge, no
    iptables or sysctl changes) with its state and socket in the work directory."""

    def __init__(self, work):
        self.dir = os.path.join(work, "docker")
        os.makedirs(self.dir, exist_ok=True)
        self.veth = f"bbd{os.getpid()}"
        self.veth_up = False
        self.certs_d = []
        self.proc = None
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{self.dir}/docker.sock",
                        DOCKER_CONFIG=os.path.join(self.dir, "client"))

    def add_address(self):
        run(["ip", "link", "add", self.veth + "h", "type", "veth", "peer", "name", self.veth + "n"])
        self.veth_up = True
        run(["ip", "addr", "add", f"{DOCKER_ADDR}/30", "dev", self.veth + "h"])
        run(["ip", "link", "set", self.veth + "h", "up"])

    def start_daemon(self):
        d = self.dir
        with open(os.path.join(d, "daemon.json"), "w") as f:
            f.write("{}\n")  # not the host's /etc/docker/daemon.json
        self.log = open(os.path.join(d, "dockerd.log"), "w")
        self.proc = subprocess.Popen(
            ["dockerd", "--config-file", os.path.join(d, "daemon.json"), "--data-root", os.path.join(d, "root"),
             "--exec-root", os.path.join(d, "exec"), "--pidfile", os.path.join(d, "dockerd.pid"),
             "--host", self.env["DOCKER_HOST"], "--storage-driver", "vfs", "--bridge", "none",
             "--iptables=false", "--ip-forward=false", "--ip-masq=false"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"dockerd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if run(["docker", "version"], check=False, timeout=30, env=self.env).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"dockerd does not answer within 60 s:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self):
        try:
            with open(os.path.join(self.dir, "dockerd.log")) as f:
                return "".join(f.readlines()[-20:])
        except OSError:
            return ""

    def docker(self, *args, timeout=3600):
        p = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=self.env)
        if p.returncode != 0:
            raise BenchError(f"docker {' '.join(args)[:200]} failed ({p.returncode}):\n{p.stdout[-1000:]}"
                             f"{p.stderr[-1000:]}\ndockerd log:\n{self.log_tail()}")
        return p.stdout

    def trust(self, host, cacert):
        d = os.path.join("/etc/docker/certs.d", host)
        os.makedirs(d, exist_ok=True)
        self.certs_d.append(d)
        shutil.copy(cacert, os.path.join(d, "ca.crt"))

    def login(self, host):
        p = subprocess.run(["docker", "login", host, "-u", USER, "--password-stdin"], input=PASSWORD,
                           capture_output=True, text=True, timeout=120, env=self.env)
        if p.returncode != 0:
            raise BenchError(f"docker login {host} failed:\n{p.stdout[-500:]}{p.stderr[-1000:]}")

    def cpu(self):
        """{(pid, name): CPU seconds} of the daemon (with its exited children) and its live children
        (containerd)."""
        out = {(self.proc.pid, "dockerd"): cpu_seconds(self.proc.pid, reaped=True)}
        for c in children_of(self.proc.pid):
            try:
                with open(f"/proc/{c}/comm") as f:
                    name = f.read().strip()
            except OSError:
                continue
            out[(c, name)] = cpu_seconds(c)
        return out

    def stop_daemon(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        # its containerd: stopped by dockerd, unless dockerd has to be killed
        kids = [(c, start_time(c)) for c in children_of(self.proc.pid)]
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()
        for c, t in kids:
            if t is not None and start_time(c) == t:  # still the same process
                try:
                    os.kill(c, signal.SIGKILL)
                except OSError:
                    pass

    def close(self):
        self.stop_daemon()
        # dockerd mounts its data root on itself and unmounts it when it stops; not when it was killed
        with open("/proc/mounts") as f:
            mounts = [ln.split()[1] for ln in f]
        for m in sorted((m for m in mounts if m == self.dir or m.startswith(self.dir + "/")), reverse=True):
            run(["umount", m], check=False)
        for d in self.certs_d:
            shutil.rmtree(d, ignore_errors=True)
        self.certs_d = []
        if self.veth_up:
            run(["ip", "link", "del", self.veth + "h"], check=False)
            self.veth_up = False


def layer_tar_into(out, base, size):
    """Writes to out a tar holding one file, layer.bin: size bytes of base, the first 32 replaced by a fresh
    nonce (a new layer digest per run, so that Docker cannot skip or mount a layer the registry already has)."""
    ti = tarfile.TarInfo("layer.bin")
    ti.size = size
    ti.mode = 0o644
    ti.mtime = 0
    out.write(ti.tobuf(format=tarfile.USTAR_FORMAT))
    out.write(os.urandom(32))
    with open(base, "rb") as f:
        f.seek(32)
        left = size - 32
        while left > 0:
            b = f.read(min(left, 4 * MiB))
            if not b:
                raise BenchError(f"{base} is shorter than {size} bytes")
            out.write(b)
            left -= len(b)
    out.write(b"\0" * ((-size) % 512 + 1024))


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
    """An OCI image layout with one image: one layer (layer: Blob), a config, a manifest; returns the manifest
    digest."""
    blobs = os.path.join(dir_, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(data):
        d = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, d), "wb") as f:
            f.write(data)
        return "sha256:" + d, len(data)

    target = os.path.join(blobs, layer.digest.split(":")[1])
    if not os.path.exists(target):
        os.link(layer.path, target)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [layer.digest]}}).encode()
    cd, cs = put(config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": cs},
                           "layers": [{"mediaType": OCI_LAYER, "digest": layer.digest, "size": layer.size}]}).encode()
    md, ms = put(manifest)
    with open(os.path.join(dir_, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    with open(os.path.join(dir_, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{"mediaType": OCI_MANIFEST, "digest": md, "size": ms,
                                                      "annotations": {"org.opencontainers.image.ref.name": tag}}]},
                  f)
    return md


def seed_listing(stack, kind, start, count, manifest_digest, layer_digest):
    """Writes repositories (kind="catalog": cat/r00000..) or tags (kind="tags": repo tags/list, tags t00000..)
    directly into the data directory, in registry:2's layout (both stacks read it from disk on every listing;
    neither caches listings)."""
    v2 = os.path.join(stack.data, "docker", "registry", "v2", "repositories")
    algo, hexd = manifest_digest.split(":")
    link = manifest_digest.encode()

    def write(path, data):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    for i in range(start, start + count):
        if kind == "catalog":
            repo = os.path.join(v2, "cat", f"r{i:05d}")
            tag = "latest"
        else:
            repo = os.path.join(v2, "tagged", "app")
            tag = f"t{i:05d}"
        write(os.path.join(repo, "_manifests", "revisions", algo, hexd, "link"), link)
        write(os.path.join(repo, "_manifests", "tags", tag, "current", "link"), link)
        write(os.path.join(repo, "_manifests", "tags", tag, "index", algo, hexd, "link"), link)
        la, lh = layer_digest.split(":")
        write(os.path.join(repo, "_layers", la, lh, "link"), layer_digest.encode())


def seed_gc(data, repos, blobs, garbage_share, nonce):
    """Writes `repos` repositories holding `blobs` blobs in all straight into registry:2's layout under `data`:
    each repository a tagged image (a config and its layers), plus unreferenced blobs (a share `garbage_share` of
    each repository's blobs, linked into it as an abandoned push leaves them). Returns the garbage count."""
    v2 = os.path.join(data, "docker", "registry", "v2")

    def write(path, payload):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(payload)

    def blob(payload):
        d = hashlib.sha256(payload).hexdigest()
        write(os.path.join(v2, "blobs", "sha256", d[:2], d, "data"), payload)
        return "sha256:" + d

    per_repo = max(2, blobs // repos)
    garbage = 0
    for r in range(repos):
        repo = os.path.join(v2, "repositories", "gcbench", f"r{r:04d}")

        def link(kind, digest):
            write(os.path.join(repo, kind, "sha256", digest[7:], "link"), digest.encode())

        config = blob(json.dumps({"architecture": "amd64", "os": "linux", "n": f"{nonce}-{r}"}).encode())
        link("_layers", config)
        layers = []
        for b in range(per_repo - 1):
            payload = f"{nonce} layer {r} {b} ".encode() * 4
            d = blob(payload)
            link("_layers", d)
            if b < (per_repo - 1) * (1 - garbage_share):
                layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d,
                               "size": len(payload)})
            else:
                garbage += 1
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": config, "size": 0},
                               "layers": layers}).encode()
        m = blob(manifest)
        link(os.path.join("_manifests", "revisions"), m)
        write(os.path.join(repo, "_manifests", "tags", "latest", "current", "link"), m.encode())
        link(os.path.join("_manifests", "tags", "latest", "index"), m)
    return garbage


def timed_gc(cmd, env=None):
    """Runs cmd; returns (seconds, its peak RSS in MiB, stdout). The peak is the kernel's high-water mark
    (VmHWM) read every 5 ms while it runs (wait4's figure would count the fork of this Python process)."""
    t = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        peak = 0
        while p.poll() is None:
            peak = max(peak, rss_kib(p.pid, "VmHWM") or 0)
            time.sleep(0.005)
        secs = time.monotonic() - t
        out.seek(0)
        err.seek(0)
        if p.returncode != 0:
            raise BenchError(f"{cmd[0]} failed: {err.read().decode()[-500:]}")
        return secs, round(peak / 1024, 1), out.read().decode()


# ---------------------------------------------------------------------------------------------------------------
# Measurements


def machine_limits(work, smoke):
    step("machine limits (same run)")
    res = {}
    secs = "1" if smoke else "3"
    for algo, key in (("sha256", "sha256_MBps"), ("aes-256-gcm", "aes256gcm_MBps")):
        p = run(["openssl", "speed", "-seconds", secs, "-bytes", "16384", "-evp", algo])
        last = [ln for ln in p.stdout.splitlines() if ln.strip()][-1]
        res[key] = round(float(last.split()[-1].rstrip("k")) / 1000.0, 1)
    size = 64 * MiB if smoke else 1 * GiB
    path = os.path.join(work, "fsync-test")
    buf = os.urandom(MiB)
    t = time.monotonic()
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(buf)
        f.flush()
        os.fsync(f.fileno())
    res["disk_fsync_write_MBps"] = round(size / (time.monotonic() - t) / 1e6, 1)
    os.unlink(path)
    # loopback TCP: one stream, a python sender and receiver in two processes, 1 MiB writes
    port = free_port()
    recv = subprocess.Popen([sys.executable, "-c", (
        "import socket,sys\n"
        "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('127.0.0.1',%d));"
        "s.listen(1);print('ready',flush=True)\n"
        "c,_=s.accept();b=bytearray(1<<20);v=memoryview(b);n=0\n"
        "while True:\n  k=c.recv_into(v)\n  if not k: break\n  n+=k\n"
        "print(n,flush=True)\n") % port], stdout=subprocess.PIPE, text=True)
    try:
        recv.stdout.readline()
        c = socket.create_connection(("127.0.0.1", port))
        total = (256 * MiB) if smoke else (4 * GiB)
        t = time.monotonic()
        sent = 0
        while sent < total:
            c.sendall(buf)
            sent += len(buf)
        c.shutdown(socket.SHUT_WR)
        got = int(recv.stdout.readline())
        res["loopback_tcp_MBps"] = round(got / (time.monotonic() - t) / 1e6, 1)
        c.close()
    finally:
        recv.wait(timeout=30)
    for k, v in res.items():
        log(f"{k}: {v}")
    return res


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


def raw_chunked(stack, blob, repo):
    t = time.monotonic()
    _, h, _, _ = curl_req(stack, "POST", f"{stack.base}/v2/{repo}/blobs/uploads/", ["-H", "Content-Length: 0"],
                          expect={202})
    # -T - reads standard input: curl sends it with Transfer-Encoding: chunked (length unknown)
    with open(blob.path, "rb") as stdin:
        hdr = os.path.join(stack.dir, "patch.hdr")
        p = subprocess.run(curl_base(stack) + ["-X", "PATCH", "-T", "-", "-D", hdr, "-o", "/dev/null",
                                               "-w", "%{http_code}", "-H", "Content-Type: application/octet-stream",
                                               location(h, stack.base)],
                           stdin=stdin, capture_output=True, text=True, timeout=3600)
    with open(hdr) as f:
        h2 = f.read()
    if p.returncode != 0 or p.stdout.strip() != "202":
        raise BenchError(f"{stack.label}: chunked PATCH -> {p.stdout} {p.stderr[-300:]}")
    curl_req(stack, "PUT", with_digest(location(h2, stack.base), blob.digest), ["-H", "Content-Length: 0"],
             expect={201})
    return time.monotonic() - t


def raw_download(stack, url, size):
    _, _, dt, parts = curl_req(stack, "GET", url, expect={200})
    if int(parts[2]) != size:
        raise BenchError(f"{stack.label}: GET {url} gave {parts[2]} bytes, expected {size}")
    return dt


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


def flood_start(stack, secs, header, uri_file=None, data_file=None, method=None):
    """h2load from 127.0.0.1 on one HTTP/2 connection with 200 streams, for `secs` seconds, in the background."""
    cmd = ["h2load", "-c", "1", "-m", "200", "-t", "1", "-D", f"{int(secs * 1000)}ms", "-H", header]
    if method:
        cmd += ["-H", f":method: {method}"]
    if data_file:
        cmd += ["-d", data_file]
    if uri_file:
        cmd += ["-i", uri_file]
    else:
        cmd.append(f"https://127.0.0.1:{stack.h2_port}/v2/")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=stack.dir)


def flood_result(p, secs):
    out, err = p.communicate(timeout=secs + 120)
    m = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
    st = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not m or not st:
        raise BenchError(f"h2load flood gave no result:\n{out[-800:]}\n{err[-300:]}")
    return {"rps": round(float(m.group(1)), 1), "2xx": int(st.group(1)), "4xx": int(st.group(3)),
            "5xx": int(st.group(4))}


def floods(stacks, smoke, add_users):
    """Issue 19 items 1 and 2, measured: a legitimate first login (a user not yet in any cache) and a legitimate
    4 KiB PATCH, each from 127.0.0.2 on a fresh connection, quiet and while 127.0.0.1 floods."""
    secs = 4 if smoke else 10
    n = 3 if smoke else 10
    names = [f"legit{i}" for i in range(2 * n)]
    add_users(names)
    out = {}
    wrong = basic(USER, "not-the-password")
    good = basic(USER, PASSWORD)
    for st in stacks:
        r = {}
        login = lambda users: [("GET", "/v2/", {"Authorization": basic(u, PASSWORD)}, None, 200) for u in users]  # noqa: E731
        r["login_quiet_ms"] = median(timed_requests(st, login(names[:n])))
        p = flood_start(st, secs, f"Authorization: {wrong}")
        time.sleep(1)  # the flood's requests are queued by now; the measurement below runs while it goes on
        during = timed_requests(st, login(names[n:]))
        r["login_flood_ms"] = median(during)
        r["bad_login_flood"] = flood_result(p, secs)
        st.check_alive()
        # a real upload session and its PATCHes, quiet and during a flood of PATCHes of unknown sessions
        ctx = ssl.create_default_context(cafile=st.cacert)
        conn = http.client.HTTPSConnection("127.0.0.1", st.port, context=ctx, timeout=60)
        conn.request("POST", "/v2/floods/legit/blobs/uploads/", headers={"Authorization": good,
                                                                          "Content-Length": "0"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 202:
            raise BenchError(f"{st.label}: POST upload -> {resp.status}")
        upload = urllib.parse.urlsplit(urllib.parse.urljoin(st.base + "/", resp.getheader("Location")))
        upload_path = upload.path + (f"?{upload.query}" if upload.query else "")
        conn.close()
        chunk = os.urandom(4096)
        state = {"offset": 0, "path": upload_path}

        def timed_patches(count):
            # One after another, each on a fresh connection from 127.0.0.2, following the Location each answer
            # gives (registry:2 carries the session state in it).
            times = []
            for _ in range(count):
                conn = http.client.HTTPSConnection("127.0.0.1", st.port, context=ctx, timeout=60,
                                                   source_address=("127.0.0.2", 0))
                conn.connect()
                o = state["offset"]
                t = time.monotonic()
                conn.request("PATCH", state["path"], body=chunk, headers={
                    "Authorization": good, "Content-Type": "application/octet-stream",
                    "Content-Range": f"{o}-{o + len(chunk) - 1}", "Content-Length": str(len(chunk))})
                resp = conn.getresponse()
                resp.read()
                times.append((time.monotonic() - t) * 1000.0)
                conn.close()
                if resp.status != 202:
                    raise BenchError(f"{st.label}: PATCH {state['path']} -> {resp.status}")
                loc = urllib.parse.urlsplit(urllib.parse.urljoin(st.base + "/", resp.getheader("Location")))
                state["path"] = loc.path + (f"?{loc.query}" if loc.query else "")
                state["offset"] = o + len(chunk)
            return times

        registry = [pid for pid, role in st.pids().items() if role in ("berth-registry", "docker-registry")]
        rss_before = rss_kib(registry[0]) if registry else None
        r["patch_quiet_ms"] = median(timed_patches(2 * n))
        uris = os.path.join(st.dir, "flood-uris.txt")
        with open(uris, "w") as f:
            for _ in range(20000 if smoke else 100000):
                f.write(f"https://127.0.0.1:{st.h2_port}/v2/floods/x/blobs/uploads/{os.urandom(16).hex()}\n")
        data = os.path.join(st.dir, "flood-byte")
        with open(data, "wb") as f:
            f.write(b"x")
        p = flood_start(st, secs, f"Authorization: {good}", uri_file=uris, data_file=data, method="PATCH")
        time.sleep(1)
        r["patch_flood_ms"] = median(timed_patches(2 * n))
        r["unknown_patch_flood"] = flood_result(p, secs)
        if registry:
            r["registry_rss_kib"] = {"before": rss_before, "after": rss_kib(registry[0])}
        st.check_alive()
        log(f"{st.label}: first login {r['login_quiet_ms']:.1f} ms quiet, {r['login_flood_ms']:.1f} ms during "
            f"{r['bad_login_flood']['rps']:.0f} bad logins/s; 4 KiB PATCH {r['patch_quiet_ms']:.1f} ms quiet, "
            f"{r['patch_flood_ms']:.1f} ms during {r['unknown_patch_flood']['rps']:.0f} PATCHes of unknown "
            f"uploads/s; registry RSS {r.get('registry_rss_kib')}")
        out[st.name] = r
    return out


def listing_latency(stack, path, n):
    """p50/p99 of sequential requests on one keep-alive connection (h2load, 1 connection)."""
    r = h2load(stack, path, "GET", False, n, 1, warmup=0.5)
    return {"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "rps": r["rps"]}


# ---------------------------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="small sizes, short durations (what CI runs)")
    ap.add_argument("--out", default=None, help="write the results as JSON to this file")
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--runs", type=int, default=None, help="alternating runs per transfer figure (default 3)")
    ap.add_argument("--size", type=parse_size, default=None, help="transfer size (default 1G)")
    ap.add_argument("--scaling", default=None, help="comma-separated layer sizes (default 16M,256M,1G,4G)")
    ap.add_argument("--duration", type=float, default=None, help="seconds per h2load case (default 5)")
    ap.add_argument("--listing", default=None, help="comma-separated counts (default 100,1000,10000)")
    ap.add_argument("--pull-size", type=parse_size, default=None, help="blob size for 64 concurrent pulls (64M)")
    ap.add_argument("--hashes", default=None, help="htpasswd kinds (default bcrypt5,bcrypt10,apr1)")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: machine,raw,skopeo,docker,"
                                               "requests,acl,metrics,floods,pulls,scaling,listing,gc")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    smoke = a.smoke
    runs = a.runs or (1 if smoke else 3)
    size = a.size or (16 * MiB if smoke else GiB)
    scaling = [parse_size(s) for s in (a.scaling or ("1M,16M" if smoke else "16M,256M,1G,4G")).split(",")]
    duration = a.duration or (1 if smoke else 5)
    listing = [int(s) for s in (a.listing or ("10,100" if smoke else "100,1000,10000")).split(",")]
    pull_size = a.pull_size or (MiB if smoke else 64 * MiB)
    hashes = (a.hashes or ("bcrypt5" if smoke else "bcrypt5,bcrypt10,apr1")).split(",")
    skip = set(filter(None, a.skip.split(",")))

    # The stacks run in their own work directory: a relative binary path must not depend on it.
    a.bin_dir = os.path.abspath(a.bin_dir)
    for b in ("berth-proxy", "berth-registry"):
        if not os.access(os.path.join(a.bin_dir, b), os.X_OK):
            sys.exit(f"FAILED: {a.bin_dir}/{b} missing: cargo build --release --bins")

    docker_skipped = None
    if "docker" not in skip:
        if os.geteuid() != 0:
            # a private dockerd, a veth address and /etc/docker/certs.d all need root
            docker_skipped = "needs root"
            skip.add("docker")
            print("note: the docker section needs root (a private Docker daemon, a veth address, "
                  "/etc/docker/certs.d): skipped", flush=True)
        else:
            missing = [t for t in ("dockerd", "docker", "ip") if not shutil.which(t)]
            if missing:
                sys.exit(f"FAILED: {', '.join(missing)} missing for the docker section: apt-get install docker.io "
                         "iproute2, or --skip docker")

    work = tempfile.mkdtemp(prefix="berth-bench.", dir=os.environ.get("BERTH_BENCH_TMP", "/tmp"))
    os.chmod(work, 0o755)
    results = {"meta": {
        "smoke": smoke, "runs": runs, "size": size, "scaling_sizes": scaling, "duration_s": duration,
        "listing_counts": listing, "concurrent_pull_size": pull_size, "hashes": hashes,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "nproc": os.cpu_count(),
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
        "versions": {},
    }}
    if docker_skipped:
        results["meta"]["docker_skipped"] = docker_skipped
    tools = [("nginx", ["nginx", "-v"]), ("docker-registry", ["docker-registry", "--version"]),
             ("skopeo", ["skopeo", "--version"]), ("curl", ["curl", "--version"]),
             ("h2load", ["h2load", "--version"]), ("openssl", ["openssl", "version"])]
    if "docker" not in skip:
        tools += [("dockerd", ["dockerd", "--version"]), ("docker", ["docker", "--version"])]
    for name, cmd in tools:
        p = run(cmd, check=False)
        results["meta"]["versions"][name] = (p.stdout + p.stderr).strip().splitlines()[0]
    berth = Stack("berth", "berth", work)
    nginx = Stack("nginx", "nginx + registry:2", work)
    stacks = [berth, nginx]
    cleanups = []  # run after the stacks have stopped, also on failure
    rc = 0
    try:
        rc = bench(a, results, work, berth, nginx, stacks, smoke, runs, size, scaling, duration, listing,
                   pull_size, hashes, skip, cleanups)
    except BenchError as e:
        print(f"\nFAILED: {e}", file=sys.stderr)
        results["error"] = str(e)
        rc = 1
    except subprocess.TimeoutExpired as e:
        print(f"\nFAILED: timeout: {e}", file=sys.stderr)
        results["error"] = f"timeout: {e}"
        rc = 1
    finally:
        for st in stacks:
            st.stop()
        for c in reversed(cleanups):
            c()
        results["meta"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        if a.out:
            with open(a.out, "w") as f:
                json.dump(results, f, indent=2)
            print(f"\nJSON written to {a.out}")
        if a.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return rc


def alternate(stacks, i):
    return stacks if i % 2 == 0 else list(reversed(stacks))


def bench(a, results, work, berth, nginx, stacks, smoke, runs, size, scaling, duration, listing, pull_size,
          hashes, skip, cleanups):
    if "machine" not in skip:
        results["machine"] = machine_limits(work, smoke)

    step("setting up both stacks")
    certs = os.path.join(work, "certs")
    make_certs(certs)
    hp = {k: os.path.join(work, f"htpasswd.{k}") for k in ("bcrypt5", "bcrypt10", "apr1")}
    for k, p in hp.items():
        make_htpasswd(p, k)
    berth_htpasswd = os.path.join(work, "htpasswd.berth")
    shutil.copy(hp["bcrypt5"], berth_htpasswd)
    dk = None
    if "docker" not in skip:
        # before the stacks start: nginx listens on this address from the start
        dk = DockerSide(work)
        cleanups.append(dk.close)
        dk.add_address()
    start_berth(berth, a.bin_dir, certs, berth_htpasswd)
    log(f"berth: proxy {berth.base}, registry 127.0.0.1:{berth.registry_port}")
    start_nginx(nginx, certs, hp["bcrypt5"], docker_addr=DOCKER_ADDR if dk else None)
    log(f"nginx + registry:2: nginx {nginx.base} (HTTP/2 site on {nginx.h2_port}), "
        f"registry:2 127.0.0.1:{nginx.registry_port}")
    # Does nginx's crypt() take bcrypt? (Debian 12's libcrypt does; older glibc did not.)
    nginx_bcrypt = http_status(nginx, "/v2/") == "200"
    results["meta"]["nginx_bcrypt_supported"] = nginx_bcrypt
    log(f"nginx auth_basic with a bcrypt htpasswd: {'works' if nginx_bcrypt else 'FAILS, nginx gets apr1'}")
    if not nginx_bcrypt:
        shutil.copy(hp["apr1"], nginx.htpasswd)
        wait_ready(nginx)

    def set_hash(kind):
        nk = kind if (nginx_bcrypt or kind == "apr1") else "apr1"
        tmp = nginx.htpasswd + ".new"
        shutil.copy(hp[nk], tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, nginx.htpasswd)
        tmp = berth.htpasswd + ".new"
        shutil.copy(hp[kind], tmp)
        os.replace(tmp, berth.htpasswd)
        time.sleep(2.5)  # berth polls the file every second and then drops its credential cache
        for st in stacks:
            wait_ready(st)
        return nk

    data = os.path.join(work, "data")
    os.makedirs(data)
    # the small image: requests, listings
    random_file(os.path.join(data, "small.bin"), 4096)
    small = Blob(os.path.join(data, "small.bin"))
    small_layout = os.path.join(data, "small-oci")
    small_manifest = oci_layout(small_layout, small, "latest")
    for st in stacks:
        skopeo_push(st, small_layout, "latest", "bench/small")
        st.check_alive()

    rss_push = {}
    # ---------------------------------------------------------------------------------------------- scaling
    if "scaling" not in skip:
        step("how cost grows: skopeo push/pull by layer size (one run each, alternating), peak RSS during push "
             "(first, while the processes are young: RSS that later phases leave behind would count)")
        sc = {}
        for i, sz in enumerate(scaling):
            lf = os.path.join(data, f"scale{i}.bin")
            random_file(lf, sz)
            layout = os.path.join(data, f"scale{i}-oci")
            oci_layout(layout, Blob(lf), "v1")
            sc[human_size(sz)] = {}
            for st in alternate(stacks, i):
                with RssSampler([st]) as r:
                    push = skopeo_push(st, layout, "v1", f"scale/s{i}")
                rss_push.setdefault(human_size(sz), {}).update(r.result())
                pull = skopeo_pull(st, f"scale/s{i}", "v1", os.path.join(data, "pulled"))
                st.check_alive()
                sc[human_size(sz)][st.name] = {"push_s": round(push, 3), "pull_s": round(pull, 3),
                                               "push_MBps": round(sz / push / 1e6, 1),
                                               "pull_MBps": round(sz / pull / 1e6, 1)}
                log(f"{human_size(sz)} {st.label}: push {push:.2f} s, pull {pull:.2f} s, "
                    f"peak RSS {r.result().get(st.name)}")
            shutil.rmtree(layout)
            os.unlink(lf)
        results["scaling"] = sc
    # ---------------------------------------------------------------------------------------------- raw
    if "raw" not in skip:
        step(f"raw capacity: curl --http1.1 over TLS + basic auth, {human_size(size)} blob, {runs} alternating runs")
        big = os.path.join(data, "big.bin")
        random_file(big, size)
        blob = Blob(big)
        os.link(big, os.path.join(nginx.dir, "static", "blob.bin"))
        raw = {s.name: {"monolithic": [], "chunked": [], "download": []} for s in stacks}
        raw["nginx"]["static_download"] = []
        raw_cpu = {}
        for i in range(runs):
            for st in alternate(stacks, i):
                ops = [("monolithic", lambda: raw_monolithic(st, blob, f"raw/mono{i}")),
                       ("chunked", lambda: raw_chunked(st, blob, f"raw/chunk{i}")),
                       ("download", lambda: raw_download(st, f"{st.base}/v2/raw/mono{i}/blobs/{blob.digest}",
                                                         size))]
                if st is nginx:
                    ops.append(("static_download",
                                lambda: raw_download(nginx, f"{nginx.base}/bench-static/blob.bin", size)))
                for k, op in ops:
                    with RssSampler([st]) as r:
                        raw[st.name][k].append(op())
                    raw_cpu.setdefault(st.name, {}).setdefault(k, []).append(r.cpu.get(st.name, {}))
                st.check_alive()
                log(f"run {i + 1} {st.label}: " + ", ".join(
                    f"{k} {size / raw[st.name][k][-1] / 1e6:.0f} MB/s" for k in raw[st.name]))
        results["raw"] = {st: {k: {"seconds": [round(x, 3) for x in v], "MBps": round(size / median(v) / 1e6, 1)}
                               for k, v in d.items()} for st, d in raw.items()}
        # CPU seconds each process spent per GiB moved (median run): what bounds a single stream
        for st, d in raw_cpu.items():
            for k, runs_ in d.items():
                roles = {role for r_ in runs_ for role in r_}
                results["raw"][st][k]["cpu_s_per_GiB"] = {
                    role: round(median([r_.get(role, 0.0) for r_ in runs_]) * GiB / size, 2) for role in roles}
        os.unlink(os.path.join(nginx.dir, "static", "blob.bin"))

    # ---------------------------------------------------------------------------------------------- skopeo
    if "skopeo" not in skip:
        step(f"skopeo push and pull, one {human_size(size)} layer, {runs} alternating runs")
        base = os.path.join(data, "big.bin")
        if not os.path.exists(base):
            random_file(base, size)
        sk = {s.name: {"push": [], "pull": []} for s in stacks}
        sk_cpu = {}
        # skopeo's own CPU seconds per run (it runs as a child of this script), for push and pull
        client_cpu = {s.name: {"push": [], "pull": []} for s in stacks}
        alone = []
        for i in range(runs):
            # a fresh layer digest per run: skopeo's blob-info cache would otherwise mount instead of upload
            lf = os.path.join(data, f"sk{i}.bin")
            random_file(lf, size, base=base)
            layout = os.path.join(data, f"sk{i}-oci")
            oci_layout(layout, Blob(lf), "v1")
            alone.append(skopeo_alone(layout, "v1", os.path.join(data, "alone")))
            log(f"run {i + 1} skopeo alone (OCI layout to dir:, no registry): {size / alone[-1] / 1e6:.0f} MB/s")
            for st in alternate(stacks, i):
                c0 = children_cpu()
                with RssSampler([st]) as r:
                    sk[st.name]["push"].append(skopeo_push(st, layout, "v1", f"skopeo/run{i}"))
                c1 = children_cpu()
                rss_push.setdefault(human_size(size), {}).update(r.result())
                sk_cpu.setdefault(st.name, []).append(r.cpu.get(st.name, {}))
                sk[st.name]["pull"].append(skopeo_pull(st, f"skopeo/run{i}", "v1", os.path.join(data, "pulled")))
                client_cpu[st.name]["push"].append(c1 - c0)
                client_cpu[st.name]["pull"].append(children_cpu() - c1)
                st.check_alive()
                log(f"run {i + 1} {st.label}: push {size / sk[st.name]['push'][-1] / 1e6:.0f} MB/s, "
                    f"pull {size / sk[st.name]['pull'][-1] / 1e6:.0f} MB/s")
            shutil.rmtree(layout)
            os.unlink(lf)
        results["skopeo"] = {st: {k: {"seconds": [round(x, 3) for x in v], "MBps": round(size / median(v) / 1e6, 1)}
                                  for k, v in d.items()} for st, d in sk.items()}
        for st, runs_ in sk_cpu.items():
            results["skopeo"][st]["push"]["cpu_s_per_run"] = runs_
        for st, d in client_cpu.items():
            for k, v in d.items():
                results["skopeo"][st][k]["skopeo_cpu_s_per_GiB"] = round(median(v) * GiB / size, 2)
        results["skopeo"]["alone"] = {"seconds": [round(x, 3) for x in alone],
                                      "MBps": round(size / median(alone) / 1e6, 1)}

    # ---------------------------------------------------------------------------------------------- docker
    if "docker" not in skip:
        step(f"docker push and pull (private Docker daemon, vfs storage), one {human_size(size)} layer, "
             f"{runs} alternating runs, both stacks on {DOCKER_ADDR} with verified TLS")
        dk.start_daemon()
        # berth-proxy listens on one address: berth's front door for this section is a second berth-proxy before
        # the same registry, with the same certificate and htpasswd, stopped at the end of the section
        bport = free_port(DOCKER_ADDR)
        env = dict(os.environ, BERTH_LISTEN=f"{DOCKER_ADDR}:{bport}",
                   BERTH_UPSTREAM=f"http://127.0.0.1:{berth.registry_port}", BERTH_CERTS_DIR=certs,
                   BERTH_HTPASSWD=berth.htpasswd)
        berth.start("berth-proxy-docker", [os.path.join(a.bin_dir, "berth-proxy"), "serve"], env=env)
        hosts = {"berth": f"{DOCKER_ADDR}:{bport}", "nginx": f"{DOCKER_ADDR}:{nginx.port}"}
        for st in stacks:
            wait_ready(st, base=f"https://{hosts[st.name]}")
            dk.trust(hosts[st.name], st.cacert)
            dk.login(hosts[st.name])
        log(f"dockerd pid {dk.proc.pid}; berth on {hosts['berth']}, nginx + registry:2 on {hosts['nginx']}; "
            "logged in to both")
        base = os.path.join(data, "big.bin")
        if not os.path.exists(base):
            random_file(base, size)
        dock = {s.name: {"push": [], "pull": []} for s in stacks}
        dock_cpu = {s.name: {"push": [], "pull": []} for s in stacks}

        def timed(st, *args):
            """docker ARGS, timed, with the CPU seconds of the stack's processes, the daemon and the client."""
            c0, u0 = {**stack_cpu(st), **dk.cpu()}, children_cpu()
            t = time.monotonic()
            out = dk.docker(*args)
            dt = time.monotonic() - t
            cpu = cpu_delta(c0, {**stack_cpu(st), **dk.cpu()})
            cpu["docker (client)"] = round(children_cpu() - u0, 3)
            return out, dt, cpu

        for i in range(runs):
            # a fresh layer per run (new nonce): Docker skips or mounts layers a registry already has
            src = f"berth-bench/docker:run{i}"
            imp_log = os.path.join(dk.dir, "import.log")
            with open(imp_log, "w") as lf:
                imp = subprocess.Popen(["docker", "import", "-", src], stdin=subprocess.PIPE, stdout=lf,
                                       stderr=subprocess.STDOUT, env=dk.env)
            try:
                layer_tar_into(imp.stdin, base, size)
                imp.stdin.close()
            except BrokenPipeError:
                pass
            if imp.wait(timeout=3600) != 0:
                with open(imp_log) as lf:
                    raise BenchError(f"docker import failed:\n{lf.read()[-1000:]}")
            image_id = dk.docker("image", "inspect", "-f", "{{.Id}}", src).strip()
            refs = {st.name: f"{hosts[st.name]}/docker/run{i}:v1" for st in stacks}
            for st in alternate(stacks, i):
                dk.docker("tag", src, refs[st.name])
                out, dt, cpu = timed(st, "push", refs[st.name])
                if "Pushed" not in out or "Mounted from" in out or "already exists" in out:
                    raise BenchError(f"{st.label}: docker push did not upload the layer:\n{out[-1000:]}")
                dock[st.name]["push"].append(dt)
                dock_cpu[st.name]["push"].append(cpu)
                st.check_alive()
            # no local copy of the layer may remain for the pulls
            dk.docker("rmi", src, *refs.values())
            if run(["docker", "image", "inspect", image_id], check=False, env=dk.env).returncode == 0:
                raise BenchError(f"image {image_id} still present after docker rmi")
            for st in alternate(stacks, i):
                out, dt, cpu = timed(st, "pull", refs[st.name])
                if "Pull complete" not in out or "Already exists" in out:
                    raise BenchError(f"{st.label}: docker pull did not download the layer:\n{out[-1000:]}")
                got = dk.docker("image", "inspect", "-f", "{{.Id}}", refs[st.name]).strip()
                if got != image_id:
                    raise BenchError(f"{st.label}: pulled image {got}, pushed {image_id}")
                dk.docker("rmi", refs[st.name])
                dock[st.name]["pull"].append(dt)
                dock_cpu[st.name]["pull"].append(cpu)
                st.check_alive()
            for st in stacks:
                log(f"run {i + 1} {st.label}: push {size / dock[st.name]['push'][-1] / 1e6:.0f} MB/s "
                    f"(CPU s: {dock_cpu[st.name]['push'][-1]}), pull {size / dock[st.name]['pull'][-1] / 1e6:.0f} "
                    f"MB/s (CPU s: {dock_cpu[st.name]['pull'][-1]})")
        berth.stop_role("berth-proxy-docker")
        dk.stop_daemon()
        results["docker"] = {st: {k: {"seconds": [round(x, 3) for x in v], "MBps": round(size / median(v) / 1e6, 1)}
                                  for k, v in d.items()} for st, d in dock.items()}
        # CPU seconds per GiB of layer (median run) of every process involved: where the time goes
        for st, d in dock_cpu.items():
            for k, runs_ in d.items():
                names = {n for r_ in runs_ for n in r_}
                results["docker"][st][k]["cpu_s_per_GiB"] = {
                    n: round(median([r_.get(n, 0.0) for r_ in runs_]) * GiB / size, 2) for n in sorted(names)}
        results["meta"]["docker"] = {"address": DOCKER_ADDR, "storage_driver": "vfs",
                                     "layer": "one file of random bytes in a tar, docker import; gzip by dockerd",
                                     # dockerd decompresses pulls with unpigz when it is installed
                                     "unpigz": bool(shutil.which("unpigz"))}
    if os.path.exists(os.path.join(data, "big.bin")):
        os.unlink(os.path.join(data, "big.bin"))

    # ---------------------------------------------------------------------------------------------- requests
    if "requests" not in skip:
        step(f"authenticated small requests: h2load, 64 connections, {duration:g} s each, alternating")
        cases = [("GET /v2/", "/v2/", "GET", ()),
                 ("HEAD blob", f"/v2/bench/small/blobs/{small.digest}", "HEAD", ()),
                 ("GET manifest", "/v2/bench/small/manifests/latest", "GET", (f"Accept: {OCI_MANIFEST}",))]
        req = {}
        i = 0
        for kind in hashes:
            nk = set_hash(kind)
            label = kind if nk == kind else f"{kind} (nginx: {nk})"
            for proto in ("h1", "h2"):
                for cname, path, method, hdrs in cases:
                    if method == "HEAD" and proto == "h1":
                        # h2load (and wrk) wait for a body after a HTTP/1.1 HEAD response that carries
                        # Content-Length, until the run ends: HEAD is measured over HTTP/2 only.
                        continue
                    key = f"{label} {proto} {cname}"
                    req[key] = {}
                    for st in alternate(stacks, i):
                        req[key][st.name] = h2load(st, path, method, proto == "h2", duration, 64, hdrs)
                        st.check_alive()
                    i += 1
                    b, n = req[key]["berth"], req[key]["nginx"]
                    log(f"{key}: berth {b['rps']:.0f} req/s p99 {b['p99_ms']:.1f} ms | "
                        f"nginx {n['rps']:.0f} req/s p99 {n['p99_ms']:.1f} ms | x{b['rps'] / n['rps']:.1f}")
        results["requests"] = req
        set_hash("bcrypt5")

    # ---------------------------------------------------------------------------------------------- access rules
    if "acl" not in skip:
        step(f"access rules: HEAD blob over HTTP/2 through a second berth-proxy with a 100-rule access file, "
             f"{duration:g} s each, alternating with the proxy without one, {runs} runs")
        # Two proxies started alike on berth's registry, one with the access file: the same history, so only
        # the rules differ.
        plain = Stack("berth-plain", "berth without access rules", work)
        acl_stack = Stack("berth-acl", "berth with 100 access rules", work)
        rules = []
        # 99 rules that do not match the benchmark's repository (literal names, prefixes and globs the
        # general matcher handles, a third each), then the one that does: every request walks all 100.
        for i in range(99):
            glob = [f"team{i:03d}/app", f"team{i:03d}/**", f"*-team{i:03d}/**/app-?"][i % 3]
            rules.append(f'[[rule]]\nrepos = "{glob}"\npull = ["@devs"]\npush = ["@devs"]\n')
        rules.append('[[rule]]\nrepos = "**"\npull = ["*"]\npush = ["*"]\n')
        acl_path = os.path.join(work, "acl.toml")
        with open(acl_path, "w") as f:
            f.write('[groups]\ndevs = ["alice", "bob"]\n\n' + "\n".join(rules))
        for st, extra in ((plain, {}), (acl_stack, {"BERTH_ACL": acl_path})):
            st.registry_port = berth.registry_port
            cleanups.append(st.stop)
            env = dict(os.environ)
            env.update(BERTH_LISTEN=st.host, BERTH_UPSTREAM=f"http://127.0.0.1:{berth.registry_port}",
                       BERTH_CERTS_DIR=certs, BERTH_HTPASSWD=berth.htpasswd, **extra)
            st.start("berth-proxy", [os.path.join(a.bin_dir, "berth-proxy"), "serve"], env=env)
            st.cacert = berth.cacert
            wait_ready(st)
        path = f"/v2/bench/small/blobs/{small.digest}"
        pair = [plain, acl_stack]
        got = {plain.name: [], acl_stack.name: []}
        cpu_us = {plain.name: [], acl_stack.name: []}
        for i in range(runs):
            for st in alternate(pair, i):
                # The proxy's own CPU per request too: on a small machine the load generator shares the cores,
                # and the rate alone moves by 10 % from run to run.
                pid = next(iter(st.pids()))
                c0 = cpu_seconds(pid)
                r = h2load(st, path, "HEAD", True, duration, 64)
                got[st.name].append(r["rps"])
                cpu_us[st.name].append(round((cpu_seconds(pid) - c0) * 1e6 / max(1, r["ok"]), 1))
                st.check_alive()
        without, with_ = median(got[plain.name]), median(got[acl_stack.name])
        cpu_without, cpu_with = median(cpu_us[plain.name]), median(cpu_us[acl_stack.name])
        results["acl"] = {"rules": 100, "runs": runs, "without_rps": without, "with_rps": with_,
                          "ratio": round(with_ / without, 3), "all": got,
                          "proxy_cpu_us_per_request": {"without": cpu_without, "with": cpu_with, "all": cpu_us}}
        log(f"HEAD blob h2: without access file {without:.0f} req/s, with 100 rules {with_:.0f} req/s "
            f"({100 * with_ / without:.1f} %); proxy CPU per request {cpu_without:.1f} / {cpu_with:.1f} us")
        plain.stop()
        acl_stack.stop()

    # ---------------------------------------------------------------------------------------------- metrics
    if "metrics" not in skip:
        step(f"metrics: HEAD blob over HTTP/2, a proxy and registry serving metrics and scraped every second "
             f"vs a pair without metrics, {duration:g} s each, alternating, {runs} runs")
        # Two pairs started alike on berth's data directory: one with metrics on both processes (and a scraper
        # reading both every second), one without; only the metrics differ.
        plain = Stack("berth-nometrics", "berth without metrics", work)
        metered = Stack("berth-metrics", "berth with metrics, scraped every second", work)
        scrape_urls = []
        for st, on in ((plain, False), (metered, True)):
            cleanups.append(st.stop)
            env = dict(os.environ)
            env.update(REGISTRY_HTTP_ADDR=f"127.0.0.1:{st.registry_port}",
                       REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=berth.data, BERTH_GC_INTERVAL="0")
            penv = dict(os.environ)
            penv.update(BERTH_LISTEN=st.host, BERTH_UPSTREAM=f"http://127.0.0.1:{st.registry_port}",
                        BERTH_CERTS_DIR=certs, BERTH_HTPASSWD=berth.htpasswd)
            if on:
                debug, mport = free_port(), free_port()
                env.update(REGISTRY_HTTP_DEBUG_ADDR=f"127.0.0.1:{debug}",
                           REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED="true")
                penv.update(BERTH_METRICS_LISTEN=f"127.0.0.1:{mport}")
                scrape_urls = [f"http://127.0.0.1:{debug}/metrics", f"http://127.0.0.1:{mport}/metrics"]
            st.start("berth-registry", [os.path.join(a.bin_dir, "berth-registry")], env=env)
            st.start("berth-proxy", [os.path.join(a.bin_dir, "berth-proxy"), "serve"], env=penv)
            st.cacert = berth.cacert
            wait_ready(st)
        stop_scraping = threading.Event()
        scrapes = {"count": 0, "bytes": 0, "seconds": []}

        def scraper():
            # One scrape of each process every second, as a Prometheus server configured at 1 s would.
            while not stop_scraping.wait(1.0):
                for url in scrape_urls:
                    t0 = time.monotonic()
                    with urllib.request.urlopen(url, timeout=10) as resp:
                        body = resp.read()
                    scrapes["seconds"].append(time.monotonic() - t0)
                    scrapes["count"] += 1
                    scrapes["bytes"] += len(body)

        scraping = threading.Thread(target=scraper, daemon=True)
        scraping.start()
        path = f"/v2/bench/small/blobs/{small.digest}"
        pair = [plain, metered]
        got = {plain.name: [], metered.name: []}
        cpu_us = {plain.name: [], metered.name: []}
        try:
            for i in range(runs):
                for st in alternate(pair, i):
                    # CPU of the proxy and the registry per request too: the rate alone moves by 10 % from run
                    # to run when the load generator shares the cores.
                    pids = list(st.pids())
                    c0 = sum(cpu_seconds(p) for p in pids)
                    r = h2load(st, path, "HEAD", True, duration, 64)
                    got[st.name].append(r["rps"])
                    cpu_us[st.name].append(round((sum(cpu_seconds(p) for p in pids) - c0) * 1e6
                                                 / max(1, r["ok"]), 1))
                    st.check_alive()
        finally:
            stop_scraping.set()
            scraping.join()
        if scrapes["count"] == 0:
            raise BenchError("metrics: no scrape happened during the runs")
        without, with_ = median(got[plain.name]), median(got[metered.name])
        results["metrics"] = {"runs": runs, "without_rps": without, "with_rps": with_,
                              "ratio": round(with_ / without, 3), "all": got,
                              "scrapes": scrapes["count"],
                              "scrape_bytes": scrapes["bytes"] // scrapes["count"],
                              "scrape_p50_ms": round(median(scrapes["seconds"]) * 1000, 2),
                              "cpu_us_per_request": {"without": median(cpu_us[plain.name]),
                                                     "with": median(cpu_us[metered.name]), "all": cpu_us}}
        log(f"HEAD blob h2: without metrics {without:.0f} req/s, with metrics scraped every second "
            f"{with_:.0f} req/s ({100 * with_ / without:.1f} %); {scrapes['count']} scrapes, "
            f"{scrapes['bytes'] // scrapes['count']} bytes, {median(scrapes['seconds']) * 1000:.1f} ms each; "
            f"proxy + registry CPU per request {median(cpu_us[plain.name]):.1f} / "
            f"{median(cpu_us[metered.name]):.1f} us")
        plain.stop()
        metered.stop()

    # ---------------------------------------------------------------------------------------------- floods
    if "floods" not in skip:
        step("a legitimate first login and PATCH from another address, quiet and while one client floods")

        def add_users(names):
            lines = []
            for u in names:
                p = run(["htpasswd", "-n", "-b", "-B", "-C", "5", u, PASSWORD])
                lines.append(p.stdout.strip().splitlines()[0])
            for path in (berth.htpasswd, nginx.htpasswd):
                with open(path) as f:
                    text = f.read()
                tmp = path + ".new"
                with open(tmp, "w") as f:
                    f.write(text + "\n".join(lines) + "\n")
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            time.sleep(2.5)  # berth polls the file every second
            for st in stacks:
                wait_ready(st)

        results["floods"] = floods(stacks, smoke, add_users)
        set_hash("bcrypt5")

    # ---------------------------------------------------------------------------------------------- pulls
    if "pulls" not in skip:
        step(f"64 concurrent pulls of a {human_size(pull_size)} blob (curl --http1.1 --parallel), peak RSS")
        pf = os.path.join(data, "pull.bin")
        random_file(pf, pull_size)
        pb = Blob(pf)
        cp = {}
        for i, st in enumerate(alternate(stacks, 0)):
            raw_monolithic(st, pb, "pulls/blob")
            url = f"{st.base}/v2/pulls/blob/blobs/{pb.digest}"
            cmd = curl_base(st) + ["--parallel", "--parallel-immediate", "--parallel-max", "64",
                                   "-w", "%{http_code} %{size_download}\n"]
            for _ in range(64):
                cmd += ["-o", "/dev/null", url]
            with RssSampler([st]) as r:
                t = time.monotonic()
                p = run(cmd, check=False, timeout=3600)
                dt = time.monotonic() - t
            codes = p.stdout.split("\n")
            okc = sum(1 for ln in codes if ln.split() == ["200", str(pull_size)])
            if okc != 64:
                raise BenchError(f"{st.label}: {okc}/64 concurrent pulls succeeded\n{p.stderr[-500:]}")
            cp[st.name] = {"seconds": round(dt, 3), "MBps": round(64 * pull_size / dt / 1e6, 1),
                           "rss_MiB": r.result().get(st.name, {}), "cpu_s": r.cpu.get(st.name, {})}
            log(f"{st.label}: {cp[st.name]['MBps']:.0f} MB/s aggregate, peak RSS {cp[st.name]['rss_MiB']}")
            st.check_alive()
        results["concurrent_pulls"] = cp
        os.unlink(pf)

    results["rss_push"] = rss_push

    # ---------------------------------------------------------------------------------------------- listing
    if "listing" not in skip:
        step(f"_catalog and tags/list latency (first page, n=100) with {listing} repositories / tags")
        ls = {}
        have = 0
        secs = 1 if smoke else 3
        for count in listing:
            for st in stacks:
                seed_listing(st, "catalog", have, count - have, small_manifest, small.digest)
                seed_listing(st, "tags", have, count - have, small_manifest, small.digest)
            have = count
            ls[str(count)] = {}
            for j, st in enumerate(alternate(stacks, count)):
                ls[str(count)][st.name] = {
                    "catalog": listing_latency(st, "/v2/_catalog?n=100", secs),
                    "tags": listing_latency(st, "/v2/tagged/app/tags/list?n=100", secs),
                }
                st.check_alive()
            log(f"{count}: " + " | ".join(
                f"{s}: _catalog p50 {v['catalog']['p50_ms']:.2f} ms, tags p50 {v['tags']['p50_ms']:.2f} ms"
                for s, v in ls[str(count)].items()))
        results["listing"] = ls

    # ---------------------------------------------------------------------------------------------- gc
    if "gc" not in skip:
        repos, blobs = (50, 2000) if smoke else (1000, 100_000)
        step(f"garbage collection: {repos} repositories, {blobs} blobs (20 % garbage), written into the layout")
        gc = {}
        dirs = {k: os.path.join(work, f"gc-{k}") for k in ("berth", "nginx")}
        t = time.monotonic()
        garbage = seed_gc(dirs["berth"], repos, blobs, 0.2, "a")
        log(f"seeded in {time.monotonic() - t:.1f} s; copying for registry:2")
        run(["cp", "-a", dirs["berth"], dirs["nginx"]])
        # Each collector in a process of its own, measured alone: berth's online collector (grace 0) and
        # registry:2's offline `garbage-collect`, on identical copies.
        env = dict(os.environ, REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=dirs["berth"])
        secs, rss, out = timed_gc([os.path.join(a.bin_dir, "berth-registry"), "gc", "--json", "--grace", "0"],
                                  env)
        report = json.loads(out)
        gc["berth"] = {"seconds": round(secs, 2), "peak_rss_MiB": rss, "deleted": len(report["blobs"])}
        cfg = os.path.join(work, "gc-registry2.yml")
        with open(cfg, "w") as f:
            f.write(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {dirs['nginx']}\n"
                    "http:\n  addr: 127.0.0.1:0\n")
        secs, rss, out = timed_gc(["docker-registry", "garbage-collect", cfg])
        gone = sum(1 for ln in out.splitlines() if ln.startswith("blob eligible for deletion"))
        gc["nginx"] = {"seconds": round(secs, 2), "peak_rss_MiB": rss, "deleted": gone}
        gc["garbage_seeded"] = garbage
        log(" | ".join(f"{k}: {v['seconds']} s, peak RSS {v['peak_rss_MiB']} MiB, {v['deleted']} blobs deleted"
                       for k, v in gc.items() if isinstance(v, dict)))
        if gc["berth"]["deleted"] != garbage:
            raise BenchError(f"berth's collector deleted {gc['berth']['deleted']} blobs, {garbage} were garbage")
        # Push throughput through berth while collections run back to back over the same data directory
        # (grace 1h: the whole walk and mark, nothing pushed here is swept).
        seed_gc(berth.data, repos, blobs, 0.2, "b")
        gsize = (8 if smoke else 64) * MiB
        path = os.path.join(work, "gc-push.bin")
        pushes = 3 if smoke else 6
        alone, during = [], []
        collections = 0
        for i in range(pushes):
            random_file(path, gsize)
            alone.append(raw_monolithic(berth, Blob(path), f"gcpush/alone{i}"))
        stop = threading.Event()
        envb = dict(os.environ, REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=berth.data)

        failed = []

        def collect_loop():
            nonlocal collections
            while not stop.is_set():
                p = subprocess.run([os.path.join(a.bin_dir, "berth-registry"), "gc", "--json"], env=envb,
                                   capture_output=True, text=True)
                if p.returncode != 0:
                    failed.append(p.stderr[-500:])
                    return
                collections += 1

        th = threading.Thread(target=collect_loop)
        th.start()
        try:
            # at least `pushes`, and on until a whole collection has run beside them
            i = 0
            while (i < pushes or collections == 0) and i < 500 and not failed:
                random_file(path, gsize)
                during.append(raw_monolithic(berth, Blob(path), f"gcpush/during{i}"))
                i += 1
        finally:
            stop.set()
            th.join()
        if failed:
            raise BenchError(f"berth-registry gc failed during pushes: {failed[0]}")
        if collections == 0:
            raise BenchError("no collection finished while the pushes ran")
        berth.check_alive()
        gc["push"] = {"size": gsize, "alone_MBps": round(gsize / median(alone) / 1e6, 1),
                      "during_MBps": round(gsize / median(during) / 1e6, 1), "collections": collections}
        log(f"push {human_size(gsize)}: {gc['push']['alone_MBps']} MB/s alone, {gc['push']['during_MBps']} MB/s "
            f"while {collections} collections ran")
        results["gc"] = gc

    for st in stacks:
        st.check_alive()
    results["targets"] = targets(results)
    print_table(results)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Targets and the table


def targets(r):
    t = []

    def add(name, value, goal, ok, note=""):
        t.append({"target": name, "value": value, "goal": goal, "met": bool(ok), "note": note})

    m = r.get("machine", {})
    raw = r.get("raw")
    if raw:
        for k in ("monolithic", "chunked"):
            ratio = raw["berth"][k]["MBps"] / raw["nginx"][k]["MBps"]
            add(f"raw {k} upload vs nginx+registry:2", f"{ratio:.2f}x", ">= 3x", ratio >= 3)
            if m.get("sha256_MBps"):
                f = raw["berth"][k]["MBps"] / m["sha256_MBps"]
                add(f"raw {k} upload vs openssl sha256 (1 core)", f"{f * 100:.0f}%", ">= 40%", f >= 0.4)
        ratio = raw["berth"]["download"]["MBps"] / raw["nginx"]["download"]["MBps"]
        add("raw download vs nginx+registry:2", f"{ratio:.2f}x", ">= 1.2x", ratio >= 1.2)
        f = raw["berth"]["download"]["MBps"] / raw["nginx"]["static_download"]["MBps"]
        add("raw download vs nginx static file over TLS", f"{f * 100:.0f}%", ">= 70%", f >= 0.7)
    sk = r.get("skopeo")
    if sk:
        for k in ("push", "pull"):
            ratio = sk["berth"][k]["MBps"] / sk["nginx"][k]["MBps"]
            add(f"skopeo {k} vs nginx+registry:2", f"{ratio:.2f}x", ">= 1.5x", ratio >= 1.5)
    dkr = r.get("docker")
    if dkr:
        # the daemon's gzip (push) and unpack (pull) bound both stacks: no slower than the comparison stack
        for k in ("push", "pull"):
            ratio = dkr["berth"][k]["MBps"] / dkr["nginx"][k]["MBps"]
            add(f"docker {k} vs nginx+registry:2", f"{ratio:.2f}x", ">= 1.0x", ratio >= 1.0)
    req = r.get("requests")
    if req:
        for key, v in req.items():
            ratio = v["berth"]["rps"] / v["nginx"]["rps"]
            if key.startswith("bcrypt5"):
                add(f"req/s {key}", f"{ratio:.1f}x", ">= 20x", ratio >= 20)
            elif key.startswith("apr1"):
                add(f"req/s {key}", f"{ratio:.1f}x", ">= 3x", ratio >= 3)
            add(f"p99 {key}", f"{v['berth']['p99_ms']:.2f} vs {v['nginx']['p99_ms']:.2f} ms", "below nginx",
                v["berth"]["p99_ms"] < v["nginx"]["p99_ms"])
    acl = r.get("acl")
    if acl:
        add("HEAD blob req/s, 100 access rules vs none (berth)", f"{acl['ratio'] * 100:.1f}%", ">= 95%",
            acl["ratio"] >= 0.95)
    mt = r.get("metrics")
    if mt:
        add("HEAD blob req/s, metrics on and scraped every second vs off (berth)", f"{mt['ratio'] * 100:.1f}%",
            ">= 97%", mt["ratio"] >= 0.97, f"{mt['scrapes']} scrapes of {mt['scrape_bytes']} bytes")
    rp = r.get("rss_push")
    if rp:
        biggest = max(rp, key=lambda s: parse_size(s.replace(" GiB", "G").replace(" MiB", "M")))
        v = rp[biggest]
        if "berth" in v and "nginx" in v:
            px, rg = v["berth"].get("berth-proxy", 0), v["berth"].get("berth-registry", 0)
            # berth-proxy's counterpart is nginx as a whole: its master and all its workers
            ng = round(v["nginx"].get("nginx", 0) + v["nginx"].get("nginx workers (sum)",
                                                                    v["nginx"].get("nginx worker", 0)), 1)
            dr = v["nginx"].get("docker-registry", 0)
            add(f"peak RSS berth-proxy during {biggest} push", f"{px} MiB", "<= 32 MiB and < nginx",
                px <= 32 and px < ng, f"nginx master + workers {ng} MiB")
            add(f"peak RSS berth-registry during {biggest} push", f"{rg} MiB", "<= 64 MiB and < registry:2",
                rg <= 64 and rg < dr, f"registry:2 {dr} MiB")
    g = r.get("gc")
    if g:
        add("push throughput while collecting", f"{g['push']['during_MBps'] / g['push']['alone_MBps']:.0%}",
            ">= 80 % of without", g["push"]["during_MBps"] >= 0.8 * g["push"]["alone_MBps"],
            f"{g['push']['collections']} collections")
    ls = r.get("listing")
    if ls and len(ls) >= 2:
        lo, hi = min(ls, key=int), max(ls, key=int)
        for k in ("catalog", "tags"):
            ratio = ls[hi]["berth"][k]["p50_ms"] / ls[lo]["berth"][k]["p50_ms"]
            nratio = ls[hi]["nginx"][k]["p50_ms"] / ls[lo]["nginx"][k]["p50_ms"]
            add(f"{k} p50 at {hi} / at {lo}", f"{ratio:.1f}x", "<= 2x", ratio <= 2,
                f"nginx+registry:2: {nratio:.1f}x")
    return t


def fmt(x, unit=""):
    return "-" if x is None else f"{x:,.1f}{unit}"


def print_table(r):
    rows = []

    def row(what, b, n, unit, better="higher"):
        ratio = None
        if b and n:
            ratio = b / n if better == "higher" else n / b
        rows.append((what, fmt(b, unit), fmt(n, unit), "-" if ratio is None else f"{ratio:.2f}x"))

    raw = r.get("raw")
    if raw:
        for k in ("monolithic", "chunked", "download"):
            row(f"raw {k} MB/s", raw["berth"][k]["MBps"], raw["nginx"][k]["MBps"], "")
        rows.append(("nginx static file over TLS MB/s", "", fmt(raw["nginx"]["static_download"]["MBps"]), ""))
    sk = r.get("skopeo")
    if sk:
        for k in ("push", "pull"):
            row(f"skopeo {k} MB/s", sk["berth"][k]["MBps"], sk["nginx"][k]["MBps"], "")
        if "alone" in sk:
            # how close each stack gets to the client's own ceiling
            rows.append(("skopeo alone, OCI layout to dir: MB/s", fmt(sk["alone"]["MBps"]), "", ""))
            for k in ("push", "pull"):
                rows.append((f"skopeo {k} as % of skopeo alone", f"{sk['berth'][k]['MBps'] / sk['alone']['MBps']:.0%}",
                             f"{sk['nginx'][k]['MBps'] / sk['alone']['MBps']:.0%}", ""))
    dkr = r.get("docker")
    if dkr:
        for k in ("push", "pull"):
            row(f"docker {k} MB/s", dkr["berth"][k]["MBps"], dkr["nginx"][k]["MBps"], "")
            rows.append((f"  CPU s/GiB", " ".join(f"{n}={x}" for n, x in dkr["berth"][k]["cpu_s_per_GiB"].items()),
                         " ".join(f"{n}={x}" for n, x in dkr["nginx"][k]["cpu_s_per_GiB"].items()), ""))
    for key, v in (r.get("requests") or {}).items():
        row(f"{key} req/s", v["berth"]["rps"], v["nginx"]["rps"], "")
        row(f"{key} p99 ms", v["berth"]["p99_ms"], v["nginx"]["p99_ms"], "", better="lower")
    cp = r.get("concurrent_pulls")
    if cp:
        row("64 concurrent pulls MB/s", cp["berth"]["MBps"], cp["nginx"]["MBps"], "")
        row("64 pulls: peak RSS total MiB", cp["berth"]["rss_MiB"].get("total"),
            cp["nginx"]["rss_MiB"].get("total"), "", better="lower")
    for sz, v in (r.get("rss_push") or {}).items():
        if "berth" in v and "nginx" in v:
            row(f"push {sz}: peak RSS total MiB", v["berth"].get("total"), v["nginx"].get("total"), "",
                better="lower")
            rows.append((f"  per process", " ".join(f"{k}={x}" for k, x in v["berth"].items() if k != "total"),
                         " ".join(f"{k}={x}" for k, x in v["nginx"].items() if k != "total"), ""))
    for sz, v in (r.get("scaling") or {}).items():
        row(f"skopeo push {sz} s", v["berth"]["push_s"], v["nginx"]["push_s"], "", better="lower")
        row(f"skopeo pull {sz} s", v["berth"]["pull_s"], v["nginx"]["pull_s"], "", better="lower")
    for n, v in (r.get("listing") or {}).items():
        for k in ("catalog", "tags"):
            row(f"{k} (n=100) with {n}: p50 ms", v["berth"][k]["p50_ms"], v["nginx"][k]["p50_ms"], "",
                better="lower")
    g = r.get("gc")
    if g:
        row("garbage collection s", g["berth"]["seconds"], g["nginx"]["seconds"], "", better="lower")
        row("garbage collection peak RSS MiB", g["berth"]["peak_rss_MiB"], g["nginx"]["peak_rss_MiB"], "",
            better="lower")
        rows.append(("push MB/s alone / while collecting", f"{g['push']['alone_MBps']} / {g['push']['during_MBps']}",
                     "", ""))
    w = [max(len(x[i]) for x in rows + [("what", "berth", "nginx+registry:2", "berth advantage")]) for i in range(4)]
    step("results (same run)")
    m = r.get("machine")
    if m:
        log("machine: " + ", ".join(f"{k} {v}" for k, v in m.items()))
    log(f"load average at start {' '.join(r['meta']['loadavg_start'])}")
    if r["meta"].get("docker_skipped"):
        log(f"docker section skipped: {r['meta']['docker_skipped']}")
    hdr = ("what", "berth", "nginx+registry:2", "berth advantage")
    print("    " + " | ".join(h.ljust(w[i]) for i, h in enumerate(hdr)))
    print("    " + "-+-".join("-" * x for x in w))
    for x in rows:
        print("    " + " | ".join(c.ljust(w[i]) for i, c in enumerate(x)))
    step("targets")
    for t in r.get("targets", []):
        note = f" ({t['note']})" if t["note"] else ""
        print(f"    [{'met ' if t['met'] else 'MISS'}] {t['target']}: {t['value']} (goal {t['goal']}){note}")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The registry's metadata cache on S3 with a realistic round trip to the bucket: what it saves, and how berth's
compares with registry:2's blob descriptor cache.

    scripts/bench.sh --s3-cache [--smoke] [--out FILE.json] [more options: --help]
    (or python3 bench/s3cache.py --bin-dir target/release ...)

One moto_server (an S3 endpoint in memory) and one Redis on loopback, and five stacks, all started here as child
processes in a temporary directory and stopped by PID at the end. Every S3 client reaches moto_server only
through bench/relay.py, a TCP relay that delivers every byte --delay-ms (10) late in each direction: 20 ms per
round trip, as between a registry and a bucket in another zone (the kernel here has no netem). Redis is local
(no relay): it sits next to the registries. The five stacks, each in front of its own bucket, with TLS and an
htpasswd user (bcrypt cost 5) as in the main benchmark:

  berth none            berth-proxy + berth-registry, REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR=none
  berth inmemory        the same with the cache in memory (berth's default on S3)
  berth redis           the same with the cache shared in Redis (database 0)
  registry:2 inmemory   nginx (nginx.conf.in) + registry:2 (registry-s3-config.yml.in), blobdescriptor inmemory
  registry:2 redis      the same with blobdescriptor redis (database 1)

Each stack gets a small image (one 4 KiB layer) and a big one (--layers, 20, random layers of --layer-size,
256 KiB) pushed with skopeo through its proxy (timed, for information). Then, one stack at a time and in
alternating order between runs, through the proxy over TLS with basic auth:

  HEAD blob      h2load over HTTP/2, --conns (8) connections, 1 s warm-up then --duration (10) s: an
                 authenticated HEAD of the small image's layer; req/s, p50, p99
  GET manifest   the same, GET of the small image's manifest by tag (OCI Accept)
  pull           skopeo copy of the big image to a dir:, each timed pull right after a warm-up pull of the same
                 stack, which fills the caches (berth's in-memory cache trusts links for 5 s, less than the other
                 stacks' pulls in between take); median of --runs (3); the warm-up pulls are timed too

Before measuring, the script waits until the tombstones berth's pushes left in Redis have expired (10 s). The
h2load cases also run --runs times (median of each figure). For every case the script counts the requests that
reached the bucket (moto_server's request log; per request, h2load's 1 s warm-up estimated at the measured rate)
and the CPU the relay and moto_server spent (the relay must not be the bottleneck: its CPU is reported as a share
of one core, with a warning above 70 %). The targets (berth's cache at least 10x the HEAD rate without it, no
slower than registry:2's cache, the big pull at least twice as fast as without it) are printed as [met ]/[MISS]
and written to the JSON with every figure; a missed target is reported, not failed. The exit status is non-zero
on any error: a failed request, push or pull, a process that exited, an error, a panic or a 5xx in berth's logs,
a 5xx in nginx's access log (once registry:2 is up), a 5xx from the bucket.
"""

import argparse
import ast
import http.client
import importlib.metadata
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time

sys.dont_write_bytecode = True
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)
from common import (  # noqa: E402
    OCI_MANIFEST, ROOT, BenchError, Blob, Stack, alternate, children_of, cpu_delta, cpu_seconds, free_port, h2load,
    log, make_certs, make_htpasswd, median, oci_layout, parse_size, random_file, report_logs, run, run_reported,
    skopeo_pull, skopeo_push, stack_cpu, start_berth, start_moto, start_nginx, step, finish_run,
)

KiB = 1024
SMALL_REPO, BIG_REPO, TAG = "bench/small", "bench/big", "latest"
BERTH_REDIS_DB, REGISTRY2_REDIS_DB = 0, 1
WARNINGS = []  # what may make a figure mean less than it says (a busy relay), printed with the results
# (name: the stack's directory, bucket and JSON key; column header; berth or registry:2; cache)
STACKS = [
    ("berth-none", "berth none", "berth", "none"),
    ("berth-inmemory", "berth inmemory", "berth", "inmemory"),
    ("berth-redis", "berth redis", "berth", "redis"),
    ("registry2-inmemory", "registry:2 inmemory", "registry2", "inmemory"),
    ("registry2-redis", "registry:2 redis", "registry2", "redis"),
]


# ---------------------------------------------------------------------------------------------------------------
# Redis: a few commands of the benchmark's own (readiness, the tombstones berth's pushes leave, key counts)


class Redis:
    """One connection to the Redis on 127.0.0.1:port speaking RESP; cmd() sends one command, returns its reply
    (bytes, int, list or None) and raises BenchError on an error reply."""

    def __init__(self, port, db=0, timeout=5):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.f = self.sock.makefile("rb")
        if db:
            self.cmd("SELECT", db)

    def cmd(self, *args):
        parts = [f"*{len(args)}\r\n".encode()]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.sock.sendall(b"".join(parts))
        return self._reply()

    def _reply(self):
        line = self.f.readline()
        if not line.endswith(b"\r\n"):
            raise BenchError("redis: the connection closed mid-reply")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise BenchError(f"redis: {rest.decode(errors='replace')}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise BenchError(f"redis: unexpected reply {line[:50]!r}")

    def keys(self, pattern):
        out, cursor = [], b"0"
        while True:
            cursor, batch = self.cmd("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            out += batch
            if cursor == b"0":
                return out

    def close(self):
        self.f.close()
        self.sock.close()


def start_redis(shared):
    port = free_port()
    shared.start("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", shared.dir,
                           "--save", "", "--appendonly", "no", "--maxmemory", "64mb",
                           "--maxmemory-policy", "allkeys-lru"])
    deadline = time.monotonic() + 30
    while True:
        shared.check_alive()
        try:
            r = Redis(port)
            pong = r.cmd("PING")
            r.close()
            if pong == b"PONG":
                return port
        except (OSError, BenchError):
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"redis-server does not answer PING on port {port} within 30 s "
                             f"(see {shared.dir}/redis.out)")
        time.sleep(0.2)


def wait_tombstones_gone(port, db, timeout=60):
    """Waits until no key of berth's in Redis is a tombstone. Every write leaves one (`T`, 10 s) on each key it
    may have changed, and fills of such a key are refused until it expires: measured right after a push, the
    redis stack would read from the bucket for those seconds. Returns (seconds waited, tombstones seen first)."""
    t0 = time.monotonic()
    first = None
    while True:
        r = Redis(port, db)
        try:
            keys = r.keys("berth:*")
            values = r.cmd("MGET", *keys) if keys else []
        finally:
            r.close()
        n = sum(1 for v in values if v == b"T")
        first = n if first is None else first
        if n == 0:
            return round(time.monotonic() - t0, 1), first
        if time.monotonic() - t0 > timeout:
            raise BenchError(f"redis: {n} tombstones of berth's still there after {timeout} s (they live 10 s)")
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------------------------------
# The shared services and the stacks


def start_relay(shared, target_port, delay_ms):
    """bench/relay.py as a child process in front of target_port; returns its port once it accepts."""
    port = free_port()
    p = shared.start("relay", [sys.executable, os.path.join(BENCH_DIR, "relay.py"), "--listen", f"127.0.0.1:{port}",
                               "--target", f"127.0.0.1:{target_port}", "--delay-ms", f"{delay_ms:g}"])
    out = os.path.join(shared.dir, "relay.out")
    deadline = time.monotonic() + 30
    while True:
        shared.check_alive()
        with open(out) as f:
            if "relay listening" in f.read():
                return port, p
        if time.monotonic() > deadline:
            raise BenchError(f"the relay did not start within 30 s (see {shared.dir}/relay.log)")
        time.sleep(0.1)


def round_trip_ms(port, n=9):
    """Median time of n ListBuckets requests, one after another, to 127.0.0.1:port (moto_server directly or
    through the relay; moto_server closes its connection after every answer, so each is a new connection, which
    is what the registries' requests are too)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times = []
    try:
        for _ in range(n):
            t = time.monotonic()
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            times.append((time.monotonic() - t) * 1000.0)
            if resp.status != 200:
                raise BenchError(f"GET / (ListBuckets) on port {port} -> {resp.status}")
    finally:
        conn.close()
    return round(statistics.median(times), 2)


def start_stack(spec, work, a, certs, htpasswd, relay_port, redis_port):
    """One of STACKS, its registry on its own bucket through the relay; returns the Stack once its proxy
    answers GET /v2/ with 200."""
    name, label, kind, cache = spec
    st = Stack(name, label, work)
    st.kind, st.cache, st.bucket = kind, cache, name
    if kind == "berth":
        env = dict(REGISTRY_STORAGE="s3", REGISTRY_STORAGE_S3_BUCKET=st.bucket, REGISTRY_STORAGE_S3_REGION="us-east-1",
                   REGISTRY_STORAGE_S3_REGIONENDPOINT=f"http://127.0.0.1:{relay_port}",
                   REGISTRY_STORAGE_S3_ACCESSKEY="bench", REGISTRY_STORAGE_S3_SECRETKEY="bench-secret",
                   REGISTRY_STORAGE_S3_SECURE="false", REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR=cache,
                   BERTH_GC_INTERVAL="0")
        if cache == "redis":
            env.update(REGISTRY_REDIS_ADDR=f"127.0.0.1:{redis_port}", REGISTRY_REDIS_DB=str(BERTH_REDIS_DB))
        start_berth(st, a.bin_dir, certs, htpasswd, storage_env=env)
    else:
        if cache == "redis":
            # with no pool settings registry:2 keeps no idle connection: it would dial Redis for every lookup
            redis = (f"redis:\n  addr: 127.0.0.1:{redis_port}\n  db: {REGISTRY2_REDIS_DB}\n  dialtimeout: 100ms\n"
                     "  readtimeout: 100ms\n  writetimeout: 100ms\n  pool:\n    maxidle: 16\n    maxactive: 64\n"
                     "    idletimeout: 300s")
        else:
            redis = "# no redis: the blob descriptor cache is in memory"
        # registry:2's S3 client cannot load the CA bundle these machines name in AWS_CA_BUNDLE (plain HTTP here)
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        start_nginx(st, certs, htpasswd, registry_template="registry-s3-config.yml.in",
                    registry_values=dict(CACHE=cache, RELAY_PORT=relay_port, BUCKET=st.bucket, REDIS=redis),
                    registry_env=env)
        # the 502s nginx answered while registry:2 was starting (wait_ready polls through nginx) are no errors
        st.access_log_start = os.path.getsize(os.path.join(st.dir, "access.log"))
    return st


# ---------------------------------------------------------------------------------------------------------------
# Measuring


class Watch:
    """What one case cost outside the stack: the requests that reached the bucket (lines of moto_server's request
    log), the CPU of the relay and of moto_server, and that of the stack's own processes."""

    REQUEST = re.compile(rb'"(GET|HEAD|PUT|POST|DELETE) [^"]*" (\d{3}) ')

    def __init__(self, shared, stack):
        self.shared, self.stack = shared, stack
        self.moto_log = os.path.join(shared.dir, "moto.log")

    def __enter__(self):
        self.t0 = time.monotonic()
        self.log_pos = os.path.getsize(self.moto_log)
        self.cpu0 = {role: proc_tree_cpu(p.pid) for role, p in self.shared.procs if role in ("relay", "moto")}
        self.stack_cpu0 = stack_cpu(self.stack)
        return self

    def __exit__(self, *exc):
        wall = time.monotonic() - self.t0
        with open(self.moto_log, "rb") as f:
            f.seek(self.log_pos)
            lines = f.read()
        codes = [int(m.group(2)) for m in self.REQUEST.finditer(lines)]
        self.bucket_requests = len(codes)
        self.bucket_5xx = sum(1 for c in codes if c >= 500)
        self.cpu_pct = {}
        for role, p in self.shared.procs:
            if role in self.cpu0:
                self.cpu_pct[role] = round(100.0 * (proc_tree_cpu(p.pid) - self.cpu0[role]) / wall, 1)
        self.stack_cpu_s = cpu_delta(self.stack_cpu0, stack_cpu(self.stack))
        self.wall = wall


def proc_tree_cpu(pid):
    """CPU seconds of pid and of the children it has running (moto_server may be a launcher script's child)."""
    return cpu_seconds(pid) + sum(cpu_seconds(c) for c in children_of(pid))


RELAY_BUSY_PCT = 70.0


def warn_relay(w, what):
    """A relay near a full core may be what bounds the figure: said at once and in the table's notes."""
    pct = w.cpu_pct.get("relay") or 0
    if pct >= RELAY_BUSY_PCT:
        msg = f"{what}: the relay used {pct:.0f} % of a core: it may bound this figure"
        log(f"WARNING: {msg}")
        WARNINGS.append(msg)


def check_alive(shared, stacks):
    shared.check_alive()
    for st in stacks:
        st.check_alive()


def measure_requests(stacks, shared, case, path, method, headers, a, first):
    """One h2load case on every stack, --runs runs, the order alternating from run to run (first: 0 to start in
    STACKS order, 1 reversed); the median of each figure per stack."""
    step(f"{case}: h2load over HTTP/2, {a.conns} connections, 1 s warm-up then {a.duration:g} s, "
         f"{a.runs} run(s) per stack in alternating order")
    runs = {st.name: [] for st in stacks}
    for i in range(a.runs):
        for st in alternate(stacks, i + first):
            with Watch(shared, st) as w:
                r = h2load(st, path, method, True, a.duration, a.conns, headers)
            check_alive(shared, stacks)
            if r["errors"]:
                raise BenchError(f"{st.label}: {case}: {r['errors']} requests failed or were not 2xx")
            if w.bucket_5xx:
                raise BenchError(f"{st.label}: {case}: the bucket answered {w.bucket_5xx} requests with a 5xx")
            r.update(bucket_requests=w.bucket_requests, relay_cpu_pct=w.cpu_pct.get("relay"),
                     moto_cpu_pct=w.cpu_pct.get("moto"), stack_cpu_s=w.stack_cpu_s)
            runs[st.name].append(r)
            warn_relay(w, f"{st.label}: {case}")
            log(f"{st.label:<20} {r['rps']:>9,.1f} req/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
                f"bucket requests {w.bucket_requests:>6}  relay CPU {w.cpu_pct.get('relay', 0):5.1f} %  "
                f"moto CPU {w.cpu_pct.get('moto', 0):5.1f} %" + (f"  ({r['mode']})" if r.get("mode") else ""))
    out = {}
    for st in stacks:
        rs = runs[st.name]
        # the count includes h2load's 1 s warm-up (not in its figures): its requests are estimated at the
        # measured rate (a run in fixed-count mode has no warm-up)
        served = sum(r["ok"] if r.get("mode") == "count" else r["ok"] * (a.duration + 1) / a.duration for r in rs)
        out[st.name] = {
            "rps": round(median([r["rps"] for r in rs]), 1),
            "p50_ms": round(median([r["p50_ms"] for r in rs]), 3),
            "p99_ms": round(median([r["p99_ms"] for r in rs]), 3),
            "bucket_requests_per_request": round(sum(r["bucket_requests"] for r in rs) / served, 4) if served else None,
            "relay_cpu_pct_max": max(r["relay_cpu_pct"] or 0 for r in rs),
            "moto_cpu_pct_max": max(r["moto_cpu_pct"] or 0 for r in rs),
            "runs": rs,
        }
    return out


def measure_pulls(stacks, shared, a, work, results):
    """--runs runs, the stacks in alternating order; in each, a stack's timed pull comes right after a warm-up pull
    of the same stack. One warm-up per stack at the start would not do: berth's in-memory cache trusts links and
    tags for storage.cache.ttl (5 s), and the other stacks' pulls in between take longer than that. The warm-up
    pulls are timed too: a pull that follows other stacks' pulls (informational)."""
    step(f"pull of the {a.layers}-layer image (skopeo copy to dir:), {a.runs} run(s) in alternating order: each "
         "stack's timed pull right after a warm-up pull of the same stack (which fills the caches)")
    out = {st.name: {"runs_s": [], "bucket_requests": [], "warmup_runs_s": [], "warmup_bucket_requests": [],
                     "relay_cpu_pct": []} for st in stacks}
    for i in range(a.runs):
        for st in alternate(stacks, i):
            o = out[st.name]
            for warm in (True, False):
                with Watch(shared, st) as w:
                    dt = skopeo_pull(st, BIG_REPO, TAG, os.path.join(work, f"pull-{st.name}"))
                check_alive(shared, stacks)
                if w.bucket_5xx:
                    raise BenchError(f"{st.label}: pull: the bucket answered {w.bucket_5xx} requests with a 5xx")
                warn_relay(w, f"{st.label}: pull")
                if warm:
                    o["warmup_runs_s"].append(round(dt, 3))
                    o["warmup_bucket_requests"].append(w.bucket_requests)
                else:
                    o["runs_s"].append(round(dt, 3))
                    o["bucket_requests"].append(w.bucket_requests)
                    o["relay_cpu_pct"].append(w.cpu_pct.get("relay"))
                log(f"{st.label:<20} {'warm-up pull' if warm else 'timed pull  '} {dt:6.2f} s, bucket requests "
                    f"{w.bucket_requests:>3}, relay CPU {w.cpu_pct.get('relay', 0):4.1f} %")
    for st in stacks:
        o = out[st.name]
        o["median_s"] = round(median(o["runs_s"]), 3)
        o["bucket_requests_per_pull"] = median(o["bucket_requests"])
        o["warmup_median_s"] = round(median(o["warmup_runs_s"]), 3)
        o["warmup_bucket_requests_per_pull"] = median(o["warmup_bucket_requests"])
    results["pull"] = out


# ---------------------------------------------------------------------------------------------------------------
# Targets, the table, the logs


def targets(r, layers):
    """[{target, value, goal, met, note}] as bench/summary.py's, and the informational ratios."""
    t, info = [], []
    hb, gm, pl = r["head_blob"], r["get_manifest"], r["pull"]

    def add(name, value, goal, ok, note=""):
        t.append({"target": name, "value": value, "goal": goal, "met": bool(ok), "note": note})

    for cache in ("inmemory", "redis"):
        ratio = hb[f"berth-{cache}"]["rps"] / hb["berth-none"]["rps"]
        add(f"HEAD blob req/s, berth {cache} vs berth none", f"{ratio:.1f}x", ">= 10x", ratio >= 10)
    for cache in ("inmemory", "redis"):
        ratio = hb[f"berth-{cache}"]["rps"] / hb[f"registry2-{cache}"]["rps"]
        add(f"HEAD blob req/s, berth {cache} vs registry:2 {cache}", f"{ratio:.2f}x", ">= 1x", ratio >= 1)
    for cache in ("inmemory", "redis"):
        ratio = pl["berth-none"]["median_s"] / pl[f"berth-{cache}"]["median_s"]
        add(f"{layers}-layer pull, berth none time / berth {cache} time", f"{ratio:.2f}x", ">= 2x", ratio >= 2,
            f"{pl['berth-none']['median_s']:.2f} s vs {pl[f'berth-{cache}']['median_s']:.2f} s")
    for cache in ("inmemory", "redis"):
        info.append({"what": f"GET manifest req/s, berth {cache} vs berth none",
                     "value": f"{gm[f'berth-{cache}']['rps'] / gm['berth-none']['rps']:.1f}x"})
    for cache in ("inmemory", "redis"):
        info.append({"what": f"GET manifest req/s, berth {cache} vs registry:2 {cache}",
                     "value": f"{gm[f'berth-{cache}']['rps'] / gm[f'registry2-{cache}']['rps']:.2f}x"})
    for cache in ("inmemory", "redis"):
        info.append({"what": f"{layers}-layer warm-up pulls (after the other stacks' pulls), berth none time / "
                             f"berth {cache} time",
                     "value": f"{pl['berth-none']['warmup_median_s'] / pl[f'berth-{cache}']['warmup_median_s']:.2f}x"})
    for cache in ("inmemory", "redis"):
        info.append({"what": f"{layers}-layer pull, registry:2 {cache} time / berth {cache} time",
                     "value": f"{pl[f'registry2-{cache}']['median_s'] / pl[f'berth-{cache}']['median_s']:.2f}x"})
    return t, info


def print_table(r, stacks, a):
    def f1(x):
        return "-" if x is None else f"{x:,.1f}"

    rows = []
    for key, what in (("head_blob", "HEAD blob"), ("get_manifest", "GET manifest")):
        v = r[key]
        rows.append((f"{what} req/s", [f1(v[s.name]["rps"]) for s in stacks]))
        rows.append((f"{what} p50 / p99 ms", [f"{v[s.name]['p50_ms']:.2f} / {v[s.name]['p99_ms']:.2f}"
                                              for s in stacks]))
        rows.append((f"{what}: bucket requests per request", [f"{v[s.name]['bucket_requests_per_request']:.3f}"
                                                              for s in stacks]))
        rows.append((f"{what}: relay / moto CPU % (max)", [f"{v[s.name]['relay_cpu_pct_max']:.0f} / "
                                                          f"{v[s.name]['moto_cpu_pct_max']:.0f}" for s in stacks]))
    p = r["pull"]
    rows.append((f"{a.layers}-layer pull s (median of {a.runs})", [f"{p[s.name]['median_s']:.2f}" for s in stacks]))
    rows.append(("  bucket requests per pull", [f"{p[s.name]['bucket_requests_per_pull']:g}" for s in stacks]))
    rows.append(("  the warm-up pulls before: s", [f"{p[s.name]['warmup_median_s']:.2f}" for s in stacks]))
    rows.append(("  their bucket requests", [f"{p[s.name]['warmup_bucket_requests_per_pull']:g}" for s in stacks]))
    rows.append((f"push {a.layers} layers s (informational)", [f"{r['push'][s.name]['big_s']:.2f}" for s in stacks]))
    hdr = ("what", [s.label for s in stacks])
    w0 = max(len(x[0]) for x in rows + [hdr])
    ws = [max(len(hdr[1][i]), max(len(x[1][i]) for x in rows)) for i in range(len(stacks))]
    step("results (same run)")
    m = r["meta"]
    log(f"relay {m['delay_ms']:g} ms each way: a bucket round trip {m['rtt_relay_ms']} ms through it, "
        f"{m['rtt_direct_ms']} ms direct; load average at start {' '.join(m['loadavg_start'])}")
    print("    " + hdr[0].ljust(w0) + " | " + " | ".join(h.rjust(ws[i]) for i, h in enumerate(hdr[1])))
    print("    " + "-" * w0 + "-+-" + "-+-".join("-" * x for x in ws))
    for what, cells in rows:
        print("    " + what.ljust(w0) + " | " + " | ".join(c.rjust(ws[i]) for i, c in enumerate(cells)))
    step("targets")
    for t in r["targets"]:
        note = f" ({t['note']})" if t["note"] else ""
        print(f"    [{'met ' if t['met'] else 'MISS'}] {t['target']}: {t['value']} (goal {t['goal']}){note}")
    print("    informational:")
    for i in r["informational"]:
        print(f"      {i['what']}: {i['value']}")
    for msg in r.get("warnings", []):
        print(f"    WARNING: {msg}")


def scan_logs(stacks):
    """What the processes' logs say went wrong, as (errors, warnings). Errors: an error, a panic or a 5xx in
    berth's, a 5xx in nginx's access log once registry:2 was up, a fatal or panic level line in registry:2's, an
    emergency in nginx's error log. Warnings: berth's other warnings (a Redis that did not answer in time, say),
    which explain a figure without failing the run; the note about the bench CA's missing name constraints is
    left out."""
    out, warnings = [], []
    for st in stacks:
        files = {"berth": ("berth-registry.log", "berth-proxy.log", "berth-registry.out", "berth-proxy.out"),
                 "registry2": ("docker-registry.log", "access.log", "error.log")}[st.kind]
        for name in files:
            path = os.path.join(st.dir, name)
            try:
                with open(path, errors="replace") as f:
                    if name == "access.log":
                        f.seek(getattr(st, "access_log_start", 0))
                    for line in f:
                        bad = False
                        if st.kind == "berth":
                            bad = " ERROR " in line or "panicked" in line or re.search(r" status=5\d\d ", line)
                        elif name == "access.log":
                            bad = re.search(r'" 5\d\d ', line) is not None
                        elif name == "docker-registry.log":
                            bad = "level=panic" in line or "level=fatal" in line
                        elif name == "error.log":
                            bad = "[emerg]" in line or "[crit]" in line or "[alert]" in line
                        if bad:
                            out.append(f"{st.label}: {name}: {line.strip()[:400]}")
                        elif st.kind == "berth" and " WARN " in line and "has no name constraints" not in line:
                            warnings.append(f"{st.label}: {name}: {line.strip()[:400]}")
            except FileNotFoundError:
                pass
    return out, warnings


def versions():
    out = {}
    for name, cmd in (("docker-registry", ["docker-registry", "--version"]), ("nginx", ["nginx", "-v"]),
                      ("redis-server", ["redis-server", "--version"]), ("skopeo", ["skopeo", "--version"]),
                      ("h2load", ["h2load", "--version"])):
        p = run(cmd, check=False)
        out[name] = ((p.stdout + p.stderr).strip().splitlines() or ["?"])[0]
    try:
        out["moto"] = importlib.metadata.version("moto")
    except importlib.metadata.PackageNotFoundError:
        out["moto"] = "unknown (not in this python3)"
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="2 s per h2load case, 1 run, 4 layers: the whole thing "
                                                         "end to end, quickly (CI)")
    ap.add_argument("--bin-dir", default=os.environ.get("BERTH_BIN_DIR") or os.path.join(ROOT, "target", "release"))
    ap.add_argument("--duration", type=float, default=None, help="seconds per h2load run (default 10, smoke 2)")
    ap.add_argument("--runs", type=int, default=None, help="runs per stack and case (default 3, smoke 1)")
    ap.add_argument("--conns", type=int, default=8, help="h2load connections (default 8)")
    ap.add_argument("--layers", type=int, default=None, help="layers of the big image (default 20, smoke 4)")
    ap.add_argument("--layer-size", type=parse_size, default=256 * KiB, help="size of each (default 256K)")
    ap.add_argument("--delay-ms", type=float, default=10.0, help="the relay's delay each way (default 10)")
    ap.add_argument("--out", default=None, help="write the results as JSON to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (the processes' logs)")
    a = ap.parse_args(argv)
    a.duration = a.duration or (2.0 if a.smoke else 10.0)
    a.runs = a.runs or (1 if a.smoke else 3)
    a.layers = a.layers or (4 if a.smoke else 20)
    # The stacks run in their own directories: a relative binary path must not depend on them.
    a.bin_dir = os.path.abspath(a.bin_dir)
    for b in ("berth-proxy", "berth-registry"):
        if not os.access(os.path.join(a.bin_dir, b), os.X_OK):
            sys.exit(f"FAILED: {a.bin_dir}/{b} missing: cargo build --release --bins")
    missing = [t for t in ("moto_server", "redis-server", "docker-registry", "nginx", "skopeo", "h2load", "curl",
                           "openssl", "htpasswd") if not shutil.which(t)]
    if missing:
        sys.exit(f"FAILED: {', '.join(missing)} missing: scripts/bench.sh --s3-cache installs them")

    work = tempfile.mkdtemp(prefix="berth-s3cache.", dir=os.environ.get("BERTH_BENCH_TMP", "/tmp"))
    os.chmod(work, 0o755)
    results = {"meta": {
        "smoke": a.smoke, "duration_s": a.duration, "runs": a.runs, "conns": a.conns, "layers": a.layers,
        "layer_size": a.layer_size, "delay_ms": a.delay_ms, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "nproc": os.cpu_count(), "loadavg_start": open("/proc/loadavg").read().split()[:3], "versions": versions(),
        "stacks": {name: {"label": label, "registry": kind, "cache": cache} for name, label, kind, cache in STACKS},
    }}
    shared = Stack("shared", "moto_server, relay, redis", work)
    stacks = []
    try:
        rc = run_reported(results, lambda: bench(a, work, shared, stacks, results))
    finally:
        for st in stacks:
            st.stop()
        shared.stop()
        rc = max(rc, report_logs(*scan_logs(stacks), results))
        try:
            with open(os.path.join(shared.dir, "relay.log")) as f:
                m = re.search(r"^relay: (\{.*\})$", f.read(), re.M)
            results["meta"]["relay_totals"] = ast.literal_eval(m.group(1)) if m else None
        except OSError:
            pass
        finish_run(a, results, work, rc)
    return rc


def bench(a, work, shared, stacks, results):
    meta = results["meta"]
    step(f"shared services: moto_server, the relay ({a.delay_ms:g} ms each way), redis-server")
    moto_port = start_moto(shared, [name for name, *_ in STACKS])
    relay_port, relay = start_relay(shared, moto_port, a.delay_ms)
    redis_port = start_redis(shared)
    meta["rtt_direct_ms"] = round_trip_ms(moto_port)
    meta["rtt_relay_ms"] = round_trip_ms(relay_port)
    added = meta["rtt_relay_ms"] - meta["rtt_direct_ms"]
    log(f"moto_server 127.0.0.1:{moto_port} (buckets: {', '.join(n for n, *_ in STACKS)}), relay "
        f"127.0.0.1:{relay_port} (pid {relay.pid}), redis 127.0.0.1:{redis_port}")
    log(f"a bucket round trip: {meta['rtt_direct_ms']} ms direct, {meta['rtt_relay_ms']} ms through the relay "
        f"(+{added:.1f} ms; {2 * a.delay_ms:g} ms expected)")
    if added < 1.8 * a.delay_ms:
        raise BenchError(f"the relay adds {added:.1f} ms to a round trip, not the {2 * a.delay_ms:g} ms expected")

    step("the five stacks (each on its own bucket, through the relay)")
    certs = os.path.join(work, "certs")
    make_certs(certs)
    htpasswd = os.path.join(work, "htpasswd")
    make_htpasswd(htpasswd, "bcrypt5")
    for spec in STACKS:
        st = start_stack(spec, work, a, certs, htpasswd, relay_port, redis_port)
        stacks.append(st)
        log(f"{st.label:<20} {st.base} (HTTP/2 on {st.h2_port}), registry 127.0.0.1:{st.registry_port}")

    step(f"data: a small image (one 4 KiB layer) and a big one ({a.layers} layers of {a.layer_size // KiB} KiB); "
         "pushes with skopeo through each proxy (timed, informational)")
    data = os.path.join(work, "data")
    os.makedirs(data)
    random_file(os.path.join(data, "small.bin"), 4096)
    small = Blob(os.path.join(data, "small.bin"))
    small_layout = os.path.join(data, "small-oci")
    oci_layout(small_layout, small, TAG)
    big = []
    for i in range(a.layers):
        random_file(os.path.join(data, f"layer{i}.bin"), a.layer_size)
        big.append(Blob(os.path.join(data, f"layer{i}.bin")))
    big_layout = os.path.join(data, "big-oci")
    oci_layout(big_layout, big, TAG)
    results["push"] = {}
    for st in stacks:
        with Watch(shared, st) as w:
            t_small = skopeo_push(st, small_layout, TAG, SMALL_REPO)
            t_big = skopeo_push(st, big_layout, TAG, BIG_REPO)
        check_alive(shared, stacks)
        if w.bucket_5xx:
            raise BenchError(f"{st.label}: push: the bucket answered {w.bucket_5xx} requests with a 5xx")
        results["push"][st.name] = {"small_s": round(t_small, 3), "big_s": round(t_big, 3),
                                    "bucket_requests": w.bucket_requests}
        log(f"{st.label:<20} push small {t_small:5.2f} s, big {t_big:6.2f} s, bucket requests {w.bucket_requests}")
    waited, seen = wait_tombstones_gone(redis_port, BERTH_REDIS_DB)
    meta["tombstone_wait_s"] = waited
    if seen:
        log(f"waited {waited} s for the {seen} tombstones berth's pushes left in Redis to expire (until then the "
            "redis stack reads those keys from the bucket and fills none)")
    else:
        log("no tombstone of berth's pushes left in Redis (they live 10 s)")

    results["head_blob"] = measure_requests(stacks, shared, "HEAD blob", f"/v2/{SMALL_REPO}/blobs/{small.digest}",
                                            "HEAD", (), a, 0)
    results["get_manifest"] = measure_requests(stacks, shared, "GET manifest", f"/v2/{SMALL_REPO}/manifests/{TAG}",
                                               "GET", (f"Accept: {OCI_MANIFEST}",), a, 1)
    measure_pulls(stacks, shared, a, work, results)

    r = Redis(redis_port)
    try:
        meta["redis"] = {"keys_db0_berth": r.cmd("DBSIZE"), "used_memory": int(re.search(
            rb"used_memory:(\d+)", r.cmd("INFO", "memory")).group(1))}
        r.cmd("SELECT", REGISTRY2_REDIS_DB)
        meta["redis"]["keys_db1_registry2"] = r.cmd("DBSIZE")
    finally:
        r.close()
    check_alive(shared, stacks)
    results["targets"], results["informational"] = targets(results, a.layers)
    results["warnings"] = WARNINGS
    print_table(results, stacks, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())

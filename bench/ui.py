#!/usr/bin/env python3
"""The web interface (berth-proxy's /ui/, proxy/src/ui/): how long its pages take the server to answer for a
repository with many tags.

    scripts/bench.sh --ui [--smoke] [--out FILE.json] [more options: --help]
    (or python3 bench/ui.py --bin-dir target/release ...)

One berth stack on loopback, berth-registry on the filesystem and berth-proxy in front of it (TLS with the dev CA,
one htpasswd user, bcrypt cost 5; the interface is on by default), started here as child processes in a temporary
directory (common.start_berth) and stopped by PID at the end.

The data: bench/app, one small image (a config with {"architecture": "amd64", "os": "linux"} and one 4 KiB
layer) pushed straight to the registry's plain HTTP port, then its manifest PUT under --tags (10,000) tags
t00000, t00001, ... on keep-alive connections from --threads (4) threads (timed, informational).

Then one login (POST /ui/login with the form and the Origin a browser sends; its 303 gives the berth_session
cookie) and, on one keep-alive HTTPS connection, --warmup (3) untimed requests per page followed by --requests
(50) timed ones, the pages taking turns:

  repo       /ui/r/bench/app                    the repository page: its first 50 tags by name
  pushed     /ui/r/bench/app?sort=-pushed       the same, newest first
  middle     /ui/r/bench/app?page=P             a page in the middle (P = 100 of 200 with 10,000 tags)
  image      /ui/r/bench/app/-/image/tNNNNN     the image page of the tag in the middle (t05000)
  repos      /ui/                               the repository list, for context

Each time is the client's, from sending the request to having read the whole body (time.perf_counter; the
connection is set up before the clock starts). Per page: p50, p95 and max in ms, and the count; with them the
proxy's own duration_ms (its access log) and what the page cost the registry: the requests the proxy made to it
for the page and their duration_ms summed (the registry's log, which the script reads between two requests).
The target (the issue's): the repository page of a repository with 10,000 tags under 100 ms at p50; printed as
[met ]/[MISS] and written to the JSON, not failed (--smoke has no target).

Every answer is checked after its clock stopped: 200, and the page shows what it should (the tag pages "N tags",
50 rows, links to the expected tags; the image page the manifest's digest, the layer's and linux/amd64; the list
bench/app with N tags). The exit status is non-zero on any error: a request that failed or answered something
else, a page without the expected content, a process that exited, an ERROR, a panic or a 5xx in berth's logs.
--smoke: 500 tags, 1 warm-up and 5 timed requests per page; figures are not checked.
"""

import argparse
import hashlib
import http.client
import json
import os
import re
import ssl
import sys
import tempfile
import threading
import time
import urllib.parse

sys.dont_write_bytecode = True
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)
from common import (  # noqa: E402
    OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, PASSWORD, ROOT, USER, BenchError, Stack, log, make_certs, make_htpasswd,
    berth_versions, finish_run, percentile, preflight, report_logs, run_reported, start_berth, step,
)
from mirror import scan_logs  # noqa: E402  (berth's logs: errors and warnings, the same rules)

REPO = "bench/app"
TAGS_PER_PAGE = 50  # proxy/src/ui/mod.rs TAGS_PER_PAGE
TARGET_MS = 100.0
TARGET_TAGS = 10000


def tag_name(i):
    return f"t{i:05d}"


# ---------------------------------------------------------------------------------------------------------------
# The data, straight to the registry


def registry_conn(stack):
    return http.client.HTTPConnection("127.0.0.1", stack.registry_port, timeout=60)


def request(conn, method, path, body=None, headers=None, expect=(200,)):
    """One request on conn; returns (status, headers, body); raises BenchError on another status."""
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status not in expect:
        raise BenchError(f"{method} {path} -> {resp.status}, not {'/'.join(map(str, expect))}: {data[:300]!r}")
    return resp.status, resp.headers, data


def push_blob(conn, base, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _, h, _ = request(conn, "POST", f"/v2/{REPO}/blobs/uploads/", b"", {"Content-Length": "0"}, expect=(202,))
    loc = urllib.parse.urlsplit(urllib.parse.urljoin(base + "/", h["Location"]))
    path = loc.path + "?" + (loc.query + "&" if loc.query else "") + "digest=" + urllib.parse.quote(digest)
    request(conn, "PUT", path, data, {"Content-Type": "application/octet-stream"}, expect=(201,))
    return digest, len(data)


def populate(stack, count, threads):
    """Pushes the image and tags it count times; returns {"manifest", "config", "layer", "seconds", ...}."""
    base = f"http://127.0.0.1:{stack.registry_port}"
    conn = registry_conn(stack)
    layer = os.urandom(4096)
    ld, ls = push_blob(conn, base, layer)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [ld]}}).encode()
    cd, cs = push_blob(conn, base, config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": cs},
                           "layers": [{"mediaType": OCI_LAYER, "digest": ld, "size": ls}]}).encode()
    md = "sha256:" + hashlib.sha256(manifest).hexdigest()
    conn.close()

    errors = []
    lock = threading.Lock()
    nxt = [0]

    def worker():
        c = registry_conn(stack)
        try:
            while True:
                with lock:
                    if errors or nxt[0] >= count:
                        return
                    i = nxt[0]
                    nxt[0] += 1
                _, h, _ = request(c, "PUT", f"/v2/{REPO}/manifests/{tag_name(i)}", manifest,
                                  {"Content-Type": OCI_MANIFEST}, expect=(201,))
                if h.get("Docker-Content-Digest") not in (None, md):
                    raise BenchError(f"PUT {tag_name(i)}: Docker-Content-Digest {h.get('Docker-Content-Digest')}, "
                                     f"not {md}")
        except Exception as e:  # noqa: BLE001 (reported by the main thread)
            with lock:
                errors.append(e)
        finally:
            c.close()

    t = time.monotonic()
    ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    dt = time.monotonic() - t
    if errors:
        e = errors[0]
        raise e if isinstance(e, BenchError) else BenchError(f"tagging: {type(e).__name__}: {e}")
    stack.check_alive()
    return {"manifest": md, "config": cd, "layer": ld, "tags": count, "threads": threads, "seconds": round(dt, 2),
            "tags_per_s": round(count / dt, 1)}


# ---------------------------------------------------------------------------------------------------------------
# The interface


class Client:
    """One keep-alive HTTPS connection to the proxy, trusting the stack's CA, with the session cookie once
    logged in. Counts the connections it had to open (a server that closes keep-alive connections would make the
    times include a TLS handshake; they do not: the connection is opened before the clock starts)."""

    def __init__(self, stack):
        self.stack = stack
        self.ctx = ssl.create_default_context(cafile=stack.cacert)
        self.conn = http.client.HTTPSConnection("127.0.0.1", stack.port, context=self.ctx, timeout=300)
        self.cookie = None
        self.connects = 0

    def ensure_open(self):
        if self.conn.sock is None:
            self.conn.connect()
            self.connects += 1

    def login(self):
        self.ensure_open()
        body = urllib.parse.urlencode({"user": USER, "password": PASSWORD, "next": "/ui/"}).encode()
        t = time.perf_counter()
        self.conn.request("POST", "/ui/login", body=body, headers={
            "Content-Type": "application/x-www-form-urlencoded", "Origin": f"https://{self.stack.host}"})
        resp = self.conn.getresponse()
        data = resp.read()
        dt = (time.perf_counter() - t) * 1000.0
        if resp.status != 303:
            raise BenchError(f"POST /ui/login -> {resp.status}, not 303: {data[:500]!r}")
        m = re.match(r"__Host-berth_session=([^;]+)", resp.headers.get("Set-Cookie") or "")
        if not m:
            raise BenchError(f"POST /ui/login: no berth_session cookie (Set-Cookie: "
                             f"{resp.headers.get('Set-Cookie')!r})")
        if resp.headers.get("Location") != "/ui/":
            raise BenchError(f"POST /ui/login: Location {resp.headers.get('Location')!r}, not /ui/")
        self.cookie = m.group(1)
        return dt

    def get(self, path):
        """GET path; returns (status, body text, ms from sending the request to the end of the body)."""
        self.ensure_open()
        headers = {"Cookie": f"__Host-berth_session={self.cookie}"} if self.cookie else {}
        t = time.perf_counter()
        self.conn.request("GET", path, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        dt = (time.perf_counter() - t) * 1000.0
        if resp.will_close:
            self.conn.close()
        return resp.status, data.decode("utf-8", errors="replace"), dt

    def close(self):
        self.conn.close()


IMAGE_LINK = re.compile(r'<td class="tag"><a href="/ui/r/' + re.escape(REPO) + r'/-/image/([^"]+)">')


def tag_rows(page):
    """The tags of the first table's body rows, in order; raises when there is no table body."""
    m = re.search(r"<tbody>(.*?)</tbody>", page, re.S)
    if not m:
        raise BenchError("no <tbody> in the page")
    rows = re.findall(r"<tr[ >]", m.group(1))
    tags = IMAGE_LINK.findall(m.group(1))
    if len(rows) != len(tags):
        raise BenchError(f"{len(rows)} rows but {len(tags)} tag links in the table")
    return tags


def check_tags(count, expected):
    """A check of a tag page: '<count> tags', 50 rows (fewer on the last page), and the tags `expected` (a list)
    in that order, or, with expected None, distinct valid tag names."""
    want_rows = min(TAGS_PER_PAGE, count)

    def check(page):
        if f"<p class=\"muted\">{count} tags</p>" not in page:
            raise BenchError(f"the page does not say '{count} tags'")
        tags = tag_rows(page)
        if len(tags) != want_rows:
            raise BenchError(f"{len(tags)} rows, not {want_rows}")
        if expected is not None and tags != expected:
            raise BenchError(f"tags {tags[0]} .. {tags[-1]}, not {expected[0]} .. {expected[-1]}")
        names = {tag_name(i) for i in range(count)}
        if len(set(tags)) != len(tags) or not set(tags) <= names:
            raise BenchError(f"unexpected tags in the rows: {tags[:5]} ...")
    return check


def check_image(tag, data):
    def check(page):
        for what, text in (("the tag", f"<h1>{REPO}:{tag}</h1>"), ("the manifest's digest", data["manifest"]),
                           ("the layer's digest", data["layer"]), ("the platform", "linux/amd64")):
            if text not in page:
                raise BenchError(f"the image page does not show {what} ({text})")
    return check


def check_repos(count):
    def check(page):
        row = (f'<tr><td><a href="/ui/r/{REPO}">{REPO}</a></td><td class="num">{count}</td>')
        if row not in page:
            raise BenchError(f"no row '{REPO} | {count}' in the repository list")
    return check


def pages_of(a, data):
    n = a.tags
    pages = max(1, -(-n // TAGS_PER_PAGE))
    middle = max(1, pages // 2)
    first = min(n, TAGS_PER_PAGE)
    mid_tags = [tag_name(i) for i in range((middle - 1) * TAGS_PER_PAGE, min(n, middle * TAGS_PER_PAGE))]
    image_tag = tag_name(n // 2)
    repo = f"/ui/r/{REPO}"
    # (key, label, path, check)
    return [
        ("repo", f"repository page ({n} tags), first page by name", repo,
         check_tags(n, [tag_name(i) for i in range(first)])),
        ("pushed", "repository page, sort=-pushed", f"{repo}?sort=-pushed", check_tags(n, None)),
        ("middle", f"repository page, page {middle} of {pages}", f"{repo}?page={middle}", check_tags(n, mid_tags)),
        ("image", f"image page ({image_tag})", f"{repo}/-/image/{image_tag}", check_image(image_tag, data)),
        ("repos", "repository list /ui/", "/ui/", check_repos(n)),
    ]


def proxy_log(stack):
    return os.path.join(stack.dir, "berth-proxy.log")


def registry_log(stack):
    return os.path.join(stack.dir, "berth-registry.log")


def proxy_durations(stack, since, sequence):
    """berth-proxy's own duration_ms of the timed requests: its access log lines of GETs under /ui/ from offset
    `since` of its log, one per request of `sequence` ([(key, path)], in the order they were sent; the log has
    the path without the query). None when the lines do not match the requests one to one."""
    lines = []
    with open(proxy_log(stack), errors="replace") as f:
        f.seek(since)
        for line in f:
            m = re.search(r" method=GET path=(/ui/\S*) .* duration_ms=(\d+)", line)
            if m:
                lines.append((m.group(1), int(m.group(2))))
    if len(lines) != len(sequence) or any(p != path.split("?")[0] for (p, _), (_, path) in zip(lines, sequence)):
        log(f"note: berth-proxy logged {len(lines)} GETs of /ui/ pages for {len(sequence)} requests; its own "
            "durations are left out")
        return None
    out = {}
    for (key, _), (_, ms) in zip(sequence, lines):
        out.setdefault(key, []).append(ms)
    return out


def registry_calls(stack, offsets, sequence):
    """What each timed request cost the registry: its log from offsets[i] to offsets[i + 1] holds the requests
    the proxy made for sequence[i] (one request at a time; the registry logs a request before the proxy has its
    answer). Returns {key: [(upstream requests, their duration_ms summed)]}."""
    with open(registry_log(stack), "rb") as f:
        text = f.read()
    out = {}
    for i, (key, _) in enumerate(sequence):
        seg = text[offsets[i]:offsets[i + 1]].decode("utf-8", errors="replace")
        ds = [float(m) for m in re.findall(r" method=\S+ path=\S+ status=\d+ .*?duration_ms=([\d.]+)", seg)]
        out.setdefault(key, []).append((len(ds), sum(ds)))
    return out


def stats(ms):
    s = sorted(ms)
    return {"requests": len(s), "p50_ms": round(percentile(s, 50), 2), "p95_ms": round(percentile(s, 95), 2),
            "max_ms": round(s[-1], 2), "min_ms": round(s[0], 2)}


def measure(a, stack, data, results):
    pages = pages_of(a, data)
    client = Client(stack)
    try:
        step("login: POST /ui/login (form, Origin), 303 with the berth_session cookie")
        results["login_ms"] = round(client.login(), 1)
        log(f"logged in as {USER} in {results['login_ms']:.1f} ms")

        def one(key, path, check):
            status, body, dt = client.get(path)
            if status != 200:
                raise BenchError(f"GET {path} -> {status}, not 200: {body[:500]!r}")
            try:
                check(body)
            except BenchError as e:
                raise BenchError(f"GET {path}: {e}") from None
            return dt, len(body.encode())

        step(f"{a.warmup} warm-up request(s) per page, then {a.requests} timed ones, the pages taking turns, on "
             "one keep-alive HTTPS connection")
        width = max(len(label) for _, label, _, _ in pages)
        for key, label, path, check in pages:
            for _ in range(a.warmup):
                dt, size = one(key, path, check)
            log(f"{label:<{width}} {path:<32} last warm-up {dt:8.1f} ms, {size} bytes")
        times = {key: [] for key, *_ in pages}
        sizes = {}
        sequence = []  # (key, path) of every timed request, in order
        reg_offsets = []  # the registry log's size before each of them
        connects = client.connects
        since = os.path.getsize(proxy_log(stack))
        t0 = time.monotonic()
        for i in range(a.requests):
            for key, label, path, check in pages:
                reg_offsets.append(os.path.getsize(registry_log(stack)))
                dt, sizes[key] = one(key, path, check)
                times[key].append(dt)
                sequence.append((key, path))
            stack.check_alive()
            if not a.smoke and (i + 1) % 10 == 0:
                log(f"{i + 1}/{a.requests} rounds, {time.monotonic() - t0:.0f} s")
        results["measure_s"] = round(time.monotonic() - t0, 1)
        results["reconnects"] = client.connects - connects
        time.sleep(0.2)  # berth-proxy logs a request once its body is sent
        reg_offsets.append(os.path.getsize(registry_log(stack)))
        logged = proxy_durations(stack, since, sequence)
        upstream = registry_calls(stack, reg_offsets, sequence)
    finally:
        client.close()
    out = {}
    for key, label, path, _ in pages:
        o = {"label": label, "path": path, "bytes": sizes[key], **stats(times[key]),
             "runs_ms": [round(x, 2) for x in times[key]]}
        if logged:
            lg = sorted(logged[key])
            o["proxy_logged_ms"] = {"p50": percentile(lg, 50), "p95": percentile(lg, 95), "max": lg[-1]}
        calls = upstream[key]
        reg = sorted(ms for _, ms in calls)
        o["registry"] = {"requests_per_page": sorted(n for n, _ in calls)[len(calls) // 2],
                         "p50_ms": round(percentile(reg, 50), 2), "p95_ms": round(percentile(reg, 95), 2),
                         "max_ms": round(reg[-1], 2)}
        out[key] = o
    results["pages"] = out


# ---------------------------------------------------------------------------------------------------------------
# Targets, the table


def targets(r, a):
    """The target applies to a repository of TARGET_TAGS tags (not to --smoke's 500)."""
    if a.tags != TARGET_TAGS:
        return []
    p = r["pages"]["repo"]
    return [{"target": f"repository page /ui/r/{REPO} of a repository with {TARGET_TAGS} tags, p50",
             "value": f"{p['p50_ms']:.1f} ms", "goal": f"< {TARGET_MS:.0f} ms", "met": bool(p["p50_ms"] < TARGET_MS),
             "note": f"p95 {p['p95_ms']:.1f} ms, max {p['max_ms']:.1f} ms, {p['requests']} requests"}]


def print_table(r, a):
    step(f"results ({a.tags} tags; {a.requests} timed requests per page after {a.warmup} warm-up; client time "
         "from sending the request to the end of the body)")
    hdr = ("page", "path", "p50 ms", "p95 ms", "max ms", "n", "proxy log p50", "registry p50 ms (calls)", "KiB")
    rows = []
    for key, o in r["pages"].items():
        lg, reg = o.get("proxy_logged_ms"), o["registry"]
        rows.append((o["label"], o["path"], f"{o['p50_ms']:.1f}", f"{o['p95_ms']:.1f}", f"{o['max_ms']:.1f}",
                     str(o["requests"]), str(lg["p50"]) if lg else "-",
                     f"{reg['p50_ms']:.1f} ({reg['requests_per_page']})", f"{o['bytes'] / 1024:.1f}"))
    ws = [max(len(x[i]) for x in rows + [hdr]) for i in range(len(hdr))]
    left = (0, 1)
    print("    " + " | ".join(h.ljust(ws[i]) if i in left else h.rjust(ws[i]) for i, h in enumerate(hdr)))
    print("    " + "-+-".join("-" * w for w in ws))
    for row in rows:
        print("    " + " | ".join(c.ljust(ws[i]) if i in left else c.rjust(ws[i]) for i, c in enumerate(row)))
    log("")
    pop = r["populate"]
    log(f"populating: {pop['tags']} tags in {pop['seconds']:.1f} s ({pop['tags_per_s']:.0f}/s, {pop['threads']} "
        f"threads, plain HTTP to the registry); login {r['login_ms']:.1f} ms; measuring {r['measure_s']:.1f} s; "
        f"{r['reconnects']} reconnection(s) while measuring")
    log("proxy log p50: berth-proxy's own duration_ms of the same requests (whole milliseconds); registry: the "
        "duration_ms the registry logged for the requests the proxy made for one page, summed (how many)")
    step("targets" + (" (smoke: figures are not checked)" if a.smoke else ""))
    if not r["targets"]:
        log(f"none at {a.tags} tags (the target is the repository page of a repository with {TARGET_TAGS} tags)")
    for t in r["targets"]:
        print(f"    [{'met ' if t['met'] else 'MISS'}] {t['target']}: {t['value']} (goal {t['goal']}; {t['note']})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="500 tags, 1 warm-up and 5 timed requests per page: the "
                                                         "whole thing end to end, quickly (CI)")
    ap.add_argument("--bin-dir", default=os.environ.get("BERTH_BIN_DIR") or os.path.join(ROOT, "target", "release"))
    ap.add_argument("--tags", type=int, default=None, help=f"tags of {REPO} (default {TARGET_TAGS}, smoke 500)")
    ap.add_argument("--requests", type=int, default=None, help="timed requests per page (default 50, smoke 5)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed requests per page first (default 3, smoke 1)")
    ap.add_argument("--threads", type=int, default=4, help="threads tagging the image (default 4)")
    ap.add_argument("--out", default=None, help="write the results as JSON to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (the processes' logs)")
    a = ap.parse_args(argv)
    a.tags = a.tags or (500 if a.smoke else TARGET_TAGS)
    a.requests = a.requests or (5 if a.smoke else 50)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.smoke else 3)
    a.warmup = max(1, a.warmup)  # the checks of the table's page labels run on the warm-up answers too
    if a.tags < 1 or a.tags > 100000 or a.requests < 1 or a.threads < 1:
        ap.error("--tags 1..100000, --requests and --threads at least 1")
    a.bin_dir = os.path.abspath(a.bin_dir)
    preflight(a.bin_dir, ("curl", "openssl", "htpasswd"), "--ui")

    work = tempfile.mkdtemp(prefix="berth-ui.", dir=os.environ.get("BERTH_BENCH_TMP", "/tmp"))
    os.chmod(work, 0o755)
    results = {"meta": {
        "smoke": a.smoke, "tags": a.tags, "requests": a.requests, "warmup": a.warmup, "bin_dir": a.bin_dir,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "nproc": os.cpu_count(),
        "loadavg_start": open("/proc/loadavg").read().split()[:3], "versions": berth_versions(a.bin_dir),
    }}
    stacks = []
    t0 = time.monotonic()
    try:
        rc = run_reported(results, lambda: bench(a, work, stacks, results))
    finally:
        for st in stacks:
            st.stop()
        rc = max(rc, report_logs(*scan_logs(stacks), results))
        results["meta"]["run_s"] = round(time.monotonic() - t0, 1)
        finish_run(a, results, work, rc)
    print(f"\n{'FAILED' if rc else 'done'} in {time.monotonic() - t0:.0f} s")
    return rc


def bench(a, work, stacks, results):
    step("berth: berth-registry (filesystem) and berth-proxy (TLS, htpasswd; the web interface on by default)")
    htpasswd = os.path.join(work, "htpasswd")
    make_htpasswd(htpasswd, "bcrypt5")
    certs = os.path.join(work, "certs")
    make_certs(certs)
    stack = Stack("berth", "berth", work)
    stacks.append(stack)
    start_berth(stack, a.bin_dir, certs, htpasswd)
    log(f"proxy {stack.base}, registry http://127.0.0.1:{stack.registry_port}")

    step(f"data: one small image in {REPO} (straight to the registry), its manifest tagged {a.tags} times "
         f"({tag_name(0)} .. {tag_name(a.tags - 1)}, {a.threads} threads)")
    data = populate(stack, a.tags, a.threads)
    results["populate"] = data
    log(f"{a.tags} tags in {data['seconds']:.1f} s ({data['tags_per_s']:.0f}/s); manifest {data['manifest']}")

    measure(a, stack, data, results)
    stack.check_alive()
    results["targets"] = targets(results, a)
    print_table(results, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())

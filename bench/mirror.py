#!/usr/bin/env python3
"""Pull-through mirrors (registry/src/mirror/): what a first pull through the cache costs against the same pull
straight from the remote, and whether a cached pull is as fast as one of a local repository.

    scripts/bench.sh --mirror [--smoke] [--out FILE.json] [more options: --help]
    (or python3 bench/mirror.py --bin-dir target/release ...)

Two berth stacks on loopback, each berth-proxy (TLS with its own dev CA, the same htpasswd user, bcrypt cost 5)
in front of berth-registry on the filesystem, started here as child processes in a temporary directory and
stopped by PID at the end:

  remote   the registry mirrored: holds bench/big, one image with one layer of --size (1 GiB) random bytes
  mirror   its registry has [[mirrors]] prefix = "hub" with url = the remote proxy's https URL and the user's
           credentials (--config FILE), BERTH_PROXY_CAFILE = the remote's CA; it also holds local/big, an image
           of the same size in an ordinary repository (its layer differs in its first 32 bytes: with the same
           digest, the mirror would link that blob instead of fetching it)

Both images are pushed with skopeo --preserve-digests (timed, informational). Then --runs (3) runs, each of four
timed pulls, skopeo copy docker://... to dir: with --src-cert-dir and --src-creds, as a client would:

  (a) first    hub/bench/big through the mirror: a cache miss; before it the mirror registry is stopped, what
               it stored of hub/bench/big (repository, manifest, config and layer blobs) is deleted and it is
               started again, so every (a) is a cold fetch from the remote
  (b) remote   bench/big straight from the remote stack
  (c) cached   hub/bench/big through the mirror again, right after (a) (once the mirror has logged the layer
               as stored): a hit
  (d) local    local/big from the mirror stack

(--client curl: a curl of the layer's blob alone instead, the registries' path without skopeo's own costs), in
the order a c d b in even runs and b d a c in odd ones (a and b alternate first and last, c and d swap). The
time is the client's wall time; MB/s are the layer's bytes over it. The layer's GET as the serving berth-proxy
logged it (duration_ms) is recorded too: the transfer without the client's start, the manifest and the config.
Before every timed pull the script calls sync(2), so no pull pays for the writeback of the one before. Every
pull's layer (and manifest) is checked against its digest and size in the dir: skopeo wrote; the mirror's log
must show one fetch of the layer per (a) and none in (c). The peak RSS (VmHWM after a reset, and a 20 ms
sampler) of every process is recorded during each pull; the mirror registry's during (a) is in the table, with
its RSS just before (the memory must stay flat: the blob goes through a spool file, not memory). skopeo alone
(the OCI layout to a dir:, no registry) is timed once per run: the client's own ceiling.

The targets (the issue's): (a) at least 90 % of (b)'s throughput (time of b / time of a >= 0.90), and (c) equal
to (d) within noise (time of d / time of c within 0.90 .. 1.10); printed as [met ]/[MISS] and written to the JSON
with every figure; a missed target is reported, not failed. The exit status is non-zero on any error: a failed
push or pull, a digest or size mismatch, an (a) that was not a miss or a (c) that fetched, a process that exited,
an ERROR, a panic or a 5xx in berth's logs.
"""

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time

sys.dont_write_bytecode = True
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)
from common import (  # noqa: E402
    MiB, GiB, PASSWORD, ROOT, USER, BenchError, Blob, RssSampler, Stack, curl_base, human_size, log, make_certs,
    make_htpasswd, median, oci_layout, parse_size, random_file, report_logs, rss_kib, run, run_reported,
    skopeo_alone, skopeo_push, step, wait_ready, berth_versions, preflight, start_proxy, finish_run,
)

TAG = "latest"
REMOTE_REPO = "bench/big"
PREFIX = "hub"
MIRROR_REPO = f"{PREFIX}/{REMOTE_REPO}"
LOCAL_REPO = "local/big"
FETCHED = "mirror: blob fetched"
# (key, label) of the four timed pulls
PULLS = [
    ("first", "(a) first pull through the mirror (miss)"),
    ("remote", "(b) the same pull straight from the remote"),
    ("cached", "(c) cached pull through the mirror (hit)"),
    ("local", "(d) pull of a local repository, mirror stack"),
]


# ---------------------------------------------------------------------------------------------------------------
# The stacks


def start_registry(stack, bin_dir, config=None, extra_env=None):
    """berth-registry on the filesystem under stack.dir/data, with --config when given; its stdout and stderr
    are appended to (a restart keeps the earlier logs for the scan at the end)."""
    env = dict(os.environ)
    env.update(REGISTRY_HTTP_ADDR=f"127.0.0.1:{stack.registry_port}",
               REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=stack.data, BERTH_GC_INTERVAL="0")
    env.update(extra_env or {})
    cmd = [os.path.join(bin_dir, "berth-registry")]
    if config:
        cmd += ["--config", config]
    out = open(os.path.join(stack.dir, "berth-registry.out"), "a")
    err = open(os.path.join(stack.dir, "berth-registry.log"), "a")
    stack.start("berth-registry", cmd, env=env, stdout=out, stderr=err)
    out.close()  # the child has its own copies
    err.close()


def start_stack(stack, bin_dir, certs, htpasswd, config=None, extra_env=None):
    """berth-registry (start_registry) and berth-proxy in front of it (as common.start_berth); returns once the
    proxy answers GET /v2/ with 200."""
    stack.data = os.path.join(stack.dir, "data")
    os.makedirs(stack.data, exist_ok=True)
    stack.config, stack.extra_env = config, extra_env
    start_registry(stack, bin_dir, config, extra_env)
    start_proxy(stack, bin_dir, certs, htpasswd)


def registry_log(stack):
    with open(os.path.join(stack.dir, "berth-registry.log"), errors="replace") as f:
        return f.read()


def fetched_lines(stack, digest, since=0):
    """The mirror registry's "blob fetched" lines for digest, in its log from offset `since`."""
    return [ln for ln in registry_log(stack)[since:].splitlines() if FETCHED in ln and digest in ln]


def log_time(line):
    """The UTC time (seconds since the epoch) a berth log line starts with."""
    stamp = line.split(" ", 1)[0].rstrip("Z")
    stamp = stamp[:26] if "." in stamp else stamp  # Python's %f takes at most 6 digits
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f" if "." in stamp else "%Y-%m-%dT%H:%M:%S") \
        .replace(tzinfo=datetime.timezone.utc).timestamp()


def wait_stored(stack, digest, since, pull_end, timeout=600):
    """Waits for the mirror registry to log the layer as fetched (it logs that once the blob is in its store,
    after the client had the last byte); returns (when that was, in seconds after pull_end, the client's end,
    as a time since the epoch; negative: before), the fetch's took_ms from that line)."""
    t0 = time.monotonic()
    while True:
        stack.check_alive()
        lines = fetched_lines(stack, digest, since)
        if lines:
            m = re.search(r"took_ms=(\d+)", lines[-1])
            return log_time(lines[-1]) - pull_end, int(m.group(1)) if m else None
        if time.monotonic() - t0 > timeout:
            raise BenchError(f"{stack.label}: no '{FETCHED}' for {digest} within {timeout} s of the first pull "
                             f"(see {stack.dir}/berth-registry.log)")
        time.sleep(0.05)


def layer_get_ms(stack, repo, digest, since):
    """The duration_ms berth-proxy logged for the GET of blob digest of repo (the layer's transfer as the front
    door saw it, without the client's start, the manifest and the config), in its log from offset `since`."""
    with open(os.path.join(stack.dir, "berth-proxy.log"), errors="replace") as f:
        text = f.read()[since:]
    found = [ln for ln in text.splitlines() if " method=GET " in ln and f" path=/v2/{repo}/blobs/{digest} " in ln]
    if not found:
        raise BenchError(f"{stack.label}: no GET of {repo}'s layer in berth-proxy.log")
    m = re.search(r" status=(\d+) .* duration_ms=(\d+)", found[-1])
    if not m or m.group(1) != "200":
        raise BenchError(f"{stack.label}: the layer's GET: {found[-1][:300]}")
    return int(m.group(2))


def proxy_log_size(stack):
    with open(os.path.join(stack.dir, "berth-proxy.log"), errors="replace") as f:
        return len(f.read())


def forget(stack, bin_dir, digests):
    """Makes the mirror forget hub/bench/big: stops its registry, deletes the repository and the blobs with
    these digests (manifest, config, layer) from its data directory, starts it again and waits until the proxy
    answers through it. local/big (other digests) stays."""
    stack.stop_role("berth-registry")
    root = os.path.join(stack.data, "docker", "registry", "v2")
    shutil.rmtree(os.path.join(root, "repositories", PREFIX), ignore_errors=True)
    hexes = {d.split(":", 1)[1] for d in digests}
    for dirpath, dirnames, _ in os.walk(stack.data):
        for d in list(dirnames):
            if d in hexes:
                shutil.rmtree(os.path.join(dirpath, d))
                dirnames.remove(d)
    left = [os.path.join(p, f) for p, ds, fs in os.walk(stack.data) for f in ds + fs
            if f in hexes or f == PREFIX and p.endswith("repositories")]
    if left:
        raise BenchError(f"{stack.label}: the mirrored image is still in the data directory: {left[:3]}")
    start_registry(stack, bin_dir, stack.config, stack.extra_env)
    wait_ready(stack)


# ---------------------------------------------------------------------------------------------------------------
# Pulls


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                break
            h.update(b)
    return "sha256:" + h.hexdigest()


def pull(stack, repo, out, image, client="skopeo"):
    """skopeo copy docker://stack/repo:TAG dir:out, timed (client "curl": curl of the layer's blob alone into
    out/); then the layer and the manifest skopeo wrote are checked against their digests and sizes (image:
    {"layer": Blob, "manifest": digest}). Returns (seconds, when the client ended as a time since the epoch)."""
    shutil.rmtree(out, ignore_errors=True)
    layer = image["layer"]
    path = os.path.join(out, layer.digest.split(":", 1)[1])
    if client == "curl":
        os.makedirs(out)
        cmd = curl_base(stack) + ["-o", path, "-w", "%{http_code}", f"{stack.base}/v2/{repo}/blobs/{layer.digest}"]
    else:
        cmd = ["skopeo", "--insecure-policy", "copy", "-q", "--src-creds", f"{USER}:{PASSWORD}",
               "--src-cert-dir", stack.cert_dir, f"docker://{stack.host}/{repo}:{TAG}", f"dir:{out}"]
    os.sync()
    t = time.monotonic()
    p = run(cmd)
    dt = time.monotonic() - t
    end = time.time()
    if client == "curl" and p.stdout.strip() != "200":
        raise BenchError(f"{stack.label}: GET of {repo}'s layer answered {p.stdout.strip()}")
    if not os.path.exists(path):
        raise BenchError(f"{stack.label}: pull of {repo}: no layer {layer.digest} in {out}: "
                         f"{sorted(os.listdir(out))}")
    size = os.path.getsize(path)
    got = sha256_file(path)
    if size != layer.size or got != layer.digest:
        raise BenchError(f"{stack.label}: pull of {repo}: the layer has {size} bytes and digest {got}, not "
                         f"{layer.size} and {layer.digest}")
    got = image["manifest"] if client == "curl" else sha256_file(os.path.join(out, "manifest.json"))
    if got != image["manifest"]:
        raise BenchError(f"{stack.label}: pull of {repo}: the manifest has digest {got}, not {image['manifest']}")
    shutil.rmtree(out, ignore_errors=True)
    return dt, end


def order(i):
    return ["first", "cached", "local", "remote"] if i % 2 == 0 else ["remote", "local", "first", "cached"]


def measure(a, work, remote, mirror, images, results):
    size = a.size
    stacks = [remote, mirror]
    where = {"first": (mirror, MIRROR_REPO, "remote"), "remote": (remote, REMOTE_REPO, "remote"),
             "cached": (mirror, MIRROR_REPO, "remote"), "local": (mirror, LOCAL_REPO, "local")}
    out = {k: {"runs_s": [], "layer_get_ms": [], "rss_MiB": []} for k, _ in PULLS}
    extra = {"alone_s": [], "mirror_registry_rss_before_first_MiB": [], "stored_after_s": [], "fetch_took_ms": [],
             "restart_s": []}
    layer = images["remote"]["layer"]
    mirrored = [images["remote"]["manifest"], images["remote"]["config"], layer.digest]
    how = "skopeo copy to dir:" if a.client == "skopeo" else "curl of the layer's blob"
    step(f"{a.runs} run(s) of four pulls of one {human_size(size)} layer ({how}): a c d b, then b d a c; the "
         "mirror forgets hub/bench/big (registry restarted) before every (a)")
    for i in range(a.runs):
        layout = images["remote"]["layout"]
        alone = skopeo_alone(layout, TAG, os.path.join(work, "alone"))
        extra["alone_s"].append(round(alone, 3))
        log(f"run {i + 1} skopeo alone (OCI layout to dir:, no registry): {alone:6.2f} s "
            f"{size / alone / 1e6:7.1f} MB/s")
        for key in order(i):
            st, repo, img = where[key]
            since = None
            if key == "first":
                t = time.monotonic()
                forget(mirror, a.bin_dir, mirrored)
                extra["restart_s"].append(round(time.monotonic() - t, 2))
                since = len(registry_log(mirror))
                reg = [p.pid for r, p in mirror.procs if r == "berth-registry"][0]
                extra["mirror_registry_rss_before_first_MiB"].append(round(rss_kib(reg) / 1024.0, 1))
            elif key == "cached":
                since = len(registry_log(mirror))
            proxy_since = proxy_log_size(st)
            with RssSampler(stacks) as r:
                dt, end = pull(st, repo, os.path.join(work, f"pull-{key}"), images[img], a.client)
            for s in stacks:
                s.check_alive()
            rss = r.result()
            o = out[key]
            o["runs_s"].append(round(dt, 3))
            o["layer_get_ms"].append(layer_get_ms(st, repo, images[img]["layer"].digest, proxy_since))
            o["rss_MiB"].append(rss)
            note = ""
            if key == "first":
                waited, took = wait_stored(mirror, layer.digest, since, end)
                extra["stored_after_s"].append(round(waited, 2))
                extra["fetch_took_ms"].append(took)
                n = len(fetched_lines(mirror, layer.digest, since))
                if n != 1:
                    raise BenchError(f"mirror: {n} fetches of the layer logged during the first pull, not 1")
                note = (f"; the mirror registry: RSS {extra['mirror_registry_rss_before_first_MiB'][-1]:.0f} MiB "
                        f"before, peak {rss['mirror']['berth-registry']:.0f} MiB; layer stored "
                        f"{waited:+.2f} s after the pull ended (its fetch took {took} ms)")
            elif key == "cached":
                n = len(fetched_lines(mirror, layer.digest, since))
                if n:
                    raise BenchError(f"mirror: the cached pull fetched the layer again ({n} '{FETCHED}' lines)")
                note = f"; the mirror registry's peak RSS {rss['mirror']['berth-registry']:.0f} MiB"
            log(f"run {i + 1} {dict(PULLS)[key]:<46} {dt:7.2f} s {size / dt / 1e6:7.1f} MB/s (the layer's GET "
                f"{o['layer_get_ms'][-1] / 1000:.2f} s){note}")
    for key, _ in PULLS:
        o = out[key]
        o["median_s"] = round(median(o["runs_s"]), 3)
        o["MBps"] = round(size / o["median_s"] / 1e6, 1)
        o["layer_get_median_ms"] = median(o["layer_get_ms"])
        # the registry serving the client: the mirror's for a, c, d, the remote's for b
        o["registry_peak_rss_MiB"] = [x[serving_stack(key)]["berth-registry"] for x in o["rss_MiB"]]
        o["registry_peak_rss_MiB_max"] = max(o["registry_peak_rss_MiB"])
    results["pulls"] = out
    results["alone"] = {"runs_s": extra["alone_s"], "median_s": round(median(extra["alone_s"]), 3),
                        "MBps": round(size / median(extra["alone_s"]) / 1e6, 1)}
    results["mirror_registry"] = {
        "rss_before_first_MiB": extra["mirror_registry_rss_before_first_MiB"],
        "peak_rss_first_MiB": [x["mirror"]["berth-registry"] for x in out["first"]["rss_MiB"]],
        "peak_rss_cached_MiB": [x["mirror"]["berth-registry"] for x in out["cached"]["rss_MiB"]],
        "stored_after_pull_s": extra["stored_after_s"],
        "fetch_took_ms": extra["fetch_took_ms"],
        "restart_s": extra["restart_s"],
    }


def serving_stack(key):
    """The stack whose registry serves pull `key`."""
    return "remote" if key == "remote" else "mirror"


# ---------------------------------------------------------------------------------------------------------------
# Targets, the table, the logs


def targets(r):
    p = r["pulls"]
    t = []

    def add(name, value, goal, ok, note):
        t.append({"target": name, "value": value, "goal": goal, "met": bool(ok), "note": note})

    ratio = p["remote"]["median_s"] / p["first"]["median_s"]
    add("first pull through the mirror vs straight from the remote (time of b / time of a)", f"{ratio:.2f}",
        ">= 0.90", ratio >= 0.90, f"{p['first']['MBps']:.1f} vs {p['remote']['MBps']:.1f} MB/s")
    ratio = p["local"]["median_s"] / p["cached"]["median_s"]
    add("cached pull through the mirror vs a local repository's (time of d / time of c)", f"{ratio:.2f}",
        "0.90 .. 1.10", 0.90 <= ratio <= 1.10, f"{p['cached']['MBps']:.1f} vs {p['local']['MBps']:.1f} MB/s")
    return t


def print_table(r, a):
    p, m = r["pulls"], r["mirror_registry"]
    step(f"results (same run; one {human_size(a.size)} layer, {a.client}, median of {a.runs} run(s))")
    rows = [(label, f"{p[k]['median_s']:.2f}", f"{p[k]['MBps']:.1f}", " ".join(f"{x:.2f}" for x in p[k]["runs_s"]),
             f"{p[k]['layer_get_median_ms'] / 1000:.2f}", f"{p[k]['registry_peak_rss_MiB_max']:.0f}"
             + (" (remote)" if k == "remote" else ""))
            for k, label in PULLS]
    al = r["alone"]
    rows.append(("skopeo alone (OCI layout to dir:, no registry)", f"{al['median_s']:.2f}", f"{al['MBps']:.1f}",
                 " ".join(f"{x:.2f}" for x in al["runs_s"]), "-", "-"))
    hdr = ("pull", "s", "MB/s", "runs s", "layer GET s", "registry peak RSS MiB")
    ws = [max(len(x[i]) for x in rows + [hdr]) for i in range(len(hdr))]
    print("    " + " | ".join(h.ljust(ws[0]) if i == 0 else h.rjust(ws[i]) for i, h in enumerate(hdr)))
    print("    " + "-+-".join("-" * w for w in ws))
    for row in rows:
        print("    " + " | ".join(c.ljust(ws[0]) if i == 0 else c.rjust(ws[i]) for i, c in enumerate(row)))
    fmt = lambda xs: " ".join(f"{x:.0f}" for x in xs)  # noqa: E731
    log("")
    log(f"mirror registry RSS MiB: before each (a) {fmt(m['rss_before_first_MiB'])}, peak during (a) "
        f"{fmt(m['peak_rss_first_MiB'])}, during (c) {fmt(m['peak_rss_cached_MiB'])}")
    log(f"remote registry peak RSS MiB during (a) {fmt([x['remote']['berth-registry'] for x in p['first']['rss_MiB']])}"
        f", during (b) {fmt([x['remote']['berth-registry'] for x in p['remote']['rss_MiB']])}")
    log(f"layer stored by the mirror {' '.join(f'{x:+.2f}' for x in m['stored_after_pull_s'])} s after (a) ended "
        f"(its fetch took {' '.join(str(x) for x in m['fetch_took_ms'])} ms)")
    log("layer GET s: the layer's GET as the serving berth-proxy logged it (duration_ms), without the client's "
        "start, the manifest and the config")
    log(f"pushes (informational): {r['push']['remote_s']:.2f} s to the remote, {r['push']['local_s']:.2f} s to "
        "the mirror's local/big")
    step("targets")
    for t in r["targets"]:
        print(f"    [{'met ' if t['met'] else 'MISS'}] {t['target']}: {t['value']} (goal {t['goal']}; {t['note']})")


def scan_logs(stacks):
    """(errors, warnings) in berth's logs: an ERROR, a panic or a 5xx is an error; other WARN lines are
    warnings, except the note about the bench CA's missing name constraints."""
    out, warnings = [], []
    for st in stacks:
        for name in ("berth-registry.log", "berth-proxy.log", "berth-registry.out", "berth-proxy.out"):
            try:
                with open(os.path.join(st.dir, name), errors="replace") as f:
                    for line in f:
                        if " ERROR " in line or "panicked" in line or re.search(r" status=5\d\d ", line):
                            out.append(f"{st.label}: {name}: {line.strip()[:400]}")
                        elif " WARN " in line and "has no name constraints" not in line:
                            warnings.append(f"{st.label}: {name}: {line.strip()[:400]}")
            except FileNotFoundError:
                pass
    return out, warnings


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a 64 MiB layer, 1 run: the whole thing end to end, "
                                                         "quickly (CI)")
    ap.add_argument("--bin-dir", default=os.environ.get("BERTH_BIN_DIR") or os.path.join(ROOT, "target", "release"))
    ap.add_argument("--size", type=parse_size, default=None, help="the layer's size (default 1G, smoke 64M)")
    ap.add_argument("--runs", type=int, default=None, help="runs of the four pulls (default 3, smoke 1)")
    ap.add_argument("--client", choices=("skopeo", "curl"), default="skopeo",
                    help="skopeo copy of the image to dir: (default), or curl of the layer's blob alone (the "
                         "registries' path without skopeo's own costs)")
    ap.add_argument("--out", default=None, help="write the results as JSON to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (the processes' logs)")
    a = ap.parse_args(argv)
    a.size = a.size or (64 * MiB if a.smoke else GiB)
    a.runs = a.runs or (1 if a.smoke else 3)
    a.bin_dir = os.path.abspath(a.bin_dir)
    preflight(a.bin_dir, ("skopeo", "curl", "openssl", "htpasswd"), "--mirror")

    work = tempfile.mkdtemp(prefix="berth-mirror.", dir=os.environ.get("BERTH_BENCH_TMP", "/tmp"))
    os.chmod(work, 0o755)
    results = {"meta": {
        "smoke": a.smoke, "size": a.size, "runs": a.runs, "client": a.client, "bin_dir": a.bin_dir,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "nproc": os.cpu_count(),
        "loadavg_start": open("/proc/loadavg").read().split()[:3], "versions": berth_versions(a.bin_dir, skopeo=["skopeo", "--version"]),
    }}
    stacks = []
    try:
        rc = run_reported(results, lambda: bench(a, work, stacks, results))
    finally:
        for st in stacks:
            st.stop()
        rc = max(rc, report_logs(*scan_logs(stacks), results))
        finish_run(a, results, work, rc)
    return rc


def bench(a, work, stacks, results):
    step("two berth stacks: the remote, and the mirror (prefix hub) in front of it")
    htpasswd = os.path.join(work, "htpasswd")
    make_htpasswd(htpasswd, "bcrypt5")
    remote = Stack("remote", "remote", work)
    mirror = Stack("mirror", "mirror", work)
    certs = {}
    for st in (remote, mirror):
        certs[st.name] = os.path.join(work, f"certs-{st.name}")
        make_certs(certs[st.name])
    stacks.append(remote)
    start_stack(remote, a.bin_dir, certs["remote"], htpasswd)
    config = os.path.join(mirror.dir, "mirror.toml")
    with open(config, "w") as f:
        f.write(f'[[mirrors]]\nprefix = "{PREFIX}"\nurl = "{remote.base}"\nusername = "{USER}"\n'
                f'password = "{PASSWORD}"\n')
    spool = os.path.join(mirror.dir, "spool")
    os.makedirs(spool)
    stacks.append(mirror)
    start_stack(mirror, a.bin_dir, certs["mirror"], htpasswd, config=config,
                extra_env={"BERTH_PROXY_CAFILE": os.path.join(certs["remote"], "devdockerCA.crt"),
                           "BERTH_PROXY_SPOOLDIRECTORY": spool})
    for st in stacks:
        log(f"{st.label:<7} {st.base}, registry 127.0.0.1:{st.registry_port}")
    log(f"mirror config ({config}): [[mirrors]] prefix = \"{PREFIX}\", url = \"{remote.base}\", the bench user; "
        "BERTH_PROXY_CAFILE = the remote's CA")

    step(f"data: two one-layer images of {human_size(a.size)} (random bytes; their layers differ), pushed with "
         "skopeo: bench/big to the remote, local/big to the mirror stack")
    data = os.path.join(work, "data")
    os.makedirs(data)
    base = os.path.join(data, "remote.bin")
    random_file(base, a.size)
    random_file(os.path.join(data, "local.bin"), a.size, base=base)
    images = {}
    for name in ("remote", "local"):
        layer = Blob(os.path.join(data, f"{name}.bin"))
        layout = os.path.join(data, f"{name}-oci")
        manifest = oci_layout(layout, layer, TAG)
        with open(os.path.join(layout, "blobs", "sha256", manifest.split(":", 1)[1])) as f:
            config_digest = json.load(f)["config"]["digest"]
        images[name] = {"layer": layer, "layout": layout, "manifest": manifest, "config": config_digest}
    if images["local"]["layer"].digest == images["remote"]["layer"].digest:
        raise BenchError("the two layers have the same digest")
    results["push"] = {"remote_s": round(skopeo_push(remote, images["remote"]["layout"], TAG, REMOTE_REPO), 3),
                       "local_s": round(skopeo_push(mirror, images["local"]["layout"], TAG, LOCAL_REPO), 3)}
    log(f"push to the remote {REMOTE_REPO}: {results['push']['remote_s']:.2f} s; to the mirror's {LOCAL_REPO}: "
        f"{results['push']['local_s']:.2f} s")
    results["meta"]["digests"] = {k: {"manifest": v["manifest"], "config": v["config"], "layer": v["layer"].digest}
                                  for k, v in images.items()}

    measure(a, work, remote, mirror, images, results)
    for st in stacks:
        st.check_alive()
    results["targets"] = targets(results)
    print_table(results, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())

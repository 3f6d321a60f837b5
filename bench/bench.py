#!/usr/bin/env python3
"""berth side by side with nginx + registry:2 on this machine, in the same run.

Run through scripts/bench.sh (which installs the tools and builds the release binaries). This script starts both
stacks as child processes on loopback ports in a temporary directory, measures them with the same clients, the
same credentials and the same data in alternating runs, prints a table and writes JSON. It stops exactly the
processes it started, by PID, and removes its directory.

Measurements, in the order they run; each section is one module in bench/sections/ whose docstring gives its
method (the --skip name first; see bench/README.md for the method and the last figures):
  machine   machine.py   openssl speed sha256 / aes-256-gcm (one core), fsync'd write (median of 3), loopback TCP
  scaling   scaling.py   skopeo push/pull time by layer size, peak RSS of every process during each push
  raw       raw.py       curl: monolithic and chunked upload, download; over TLS + basic auth, berth-registry
                         direct over plain HTTP, Trow (--trow) over plain HTTP; nginx static file over TLS
  skopeo    skopeo.py    skopeo push and pull of one layer of random bytes, and skopeo alone (no registry)
  docker    docker.py    docker push and pull by a private Docker daemon, verified TLS on a veth address (root)
  requests  requests.py  h2load, 64 connections: GET /v2/, HEAD blob, GET manifest; HTTP/1.1, HTTP/2; 3 hashes
  acl       acl.py       HEAD blob req/s through a berth-proxy with 100 access rules vs one without
  metrics   metrics.py   HEAD blob req/s with metrics on and scraped every second vs off
  floods    floods.py    a legitimate first login and PATCH, quiet and while one client floods
  pulls     rss.py       peak RSS during 64 concurrent pulls (and the push RSS gathered by scaling and skopeo)
  listing   listing.py   _catalog and tags/list latency with 100 / 1,000 / 10,000 repositories and tags
  gc        gc.py        garbage collection, berth's vs registry:2's (time, peak RSS), pushes while berth collects
Shared helpers are in common.py, the targets and the table in summary.py.

Trow (github.com/Trow-Registry/trow, a registry in Rust) is an optional peer of the raw section: --trow PATH (or
the environment variable BERTH_BENCH_TROW) names its binary, which scripts/bench.sh builds when TROW_SRC names its
source folder (SQLX_OFFLINE=true cargo build --release --locked there). Without it the raw section notes that Trow
was skipped (JSON raw_trow) and goes on.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in bench/
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

from common import (DOCKER_ADDR, GiB, MiB, ROOT, Blob, Context, Stack, http_status,  # noqa: E402
                    log, make_certs, make_htpasswd, oci_layout, parse_size, random_file, run, run_reported, skopeo_push,
                    start_berth, start_nginx, step, wait_ready)
from sections import (acl, docker, floods, gc, listing, machine, metrics, raw, requests, rss,  # noqa: E402
                      scaling, skopeo)
from summary import print_table, targets  # noqa: E402


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
    ap.add_argument("--trow", metavar="PATH", default=os.environ.get("BERTH_BENCH_TROW") or None,
                    help="the Trow binary measured by the raw section (default: $BERTH_BENCH_TROW; scripts/bench.sh "
                         "builds it from $TROW_SRC); none: Trow is skipped with a note")
    a = ap.parse_args()
    smoke = a.smoke
    runs = a.runs or (1 if smoke else 3)
    size = a.size or (16 * MiB if smoke else GiB)
    scaling_sizes = [parse_size(s) for s in (a.scaling or ("1M,16M" if smoke else "16M,256M,1G,4G")).split(",")]
    duration = a.duration or (1 if smoke else 5)
    listing_counts = [int(s) for s in (a.listing or ("10,100" if smoke else "100,1000,10000")).split(",")]
    pull_size = a.pull_size or (MiB if smoke else 64 * MiB)
    hashes = (a.hashes or ("bcrypt5" if smoke else "bcrypt5,bcrypt10,apr1")).split(",")
    skip = set(filter(None, a.skip.split(",")))

    # The stacks run in their own work directory: a relative binary path must not depend on it.
    a.bin_dir = os.path.abspath(a.bin_dir)
    a.trow = a.trow and os.path.abspath(a.trow)
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
        "smoke": smoke, "runs": runs, "size": size, "scaling_sizes": scaling_sizes, "duration_s": duration,
        "listing_counts": listing_counts, "concurrent_pull_size": pull_size, "hashes": hashes,
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
    if a.trow and os.access(a.trow, os.X_OK):
        tools.append(("trow", [a.trow, "--version"]))
    for name, cmd in tools:
        p = run(cmd, check=False)
        results["meta"]["versions"][name] = (p.stdout + p.stderr).strip().splitlines()[0]
    berth = Stack("berth", "berth", work)
    nginx = Stack("nginx", "nginx + registry:2", work)
    stacks = [berth, nginx]
    cleanups = []  # run after the stacks have stopped, also on failure
    try:
        rc = run_reported(results, lambda: bench(Context(a, results, work, berth, nginx, stacks, smoke, runs, size,
                                                         scaling_sizes, duration, listing_counts, pull_size, hashes,
                                                         skip, cleanups)))
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


def bench(ctx):
    a, results, work, berth, nginx, stacks, skip, cleanups = (ctx.args, ctx.results, ctx.work, ctx.berth, ctx.nginx,
                                                              ctx.stacks, ctx.skip, ctx.cleanups)
    if "machine" not in skip:
        machine.measure(ctx)

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
        dk = docker.DockerSide(work)
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
    ctx.certs, ctx.htpasswd, ctx.nginx_bcrypt, ctx.set_hash, ctx.dk = certs, hp, nginx_bcrypt, set_hash, dk
    ctx.data, ctx.small, ctx.small_manifest = data, small, small_manifest

    # The sections, in this order: scaling first (its largest push, the RSS figure, meets young processes).
    if "scaling" not in skip:
        scaling.measure(ctx)
    if "raw" not in skip:
        raw.measure(ctx)
    if "skopeo" not in skip:
        skopeo.measure(ctx)
    if "docker" not in skip:
        docker.measure(ctx)
    # big.bin: the layer that raw, skopeo and docker share
    if os.path.exists(os.path.join(data, "big.bin")):
        os.unlink(os.path.join(data, "big.bin"))
    if "requests" not in skip:
        requests.measure(ctx)
    if "acl" not in skip:
        acl.measure(ctx)
    if "metrics" not in skip:
        metrics.measure(ctx)
    if "floods" not in skip:
        floods.measure(ctx)
    if "pulls" not in skip:
        rss.measure(ctx)
    # the peak RSS during each push, gathered by scaling and skopeo (see sections/rss.py)
    results["rss_push"] = ctx.rss_push
    if "listing" not in skip:
        listing.measure(ctx)
    if "gc" not in skip:
        gc.measure(ctx)

    for st in stacks:
        st.check_alive()
    results["targets"] = targets(results)
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

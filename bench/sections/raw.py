"""raw: curl over TLS + basic auth: monolithic POST+PUT, streamed chunked PATCH, blob GET to /dev/null, and nginx
serving the same file as a static file over TLS; MB/s of the median of alternating runs, and the CPU seconds
each process spent per GiB moved."""

import os
import subprocess
import time

from common import (GiB, BenchError, Blob, RssSampler, alternate, curl_base, curl_req, human_size, location, log,
                    median, random_file, raw_monolithic, step, with_digest)


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


def measure(ctx):
    results, data, nginx, stacks, runs, size = ctx.results, ctx.data, ctx.nginx, ctx.stacks, ctx.runs, ctx.size
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

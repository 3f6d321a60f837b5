"""raw: curl --http1.1 and one blob of random bytes: monolithic upload (POST, then PUT ?digest= with the body,
Content-Length), streamed chunked PATCH (POST, PATCH with Transfer-Encoding: chunked from a pipe, PUT ?digest=),
blob GET to /dev/null. Each through both stacks' front doors over TLS + basic auth ("berth": berth-proxy in front
of berth-registry; "nginx"), straight to berth's berth-registry over plain HTTP without proxy, TLS or credentials
("berth-direct"), and to Trow over plain HTTP with no user configured when a Trow binary is given ("trow",
--trow); also nginx serving the same file as a static file over TLS. MB/s of the median of runs alternating
between all of them, and the CPU seconds each process spent per GiB moved. sync(2) runs, untimed, before each
timed operation, so that none pays for the writeback of another's data.

Trow never fsyncs what it stores (nor checks the digest of what it is sent); berth-registry fsyncs at commit (and
hashes every byte). So Trow's monolithic upload also gives "monolithic_durable": the same POST + PUT plus a
`sync -f` of its data directory (syncfs(2) of that filesystem) started right after the 201, the durable
comparison. An error that Trow answers to the chunked upload is recorded instead of that figure (and it is not
tried again); without a Trow binary, results["raw_trow"] says why Trow was skipped."""

import os
import subprocess
import time

from common import (GiB, BenchError, Blob, PlainHttp, RssSampler, Stack, alternate, curl_base, curl_req, human_size,
                    location, log, median, random_file, raw_monolithic, run, start_trow, step, with_digest)


def read_if_any(path):
    """The text of a file curl may not have written (when it could not connect)."""
    if not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return f.read()


def raw_chunked(stack, blob, repo):
    t = time.monotonic()
    _, h, _, _ = curl_req(stack, "POST", f"{stack.base}/v2/{repo}/blobs/uploads/", ["-H", "Content-Length: 0"],
                          expect={202})
    # -T - reads standard input: curl sends it with Transfer-Encoding: chunked (length unknown)
    hdr, body = os.path.join(stack.dir, "patch.hdr"), os.path.join(stack.dir, "patch.body")
    with open(blob.path, "rb") as stdin:
        p = subprocess.run(curl_base(stack) + ["-X", "PATCH", "-T", "-", "-D", hdr, "-o", body,
                                               "-w", "%{http_code}", "-H", "Content-Type: application/octet-stream",
                                               location(h, stack.base)],
                           stdin=stdin, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0 or p.stdout.strip() != "202":
        raise BenchError(f"{stack.label}: chunked PATCH -> {p.stdout} {read_if_any(body)[:300]} "
                         f"{p.stderr[-300:]}".strip())
    curl_req(stack, "PUT", with_digest(location(read_if_any(hdr), stack.base), blob.digest),
             ["-H", "Content-Length: 0"], expect={201})
    return time.monotonic() - t


def raw_download(stack, url, size):
    _, _, dt, parts = curl_req(stack, "GET", url, expect={200})
    if int(parts[2]) != size:
        raise BenchError(f"{stack.label}: GET {url} gave {parts[2]} bytes, expected {size}")
    return dt


def trow_monolithic(trow, blob, repo):
    """Trow's monolithic upload, then made durable: {"monolithic": seconds of the POST + PUT,
    "monolithic_durable": those plus `sync -f` of its data directory, started right after the 201}."""
    put = raw_monolithic(trow, blob, repo)
    t = time.monotonic()
    run(["sync", "-f", trow.stack.data])
    return {"monolithic": put, "monolithic_durable": put + time.monotonic() - t}


def figure(k, op):
    """One timed operation of a run: (k, a function returning {k: the seconds op took})."""
    return k, lambda: {k: op()}


def trow_or_none(ctx):
    """Trow started from the --trow binary (a PlainHttp; its stack is stopped with the run's cleanups), or None,
    with why in results["raw_trow"]."""
    path = ctx.args.trow
    if not path or not os.access(path, os.X_OK):
        note = "Trow not built: set TROW_SRC=... or --trow PATH" + (f" ({path} is missing)" if path else "")
        ctx.results["raw_trow"] = {"skipped": note}
        log(note)
        return None
    st = Stack("trow", "Trow", ctx.work)
    ctx.cleanups.append(st.stop)
    trow = start_trow(st, path)
    log(f"Trow: {trow.base}, data in {st.data}")
    return trow


def measure(ctx):
    results, data, berth, nginx, runs, size = ctx.results, ctx.data, ctx.berth, ctx.nginx, ctx.runs, ctx.size
    step(f"raw capacity: curl --http1.1, {human_size(size)} blob, {runs} alternating runs: both stacks over TLS + "
         "basic auth, berth-registry direct and Trow over plain HTTP")
    direct = PlainHttp("berth-direct", "berth-registry direct", berth, berth.registry_port, "berth-registry")
    log(f"berth-registry direct: {direct.base}")
    trow = trow_or_none(ctx)
    ends = [berth, direct, nginx] + ([trow] if trow else [])
    big = os.path.join(data, "big.bin")
    random_file(big, size)
    blob = Blob(big)
    os.link(big, os.path.join(nginx.dir, "static", "blob.bin"))
    raw = {e.name: {"monolithic": [], "chunked": [], "download": []} for e in ends}
    raw["nginx"]["static_download"] = []
    if trow:
        raw["trow"]["monolithic_durable"] = []
    refused = {}  # {figure: error text}: what Trow answered to an upload it refuses
    raw_cpu = {}
    for i in range(runs):
        for e in alternate(ends, i):
            repo = f"raw/{e.name}-"
            ops = [("monolithic", lambda: trow_monolithic(e, blob, f"{repo}mono{i}")) if e is trow else
                   figure("monolithic", lambda: raw_monolithic(e, blob, f"{repo}mono{i}")),
                   figure("chunked", lambda: raw_chunked(e, blob, f"{repo}chunk{i}")),
                   figure("download", lambda: raw_download(e, f"{e.base}/v2/{repo}mono{i}/blobs/{blob.digest}",
                                                           size))]
            if e is nginx:
                ops.append(figure("static_download",
                                  lambda: raw_download(nginx, f"{nginx.base}/bench-static/blob.bin", size)))
            done = {}
            for k, op in ops:
                if e is trow and k in refused:
                    continue
                run(["sync"])
                with RssSampler([e]) as r:
                    try:
                        got = op()
                    except BenchError as err:
                        if e is not trow or k != "chunked":
                            raise
                        refused[k] = str(err)
                        log(f"Trow refused the chunked upload (recorded instead of a figure): {err}")
                        continue
                for f, dt in got.items():
                    raw[e.name][f].append(dt)
                    raw_cpu.setdefault(e.name, {}).setdefault(f, []).append(r.cpu.get(e.name, {}))
                    done[f] = dt
            e.check_alive()
            log(f"run {i + 1} {e.label}: " + ", ".join(f"{f} {size / dt / 1e6:.0f} MB/s" for f, dt in done.items()))
    results["raw"] = {e: {k: {"seconds": [round(x, 3) for x in v], "MBps": round(size / median(v) / 1e6, 1)}
                          for k, v in d.items() if v} for e, d in raw.items()}
    # CPU seconds each process spent per GiB moved (median run): what bounds a single stream
    for e, d in raw_cpu.items():
        for k, runs_ in d.items():
            roles = {role for r_ in runs_ for role in r_}
            results["raw"][e][k]["cpu_s_per_GiB"] = {
                role: round(median([r_.get(role, 0.0) for r_ in runs_]) * GiB / size, 2) for role in roles}
    for k, text in refused.items():
        results["raw"]["trow"][k] = {"error": text}
    if trow:
        trow.stack.stop()
    os.unlink(os.path.join(nginx.dir, "static", "blob.bin"))

"""rss (--skip pulls): peak RSS of every process of each stack during 64 concurrent pulls of a --pull-size blob
(curl --http1.1 --parallel), with the aggregate MB/s and the CPU seconds of each process.

The peak RSS during each push (the largest is the "4 GiB push" figure) is sampled by the scaling and skopeo
sections into ctx.rss_push, which bench.py writes as results["rss_push"] after this section, whether it runs or
not. How a peak is read: common.RssSampler (the kernel's VmHWM after a reset, and a 20 ms sampler)."""

import os
import time

from common import (BenchError, Blob, RssSampler, alternate, curl_base, human_size, log, random_file,
                    raw_monolithic, run, step)


def measure(ctx):
    results, data, stacks, pull_size = ctx.results, ctx.data, ctx.stacks, ctx.pull_size
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

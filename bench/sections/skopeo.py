"""skopeo: push and pull of a single-layer image (random bytes) with skopeo --preserve-digests, and skopeo alone
(OCI layout to dir:, no registry): the client's own ceiling. Also skopeo's own CPU seconds per GiB, each stack's
CPU seconds per push, and the peak RSS of each push (into ctx.rss_push; see rss.py)."""

import os
import shutil

from common import (GiB, Blob, RssSampler, alternate, children_cpu, human_size, log, median, oci_layout,
                    random_file, skopeo_alone, skopeo_pull, skopeo_push, step)


def measure(ctx):
    results, data, stacks, runs, size = ctx.results, ctx.data, ctx.stacks, ctx.runs, ctx.size
    rss_push = ctx.rss_push
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

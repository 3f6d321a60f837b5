"""scaling: how cost grows with the layer size: skopeo push/pull time by layer size (one run each, alternating),
and the peak RSS of every process of each stack during each push (into ctx.rss_push; see rss.py). This section
runs first, so that the largest push, the "4 GiB push" RSS figure, meets young processes: RSS that later phases
leave behind would count."""

import os
import shutil

from common import (Blob, RssSampler, alternate, human_size, log, oci_layout, random_file, skopeo_pull,
                    skopeo_push, step)


def measure(ctx):
    results, data, stacks, rss_push, scaling = ctx.results, ctx.data, ctx.stacks, ctx.rss_push, ctx.scaling_sizes
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

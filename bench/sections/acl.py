"""acl: access rules: HEAD blob over HTTP/2 through a second berth-proxy with a 100-rule access file, alternating
with a berth-proxy without one (both started alike before berth's registry: only the rules differ), --runs runs
of --duration; median req/s of each, the ratio, and each proxy's CPU time per request."""

import os

from common import Stack, alternate, cpu_seconds, h2load, log, median, step, wait_ready


def measure(ctx):
    results, work, berth, certs, cleanups, bin_dir = (ctx.results, ctx.work, ctx.berth, ctx.certs, ctx.cleanups,
                                                      ctx.args.bin_dir)
    small, runs, duration = ctx.small, ctx.runs, ctx.duration
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
        st.start("berth-proxy", [os.path.join(bin_dir, "berth-proxy"), "serve"], env=env)
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

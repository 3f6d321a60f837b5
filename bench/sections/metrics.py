"""metrics: HEAD blob over HTTP/2 through a berth pair (registry and proxy) serving metrics and scraped every
second, alternating with a pair without metrics (both on berth's data directory, started alike: only the metrics
differ), --runs runs of --duration; median req/s of each, the ratio, the scrapes (count, size, latency) and the
CPU time of proxy + registry per request."""

import os
import threading
import time
import urllib.request

from common import BenchError, Stack, alternate, cpu_seconds, free_port, h2load, log, median, step, wait_ready


def measure(ctx):
    results, work, berth, certs, cleanups, bin_dir = (ctx.results, ctx.work, ctx.berth, ctx.certs, ctx.cleanups,
                                                      ctx.args.bin_dir)
    small, runs, duration = ctx.small, ctx.runs, ctx.duration
    step(f"metrics: HEAD blob over HTTP/2, a proxy and registry serving metrics and scraped every second "
         f"vs a pair without metrics, {duration:g} s each, alternating, {runs} runs")
    # Two pairs started alike on berth's data directory: one with metrics on both processes (and a scraper
    # reading both every second), one without; only the metrics differ.
    plain = Stack("berth-nometrics", "berth without metrics", work)
    metered = Stack("berth-metrics", "berth with metrics, scraped every second", work)
    scrape_urls = []
    for st, on in ((plain, False), (metered, True)):
        cleanups.append(st.stop)
        env = dict(os.environ)
        env.update(REGISTRY_HTTP_ADDR=f"127.0.0.1:{st.registry_port}",
                   REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=berth.data, BERTH_GC_INTERVAL="0")
        penv = dict(os.environ)
        penv.update(BERTH_LISTEN=st.host, BERTH_UPSTREAM=f"http://127.0.0.1:{st.registry_port}",
                    BERTH_CERTS_DIR=certs, BERTH_HTPASSWD=berth.htpasswd)
        if on:
            debug, mport = free_port(), free_port()
            env.update(REGISTRY_HTTP_DEBUG_ADDR=f"127.0.0.1:{debug}",
                       REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED="true")
            penv.update(BERTH_METRICS_LISTEN=f"127.0.0.1:{mport}")
            scrape_urls = [f"http://127.0.0.1:{debug}/metrics", f"http://127.0.0.1:{mport}/metrics"]
        st.start("berth-registry", [os.path.join(bin_dir, "berth-registry")], env=env)
        st.start("berth-proxy", [os.path.join(bin_dir, "berth-proxy"), "serve"], env=penv)
        st.cacert = berth.cacert
        wait_ready(st)
    stop_scraping = threading.Event()
    scrapes = {"count": 0, "bytes": 0, "seconds": []}

    def scraper():
        # One scrape of each process every second, as a Prometheus server configured at 1 s would.
        while not stop_scraping.wait(1.0):
            for url in scrape_urls:
                t0 = time.monotonic()
                with urllib.request.urlopen(url, timeout=10) as resp:
                    body = resp.read()
                scrapes["seconds"].append(time.monotonic() - t0)
                scrapes["count"] += 1
                scrapes["bytes"] += len(body)

    scraping = threading.Thread(target=scraper, daemon=True)
    scraping.start()
    path = f"/v2/bench/small/blobs/{small.digest}"
    pair = [plain, metered]
    got = {plain.name: [], metered.name: []}
    cpu_us = {plain.name: [], metered.name: []}
    try:
        for i in range(runs):
            for st in alternate(pair, i):
                # CPU of the proxy and the registry per request too: the rate alone moves by 10 % from run
                # to run when the load generator shares the cores.
                pids = list(st.pids())
                c0 = sum(cpu_seconds(p) for p in pids)
                r = h2load(st, path, "HEAD", True, duration, 64)
                got[st.name].append(r["rps"])
                cpu_us[st.name].append(round((sum(cpu_seconds(p) for p in pids) - c0) * 1e6
                                             / max(1, r["ok"]), 1))
                st.check_alive()
    finally:
        stop_scraping.set()
        scraping.join()
    if scrapes["count"] == 0:
        raise BenchError("metrics: no scrape happened during the runs")
    without, with_ = median(got[plain.name]), median(got[metered.name])
    results["metrics"] = {"runs": runs, "without_rps": without, "with_rps": with_,
                          "ratio": round(with_ / without, 3), "all": got,
                          "scrapes": scrapes["count"],
                          "scrape_bytes": scrapes["bytes"] // scrapes["count"],
                          "scrape_p50_ms": round(median(scrapes["seconds"]) * 1000, 2),
                          "cpu_us_per_request": {"without": median(cpu_us[plain.name]),
                                                 "with": median(cpu_us[metered.name]), "all": cpu_us}}
    log(f"HEAD blob h2: without metrics {without:.0f} req/s, with metrics scraped every second "
        f"{with_:.0f} req/s ({100 * with_ / without:.1f} %); {scrapes['count']} scrapes, "
        f"{scrapes['bytes'] // scrapes['count']} bytes, {median(scrapes['seconds']) * 1000:.1f} ms each; "
        f"proxy + registry CPU per request {median(cpu_us[plain.name]):.1f} / "
        f"{median(cpu_us[metered.name]):.1f} us")
    plain.stop()
    metered.stop()

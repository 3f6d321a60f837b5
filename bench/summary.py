"""The end of a run: the targets (each figure against its goal) and the table of both stacks side by side.
report.py recomputes the targets from saved JSON with the same targets()."""

from common import log, parse_size, step


def targets(r):
    t = []

    def add(name, value, goal, ok, note=""):
        t.append({"target": name, "value": value, "goal": goal, "met": bool(ok), "note": note})

    m = r.get("machine", {})
    raw = r.get("raw")
    if raw:
        for k in ("monolithic", "chunked"):
            ratio = raw["berth"][k]["MBps"] / raw["nginx"][k]["MBps"]
            add(f"raw {k} upload vs nginx+registry:2", f"{ratio:.2f}x", ">= 3x", ratio >= 3)
            if m.get("sha256_MBps"):
                f = raw["berth"][k]["MBps"] / m["sha256_MBps"]
                add(f"raw {k} upload vs openssl sha256 (1 core)", f"{f * 100:.0f}%", ">= 40%", f >= 0.4)
        ratio = raw["berth"]["download"]["MBps"] / raw["nginx"]["download"]["MBps"]
        add("raw download vs nginx+registry:2", f"{ratio:.2f}x", ">= 1.2x", ratio >= 1.2)
        f = raw["berth"]["download"]["MBps"] / raw["nginx"]["static_download"]["MBps"]
        add("raw download vs nginx static file over TLS", f"{f * 100:.0f}%", ">= 85%", f >= 0.85)
        direct = raw.get("berth-direct")
        if direct:
            direct_targets(add, raw["berth"], direct, m, raw.get("trow"))
    sk = r.get("skopeo")
    if sk:
        for k in ("push", "pull"):
            ratio = sk["berth"][k]["MBps"] / sk["nginx"][k]["MBps"]
            add(f"skopeo {k} vs nginx+registry:2", f"{ratio:.2f}x", ">= 1.5x", ratio >= 1.5)
    dkr = r.get("docker")
    if dkr:
        # the daemon's gzip (push) and unpack (pull) bound both stacks: no slower than the comparison stack
        for k in ("push", "pull"):
            ratio = dkr["berth"][k]["MBps"] / dkr["nginx"][k]["MBps"]
            add(f"docker {k} vs nginx+registry:2", f"{ratio:.2f}x", ">= 1.0x", ratio >= 1.0)
    req = r.get("requests")
    if req:
        for key, v in req.items():
            ratio = v["berth"]["rps"] / v["nginx"]["rps"]
            if key.startswith("bcrypt5"):
                add(f"req/s {key}", f"{ratio:.1f}x", ">= 20x", ratio >= 20)
            elif key.startswith("apr1"):
                add(f"req/s {key}", f"{ratio:.1f}x", ">= 3x", ratio >= 3)
            add(f"p99 {key}", f"{v['berth']['p99_ms']:.2f} vs {v['nginx']['p99_ms']:.2f} ms", "below nginx",
                v["berth"]["p99_ms"] < v["nginx"]["p99_ms"])
    acl = r.get("acl")
    if acl:
        add("HEAD blob req/s, 100 access rules vs none (berth)", f"{acl['ratio'] * 100:.1f}%", ">= 95%",
            acl["ratio"] >= 0.95)
    mt = r.get("metrics")
    if mt:
        add("HEAD blob req/s, metrics on and scraped every second vs off (berth)", f"{mt['ratio'] * 100:.1f}%",
            ">= 97%", mt["ratio"] >= 0.97, f"{mt['scrapes']} scrapes of {mt['scrape_bytes']} bytes")
    rp = r.get("rss_push")
    if rp:
        biggest = max(rp, key=lambda s: parse_size(s.replace(" GiB", "G").replace(" MiB", "M")))
        v = rp[biggest]
        if "berth" in v and "nginx" in v:
            px, rg = v["berth"].get("berth-proxy", 0), v["berth"].get("berth-registry", 0)
            # berth-proxy's counterpart is nginx as a whole: its master and all its workers
            ng = round(v["nginx"].get("nginx", 0) + v["nginx"].get("nginx workers (sum)",
                                                                    v["nginx"].get("nginx worker", 0)), 1)
            dr = v["nginx"].get("docker-registry", 0)
            add(f"peak RSS berth-proxy during {biggest} push", f"{px} MiB", "<= 32 MiB and < nginx",
                px <= 32 and px < ng, f"nginx master + workers {ng} MiB")
            add(f"peak RSS berth-registry during {biggest} push", f"{rg} MiB", "<= 64 MiB and < registry:2",
                rg <= 64 and rg < dr, f"registry:2 {dr} MiB")
    g = r.get("gc")
    if g:
        add("push throughput while collecting", f"{g['push']['during_MBps'] / g['push']['alone_MBps']:.0%}",
            ">= 80 % of without", g["push"]["during_MBps"] >= 0.8 * g["push"]["alone_MBps"],
            f"{g['push']['collections']} collections")
    ls = r.get("listing")
    if ls and len(ls) >= 2:
        lo, hi = min(ls, key=int), max(ls, key=int)
        for k in ("catalog", "tags"):
            ratio = ls[hi]["berth"][k]["p50_ms"] / ls[lo]["berth"][k]["p50_ms"]
            nratio = ls[hi]["nginx"][k]["p50_ms"] / ls[lo]["nginx"][k]["p50_ms"]
            add(f"{k} p50 at {hi} / at {lo}", f"{ratio:.1f}x", "<= 2x", ratio <= 2,
                f"nginx+registry:2: {nratio:.1f}x")
    return t


def direct_targets(add, berth, direct, m, trow):
    """The targets of berth-registry reached directly (raw section): against the machine's limit, Trow, and what
    berth-proxy and a chunked upload cost."""
    mono = direct["monolithic"]["MBps"]
    if m.get("sha256_MBps") and m.get("disk_fsync_write_MBps"):
        limit = min(m["sha256_MBps"], m["disk_fsync_write_MBps"])
        add("raw direct monolithic upload (berth-registry, plain HTTP) vs the machine's limit",
            f"{mono / limit * 100:.0f}%", ">= 70%", mono >= 0.7 * limit,
            f"{mono} MB/s; limit {limit} MB/s = min(openssl sha256 {m['sha256_MBps']}, "
            f"fsync'd write {m['disk_fsync_write_MBps']})")
    if trow:
        for k, what in (("monolithic", "Trow's monolithic upload"),
                        ("monolithic_durable", "Trow's monolithic upload then syncfs (durable)")):
            ratio = mono / trow[k]["MBps"]
            add(f"raw direct monolithic upload vs {what}", f"{ratio:.2f}x", ">= 1.0x", ratio >= 1.0,
                f"{mono} vs {trow[k]['MBps']} MB/s")
    f = berth["monolithic"]["MBps"] / mono
    add("raw monolithic upload through berth-proxy vs direct", f"{f * 100:.0f}%", ">= 85%", f >= 0.85,
        f"{berth['monolithic']['MBps']} vs {mono} MB/s")
    for who, d in (("through berth-proxy", berth), ("direct", direct)):
        f = d["chunked"]["MBps"] / d["monolithic"]["MBps"]
        add(f"raw chunked vs monolithic upload, {who}", f"{f * 100:.0f}%", ">= 90%", f >= 0.9,
            f"{d['chunked']['MBps']} vs {d['monolithic']['MBps']} MB/s")


def fmt(x, unit=""):
    return "-" if x is None else f"{x:,.1f}{unit}"


def print_table(r):
    rows = []

    def row(what, b, n, unit, better="higher"):
        ratio = None
        if b and n:
            ratio = b / n if better == "higher" else n / b
        rows.append((what, fmt(b, unit), fmt(n, unit), "-" if ratio is None else f"{ratio:.2f}x"))

    raw = r.get("raw")
    if raw:
        for k in ("monolithic", "chunked", "download"):
            row(f"raw {k} MB/s", raw["berth"][k]["MBps"], raw["nginx"][k]["MBps"], "")
        rows.append(("nginx static file over TLS MB/s", "", fmt(raw["nginx"]["static_download"]["MBps"]), ""))
        direct, trow = raw.get("berth-direct"), raw.get("trow")
        if direct:
            # berth-registry without its proxy; beside it, Trow reached the same way when it ran
            figures = [("monolithic", "monolithic"), ("chunked", "chunked"), ("download", "download")]
            if trow:
                figures.append(("monolithic_durable", "monolithic vs Trow's then syncfs"))
            for k, what in figures:
                b = direct[k.replace("_durable", "")]["MBps"]
                t = trow and trow[k].get("MBps")
                rows.append((f"raw berth-registry direct (plain HTTP) {what} MB/s", fmt(b),
                             "" if not trow else f"{fmt(t)} (Trow)" if t else "refused (Trow)",
                             f"{b / t:.2f}x" if t else ""))
        if "raw_trow" in r:
            rows.append((r["raw_trow"]["skipped"], "", "", ""))
    sk = r.get("skopeo")
    if sk:
        for k in ("push", "pull"):
            row(f"skopeo {k} MB/s", sk["berth"][k]["MBps"], sk["nginx"][k]["MBps"], "")
        if "alone" in sk:
            # how close each stack gets to the client's own ceiling
            rows.append(("skopeo alone, OCI layout to dir: MB/s", fmt(sk["alone"]["MBps"]), "", ""))
            for k in ("push", "pull"):
                rows.append((f"skopeo {k} as % of skopeo alone", f"{sk['berth'][k]['MBps'] / sk['alone']['MBps']:.0%}",
                             f"{sk['nginx'][k]['MBps'] / sk['alone']['MBps']:.0%}", ""))
    dkr = r.get("docker")
    if dkr:
        for k in ("push", "pull"):
            row(f"docker {k} MB/s", dkr["berth"][k]["MBps"], dkr["nginx"][k]["MBps"], "")
            rows.append(("  CPU s/GiB", " ".join(f"{n}={x}" for n, x in dkr["berth"][k]["cpu_s_per_GiB"].items()),
                         " ".join(f"{n}={x}" for n, x in dkr["nginx"][k]["cpu_s_per_GiB"].items()), ""))
    for key, v in (r.get("requests") or {}).items():
        row(f"{key} req/s", v["berth"]["rps"], v["nginx"]["rps"], "")
        row(f"{key} p99 ms", v["berth"]["p99_ms"], v["nginx"]["p99_ms"], "", better="lower")
    cp = r.get("concurrent_pulls")
    if cp:
        row("64 concurrent pulls MB/s", cp["berth"]["MBps"], cp["nginx"]["MBps"], "")
        row("64 pulls: peak RSS total MiB", cp["berth"]["rss_MiB"].get("total"),
            cp["nginx"]["rss_MiB"].get("total"), "", better="lower")
    for sz, v in (r.get("rss_push") or {}).items():
        if "berth" in v and "nginx" in v:
            row(f"push {sz}: peak RSS total MiB", v["berth"].get("total"), v["nginx"].get("total"), "",
                better="lower")
            rows.append(("  per process", " ".join(f"{k}={x}" for k, x in v["berth"].items() if k != "total"),
                         " ".join(f"{k}={x}" for k, x in v["nginx"].items() if k != "total"), ""))
    for sz, v in (r.get("scaling") or {}).items():
        row(f"skopeo push {sz} s", v["berth"]["push_s"], v["nginx"]["push_s"], "", better="lower")
        row(f"skopeo pull {sz} s", v["berth"]["pull_s"], v["nginx"]["pull_s"], "", better="lower")
    for n, v in (r.get("listing") or {}).items():
        for k in ("catalog", "tags"):
            row(f"{k} (n=100) with {n}: p50 ms", v["berth"][k]["p50_ms"], v["nginx"][k]["p50_ms"], "",
                better="lower")
    g = r.get("gc")
    if g:
        row("garbage collection s", g["berth"]["seconds"], g["nginx"]["seconds"], "", better="lower")
        row("garbage collection peak RSS MiB", g["berth"]["peak_rss_MiB"], g["nginx"]["peak_rss_MiB"], "",
            better="lower")
        rows.append(("push MB/s alone / while collecting", f"{g['push']['alone_MBps']} / {g['push']['during_MBps']}",
                     "", ""))
    w = [max(len(x[i]) for x in rows + [("what", "berth", "nginx+registry:2", "berth advantage")]) for i in range(4)]
    step("results (same run)")
    m = r.get("machine")
    if m:
        log("machine: " + ", ".join(f"{k} {v}" for k, v in m.items()))
    log(f"load average at start {' '.join(r['meta']['loadavg_start'])}")
    if r["meta"].get("docker_skipped"):
        log(f"docker section skipped: {r['meta']['docker_skipped']}")
    for k, v in ((r.get("raw") or {}).get("trow") or {}).items():
        if "error" in v:
            log(f"Trow refused the {k} upload: {' '.join(v['error'].split())}")
    hdr = ("what", "berth", "nginx+registry:2", "berth advantage")
    print("    " + " | ".join(h.ljust(w[i]) for i, h in enumerate(hdr)))
    print("    " + "-+-".join("-" * x for x in w))
    for x in rows:
        print("    " + " | ".join(c.ljust(w[i]) for i, c in enumerate(x)))
    step("targets")
    for t in r.get("targets", []):
        note = f" ({t['note']})" if t["note"] else ""
        print(f"    [{'met ' if t['met'] else 'MISS'}] {t['target']}: {t['value']} (goal {t['goal']}){note}")

#!/usr/bin/env python3
"""Markdown tables from the JSON of scripts/bench.sh --out (for bench/README.md).

    python3 bench/report.py run.json [more.json ...]

Several files are merged section by section (a later file's sections win), for a run split in parts with
--skip; the targets are recomputed from the merged figures.
"""

import json
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from summary import targets  # noqa: E402


def f(x, nd=1):
    return "-" if x is None else f"{x:,.{nd}f}"


def mbps_row(label, section, k):
    """A table row of berth's and the comparison stack's MB/s for transfer `k` of a section, and the ratio."""
    b, n = section["berth"][k]["MBps"], section["nginx"][k]["MBps"]
    return f"| {label} | {f(b)} | {f(n)} | {ratio(b, n)} |"


def ratio(b, n, higher=True):
    if not b or not n:
        return "-"
    return f"{(b / n if higher else n / b):.2f}x"


def main(paths):
    r = {}
    for p in paths:
        with open(p) as fh:
            d = json.load(fh)
        for k, v in d.items():
            if k == "meta":
                r.setdefault("metas", []).append(v)
            elif k == "rss_push" and not v:
                continue
            else:
                r[k] = v
    out = []
    for m in r.get("metas", []):
        out.append(f"- run started {m['started']}, load average {' '.join(m['loadavg_start'])} at start, "
                   f"{' '.join(m.get('loadavg_end', []))} at end; {m['nproc']} cores; "
                   f"nginx bcrypt support: {m.get('nginx_bcrypt_supported')}")
    if "machine" in r:
        m = r["machine"]
        runs = m.get("disk_fsync_write_runs_MBps")
        out.append(f"- machine, same run: openssl sha256 {m['sha256_MBps']} MB/s, aes-256-gcm "
                   f"{m['aes256gcm_MBps']} MB/s (one core, 16 KiB blocks), fsync'd sequential write "
                   f"{m['disk_fsync_write_MBps']} MB/s" + (f" (median of {', '.join(map(str, runs))})" if runs else "")
                   + f", loopback TCP {m['loopback_tcp_MBps']} MB/s")
    out.append("")
    out.append("| what | berth | nginx + registry:2 | berth's advantage |")
    out.append("|---|---|---|---|")
    raw = r.get("raw")
    if raw:
        for k, name in (("monolithic", "raw monolithic upload (POST + PUT), MB/s"),
                        ("chunked", "raw streamed chunked PATCH upload, MB/s"),
                        ("download", "raw blob download, MB/s")):
            out.append(mbps_row(name, raw, k))
        out.append(f"| nginx serving the blob as a static file over TLS, MB/s | | "
                   f"{f(raw['nginx']['static_download']['MBps'])} | |")
        direct, trow = raw.get("berth-direct"), raw.get("trow")
        if direct:
            # berth-registry without its proxy; beside it, Trow reached the same way when it ran
            figures = [("monolithic", "monolithic upload"), ("chunked", "streamed chunked PATCH upload"),
                       ("download", "blob download")]
            if trow:
                figures.append(("monolithic_durable", "monolithic upload, Trow's followed by `sync -f` (durable)"))
            for k, name in figures:
                b = direct[k.replace("_durable", "")]["MBps"]
                cell = ""
                if trow:
                    # a refusal's text on one line of a table cell
                    refused = " ".join(trow[k].get("error", "").split()).replace("|", "\\|")
                    cell = f"{f(trow[k]['MBps']) if 'MBps' in trow[k] else 'refused: ' + refused} (Trow)"
                vs = ", against Trow" if trow else ""
                out.append(f"| straight to berth-registry over plain HTTP (no proxy, TLS or auth){vs}: {name}, MB/s | "
                           f"{f(b)} | {cell} | {ratio(b, trow and trow[k].get('MBps'))} |")
        if "raw_trow" in r:
            out.append(f"| {r['raw_trow']['skipped']} | | | |")
    sk = r.get("skopeo")
    if sk:
        for k in ("push", "pull"):
            out.append(mbps_row(f"skopeo {k}, one layer, MB/s", sk, k))
        if "alone" in sk:
            out.append(f"| skopeo alone (OCI layout to `dir:`, no registry), MB/s | {f(sk['alone']['MBps'])} | | |")
            for k in ("push", "pull"):
                if "skopeo_cpu_s_per_GiB" in sk["berth"][k]:
                    out.append(f"| skopeo {k}: skopeo's own CPU s per GiB | {f(sk['berth'][k]['skopeo_cpu_s_per_GiB'], 2)}"
                               f" | {f(sk['nginx'][k]['skopeo_cpu_s_per_GiB'], 2)} | |")
    dk = r.get("docker")
    if dk:
        for k in ("push", "pull"):
            out.append(mbps_row(f"docker {k}, one layer, MB/s", dk, k))
        for k in ("push", "pull"):
            out.append(f"| docker {k}, CPU s per GiB | " +
                       ", ".join(f"{n} {x}" for n, x in dk["berth"][k]["cpu_s_per_GiB"].items()) + " | " +
                       ", ".join(f"{n} {x}" for n, x in dk["nginx"][k]["cpu_s_per_GiB"].items()) + " | |")
    for key, v in (r.get("requests") or {}).items():
        b, n = v["berth"], v["nginx"]
        mode = " (fixed count)" if n.get("mode") == "count" else ""
        out.append(f"| {key}: req/s | {f(b['rps'])} | {f(n['rps'])}{mode} | {ratio(b['rps'], n['rps'])} |")
        out.append(f"| {key}: p50 / p99 ms | {f(b['p50_ms'], 2)} / {f(b['p99_ms'], 2)} | "
                   f"{f(n['p50_ms'], 2)} / {f(n['p99_ms'], 2)} | p99 {ratio(b['p99_ms'], n['p99_ms'], False)} |")
    acl = r.get("acl")
    if acl:
        out.append(f"| HEAD blob h2 req/s, berth without / with {acl['rules']} access rules | {f(acl['without_rps'])}"
                   f" / {f(acl['with_rps'])} | | {acl['ratio'] * 100:.1f}% |")
        cpu = acl.get("proxy_cpu_us_per_request")
        if cpu:
            out.append(f"| HEAD blob h2, berth-proxy CPU us per request, without / with access rules | "
                       f"{f(cpu['without'])} / {f(cpu['with'])} | | |")
    mt = r.get("metrics")
    if mt:
        out.append(f"| HEAD blob h2 req/s, berth without / with metrics scraped every second | "
                   f"{f(mt['without_rps'])} / {f(mt['with_rps'])} | | {mt['ratio'] * 100:.1f}% |")
        cpu = mt.get("cpu_us_per_request")
        if cpu:
            out.append(f"| HEAD blob h2, berth-proxy + berth-registry CPU us per request, without / with metrics | "
                       f"{f(cpu['without'])} / {f(cpu['with'])} | | |")
    cp = r.get("concurrent_pulls")
    if cp:
        out.append(f"| 64 concurrent pulls, aggregate MB/s | {f(cp['berth']['MBps'])} | {f(cp['nginx']['MBps'])} | "
                   f"{ratio(cp['berth']['MBps'], cp['nginx']['MBps'])} |")
        out.append("| 64 concurrent pulls, peak RSS MiB | " + ", ".join(
            f"{k} {x}" for k, x in cp["berth"]["rss_MiB"].items()) + " | " + ", ".join(
            f"{k} {x}" for k, x in cp["nginx"]["rss_MiB"].items()) + " | " +
            ratio(cp["berth"]["rss_MiB"].get("total"), cp["nginx"]["rss_MiB"].get("total"), False) + " |")
    for sz, v in (r.get("rss_push") or {}).items():
        if "berth" in v and "nginx" in v:
            out.append(f"| peak RSS during a {sz} push (skopeo), MiB | " +
                       ", ".join(f"{k} {x}" for k, x in v["berth"].items()) + " | " +
                       ", ".join(f"{k} {x}" for k, x in v["nginx"].items()) + " | " +
                       ratio(v["berth"].get("total"), v["nginx"].get("total"), False) + " |")
    for sz, v in (r.get("scaling") or {}).items():
        out.append(f"| skopeo push / pull {sz}, s | {f(v['berth']['push_s'], 2)} / {f(v['berth']['pull_s'], 2)} | "
                   f"{f(v['nginx']['push_s'], 2)} / {f(v['nginx']['pull_s'], 2)} | "
                   f"{ratio(v['berth']['push_s'], v['nginx']['push_s'], False)} / "
                   f"{ratio(v['berth']['pull_s'], v['nginx']['pull_s'], False)} |")
    for n, v in (r.get("listing") or {}).items():
        for k, name in (("catalog", "_catalog?n=100"), ("tags", "tags/list?n=100")):
            out.append(f"| {name} with {int(n):,} {'repositories' if k == 'catalog' else 'tags'}: p50 / p99 ms | "
                       f"{f(v['berth'][k]['p50_ms'], 2)} / {f(v['berth'][k]['p99_ms'], 2)} | "
                       f"{f(v['nginx'][k]['p50_ms'], 2)} / {f(v['nginx'][k]['p99_ms'], 2)} | "
                       f"{ratio(v['berth'][k]['p50_ms'], v['nginx'][k]['p50_ms'], False)} |")
    r["meta"] = (r.get("metas") or [{}])[0]
    out.append("")
    out.append("| target | measured | goal | |")
    out.append("|---|---|---|---|")
    for t in targets(r):
        note = f" ({t['note']})" if t["note"] else ""
        out.append(f"| {t['target']} | {t['value']}{note} | {t['goal']} | {'met' if t['met'] else '**missed**'} |")
    print("\n".join(out))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])

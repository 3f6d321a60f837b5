"""requests: authenticated small requests with h2load, 64 connections, fixed duration: GET /v2/, HEAD blob, GET
manifest; HTTP/1.1 and HTTP/2; htpasswd as bcrypt cost 5, bcrypt cost 10, apr1 (--hashes); req/s and p50/p99."""

from common import OCI_MANIFEST, alternate, h2load, log, step


def measure(ctx):
    results, stacks, small, duration, hashes, set_hash = (ctx.results, ctx.stacks, ctx.small, ctx.duration,
                                                          ctx.hashes, ctx.set_hash)
    step(f"authenticated small requests: h2load, 64 connections, {duration:g} s each, alternating")
    cases = [("GET /v2/", "/v2/", "GET", ()),
             ("HEAD blob", f"/v2/bench/small/blobs/{small.digest}", "HEAD", ()),
             ("GET manifest", "/v2/bench/small/manifests/latest", "GET", (f"Accept: {OCI_MANIFEST}",))]
    req = {}
    i = 0
    for kind in hashes:
        nk = set_hash(kind)
        label = kind if nk == kind else f"{kind} (nginx: {nk})"
        for proto in ("h1", "h2"):
            for cname, path, method, hdrs in cases:
                if method == "HEAD" and proto == "h1":
                    # h2load (and wrk) wait for a body after a HTTP/1.1 HEAD response that carries
                    # Content-Length, until the run ends: HEAD is measured over HTTP/2 only.
                    continue
                key = f"{label} {proto} {cname}"
                req[key] = {}
                for st in alternate(stacks, i):
                    req[key][st.name] = h2load(st, path, method, proto == "h2", duration, 64, hdrs)
                    st.check_alive()
                i += 1
                b, n = req[key]["berth"], req[key]["nginx"]
                log(f"{key}: berth {b['rps']:.0f} req/s p99 {b['p99_ms']:.1f} ms | "
                    f"nginx {n['rps']:.0f} req/s p99 {n['p99_ms']:.1f} ms | x{b['rps'] / n['rps']:.1f}")
    results["requests"] = req
    set_hash("bcrypt5")

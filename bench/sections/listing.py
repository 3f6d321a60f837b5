"""listing: _catalog and tags/list latency (first page, n=100) with 100 / 1,000 / 10,000 repositories and tags
(--listing), written straight into each data directory in registry:2's layout; p50/p99 of sequential requests
on one keep-alive connection."""

import os

from common import alternate, h2load, log, step


def seed_listing(stack, kind, start, count, manifest_digest, layer_digest):
    """Writes repositories (kind="catalog": cat/r00000..) or tags (kind="tags": repo tags/list, tags t00000..)
    directly into the data directory, in registry:2's layout (both stacks read it from disk on every listing;
    neither caches listings)."""
    v2 = os.path.join(stack.data, "docker", "registry", "v2", "repositories")
    algo, hexd = manifest_digest.split(":")
    link = manifest_digest.encode()

    def write(path, data):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    for i in range(start, start + count):
        if kind == "catalog":
            repo = os.path.join(v2, "cat", f"r{i:05d}")
            tag = "latest"
        else:
            repo = os.path.join(v2, "tagged", "app")
            tag = f"t{i:05d}"
        write(os.path.join(repo, "_manifests", "revisions", algo, hexd, "link"), link)
        write(os.path.join(repo, "_manifests", "tags", tag, "current", "link"), link)
        write(os.path.join(repo, "_manifests", "tags", tag, "index", algo, hexd, "link"), link)
        la, lh = layer_digest.split(":")
        write(os.path.join(repo, "_layers", la, lh, "link"), layer_digest.encode())


def listing_latency(stack, path, n):
    """p50/p99 of sequential requests on one keep-alive connection (h2load, 1 connection)."""
    r = h2load(stack, path, "GET", False, n, 1, warmup=0.5)
    return {"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "rps": r["rps"]}


def measure(ctx):
    results, stacks, smoke, small, small_manifest, listing = (ctx.results, ctx.stacks, ctx.smoke, ctx.small,
                                                              ctx.small_manifest, ctx.listing_counts)
    step(f"_catalog and tags/list latency (first page, n=100) with {listing} repositories / tags")
    ls = {}
    have = 0
    secs = 1 if smoke else 3
    for count in listing:
        for st in stacks:
            seed_listing(st, "catalog", have, count - have, small_manifest, small.digest)
            seed_listing(st, "tags", have, count - have, small_manifest, small.digest)
        have = count
        ls[str(count)] = {}
        for j, st in enumerate(alternate(stacks, count)):
            ls[str(count)][st.name] = {
                "catalog": listing_latency(st, "/v2/_catalog?n=100", secs),
                "tags": listing_latency(st, "/v2/tagged/app/tags/list?n=100", secs),
            }
            st.check_alive()
        log(f"{count}: " + " | ".join(
            f"{s}: _catalog p50 {v['catalog']['p50_ms']:.2f} ms, tags p50 {v['tags']['p50_ms']:.2f} ms"
            for s, v in ls[str(count)].items()))
    results["listing"] = ls

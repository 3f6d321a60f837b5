"""gc: garbage collection at 1,000 repositories / 100,000 blobs: berth's online collector and registry:2's
offline garbage-collect (time, peak RSS), and push throughput while berth collects."""

import hashlib
import json
import os
import subprocess
import tempfile
import threading
import time

from common import (MiB, OCI_MANIFEST, BenchError, Blob, human_size, log, median, random_file, raw_monolithic,
                    rss_kib, run, step)


def seed_gc(data, repos, blobs, garbage_share, nonce):
    """Writes `repos` repositories holding `blobs` blobs in all straight into registry:2's layout under `data`:
    each repository a tagged image (a config and its layers), plus unreferenced blobs (a share `garbage_share` of
    each repository's blobs, linked into it as an abandoned push leaves them). Returns the garbage count."""
    v2 = os.path.join(data, "docker", "registry", "v2")

    def write(path, payload):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(payload)

    def blob(payload):
        d = hashlib.sha256(payload).hexdigest()
        write(os.path.join(v2, "blobs", "sha256", d[:2], d, "data"), payload)
        return "sha256:" + d

    per_repo = max(2, blobs // repos)
    garbage = 0
    for r in range(repos):
        repo = os.path.join(v2, "repositories", "gcbench", f"r{r:04d}")

        def link(kind, digest):
            write(os.path.join(repo, kind, "sha256", digest[7:], "link"), digest.encode())

        config = blob(json.dumps({"architecture": "amd64", "os": "linux", "n": f"{nonce}-{r}"}).encode())
        link("_layers", config)
        layers = []
        for b in range(per_repo - 1):
            payload = f"{nonce} layer {r} {b} ".encode() * 4
            d = blob(payload)
            link("_layers", d)
            if b < (per_repo - 1) * (1 - garbage_share):
                layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d,
                               "size": len(payload)})
            else:
                garbage += 1
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": config, "size": 0},
                               "layers": layers}).encode()
        m = blob(manifest)
        link(os.path.join("_manifests", "revisions"), m)
        write(os.path.join(repo, "_manifests", "tags", "latest", "current", "link"), m.encode())
        link(os.path.join("_manifests", "tags", "latest", "index"), m)
    return garbage


def timed_gc(cmd, env=None):
    """Runs cmd; returns (seconds, its peak RSS in MiB, stdout). The peak is the kernel's high-water mark
    (VmHWM) read every 5 ms while it runs (wait4's figure would count the fork of this Python process)."""
    t = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        peak = 0
        while p.poll() is None:
            peak = max(peak, rss_kib(p.pid, "VmHWM") or 0)
            time.sleep(0.005)
        secs = time.monotonic() - t
        out.seek(0)
        err.seek(0)
        if p.returncode != 0:
            raise BenchError(f"{cmd[0]} failed: {err.read().decode()[-500:]}")
        return secs, round(peak / 1024, 1), out.read().decode()


def measure(ctx):
    results, work, berth, smoke, bin_dir = ctx.results, ctx.work, ctx.berth, ctx.smoke, ctx.args.bin_dir
    repos, blobs = (50, 2000) if smoke else (1000, 100_000)
    step(f"garbage collection: {repos} repositories, {blobs} blobs (20 % garbage), written into the layout")
    gc = {}
    dirs = {k: os.path.join(work, f"gc-{k}") for k in ("berth", "nginx")}
    t = time.monotonic()
    garbage = seed_gc(dirs["berth"], repos, blobs, 0.2, "a")
    log(f"seeded in {time.monotonic() - t:.1f} s; copying for registry:2")
    run(["cp", "-a", dirs["berth"], dirs["nginx"]])
    # Each collector in a process of its own, measured alone: berth's online collector (grace 0) and
    # registry:2's offline `garbage-collect`, on identical copies.
    env = dict(os.environ, REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=dirs["berth"])
    secs, rss, out = timed_gc([os.path.join(bin_dir, "berth-registry"), "gc", "--json", "--grace", "0"],
                              env)
    report = json.loads(out)
    gc["berth"] = {"seconds": round(secs, 2), "peak_rss_MiB": rss, "deleted": len(report["blobs"])}
    cfg = os.path.join(work, "gc-registry2.yml")
    with open(cfg, "w") as f:
        f.write(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {dirs['nginx']}\n"
                "http:\n  addr: 127.0.0.1:0\n")
    secs, rss, out = timed_gc(["docker-registry", "garbage-collect", cfg])
    gone = sum(1 for ln in out.splitlines() if ln.startswith("blob eligible for deletion"))
    gc["nginx"] = {"seconds": round(secs, 2), "peak_rss_MiB": rss, "deleted": gone}
    gc["garbage_seeded"] = garbage
    log(" | ".join(f"{k}: {v['seconds']} s, peak RSS {v['peak_rss_MiB']} MiB, {v['deleted']} blobs deleted"
                   for k, v in gc.items() if isinstance(v, dict)))
    if gc["berth"]["deleted"] != garbage:
        raise BenchError(f"berth's collector deleted {gc['berth']['deleted']} blobs, {garbage} were garbage")
    # Push throughput through berth while collections run back to back over the same data directory
    # (grace 1h: the whole walk and mark, nothing pushed here is swept).
    seed_gc(berth.data, repos, blobs, 0.2, "b")
    gsize = (8 if smoke else 64) * MiB
    path = os.path.join(work, "gc-push.bin")
    pushes = 3 if smoke else 6
    alone, during = [], []
    collections = 0
    for i in range(pushes):
        random_file(path, gsize)
        alone.append(raw_monolithic(berth, Blob(path), f"gcpush/alone{i}"))
    stop = threading.Event()
    envb = dict(os.environ, REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=berth.data)

    failed = []

    def collect_loop():
        nonlocal collections
        while not stop.is_set():
            p = subprocess.run([os.path.join(bin_dir, "berth-registry"), "gc", "--json"], env=envb,
                               capture_output=True, text=True)
            if p.returncode != 0:
                failed.append(p.stderr[-500:])
                return
            collections += 1

    th = threading.Thread(target=collect_loop)
    th.start()
    try:
        # at least `pushes`, and on until a whole collection has run beside them
        i = 0
        while (i < pushes or collections == 0) and i < 500 and not failed:
            random_file(path, gsize)
            during.append(raw_monolithic(berth, Blob(path), f"gcpush/during{i}"))
            i += 1
    finally:
        stop.set()
        th.join()
    if failed:
        raise BenchError(f"berth-registry gc failed during pushes: {failed[0]}")
    if collections == 0:
        raise BenchError("no collection finished while the pushes ran")
    berth.check_alive()
    gc["push"] = {"size": gsize, "alone_MBps": round(gsize / median(alone) / 1e6, 1),
                  "during_MBps": round(gsize / median(during) / 1e6, 1), "collections": collections}
    log(f"push {human_size(gsize)}: {gc['push']['alone_MBps']} MB/s alone, {gc['push']['during_MBps']} MB/s "
        f"while {collections} collections ran")
    results["gc"] = gc

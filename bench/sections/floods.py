"""floods: latency of a legitimate first login and of a legitimate small PATCH, from another address, with and
without one client flooding (bad logins on one HTTP/2 connection; authenticated PATCHes of upload sessions that
do not exist), and the registry's RSS before and after the PATCH flood."""

import http.client
import os
import re
import ssl
import subprocess
import time
import urllib.parse

from common import (PASSWORD, USER, BenchError, basic, log, median, rss_kib, run, step, timed_requests,
                    wait_ready)


def flood_start(stack, secs, header, uri_file=None, data_file=None, method=None):
    """h2load from 127.0.0.1 on one HTTP/2 connection with 200 streams, for `secs` seconds, in the background."""
    cmd = ["h2load", "-c", "1", "-m", "200", "-t", "1", "-D", f"{int(secs * 1000)}ms", "-H", header]
    if method:
        cmd += ["-H", f":method: {method}"]
    if data_file:
        cmd += ["-d", data_file]
    if uri_file:
        cmd += ["-i", uri_file]
    else:
        cmd.append(f"https://127.0.0.1:{stack.h2_port}/v2/")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=stack.dir)


def flood_result(p, secs):
    out, err = p.communicate(timeout=secs + 120)
    m = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
    st = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not m or not st:
        raise BenchError(f"h2load flood gave no result:\n{out[-800:]}\n{err[-300:]}")
    return {"rps": round(float(m.group(1)), 1), "2xx": int(st.group(1)), "4xx": int(st.group(3)),
            "5xx": int(st.group(4))}


def floods(stacks, smoke, add_users):
    """Issue 19 items 1 and 2, measured: a legitimate first login (a user not yet in any cache) and a legitimate
    4 KiB PATCH, each from 127.0.0.2 on a fresh connection, quiet and while 127.0.0.1 floods."""
    secs = 4 if smoke else 10
    n = 3 if smoke else 10
    names = [f"legit{i}" for i in range(2 * n)]
    add_users(names)
    out = {}
    wrong = basic(USER, "not-the-password")
    good = basic(USER, PASSWORD)
    for st in stacks:
        r = {}
        login = lambda users: [("GET", "/v2/", {"Authorization": basic(u, PASSWORD)}, None, 200) for u in users]  # noqa: E731
        r["login_quiet_ms"] = median(timed_requests(st, login(names[:n])))
        p = flood_start(st, secs, f"Authorization: {wrong}")
        time.sleep(1)  # the flood's requests are queued by now; the measurement below runs while it goes on
        during = timed_requests(st, login(names[n:]))
        r["login_flood_ms"] = median(during)
        r["bad_login_flood"] = flood_result(p, secs)
        st.check_alive()
        # a real upload session and its PATCHes, quiet and during a flood of PATCHes of unknown sessions
        ctx = ssl.create_default_context(cafile=st.cacert)
        conn = http.client.HTTPSConnection("127.0.0.1", st.port, context=ctx, timeout=60)
        conn.request("POST", "/v2/floods/legit/blobs/uploads/", headers={"Authorization": good,
                                                                          "Content-Length": "0"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 202:
            raise BenchError(f"{st.label}: POST upload -> {resp.status}")
        upload = urllib.parse.urlsplit(urllib.parse.urljoin(st.base + "/", resp.getheader("Location")))
        upload_path = upload.path + (f"?{upload.query}" if upload.query else "")
        conn.close()
        chunk = os.urandom(4096)
        state = {"offset": 0, "path": upload_path}

        def timed_patches(count):
            # One after another, each on a fresh connection from 127.0.0.2, following the Location each answer
            # gives (registry:2 carries the session state in it).
            times = []
            for _ in range(count):
                conn = http.client.HTTPSConnection("127.0.0.1", st.port, context=ctx, timeout=60,
                                                   source_address=("127.0.0.2", 0))
                conn.connect()
                o = state["offset"]
                t = time.monotonic()
                conn.request("PATCH", state["path"], body=chunk, headers={
                    "Authorization": good, "Content-Type": "application/octet-stream",
                    "Content-Range": f"{o}-{o + len(chunk) - 1}", "Content-Length": str(len(chunk))})
                resp = conn.getresponse()
                resp.read()
                times.append((time.monotonic() - t) * 1000.0)
                conn.close()
                if resp.status != 202:
                    raise BenchError(f"{st.label}: PATCH {state['path']} -> {resp.status}")
                loc = urllib.parse.urlsplit(urllib.parse.urljoin(st.base + "/", resp.getheader("Location")))
                state["path"] = loc.path + (f"?{loc.query}" if loc.query else "")
                state["offset"] = o + len(chunk)
            return times

        registry = [pid for pid, role in st.pids().items() if role in ("berth-registry", "docker-registry")]
        rss_before = rss_kib(registry[0]) if registry else None
        r["patch_quiet_ms"] = median(timed_patches(2 * n))
        uris = os.path.join(st.dir, "flood-uris.txt")
        with open(uris, "w") as f:
            for _ in range(20000 if smoke else 100000):
                f.write(f"https://127.0.0.1:{st.h2_port}/v2/floods/x/blobs/uploads/{os.urandom(16).hex()}\n")
        data = os.path.join(st.dir, "flood-byte")
        with open(data, "wb") as f:
            f.write(b"x")
        p = flood_start(st, secs, f"Authorization: {good}", uri_file=uris, data_file=data, method="PATCH")
        time.sleep(1)
        r["patch_flood_ms"] = median(timed_patches(2 * n))
        r["unknown_patch_flood"] = flood_result(p, secs)
        if registry:
            r["registry_rss_kib"] = {"before": rss_before, "after": rss_kib(registry[0])}
        st.check_alive()
        log(f"{st.label}: first login {r['login_quiet_ms']:.1f} ms quiet, {r['login_flood_ms']:.1f} ms during "
            f"{r['bad_login_flood']['rps']:.0f} bad logins/s; 4 KiB PATCH {r['patch_quiet_ms']:.1f} ms quiet, "
            f"{r['patch_flood_ms']:.1f} ms during {r['unknown_patch_flood']['rps']:.0f} PATCHes of unknown "
            f"uploads/s; registry RSS {r.get('registry_rss_kib')}")
        out[st.name] = r
    return out


def measure(ctx):
    results, berth, nginx, stacks, smoke, set_hash = (ctx.results, ctx.berth, ctx.nginx, ctx.stacks, ctx.smoke,
                                                      ctx.set_hash)
    step("a legitimate first login and PATCH from another address, quiet and while one client floods")

    def add_users(names):
        lines = []
        for u in names:
            p = run(["htpasswd", "-n", "-b", "-B", "-C", "5", u, PASSWORD])
            lines.append(p.stdout.strip().splitlines()[0])
        for path in (berth.htpasswd, nginx.htpasswd):
            with open(path) as f:
                text = f.read()
            tmp = path + ".new"
            with open(tmp, "w") as f:
                f.write(text + "\n".join(lines) + "\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        time.sleep(2.5)  # berth polls the file every second
        for st in stacks:
            wait_ready(st)

    results["floods"] = floods(stacks, smoke, add_users)
    set_hash("bcrypt5")

"""machine: the machine's own limits, measured in the same run, against which the stacks' figures are read:
openssl speed sha256 / aes-256-gcm (one core), fsync'd sequential write (the median of 3, each a fresh file written
in 1 MiB writes, fsync'd and unlinked; every one is recorded too, as a VM's disk varies from one to the next),
loopback TCP."""

import os
import socket
import subprocess
import sys
import time

from common import GiB, MiB, free_port, log, median, run, step


def fsync_write(path, size, buf):
    """MB/s of writing size bytes to a fresh file at path, fsync included; the file is removed after."""
    t = time.monotonic()
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(buf)
        f.flush()
        os.fsync(f.fileno())
    mbps = size / (time.monotonic() - t) / 1e6
    os.unlink(path)
    return mbps


def machine_limits(work, smoke):
    step("machine limits (same run)")
    res = {}
    secs = "1" if smoke else "3"
    for algo, key in (("sha256", "sha256_MBps"), ("aes-256-gcm", "aes256gcm_MBps")):
        p = run(["openssl", "speed", "-seconds", secs, "-bytes", "16384", "-evp", algo])
        last = [ln for ln in p.stdout.splitlines() if ln.strip()][-1]
        res[key] = round(float(last.split()[-1].rstrip("k")) / 1000.0, 1)
    size = 64 * MiB if smoke else 1 * GiB
    path = os.path.join(work, "fsync-test")
    buf = os.urandom(MiB)
    writes = [round(fsync_write(path, size, buf), 1) for _ in range(3)]
    res["disk_fsync_write_MBps"] = median(writes)
    res["disk_fsync_write_runs_MBps"] = writes
    # loopback TCP: one stream, a python sender and receiver in two processes, 1 MiB writes
    port = free_port()
    recv = subprocess.Popen([sys.executable, "-c", (
        "import socket,sys\n"
        "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('127.0.0.1',%d));"
        "s.listen(1);print('ready',flush=True)\n"
        "c,_=s.accept();b=bytearray(1<<20);v=memoryview(b);n=0\n"
        "while True:\n  k=c.recv_into(v)\n  if not k: break\n  n+=k\n"
        "print(n,flush=True)\n") % port], stdout=subprocess.PIPE, text=True)
    try:
        recv.stdout.readline()
        c = socket.create_connection(("127.0.0.1", port))
        total = (256 * MiB) if smoke else (4 * GiB)
        t = time.monotonic()
        sent = 0
        while sent < total:
            c.sendall(buf)
            sent += len(buf)
        c.shutdown(socket.SHUT_WR)
        got = int(recv.stdout.readline())
        res["loopback_tcp_MBps"] = round(got / (time.monotonic() - t) / 1e6, 1)
        c.close()
    finally:
        recv.wait(timeout=30)
    for k, v in res.items():
        log(f"{k}: {v}")
    return res


def measure(ctx):
    ctx.results["machine"] = machine_limits(ctx.work, ctx.smoke)

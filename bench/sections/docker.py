"""docker: docker push and pull (a private Docker daemon, vfs storage) of a single-layer image of random bytes,
both stacks reached with verified TLS on a veth address (needs root; skipped otherwise), with the CPU seconds
per GiB of dockerd, containerd, the docker CLI and each stack process. bench.py creates the DockerSide and its
address before the stacks start (nginx listens on it from the start); this section starts the daemon."""

import os
import shutil
import signal
import subprocess
import tarfile
import time

from common import (DOCKER_ADDR, GiB, MiB, PASSWORD, USER, BenchError, alternate, children_cpu, children_of,
                    cpu_delta, cpu_seconds, free_port, human_size, log, median, random_file, run, stack_cpu,
                    start_time, step, wait_ready)


class DockerSide:
    """What the docker section sets up on the host, and undoes in close() (safe to call twice, also after a
    failure): a veth pair whose host side carries DOCKER_ADDR (created before the stacks start, so that they can
    listen on it; traffic to a local address still goes through the loopback device), the CA in
    /etc/docker/certs.d/ADDR:PORT/ for each stack, and a private Docker daemon (vfs storage, no bridge, no
    iptables or sysctl changes) with its state and socket in the work directory."""

    def __init__(self, work):
        self.dir = os.path.join(work, "docker")
        os.makedirs(self.dir, exist_ok=True)
        self.veth = f"bbd{os.getpid()}"
        self.veth_up = False
        self.certs_d = []
        self.proc = None
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{self.dir}/docker.sock",
                        DOCKER_CONFIG=os.path.join(self.dir, "client"))

    def add_address(self):
        run(["ip", "link", "add", self.veth + "h", "type", "veth", "peer", "name", self.veth + "n"])
        self.veth_up = True
        run(["ip", "addr", "add", f"{DOCKER_ADDR}/30", "dev", self.veth + "h"])
        run(["ip", "link", "set", self.veth + "h", "up"])

    def start_daemon(self):
        d = self.dir
        with open(os.path.join(d, "daemon.json"), "w") as f:
            f.write("{}\n")  # not the host's /etc/docker/daemon.json
        self.log = open(os.path.join(d, "dockerd.log"), "w")
        self.proc = subprocess.Popen(
            ["dockerd", "--config-file", os.path.join(d, "daemon.json"), "--data-root", os.path.join(d, "root"),
             "--exec-root", os.path.join(d, "exec"), "--pidfile", os.path.join(d, "dockerd.pid"),
             "--host", self.env["DOCKER_HOST"], "--storage-driver", "vfs", "--bridge", "none",
             "--iptables=false", "--ip-forward=false", "--ip-masq=false"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"dockerd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if run(["docker", "version"], check=False, timeout=30, env=self.env).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"dockerd does not answer within 60 s:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self):
        try:
            with open(os.path.join(self.dir, "dockerd.log")) as f:
                return "".join(f.readlines()[-20:])
        except OSError:
            return ""

    def docker(self, *args, timeout=3600):
        p = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=self.env)
        if p.returncode != 0:
            raise BenchError(f"docker {' '.join(args)[:200]} failed ({p.returncode}):\n{p.stdout[-1000:]}"
                             f"{p.stderr[-1000:]}\ndockerd log:\n{self.log_tail()}")
        return p.stdout

    def trust(self, host, cacert):
        d = os.path.join("/etc/docker/certs.d", host)
        os.makedirs(d, exist_ok=True)
        self.certs_d.append(d)
        shutil.copy(cacert, os.path.join(d, "ca.crt"))

    def login(self, host):
        p = subprocess.run(["docker", "login", host, "-u", USER, "--password-stdin"], input=PASSWORD,
                           capture_output=True, text=True, timeout=120, env=self.env)
        if p.returncode != 0:
            raise BenchError(f"docker login {host} failed:\n{p.stdout[-500:]}{p.stderr[-1000:]}")

    def cpu(self):
        """{(pid, name): CPU seconds} of the daemon (with its exited children) and its live children
        (containerd)."""
        out = {(self.proc.pid, "dockerd"): cpu_seconds(self.proc.pid, reaped=True)}
        for c in children_of(self.proc.pid):
            try:
                with open(f"/proc/{c}/comm") as f:
                    name = f.read().strip()
            except OSError:
                continue
            out[(c, name)] = cpu_seconds(c)
        return out

    def stop_daemon(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        # its containerd: stopped by dockerd, unless dockerd has to be killed
        kids = [(c, start_time(c)) for c in children_of(self.proc.pid)]
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()
        for c, t in kids:
            if t is not None and start_time(c) == t:  # still the same process
                try:
                    os.kill(c, signal.SIGKILL)
                except OSError:
                    pass

    def close(self):
        self.stop_daemon()
        # dockerd mounts its data root on itself and unmounts it when it stops; not when it was killed
        with open("/proc/mounts") as f:
            mounts = [ln.split()[1] for ln in f]
        for m in sorted((m for m in mounts if m == self.dir or m.startswith(self.dir + "/")), reverse=True):
            run(["umount", m], check=False)
        for d in self.certs_d:
            shutil.rmtree(d, ignore_errors=True)
        self.certs_d = []
        if self.veth_up:
            run(["ip", "link", "del", self.veth + "h"], check=False)
            self.veth_up = False


def layer_tar_into(out, base, size):
    """Writes to out a tar holding one file, layer.bin: size bytes of base, the first 32 replaced by a fresh
    nonce (a new layer digest per run, so that Docker cannot skip or mount a layer the registry already has)."""
    ti = tarfile.TarInfo("layer.bin")
    ti.size = size
    ti.mode = 0o644
    ti.mtime = 0
    out.write(ti.tobuf(format=tarfile.USTAR_FORMAT))
    out.write(os.urandom(32))
    with open(base, "rb") as f:
        f.seek(32)
        left = size - 32
        while left > 0:
            b = f.read(min(left, 4 * MiB))
            if not b:
                raise BenchError(f"{base} is shorter than {size} bytes")
            out.write(b)
            left -= len(b)
    out.write(b"\0" * ((-size) % 512 + 1024))


def measure(ctx):
    results, data, berth, nginx, stacks, runs, size = (ctx.results, ctx.data, ctx.berth, ctx.nginx, ctx.stacks,
                                                       ctx.runs, ctx.size)
    dk, certs, bin_dir = ctx.dk, ctx.certs, ctx.args.bin_dir
    step(f"docker push and pull (private Docker daemon, vfs storage), one {human_size(size)} layer, "
         f"{runs} alternating runs, both stacks on {DOCKER_ADDR} with verified TLS")
    dk.start_daemon()
    # berth-proxy listens on one address: berth's front door for this section is a second berth-proxy before
    # the same registry, with the same certificate and htpasswd, stopped at the end of the section
    bport = free_port(DOCKER_ADDR)
    env = dict(os.environ, BERTH_LISTEN=f"{DOCKER_ADDR}:{bport}",
               BERTH_UPSTREAM=f"http://127.0.0.1:{berth.registry_port}", BERTH_CERTS_DIR=certs,
               BERTH_HTPASSWD=berth.htpasswd)
    berth.start("berth-proxy-docker", [os.path.join(bin_dir, "berth-proxy"), "serve"], env=env)
    hosts = {"berth": f"{DOCKER_ADDR}:{bport}", "nginx": f"{DOCKER_ADDR}:{nginx.port}"}
    for st in stacks:
        wait_ready(st, base=f"https://{hosts[st.name]}")
        dk.trust(hosts[st.name], st.cacert)
        dk.login(hosts[st.name])
    log(f"dockerd pid {dk.proc.pid}; berth on {hosts['berth']}, nginx + registry:2 on {hosts['nginx']}; "
        "logged in to both")
    base = os.path.join(data, "big.bin")
    if not os.path.exists(base):
        random_file(base, size)
    dock = {s.name: {"push": [], "pull": []} for s in stacks}
    dock_cpu = {s.name: {"push": [], "pull": []} for s in stacks}

    def timed(st, *args):
        """docker ARGS, timed, with the CPU seconds of the stack's processes, the daemon and the client."""
        c0, u0 = {**stack_cpu(st), **dk.cpu()}, children_cpu()
        t = time.monotonic()
        out = dk.docker(*args)
        dt = time.monotonic() - t
        cpu = cpu_delta(c0, {**stack_cpu(st), **dk.cpu()})
        cpu["docker (client)"] = round(children_cpu() - u0, 3)
        return out, dt, cpu

    for i in range(runs):
        # a fresh layer per run (new nonce): Docker skips or mounts layers a registry already has
        src = f"berth-bench/docker:run{i}"
        imp_log = os.path.join(dk.dir, "import.log")
        with open(imp_log, "w") as lf:
            imp = subprocess.Popen(["docker", "import", "-", src], stdin=subprocess.PIPE, stdout=lf,
                                   stderr=subprocess.STDOUT, env=dk.env)
        try:
            layer_tar_into(imp.stdin, base, size)
            imp.stdin.close()
        except BrokenPipeError:
            pass
        if imp.wait(timeout=3600) != 0:
            with open(imp_log) as lf:
                raise BenchError(f"docker import failed:\n{lf.read()[-1000:]}")
        image_id = dk.docker("image", "inspect", "-f", "{{.Id}}", src).strip()
        refs = {st.name: f"{hosts[st.name]}/docker/run{i}:v1" for st in stacks}
        for st in alternate(stacks, i):
            dk.docker("tag", src, refs[st.name])
            out, dt, cpu = timed(st, "push", refs[st.name])
            if "Pushed" not in out or "Mounted from" in out or "already exists" in out:
                raise BenchError(f"{st.label}: docker push did not upload the layer:\n{out[-1000:]}")
            dock[st.name]["push"].append(dt)
            dock_cpu[st.name]["push"].append(cpu)
            st.check_alive()
        # no local copy of the layer may remain for the pulls
        dk.docker("rmi", src, *refs.values())
        if run(["docker", "image", "inspect", image_id], check=False, env=dk.env).returncode == 0:
            raise BenchError(f"image {image_id} still present after docker rmi")
        for st in alternate(stacks, i):
            out, dt, cpu = timed(st, "pull", refs[st.name])
            if "Pull complete" not in out or "Already exists" in out:
                raise BenchError(f"{st.label}: docker pull did not download the layer:\n{out[-1000:]}")
            got = dk.docker("image", "inspect", "-f", "{{.Id}}", refs[st.name]).strip()
            if got != image_id:
                raise BenchError(f"{st.label}: pulled image {got}, pushed {image_id}")
            dk.docker("rmi", refs[st.name])
            dock[st.name]["pull"].append(dt)
            dock_cpu[st.name]["pull"].append(cpu)
            st.check_alive()
        for st in stacks:
            log(f"run {i + 1} {st.label}: push {size / dock[st.name]['push'][-1] / 1e6:.0f} MB/s "
                f"(CPU s: {dock_cpu[st.name]['push'][-1]}), pull {size / dock[st.name]['pull'][-1] / 1e6:.0f} "
                f"MB/s (CPU s: {dock_cpu[st.name]['pull'][-1]})")
    berth.stop_role("berth-proxy-docker")
    dk.stop_daemon()
    results["docker"] = {st: {k: {"seconds": [round(x, 3) for x in v], "MBps": round(size / median(v) / 1e6, 1)}
                              for k, v in d.items()} for st, d in dock.items()}
    # CPU seconds per GiB of layer (median run) of every process involved: where the time goes
    for st, d in dock_cpu.items():
        for k, runs_ in d.items():
            names = {n for r_ in runs_ for n in r_}
            results["docker"][st][k]["cpu_s_per_GiB"] = {
                n: round(median([r_.get(n, 0.0) for r_ in runs_]) * GiB / size, 2) for n in sorted(names)}
    results["meta"]["docker"] = {"address": DOCKER_ADDR, "storage_driver": "vfs",
                                 "layer": "one file of random bytes in a tar, docker import; gzip by dockerd",
                                 # dockerd decompresses pulls with unpigz when it is installed
                                 "unpigz": bool(shutil.which("unpigz"))}

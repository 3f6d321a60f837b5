#!/usr/bin/env python3
"""Pushes an OCI artifact with oras-py (PyPI `oras`) the way that client does it, then fetches it back.

oras-py with its `basic` auth backend sends every request WITHOUT credentials first and repeats it with
`Authorization: Basic` only after a 401. So its blob uploads are monolithic `PUT ...?digest=` requests whose body
(here 3 MiB of random bytes, then the 2-byte empty config `{}`) goes out before the client knows that the registry
wants credentials. The registry (or its proxy) must let the client read the whole 401 (status, `WWW-Authenticate`,
JSON body) and then accept the retry, on the same connection if it kept it open: a connection reset instead of the
401 fails this script.

Checks, each an assertion (exit 1 with a message on the first one that fails):
  - every 401 carries a Basic challenge and a JSON body with the UNAUTHORIZED code (no body for HEAD);
  - both blob PUTs were answered 401 without credentials first, then 201 with them;
  - a 401 that did not say `Connection: close` is followed by the retry on the same connection;
  - the manifest (artifactType, config of mediaType application/vnd.oci.empty.v1+json) is stored: GET by tag
    returns it with its digest, and the 3 MiB layer comes back byte for byte.

Usage: oci-artifact-push.py HOST:PORT REPO TAG CAFILE USER   (password in the environment variable BERTH_PASSWORD)
"""
import hashlib
import json
import os
import sys
import tempfile

import oras.defaults
import oras.oci
import oras.provider
import oras.version
import requests

EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
ARTIFACT_TYPE = "application/vnd.berth.e2e.artifact.v1"
LAYER_MEDIA_TYPE = "application/vnd.berth.e2e.blob.v1"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
LAYER_SIZE = 3 * 1024 * 1024

# oras-py retries a request that raised (a reset connection, say) five times, sleeping 3 s + 3**n s between tries
# (about two minutes in all) and repeating the same request without credentials. Unwrap that decorator so that a
# connection error fails at once, with its own message.
if not hasattr(oras.provider.Registry.do_request, "__wrapped__"):
    sys.exit("FAILED: this oras-py has no retry decorator on Registry.do_request; scripts/install-test-deps.sh pins 0.2.43")
oras.provider.Registry.do_request = oras.provider.Registry.do_request.__wrapped__


def fail(msg):
    print(f"FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 6 or "BERTH_PASSWORD" not in os.environ:
        fail(__doc__.strip().splitlines()[-1])
    hostport, repo, tag, cafile, user = sys.argv[1:]
    password = os.environ["BERTH_PASSWORD"]

    client = oras.provider.Registry(hostname=hostport, tls_verify=cafile, auth_backend="basic")
    client.auth.set_basic_auth(user, password)
    target = f"{hostport}/{repo}:{tag}"
    container = client.get_container(target)

    # Every response the client gets, in order, with the local port of the connection that carried it.
    seen = []

    def record(r, *args, **kwargs):
        sock = getattr(getattr(r.raw, "_connection", None), "sock", None)
        port = sock.getsockname()[1] if sock is not None else None
        body = r.request.body
        entry = {
            "method": r.request.method,
            "path": r.request.path_url.split("?")[0],
            "auth": "Authorization" in r.request.headers,
            "body": len(body) if body is not None else 0,
            "status": r.status_code,
            "close": r.headers.get("Connection", "").lower() == "close",
            "port": port,
        }
        if r.status_code == 401:
            challenge = r.headers.get("WWW-Authenticate", "")
            if not challenge.lower().startswith("basic "):
                fail(f"401 to {entry['method']} {entry['path']} without a Basic challenge: {challenge!r}")
            if r.request.method == "HEAD":
                if r.content:
                    fail(f"401 to HEAD {entry['path']} with a body: {r.content[:200]!r}")
                seen.append(entry)
                return
            try:
                codes = [e.get("code") for e in json.loads(r.content)["errors"]]
            except Exception as e:  # noqa: BLE001 - any shape other than the spec's is a failure
                fail(f"401 to {entry['method']} {entry['path']}: body is not a registry error ({e}): {r.content[:200]!r}")
            if "UNAUTHORIZED" not in codes:
                fail(f"401 to {entry['method']} {entry['path']} with error codes {codes}")
        seen.append(entry)

    client.session.hooks["response"].append(record)

    def log():
        for e in seen:
            print(
                f"      {e['method']:<4} {e['path']:<60.60} body={e['body']:<8} auth={'yes' if e['auth'] else 'no ':<3}"
                f" -> {e['status']}{' (Connection: close)' if e['close'] else ''} port={e['port']}"
            )

    def step(what, fn):
        try:
            return fn()
        except requests.exceptions.ConnectionError as e:
            log()
            fail(f"{what}: the connection failed before the answer was read (reset instead of a 401?): {e}")

    with tempfile.TemporaryDirectory() as tmp:
        layer_path = os.path.join(tmp, "payload.bin")
        payload = os.urandom(LAYER_SIZE)
        with open(layer_path, "wb") as f:
            f.write(payload)
        config_path = os.path.join(tmp, "config.json")
        with open(config_path, "wb") as f:
            f.write(b"{}")

        layer = oras.oci.NewLayer(layer_path, media_type=LAYER_MEDIA_TYPE)
        layer["annotations"] = {oras.defaults.annotation_title: "payload.bin"}
        config = {"mediaType": EMPTY_MEDIA_TYPE, "size": 2, "digest": oras.defaults.blank_config_hash}

        for what, path, desc in (("3 MiB layer", layer_path, layer), ("2-byte empty config", config_path, config)):
            r = step(f"upload of the {what}", lambda: client.upload_blob(path, container, desc))
            if r.status_code == 200:
                fail(f"the {what} is already in {repo} (oras-py then skips its upload): give a fresh repository")
            if r.status_code != 201:
                log()
                fail(f"upload of the {what}: {r.status_code} {r.text[:200]}")

        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "artifactType": ARTIFACT_TYPE,
            "config": config,
            "layers": [layer],
            "annotations": {"org.opencontainers.image.title": "berth e2e artifact"},
        }
        r = step("manifest push", lambda: client.upload_manifest(manifest, container))
        if r.status_code != 201:
            log()
            fail(f"manifest push: {r.status_code} {r.text[:200]}")
        pushed_digest = r.headers.get("Docker-Content-Digest", "")

        url = f"https://{container.manifest_url()}"
        r = step("manifest fetch", lambda: client.do_request(url, "GET", headers={"Accept": MANIFEST_MEDIA_TYPE}))
        if r.status_code != 200:
            log()
            fail(f"manifest fetch: {r.status_code} {r.text[:200]}")
        got = r.json()
        digest = "sha256:" + hashlib.sha256(r.content).hexdigest()
        if got != manifest:
            fail(f"the manifest fetched back differs: {got}")
        if r.headers.get("Docker-Content-Digest") != digest or pushed_digest != digest:
            fail(f"manifest digest: pushed {pushed_digest}, header {r.headers.get('Docker-Content-Digest')}, body {digest}")
        if got.get("artifactType") != ARTIFACT_TYPE or got["config"]["mediaType"] != EMPTY_MEDIA_TYPE:
            fail(f"artifactType or config mediaType lost: {got}")

        r = step("layer fetch", lambda: client.get_blob(container, layer["digest"]))
        if r.status_code != 200 or r.content != payload:
            fail(f"layer fetch: {r.status_code}, {len(r.content)} bytes, equal={r.content == payload}")

    log()
    # Both blob PUTs went out with their body and no credentials, got the complete 401, then succeeded.
    for size in (LAYER_SIZE, 2):
        puts = [e for e in seen if e["method"] == "PUT" and "/blobs/uploads/" in e["path"] and e["body"] == size]
        if [(e["auth"], e["status"]) for e in puts] != [(False, 401), (True, 201)]:
            fail(f"the PUT of {size} bytes went: {[(e['auth'], e['status']) for e in puts]}, expected 401 then 201")
    # A connection the server did not announce it would close carries the retry.
    for prev, nxt in zip(seen, seen[1:]):
        if prev["status"] == 401 and not prev["close"] and None not in (prev["port"], nxt["port"]):
            if prev["port"] != nxt["port"]:
                fail(f"after the 401 to {prev['method']} {prev['path']} (no Connection: close) the retry needed a new connection")
    closes = sum(1 for e in seen if e["status"] == 401 and e["close"])
    print(
        f"    oras-py {oras.version.__version__}: {sum(1 for e in seen if e['status'] == 401)} requests sent without"
        f" credentials got a complete 401 ({closes} with Connection: close), retries succeeded; artifact {digest}"
        f" with artifactType {ARTIFACT_TYPE} fetched back, 3 MiB layer intact"
    )


if __name__ == "__main__":
    main()

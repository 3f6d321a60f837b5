#!/usr/bin/env bash
# End-to-end suite of the whole stack with real clients (run by scripts/test.sh, as root):
#   1. the Docker daemon through berth-proxy with verified TLS, at a non-loopback address in a network namespace
#      (Docker skips certificate checks on 127.0.0.0/8): refused without the CA, then install-ca.sh, login with
#      a wrong and a right password, push an image with two random layers, remove, pull, same image id, search,
#      logout; a certificate for www.paypal.com signed with the dev CA's key is refused by Docker, curl,
#      openssl verify and Chromium (the name constraints of the CA and its issuer);
#   2. skopeo through the proxy with --dest-cert-dir: copy in and out, inspect, list-tags;
#   3. podman (its own storage and configuration) with --cert-dir: refused without the CA, then push an imported
#      image, rmi, pull: same image id and manifest digest;
#   4. containerd's ctr, with a containerd of its own, through a hosts.toml that names the CA: refused without it,
#      then pull what podman pushed, tag, push, pull the new tag again (skopeo inspect shows the same digest);
#      4b. access rules on a second proxy (BERTH_ACL): docker login and push through the token challenge, a push
#      to a read-only repository prints "denied", and with no credentials at all the Docker daemon, skopeo and
#      ctr pull a public repository while a private one is refused; the audit log has the refusal;
#   5. oras-py (scripts/oci-artifact-push.py), an OCI artifact client that sends every request without
#      credentials first: blob PUTs with bodies of 3 MiB and 2 bytes get a complete 401 and then succeed with
#      Basic credentials; an artifact manifest (artifactType, empty config) is pushed and fetched back;
#   6. docker-compose up of the real compose.yml (images built here, nothing pulled): the registry's health
#      check (/debug/health) passes, login, push, pull, the proxy's health check (/_berth/ready) passes, both
#      /metrics count the push (promtool check metrics); down;
#      the data survives a second up;
#   7. scripts/start.sh: login and push with skopeo, SIGINT, both processes gone;
#   8. pull-through mirrors: the Docker daemon, started with --registry-mirror naming a berth-proxy on loopback
#      in front of a berth-registry with REGISTRY_PROXY_REMOTEURL, pulls e2e/mirrored:1 (docker.io, out of reach
#      here), an image that exists only on the remote (a plain berth-registry), anonymously: same image id, the
#      mirror's storage holds the tag and every blob, and a push through the mirror gets 405 UNSUPPORTED;
#      8b. containerd's ctr pulls docker.io/e2e/mirrored:1 through a hosts.toml mirror, so with ?ns=docker.io, from
#      a registry whose [[mirrors]] entry (prefix hub, namespace docker.io) is set in a configuration file, behind
#      a proxy whose access rules open only docker.io/** to anonymous pulls: same manifest, stored as
#      hub/e2e/mirrored:1; the same repository asked for without ?ns= is refused.
# Steps 3 to 5 hide the system's trust store from the client, so only the CA given to the client itself counts.
# It starts its own Docker daemon and containerd and stops exactly what it started.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$BERTH_ROOT"

BIN=${BERTH_BIN_DIR:-target/release}
[ -x "$BIN/berth-proxy" ] && [ -x "$BIN/berth-registry" ] || die "build first: cargo build --release --bins (or set BERTH_BIN_DIR)"
WORK=$(mktemp -d /tmp/berth-e2e.XXXXXX)
NS=berth-e2e-$$
VETH_H=bth$$h
VETH_N=bth$$n
ADDR=10.231.0.2
HOSTPORT=$ADDR:5043
ACL_HOSTPORT=$ADDR:5045
PIDS=()
COMPOSE_DIR=
CA_INSTALLED=
# skopeo and podman running as root keep a blob-info cache in /var/lib/containers/cache; remove it if this run made it.
[ -e /var/lib/containers ] && CONTAINERS_CACHE_MADE= || CONTAINERS_CACHE_MADE=1

cleanup() {
  local rc=$?
  set +e
  if [ -n "$COMPOSE_DIR" ]; then
    (cd "$COMPOSE_DIR" && docker-compose -p "berthe2e$$" down -t 5 >/dev/null 2>&1)
  fi
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [ -n "$CA_INSTALLED" ]; then
    rm -rf "/etc/docker/certs.d/$HOSTPORT" "/etc/docker/certs.d/$ADDR:5044" "/etc/docker/certs.d/$ACL_HOSTPORT"
    rm -f /usr/local/share/ca-certificates/docker-dev-cert/devdockerCA.crt
    rmdir /usr/local/share/ca-certificates/docker-dev-cert 2>/dev/null
    update-ca-certificates --fresh >/dev/null 2>&1
  fi
  ip netns del "$NS" 2>/dev/null
  ip link del "$VETH_H" 2>/dev/null
  stop_dockerd
  [ -n "$CONTAINERS_CACHE_MADE" ] && rm -rf /var/lib/containers
  rm -rf "$WORK"
  [ $rc = 0 ] || printf 'e2e: FAILED (exit %s); see the step above\n' "$rc" >&2
}
trap cleanup EXIT

PASSWORD=$(python3 -c 'import secrets; print(secrets.token_urlsafe(12))')
export DOCKER_CONFIG=$WORK/docker-client

# Step 8's berth-proxy in front of a pull-through registry: the daemon has it as its registry mirror from the start
# (a mirror that does not answer yet changes nothing for the other steps, which pull nothing from docker.io).
MIRROR_PORT=$(free_port)
step "e2e: private Docker daemon (registry mirror https://127.0.0.1:$MIRROR_PORT)"
start_dockerd "$WORK/docker" --registry-mirror "https://127.0.0.1:$MIRROR_PORT"
[ "$(docker info -f '{{range .RegistryConfig.Mirrors}}{{.}}{{end}}')" = "https://127.0.0.1:$MIRROR_PORT/" ] ||
  die "the Docker daemon does not list its registry mirror: $(docker info -f '{{json .RegistryConfig.Mirrors}}')"
make_image berth-e2e:src "$WORK/ctx"
SRC_ID=$(docker image inspect -f '{{.Id}}' berth-e2e:src)
info "test image $SRC_ID with $(docker image inspect -f '{{len .RootFS.Layers}}' berth-e2e:src) layers"

# ---------------------------------------------------------------------------------------------------------
step "e2e 1: registry and proxy in network namespace $NS, proxy on $HOSTPORT"
ip netns add "$NS"
ip link add "$VETH_H" type veth peer name "$VETH_N"
ip link set "$VETH_N" netns "$NS"
ip addr add 10.231.0.1/30 dev "$VETH_H"
ip link set "$VETH_H" up
ip netns exec "$NS" ip addr add "$ADDR/30" dev "$VETH_N"
ip netns exec "$NS" ip link set "$VETH_N" up
ip netns exec "$NS" ip link set lo up

mkdir -p "$WORK/ns/certs" "$WORK/ns/data"
"$BIN/berth-proxy" ca init --host berth-e2e.test --ip "$ADDR" --dir "$WORK/ns/certs" >/dev/null
# The htpasswd file is made by Apache's htpasswd, as users of the classic setup have it.
htpasswd -Bbc "$WORK/ns/htpasswd" admin "$PASSWORD" >/dev/null 2>&1
ip netns exec "$NS" env REGISTRY_HTTP_ADDR=127.0.0.1:5000 REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="$WORK/ns/data" \
  "$BIN/berth-registry" >"$WORK/ns/registry.out" 2>"$WORK/ns/registry.log" &
PIDS+=($!)
ip netns exec "$NS" env BERTH_LISTEN="$HOSTPORT" BERTH_UPSTREAM=http://127.0.0.1:5000 BERTH_CERTS_DIR="$WORK/ns/certs" \
  BERTH_HTPASSWD="$WORK/ns/htpasswd" "$BIN/berth-proxy" serve >"$WORK/ns/proxy.log" 2>&1 &
PIDS+=($!)
wait_until 30 curl -sf --cacert "$WORK/ns/certs/devdockerCA.crt" "https://$HOSTPORT/v1/_ping" ||
  { tail -5 "$WORK/ns/proxy.log" "$WORK/ns/registry.log"; die "proxy not reachable at $HOSTPORT"; }
info "curl with --cacert: ok"
rc=0
curl -s -o /dev/null "https://$HOSTPORT/v1/_ping" || rc=$?
[ "$rc" = 60 ] || die "curl without the CA should fail with exit 60 (certificate), got $rc"
info "curl without the CA: refused (exit 60)"

step "e2e 1: without the CA, docker login is refused with a certificate error"
if printf '%s' "$PASSWORD" | docker login "$HOSTPORT" -u admin --password-stdin >"$WORK/login0.log" 2>&1; then
  die "docker login succeeded without the CA installed"
fi
grep -qiE 'x509|certificate' "$WORK/login0.log" || { cat "$WORK/login0.log"; die "login failed, but not on the certificate"; }
info "refused: $(grep -ioE 'x509: [^"]*' "$WORK/login0.log" | head -1)"

step "e2e 1: scripts/install-ca.sh $HOSTPORT"
CA_INSTALLED=1
scripts/install-ca.sh "$HOSTPORT" "$WORK/ns/certs/devdockerCA.crt" | sed 's/^/    /'
scripts/install-ca.sh "$HOSTPORT" "$WORK/ns/certs/devdockerCA.crt" >/dev/null  # idempotent
[ -f "/etc/docker/certs.d/$HOSTPORT/ca.crt" ] || die "install-ca.sh did not write certs.d"

step "e2e 1: docker login with a wrong password fails, with the right one succeeds"
if printf 'wrong-%s' "$PASSWORD" | docker login "$HOSTPORT" -u admin --password-stdin >"$WORK/login1.log" 2>&1; then
  die "docker login succeeded with a wrong password"
fi
grep -qiE 'unauthorized|401' "$WORK/login1.log" || { cat "$WORK/login1.log"; die "wrong password failed for another reason"; }
printf '%s' "$PASSWORD" | docker login "$HOSTPORT" -u admin --password-stdin >"$WORK/login2.log" 2>&1 ||
  { cat "$WORK/login2.log"; die "docker login failed"; }
info "login ok"

step "e2e 1: docker push, rmi, pull $HOSTPORT/e2e/webapp:1"
docker tag berth-e2e:src "$HOSTPORT/e2e/webapp:1"
docker push "$HOSTPORT/e2e/webapp:1" >"$WORK/push1.log" 2>&1 || { cat "$WORK/push1.log"; die "docker push failed"; }
docker rmi "$HOSTPORT/e2e/webapp:1" >/dev/null
docker pull "$HOSTPORT/e2e/webapp:1" >"$WORK/pull1.log" 2>&1 || { cat "$WORK/pull1.log"; die "docker pull failed"; }
[ "$(docker image inspect -f '{{.Id}}' "$HOSTPORT/e2e/webapp:1")" = "$SRC_ID" ] || die "pulled image id differs"
info "pulled image id matches $SRC_ID"

step "e2e 1: docker search $HOSTPORT/webapp"
docker search "$HOSTPORT/webapp" >"$WORK/search.log" 2>&1 || { cat "$WORK/search.log"; die "docker search failed"; }
grep -q '^e2e/webapp ' "$WORK/search.log" || { cat "$WORK/search.log"; die "docker search did not find e2e/webapp"; }
info "found e2e/webapp"

step "e2e 1: docker logout"
docker logout "$HOSTPORT" >/dev/null
if docker pull "$HOSTPORT/e2e/webapp:1" >"$WORK/pull-anon.log" 2>&1; then
  die "pull without credentials succeeded after logout"
fi
info "after logout, pulls are refused"

step "e2e 1: the CA's name constraints: a certificate for another name, signed with the CA's own key, is refused"
# What someone who took devdockerCA.key could make: a leaf for www.paypal.com (and the proxy's address, so Docker
# reaches it), served by a second proxy on port 5044. Docker (Go's x509), curl and openssl verify must refuse it.
F=$WORK/forged
FORGED_HOSTPORT=$ADDR:5044
mkdir -p "$F/certs"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$F/certs/domain.key" \
  -subj "/CN=www.paypal.com" -out "$F/leaf.csr" >/dev/null 2>&1
printf 'subjectAltName=DNS:www.paypal.com,IP:%s\nextendedKeyUsage=serverAuth\n' "$ADDR" >"$F/ext"
# devdockerCA.key is the key of the issuer (devdockerCA-issuer.crt), the only signing key berth keeps.
openssl x509 -req -in "$F/leaf.csr" -CA "$WORK/ns/certs/devdockerCA-issuer.crt" -CAkey "$WORK/ns/certs/devdockerCA.key" \
  -set_serial 4242 -days 30 -extfile "$F/ext" -out "$F/leaf.crt" >/dev/null 2>&1 || die "openssl could not sign the test leaf"
cat "$F/leaf.crt" "$WORK/ns/certs/devdockerCA-issuer.crt" "$WORK/ns/certs/devdockerCA.crt" >"$F/certs/domain.crt"
if openssl verify -CAfile "$WORK/ns/certs/devdockerCA.crt" -untrusted "$WORK/ns/certs/devdockerCA-issuer.crt" \
  -verify_hostname www.paypal.com "$F/leaf.crt" >"$F/verify.log" 2>&1; then
  die "openssl verify accepted a www.paypal.com certificate from the dev CA"
fi
grep -q 'permitted subtree violation' "$F/verify.log" || { cat "$F/verify.log"; die "openssl refused the leaf, but not on the name constraints"; }
info "openssl verify: permitted subtree violation"
ip netns exec "$NS" env BERTH_LISTEN="$FORGED_HOSTPORT" BERTH_UPSTREAM=http://127.0.0.1:5000 BERTH_CERTS_DIR="$F/certs" \
  BERTH_HTPASSWD="$WORK/ns/htpasswd" "$BIN/berth-proxy" serve >"$F/proxy.log" 2>&1 &
FORGED_PID=$!
PIDS+=("$FORGED_PID")
wait_until 30 curl -skf "https://$FORGED_HOSTPORT/v1/_ping" || { tail -5 "$F/proxy.log"; die "second proxy not reachable"; }
rc=0
curl -s -o /dev/null --cacert "$WORK/ns/certs/devdockerCA.crt" "https://$FORGED_HOSTPORT/v1/_ping" || rc=$?
[ "$rc" = 60 ] || die "curl with the dev CA accepted (or failed otherwise on, exit $rc) a www.paypal.com certificate"
info "curl --cacert devdockerCA.crt: refused (exit 60)"
mkdir -p "/etc/docker/certs.d/$FORGED_HOSTPORT"
cp "$WORK/ns/certs/devdockerCA.crt" "/etc/docker/certs.d/$FORGED_HOSTPORT/ca.crt"
rc=0
printf '%s' "$PASSWORD" | docker login "$FORGED_HOSTPORT" -u admin --password-stdin >"$F/login.log" 2>&1 || rc=$?
rm -rf "/etc/docker/certs.d/$FORGED_HOSTPORT"
[ "$rc" != 0 ] || die "docker login accepted a www.paypal.com certificate from the dev CA"
grep -qiE 'x509|certificate' "$F/login.log" || { cat "$F/login.log"; die "docker login failed, but not on the certificate"; }
info "docker login: refused ($(grep -ioE 'x509: [^"]*' "$F/login.log" | head -1))"
# Chromium, with the dev CA trusted in its NSS store (a HOME of its own): the allowed name loads, the forged one
# is refused. (It does not apply a trusted root's own name constraints; the issuer's, it does.)
CH=$WORK/chromium
mkdir -p "$CH/home/.pki/nssdb"
certutil -d "sql:$CH/home/.pki/nssdb" -N --empty-password
certutil -d "sql:$CH/home/.pki/nssdb" -A -n berth-dev-ca -t "C,," -i "$WORK/ns/certs/devdockerCA.crt"
chromium_get() {
  HOME=$CH/home timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync --user-data-dir="$CH/profile-$1" \
    --host-resolver-rules="MAP berth-e2e.test $ADDR, MAP www.paypal.com $ADDR" --dump-dom "$2" 2>"$CH/$1.err"
}
chromium_get allowed "https://berth-e2e.test:5043/_berth/health" | grep -q '"status":"ok"' ||
  { tail -5 "$CH/allowed.err"; die "Chromium did not load https://berth-e2e.test:5043/ with the dev CA trusted"; }
if chromium_get forged "https://www.paypal.com:5044/_berth/health" | grep -q '"status":"ok"'; then
  die "Chromium accepted a www.paypal.com certificate from the dev CA"
fi
grep -qE 'ERR_CERT_[A-Z_]+' "$CH/forged.err" || { tail -5 "$CH/forged.err"; die "Chromium failed, but not on the certificate"; }
info "Chromium: berth-e2e.test loads, www.paypal.com refused ($(grep -oE 'ERR_CERT_[A-Z_]+' "$CH/forged.err" | head -1))"
stop_pid "$FORGED_PID"
KEEP_PIDS=()
for pid in "${PIDS[@]}"; do [ "$pid" = "$FORGED_PID" ] || KEEP_PIDS+=("$pid"); done
PIDS=("${KEEP_PIDS[@]}")

# ---------------------------------------------------------------------------------------------------------
step "e2e 2: skopeo through the proxy with --dest-cert-dir"
mkdir -p "$WORK/skopeo-certs"
cp "$WORK/ns/certs/devdockerCA.crt" "$WORK/skopeo-certs/ca.crt"
SK=(skopeo --insecure-policy)
"${SK[@]}" copy --src-daemon-host "$DOCKER_HOST" --dest-creds "admin:$PASSWORD" --dest-cert-dir "$WORK/skopeo-certs" \
  docker-daemon:berth-e2e:src "docker://$HOSTPORT/e2e/skopeo:1" >"$WORK/sk1.log" 2>&1 || { cat "$WORK/sk1.log"; die "skopeo copy in failed"; }
"${SK[@]}" copy --src-creds "admin:$PASSWORD" --src-cert-dir "$WORK/skopeo-certs" \
  "docker://$HOSTPORT/e2e/skopeo:1" "oci:$WORK/oci-out:1" >"$WORK/sk2.log" 2>&1 || { cat "$WORK/sk2.log"; die "skopeo copy out failed"; }
LAYERS=$("${SK[@]}" inspect --creds "admin:$PASSWORD" --cert-dir "$WORK/skopeo-certs" "docker://$HOSTPORT/e2e/skopeo:1" |
  python3 -c 'import json,sys; print(len(json.load(sys.stdin)["Layers"]))')
[ "$LAYERS" = 2 ] || die "skopeo inspect shows $LAYERS layers, not 2"
TAGS=$("${SK[@]}" list-tags --creds "admin:$PASSWORD" --cert-dir "$WORK/skopeo-certs" "docker://$HOSTPORT/e2e/skopeo" |
  python3 -c 'import json,sys; print(",".join(json.load(sys.stdin)["Tags"]))')
[ "$TAGS" = 1 ] || die "skopeo list-tags: $TAGS"
info "copy in and out, inspect (2 layers), list-tags (1): ok"

# ---------------------------------------------------------------------------------------------------------
# Steps 3 to 5 hide the system's trust store from the client (install-ca.sh put the dev CA there in step 1), so
# that only the CA handed to the client itself can make it trust the proxy.
mkdir -p "$WORK/no-trust"
: >"$WORK/no-trust/empty.pem"
NO_SYSTEM_TRUST=(env SSL_CERT_FILE="$WORK/no-trust/empty.pem" SSL_CERT_DIR="$WORK/no-trust")

step "e2e 3: podman through the proxy with --cert-dir (its own storage and configuration)"
P=$WORK/podman
mkdir -p "$P/certs" "$P/rootfs/etc" "$P/tmp"
cp "$WORK/ns/certs/devdockerCA.crt" "$P/certs/ca.crt"
# Everything podman keeps goes under $P: CNI networks (netavark would create /run/containers/networks), file locks
# (not /dev/shm/libpod_lock), no event log, and its copy buffer.
cat >"$P/containers.conf" <<EOF
[network]
network_backend = "cni"
network_config_dir = "$P/networks"
[engine]
events_logger = "none"
lock_type = "file"
image_copy_tmp_dir = "$P/tmp"
EOF
PM=(env CONTAINERS_CONF="$P/containers.conf" "${NO_SYSTEM_TRUST[@]}"
  podman --root "$P/root" --runroot "$P/run" --tmpdir "$P/libpod" --storage-driver vfs)
head -c 1500000 /dev/urandom >"$P/rootfs/payload.bin"
printf 'berth e2e\n' >"$P/rootfs/etc/hostname"
tar -C "$P/rootfs" -cf "$P/rootfs.tar" .
"${PM[@]}" import "$P/rootfs.tar" localhost/x:1 >"$P/import.log" 2>&1 || { cat "$P/import.log"; die "podman import failed"; }
PM_ID=$("${PM[@]}" image inspect --format '{{.Id}}' localhost/x:1) || die "podman image inspect of localhost/x:1 failed"
info "imported localhost/x:1 ($PM_ID)"
if "${PM[@]}" push --cert-dir "$WORK/no-trust" --creds "admin:$PASSWORD" localhost/x:1 \
  "docker://$HOSTPORT/e2e/podman:0" >"$P/push0.log" 2>&1; then
  die "podman push succeeded without the CA"
fi
grep -qiE 'x509|certificate' "$P/push0.log" || { cat "$P/push0.log"; die "podman push failed without the CA, but not on the certificate"; }
info "without the CA: refused ($(grep -ioE 'x509: [^"]*' "$P/push0.log" | head -1))"
"${PM[@]}" push --cert-dir "$P/certs" --creds "admin:$PASSWORD" --digestfile "$P/digest" localhost/x:1 \
  "docker://$HOSTPORT/e2e/podman:1" >"$P/push1.log" 2>&1 || { cat "$P/push1.log"; die "podman push failed"; }
PM_DIGEST=$(cat "$P/digest")
"${PM[@]}" rmi localhost/x:1 >/dev/null
"${PM[@]}" image exists "$PM_ID" && die "podman rmi left the image"
"${PM[@]}" pull --cert-dir "$P/certs" --creds "admin:$PASSWORD" "$HOSTPORT/e2e/podman:1" >"$P/pull1.log" 2>&1 ||
  { cat "$P/pull1.log"; die "podman pull failed"; }
[ "$("${PM[@]}" image inspect --format '{{.Id}}' "$HOSTPORT/e2e/podman:1")" = "$PM_ID" ] || die "podman pulled another image id"
[ "$("${PM[@]}" image inspect --format '{{.Digest}}' "$HOSTPORT/e2e/podman:1")" = "$PM_DIGEST" ] ||
  die "podman pulled another manifest digest than it pushed ($PM_DIGEST)"
info "push, rmi, pull: same image id, manifest $PM_DIGEST"

# ---------------------------------------------------------------------------------------------------------
step "e2e 4: containerd's ctr through the proxy with a hosts.toml that names the CA (private containerd)"
C=$WORK/containerd
mkdir -p "$C/hosts/$HOSTPORT" "$C/hosts-no-ca/$HOSTPORT"
# Only the plugins that pulling and pushing need, with root, state and sockets under $C: it shares nothing with
# /run/containerd, /var/lib/containerd, /opt/containerd or the containerd that the Docker daemon runs for itself.
cat >"$C/config.toml" <<EOF
version = 2
root = "$C/root"
state = "$C/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.overlayfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "$C/containerd.sock"
[ttrpc]
  address = "$C/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
EOF
cat >"$C/hosts/$HOSTPORT/hosts.toml" <<EOF
server = "https://$HOSTPORT"

[host."https://$HOSTPORT"]
  capabilities = ["pull", "resolve", "push"]
  ca = "$WORK/ns/certs/devdockerCA.crt"
EOF
grep -v '^ *ca = ' "$C/hosts/$HOSTPORT/hosts.toml" >"$C/hosts-no-ca/$HOSTPORT/hosts.toml"
containerd --config "$C/config.toml" >"$C/containerd.log" 2>&1 &
CTRD_PID=$!
PIDS+=("$CTRD_PID")
CTR=("${NO_SYSTEM_TRUST[@]}" ctr -a "$C/containerd.sock" -n berth-e2e)
wait_until 30 "${CTR[@]}" version || { tail -20 "$C/containerd.log"; die "containerd did not start"; }
if "${CTR[@]}" images pull --snapshotter native --user "admin:$PASSWORD" --hosts-dir "$C/hosts-no-ca" \
  "$HOSTPORT/e2e/podman:1" >"$C/pull0.log" 2>&1; then
  die "ctr pull succeeded with a hosts.toml that names no CA"
fi
grep -qiE 'x509|certificate' "$C/pull0.log" || { cat "$C/pull0.log"; die "ctr pull failed without the CA, but not on the certificate"; }
info "without the CA in hosts.toml: refused ($(grep -ioE 'x509: [^"]*' "$C/pull0.log" | head -1))"
"${CTR[@]}" images pull --snapshotter native --user "admin:$PASSWORD" --hosts-dir "$C/hosts" \
  "$HOSTPORT/e2e/podman:1" >"$C/pull1.log" 2>&1 || { cat "$C/pull1.log"; die "ctr images pull failed"; }
[ "$("${CTR[@]}" images ls -q | grep -c .)" = 1 ] || die "ctr images ls does not show the pulled image"
CTR_DIGEST=$("${CTR[@]}" images ls | awk -v r="$HOSTPORT/e2e/podman:1" '$1 == r {print $3}')
[ "$CTR_DIGEST" = "$PM_DIGEST" ] || die "ctr pulled manifest $CTR_DIGEST, podman pushed $PM_DIGEST"
"${CTR[@]}" images tag "$HOSTPORT/e2e/podman:1" "$HOSTPORT/e2e/ctr:1" >/dev/null
"${CTR[@]}" images push --user "admin:$PASSWORD" --hosts-dir "$C/hosts" "$HOSTPORT/e2e/ctr:1" >"$C/push1.log" 2>&1 ||
  { cat "$C/push1.log"; die "ctr images push failed"; }
PUSHED=$("${SK[@]}" inspect --creds "admin:$PASSWORD" --cert-dir "$WORK/skopeo-certs" --format '{{.Digest}}' \
  "docker://$HOSTPORT/e2e/ctr:1") || die "skopeo inspect of the tag that ctr pushed failed"
[ "$PUSHED" = "$PM_DIGEST" ] || die "the registry has $PUSHED under e2e/ctr:1, ctr pushed $PM_DIGEST"
"${CTR[@]}" images rm "$HOSTPORT/e2e/ctr:1" >/dev/null
"${CTR[@]}" images pull --snapshotter native --user "admin:$PASSWORD" --hosts-dir "$C/hosts" \
  "$HOSTPORT/e2e/ctr:1" >"$C/pull2.log" 2>&1 || { cat "$C/pull2.log"; die "ctr pull of the pushed tag failed"; }
info "pull, tag, push, pull again: manifest $PM_DIGEST under e2e/ctr:1 (checked with skopeo inspect too)"
# ---------------------------------------------------------------------------------------------------------
step "e2e 4b: access rules (BERTH_ACL) on a second proxy at $ACL_HOSTPORT, same registry"
cat >"$WORK/ns/acl.toml" <<EOF
[[rule]]
repos = "public/**"
pull = ["anonymous", "*"]
push = ["admin"]

[[rule]]
repos = "readonly/**"
pull = ["*"]

[[rule]]
repos = "**"
pull = ["*"]
push = ["*"]
delete = ["*"]
EOF
ip netns exec "$NS" env BERTH_LISTEN="$ACL_HOSTPORT" BERTH_UPSTREAM=http://127.0.0.1:5000 BERTH_CERTS_DIR="$WORK/ns/certs" \
  BERTH_HTPASSWD="$WORK/ns/htpasswd" BERTH_ACL="$WORK/ns/acl.toml" BERTH_AUDIT_LOG="$WORK/ns/audit.log" \
  "$BIN/berth-proxy" serve >"$WORK/ns/proxy-acl.log" 2>&1 &
PIDS+=($!)
wait_until 30 curl -sf --cacert "$WORK/ns/certs/devdockerCA.crt" "https://$ACL_HOSTPORT/v1/_ping" ||
  { tail -5 "$WORK/ns/proxy-acl.log"; die "second proxy not reachable at $ACL_HOSTPORT"; }
mkdir -p "/etc/docker/certs.d/$ACL_HOSTPORT"
cp "$WORK/ns/certs/devdockerCA.crt" "/etc/docker/certs.d/$ACL_HOSTPORT/ca.crt"
printf '%s' "$PASSWORD" | docker login "$ACL_HOSTPORT" -u admin --password-stdin >"$WORK/acl-login.log" 2>&1 ||
  { cat "$WORK/acl-login.log"; die "docker login through the token challenge failed"; }
if printf 'wrong-%s' "$PASSWORD" | docker login "$ACL_HOSTPORT" -u admin --password-stdin >"$WORK/acl-login1.log" 2>&1; then
  die "docker login with a wrong password succeeded through the token challenge"
fi
printf '%s' "$PASSWORD" | docker login "$ACL_HOSTPORT" -u admin --password-stdin >"$WORK/acl-login2.log" 2>&1 ||
  { cat "$WORK/acl-login2.log"; die "docker login failed"; }
docker tag berth-e2e:src "$ACL_HOSTPORT/public/webapp:1"
docker push "$ACL_HOSTPORT/public/webapp:1" >"$WORK/acl-push1.log" 2>&1 || { cat "$WORK/acl-push1.log"; die "allowed docker push failed"; }
docker tag berth-e2e:src "$ACL_HOSTPORT/readonly/webapp:1"
if docker push "$ACL_HOSTPORT/readonly/webapp:1" >"$WORK/acl-push2.log" 2>&1; then
  die "docker push to a repository without push rights succeeded"
fi
grep -q 'denied' "$WORK/acl-push2.log" || { cat "$WORK/acl-push2.log"; die "docker push to a read-only repository did not say denied"; }
info "push to public/webapp: ok; to readonly/webapp: $(grep -o 'denied.*' "$WORK/acl-push2.log" | head -1)"
docker logout "$ACL_HOSTPORT" >/dev/null
docker rmi "$ACL_HOSTPORT/public/webapp:1" "$ACL_HOSTPORT/readonly/webapp:1" >/dev/null
docker pull "$ACL_HOSTPORT/public/webapp:1" >"$WORK/acl-pull.log" 2>&1 || { cat "$WORK/acl-pull.log"; die "anonymous docker pull of a public repository failed"; }
[ "$(docker image inspect -f '{{.Id}}' "$ACL_HOSTPORT/public/webapp:1")" = "$SRC_ID" ] || die "anonymous pull: another image id"
if docker pull "$ACL_HOSTPORT/e2e/webapp:1" >"$WORK/acl-pull2.log" 2>&1; then
  die "anonymous docker pull of a private repository succeeded"
fi
info "docker, no login: public/webapp pulled (same id); e2e/webapp refused"
"${SK[@]}" inspect --cert-dir "$WORK/skopeo-certs" --format '{{.Digest}}' "docker://$ACL_HOSTPORT/public/webapp:1" >"$WORK/acl-sk.log" 2>&1 ||
  { cat "$WORK/acl-sk.log"; die "anonymous skopeo inspect of a public repository failed"; }
if "${SK[@]}" inspect --cert-dir "$WORK/skopeo-certs" "docker://$ACL_HOSTPORT/e2e/skopeo:1" >/dev/null 2>&1; then
  die "anonymous skopeo inspect of a private repository succeeded"
fi
mkdir -p "$C/hosts/$ACL_HOSTPORT"
sed "s/$HOSTPORT/$ACL_HOSTPORT/g" "$C/hosts/$HOSTPORT/hosts.toml" >"$C/hosts/$ACL_HOSTPORT/hosts.toml"
"${CTR[@]}" images pull --snapshotter native --hosts-dir "$C/hosts" "$ACL_HOSTPORT/public/webapp:1" >"$C/acl-pull.log" 2>&1 ||
  { cat "$C/acl-pull.log"; die "anonymous ctr pull of a public repository failed"; }
info "skopeo and ctr, no credentials: public/webapp ok, private refused (skopeo)"
grep '"action":"push","repository":"readonly/webapp"' "$WORK/ns/audit.log" | grep -q '"status":403' ||
  { cat "$WORK/ns/audit.log"; die "the audit log has no refused push"; }
if grep -q -- "$PASSWORD" "$WORK/ns/audit.log" "$WORK/ns/proxy-acl.log"; then die "a password reached a log"; fi
info "audit log: $(grep -c . "$WORK/ns/audit.log") lines, the refused push among them, no password"

stop_pid "$CTRD_PID"
kill -0 "$CTRD_PID" 2>/dev/null && die "containerd ($CTRD_PID) still running after SIGTERM and SIGKILL"
# Stopped: the cleanup must not signal its PID again (it may belong to another process by then).
KEEP_PIDS=()
for pid in "${PIDS[@]}"; do [ "$pid" = "$CTRD_PID" ] || KEEP_PIDS+=("$pid"); done
PIDS=("${KEEP_PIDS[@]}")

# ---------------------------------------------------------------------------------------------------------
step "e2e 5: an OCI artifact client that sends each request without credentials first (oras-py)"
BERTH_PASSWORD=$PASSWORD python3 scripts/oci-artifact-push.py "$HOSTPORT" e2e/artifact v1 \
  "$WORK/ns/certs/devdockerCA.crt" admin ||
  { grep 'e2e/artifact' "$WORK/ns/proxy.log" | grep 'status=401' | tail -4 || true; die "oras-py push of an artifact through the proxy failed"; }

# ---------------------------------------------------------------------------------------------------------
step "e2e 6: docker-compose up of compose.yml (images built here from $BIN)"
BERTH_BASE_IMAGE=local BERTH_IMAGE_TAG=e2e scripts/build-images.sh --prebuilt "$BIN" | sed 's/^/    /'
COMPOSE_DIR=$WORK/compose
mkdir -p "$COMPOSE_DIR"
cp compose.yml "$COMPOSE_DIR/"
CPORT=$(free_port)
export BERTH_IMAGE_TAG=e2e BERTH_PORT=$CPORT
DC=(docker-compose -p "berthe2e$$")
(cd "$COMPOSE_DIR" && printf '%s\n' "$PASSWORD" | "${DC[@]}" run --rm -T proxy user add admin --password-stdin) >"$WORK/dc-user.log" 2>&1 ||
  { cat "$WORK/dc-user.log"; die "docker-compose run proxy user add failed"; }
compose_up() {
  (cd "$COMPOSE_DIR" && "${DC[@]}" up -d --no-build) >"$WORK/dc-up.log" 2>&1 || { cat "$WORK/dc-up.log"; die "docker-compose up failed"; }
  wait_until 60 curl -sf --cacert "$COMPOSE_DIR/certs/devdockerCA.crt" -u "admin:$PASSWORD" "https://127.0.0.1:$CPORT/v2/" ||
    { (cd "$COMPOSE_DIR" && "${DC[@]}" logs --tail 20); die "the compose stack does not answer on $CPORT"; }
}
compose_up
grep -q "install-ca.sh localhost:$CPORT ./certs/devdockerCA.crt" <(cd "$COMPOSE_DIR" && "${DC[@]}" logs proxy 2>&1) ||
  die "the proxy's log does not tell how to trust ./certs/devdockerCA.crt on port $CPORT"
info "stack up; ./certs/devdockerCA.crt verifies the proxy (curl --cacert)"
# The proxy starts only once the registry's health check (its /debug/health) passes; say so explicitly.
REG_CONTAINER=$(cd "$COMPOSE_DIR" && "${DC[@]}" ps -q registry)
[ "$(docker inspect -f '{{.State.Health.Status}}' "$REG_CONTAINER")" = healthy ] ||
  die "the registry container is not healthy: $(docker inspect -f '{{json .State.Health}}' "$REG_CONTAINER")"
info "registry container healthy (its check reads /debug/health)"
CHOST=127.0.0.1:$CPORT
printf '%s' "$PASSWORD" | docker login "$CHOST" -u admin --password-stdin >/dev/null 2>&1 || die "docker login to the compose stack failed"
docker tag berth-e2e:src "$CHOST/e2e/compose:1"
docker push "$CHOST/e2e/compose:1" >"$WORK/push3.log" 2>&1 || { cat "$WORK/push3.log"; die "push to compose stack failed"; }
docker rmi "$CHOST/e2e/compose:1" >/dev/null
docker pull "$CHOST/e2e/compose:1" >/dev/null 2>&1 || die "pull from compose stack failed"
info "login, push, pull: ok"
# The proxy's health check reads /_berth/ready on its operator listener (127.0.0.1:9043 in the container).
PROXY_CONTAINER=$(cd "$COMPOSE_DIR" && "${DC[@]}" ps -q proxy)
proxy_healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$PROXY_CONTAINER")" = healthy ]; }
wait_until 60 proxy_healthy ||
  die "the proxy container is not healthy: $(docker inspect -f '{{json .State.Health}}' "$PROXY_CONTAINER")"
info "proxy container healthy (its check reads /_berth/ready)"
# Both metrics endpoints, inside the containers, counted the push.
in_container_get() { # CONTAINER PORT PATH
  docker exec "$1" bash -c "exec 3<>/dev/tcp/127.0.0.1/$2 && printf 'GET $3 HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
}
in_container_get "$PROXY_CONTAINER" 9043 /metrics >"$WORK/proxy-metrics.txt" || die "no proxy metrics"
grep -Eq '^berth_proxy_requests_total\{class="2xx",method="put",route="manifest"\} [1-9]' "$WORK/proxy-metrics.txt" ||
  die "the proxy's metrics do not count the manifest push: $(grep requests_total "$WORK/proxy-metrics.txt")"
in_container_get "$REG_CONTAINER" 5001 /metrics >"$WORK/registry-metrics.txt" || die "no registry metrics"
grep -Eq '^registry_http_requests_total\{code="201",handler="manifest",method="put"\} [1-9]' "$WORK/registry-metrics.txt" ||
  die "the registry's metrics do not count the manifest push: $(grep requests_total "$WORK/registry-metrics.txt")"
for f in proxy-metrics registry-metrics; do
  sed '1,/^\r\{0,1\}$/d' "$WORK/$f.txt" | promtool check metrics >"$WORK/$f.check" 2>&1 ||
    { cat "$WORK/$f.check"; die "promtool rejects the $f"; }
done
info "metrics of both containers count the push; promtool check metrics passes on both"
(cd "$COMPOSE_DIR" && "${DC[@]}" down -t 10) >/dev/null 2>&1 || die "docker-compose down failed"
info "down"
docker rmi "$CHOST/e2e/compose:1" >/dev/null
compose_up
docker pull "$CHOST/e2e/compose:1" >/dev/null 2>&1 || die "the image did not survive down/up"
[ "$(docker image inspect -f '{{.Id}}' "$CHOST/e2e/compose:1")" = "$SRC_ID" ] || die "image after down/up differs"
info "data survived down and up"
(cd "$COMPOSE_DIR" && "${DC[@]}" down -t 10) >/dev/null 2>&1
COMPOSE_DIR=

# ---------------------------------------------------------------------------------------------------------
step "e2e 7: scripts/start.sh"
SPORT=$(free_port)
RPORT=$(free_port)
S=$WORK/start
mkdir -p "$S"
# Job control on, so the background script keeps SIGINT as a terminal would deliver it.
set -m
# With the release binaries, start.sh runs exactly as a user runs it (its release build is then up to date).
[ "$BIN" = target/release ] && START_BIN= || START_BIN=$BIN
BERTH_BIN_DIR="$START_BIN" BERTH_LISTEN=127.0.0.1:$SPORT REGISTRY_HTTP_ADDR=127.0.0.1:$RPORT BERTH_DATA_DIR=$S/data \
  BERTH_CERTS_DIR=$S/certs BERTH_HTPASSWD=$S/auth/htpasswd scripts/start.sh >"$S/out" 2>&1 &
START_PID=$!
set +m
PIDS+=("$START_PID")
wait_until 60 curl -sf --cacert "$S/certs/devdockerCA.crt" "https://127.0.0.1:$SPORT/v1/_ping" || { cat "$S/out"; die "start.sh stack not up"; }
SPASS=$(awk '/password:/ {print $2; exit}' "$S/out")
[ -n "$SPASS" ] || { cat "$S/out"; die "start.sh did not print the first user's password"; }
mkdir -p "$S/skopeo-certs"
cp "$S/certs/devdockerCA.crt" "$S/skopeo-certs/ca.crt"
"${SK[@]}" copy --src-daemon-host "$DOCKER_HOST" --dest-creds "admin:$SPASS" --dest-cert-dir "$S/skopeo-certs" \
  docker-daemon:berth-e2e:src "docker://127.0.0.1:$SPORT/e2e/start:1" >"$S/sk.log" 2>&1 || { cat "$S/sk.log"; die "push to start.sh stack failed"; }
info "skopeo push with the generated user: ok"
CHILDREN=$(pgrep -P "$START_PID" | tr '\n' ' ')
[ -n "$CHILDREN" ] || die "no child processes under start.sh"
kill -INT "$START_PID"
for i in $(seq 1 100); do kill -0 "$START_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$START_PID" 2>/dev/null && die "start.sh still running 10 s after SIGINT"
for pid in $CHILDREN; do
  kill -0 "$pid" 2>/dev/null && die "process $pid of start.sh still running after SIGINT"
done
info "SIGINT stopped start.sh and its processes ($CHILDREN)"

# ---------------------------------------------------------------------------------------------------------
step "e2e 8: the Docker daemon's registry mirror: berth-proxy at 127.0.0.1:$MIRROR_PORT before a pull-through registry"
M=$WORK/mirror
mkdir -p "$M/remote" "$M/data" "$M/spool" "$M/certs"
REMOTE=127.0.0.1:$(free_port)
MIRROR_UPSTREAM=127.0.0.1:$(free_port)
# The remote: a plain registry on loopback (the daemon pushes to it over plain HTTP) with an image of new random
# layers, which the daemon then deletes: docker.io is out of reach here, so only the mirror can serve
# e2e/mirrored:1, and the daemon has to download every layer of it.
env REGISTRY_HTTP_ADDR="$REMOTE" REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="$M/remote" \
  "$BIN/berth-registry" >"$M/remote.out" 2>"$M/remote.log" &
PIDS+=($!)
wait_until 30 curl -sf "http://$REMOTE/v2/" || { tail -5 "$M/remote.log"; die "the remote registry is not reachable at $REMOTE"; }
make_image "$REMOTE/e2e/mirrored:1" "$M/ctx"
MIRRORED_ID=$(docker image inspect -f '{{.Id}}' "$REMOTE/e2e/mirrored:1")
docker push "$REMOTE/e2e/mirrored:1" >"$M/push.log" 2>&1 || { cat "$M/push.log"; die "docker push to the remote failed"; }
docker rmi "$REMOTE/e2e/mirrored:1" >/dev/null
! docker image inspect "$MIRRORED_ID" >/dev/null 2>&1 || die "docker rmi left image $MIRRORED_ID"
[ -z "$(docker images -q e2e/mirrored)" ] || die "the daemon still has an image named e2e/mirrored"
info "remote $REMOTE has e2e/mirrored:1 ($MIRRORED_ID); the daemon deleted it"
# The mirror: the whole registry a pull-through cache of the remote (REGISTRY_PROXY_REMOTEURL), behind berth-proxy
# whose access rules let anyone pull (the daemon sends no credentials to a mirror) and users push.
env REGISTRY_HTTP_ADDR="$MIRROR_UPSTREAM" REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="$M/data" \
  REGISTRY_PROXY_REMOTEURL="http://$REMOTE" BERTH_PROXY_SPOOLDIRECTORY="$M/spool" REGISTRY_LOG_LEVEL=info \
  "$BIN/berth-registry" >"$M/registry.out" 2>"$M/registry.log" &
PIDS+=($!)
"$BIN/berth-proxy" ca init --host localhost --ip 127.0.0.1 --dir "$M/certs" >/dev/null
htpasswd -Bbc "$M/htpasswd" admin "$PASSWORD" >/dev/null 2>&1
cat >"$M/acl.toml" <<EOF
[[rule]]
repos = "**"
pull = ["anonymous", "*"]
push = ["*"]
EOF
env BERTH_LISTEN="127.0.0.1:$MIRROR_PORT" BERTH_UPSTREAM="http://$MIRROR_UPSTREAM" BERTH_CERTS_DIR="$M/certs" \
  BERTH_HTPASSWD="$M/htpasswd" BERTH_ACL="$M/acl.toml" "$BIN/berth-proxy" serve >"$M/proxy.log" 2>&1 &
PIDS+=($!)
wait_until 30 curl -sf --cacert "$M/certs/devdockerCA.crt" "https://127.0.0.1:$MIRROR_PORT/v1/_ping" ||
  { tail -5 "$M/proxy.log" "$M/registry.log"; die "the mirror's proxy is not reachable at 127.0.0.1:$MIRROR_PORT"; }
[ ! -e "$M/data/docker/registry/v2/repositories/e2e" ] || die "the mirror has e2e/ before the pull"
docker pull e2e/mirrored:1 >"$M/pull.log" 2>&1 ||
  { cat "$M/pull.log"; tail -5 "$M/proxy.log" "$M/registry.log"; die "docker pull e2e/mirrored:1 through the mirror failed"; }
[ "$(docker image inspect -f '{{.Id}}' e2e/mirrored:1)" = "$MIRRORED_ID" ] || die "docker pull e2e/mirrored:1: another image id"
info "docker pull e2e/mirrored:1 (docker.io): same image id as pushed to the remote"
# What the daemon asked the mirror, all without credentials (and without ?ns=: this registry answers only
# ns=127.0.0.1:PORT, its remote's, and would refuse ns=docker.io with 404 NAME_UNKNOWN).
MREQS=$(grep 'user="-"' "$M/proxy.log" | grep -oE 'method=[A-Z]+ path=/v2/e2e/mirrored/(manifests|blobs)/' |
  sed -E 's#method=([A-Z]+) path=/v2/e2e/mirrored/([a-z]+)/#\1 \2#' | sort | uniq -c |
  awk '{printf "%s%s %s x%s", sep, $2, $3, $1; sep=", "}')
grep -qE 'user="-" method=GET path=/v2/e2e/mirrored/blobs/.* status=200' "$M/proxy.log" ||
  { tail -20 "$M/proxy.log"; die "the daemon downloaded no blob from the mirror"; }
info "the daemon's anonymous requests to the mirror: $MREQS"
# The mirror stored what it served: the tag, the manifest and every blob it names (the last stored once checked).
mirror_has_all() {
  python3 - "$M/data/docker/registry/v2" <<'EOF'
import json, os, sys
root = sys.argv[1]
def blob(d):
    algo, hexd = d.split(":")
    return os.path.join(root, "blobs", algo, hexd[:2], hexd, "data")
link = os.path.join(root, "repositories/e2e/mirrored/_manifests/tags/1/current/link")
manifest = json.load(open(blob(open(link).read().strip())))
for d in [manifest["config"]] + manifest["layers"]:
    if not os.path.isfile(blob(d["digest"])) or os.path.getsize(blob(d["digest"])) != d["size"]:
        sys.exit("missing " + d["digest"])
print(len(manifest["layers"]))
EOF
}
wait_until 30 mirror_has_all || { mirror_has_all; die "the mirror's storage does not hold e2e/mirrored:1 and its blobs"; }
info "the mirror's storage holds the tag, the manifest, the config and $(mirror_has_all) layers"
# Pushes are refused by the registry (the proxy lets a user with push rights through): 405 UNSUPPORTED.
CODE=$(curl -sk -o "$M/push-refused.json" -w '%{http_code}' -u "admin:$PASSWORD" -X POST \
  "https://127.0.0.1:$MIRROR_PORT/v2/e2e/mirrored/blobs/uploads/")
[ "$CODE" = 405 ] && grep -q UNSUPPORTED "$M/push-refused.json" ||
  { cat "$M/push-refused.json"; die "a push through the mirror got $CODE, not 405 UNSUPPORTED"; }
info "POST /v2/e2e/mirrored/blobs/uploads/ through the mirror: 405 UNSUPPORTED"
docker rmi e2e/mirrored:1 >/dev/null

step "e2e 8b: containerd's ctr pulls docker.io/e2e/mirrored:1 through a hosts.toml mirror (?ns=docker.io)"
# A second pull-through registry, configured by a file: hub/ mirrors the remote and answers ?ns=docker.io, which
# containerd adds to every request to a mirror. Its proxy checks those requests against docker.io/NAME: only
# docker.io/** is open (anonymous pulls), hub/** itself is closed.
HUB_PORT=$(free_port)
HUB_UPSTREAM=127.0.0.1:$(free_port)
mkdir -p "$M/hub-data" "$M/hub-spool" "$M/hub-certs"
cat >"$M/hub.toml" <<EOF
[proxy]
spool_directory = "$M/hub-spool"

[[mirrors]]
prefix = "hub"
url = "http://$REMOTE"
namespace = "docker.io"
EOF
"$BIN/berth-registry" check-config --config "$M/hub.toml" >"$M/hub-check.log" 2>&1 ||
  { cat "$M/hub-check.log"; die "berth-registry check-config refuses $M/hub.toml"; }
env REGISTRY_HTTP_ADDR="$HUB_UPSTREAM" REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="$M/hub-data" REGISTRY_LOG_LEVEL=info \
  "$BIN/berth-registry" --config "$M/hub.toml" >"$M/hub-registry.out" 2>"$M/hub-registry.log" &
PIDS+=($!)
"$BIN/berth-proxy" ca init --host localhost --ip 127.0.0.1 --dir "$M/hub-certs" >/dev/null
cat >"$M/hub-acl.toml" <<EOF
[[rule]]
repos = "docker.io/**"
pull = ["anonymous", "*"]
EOF
env BERTH_LISTEN="127.0.0.1:$HUB_PORT" BERTH_UPSTREAM="http://$HUB_UPSTREAM" BERTH_CERTS_DIR="$M/hub-certs" \
  BERTH_HTPASSWD="$M/htpasswd" BERTH_ACL="$M/hub-acl.toml" "$BIN/berth-proxy" serve >"$M/hub-proxy.log" 2>&1 &
PIDS+=($!)
wait_until 30 curl -sf --cacert "$M/hub-certs/devdockerCA.crt" "https://127.0.0.1:$HUB_PORT/v1/_ping" ||
  { tail -5 "$M/hub-proxy.log" "$M/hub-registry.log"; die "the hub mirror's proxy is not reachable at 127.0.0.1:$HUB_PORT"; }
MC=$WORK/containerd-mirror
mkdir -p "$MC/hosts/docker.io"
# The configuration of step 4's containerd, with root, state and sockets under $MC.
sed "s#\"$C/#\"$MC/#g" "$C/config.toml" >"$MC/config.toml"
cat >"$MC/hosts/docker.io/hosts.toml" <<EOF
server = "https://registry-1.docker.io"

[host."https://127.0.0.1:$HUB_PORT"]
  capabilities = ["pull", "resolve"]
  ca = "$M/hub-certs/devdockerCA.crt"
EOF
containerd --config "$MC/config.toml" >"$MC/containerd.log" 2>&1 &
CTRD_PID=$!
PIDS+=("$CTRD_PID")
CTR=("${NO_SYSTEM_TRUST[@]}" ctr -a "$MC/containerd.sock" -n berth-e2e)
wait_until 30 "${CTR[@]}" version || { tail -20 "$MC/containerd.log"; die "containerd did not start"; }
"${CTR[@]}" images pull --snapshotter native --hosts-dir "$MC/hosts" docker.io/e2e/mirrored:1 >"$MC/pull.log" 2>&1 ||
  { cat "$MC/pull.log"; tail -n 8 "$M/hub-proxy.log" "$M/hub-registry.log"; die "ctr pull through the mirror failed"; }
HUB_DIGEST=$("${CTR[@]}" images ls | awk '$1 == "docker.io/e2e/mirrored:1" {print $3}')
MIRRORED_DIGEST=$(cat "$M/data/docker/registry/v2/repositories/e2e/mirrored/_manifests/tags/1/current/link")
[ "$HUB_DIGEST" = "$MIRRORED_DIGEST" ] || die "ctr pulled manifest $HUB_DIGEST, the remote has $MIRRORED_DIGEST"
# Stored under the mirror's prefix: only ?ns=docker.io can have led the path's e2e/mirrored to hub/e2e/mirrored.
[ "$(cat "$M/hub-data/docker/registry/v2/repositories/hub/e2e/mirrored/_manifests/tags/1/current/link")" = "$MIRRORED_DIGEST" ] ||
  die "the hub mirror's storage has no tag hub/e2e/mirrored:1 at $MIRRORED_DIGEST"
info "ctr pull docker.io/e2e/mirrored:1: manifest $HUB_DIGEST, stored by the mirror as hub/e2e/mirrored:1"
CODE=$(curl -s -D "$M/ns.headers" -o /dev/null -w '%{http_code}' --cacert "$M/hub-certs/devdockerCA.crt" \
  "https://127.0.0.1:$HUB_PORT/v2/e2e/mirrored/manifests/1?ns=docker.io")
[ "$CODE" = 200 ] && grep -qix 'oci-namespace: docker.io.\?' "$M/ns.headers" ||
  { cat "$M/ns.headers"; die "an anonymous GET of e2e/mirrored?ns=docker.io got $CODE, not 200 with OCI-Namespace"; }
info "curl, anonymously: e2e/mirrored/manifests/1?ns=docker.io 200 with OCI-Namespace: docker.io"
CODE=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$M/hub-certs/devdockerCA.crt" \
  "https://127.0.0.1:$HUB_PORT/v2/hub/e2e/mirrored/manifests/1")
[ "$CODE" = 401 ] || die "an anonymous GET of hub/e2e/mirrored (no ?ns=, no rule) got $CODE, not 401"
info "the same repository without ?ns= (hub/e2e/mirrored), anonymously: 401"
stop_pid "$CTRD_PID"
KEEP_PIDS=()
for pid in "${PIDS[@]}"; do [ "$pid" = "$CTRD_PID" ] || KEEP_PIDS+=("$pid"); done
PIDS=("${KEEP_PIDS[@]}")

step "e2e: all steps passed"

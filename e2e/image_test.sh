#!/usr/bin/env bash
# image_test.sh - the controller image (./Dockerfile) built and run as the chart runs it.
#
#   e2e/image_test.sh [BINARY]     # BINARY: the operator binary to put in the image
#                                  # (default: the debug build, built now: scripts/operator-bin.sh)
#
# Nothing can be pulled here, so both stages that come from a registry are replaced:
# - the runtime base (gcr.io/distroless/cc-debian12) by an image made with `docker import` from
#   this Debian 12 machine's own packages that distroless/cc is made of (libc6, libgcc-s1,
#   libstdc++6, the CA bundle, a passwd with nonroot 65532) and nothing else: no shell;
# - the Rust build stage by BINARY (BINARY_FROM), so the rest of the Dockerfile runs unchanged.
# Then the image runs with the chart's security context (user 65532, read-only root, all
# capabilities dropped, no new privileges, /tmp the only writable place).
# Needs a Docker engine (e2e/local-stack up starts one) and BuildKit, which skips the unused
# Rust stage: `docker buildx`, else Debian's docker.io client with DOCKER_BUILDKIT=1.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
binary=${1:-$(scripts/operator-bin.sh)}
[ -x "$binary" ] || { echo "image_test: no binary at $binary" >&2; exit 1; }

if docker buildx version >/dev/null 2>&1; then
    build=(docker buildx build --load)
elif [ -x /usr/bin/docker ]; then
    build=(env DOCKER_BUILDKIT=1 /usr/bin/docker build)
else
    echo "image_test: needs BuildKit: docker buildx, or Debian's docker.io client at /usr/bin/docker" >&2
    exit 1
fi

tag=$(date +%s)-$$
runtime=mab-test/distroless-cc:$tag
binary_image=mab-test/binary:$tag
image=mab-test/multiarch-operator:$tag
tmp=$(mktemp -d)
cleanup() {
    docker rm -f "mab-image-test-$tag" >/dev/null 2>&1 || true
    docker rmi -f "$image" "$runtime" "$binary_image" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

passed=0
pass() { passed=$((passed + 1)); echo "PASS  $*"; }
fail() { echo "FAIL  $*" >&2; exit 1; }

# The runtime stand-in: the shared libraries of Debian's packages, the CA bundle, the users.
root=$tmp/runtime
mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot"
chmod 1777 "$root/tmp"
dpkg -L libc6 libgcc-s1 libstdc++6 | grep -E '\.so(\.[0-9]+)*$' | while read -r lib; do
    [ -f "$lib" ] && install -D -m 0755 "$lib" "$root$lib"
done
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
[ ! -e "$root/bin/sh" ] || fail "the runtime stand-in has a shell"
tar -C "$root" -c . | docker import - "$runtime" >/dev/null
mkdir -p "$tmp/binary"
cp "$binary" "$tmp/binary/multiarch-operator"
tar -C "$tmp/binary" -c . | docker import - "$binary_image" >/dev/null

"${build[@]}" --quiet -t "$image" \
    --build-arg RUNTIME_IMAGE="$runtime" --build-arg BINARY_FROM="$binary_image" . >"$tmp/build.log" 2>&1 ||
    { cat "$tmp/build.log" >&2; fail "docker build of ./Dockerfile"; }
pass "the Dockerfile builds on the distroless/cc stand-in"

config=$(docker image inspect --format '{{.Config.User}} {{json .Config.Entrypoint}}' "$image")
[ "$config" = '65532:65532 ["/usr/local/bin/multiarch-operator"]' ] ||
    fail "image config: want user 65532:65532 and the operator as entrypoint, got: $config"
pass "runs as 65532:65532 with the operator as entrypoint"

# As the chart's securityContext and volumes run it.
run=(docker run --rm --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges)

"${run[@]}" "$image" --help >"$tmp/help.txt" 2>&1 || { cat "$tmp/help.txt" >&2; fail "--help"; }
grep -q '^  controller' "$tmp/help.txt" || fail "--help lists no controller command: $(cat "$tmp/help.txt")"
pass "--help runs under the restricted security context (every shared library found)"

"${run[@]}" -v "$repo/config/samples:/samples:ro" "$image" build --dry-run -f /samples/vecoli.yaml \
    >"$tmp/dry-run.txt" 2>&1 || { cat "$tmp/dry-run.txt" >&2; fail "build --dry-run"; }
grep -q '^jobQueue: build-arm64$' "$tmp/dry-run.txt" ||
    fail "build --dry-run printed no arm64 request: $(cat "$tmp/dry-run.txt")"
pass "build --dry-run reads a sample and prints its Batch requests"

# The controller over TLS to an API server that is not there: a clear message and exit 1.
cat >"$tmp/kubeconfig" <<'EOF'
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: none, user: {token: not-a-token}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
EOF
status=0
"${run[@]}" --network none -v "$tmp/kubeconfig:/kubeconfig:ro" -e KUBECONFIG=/kubeconfig -e AWS_REGION=us-gov-west-1 \
    "$image" controller >"$tmp/controller.txt" 2>&1 || status=$?
if [ "$status" -ne 1 ] || ! grep -q 'cannot reach the Kubernetes API server' "$tmp/controller.txt" ||
    grep -q 'panicked' "$tmp/controller.txt"; then
    fail "controller without an API server: want exit 1 and a clear message, got exit $status: $(cat "$tmp/controller.txt")"
fi
pass "controller without an API server exits 1 with a clear message"

echo "image_test: $passed passed"

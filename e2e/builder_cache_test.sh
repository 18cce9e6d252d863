#!/usr/bin/env bash
# e2e/builder_cache_test.sh - the registry layer cache of builder/build.sh (MAB_CACHE_MODE).
#
# Part 1, the command line (no engine): build.sh runs on this host against a file:// repository
# with a fake `docker` that records every call and plays an engine: Docker 20.10 (BuildKit
# built into the CLI), buildx on the classic image store, buildx on the containerd image store.
# It checks the cache flags of each path (the registry path of mode max/min can only be checked
# this way here: it needs an engine with the containerd image store), that mode off sends no
# cache flag at all, that the cache is written only after the image is pushed, that a failed
# cache write is a warning, and that a build that fails with the cache is run once more without.
#
# Part 2, the real engine (the local stack's Docker 20.10, registry and builder image): the
# inline path for real. A step that writes random bytes tells a cache hit (same layer digest as
# the build that wrote the cache) from a re-run; "a fresh host" is the engine with this test's
# images and all build cache removed. A missing, garbage, foreign or broken cache image never
# fails the build. Needs `e2e/local-stack up` (make test starts it); MAB_CACHE_TEST_ENGINE=skip
# runs part 1 only.
#
# Prints "ok - ..." / "not ok - ..." and "N passed, M failed"; exit 1 when anything failed.
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD_SH=$(dirname "$HERE")/builder/build.sh
BUILD_UID=0f8e2c4a-1b3d-4e5f-8a9b-0c1d2e3f4a5b
INPUT_HASH=sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08

# shellcheck source=e2e/tap.sh
. "$HERE/tap.sh"

for tool in git python3 sh; do
    command -v "$tool" >/dev/null || {
        echo "builder_cache_test: needs $tool" >&2
        exit 2
    }
done
T=$(mktemp -d "${TMPDIR:-/tmp}/mab-cache-test.XXXXXX")
chmod 755 "$T" # the builder container reads the repository through a bind mount
CLEANUP_IMAGES=()
cleanup() {
    if [ "${#CLEANUP_IMAGES[@]}" -gt 0 ]; then
        docker image rm -f "${CLEANUP_IMAGES[@]}" >/dev/null 2>&1
    fi
    rm -rf "$T"
}
trap cleanup EXIT
[ -z "${MAB_KEEP:-}" ] || trap - EXIT

ENGINE=yes
if [ "${MAB_CACHE_TEST_ENGINE:-}" = skip ]; then
    ENGINE=no
elif STACK_ENV=$("$HERE/local-stack" env 2>/dev/null) && "$HERE/local-stack" status >/dev/null 2>&1; then
    eval "$STACK_ENV"
else
    ENGINE=down
fi

# ------------------------------------------------------------------ the repository
# Five commits that differ only in version.txt, after a step that writes random bytes.
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
BASE_REF=${MAB_REGISTRY:-127.0.0.1:5000}/mab-cache-test/busybox:1
make_repo() {
    local g=(git -c user.name=t -c user.email=t@example.invalid -c commit.gpgsign=false) v
    mkdir -p "$T/work" && cd "$T/work" || return 1
    "${g[@]}" -c init.defaultBranch=main init -q . || return 1
    printf 'FROM %s\nRUN head -c 32 /dev/urandom | od -An -tx1 >/random.txt\nCOPY version.txt /version.txt\n' \
        "$BASE_REF" >Dockerfile
    for v in 1 2 3 4 5; do
        echo "v$v" >version.txt
        "${g[@]}" add -A && "${g[@]}" commit -q -m "v$v" && "${g[@]}" tag "v$v" || return 1
    done
    "${g[@]}" clone -q --bare . "$T/app.git"
}
(make_repo) || {
    echo "builder_cache_test: could not create the test repository" >&2
    exit 2
}
chmod -R a+rX "$T/app.git"

# ================================================================== part 1: the command line
mkdir -p "$T/bin"
cat >"$T/bin/docker" <<EOF
#!/bin/sh
# fake docker: plays the engine of \$FAKE_ENGINE (docker20 | buildx | buildx-containerd) and
# records every call in calls.log (one line) and each build's argv in build-N.argv (a word a line)
log=$T/fake
printf '%s\n' "\$*" >>"\$log/calls.log"
is_cache_ref() { case "\$1" in *buildcache*) return 0 ;; esac; return 1; }
case "\$1" in
version)
    case "\$*" in
    *Client*) case "\$FAKE_ENGINE" in docker20) echo 20.10.24 ;; *) echo 27.5.1 ;; esac ;;
    *) case "\$FAKE_ENGINE" in docker20) echo 20.10.24 ;; *) echo 25.0.8 ;; esac ;;
    esac ;;
info)
    [ "\$FAKE_ENGINE" = buildx-containerd ] && printf 'driver-type=io.containerd.snapshotter.v1;'
    echo ;;
buildx)
    [ "\$FAKE_ENGINE" = docker20 ] && exit 1
    case "\$2" in
    version) echo "github.com/docker/buildx v0.20.1" ;;
    build)
        case "\$*" in *--help*) echo "      --provenance string"; exit 0 ;; esac
        n=\$(ls "\$log" | grep -c '^build-')
        printf '%s\n' "\$@" >"\$log/build-\$((n + 1)).argv"
        case "\$*" in *--cache-from*) [ "\${FAKE_FAIL:-}" = cached-build ] && { echo "ERROR: cache import broke"; exit 1; } ;; esac
        echo "fake build ok" ;;
    esac ;;
build)
    n=\$(ls "\$log" | grep -c '^build-')
    printf '%s\n' "\$@" >"\$log/build-\$((n + 1)).argv"
    case "\$*" in *--cache-from*) [ "\${FAKE_FAIL:-}" = cached-build ] && { echo "ERROR: cache import broke"; exit 1; } ;; esac
    echo "fake build ok" ;;
container)
    # the builder's own container (FAKE_SELF: digest | local | unset: no such container)
    [ "\$2" = inspect ] && [ -n "\${FAKE_SELF:-}" ] || exit 1
    echo sha256:1111111111111111111111111111111111111111111111111111111111111111 ;;
image)
    case "\$*" in
    *RepoDigests*)
        [ "\${FAKE_SELF:-}" = digest ] &&
            echo "not-a-digest ecr.example.com/builder@sha256:2222222222222222222222222222222222222222222222222222222222222222 mirror.example.com/builder@sha256:3333333333333333333333333333333333333333333333333333333333333333" ;;
    *) [ "\$2" = inspect ] && echo linux/amd64 ;;
    esac ;;
push)
    if is_cache_ref "\$2" && [ "\${FAKE_FAIL:-}" = cache-push ]; then
        echo "denied: requested access to the resource is denied"
        exit 1
    fi
    echo "x: digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef size: 1" ;;
esac
exit 0
EOF
chmod +x "$T/bin/docker"

REG=registry.example.com
CACHE=$REG/team/app:buildcache-amd64
# fake_build NAME ENGINE MODE [VAR=VALUE...]: build.sh with the fake docker; MODE off|min|max
fake_build() {
    local n=$1 engine=$2 mode=$3
    shift 3
    rm -rf "$T/fake" && mkdir -p "$T/fake"
    local cache=()
    [ "$mode" = off ] || cache=("MAB_CACHE_IMAGE=$CACHE")
    env -i PATH="$T/bin:/usr/bin:/bin" TMPDIR="$T" FAKE_ENGINE="$engine" \
        MAB_GIT_URL="file://$T/app.git" MAB_GIT_REVISION=v1 MAB_PLATFORM=linux/amd64 \
        MAB_IMAGE="$REG/team/app:v1-amd64" MAB_REGISTRY_AUTH=none \
        MAB_BUILD_UID="$BUILD_UID" MAB_INPUT_HASH="$INPUT_HASH" MAB_CACHE_MODE="$mode" "${cache[@]}" "$@" \
        sh "$BUILD_SH" >"$T/$n.out" 2>"$T/$n.err"
    echo $? >"$T/$n.rc"
    mkdir -p "$T/$n.fake" && cp -r "$T/fake/." "$T/$n.fake/"
}
# argv_has NAME BUILD-N WORD...: build N's argv holds these consecutive words
argv_has() {
    local f=$T/$1.fake/build-$2.argv
    shift 2
    python3 - "$f" "$@" <<'PY'
import sys
words = open(sys.argv[1]).read().split("\n")[:-1]
want = sys.argv[2:]
sys.exit(0 if any(words[i:i + len(want)] == want for i in range(len(words))) else 1)
PY
}
no_cache_words() { # NAME: no build argv and no call mentions a cache
    ! grep -rqE -- '--cache-(from|to)|BUILDKIT_INLINE_CACHE|buildcache' "$T/$1.fake"
}
succeeded() { # NAME: exit 0, the last two lines, nothing on stderr
    [ "$(cat "$T/$1.rc")" = 0 ] && [ ! -s "$T/$1.err" ] &&
        tail -n 2 "$T/$1.out" | head -n 1 | grep -qE '^commit: [0-9a-f]{40}$' &&
        tail -n 1 "$T/$1.out" | grep -qE '^digest: sha256:[0-9a-f]{64}$'
}
builds() { # NAME: how many builds ran
    find "$T/$1.fake" -name 'build-*.argv' | wc -l
}
logged() { # NAME TEXT
    grep -qF -- "$2" "$T/$1.out"
}
# order NAME FIRST SECOND: the first call matching FIRST comes before the last matching SECOND
order() {
    local a b
    a=$(grep -n -m1 -E -- "$2" "$T/$1.fake/calls.log" | cut -d: -f1)
    b=$(grep -n -E -- "$3" "$T/$1.fake/calls.log" | tail -n 1 | cut -d: -f1)
    [ -n "$a" ] && [ -n "$b" ] && [ "$a" -lt "$b" ]
}

# --- registry path: buildx on the containerd image store
fake_build max_registry buildx-containerd max
check "max, containerd store: succeeds" succeeded max_registry
check "max, containerd store: logs the registry path" logged max_registry "[mab] cache: registry cache $CACHE, mode max (containerd image store)"
check "max, containerd store: two builds (the image, then the cache export)" test "$(builds max_registry)" -eq 2
check "max, containerd store: the build reads --cache-from type=registry,ref=<cache>" \
    argv_has max_registry 1 --cache-from "type=registry,ref=$CACHE"
check "max, containerd store: the build itself exports no cache" bash -c "! grep -q -- --cache-to '$T/max_registry.fake/build-1.argv'"
check "max, containerd store: the second build exports --cache-to type=registry,mode=max,image-manifest=true,oci-mediatypes=true" \
    argv_has max_registry 2 --cache-to "type=registry,ref=$CACHE,mode=max,image-manifest=true,oci-mediatypes=true"
check "max, containerd store: the cache is exported after the image is pushed" \
    order max_registry "^push $REG/team/app:v1-amd64" '^buildx build .*--cache-to'
check "max, containerd store: both builds have the same arguments but the cache flags" \
    bash -c "diff <(grep -v -e '^--cache-' -e 'type=registry' '$T/max_registry.fake/build-1.argv') \
        <(grep -v -e '^--cache-' -e 'type=registry' '$T/max_registry.fake/build-2.argv') >/dev/null"
check "max, containerd store: no inline cache build-arg" bash -c "! grep -rq BUILDKIT_INLINE_CACHE '$T/max_registry.fake'"

fake_build min_registry buildx-containerd min
check "min, containerd store: --cache-to ... mode=min" \
    argv_has min_registry 2 --cache-to "type=registry,ref=$CACHE,mode=min,image-manifest=true,oci-mediatypes=true"

# --- inline path: buildx on the classic image store, and Docker 20.10's BuildKit
fake_build max_buildx buildx max
check "max, classic image store: succeeds" succeeded max_buildx
check "max, classic image store: says it falls back to the inline cache" logged max_buildx \
    "this engine cannot export a registry cache (mode max needs buildx and the containerd image store), falling back to the inline cache"
check "max, classic image store: one build, reading type=registry and writing inline" \
    bash -c "[ $(builds max_buildx) -eq 1 ] && ! grep -q -- --cache-to '$T/max_buildx.fake/build-1.argv'"
check "max, classic image store: --cache-from type=registry,ref=<cache> --build-arg BUILDKIT_INLINE_CACHE=1" \
    argv_has max_buildx 1 --cache-from "type=registry,ref=$CACHE" --build-arg BUILDKIT_INLINE_CACHE=1
check "max, classic image store: the image is tagged and pushed as the cache after its own push" \
    bash -c "grep -qxF 'tag $REG/team/app:v1-amd64 $CACHE' '$T/max_buildx.fake/calls.log' && grep -qxF 'push $CACHE' '$T/max_buildx.fake/calls.log'"
check "max, classic image store: cache push after the image push" order max_buildx "^push $REG/team/app:v1-amd64" "^push $CACHE"

fake_build min_docker20 docker20 min
check "min, Docker 20.10: succeeds" succeeded min_docker20
check "min, Docker 20.10: logs the inline path" logged min_docker20 "[mab] cache: inline cache $CACHE (final stage only)"
check "min, Docker 20.10: docker build --cache-from <cache> --build-arg BUILDKIT_INLINE_CACHE=1" \
    argv_has min_docker20 1 --cache-from "$CACHE" --build-arg BUILDKIT_INLINE_CACHE=1

# --- off: no cache flags anywhere
for engine in buildx-containerd buildx docker20; do
    fake_build "off_$engine" "$engine" off
    check "off, $engine: succeeds" succeeded "off_$engine"
    check "off, $engine: no --cache-from, --cache-to, BUILDKIT_INLINE_CACHE or cache image in any call" no_cache_words "off_$engine"
    check "off, $engine: one build" test "$(builds "off_$engine")" -eq 1
    check "off, $engine: logs it" logged "off_$engine" "[mab] cache: off (MAB_CACHE_MODE=off): no cache flags"
done

# --- failures around the cache never fail the build
fake_build cache_push_fails docker20 min FAKE_FAIL=cache-push
check "a failed cache push: the build still succeeds" succeeded cache_push_fails
check "a failed cache push: a warning in the job log" logged cache_push_fails \
    "[mab] warning: could not write the layer cache $CACHE (the image is pushed; the next build is slower): denied"

fake_build cached_build_fails buildx-containerd max FAKE_FAIL=cached-build
check "a build that fails with the cache: succeeds" succeeded cached_build_fails
check "a build that fails with the cache: says it builds once more without it" logged cached_build_fails \
    "[mab] the build with the layer cache failed: ERROR: cache import broke; building once more without reading the cache"
check "a build that fails with the cache: the retry reads no cache" \
    bash -c "! grep -q -- --cache-from '$T/cached_build_fails.fake/build-2.argv'"

fake_build inline_retry docker20 min FAKE_FAIL=cached-build
check "inline: the retry still writes the inline cache (BUILDKIT_INLINE_CACHE=1, no --cache-from)" \
    bash -c "grep -qx BUILDKIT_INLINE_CACHE=1 '$T/inline_retry.fake/build-2.argv' && ! grep -q -- --cache-from '$T/inline_retry.fake/build-2.argv'"

# --- the builder image label (dev.multiarch.builder-image): the first RepoDigest of the
#     image this job's container runs, else its image id; none (and one line) when not found
fake_build self_digest docker20 off FAKE_SELF=digest HOSTNAME=0123456789ab
check "builder image pulled by digest: labelled with its first RepoDigest" \
    argv_has self_digest 1 --label dev.multiarch.builder-image=ecr.example.com/builder@sha256:2222222222222222222222222222222222222222222222222222222222222222
fake_build self_local docker20 off FAKE_SELF=local HOSTNAME=0123456789ab
check "builder image built locally (no RepoDigest): labelled with its image id" \
    argv_has self_local 1 --label dev.multiarch.builder-image=sha256:1111111111111111111111111111111111111111111111111111111111111111
fake_build self_none docker20 off HOSTNAME=0123456789ab
check "builder image not found: succeeds" succeeded self_none
check "builder image not found: no label, and one line saying so" \
    bash -c "! grep -q builder-image '$T/self_none.fake/build-1.argv' && [ \"\$(grep -c 'builder image not found' '$T/self_none.out')\" = 1 ]"

# ================================================================== part 2: the real engine
if [ "$ENGINE" = no ]; then
    echo "# MAB_CACHE_TEST_ENGINE=skip: not running the real-engine part"
elif [ "$ENGINE" = down ]; then
    not_ok "the local stack is up (run e2e/local-stack up, or MAB_CACHE_TEST_ENGINE=skip)"
elif ! docker run --rm --entrypoint cat "$MAB_BUILDER_IMAGE" /usr/local/bin/build.sh | cmp -s - "$BUILD_SH"; then
    not_ok "the local builder image $MAB_BUILDER_IMAGE has this builder/build.sh (run e2e/local-stack up)"
else
    REPO="$MAB_REGISTRY/mab-cache-test/app-$$-$RANDOM"
    CACHE_IMG="$REPO:buildcache-amd64"
    # a busybox base image in the registry (a fresh host pulls its base image)
    mkdir -p "$T/rootfs/bin"
    cp "$(command -v busybox)" "$T/rootfs/bin/busybox"
    for a in sh head od cat; do ln -s busybox "$T/rootfs/bin/$a"; done
    if ! tar -C "$T/rootfs" -c . | docker import --change 'ENV PATH=/bin' - "$BASE_REF" >/dev/null ||
        ! docker push "$BASE_REF" >"$T/base-push.log" 2>&1; then
        not_ok "the base image is pushed to the local registry" "$(tail -n 3 "$T/base-push.log")"
    fi

    # manifest REF: the manifest JSON of REF in the local registry
    manifest() {
        local repo=${1%:*} tag=${1##*:}
        curl -sf -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
            -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
            "http://$MAB_REGISTRY/v2/${repo#*/}/manifests/$tag"
    }
    # run_layer REF: the digest of the image's second layer (the RUN step with random bytes)
    run_layer() {
        manifest "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["layers"][1]["digest"])'
    }
    # image_label REF KEY: the label KEY of REF's image config in the local registry
    image_label() {
        local repo=${1%:*} config
        config=$(manifest "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["config"]["digest"])') &&
            curl -sf "http://$MAB_REGISTRY/v2/${repo#*/}/blobs/$config" |
            python3 -c 'import json,sys; print((json.load(sys.stdin)["config"].get("Labels") or {}).get(sys.argv[1], ""))' "$2"
    }
    # fresh_host: remove this test's images and all build cache (a new Batch instance)
    fresh_host() {
        docker image ls --format '{{.Repository}}:{{.Tag}}' | grep -F "$MAB_REGISTRY/mab-cache-test/" |
            xargs -r docker image rm -f >/dev/null 2>&1
        docker builder prune -af >/dev/null 2>&1
    }
    # real_build NAME REVISION MODE: build.sh in the local builder image, on the local engine
    real_build() {
        local n=$1 rev=$2 mode=$3 cache=()
        [ "$mode" = off ] || cache=(-e "MAB_CACHE_IMAGE=$CACHE_IMG")
        docker run --rm --network host -v /var/run/docker.sock:/var/run/docker.sock -v "$T:$T:ro" \
            -e "MAB_GIT_URL=file://$T/app.git" -e "MAB_GIT_REVISION=$rev" -e MAB_PLATFORM=linux/amd64 \
            -e "MAB_IMAGE=$REPO:$rev-amd64" -e MAB_REGISTRY_AUTH=none -e "MAB_BUILD_UID=$BUILD_UID" \
            -e "MAB_INPUT_HASH=$INPUT_HASH" -e "MAB_CACHE_MODE=$mode" "${cache[@]}" \
            "$MAB_BUILDER_IMAGE" >"$T/$n.out" 2>"$T/$n.err"
        echo $? >"$T/$n.rc"
        if succeeded "$n"; then
            ok "engine, $n: builds and pushes"
        else
            not_ok "engine, $n: builds and pushes" "exit $(cat "$T/$n.rc")" "$(tail -n 3 "$T/$n.err")" "$(tail -n 5 "$T/$n.out")"
        fi
    }
    CLEANUP_IMAGES+=("$BASE_REF")

    # 1. the first build: no cache yet (slower, not failed); it writes the inline cache
    real_build first v1 min
    check "engine, first: logs the inline path (Docker 20.10)" logged first "[mab] cache: inline cache $CACHE_IMG (final stage only)"
    check "engine, first: wrote the cache image" logged first "[mab] wrote the layer cache $CACHE_IMG"
    # the builder ran in a container of the local builder image (built here: no RepoDigest);
    # with --network host its $HOSTNAME is the host's, so this is the /proc/self/mountinfo path
    BUILDER_ID=$(docker image inspect --format '{{.Id}}' "$MAB_BUILDER_IMAGE")
    FIRST_LABEL=$(image_label "$REPO:v1-amd64" dev.multiarch.builder-image)
    if [[ $BUILDER_ID == sha256:* ]] && [ "$FIRST_LABEL" = "$BUILDER_ID" ]; then
        ok "engine, first: the image's label dev.multiarch.builder-image is the builder container's image id ($BUILDER_ID)"
    else
        not_ok "engine, first: the image's label dev.multiarch.builder-image is the builder container's image id" \
            "label: ${FIRST_LABEL:-(none)}, builder image $MAB_BUILDER_IMAGE: ${BUILDER_ID:-(none)}" "$(grep -F 'builder image' "$T/first.out")"
    fi
    V1_LAYER=$(run_layer "$REPO:v1-amd64")
    CACHE_CONFIG=$(manifest "$CACHE_IMG" | python3 -c 'import json,sys; print(json.load(sys.stdin)["config"]["digest"])')
    check "engine, first: the cache image carries BuildKit's inline cache (moby.buildkit.cache.v0)" \
        bash -c "curl -sf 'http://$MAB_REGISTRY/v2/${REPO#*/}/blobs/$CACHE_CONFIG' | grep -q moby.buildkit.cache.v0"

    # 2. a fresh host, the next revision, mode max: this engine falls back to the inline cache,
    #    says so, and the random step comes from the cache
    fresh_host
    real_build warm v2 max
    check "engine, warm: says mode max falls back to the inline cache" logged warm \
        "this engine cannot export a registry cache (mode max needs buildx and the containerd image store), falling back to the inline cache"
    check "engine, warm on a fresh host: the RUN layer is the cached one (same digest as v1's)" \
        test "$(run_layer "$REPO:v2-amd64")" = "$V1_LAYER"
    check "engine, warm: BuildKit reports the step CACHED" grep -q 'CACHED' "$T/warm.out"

    # 3. mode off on a fresh host: no cache read (the step runs again) and none written
    CACHE_BEFORE=$(manifest "$CACHE_IMG" | sha256sum)
    fresh_host
    real_build off v3 off
    check "engine, off: the RUN step ran again (a new layer)" test "$(run_layer "$REPO:v3-amd64")" != "$V1_LAYER"
    check "engine, off: the cache image was not written" test "$(manifest "$CACHE_IMG" | sha256sum)" = "$CACHE_BEFORE"

    # 4. a garbage cache image (a manifest whose config and layer are not an image)
    python3 - "$MAB_REGISTRY" "${REPO#*/}" buildcache-amd64 <<'PY' || not_ok "push a garbage cache image"
import hashlib, json, sys, urllib.request
reg, repo, tag = sys.argv[1:4]
def blob(data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    r = urllib.request.urlopen(urllib.request.Request(f"http://{reg}/v2/{repo}/blobs/uploads/", method="POST"))
    loc = r.headers["Location"]
    loc = loc if loc.startswith("http") else f"http://{reg}{loc}"
    sep = "&" if "?" in loc else "?"
    urllib.request.urlopen(urllib.request.Request(f"{loc}{sep}digest={d}", data=data, method="PUT",
        headers={"Content-Type": "application/octet-stream"}))
    return {"digest": d, "size": len(data)}
m = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
     "config": dict(mediaType="application/vnd.docker.container.image.v1+json", **blob(b'{"moby.buildkit.cache.v0": 7}')),
     "layers": [dict(mediaType="application/vnd.docker.image.rootfs.diff.tar.gzip", **blob(b"not a layer"))]}
urllib.request.urlopen(urllib.request.Request(f"http://{reg}/v2/{repo}/manifests/{tag}", data=json.dumps(m).encode(),
    method="PUT", headers={"Content-Type": m["mediaType"]}))
PY
    fresh_host
    real_build garbage v3 min
    check "engine, garbage cache: the cache image is good again afterwards" \
        bash -c "curl -sf 'http://$MAB_REGISTRY/v2/${REPO#*/}/blobs/$(manifest "$CACHE_IMG" | python3 -c 'import json,sys; print(json.load(sys.stdin)["config"]["digest"])')' | grep -q '\"rootfs\"'"

    # 5. a foreign cache image: another image (the base image) under the cache tag
    if docker pull "$BASE_REF" >/dev/null 2>&1 && docker tag "$BASE_REF" "$CACHE_IMG" && docker push "$CACHE_IMG" >"$T/foreign-push.log" 2>&1; then
        docker image rm "$CACHE_IMG" >/dev/null 2>&1
        fresh_host
        real_build foreign v4 min
    else
        not_ok "engine, foreign: push the base image as the cache image" "$(tail -n 2 "$T/foreign-push.log")"
    fi

    # 6. a broken cache image: its RUN layer's blob is damaged in the registry's storage
    CACHED_LAYER=$(run_layer "$CACHE_IMG")
    BLOB=$MAB_STACK_DIR/registry/data/docker/registry/v2/blobs/sha256/${CACHED_LAYER:7:2}/${CACHED_LAYER#sha256:}/data
    if [ -f "$BLOB" ]; then
        echo garbage >"$BLOB"
        fresh_host
        real_build broken v5 min
    else
        not_ok "engine, broken: the cached RUN layer's blob is in the registry storage ($BLOB)"
    fi
    fresh_host
fi

tap_summary

#!/usr/bin/env bash
# benches/rebuild_cold_host.sh - bench rebuild_cold_host_ratio (issue 13): what the registry
# layer cache (MAB_CACHE_MODE) saves a rebuild on a fresh host.
#
# A generated repository (file://, bind-mounted read-only into the builder container) with two
# tags, r1 and r2, that differ only in changed.txt. Its Dockerfile is single-stage (the inline
# cache this engine writes covers it): FROM a busybox base image in the local registry (a fresh
# host pulls it), a RUN step of a FIXED amount of real CPU work (ROUNDS chained sha256sums of
# ROUND_MIB MiB each, about 40 s on the 2-core reference machine; no sleep, nothing bounded by
# time), then COPY changed.txt. "A fresh host" is the engine with this bench's images (its
# repository and the base image) and all build cache (docker builder prune -af) removed.
# builder/build.sh runs as a Batch job runs it: the local stack's builder image, the host's
# engine through the socket, with this working tree's build.sh mounted over the image's copy.
#   1. fresh host; r1 with MAB_CACHE_MODE=min: a real build, which writes the cache image
#   2. fresh host; r2 with the cache (min): (A); its log must say the RUN step was CACHED
#   3. fresh host; r2 with MAB_CACHE_MODE=off: (B); its RUN step must have run >= MIN_STEP_SECS
# (A) and (B) are the whole builder job (clone, build, push, cache write), timed to 1/100 s on
# /proc/uptime; build.sh's "[mab] build took S.CCs" and BuildKit's time for the RUN step are
# printed too. One run of each: the expensive step dominates. Step 2 reads the complete cache
# that the real build of step 1 wrote, and nothing reads a cache written by a cached build
# (Docker 20.10's inline cache loses the layers of cached steps, moby/buildkit#1981). Prints:
#   bench rebuild_cold_host_with_cache <A> s
#   bench rebuild_cold_host_without_cache <B> s
#   bench rebuild_cold_host_ratio <A/B> ratio
# then whether the target (ratio <= 0.25) is met; exits 1 when it is not, or when the
# measurement would mean nothing (the step ran under MIN_STEP_SECS: raise ROUNDS).
# Needs: the local stack up (e2e/local-stack up: Docker engine, registry, builder image), git,
# busybox, tar. Run by `make bench`.
set -euo pipefail
shopt -s inherit_errexit # the functions run in $(...) stop at a failure too

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
BUILD_SH=$REPO/builder/build.sh
DOCKER_SOCK=/var/run/docker.sock

# the expensive step: ROUNDS rounds, each the sha256sum of the previous hash and ROUND_MIB MiB
ROUNDS=98    # about 40 s on the reference machine (2 cores, vfs storage driver)
ROUND_MIB=64 # MiB hashed per round
MIN_STEP_SECS=30 # the uncached RUN step must take at least this long, or the ratio means nothing
TARGET_RATIO=0.25 # (A)/(B) at most this; checked as 4 * A <= B in centiseconds
BUILD_UID=mab-bench-rebuild-cold-host
INPUT_HASH=sha256:$(printf 'rebuild_cold_host rounds=%s mib=%s' "$ROUNDS" "$ROUND_MIB" | sha256sum | cut -c1-64)

BENCH_NAME=rebuild_cold_host
# shellcheck source=benches/lib.sh
. "$HERE/lib.sh"

bench_start=$(now_cs)
for tool in git busybox tar awk sha256sum docker; do
    command -v "$tool" >/dev/null || die "needs $tool"
done
[ -f "$BUILD_SH" ] || die "$BUILD_SH not found"

# ------------------------------------------------------------------ the local stack
use_local_stack

BASE_REF=$REGISTRY/mab-bench/busybox:1
APP=$REGISTRY/mab-bench/rebuild-$$ # one repository per run: no run sees another's cache
CACHE_IMG=$APP:buildcache-$ARCH

T=$(mktemp -d "${TMPDIR:-/tmp}/mab-bench-rebuild.XXXXXX")
chmod 755 "$T" # the builder container reads the repository through a bind mount
# fresh_host: remove this bench's images (its repository and the base image) and all build
# cache, as on a new Batch instance; the builder image and other images stay
fresh_host() {
    docker image ls --format '{{.Repository}}:{{.Tag}}' |
        awk -v base="$BASE_REF" -v app="$APP:" '$0 == base || index($0, app) == 1' |
        xargs -r docker image rm -f >/dev/null
    # (a docker CLI without buildx warns that its legacy builder is deprecated: kept out of sight)
    docker builder prune -af >/dev/null 2>"$T/prune.err" || {
        cat "$T/prune.err" >&2
        die "docker builder prune -af failed"
    }
}
cleanup() {
    (fresh_host) 2>/dev/null || true
    rm -rf "$T"
}
trap cleanup EXIT

# ------------------------------------------------------------------ the base image
mkdir -p "$T/rootfs/bin"
cp "$(command -v busybox)" "$T/rootfs/bin/busybox"
for a in sh cat dd sha256sum; do ln -s busybox "$T/rootfs/bin/$a"; done
tar -C "$T/rootfs" -c . | docker import --change 'ENV PATH=/bin' - "$BASE_REF" >/dev/null ||
    die "docker import of the base image failed"
docker push "$BASE_REF" >"$T/base-push.log" 2>&1 || {
    tail -n 3 "$T/base-push.log" >&2
    die "pushing the base image $BASE_REF failed"
}

# ------------------------------------------------------------------ the repository
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
make_repo() {
    local g=(git -c user.name=bench -c user.email=bench@example.invalid -c commit.gpgsign=false) r
    mkdir -p "$T/work" && cd "$T/work"
    "${g[@]}" -c init.defaultBranch=main init -q .
    cat >Dockerfile <<EOF
FROM $BASE_REF
RUN h=rebuild-cold-host; i=0; while [ "\$i" -lt $ROUNDS ]; do h=\$( { echo "\$h"; dd if=/dev/zero bs=1M count=$ROUND_MIB 2>/dev/null; } | sha256sum ); i=\$((i + 1)); done; echo "\$h" >/work.sha256; cat /work.sha256
COPY changed.txt /changed.txt
EOF
    for r in r1 r2; do
        echo "revision $r" >changed.txt
        "${g[@]}" add -A
        GIT_AUTHOR_DATE='1700000000 +0000' GIT_COMMITTER_DATE='1700000000 +0000' "${g[@]}" commit -q -m "$r"
        "${g[@]}" tag "$r"
    done
    "${g[@]}" clone -q --bare . "$T/app.git"
}
(make_repo) || die "could not create the bench repository"
chmod -R a+rX "$T/app.git"
R2=$(git -C "$T/app.git" rev-parse --verify 'r2^{commit}')

# ------------------------------------------------------------------ the builder job
# job NAME REVISION MODE: build.sh in the builder image on the host's engine; prints the whole
# job's time in centiseconds; the job's output is in $T/NAME.log
job() {
    local name=$1 rev=$2 mode=$3 out=$T/$1.log cache=() start end
    [ "$mode" = off ] || cache=(-e "MAB_CACHE_IMAGE=$CACHE_IMG")
    start=$(now_cs)
    if ! docker run --rm --network host \
        -v "$DOCKER_SOCK:$DOCKER_SOCK" \
        -v "$BUILD_SH:/usr/local/bin/build.sh:ro" \
        -v "$T:$T:ro" \
        -e "MAB_GIT_URL=file://$T/app.git" -e "MAB_GIT_REVISION=$rev" \
        -e "MAB_IMAGE=$APP:$rev-$ARCH" -e "MAB_PLATFORM=linux/$ARCH" \
        -e MAB_REGISTRY_AUTH=none -e "MAB_BUILD_UID=$BUILD_UID" -e "MAB_INPUT_HASH=$INPUT_HASH" \
        -e "MAB_CACHE_MODE=$mode" "${cache[@]}" \
        "$IMAGE" >"$out" 2>&1; then
        tail -n 5 "$out" >&2
        die "build.sh failed ($name: $rev, cache $mode)"
    fi
    end=$(now_cs)
    echo $((end - start))
}
# build_took NAME: build.sh's "[mab] build took S.CCs", in centiseconds
build_took() {
    local line t
    line=$(grep -E '^\[mab\] build took [0-9]+\.[0-9]{2}s$' "$T/$1.log" | tail -n 1) ||
        die "no '[mab] build took S.CCs' line in build.sh's output ($1)"
    t=${line#\[mab\] build took }
    t=${t%s}
    echo $((10#${t%.*}${t#*.}))
}
# run_step NAME: BuildKit's plain progress for the RUN step: "CACHED" or its time "S.S"
run_step() {
    local n
    n=$(grep -E '^#[0-9]+ \[[0-9]+/[0-9]+\] RUN ' "$T/$1.log" | head -n 1 | cut -d' ' -f1) ||
        die "no RUN step in BuildKit's output ($1)"
    [ -n "$n" ] || die "no RUN step in BuildKit's output ($1)"
    if grep -qxF "$n CACHED" "$T/$1.log"; then
        echo CACHED
    else
        grep -E "^$n DONE [0-9]+(\.[0-9]+)?s\$" "$T/$1.log" | tail -n 1 | sed 's/.* DONE //; s/s$//' | grep . ||
            die "no '$n DONE S.Ss' line for the RUN step in BuildKit's output ($1)"
    fi
}
built_commit() { # NAME REVISION-SHA: the job says it built this commit
    [ "$(tail -n 2 "$T/$1.log" | head -n 1)" = "commit: $2" ] ||
        die "build.sh did not build commit $2 ($1): $(tail -n 2 "$T/$1.log" | head -n 1)"
}

say "RUN step: $ROUNDS rounds of sha256sum over $ROUND_MIB MiB; repository $APP"
# 1. a real build of r1, which writes the cache
fresh_host
t1=$(job seed r1 min)
grep -qF "[mab] wrote the layer cache $CACHE_IMG" "$T/seed.log" ||
    die "the first build did not write the layer cache $CACHE_IMG: $(grep -E '^\[mab\] (cache|warning)' "$T/seed.log" | tr '\n' ' ')"
s1=$(run_step seed)
[ "$s1" != CACHED ] || die "the first build found its RUN step cached: the fresh host is not fresh"
say "1. r1, cache min, fresh host (writes the cache): job $(secs "$t1")s, build $(secs "$(build_took seed)")s, RUN step ${s1}s"

# 2. (A) r2 with the cache, on a fresh host
fresh_host
a=$(job with_cache r2 min)
built_commit with_cache "$R2"
sa=$(run_step with_cache)
[ "$sa" = CACHED ] ||
    die "the build with the cache ran its RUN step (${sa}s) instead of taking it from $CACHE_IMG: the measurement would be wrong"
say "2. r2, cache min, fresh host: job $(secs "$a")s, build $(secs "$(build_took with_cache)")s, RUN step CACHED"

# 3. (B) r2 without the cache, on a fresh host
fresh_host
b=$(job without_cache r2 off)
built_commit without_cache "$R2"
sb=$(run_step without_cache)
[ "$sb" != CACHED ] || die "the build without the cache found its RUN step cached: the fresh host is not fresh"
say "3. r2, cache off, fresh host: job $(secs "$b")s, build $(secs "$(build_took without_cache)")s, RUN step ${sb}s"
awk -v s="$sb" -v m="$MIN_STEP_SECS" 'BEGIN { exit !(s >= m) }' ||
    die "the uncached RUN step took ${sb}s, under ${MIN_STEP_SECS}s: this machine is faster than the reference; raise ROUNDS (now $ROUNDS) in $0"

report_ratio rebuild_cold_host_with_cache rebuild_cold_host_without_cache rebuild_cold_host_ratio "$a" "$b" 4 \
    "$TARGET_RATIO" "RUN step ${sb}s uncached; total $(secs $(($(now_cs) - bench_start)))s"

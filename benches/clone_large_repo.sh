#!/usr/bin/env bash
# benches/clone_large_repo.sh - bench clone_ratio_large_repo (issue 13): how much of a large
# repository's history the builder's fetch of one commit avoids.
#
# A generated repository with a long history (5,200 commits, about 250 MB of packed history of
# incompressible data) and a small tip (a Dockerfile, hello.txt and 40 files of 48 KiB: each
# commit rewrites one of them with new random bytes), served over the same transport as the
# builder tests (e2e/git_https_server.py: HTTPS, git http-backend, token checked). Measures,
# 3 times each, interleaved, in the local stack's builder image (what the Batch jobs run):
#   (a) builder/build.sh for real (MAB_GIT_REVISION=main, the token through a fake `aws`,
#       build and push to the local stack's registry): its "[mab] clone took S.CCs (path: ...)"
#       line, which must say "depth-1 fetch by SHA";
#   (b) `git clone --single-branch --branch main --no-tags` with the same git, server and token,
#       timed to 1/100 s on the same clock (/proc/uptime);
# and prints the medians and their ratio:
#   bench clone_fetch_one_commit <s> s
#   bench clone_full_single_branch <s> s
#   bench clone_ratio_large_repo <(a)/(b)> ratio
# then whether the target (ratio <= 0.1) is met; exits 1 when it is not.
#
# The repository is generated once (git fast-import, about 15 s) and cached under
# ${MAB_BENCH_CACHE:-/tmp/mab-bench-cache}, keyed by the recipe below.
# Needs: the local stack up (e2e/local-stack up: Docker engine, registry, builder image),
# git, python3, openssl, base64, sha256sum. Run by `make bench`.
set -euo pipefail
shopt -s inherit_errexit # the functions run in $(...) stop at a failure too

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
BUILD_SH=$REPO/builder/build.sh
SERVER_PY=$REPO/e2e/git_https_server.py
DOCKER_SOCK=/var/run/docker.sock

# the recipe of the generated repository; bump RECIPE when the generator changes
RECIPE=1
COMMITS=5200    # commits on main (the first adds every file)
FILES=40        # data files in the tip
FILE_SIZE=49152 # bytes of random data per file, rewritten by every later commit (one file each)
SEED=13
MIN_COMMITS=5000
MIN_HISTORY_BYTES=200000000
TARGET_RATIO=0.1 # (a)/(b) at most this; checked as 10 * a <= b in centiseconds
RUNS=3
TOKEN=mab-bench-token
ARN=arn:aws:secretsmanager:us-east-1:123456789012:secret:mab-bench-git-token

BENCH_NAME=clone_large_repo
# shellcheck source=benches/lib.sh
. "$HERE/lib.sh"

bench_start=$(now_cs)
for tool in git python3 openssl base64 sha256sum docker; do
    command -v "$tool" >/dev/null || die "needs $tool"
done
[ -f "$BUILD_SH" ] || die "$BUILD_SH not found"
[ -f "$SERVER_PY" ] || die "$SERVER_PY not found"

# ------------------------------------------------------------------ the local stack
use_local_stack

T=$(mktemp -d "${TMPDIR:-/tmp}/mab-bench-clone.XXXXXX")
SERVER_PID=''
cleanup() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$T"
}
trap cleanup EXIT

# the repositories are made and checked without the user's or the system's git configuration
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1

# ------------------------------------------------------------------ the repository (cached)
CACHE=${MAB_BENCH_CACHE:-/tmp/mab-bench-cache}
KEY=large-repo-r$RECIPE-c$COMMITS-f$FILES-s$FILE_SIZE-seed$SEED
ROOT=$CACHE/$KEY # served as the server's root: https://127.0.0.1:PORT/large.git
LARGE=$ROOT/large.git

# check_repo DIR: prints "COMMITS PACK_BYTES TIP_BYTES TIP_FILES"; fails when below the minimums
check_repo() {
    local dir=$1 n kib pack tip files
    n=$(git -C "$dir" rev-list --count refs/heads/main 2>/dev/null) || return 1
    kib=$(git -C "$dir" count-objects -v | awk '$1 == "size-pack:" { print $2 }')
    pack=$((kib * 1024))
    read -r tip files < <(git -C "$dir" ls-tree -r -l refs/heads/main | awk '{ s += $4; n++ } END { print s + 0, n + 0 }')
    git -C "$dir" cat-file -e refs/heads/main:Dockerfile 2>/dev/null || return 1
    echo "$n $pack $tip $files"
    [ "$n" -ge "$MIN_COMMITS" ] && [ "$pack" -ge "$MIN_HISTORY_BYTES" ]
}

generate() { # DIR: a bare repository made by the recipe
    local dir=$1
    git -c init.defaultBranch=main init -q --bare "$dir"
    # one commit a second from a fixed date, fixed author, seeded random data: the same
    # repository (the same SHAs) on every machine
    python3 - "$COMMITS" "$FILES" "$FILE_SIZE" "$SEED" <<'EOF' | git -C "$dir" fast-import --quiet --done
import random, sys
commits, nfiles, size, seed = (int(a) for a in sys.argv[1:5])
rng = random.Random(seed)
out = sys.stdout.buffer
def data(b):
    out.write(b"data %d\n" % len(b))
    out.write(b)
    out.write(b"\n")
for c in range(commits):
    out.write(b"commit refs/heads/main\n")
    out.write(b"committer mab bench <bench@example.invalid> %d +0000\n" % (1700000000 + c))
    data(b"bench commit %d" % c)
    if c == 0:
        out.write(b"M 100644 inline Dockerfile\n")
        data(b"FROM scratch\nCOPY hello.txt /\n")
        out.write(b"M 100644 inline hello.txt\n")
        data(b"hello from benches/clone_large_repo.sh\n")
        paths = range(nfiles)
    else:
        paths = [(c - 1) % nfiles]
    for i in paths:
        out.write(b"M 100644 inline data/blob-%02d.bin\n" % i)
        data(rng.randbytes(size))
out.write(b"done\n")
EOF
    git -C "$dir" repack -a -d -q
    git -C "$dir" config uploadpack.allowFilter true
}

gen_secs=''
if stats=$(check_repo "$LARGE" 2>/dev/null); then
    say "repository: cached at $LARGE"
else
    say "repository: generating $KEY ($COMMITS commits, $FILES files of $FILE_SIZE random bytes, one rewritten per commit)"
    mkdir -p "$CACHE"
    gen_start=$(now_cs)
    tmp=$(mktemp -d "$CACHE/$KEY.tmp.XXXXXX")
    generate "$tmp/large.git" || {
        rm -rf "$tmp"
        die "generating the repository failed"
    }
    gen_secs=$(secs $(($(now_cs) - gen_start)))
    if ! stats=$(check_repo "$tmp/large.git"); then
        rm -rf "$tmp"
        die "the generated repository is too small: got (commits, packed bytes, tip bytes, tip files) = (${stats:-?}), need >= $MIN_COMMITS commits and >= $MIN_HISTORY_BYTES bytes of packed history"
    fi
    rm -rf "$ROOT"
    mv -T "$tmp" "$ROOT"
    say "repository: generated in ${gen_secs}s, cached at $LARGE"
fi
read -r n_commits pack_bytes tip_bytes tip_files <<<"$stats"
say "repository: $n_commits commits, history $(git -C "$LARGE" count-objects -vH | sed -n 's/^size-pack: //p') packed ($pack_bytes bytes), tip $tip_bytes bytes in $tip_files files"
TIP=$(git -C "$LARGE" rev-parse --verify 'refs/heads/main^{commit}')

# ------------------------------------------------------------------ the HTTPS git server
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$T/key.pem" -out "$T/cert.pem" >/dev/null 2>&1 ||
    die "openssl could not make a certificate"
chmod 0644 "$T/cert.pem"
# the request log would record every request of every run: /dev/null
python3 "$SERVER_PY" "$ROOT" "$TOKEN" /dev/null "$T/port" "$T/cert.pem" "$T/key.pem" &
SERVER_PID=$!
for _ in $(seq 1 100); do
    [ -s "$T/port" ] && break
    sleep 0.1
done
[ -s "$T/port" ] || die "the git server did not start"
URL=https://127.0.0.1:$(cat "$T/port")/large.git

# the fake AWS CLI of the builder container: the secret is the token
mkdir -p "$T/bin"
printf '#!/bin/sh\nprintf "%%s\\n" %s\n' "$TOKEN" >"$T/bin/aws"
chmod 0755 "$T/bin" "$T/bin/aws"
# for (b): the header build.sh would send (read by docker from this environment, not argv)
MAB_BENCH_HEADER="Authorization: Basic $(printf 'x-access-token:%s' "$TOKEN" | base64 | tr -d '\n')"
export MAB_BENCH_HEADER
INPUT_HASH=sha256:$(printf 'clone_large_repo %s' "$KEY" | sha256sum | cut -c1-64)

# (a) build.sh in the builder image as a Batch job runs it (host socket), with this working
# tree's build.sh mounted over the image's copy; prints the clone time in centiseconds
fetch_one_commit() { # RUN
    local out=$T/build-$1.log line path t
    if ! docker run --rm --network host \
        -v "$DOCKER_SOCK:$DOCKER_SOCK" \
        -v "$BUILD_SH:/usr/local/bin/build.sh:ro" \
        -v "$T/bin:/bench/bin:ro" -v "$T/cert.pem:/bench/cert.pem:ro" \
        -e PATH=/bench/bin:/usr/local/bin:/usr/bin:/bin \
        -e GIT_SSL_CAINFO=/bench/cert.pem \
        -e "MAB_GIT_URL=$URL" -e MAB_GIT_REVISION=main \
        -e "MAB_GIT_CREDENTIALS_SECRET_ARN=$ARN" \
        -e "MAB_IMAGE=$REGISTRY/bench/clone:v1-$ARCH" -e "MAB_PLATFORM=linux/$ARCH" \
        -e MAB_REGISTRY_AUTH=none -e MAB_BUILD_UID=bench -e "MAB_INPUT_HASH=$INPUT_HASH" \
        "$IMAGE" >"$out" 2>&1; then
        tail -n 5 "$out" >&2
        die "build.sh failed (run $1)"
    fi
    [ "$(tail -n 2 "$out" | head -n 1)" = "commit: $TIP" ] ||
        die "build.sh did not build commit $TIP (run $1): $(tail -n 2 "$out" | head -n 1)"
    line=$(grep -E '^\[mab\] clone took [0-9]+\.[0-9]{2}s \(path: .*\)$' "$out" | tail -n 1) ||
        die "no '[mab] clone took S.CCs (path: ...)' line in build.sh's output (run $1)"
    path=${line#*(path: }
    path=${path%)}
    [ "$path" = 'depth-1 fetch by SHA' ] ||
        die "build.sh took the path '$path', not 'depth-1 fetch by SHA' (run $1): $(grep '^\[mab\] ' "$out" | grep -iE 'fetch|clone' | tr '\n' ' ')"
    t=${line#\[mab\] clone took }
    t=${t%%s *}
    echo $((10#${t%.*}${t#*.}))
}

# (b) the full single-branch clone, same image, git, server and token; centiseconds
full_clone() { # RUN
    local out=$T/clone-$1.log start end n head
    # shellcheck disable=SC2016 # expanded by the container's shell
    if ! docker run --rm --network host \
        -v "$T/cert.pem:/bench/cert.pem:ro" \
        -e GIT_SSL_CAINFO=/bench/cert.pem -e MAB_BENCH_HEADER -e "URL=$URL" \
        --entrypoint /bin/sh "$IMAGE" -c '
            set -e
            export HOME=/tmp/home GIT_CONFIG_NOSYSTEM=1 GIT_TERMINAL_PROMPT=0
            mkdir -p "$HOME"
            read -r start _ </proc/uptime
            git -c http.extraHeader="$MAB_BENCH_HEADER" clone --quiet --single-branch --branch main --no-tags "$URL" /tmp/clone
            read -r end _ </proc/uptime
            echo "times $start $end"
            echo "commits $(git -C /tmp/clone rev-list --count HEAD)"
            echo "head $(git -C /tmp/clone rev-parse HEAD)"' >"$out" 2>&1; then
        tail -n 5 "$out" >&2
        die "the full clone failed (run $1)"
    fi
    read -r _ start end < <(grep '^times ' "$out")
    read -r _ n < <(grep '^commits ' "$out")
    read -r _ head < <(grep '^head ' "$out")
    if [ "$head" != "$TIP" ] || [ "$n" != "$n_commits" ]; then
        die "the full clone has commit $head with $n commits, not $TIP with $n_commits (run $1)"
    fi
    echo $((10#${end%.*}${end#*.} - 10#${start%.*}${start#*.}))
}

# the pack in the page cache before the first run, as for the others
cat "$LARGE"/objects/pack/*.pack >/dev/null
fetch_cs=()
full_cs=()
for run in $(seq 1 "$RUNS"); do
    t=$(fetch_one_commit "$run")
    fetch_cs+=("$t")
    t=$(full_clone "$run")
    full_cs+=("$t")
    say "run $run: fetch of one commit $(secs "${fetch_cs[-1]}")s (depth-1 fetch by SHA), full single-branch clone $(secs "${full_cs[-1]}")s"
done
a=$(median "${fetch_cs[@]}")
b=$(median "${full_cs[@]}")
total="total $(secs $(($(now_cs) - bench_start)))s${gen_secs:+, of which generation ${gen_secs}s}"
report_ratio clone_fetch_one_commit clone_full_single_branch clone_ratio_large_repo "$a" "$b" 10 "$TARGET_RATIO" \
    "$n_commits commits, $pack_bytes bytes of history; $total"

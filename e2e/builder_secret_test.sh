#!/usr/bin/env bash
# e2e/builder_secret_test.sh - the git token of MAB_GIT_CREDENTIALS_SECRET_ARN never leaks.
#
# Runs builder/build.sh on this host (no Batch, no Docker engine) with:
#   - a fake `aws` that returns the token ghp_FAKE_SECRET_123 for the secret,
#   - a local HTTPS git server (Python, self-signed, loopback) that serves bare repos ONLY to
#     requests carrying the right Authorization header and records every request: smart http
#     (git http-backend, protocol v2), /v0/... smart http restricted to protocol v0 (refuses a
#     want of an unadvertised SHA), /dumb/... the dumb http protocol,
#   - a fake `docker` that records its argv and environment,
#   - a `git` wrapper that records its argv, and strace -f -e trace=execve (if installed)
#     that records the argv of every process build.sh starts.
# and checks the token is in no stdout/stderr line, no argv, no request path, not in docker's
# environment, not in any error message - and that the git server did receive the header.
# It also checks the output contract (the last two stdout lines are "commit: <40 hex>" then
# "digest: sha256:<64 hex>"), the image labels passed to `docker build` (revision, source,
# build uid, input hash), how a full-SHA MAB_GIT_REVISION is resolved, which fetch path is
# taken (depth-1 fetch by SHA, blobless partial clone, full clone) and the timing lines.
# Needs: bash, git, python3, openssl; strace optional. Prints "N passed, M failed".
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD_SH=$(dirname "$HERE")/builder/build.sh
PAT=ghp_FAKE_SECRET_123
PAT_B64=$(printf 'x-access-token:%s' "$PAT" | base64 | tr -d '\n')
ARN=arn:aws:secretsmanager:us-east-1:123456789012:secret:mab-test-pat
# the shell that runs build.sh: dash as sh on Debian; MAB_TEST_SHELL="busybox sh" for busybox
read -r -a SH <<<"${MAB_TEST_SHELL:-sh}"

# shellcheck source=e2e/tap.sh
. "$HERE/tap.sh"

for tool in git python3 openssl base64; do
    command -v "$tool" >/dev/null || {
        echo "builder_secret_test: needs $tool" >&2
        exit 2
    }
done
[ -f "$BUILD_SH" ] || {
    echo "builder_secret_test: $BUILD_SH not found" >&2
    exit 2
}
REAL_GIT=$(command -v git)

T=$(mktemp -d "${TMPDIR:-/tmp}/mab-secret-test.XXXXXX")
SERVER_PID=''
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT

# ------------------------------------------------------------------ a repo to serve
mkdir -p "$T/work" "$T/srv" "$T/bin"
# the test repositories are made without the user's or the system's git configuration
# (build.sh runs under env -i: this does not reach it)
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
(
    cd "$T/work" &&
        git -c init.defaultBranch=main init -q . &&
        printf 'FROM scratch\nCOPY hello.txt /\n' >Dockerfile &&
        echo hello >hello.txt &&
        git add -A &&
        git -c user.name=t -c user.email=t@example.invalid -c commit.gpgsign=false commit -q -m init &&
        echo hello again >>hello.txt &&
        git -c user.name=t -c user.email=t@example.invalid -c commit.gpgsign=false tag -a -m v1 v1 HEAD &&
        git -c user.name=t -c user.email=t@example.invalid -c commit.gpgsign=false commit -q -a -m second &&
        git clone -q --bare . "$T/srv/repo.git" &&
        git -C "$T/srv/repo.git" config uploadpack.allowFilter true &&
        git -C "$T/srv/repo.git" update-server-info
) || {
    echo "builder_secret_test: could not create the test repository" >&2
    exit 2
}
# the commit the served repo's main resolves to (the revision label and the commit: line)
MAIN_SHA=$(git -C "$T/srv/repo.git" rev-parse --verify 'refs/heads/main^{commit}')
[[ $MAIN_SHA =~ ^[0-9a-f]{40}$ ]] || {
    echo "builder_secret_test: cannot read the test repository's main ('$MAIN_SHA')" >&2
    exit 2
}
# the commit before it: on main, but not a branch's tip (a protocol v0 server without
# uploadpack.allowReachableSHA1InWant refuses to serve it by SHA)
FIRST_SHA=$(git -C "$T/srv/repo.git" rev-parse --verify 'refs/heads/main~1^{commit}')
# shabranch.git: like repo.git, plus a branch NAMED $MAIN_SHA that points at another commit
# (so MAB_GIT_REVISION=$MAIN_SHA resolves, as a branch, to $OTHER_SHA)
(
    git clone -q "$T/work" "$T/work2" &&
        cd "$T/work2" &&
        git checkout -q -b other &&
        echo other >hello.txt &&
        git -c user.name=t -c user.email=t@example.invalid -c commit.gpgsign=false commit -q -a -m other &&
        git update-ref "refs/heads/$MAIN_SHA" refs/heads/other &&
        git clone -q --bare . "$T/srv/shabranch.git" &&
        git -C "$T/srv/shabranch.git" update-server-info
) || {
    echo "builder_secret_test: could not create the test repository shabranch.git" >&2
    exit 2
}
OTHER_SHA=$(git -C "$T/srv/shabranch.git" rev-parse --verify "refs/heads/$MAIN_SHA^{commit}")
# sha256.git: a SHA-256 repository (commit ids of 64 hex), if this git can make one
SHA256_REPO=no
if (
    git -c init.defaultBranch=main init -q --object-format=sha256 "$T/work256" &&
        cd "$T/work256" &&
        printf 'FROM scratch\nCOPY hello.txt /\n' >Dockerfile &&
        echo hello >hello.txt &&
        git add -A &&
        git -c user.name=t -c user.email=t@example.invalid -c commit.gpgsign=false commit -q -m init &&
        git clone -q --bare . "$T/srv/sha256.git" &&
        git -C "$T/srv/sha256.git" update-server-info
) >/dev/null 2>&1; then
    SHA256_REPO=yes
else
    echo "# this git cannot make a SHA-256 repository: skipping the SHA-256 case"
fi
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$T/key.pem" -out "$T/cert.pem" >/dev/null 2>&1 || {
    echo "builder_secret_test: openssl could not make a certificate" >&2
    exit 2
}

# ------------------------------------------------------------------ the HTTPS git server
# e2e/git_https_server.py: smart http (v2), /v0/ (protocol v0 only), /dumb/ (dumb http);
# serves only requests with the right Authorization header; records every request
SERVER_PY=$HERE/git_https_server.py
[ -f "$SERVER_PY" ] || {
    echo "builder_secret_test: $SERVER_PY not found" >&2
    exit 2
}
start_server() { # TOKEN_THE_SERVER_ACCEPTS
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -f "$T/port" "$T/requests.log"
    python3 "$SERVER_PY" "$T/srv" "$1" "$T/requests.log" "$T/port" "$T/cert.pem" "$T/key.pem" &
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        [ -s "$T/port" ] && break
        sleep 0.1
    done
    [ -s "$T/port" ] || {
        echo "builder_secret_test: the test git server did not start" >&2
        exit 2
    }
    PORT=$(cat "$T/port")
}

# ------------------------------------------------------------------ fakes on PATH
cat >"$T/bin/aws" <<EOF
#!/bin/sh
# fake AWS CLI: records its argv; the token is in this file, never in an argv
printf '%s\n' "\$*" >>"$T/aws-argv.log"
case "\$1 \$2" in
"secretsmanager get-secret-value")
    case "\${FAKE_AWS_MODE:-ok}" in
    ok) printf '%s\n' '$PAT' ;;
    json) printf '%s\n' '{"token": "$PAT"}' ;;
    fail) echo "An error occurred (AccessDeniedException) when calling the GetSecretValue operation: not allowed" >&2; exit 254 ;;
    esac ;;
*) echo "fake aws: unexpected \$*" >&2; exit 1 ;;
esac
EOF
cat >"$T/bin/docker" <<EOF
#!/bin/sh
# fake docker: records argv and environment, and the argv of a build one word a line
printf '%s\n' "\$*" >>"$T/docker-argv.log"
env >>"$T/docker-env.log"
case "\$1 \${2:-}" in
"build "* | "buildx build") printf '%s\n' "\$@" >"$T/docker-build-argv.log" ;;
esac
case "\$1" in
version) echo 20.10.24 ;;
buildx) exit 1 ;;
build) echo "fake build ok" ;;
image) case "\$2" in inspect) echo linux/amd64 ;; esac ;;
push) echo "t-amd64: digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef size: 1" ;;
login) cat >/dev/null ;;
esac
exit 0
EOF
cat >"$T/bin/git" <<EOF
#!/bin/sh
printf '%s\n' "\$*" >>"$T/git-argv.log"
exec "$REAL_GIT" "\$@"
EOF
chmod +x "$T/bin/aws" "$T/bin/docker" "$T/bin/git"

STRACE=''
if command -v strace >/dev/null && strace -f -qq -e trace=execve -o /dev/null true 2>/dev/null; then
    STRACE=strace
else
    echo "# strace not usable here: checking argv through the git/docker/aws shims only"
fi

BUILD_UID=0f8e2c4a-1b3d-4e5f-8a9b-0c1d2e3f4a5b
INPUT_HASH=sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
DIGEST=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef

# run_build NAME [VAR=VALUE...]: build.sh with a clean environment (a VAR=VALUE given here
# overrides the default one: env keeps the last); leaves
# $T/NAME.out, $T/NAME.err, $T/NAME.rc, $T/NAME.strace
run_build() {
    local name=$1
    shift
    rm -f "$T/aws-argv.log" "$T/docker-argv.log" "$T/docker-env.log" "$T/git-argv.log" "$T/docker-build-argv.log"
    local envv=(
        "PATH=$T/bin:/usr/local/bin:/usr/bin:/bin"
        "TMPDIR=$T"
        "GIT_SSL_CAINFO=$T/cert.pem"
        # tracing asked for by the caller must not print the header
        "GIT_TRACE=1" "GIT_TRACE_CURL=1" "GIT_CURL_VERBOSE=1"
        "MAB_GIT_URL=https://127.0.0.1:$PORT/repo.git"
        "MAB_GIT_REVISION=main"
        "MAB_GIT_CREDENTIALS_SECRET_ARN=$ARN"
        "MAB_IMAGE=registry.example.com/team/app:t-amd64"
        "MAB_PLATFORM=linux/amd64"
        "MAB_REGISTRY_AUTH=none"
        "MAB_ALLOW_EMULATION=true"
        "MAB_BUILD_UID=$BUILD_UID"
        "MAB_INPUT_HASH=$INPUT_HASH"
        "$@"
    )
    local pre=()
    [ -n "$STRACE" ] && pre=(strace -f -qq -s 4096 -e trace=execve -o "$T/$name.strace")
    : >"$T/$name.strace"
    env -i "${envv[@]}" "${pre[@]}" "${SH[@]}" "$BUILD_SH" >"$T/$name.out" 2>"$T/$name.err"
    echo $? >"$T/$name.rc"
}

# no_secret NAME FILE...: neither the token nor the base64 header value in any FILE
no_secret() {
    local name=$1 f hits=()
    shift
    for f in "$@"; do
        [ -f "$f" ] || continue
        if grep -qF -e "$PAT" -e "$PAT_B64" "$f"; then
            hits+=("$(basename "$f"): $(grep -F -e "$PAT" -e "$PAT_B64" "$f" | head -n 1 | cut -c1-200)")
        fi
    done
    if [ "${#hits[@]}" -eq 0 ]; then ok "$name"; else not_ok "$name" "${hits[@]}"; fi
}

one_stderr_line() { # NAME EXPECTED_SUBSTRING
    local n=$1 want=$2 lines
    lines=$(grep -c '' "$T/$n.err")
    if [ "$lines" -eq 1 ] && grep -q '^build\.sh: ' "$T/$n.err" && grep -qF -- "$want" "$T/$n.err"; then
        ok "$n: one stderr line containing '$want'"
    else
        not_ok "$n: one stderr line containing '$want'" "got $lines line(s):" "$(cat "$T/$n.err")"
    fi
}

# last_two NAME COMMIT: exit 0, and the last two stdout lines are "commit: COMMIT" then the
# fake push's digest, with nothing on stderr (so nothing after them there either)
last_two() {
    local n=$1 want=$2 rc got re
    re=$'^commit: [0-9a-f]{40}\ndigest: sha256:[0-9a-f]{64}$'
    rc=$(cat "$T/$n.rc")
    got=$(tail -n 2 "$T/$n.out")
    if [ "$rc" -eq 0 ] && [ "$got" = "commit: $want"$'\n'"digest: $DIGEST" ] &&
        [[ $got =~ $re ]]; then
        ok "$n: exit 0, the last two stdout lines are 'commit: $want' then 'digest: $DIGEST'"
    else
        not_ok "$n: exit 0, the last two stdout lines are 'commit: $want' then 'digest: $DIGEST'" \
            "exit $rc; last stdout lines:" "$(tail -n 3 "$T/$n.out")" "stderr:" "$(tail -n 3 "$T/$n.err")"
    fi
    if [ ! -s "$T/$n.err" ]; then
        ok "$n: nothing on stderr"
    else
        not_ok "$n: nothing on stderr" "$(tail -n 3 "$T/$n.err")"
    fi
}

# label NAME KEY VALUE: the recorded `docker build` argv has "--label" "KEY=VALUE" as two
# words, exactly once for KEY
label() {
    local n=$1 key=$2 want=$3 got
    got=$(awk -v k="$key=" 'prev == "--label" && index($0, k) == 1 { print substr($0, length(k) + 1) } { prev = $0 }' \
        "$T/docker-build-argv.log" 2>/dev/null)
    if [ "$got" = "$want" ]; then
        ok "$n: docker build got --label $key=$want"
    else
        not_ok "$n: docker build got --label $key=$want" "got: ${got:-(none)}" \
            "$(grep -A1 -e '^--label$' "$T/docker-build-argv.log" 2>/dev/null | tr '\n' ' ')"
    fi
}

# in_log NAME PATTERN: a stdout line matches PATTERN (a shell glob: only * is special here)
in_log() {
    local n=$1 want=$2 line
    while IFS= read -r line; do
        # shellcheck disable=SC2053 # PATTERN is a glob on purpose
        if [[ $line == ${want//[/\\[} ]]; then
            ok "$n: stdout has '$want'"
            return
        fi
    done <"$T/$n.out"
    not_ok "$n: stdout has '$want'" "$(grep '^\[mab\]' "$T/$n.out" | tail -n 12)"
}

# timing NAME: "[mab] clone took S.CCs (path: ...)", "build took S.CCs", "push took S.CCs" in this order,
# all before the last two stdout lines
timing() {
    local n=$1 body
    body=$(head -n -2 "$T/$n.out" | grep -E '^\[mab\] (clone|build|push) took [0-9]+\.[0-9]{2}s( \(path: [A-Za-z0-9 -]+\))?$' |
        sed -E 's/^\[mab\] ([a-z]+) took.*/\1/' | tr '\n' ' ')
    if [ "$body" = "clone build push " ] && tail -n 2 "$T/$n.out" | grep -q '^commit: ' &&
        grep -qE '^\[mab\] times: clone [0-9]+\.[0-9]{2}s \(.+\), build [0-9]+\.[0-9]{2}s, push [0-9]+\.[0-9]{2}s$' "$T/$n.out"; then
        ok "$n: 'clone/build/push took S.CCs' lines (and the times summary) come before the last two lines"
    else
        not_ok "$n: 'clone/build/push took S.CCs' lines come before the last two lines" "got: $body" \
            "$(tail -n 5 "$T/$n.out")"
    fi
}

# ================================================================== 0. control
# the argv check must be able to see a token that IS in an argv
if [ -n "$STRACE" ]; then
    # shellcheck disable=SC2016 # $1 is expanded by the inner sh
    strace -f -qq -s 4096 -e trace=execve -o "$T/control.strace" sh -c '/bin/echo "$1" >/dev/null' sh "$PAT"
    if grep -qF "$PAT" "$T/control.strace"; then
        ok "control: strace shows a token passed in argv"
    else
        not_ok "control: strace shows a token passed in argv" "the argv checks below would prove nothing"
    fi
fi

# ================================================================== 1. success
start_server "$PAT"
run_build good
last_two good "$MAIN_SHA"
label good org.opencontainers.image.revision "$MAIN_SHA"
label good org.opencontainers.image.source "https://127.0.0.1:$PORT/repo.git"
label good dev.multiarch.build-uid "$BUILD_UID"
label good dev.multiarch.inputs "$INPUT_HASH"
if grep -q "\"authorization\": \"Basic $PAT_B64\"" "$T/requests.log" 2>/dev/null; then
    ok "good: the git server received 'Authorization: Basic base64(x-access-token:TOKEN)'"
else
    not_ok "good: the git server received the Authorization header" "$(head -n 3 "$T/requests.log" 2>/dev/null)"
fi
if [ -f "$T/requests.log" ] && ! jq_paths=$(python3 -c 'import json,sys; [print(json.loads(l)["path"]) for l in open(sys.argv[1])]' "$T/requests.log" | grep -F "$PAT"); then
    ok "good: the token is in no request URL"
else
    not_ok "good: the token is in no request URL" "${jq_paths:-no request log}"
fi
no_secret "good: the token is not in stdout/stderr (GIT_TRACE/GIT_TRACE_CURL were set)" "$T/good.out" "$T/good.err"
if [ -n "$STRACE" ]; then
    if grep -q 'execve(' "$T/good.strace" && grep -q 'remote-https' "$T/good.strace"; then
        ok "good: strace saw the child processes (git-remote-https among them)"
    else
        not_ok "good: strace saw the child processes" "$(head -n 5 "$T/good.strace")"
    fi
    no_secret "good: the token is in no argv of any process (strace execve)" "$T/good.strace"
fi
no_secret "good: the token is in no argv of git, docker or aws (shims)" "$T/git-argv.log" "$T/docker-argv.log" "$T/aws-argv.log"
no_secret "good: the token is not in docker's environment" "$T/docker-env.log"
check "good: the http header env (GIT_CONFIG_VALUE_0) does not reach docker" \
    bash -c "! grep -qE '^GIT_CONFIG_(COUNT|KEY_|VALUE_)' '$T/docker-env.log'"
check "good: git fetched the commit by SHA at depth 1 (shim)" \
    grep -qxF "fetch --depth 1 --no-tags origin $MAIN_SHA" "$T/git-argv.log"
check "good: git fetched nothing else (every fetch was at depth 1, no clone)" \
    bash -c "! grep -e '^fetch ' -e '^clone ' '$T/git-argv.log' | grep -qv -e '^fetch --depth 1 '"
in_log good "[mab] fetched commit $MAIN_SHA at depth 1 (fetch by SHA)"
in_log good "[mab] clone took *s (path: depth-1 fetch by SHA)"
timing good
check "good: the server spoke smart http (POST git-upload-pack)" \
    grep -q '"method": "POST", "path": "/repo.git/git-upload-pack"' "$T/requests.log"

# ================================================================== 2. clone of a missing repo
run_build missing "MAB_GIT_URL=https://127.0.0.1:$PORT/no-such-repo.git"
check "missing repo: exit 1" test "$(cat "$T/missing.rc")" -eq 1
one_stderr_line missing "git clone of https://127.0.0.1:$PORT/no-such-repo.git failed"
no_secret "missing repo: the token is in no output or argv" "$T/missing.out" "$T/missing.err" "$T/missing.strace" "$T/git-argv.log"

# ================================================================== 3. server rejects the token
start_server "ghp_SOME_OTHER_TOKEN"
run_build rejected
check "rejected token: exit 1" test "$(cat "$T/rejected.rc")" -eq 1
one_stderr_line rejected "git clone of"
no_secret "rejected token: the token is in no output or argv" "$T/rejected.out" "$T/rejected.err" "$T/rejected.strace"
start_server "$PAT"

# ================================================================== 4. Secrets Manager fails
run_build awsfail FAKE_AWS_MODE=fail
check "secret read fails: exit 1" test "$(cat "$T/awsfail.rc")" -eq 1
one_stderr_line awsfail "could not read secret $ARN: An error occurred (AccessDeniedException)"
check "secret read fails: git never ran" test ! -s "$T/git-argv.log"

# ================================================================== 5. secret is JSON, not a token
run_build json FAKE_AWS_MODE=json
check "JSON secret: exit 1" test "$(cat "$T/json.rc")" -eq 1
one_stderr_line json "SecretString must be the token itself"
no_secret "JSON secret: the token is in no output" "$T/json.out" "$T/json.err" "$T/json.strace"

# ================================================================== 6. token in the URL is refused
run_build inurl "MAB_GIT_URL=https://x-access-token:$PAT@127.0.0.1:$PORT/repo.git"
check "token in URL: exit 2" test "$(cat "$T/inurl.rc")" -eq 2
one_stderr_line inurl "MAB_GIT_URL must not contain credentials"
no_secret "token in URL: the error message does not repeat it" "$T/inurl.err" "$T/inurl.out"

# ================================================================== 7. full-SHA revisions
run_build fullsha "MAB_GIT_REVISION=$MAIN_SHA"
last_two fullsha "$MAIN_SHA"
label fullsha org.opencontainers.image.revision "$MAIN_SHA"
# an uppercase SHA is the same commit: printed and labelled in lowercase
run_build fullsha_upper "MAB_GIT_REVISION=${MAIN_SHA^^}"
last_two fullsha_upper "$MAIN_SHA"
label fullsha_upper org.opencontainers.image.revision "$MAIN_SHA"
# a full SHA that resolves to another commit (a branch with that name) is refused, naming both
run_build shabranch "MAB_GIT_URL=https://127.0.0.1:$PORT/shabranch.git" "MAB_GIT_REVISION=$MAIN_SHA"
check "full SHA resolving to another commit: exit 1" test "$(cat "$T/shabranch.rc")" -eq 1
one_stderr_line shabranch "MAB_GIT_REVISION is the commit SHA $MAIN_SHA but it resolved to commit $OTHER_SHA"
check "full SHA resolving to another commit: nothing was built" test ! -e "$T/docker-build-argv.log"
# the same repository's branch 'other' still builds, labelled with its own commit
run_build otherbranch "MAB_GIT_URL=https://127.0.0.1:$PORT/shabranch.git" "MAB_GIT_REVISION=other"
last_two otherbranch "$OTHER_SHA"
label otherbranch org.opencontainers.image.revision "$OTHER_SHA"
label otherbranch org.opencontainers.image.source "https://127.0.0.1:$PORT/shabranch.git"

# ================================================================== 8. fallbacks
# protocol v0 without uploadpack.allowReachableSHA1InWant: the server refuses a want of a
# commit that is no ref's tip, so the depth-1 fetch by SHA fails -> blobless partial clone
start_server "$PAT"
run_build refused "MAB_GIT_URL=https://127.0.0.1:$PORT/v0/repo.git" "MAB_GIT_REVISION=$FIRST_SHA"
last_two refused "$FIRST_SHA"
label refused org.opencontainers.image.revision "$FIRST_SHA"
label refused org.opencontainers.image.source "https://127.0.0.1:$PORT/v0/repo.git"
in_log refused "[mab] fetching commit $FIRST_SHA at depth 1"
in_log refused "[mab] the server did not serve commit $FIRST_SHA at depth 1 *"
in_log refused "[mab] the checkout of the blobless partial clone failed *"
in_log refused "[mab] fetched all branches and tags in full (full clone fallback)"
in_log refused "[mab] clone took *s (path: full clone)"
check "refused: the depth-1 fetch was tried first, then the blobless fetch (shim)" \
    bash -c "grep -nxF 'fetch --depth 1 --no-tags origin $FIRST_SHA' '$T/git-argv.log' | cut -d: -f1 >'$T/a' &&
        grep -nF 'fetch --no-tags --filter=blob:none origin' '$T/git-argv.log' | cut -d: -f1 >'$T/b' &&
        [ \"\$(cat '$T/a')\" -lt \"\$(head -n 1 '$T/b')\" ]"
timing refused
no_secret "refused: the token is in no output or argv" "$T/refused.out" "$T/refused.err" "$T/refused.strace" "$T/git-argv.log"
# the same server serves a branch by its tip's SHA at depth 1 (the tip is advertised)
run_build v0branch "MAB_GIT_URL=https://127.0.0.1:$PORT/v0/repo.git" "MAB_GIT_REVISION=main"
last_two v0branch "$MAIN_SHA"
in_log v0branch "[mab] fetched commit $MAIN_SHA at depth 1 (fetch by SHA)"
# the dumb http protocol: no shallow fetch and no filter -> a full clone of the branch
run_build dumb "MAB_GIT_URL=https://127.0.0.1:$PORT/dumb/repo.git" "MAB_GIT_REVISION=main"
last_two dumb "$MAIN_SHA"
label dumb org.opencontainers.image.revision "$MAIN_SHA"
in_log dumb "[mab] the server did not serve commit $MAIN_SHA at depth 1 *"
in_log dumb "[mab] the server speaks the dumb http protocol: no partial clone; falling back to a full clone of branch main"
in_log dumb "[mab] clone took *s (path: full clone)"
timing dumb
no_secret "dumb: the token is in no output or argv" "$T/dumb.out" "$T/dumb.err" "$T/dumb.strace" "$T/git-argv.log"
# an abbreviated SHA needs the history: no fetch by SHA, a blobless partial clone
run_build abbrev "MAB_GIT_REVISION=${FIRST_SHA:0:10}"
last_two abbrev "$FIRST_SHA"
in_log abbrev "[mab] fetched all branches and tags as a blobless partial clone (fallback)"
check "abbrev: no fetch by SHA was tried (shim)" bash -c "! grep -q -e '--depth' '$T/git-argv.log'"
# a tag (annotated: its peeled commit is fetched)
run_build tag "MAB_GIT_REVISION=v1"
last_two tag "$FIRST_SHA"
in_log tag "[mab] fetched commit $FIRST_SHA at depth 1 (fetch by SHA)"

# ================================================================== 9. a SHA-256 repository
if [ "$SHA256_REPO" = yes ]; then
    run_build sha256 "MAB_GIT_URL=https://127.0.0.1:$PORT/sha256.git"
    check "SHA-256 repository: exit 1" test "$(cat "$T/sha256.rc")" -eq 1
    one_stderr_line sha256 "which is not a full 40-hex commit SHA"
    check "SHA-256 repository: nothing was built" test ! -e "$T/docker-build-argv.log"
fi

tap_summary

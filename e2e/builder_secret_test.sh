#!/usr/bin/env bash
# e2e/builder_secret_test.sh - the git token of MAB_GIT_CREDENTIALS_SECRET_ARN never leaks.
#
# Runs builder/build.sh on this host (no Batch, no Docker engine) with:
#   - a fake `aws` that returns the token ghp_FAKE_SECRET_123 for the secret,
#   - a local HTTPS git server (Python, self-signed, loopback) that serves a bare repo over
#     git's dumb http protocol ONLY to requests carrying the right Authorization header and
#     records every request,
#   - a fake `docker` that records its argv and environment,
#   - a `git` wrapper that records its argv, and strace -f -e trace=execve (if installed)
#     that records the argv of every process build.sh starts.
# and checks the token is in no stdout/stderr line, no argv, no request path, not in docker's
# environment, not in any error message - and that the git server did receive the header.
# It also checks the output contract (the last two stdout lines are "commit: <40 hex>" then
# "digest: sha256:<64 hex>"), the image labels passed to `docker build` (revision, source,
# build uid, input hash), and how a full-SHA MAB_GIT_REVISION is resolved.
# Needs: bash, git, python3, openssl; strace optional. Prints "N passed, M failed".
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD_SH=$(dirname "$HERE")/builder/build.sh
PAT=ghp_FAKE_SECRET_123
PAT_B64=$(printf 'x-access-token:%s' "$PAT" | base64 | tr -d '\n')
ARN=arn:aws:secretsmanager:us-east-1:123456789012:secret:mab-test-pat
# the shell that runs build.sh: dash as sh on Debian; MAB_TEST_SHELL="busybox sh" for busybox
read -r -a SH <<<"${MAB_TEST_SHELL:-sh}"

passed=0
failed=0
ok() {
    passed=$((passed + 1))
    echo "ok - $1"
}
not_ok() {
    failed=$((failed + 1))
    echo "not ok - $1"
    [ $# -gt 1 ] && printf '    %s\n' "${@:2}"
}
check() { # DESCRIPTION COMMAND...
    local d=$1
    shift
    if "$@"; then ok "$d"; else not_ok "$d"; fi
}

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
        git clone -q --bare . "$T/srv/repo.git" &&
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
cat >"$T/server.py" <<'EOF'
import base64, http.server, json, os, ssl, sys, urllib.parse
root, expected_token, log_path, port_file, cert, key = sys.argv[1:7]
expected = "Basic " + base64.b64encode(f"x-access-token:{expected_token}".encode()).decode()

class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        auth = self.headers.get("Authorization")
        with open(log_path, "a") as f:
            f.write(json.dumps({"path": self.path, "authorization": auth,
                                "headers": dict(self.headers.items())}) + "\n")
        if auth != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        rel = urllib.parse.urlparse(self.path).path.lstrip("/")
        p = os.path.realpath(os.path.join(root, rel))
        if not p.startswith(os.path.realpath(root) + os.sep) or not os.path.isfile(p):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = open(p, "rb").read()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
with open(port_file, "w") as f:
    f.write(str(srv.server_address[1]))
srv.serve_forever()
EOF
start_server() { # TOKEN_THE_SERVER_ACCEPTS
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -f "$T/port" "$T/requests.log"
    python3 "$T/server.py" "$T/srv" "$1" "$T/requests.log" "$T/port" "$T/cert.pem" "$T/key.pem" &
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
check "good: git was called (shim saw a clone)" grep -q '^clone ' "$T/git-argv.log"

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

# ================================================================== 8. a SHA-256 repository
if [ "$SHA256_REPO" = yes ]; then
    run_build sha256 "MAB_GIT_URL=https://127.0.0.1:$PORT/sha256.git"
    check "SHA-256 repository: exit 1" test "$(cat "$T/sha256.rc")" -eq 1
    one_stderr_line sha256 "which is not a full 40-hex commit SHA"
    check "SHA-256 repository: nothing was built" test ! -e "$T/docker-build-argv.log"
fi

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

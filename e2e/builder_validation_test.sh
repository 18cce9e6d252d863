#!/usr/bin/env bash
# e2e/builder_validation_test.sh - builder/build.sh rejects bad MAB_* input with one clear line.
#
# No Docker, no network: every case fails in validation, before any tool is used. Each case
# starts from a valid configuration, changes one variable, and checks: exit status 2, exactly
# one line on stderr, starting "build.sh: " and containing the expected text (which names the
# variable), and no "build.sh:" line on stdout. Hostile values must never be executed.
# The valid baseline itself must get past validation (it stops at "git not found", exit 3,
# because PATH holds no git or docker here).
# Runs under sh (dash on Debian) and, if installed, busybox sh. Prints "N passed, M failed".
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD_SH=$(dirname "$HERE")/builder/build.sh
[ -f "$BUILD_SH" ] || {
    echo "builder_validation_test: $BUILD_SH not found" >&2
    exit 2
}

T=$(mktemp -d "${TMPDIR:-/tmp}/mab-validation-test.XXXXXX")
trap 'rm -rf "$T"' EXIT
MARKER=$T/pwned

# a PATH with the tools build.sh uses, but no docker/git/aws
mkdir -p "$T/bin"
for tool in tr sed grep cut tail mktemp mkfifo tee uname dirname base64 cat rm sleep; do
    p=$(command -v "$tool") && ln -s "$p" "$T/bin/$tool"
done

shells=("sh")
if command -v busybox >/dev/null && busybox sh -c true 2>/dev/null; then
    shells+=("busybox sh")
fi

passed=0
failed=0

BASE=(
    "MAB_GIT_URL=https://github.com/example/app.git"
    "MAB_GIT_REVISION=3f2a9c1e0b5d4c3b2a1908f7e6d5c4b3a2918070"
    "MAB_IMAGE=123456789012.dkr.ecr.us-east-1.amazonaws.com/app:3f2a9c1-arm64"
    "MAB_PLATFORM=linux/arm64"
    "MAB_REGISTRY_AUTH=ecr"
    "MAB_BUILD_UID=0f8e2c4a-1b3d-4e5f-8a9b-0c1d2e3f4a5b"
    "MAB_INPUT_HASH=sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
)
# 128 characters: the longest MAB_BUILD_UID
UID_128=$(printf 'a%.0s' $(seq 1 128))
# 128 characters: the longest MAB_TARGET
TARGET_128=$(printf 's%.0s' $(seq 1 128))

# run SHELL ARGS-FOR-BUILD.SH -- VAR=VALUE... (a VAR= with no "=" removes VAR from the base)
run() {
    local shell=$1
    shift
    local args=() a has_sep=no
    for a in "$@"; do [ "$a" = -- ] && has_sep=yes; done
    if [ "$has_sep" = yes ]; then
        while [ "$1" != -- ]; do
            args+=("$1")
            shift
        done
        shift
    fi
    local envv=("PATH=$T/bin" "TMPDIR=$T") e skip v
    for e in "${BASE[@]}"; do
        skip=no
        for v in "$@"; do
            [ "${v%%=*}" = "${e%%=*}" ] && skip=yes
        done
        [ "$skip" = no ] && envv+=("$e")
    done
    for v in "$@"; do
        case $v in *=*) envv+=("$v") ;; esac
    done
    local sh_cmd
    read -r -a sh_cmd <<<"$shell"
    sh_cmd[0]=$(command -v "${sh_cmd[0]}") # absolute: env -i looks it up in the test PATH
    env -i "${envv[@]}" "${sh_cmd[@]}" "$BUILD_SH" "${args[@]}" >"$T/out" 2>"$T/err"
    echo $? >"$T/rc"
}

# expect SHELL CODE 'TEXT' DESCRIPTION [ARGS... --] VAR=VALUE...
expect() {
    local shell=$1 code=$2 text=$3 desc=$4
    shift 4
    rm -f "$MARKER"
    run "$shell" "$@"
    local rc lines why=''
    rc=$(cat "$T/rc")
    lines=$(grep -c '' "$T/err")
    if [ "$rc" != "$code" ]; then
        why="exit $rc, wanted $code"
    elif [ "$lines" -ne 1 ]; then
        why="$lines stderr lines, wanted 1"
    elif ! grep -q '^build\.sh: ' "$T/err"; then
        why="stderr does not start with 'build.sh: '"
    elif ! grep -qF -- "$text" "$T/err"; then
        why="stderr lacks '$text'"
    elif grep -q '^build\.sh:' "$T/out"; then
        why="a build.sh: line on stdout"
    elif [ -e "$MARKER" ]; then
        why="a value was executed (marker file created)"
    fi
    if [ -z "$why" ]; then
        passed=$((passed + 1))
        echo "ok - [$shell] $desc"
    else
        failed=$((failed + 1))
        echo "not ok - [$shell] $desc: $why"
        sed 's/^/    stderr: /' "$T/err" | head -n 5
    fi
}

for sh in "${shells[@]}"; do
    # --- the baseline is valid: it gets past validation and stops at the missing docker
    expect "$sh" 3 "required command 'git' not found" "valid baseline passes validation (stops at missing git, exit 3)"
    expect "$sh" 3 "required command" "hostile build-arg value is not executed" \
        "MAB_BUILD_ARG_NAMES=EVIL" "MAB_BUILD_ARG_EVIL=\$(touch $MARKER) \`touch $MARKER\`; touch $MARKER"
    expect "$sh" 3 "required command" "several build args, values with spaces and newlines" \
        "MAB_BUILD_ARG_NAMES=A _b C9" "MAB_BUILD_ARG_A=x y" "MAB_BUILD_ARG__b=" "MAB_BUILD_ARG_C9=line1
line2"
    expect "$sh" 3 "required command" "ssh URL user@host:path" "MAB_GIT_URL=git@github.com:example/app.git"
    expect "$sh" 3 "required command" "ssh:// URL" "MAB_GIT_URL=ssh://git@github.com/example/app.git"
    expect "$sh" 3 "required command" "file:// URL" "MAB_GIT_URL=file:///srv/git/app.git"
    expect "$sh" 3 "required command" "branch revision" "MAB_GIT_REVISION=feature/x-1.2"
    expect "$sh" 3 "required command" "context and dockerfile in subdirectories" \
        "MAB_CONTEXT_DIR=services/api" "MAB_DOCKERFILE=docker/Dockerfile.prod"
    expect "$sh" 3 "required command" "arm/v7 with a -arm-v7 tag" \
        "MAB_PLATFORM=linux/arm/v7" "MAB_IMAGE=registry.example.com/app:t-arm-v7" "MAB_REGISTRY_AUTH=none"
    expect "$sh" 3 "required command" "GovCloud secret ARN" \
        "MAB_GIT_CREDENTIALS_SECRET_ARN=arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:gh-pat-AbCdEf"

    expect "$sh" 3 "required command" "MAB_BUILD_UID of 64 hex (the CLI without a cluster)" \
        "MAB_BUILD_UID=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    expect "$sh" 3 "required command" "MAB_BUILD_UID of 128 characters" "MAB_BUILD_UID=$UID_128"
    expect "$sh" 3 "required command" "MAB_BUILD_UID of one character" "MAB_BUILD_UID=Z"

    # --- arguments
    expect "$sh" 2 "takes no arguments" "arguments are refused" --help --

    # --- MAB_IMAGE
    expect "$sh" 2 "MAB_IMAGE is required" "missing MAB_IMAGE" "MAB_IMAGE"
    expect "$sh" 2 "MAB_IMAGE must be" "MAB_IMAGE without a tag" "MAB_IMAGE=registry.example.com/app"
    expect "$sh" 2 "MAB_IMAGE must be" "MAB_IMAGE with an uppercase repository" "MAB_IMAGE=registry.example.com/App:t-arm64"
    expect "$sh" 2 "not a digest reference" "MAB_IMAGE by digest" \
        "MAB_IMAGE=registry.example.com/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    expect "$sh" 2 "must start with a registry host" "MAB_IMAGE without a registry" "MAB_IMAGE=library/app:t-arm64"
    expect "$sh" 2 "must end with '-arm64'" "MAB_IMAGE tag for another platform" \
        "MAB_IMAGE=123456789012.dkr.ecr.us-east-1.amazonaws.com/app:3f2a9c1-amd64"
    expect "$sh" 2 "MAB_IMAGE must be" "MAB_IMAGE with a space" "MAB_IMAGE=registry.example.com/app:t -arm64"

    # --- MAB_CACHE_MODE / MAB_CACHE_IMAGE
    C=123456789012.dkr.ecr.us-east-1.amazonaws.com
    expect "$sh" 3 "required command" "cache mode max with a cache image" \
        "MAB_CACHE_MODE=max" "MAB_CACHE_IMAGE=$C/app:buildcache-arm64"
    expect "$sh" 3 "required command" "cache mode min in another repository of the registry" \
        "MAB_CACHE_MODE=min" "MAB_CACHE_IMAGE=$C/team/cache:buildcache-arm64"
    expect "$sh" 3 "required command" "cache mode off" "MAB_CACHE_MODE=off"
    expect "$sh" 2 "MAB_CACHE_MODE must be 'max', 'min' or 'off'" "unknown cache mode" "MAB_CACHE_MODE=inline"
    expect "$sh" 2 "MAB_CACHE_IMAGE is required when MAB_CACHE_MODE=max" "cache mode without an image" "MAB_CACHE_MODE=max"
    expect "$sh" 2 "MAB_CACHE_IMAGE must not be set when MAB_CACHE_MODE=off" "cache image with mode off" \
        "MAB_CACHE_MODE=off" "MAB_CACHE_IMAGE=$C/app:buildcache-arm64"
    expect "$sh" 2 "MAB_CACHE_IMAGE must be <registry>/<repository>:<tag>" "cache image without a tag" \
        "MAB_CACHE_MODE=max" "MAB_CACHE_IMAGE=$C/app"
    expect "$sh" 2 "MAB_CACHE_IMAGE must be <registry>/<repository>:<tag>" "cache image by digest" \
        "MAB_CACHE_MODE=max" "MAB_CACHE_IMAGE=$C/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    expect "$sh" 2 "MAB_CACHE_IMAGE must be <registry>/<repository>:<tag>" "cache image with CSV (,mode=...) in it" \
        "MAB_CACHE_MODE=max" "MAB_CACHE_IMAGE=$C/app:c,mode=max"
    expect "$sh" 2 "MAB_CACHE_IMAGE must be on the registry of MAB_IMAGE" "cache image on another registry" \
        "MAB_CACHE_MODE=max" "MAB_CACHE_IMAGE=registry.example.com/app:buildcache-arm64"
    expect "$sh" 2 "MAB_CACHE_IMAGE must not be MAB_IMAGE itself" "cache image is the output image" \
        "MAB_CACHE_MODE=min" "MAB_CACHE_IMAGE=$C/app:3f2a9c1-arm64"
    expect "$sh" 2 "'BUILDKIT_INLINE_CACHE' is set by the builder" "reserved build-arg BUILDKIT_INLINE_CACHE" \
        "MAB_BUILD_ARG_NAMES=BUILDKIT_INLINE_CACHE" "MAB_BUILD_ARG_BUILDKIT_INLINE_CACHE=0"

    # --- MAB_CONTEXT_DIR / MAB_DOCKERFILE
    expect "$sh" 2 "MAB_CONTEXT_DIR must not contain '..'" "'..' in MAB_CONTEXT_DIR" "MAB_CONTEXT_DIR=../other"
    expect "$sh" 2 "MAB_CONTEXT_DIR must not contain '..'" "'..' inside MAB_CONTEXT_DIR" "MAB_CONTEXT_DIR=a/../../b"
    expect "$sh" 2 "MAB_CONTEXT_DIR must not contain '..'" "MAB_CONTEXT_DIR is '..'" "MAB_CONTEXT_DIR=.."
    expect "$sh" 2 "MAB_CONTEXT_DIR must be a relative path" "absolute MAB_CONTEXT_DIR" "MAB_CONTEXT_DIR=/etc"
    expect "$sh" 2 "MAB_CONTEXT_DIR must not start with '-'" "MAB_CONTEXT_DIR like an option" "MAB_CONTEXT_DIR=--help"
    expect "$sh" 2 "MAB_CONTEXT_DIR may only contain" "MAB_CONTEXT_DIR with a \$()" "MAB_CONTEXT_DIR=\$(touch $MARKER)"
    expect "$sh" 2 "MAB_DOCKERFILE must not contain '..'" "'..' in MAB_DOCKERFILE" "MAB_DOCKERFILE=../Dockerfile"
    expect "$sh" 2 "MAB_DOCKERFILE must be a relative path" "absolute MAB_DOCKERFILE" "MAB_DOCKERFILE=/etc/passwd"
    expect "$sh" 2 "MAB_DOCKERFILE must name a file" "MAB_DOCKERFILE is a directory" "MAB_DOCKERFILE=docker/"

    # --- MAB_TARGET
    expect "$sh" 3 "required command" "a stage name" "MAB_TARGET=runtime"
    expect "$sh" 3 "required command" "a stage name with digits, '.', '_' and '-'" "MAB_TARGET=Build_2.stage-x"
    expect "$sh" 3 "required command" "a stage name of 128 characters" "MAB_TARGET=$TARGET_128"
    expect "$sh" 3 "required command" "an empty MAB_TARGET (the last stage)" "MAB_TARGET="
    expect "$sh" 2 "MAB_TARGET must be a Dockerfile stage name" "MAB_TARGET of 129 characters" "MAB_TARGET=${TARGET_128}x"
    expect "$sh" 2 "MAB_TARGET must be a Dockerfile stage name" "MAB_TARGET like an option" "MAB_TARGET=--help"
    expect "$sh" 2 "MAB_TARGET must be a Dockerfile stage name" "MAB_TARGET starting with '.'" "MAB_TARGET=.hidden"
    expect "$sh" 2 "MAB_TARGET must be a Dockerfile stage name" "MAB_TARGET with a space" "MAB_TARGET=run time"
    expect "$sh" 2 "MAB_TARGET must be a Dockerfile stage name" "MAB_TARGET with a '/'" "MAB_TARGET=a/b"
    expect "$sh" 2 "MAB_TARGET must be a Dockerfile stage name" "MAB_TARGET with a \$()" "MAB_TARGET=\$(touch $MARKER)"
    expect "$sh" 2 "MAB_TARGET must be a Dockerfile stage name" "MAB_TARGET with shell code after a name" \
        "MAB_TARGET=runtime;touch $MARKER"
    expect "$sh" 2 "MAB_TARGET must be a Dockerfile stage name" "MAB_TARGET with a second line" "MAB_TARGET=runtime
submit"

    # --- build args
    expect "$sh" 2 "'1BAD' is not a valid build-arg name" "build-arg name starting with a digit" \
        "MAB_BUILD_ARG_NAMES=1BAD" "MAB_BUILD_ARG_1BAD=x"
    expect "$sh" 2 "'A-B' is not a valid build-arg name" "build-arg name with a dash" "MAB_BUILD_ARG_NAMES=A-B"
    expect "$sh" 2 "is not a valid build-arg name" "build-arg name with shell code" "MAB_BUILD_ARG_NAMES=X;touch"
    expect "$sh" 2 "'*' is not a valid build-arg name" "build-arg name '*' (no glob expansion)" "MAB_BUILD_ARG_NAMES=*"
    expect "$sh" 2 "MAB_BUILD_ARG_FOO is not set" "build-arg listed without its value" "MAB_BUILD_ARG_NAMES=FOO"
    expect "$sh" 2 "lists 'A' twice" "build-arg listed twice" "MAB_BUILD_ARG_NAMES=A A" "MAB_BUILD_ARG_A=1"
    expect "$sh" 2 "'TARGETARCH' is set by the builder" "reserved build-arg TARGETARCH" \
        "MAB_BUILD_ARG_NAMES=TARGETARCH" "MAB_BUILD_ARG_TARGETARCH=amd64"
    expect "$sh" 2 "single spaces" "build-arg names separated by a newline" "MAB_BUILD_ARG_NAMES=A
B" "MAB_BUILD_ARG_A=1" "MAB_BUILD_ARG_B=2"

    # --- MAB_PLATFORM
    expect "$sh" 2 "MAB_PLATFORM is required" "missing MAB_PLATFORM" "MAB_PLATFORM"
    expect "$sh" 2 "MAB_PLATFORM must be linux/<arch>" "MAB_PLATFORM linux/x86_64" "MAB_PLATFORM=linux/x86_64"
    expect "$sh" 2 "MAB_PLATFORM must be linux/<arch>" "MAB_PLATFORM windows/amd64" "MAB_PLATFORM=windows/amd64"
    expect "$sh" 2 "MAB_PLATFORM must be linux/<arch>" "MAB_PLATFORM arm64 (no os)" "MAB_PLATFORM=arm64"
    expect "$sh" 2 "MAB_PLATFORM must be linux/<arch>" "MAB_PLATFORM with a trailing slash" "MAB_PLATFORM=linux/arm64/"

    # --- MAB_GIT_URL
    expect "$sh" 2 "MAB_GIT_URL is required" "missing MAB_GIT_URL" "MAB_GIT_URL"
    expect "$sh" 2 "must not use plain http://" "http:// URL" "MAB_GIT_URL=http://github.com/example/app.git"
    expect "$sh" 2 "must not contain credentials" "token in the URL" \
        "MAB_GIT_URL=https://x-access-token:ghp_abc@github.com/example/app.git"
    expect "$sh" 2 "must be https://host/path" "ext:: transport" "MAB_GIT_URL=ext::touch"
    expect "$sh" 2 "must be one URL without spaces" "ext:: transport with spaces" "MAB_GIT_URL=ext::sh -c touch% $MARKER"
    expect "$sh" 2 "must be https://host/path" "ssh host starting with '-'" "MAB_GIT_URL=git@-oProxyCommand=touch:x"
    expect "$sh" 2 "must be https://host/path" "URL starting with '-'" "MAB_GIT_URL=--upload-pack=touch"
    expect "$sh" 2 "scheme is not supported" "ftp:// URL" "MAB_GIT_URL=ftp://example.com/app.git"
    expect "$sh" 2 "must be one URL without spaces" "URL with a space" "MAB_GIT_URL=https://github.com/a b"

    # --- MAB_GIT_REVISION
    expect "$sh" 2 "MAB_GIT_REVISION is required" "missing MAB_GIT_REVISION" "MAB_GIT_REVISION"
    expect "$sh" 2 "MAB_GIT_REVISION must be" "revision like an option" "MAB_GIT_REVISION=--upload-pack=touch"
    expect "$sh" 2 "MAB_GIT_REVISION must be" "revision with '..'" "MAB_GIT_REVISION=main..other"
    expect "$sh" 2 "MAB_GIT_REVISION must be" "revision with @{" "MAB_GIT_REVISION=main@{1}"
    expect "$sh" 2 "MAB_GIT_REVISION must be" "revision with a space" "MAB_GIT_REVISION=main other"

    # --- MAB_BUILD_UID
    expect "$sh" 2 "MAB_BUILD_UID is required" "missing MAB_BUILD_UID" "MAB_BUILD_UID"
    expect "$sh" 2 "MAB_BUILD_UID is required" "empty MAB_BUILD_UID" "MAB_BUILD_UID="
    expect "$sh" 2 "MAB_BUILD_UID must be" "MAB_BUILD_UID with a \$()" "MAB_BUILD_UID=\$(touch $MARKER)"
    expect "$sh" 2 "MAB_BUILD_UID must be" "MAB_BUILD_UID with a ;" "MAB_BUILD_UID=x;touch $MARKER"
    expect "$sh" 2 "MAB_BUILD_UID must be" "MAB_BUILD_UID with backquotes" "MAB_BUILD_UID=x\`touch $MARKER\`"
    expect "$sh" 2 "MAB_BUILD_UID must be" "MAB_BUILD_UID like an option" "MAB_BUILD_UID=-x"
    expect "$sh" 2 "MAB_BUILD_UID must be" "MAB_BUILD_UID with an underscore" "MAB_BUILD_UID=a_b"
    expect "$sh" 2 "MAB_BUILD_UID must be" "MAB_BUILD_UID of 129 characters" "MAB_BUILD_UID=${UID_128}a"
    expect "$sh" 2 "MAB_BUILD_UID must be" "MAB_BUILD_UID with a newline" "MAB_BUILD_UID=abc
def"
    expect "$sh" 2 "MAB_BUILD_UID must be" "MAB_BUILD_UID with a label separator '='" "MAB_BUILD_UID=a=b"

    # --- MAB_INPUT_HASH
    expect "$sh" 2 "MAB_INPUT_HASH is required" "missing MAB_INPUT_HASH" "MAB_INPUT_HASH"
    expect "$sh" 2 "MAB_INPUT_HASH is required" "empty MAB_INPUT_HASH" "MAB_INPUT_HASH="
    expect "$sh" 2 "MAB_INPUT_HASH must be sha256:" "MAB_INPUT_HASH without the sha256: prefix" \
        "MAB_INPUT_HASH=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    expect "$sh" 2 "MAB_INPUT_HASH must be sha256:" "MAB_INPUT_HASH in uppercase hex" \
        "MAB_INPUT_HASH=sha256:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"
    expect "$sh" 2 "MAB_INPUT_HASH must be sha256:" "MAB_INPUT_HASH of 63 hex" \
        "MAB_INPUT_HASH=sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a0"
    expect "$sh" 2 "MAB_INPUT_HASH must be sha256:" "MAB_INPUT_HASH of 65 hex" \
        "MAB_INPUT_HASH=sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a088"
    expect "$sh" 2 "MAB_INPUT_HASH must be sha256:" "MAB_INPUT_HASH sha512:" \
        "MAB_INPUT_HASH=sha512:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    expect "$sh" 2 "MAB_INPUT_HASH must be sha256:" "MAB_INPUT_HASH with a \$()" \
        "MAB_INPUT_HASH=sha256:\$(touch $MARKER)"
    expect "$sh" 2 "MAB_INPUT_HASH must be sha256:" "MAB_INPUT_HASH with shell code after a valid hash" \
        "MAB_INPUT_HASH=sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08;touch $MARKER"
    expect "$sh" 2 "MAB_INPUT_HASH must be sha256:" "MAB_INPUT_HASH with a second line" \
        "MAB_INPUT_HASH=sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

    # --- secret, registry auth, emulation
    expect "$sh" 2 "MAB_GIT_CREDENTIALS_SECRET_ARN must be a Secrets Manager secret ARN" "secret name instead of ARN" \
        "MAB_GIT_CREDENTIALS_SECRET_ARN=gh-pat"
    expect "$sh" 2 "needs an https:// MAB_GIT_URL" "secret with an ssh URL" \
        "MAB_GIT_URL=git@github.com:example/app.git" \
        "MAB_GIT_CREDENTIALS_SECRET_ARN=arn:aws:secretsmanager:us-east-1:123456789012:secret:gh-pat"
    expect "$sh" 2 "MAB_REGISTRY_AUTH is required" "missing MAB_REGISTRY_AUTH" "MAB_REGISTRY_AUTH"
    expect "$sh" 2 "MAB_REGISTRY_AUTH must be 'ecr' or 'none'" "MAB_REGISTRY_AUTH basic" "MAB_REGISTRY_AUTH=basic"
    expect "$sh" 2 "region cannot be read" "ecr auth for a non-ECR registry without AWS_REGION" \
        "MAB_IMAGE=registry.example.com/app:t-arm64"
    expect "$sh" 2 "MAB_ALLOW_EMULATION must be 'true' or 'false'" "MAB_ALLOW_EMULATION yes" "MAB_ALLOW_EMULATION=yes"
done

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

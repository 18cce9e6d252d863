#!/bin/sh
# build.sh - build and push ONE platform of a MultiArchBuild, inside an AWS Batch job.
#
# It runs in the builder container and drives the HOST's Docker engine through the
# bind-mounted socket (Docker-outside-of-Docker). Configuration comes ONLY from these
# environment variables (no arguments):
#
#   MAB_GIT_URL                     https://host/path, ssh://[user@]host[:port]/path,
#                                   user@host:path, or (local stack) file:///path.
#                                   No credentials in the URL; plain http:// is refused.
#   MAB_GIT_REVISION                commit SHA (full or abbreviated), branch or tag.
#   MAB_GIT_CREDENTIALS_SECRET_ARN  optional; Secrets Manager secret whose SecretString is a
#                                   GitHub PAT. Sent to git only as an http header through
#                                   the environment (GIT_CONFIG_*), never in argv, URL or log.
#                                   Needs an https:// MAB_GIT_URL.
#   MAB_CONTEXT_DIR                 default "."; relative to the repository root, no "..".
#   MAB_DOCKERFILE                  default "Dockerfile"; relative to the repository root (like
#                                   `docker build -f` run at the root), no "..".
#   MAB_TARGET                      optional; the Dockerfile stage to build (docker build
#                                   --target), [A-Za-z0-9][A-Za-z0-9._-]{0,127}. Unset or empty:
#                                   the last stage. The controller sets it per platform.
#   MAB_BUILD_ARG_NAMES             optional; space-separated names [A-Za-z_][A-Za-z0-9_]*;
#                                   the value of name N is in MAB_BUILD_ARG_N (may be empty).
#   MAB_IMAGE                       <registry>/<repository>:<tag>-<arch>[-<variant>]
#   MAB_PLATFORM                    linux/<arch>[/<variant>], e.g. linux/amd64, linux/arm64,
#                                   linux/arm/v7
#   MAB_REGISTRY_AUTH               ecr (aws ecr get-login-password | docker login) or none
#   MAB_ALLOW_EMULATION             optional; "true" skips the host-architecture check.
#   MAB_BUILD_UID                   the MultiArchBuild's metadata.uid (a UUID; the CLI without a
#                                   cluster uses 64 hex): [A-Za-z0-9][A-Za-z0-9-]{0,127}.
#   MAB_INPUT_HASH                  sha256:<64 lowercase hex>, the controller's hash of the
#                                   build inputs.
#   MAB_CACHE_MODE                  max, min or off (default off): the registry layer cache.
#   MAB_CACHE_IMAGE                 <registry>/<repository>:<tag>, the cache image this platform
#                                   reads and writes (required unless MAB_CACHE_MODE=off); on
#                                   the same registry as MAB_IMAGE (one login).
#
# The layer cache (what the engine can do decides the path; logged as "cache: ..."):
#   registry  buildx and an engine with the containerd image store: --cache-from
#             type=registry, and after the push a second, fully cached build exports
#             --cache-to type=registry,mode=<max|min>,image-manifest=true,oci-mediatypes=true
#             (image-manifest: ECR stores the cache as an image manifest).
#   inline    any other BuildKit (docker CLI < 23, or buildx on the classic image store):
#             --cache-from <cache image> --build-arg BUILDKIT_INLINE_CACHE=1, and after the push
#             the image is tagged and pushed as the cache image (mode max falls back to this,
#             which caches the final stage only, and says so).
#   none      the classic builder, or MAB_CACHE_MODE=off: no cache flags at all.
# Reading the cache never fails a build: BuildKit skips a missing or foreign cache, and a build
# that fails with the cache is run once more without it. Writing it happens after the push;
# a failure there is a warning.
#
# The image gets these labels (what the controller checks before it puts the image in the
# multi-platform index):
#   org.opencontainers.image.revision=<the resolved commit, 40 lowercase hex>
#   org.opencontainers.image.source=<MAB_GIT_URL>
#   dev.multiarch.build-uid=<MAB_BUILD_UID>
#   dev.multiarch.inputs=<MAB_INPUT_HASH>
#   dev.multiarch.builder-image=<the image this job runs in: its first RepoDigest
#                               (repo@sha256:<64 hex>) when it was pulled from a registry,
#                               else its image id (sha256:<64 hex)>; for the provenance.
#                               Found through this container's id (/proc/self/mountinfo, else
#                               $HOSTNAME) and `docker container inspect`; when it cannot be
#                               found the label is left out, with one line saying so.
# The resolved commit must be a full 40-hex SHA; when MAB_GIT_REVISION is itself a full
# 40-hex SHA, the resolved commit must be that SHA (compared in lowercase).
#
# Output: progress lines "[mab] ..." and the git/docker output on stdout/stderr, among them
# which fetch path was taken (depth-1 fetch by SHA, blobless partial clone, full clone) and
# "[mab] clone took S.CCs (path: ...)", "[mab] build took S.CCs", "[mab] push took S.CCs"; on success
# the LAST TWO lines on stdout are, in this order, with nothing after them on stdout or stderr:
#   commit: <40 lowercase hex>        the commit that was built (the revision label)
#   digest: sha256:<64 hex>           the pushed manifest digest
# On failure: exactly one line on stderr starting "build.sh: " saying what failed, and
#   exit 2  invalid configuration (a MAB_* variable or an argument)
#   exit 3  unusable environment (missing tool, Docker not reachable, wrong host arch)
#   exit 1  a step failed (secret, clone, revision, build, login, push)
#   exit 143 terminated by SIGTERM (e.g. Batch TerminateJob), with its own line.
#
# POSIX sh (dash, busybox ash). User values are never evaluated by a shell: they are only
# expanded in double quotes and passed as separate arguments (set -- arrays).

set -u
set -f          # no globbing: word splitting of MAB_BUILD_ARG_NAMES must not expand '*'
umask 077
LC_ALL=C
export LC_ALL

nl='
'
cr=$(printf '\r')
esc=$(printf '\033')
work=''
child=''
step='starting'
secret_value=''
auth_header=''
auth_key=''

# ---------------------------------------------------------------- output helpers
log() {
    printf '[mab] %s\n' "$*"
}

# redact SECRET: every occurrence of SECRET (when set) in $_t replaced by ***.
redact() {
    [ -n "$1" ] || return 0
    while :; do
        case $_t in
            *"$1"*) _t=${_t%%"$1"*}'***'${_t#*"$1"} ;;
            *) break ;;
        esac
    done
}

# one_line TEXT: newlines/CR/tabs to spaces, ANSI escapes removed, at most 500 chars,
# and any secret material replaced by ***.
one_line() {
    _t=$*
    redact "$secret_value"
    redact "$auth_header"
    printf '%s' "$_t" | tr '\n\r\t' '   ' | sed "s/${esc}\[[0-9;]*[A-Za-z]//g; s/  */ /g; s/^ //; s/ \$//" | cut -c1-500
}

# fail CODE MESSAGE: the one stderr line, then exit.
fail() {
    _code=$1
    shift
    printf 'build.sh: %s\n' "$(one_line "$*")" >&2
    exit "$_code"
}
die_config() { fail 2 "$@"; }
die_env() { fail 3 "$@"; }
die() { fail 1 "$@"; }

# last_line FILE: last non-blank line of FILE (sanitised), or "(no output)".
last_line() {
    _l=''
    if [ -s "$1" ]; then
        _l=$(tr '\r' '\n' <"$1" | sed "s/${esc}\[[0-9;]*[A-Za-z]//g" | grep -v '^[[:space:]]*$' | tail -n 1)
    fi
    if [ -z "$_l" ]; then
        _l='(no output)'
    fi
    printf '%s' "$_l"
}

# now_cs: a monotonic clock in centiseconds (/proc/uptime; the host's, also in a container),
# else whole seconds from date. Phase times are logged to 1/100 s so short fetches compare.
now_cs() {
    _up=''
    read -r _up _idle </proc/uptime 2>/dev/null || _up=''
    case $_up in
        *[0-9].[0-9][0-9])
            _up="${_up%.*}${_up#*.}"
            _up=${_up#"${_up%%[!0]*}"} # no leading zeros: sh reads them as octal
            printf '%s\n' "${_up:-0}"
            return
            ;;
    esac
    printf '%s\n' "$(($(date +%s) * 100))"
}

# secs_since START: seconds since START (a now_cs value), as S.CC.
secs_since() {
    _d=$(($(now_cs) - $1))
    printf '%d.%02d\n' $((_d / 100)) $((_d % 100))
}

# matches ERE VALUE: VALUE is a single line that matches ERE entirely (anchors in ERE).
matches() {
    case $2 in
        *"$nl"* | *"$cr"*) return 1 ;;
    esac
    printf '%s\n' "$2" | grep -Eq -- "$1"
}

# ---------------------------------------------------------------- validation
[ "$#" -eq 0 ] || die_config "takes no arguments; it is configured only by MAB_* environment variables (got '$1')"

# check_relpath NAME VALUE: relative path, safe characters, no '..' component.
check_relpath() {
    _n=$1
    _v=$2
    [ -n "$_v" ] || die_config "$_n must not be empty"
    case $_v in
        /*) die_config "$_n must be a relative path, got '$_v'" ;;
        -*) die_config "$_n must not start with '-', got '$_v'" ;;
    esac
    case "/$_v/" in
        */../*) die_config "$_n must not contain '..', got '$_v'" ;;
    esac
    matches '^[A-Za-z0-9._@+=,/-]+$' "$_v" ||
        die_config "$_n may only contain letters, digits and . _ @ + = , / -, got '$_v'"
}

# --- MAB_GIT_URL
MAB_GIT_URL=${MAB_GIT_URL:-}
[ -n "$MAB_GIT_URL" ] || die_config "MAB_GIT_URL is required"
case $MAB_GIT_URL in
    *"$nl"* | *"$cr"* | *' '* | *'	'*) die_config "MAB_GIT_URL must be one URL without spaces or newlines" ;;
esac
git_scheme=''
case $MAB_GIT_URL in
    https://*)
        _auth=${MAB_GIT_URL#https://}
        _auth=${_auth%%/*}
        case $_auth in
            *@*) die_config "MAB_GIT_URL must not contain credentials (user@ or user:password@); use MAB_GIT_CREDENTIALS_SECRET_ARN" ;;
        esac
        matches '^https://[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]{1,5})?(/[A-Za-z0-9._~%!$&()*+,;=:@/-]*)?$' "$MAB_GIT_URL" ||
            die_config "MAB_GIT_URL is not a valid https:// URL: '$MAB_GIT_URL'"
        git_scheme=https
        ;;
    http://*)
        die_config "MAB_GIT_URL must not use plain http://; use https://"
        ;;
    ssh://*)
        _auth=${MAB_GIT_URL#ssh://}
        _auth=${_auth%%/*}
        case $_auth in
            *:*@* ) die_config "MAB_GIT_URL must not contain a password" ;;
        esac
        matches '^ssh://([A-Za-z0-9_][A-Za-z0-9._-]*@)?[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]{1,5})?/[A-Za-z0-9._~+/-]+$' "$MAB_GIT_URL" ||
            die_config "MAB_GIT_URL is not a valid ssh:// URL: '$MAB_GIT_URL'"
        git_scheme=ssh
        ;;
    file://*)
        matches '^file:///[A-Za-z0-9._~+@=,/-]+$' "$MAB_GIT_URL" ||
            die_config "MAB_GIT_URL is not a valid file:/// URL: '$MAB_GIT_URL'"
        case "$MAB_GIT_URL/" in
            */../*) die_config "MAB_GIT_URL must not contain '..'" ;;
        esac
        git_scheme='file'
        ;;
    *://*)
        die_config "MAB_GIT_URL scheme is not supported (use https://, ssh://, user@host:path or file:///): '$MAB_GIT_URL'"
        ;;
    *)
        matches '^[A-Za-z0-9_][A-Za-z0-9._-]*@[A-Za-z0-9][A-Za-z0-9.-]*:[A-Za-z0-9._~+/][A-Za-z0-9._~+/-]*$' "$MAB_GIT_URL" ||
            die_config "MAB_GIT_URL must be https://host/path, ssh://[user@]host/path, user@host:path or file:///path, got '$MAB_GIT_URL'"
        git_scheme=ssh
        ;;
esac

# --- MAB_GIT_REVISION
MAB_GIT_REVISION=${MAB_GIT_REVISION:-}
[ -n "$MAB_GIT_REVISION" ] || die_config "MAB_GIT_REVISION is required (commit SHA, branch or tag)"
_rev_ok=yes
matches '^[A-Za-z0-9_][A-Za-z0-9._/+-]{0,254}$' "$MAB_GIT_REVISION" || _rev_ok=no
case $MAB_GIT_REVISION in
    *..* | */ | *.lock | *//* | */.*) _rev_ok=no ;;
esac
[ "$_rev_ok" = yes ] ||
    die_config "MAB_GIT_REVISION must be a commit SHA, branch or tag (letters, digits, . _ / + -; no leading '-', no '..'), got '$MAB_GIT_REVISION'"

# --- MAB_BUILD_UID / MAB_INPUT_HASH (labels the controller checks on the pushed image)
MAB_BUILD_UID=${MAB_BUILD_UID:-}
[ -n "$MAB_BUILD_UID" ] || die_config "MAB_BUILD_UID is required (the MultiArchBuild's uid)"
matches '^[A-Za-z0-9][A-Za-z0-9-]{0,127}$' "$MAB_BUILD_UID" ||
    die_config "MAB_BUILD_UID must be 1 to 128 letters, digits and '-', starting with a letter or digit, got '$MAB_BUILD_UID'"
MAB_INPUT_HASH=${MAB_INPUT_HASH:-}
[ -n "$MAB_INPUT_HASH" ] || die_config "MAB_INPUT_HASH is required (sha256:<64 hex>, the hash of the build inputs)"
matches '^sha256:[0-9a-f]{64}$' "$MAB_INPUT_HASH" ||
    die_config "MAB_INPUT_HASH must be sha256:<64 lowercase hex>, got '$MAB_INPUT_HASH'"

# --- MAB_GIT_CREDENTIALS_SECRET_ARN
MAB_GIT_CREDENTIALS_SECRET_ARN=${MAB_GIT_CREDENTIALS_SECRET_ARN:-}
secret_region=''
if [ -n "$MAB_GIT_CREDENTIALS_SECRET_ARN" ]; then
    matches '^arn:aws(-[a-z]+)*:secretsmanager:[a-z]{2}(-[a-z]+)+-[0-9]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+$' "$MAB_GIT_CREDENTIALS_SECRET_ARN" ||
        die_config "MAB_GIT_CREDENTIALS_SECRET_ARN must be a Secrets Manager secret ARN (arn:<partition>:secretsmanager:<region>:<account>:secret:<name>), got '$MAB_GIT_CREDENTIALS_SECRET_ARN'"
    [ "$git_scheme" = https ] ||
        die_config "MAB_GIT_CREDENTIALS_SECRET_ARN needs an https:// MAB_GIT_URL (the token is sent as an http header)"
    secret_region=$(printf '%s\n' "$MAB_GIT_CREDENTIALS_SECRET_ARN" | cut -d: -f4)
fi

# --- MAB_CONTEXT_DIR / MAB_DOCKERFILE
MAB_CONTEXT_DIR=${MAB_CONTEXT_DIR:-.}
MAB_DOCKERFILE=${MAB_DOCKERFILE:-Dockerfile}
check_relpath MAB_CONTEXT_DIR "$MAB_CONTEXT_DIR"
check_relpath MAB_DOCKERFILE "$MAB_DOCKERFILE"
case $MAB_DOCKERFILE in
    */ | . | */.) die_config "MAB_DOCKERFILE must name a file, got '$MAB_DOCKERFILE'" ;;
esac

# --- MAB_TARGET
MAB_TARGET=${MAB_TARGET:-}
if [ -n "$MAB_TARGET" ]; then
    matches '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$' "$MAB_TARGET" ||
        die_config "MAB_TARGET must be a Dockerfile stage name ([A-Za-z0-9][A-Za-z0-9._-]*, at most 128 characters), got '$MAB_TARGET'"
fi

# --- MAB_PLATFORM
MAB_PLATFORM=${MAB_PLATFORM:-}
[ -n "$MAB_PLATFORM" ] || die_config "MAB_PLATFORM is required (e.g. linux/amd64, linux/arm64)"
matches '^linux/(amd64|arm64|arm|386|ppc64le|s390x|riscv64|mips64le)(/v[0-9]{1,2})?$' "$MAB_PLATFORM" ||
    die_config "MAB_PLATFORM must be linux/<arch>[/<variant>] with arch amd64, arm64, arm, 386, ppc64le, s390x, riscv64 or mips64le, got '$MAB_PLATFORM'"
plat_arch=$(printf '%s\n' "$MAB_PLATFORM" | cut -d/ -f2)
plat_variant=$(printf '%s\n' "$MAB_PLATFORM" | cut -s -d/ -f3)

# --- MAB_IMAGE
# image_ref_ok REF: REF is <registry>/<repository>:<tag> (no digest).
image_ref_ok() {
    case $1 in
        *@*) return 1 ;;
    esac
    matches '^[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]{1,5})?/[a-z0-9]+([._-]+[a-z0-9]+)*(/[a-z0-9]+([._-]+[a-z0-9]+)*)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$' "$1"
}
MAB_IMAGE=${MAB_IMAGE:-}
[ -n "$MAB_IMAGE" ] || die_config "MAB_IMAGE is required (<registry>/<repository>:<tag>-<arch>)"
case $MAB_IMAGE in
    *@*) die_config "MAB_IMAGE must be <registry>/<repository>:<tag>, not a digest reference: '$MAB_IMAGE'" ;;
esac
image_ref_ok "$MAB_IMAGE" ||
    die_config "MAB_IMAGE must be <registry>/<repository>:<tag> (lowercase repository, tag of letters, digits, _ . -), got '$MAB_IMAGE'"
image_registry=${MAB_IMAGE%%/*}
image_tag=${MAB_IMAGE##*:}
image_repo=${MAB_IMAGE%:*}
case $image_registry in
    *.* | *:* | localhost) ;;
    *) die_config "MAB_IMAGE must start with a registry host (e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/), got '$MAB_IMAGE'" ;;
esac
want_suffix="-$plat_arch"
if [ -n "$plat_variant" ]; then
    want_suffix="-$plat_arch-$plat_variant"
fi
case $image_tag in
    *"$want_suffix") ;;
    *) die_config "MAB_IMAGE tag '$image_tag' must end with '$want_suffix' for MAB_PLATFORM $MAB_PLATFORM" ;;
esac

# --- MAB_REGISTRY_AUTH
MAB_REGISTRY_AUTH=${MAB_REGISTRY_AUTH:-}
ecr_region=''
case $MAB_REGISTRY_AUTH in
    none) ;;
    ecr)
        ecr_region=$(printf '%s\n' "$image_registry" | sed -n 's/^[0-9]\{12\}\.dkr\.ecr\(-fips\)\{0,1\}\.\([a-z0-9-]*\)\.amazonaws\.com\(\.cn\)\{0,1\}$/\2/p')
        if [ -z "$ecr_region" ]; then
            ecr_region=${AWS_REGION:-${AWS_DEFAULT_REGION:-}}
        fi
        [ -n "$ecr_region" ] ||
            die_config "MAB_REGISTRY_AUTH=ecr but the region cannot be read from registry '$image_registry' and AWS_REGION is not set"
        ;;
    '') die_config "MAB_REGISTRY_AUTH is required (ecr or none)" ;;
    *) die_config "MAB_REGISTRY_AUTH must be 'ecr' or 'none', got '$MAB_REGISTRY_AUTH'" ;;
esac

# --- MAB_CACHE_MODE / MAB_CACHE_IMAGE
MAB_CACHE_MODE=${MAB_CACHE_MODE:-off}
MAB_CACHE_IMAGE=${MAB_CACHE_IMAGE:-}
case $MAB_CACHE_MODE in
    max | min) ;;
    off) [ -z "$MAB_CACHE_IMAGE" ] || die_config "MAB_CACHE_IMAGE must not be set when MAB_CACHE_MODE=off" ;;
    *) die_config "MAB_CACHE_MODE must be 'max', 'min' or 'off', got '$MAB_CACHE_MODE'" ;;
esac
if [ "$MAB_CACHE_MODE" != off ]; then
    [ -n "$MAB_CACHE_IMAGE" ] ||
        die_config "MAB_CACHE_IMAGE is required when MAB_CACHE_MODE=$MAB_CACHE_MODE (<registry>/<repository>:<tag>)"
    image_ref_ok "$MAB_CACHE_IMAGE" ||
        die_config "MAB_CACHE_IMAGE must be <registry>/<repository>:<tag> (lowercase repository, tag of letters, digits, _ . -), got '$MAB_CACHE_IMAGE'"
    [ "${MAB_CACHE_IMAGE%%/*}" = "$image_registry" ] ||
        die_config "MAB_CACHE_IMAGE must be on the registry of MAB_IMAGE ($image_registry), got '$MAB_CACHE_IMAGE'"
    [ "$MAB_CACHE_IMAGE" != "$MAB_IMAGE" ] ||
        die_config "MAB_CACHE_IMAGE must not be MAB_IMAGE itself ('$MAB_IMAGE')"
fi

# --- MAB_ALLOW_EMULATION
MAB_ALLOW_EMULATION=${MAB_ALLOW_EMULATION:-false}
case $MAB_ALLOW_EMULATION in
    true | false) ;;
    *) die_config "MAB_ALLOW_EMULATION must be 'true' or 'false', got '$MAB_ALLOW_EMULATION'" ;;
esac

# --- MAB_BUILD_ARG_NAMES / MAB_BUILD_ARG_<name>
# build_arg_value NAME: copy MAB_BUILD_ARG_<NAME> into _val, exactly. NAME has been checked
# against [A-Za-z_][A-Za-z0-9_]* before, so the eval'd text is only "_val=${MAB_BUILD_ARG_X}":
# the VALUE is expanded, never parsed as shell code. (printenv is not in every busybox.)
build_arg_set() {
    eval "_isset=\${MAB_BUILD_ARG_$1+x}"
    [ -n "$_isset" ]
}
build_arg_value() {
    eval "_val=\${MAB_BUILD_ARG_$1}"
}
MAB_BUILD_ARG_NAMES=${MAB_BUILD_ARG_NAMES:-}
case $MAB_BUILD_ARG_NAMES in
    *"$nl"* | *"$cr"* | *'	'*) die_config "MAB_BUILD_ARG_NAMES must be names separated by single spaces" ;;
esac
build_arg_count=0
seen_names=' '
IFS=' '
for _name in $MAB_BUILD_ARG_NAMES; do
    matches '^[A-Za-z_][A-Za-z0-9_]{0,127}$' "$_name" ||
        die_config "MAB_BUILD_ARG_NAMES: '$_name' is not a valid build-arg name ([A-Za-z_][A-Za-z0-9_]*)"
    case $_name in
        TARGETPLATFORM | TARGETOS | TARGETARCH | TARGETVARIANT | BUILDPLATFORM | BUILDOS | BUILDARCH | BUILDVARIANT)
            die_config "MAB_BUILD_ARG_NAMES: '$_name' is set by the builder from MAB_PLATFORM and cannot be overridden" ;;
        BUILDKIT_INLINE_CACHE)
            die_config "MAB_BUILD_ARG_NAMES: '$_name' is set by the builder from MAB_CACHE_MODE and cannot be overridden" ;;
    esac
    case $seen_names in
        *" $_name "*) die_config "MAB_BUILD_ARG_NAMES lists '$_name' twice" ;;
    esac
    seen_names="$seen_names$_name "
    build_arg_set "$_name" ||
        die_config "MAB_BUILD_ARG_NAMES lists '$_name' but MAB_BUILD_ARG_$_name is not set"
    build_arg_count=$((build_arg_count + 1))
done
unset IFS

# ---------------------------------------------------------------- environment checks
for _cmd in git docker tr sed grep cut tail mktemp mkfifo tee uname dirname date; do
    command -v "$_cmd" >/dev/null 2>&1 || die_env "required command '$_cmd' not found in PATH"
done
if [ -n "$MAB_GIT_CREDENTIALS_SECRET_ARN" ] || [ "$MAB_REGISTRY_AUTH" = ecr ]; then
    command -v aws >/dev/null 2>&1 || die_env "required command 'aws' (AWS CLI v2) not found in PATH"
    command -v base64 >/dev/null 2>&1 || die_env "required command 'base64' not found in PATH"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/mab-build.XXXXXX") || die_env "cannot create a work directory in ${TMPDIR:-/tmp}"
cleanup() {
    if [ -n "$child" ]; then
        kill -TERM "$child" 2>/dev/null
    fi
    if [ -n "$work" ] && [ -d "$work" ]; then
        rm -rf "$work"
    fi
}
on_signal() {
    trap - TERM INT HUP
    if [ -n "$child" ]; then
        kill -TERM "$child" 2>/dev/null
        wait "$child" 2>/dev/null
        child=''
    fi
    fail 143 "terminated by signal while $step"
}
trap cleanup EXIT
trap on_signal TERM INT HUP

# Isolate git and docker from whatever the image or host had configured.
mkdir -p "$work/home" "$work/docker-config" || die_env "cannot create directories in $work"
HOME=$work/home
DOCKER_CONFIG=$work/docker-config
GIT_TERMINAL_PROMPT=0
GIT_CONFIG_NOSYSTEM=1
GIT_SSH_COMMAND='ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o ConnectTimeout=60 -o ServerAliveInterval=30'
# a stalled https transfer (under 1 KB/s for 2 minutes) fails instead of hanging the job
GIT_HTTP_LOW_SPEED_LIMIT=1000
GIT_HTTP_LOW_SPEED_TIME=120
AWS_PAGER='' # AWS CLI v2 would pipe output to `less`
export HOME DOCKER_CONFIG GIT_TERMINAL_PROMPT GIT_CONFIG_NOSYSTEM GIT_SSH_COMMAND \
    GIT_HTTP_LOW_SPEED_LIMIT GIT_HTTP_LOW_SPEED_TIME AWS_PAGER
unset GIT_TRACE GIT_TRACE_CURL GIT_TRACE_PACKET GIT_TRACE_SETUP GIT_CURL_VERBOSE \
    GIT_CONFIG_COUNT GIT_CONFIG_PARAMETERS GIT_ASKPASS SSH_ASKPASS GIT_DIR GIT_WORK_TREE
case $git_scheme in
    file) GIT_ALLOW_PROTOCOL=file:https:ssh ;;
    *) GIT_ALLOW_PROTOCOL=https:ssh ;;
esac
export GIT_ALLOW_PROTOCOL

# run_step LOGFILE CMD ARGS...: run a command in the background (so SIGTERM is handled at
# once), stream its stdout+stderr to our stdout and into LOGFILE; return its exit status.
run_step() {
    _log=$1
    shift
    _fifo="$work/fifo.$$"
    rm -f "$_fifo"
    mkfifo "$_fifo" || die_env "cannot create a fifo in $work"
    : >"$_log"
    tee -a "$_log" <"$_fifo" &
    _tee=$!
    "$@" >"$_fifo" 2>&1 &
    child=$!
    wait "$child"
    _rc=$?
    child=''
    wait "$_tee"
    rm -f "$_fifo"
    return "$_rc"
}

# git_run ARGS...: exec git, with the token header in the environment of git only.
# Only called as the background command of run_step (a subshell): the exports stay in that
# subshell, and exec makes git itself the process that SIGTERM reaches.
git_run() {
    if [ -n "$auth_header" ]; then
        GIT_CONFIG_COUNT=1
        GIT_CONFIG_KEY_0=$auth_key
        GIT_CONFIG_VALUE_0=$auth_header
        export GIT_CONFIG_COUNT GIT_CONFIG_KEY_0 GIT_CONFIG_VALUE_0
    fi
    exec git "$@"
}

# --- Docker reachable?
step='checking the Docker daemon'
if ! docker version --format '{{.Server.Version}}' >"$work/docker-version.log" 2>&1; then
    die_env "Docker daemon not reachable at ${DOCKER_HOST:-unix:///var/run/docker.sock} (is the host socket mounted?): $(last_line "$work/docker-version.log")"
fi
server_version=$(tail -n 1 "$work/docker-version.log")

# --- the builder image this job runs in (the dev.multiarch.builder-image label)
# find_builder_image: sets builder_image to the first RepoDigest (repo@sha256:...) of this
# container's image, else to its image id (sha256:...); or leaves it empty and says why in
# builder_image_why. Never fails the build. This container's id: the files Docker bind-mounts
# into it (/etc/hostname, /etc/resolv.conf, /etc/hosts) come from
# <data-root>/containers/<64 hex id>/, which /proc/self/mountinfo shows; else $HOSTNAME (Docker
# sets it to the id's first 12 characters unless the container got a hostname of its own).
find_builder_image() {
    builder_image=''
    _self=$(sed -n \
        -e 's|^.*/containers/\([0-9a-f]\{64\}\)/hostname .*$|\1|p' \
        -e 's|^.*/containers/\([0-9a-f]\{64\}\)/resolv\.conf .*$|\1|p' \
        -e 's|^.*/containers/\([0-9a-f]\{64\}\)/hosts .*$|\1|p' /proc/self/mountinfo 2>/dev/null)
    _self=${_self%%"$nl"*}
    _from='/proc/self/mountinfo'
    if [ -z "$_self" ]; then
        # shellcheck disable=SC3028 # the environment variable Docker sets, not bash's
        _self=${HOSTNAME:-}
        _from="\$HOSTNAME"
    fi
    if [ -z "$_self" ]; then
        builder_image_why="no container id in /proc/self/mountinfo and no \$HOSTNAME"
        return 0
    fi
    _id=$(docker container inspect --format '{{.Image}}' "$_self" 2>/dev/null) || _id=''
    if ! matches '^sha256:[0-9a-f]{64}$' "$_id"; then
        builder_image_why="docker container inspect $_self (from $_from) gave no image id"
        return 0
    fi
    _digests=$(docker image inspect --format '{{join .RepoDigests " "}}' "$_id" 2>/dev/null) || _digests=''
    builder_image=$_id
    for _d in $_digests; do
        if matches '^[^@]+@sha256:[0-9a-f]{64}$' "$_d"; then
            builder_image=$_d
            break
        fi
    done
}
find_builder_image
if [ -n "$builder_image" ]; then
    log "builder image $builder_image (label dev.multiarch.builder-image)"
else
    log "builder image not found ($builder_image_why): the image gets no dev.multiarch.builder-image label"
fi

# --- host architecture
host_machine=$(uname -m)
case $host_machine in
    x86_64 | amd64) host_arch=amd64 ;;
    aarch64 | arm64 | armv8*) host_arch=arm64 ;;
    armv7* | armv6* | armv5* | arm) host_arch=arm ;;
    i386 | i486 | i586 | i686) host_arch=386 ;;
    ppc64le) host_arch=ppc64le ;;
    s390x) host_arch=s390x ;;
    riscv64) host_arch=riscv64 ;;
    mips64) host_arch=mips64le ;;
    *) host_arch=$host_machine ;;
esac
if [ "$host_arch" != "$plat_arch" ]; then
    if [ "$MAB_ALLOW_EMULATION" = true ]; then
        log "host is $host_arch ($host_machine), building $MAB_PLATFORM: MAB_ALLOW_EMULATION=true, not checking"
    else
        die_env "host architecture is $host_arch (uname -m: $host_machine) but MAB_PLATFORM is $MAB_PLATFORM: this job queue's compute environment is not native for it (set MAB_ALLOW_EMULATION=true to build anyway)"
    fi
fi

# --- which builder does this docker CLI drive?
if docker buildx version >"$work/buildx.log" 2>&1; then
    builder=buildx
else
    client_version=$(docker version --format '{{.Client.Version}}' 2>/dev/null)
    client_major=${client_version%%.*}
    case $client_major in
        '' | *[!0-9]*) builder=classic ;;
        *)
            if [ "$client_major" -lt 23 ]; then
                builder=buildkit # the BuildKit built into docker CLI < 23 (DOCKER_BUILDKIT=1)
            else
                builder=classic
            fi
            ;;
    esac
fi

# --- which layer cache can this engine read and write? (see "The layer cache" above)
# engine_has_containerd_store: the engine stores images in containerd (daemon.json features
# containerd-snapshotter), so its BuildKit can export a registry cache.
engine_has_containerd_store() {
    docker info --format '{{range .DriverStatus}}{{index . 0}}={{index . 1}};{{end}}' 2>/dev/null |
        grep -q 'driver-type=io.containerd.snapshotter'
}
cache_path=none
if [ "$MAB_CACHE_MODE" = off ]; then
    cache_note='off (MAB_CACHE_MODE=off): no cache flags'
elif [ "$builder" = classic ]; then
    cache_note="none: the classic builder cannot read or write a registry cache (MAB_CACHE_MODE=$MAB_CACHE_MODE not applied)"
elif [ "$builder" = buildx ] && engine_has_containerd_store; then
    cache_path=registry
    cache_note="registry cache $MAB_CACHE_IMAGE, mode $MAB_CACHE_MODE (containerd image store)"
else
    cache_path=inline
    cache_note="inline cache $MAB_CACHE_IMAGE (final stage only)"
    if [ "$MAB_CACHE_MODE" = max ]; then
        cache_note="$cache_note: this engine cannot export a registry cache (mode max needs buildx and the containerd image store), falling back to the inline cache"
    fi
fi

log "platform $MAB_PLATFORM on host $host_arch, Docker engine $server_version, builder $builder"
log "source $MAB_GIT_URL revision $MAB_GIT_REVISION, context $MAB_CONTEXT_DIR, dockerfile $MAB_DOCKERFILE, target ${MAB_TARGET:-(the last stage)}, $build_arg_count build arg(s)"
log "target $MAB_IMAGE (registry auth: $MAB_REGISTRY_AUTH)"
log "build uid $MAB_BUILD_UID, inputs $MAB_INPUT_HASH"
log "cache: $cache_note"

# --- git credentials (never printed, never in argv)
if [ -n "$MAB_GIT_CREDENTIALS_SECRET_ARN" ]; then
    step='reading the git credentials secret'
    log "reading the git token from Secrets Manager"
    secret_value=$(aws secretsmanager get-secret-value --region "$secret_region" \
        --secret-id "$MAB_GIT_CREDENTIALS_SECRET_ARN" --query SecretString --output text \
        2>"$work/secret.err" </dev/null)
    _rc=$?
    [ "$_rc" -eq 0 ] ||
        die "could not read secret $MAB_GIT_CREDENTIALS_SECRET_ARN: $(last_line "$work/secret.err")"
    case $secret_value in
        '' | None) die "secret $MAB_GIT_CREDENTIALS_SECRET_ARN has no SecretString (a GitHub token is expected)" ;;
        *[!A-Za-z0-9_.~+/=:-]*) die "secret $MAB_GIT_CREDENTIALS_SECRET_ARN: SecretString must be the token itself (one line, no spaces or JSON)" ;;
    esac
    # printf is a shell builtin: the token goes to base64 through a pipe, not argv.
    _b64=$(printf 'x-access-token:%s' "$secret_value" | base64 | tr -d '\n')
    [ -n "$_b64" ] || die "could not encode the git token"
    auth_header="Authorization: Basic $_b64"
    unset _b64
    # Send the header only to the repository's host (not to redirects or other hosts).
    _hostport=${MAB_GIT_URL#https://}
    _hostport=${_hostport%%/*}
    auth_key="http.https://$_hostport/.extraHeader"
fi

# --- fetch the revision (only what the build needs) and check it out
# 1. Resolve MAB_GIT_REVISION with `git ls-remote` (branch, then tag, peeled; else a full SHA
#    is itself), without cloning anything.
# 2. Path "depth-1": fetch exactly that commit at depth 1 (`git fetch --depth 1 origin <sha>`).
#    Servers may refuse a want of an unadvertised SHA (protocol v0 without
#    uploadpack.allowReachableSHA1InWant, dumb http) or shallow fetches:
# 3. path "blobless": a blobless partial clone (--filter=blob:none) of that branch or tag (all
#    branches and tags when the revision is a commit SHA); blobs come at checkout;
# 4. path "full": the full clone of that branch or tag (all branches and tags for a SHA).
# Each path starts from an empty repository. Which path was taken is logged.
src="$work/src"
tab=$(printf '\t')
step='cloning the repository'
clone_start=$(now_cs)
log "fetching $MAB_GIT_URL"

# fresh_repo: an empty repository in $src with the remote origin, and cd into it.
fresh_repo() {
    cd "$work" || die "cannot enter $work"
    rm -rf "$src"
    git -c init.defaultBranch=mab init --quiet -- "$src" >"$work/init.log" 2>&1 ||
        die "git init of the clone directory failed: $(last_line "$work/init.log")"
    cd "$src" || die "cannot enter the clone directory"
    git remote add origin "$MAB_GIT_URL" >"$work/remote.log" 2>&1 ||
        die "git remote add of $MAB_GIT_URL failed: $(last_line "$work/remote.log")"
}

# run_capture OUT ERR CMD ARGS...: like run_step, but stdout and stderr go to files only.
run_capture() {
    _out=$1
    _err=$2
    shift 2
    "$@" >"$_out" 2>"$_err" &
    child=$!
    wait "$child"
    _rc=$?
    child=''
    return "$_rc"
}

fresh_repo
step='resolving the revision'
rev=$MAB_GIT_REVISION
if ! run_capture "$work/ls-remote.out" "$work/ls-remote.err" \
    git_run ls-remote origin "refs/heads/$rev" "refs/tags/$rev" "refs/tags/$rev^{}"; then
    cat "$work/ls-remote.err"
    die "git clone of $MAB_GIT_URL failed: $(last_line "$work/ls-remote.err")"
fi
ls_branch=''
ls_tag=''
ls_peeled=''
while IFS=$tab read -r _sha _ref; do
    case $_ref in
        "refs/heads/$rev") ls_branch=$_sha ;;
        "refs/tags/$rev") ls_tag=$_sha ;;
        "refs/tags/$rev^{}") ls_peeled=$_sha ;;
    esac
done <"$work/ls-remote.out"
commit=''
rev_kind=''
if [ -n "$ls_branch" ]; then
    commit=$ls_branch
    rev_kind=branch
    set -- "+refs/heads/$rev:refs/remotes/origin/$rev"
elif [ -n "$ls_tag" ]; then
    commit=${ls_peeled:-$ls_tag}
    rev_kind=tag
    set -- "+refs/tags/$rev:refs/tags/$rev"
else
    if matches '^[0-9a-fA-F]{40}$' "$rev"; then
        commit=$(printf '%s\n' "$rev" | tr 'A-F' 'a-f')
        rev_kind=commit
    elif matches '^[0-9a-fA-F]{4,39}$' "$rev"; then
        rev_kind=abbrev
    else
        die "git revision '$rev' not found in $MAB_GIT_URL (no such branch, tag or commit)"
    fi
    set -- '+refs/heads/*:refs/remotes/origin/*' '+refs/tags/*:refs/tags/*'
fi
# the refspecs of the fallback paths: this branch or tag, else every branch and tag
fetch_refs_n=$#
fetch_ref_1=$1
fetch_ref_2=${2:-}
what="$rev_kind $rev"
[ "$fetch_refs_n" -eq 1 ] || what='all branches and tags'

# check_commit: a found commit is a full 40-hex SHA, and a full-SHA revision is itself.
check_commit() {
    matches '^[0-9a-f]{40}$' "$commit" ||
        die "git revision '$rev' resolved to '$commit', which is not a full 40-hex commit SHA (a SHA-256 repository?)"
    if matches '^[0-9a-fA-F]{40}$' "$rev"; then
        _want=$(printf '%s\n' "$rev" | tr 'A-F' 'a-f')
        [ "$commit" = "$_want" ] ||
            die "MAB_GIT_REVISION is the commit SHA $_want but it resolved to commit $commit (a branch or tag with that name?)"
    fi
}
if [ "$rev_kind" = commit ]; then
    check_commit
    log "revision $rev is a full commit SHA (no branch or tag has that name)"
elif [ -n "$commit" ]; then
    check_commit
    log "revision $rev is $rev_kind $rev at commit $commit (git ls-remote)"
fi

# has_commit SHA: the commit is in the local repository
has_commit() {
    git rev-parse --verify --quiet "$1^{commit}" >/dev/null 2>&1
}

# fetch_history NAME [FETCH-OPTIONS...]: fetch the branch/tag (or all) into a fresh repository;
# returns 1 if the fetch failed (try the next path); dies if it worked but the revision is not
# there.
fetch_history() {
    _name=$1
    shift
    fresh_repo
    if [ "$fetch_refs_n" -eq 1 ]; then
        run_step "$work/fetch-$_name.log" git_run fetch --no-tags "$@" origin "$fetch_ref_1" || return 1
    else
        run_step "$work/fetch-$_name.log" git_run fetch --no-tags "$@" origin "$fetch_ref_1" "$fetch_ref_2" || return 1
    fi
    if [ -n "$commit" ]; then
        has_commit "$commit" && return 0
        if [ "$rev_kind" = commit ]; then
            # a commit not reachable from any branch or tag (e.g. a pull request head)
            log "commit $commit is not on a branch or tag; fetching it"
            if run_step "$work/fetch-$_name-sha.log" git_run fetch --no-tags "$@" origin "$commit" &&
                has_commit "$commit"; then
                return 0
            fi
        fi
    else
        # an abbreviated SHA: only the history can resolve it
        commit=$(git rev-parse --verify --quiet "$rev^{commit}" 2>/dev/null) || commit=''
        if [ -n "$commit" ]; then
            check_commit
            return 0
        fi
    fi
    die "git revision '$rev' not found in $MAB_GIT_URL (no such branch, tag or commit)"
}

clone_path=''
if [ -n "$commit" ]; then
    log "fetching commit $commit at depth 1"
    if run_step "$work/fetch-depth1.log" git_run fetch --depth 1 --no-tags origin "$commit" &&
        has_commit "$commit"; then
        clone_path='depth-1 fetch by SHA'
        log "fetched commit $commit at depth 1 (fetch by SHA)"
    else
        log "the server did not serve commit $commit at depth 1 (fetch by SHA refused?): $(last_line "$work/fetch-depth1.log"); falling back to a blobless partial clone"
    fi
else
    log "revision $rev is not a branch or tag: an abbreviated SHA needs the history, not fetching by SHA"
fi
# checkout LOGNAME: check out $commit, through git_run: a partial clone fetches the blobs it
# needs here (by SHA: a server that refuses fetch by SHA refuses these too)
checkout() {
    step='checking out the revision'
    run_step "$work/$1.log" git_run -c advice.detachedHead=false checkout --quiet --detach "$commit"
}
if [ -z "$clone_path" ] && [ -f "$work/fetch-depth1.log" ] &&
    grep -q 'dumb http transport' "$work/fetch-depth1.log"; then
    # the dumb protocol has no filter (and git's lazy fetches over it recurse): go to the full clone
    log "the server speaks the dumb http protocol: no partial clone; falling back to a full clone of $what"
elif [ -z "$clone_path" ]; then
    log "fetching $what as a blobless partial clone (--filter=blob:none)"
    # GIT_NO_LAZY_FETCH (git >= 2.45): the fetch itself must not fetch missing objects one by one
    GIT_NO_LAZY_FETCH=1
    export GIT_NO_LAZY_FETCH
    _ok=yes
    fetch_history blobless --filter=blob:none || _ok=no
    unset GIT_NO_LAZY_FETCH
    if [ "$_ok" = no ]; then
        log "the blobless partial clone failed: $(last_line "$work/fetch-blobless.log"); falling back to a full clone of $what"
    elif ! checkout checkout-blobless; then
        log "the checkout of the blobless partial clone failed (missing blobs not served by SHA?): $(last_line "$work/checkout-blobless.log"); falling back to a full clone of $what"
    else
        clone_path='blobless partial clone'
        log "fetched $what as a blobless partial clone (fallback)"
    fi
fi
if [ -z "$clone_path" ]; then
    step='cloning the repository'
    fetch_history full || die "git clone of $MAB_GIT_URL failed: $(last_line "$work/fetch-full.log")"
    clone_path='full clone'
    log "fetched $what in full (full clone fallback)"
fi
check_commit
if [ "$clone_path" != 'blobless partial clone' ] && ! checkout checkout; then
    die "git checkout of $commit failed: $(last_line "$work/checkout.log")"
fi
log "revision $rev is commit $commit"
if [ -f .gitmodules ]; then
    step='updating submodules'
    log "updating submodules"
    if ! run_step "$work/submodules.log" git_run submodule update --init --recursive; then
        die "git submodule update failed: $(last_line "$work/submodules.log")"
    fi
fi
clone_secs=$(secs_since "$clone_start")
log "clone took ${clone_secs}s (path: $clone_path)"
# The token is not needed any more: drop it before anything else runs.
auth_header=''
auth_key=''
secret_value=''

# --- context and Dockerfile exist, inside the checkout
ctx="$src/$MAB_CONTEXT_DIR"
[ -d "$ctx" ] || die "context directory '$MAB_CONTEXT_DIR' does not exist at commit $commit"
ctx_real=$(cd -P -- "$ctx" && pwd) || die "cannot enter context directory '$MAB_CONTEXT_DIR'"
src_real=$(cd -P -- "$src" && pwd) || die "cannot enter the clone directory"
case "$ctx_real/" in
    "$src_real"/*) ;;
    *) die "context directory '$MAB_CONTEXT_DIR' points outside the repository" ;;
esac
dockerfile="$src/$MAB_DOCKERFILE"
[ -f "$dockerfile" ] || die "Dockerfile '$MAB_DOCKERFILE' does not exist at commit $commit"
df_dir=$(dirname -- "$dockerfile")
df_real=$(cd -P -- "$df_dir" && pwd) || die "cannot enter the directory of '$MAB_DOCKERFILE'"
case "$df_real/" in
    "$src_real"/*) ;;
    *) die "Dockerfile '$MAB_DOCKERFILE' points outside the repository" ;;
esac
cd "$work" || die "cannot enter $work"

# --- registry login (before the build: a base image may live in the same registry)
if [ "$MAB_REGISTRY_AUTH" = ecr ]; then
    step='logging in to the registry'
    log "logging in to $image_registry (ECR, region $ecr_region)"
    _pw=$(aws ecr get-login-password --region "$ecr_region" 2>"$work/ecr.err" </dev/null) ||
        die "aws ecr get-login-password failed for region $ecr_region: $(last_line "$work/ecr.err")"
    [ -n "$_pw" ] || die "aws ecr get-login-password returned nothing for region $ecr_region"
    if ! printf '%s' "$_pw" | docker login --username AWS --password-stdin "$image_registry" >"$work/login.log" 2>&1; then
        unset _pw
        die "docker login to $image_registry failed: $(last_line "$work/login.log")"
    fi
    unset _pw
fi

# --- build
step="building $MAB_PLATFORM"
case $builder in
    buildkit)
        DOCKER_BUILDKIT=1
        export DOCKER_BUILDKIT
        ;;
    classic)
        DOCKER_BUILDKIT=0
        export DOCKER_BUILDKIT
        log "warning: no BuildKit in this docker CLI: the classic builder does not set TARGETARCH and its cache is not per platform"
        ;;
esac
buildx_provenance=no
if [ "$builder" = buildx ] && docker buildx build --help 2>/dev/null | grep -q -- '--provenance'; then
    buildx_provenance=yes
fi

# docker_build LOG FLAG...: build MAB_IMAGE from the checkout with the extra FLAGs (the cache
# flags), output streamed and kept in LOG. Every build of this job has the same arguments
# otherwise, so a second build finds all its steps in the engine's cache.
docker_build() {
    _build_log=$1
    shift
    case $builder in
        buildx)
            if [ "$buildx_provenance" = yes ]; then
                set -- --provenance=false "$@"
            fi
            set -- buildx build --progress=plain --load "$@"
            ;;
        buildkit) set -- build --progress=plain "$@" ;;
        classic) set -- build "$@" ;;
    esac
    set -- "$@" --platform "$MAB_PLATFORM" --file "$dockerfile" --tag "$MAB_IMAGE" \
        --label "org.opencontainers.image.revision=$commit" \
        --label "org.opencontainers.image.source=$MAB_GIT_URL" \
        --label "dev.multiarch.build-uid=$MAB_BUILD_UID" \
        --label "dev.multiarch.inputs=$MAB_INPUT_HASH"
    if [ -n "$builder_image" ]; then
        set -- "$@" --label "dev.multiarch.builder-image=$builder_image"
    fi
    if [ -n "$MAB_TARGET" ]; then
        set -- "$@" --target "$MAB_TARGET"
    fi
    _val=''
    IFS=' '
    for _name in $MAB_BUILD_ARG_NAMES; do
        build_arg_value "$_name"
        set -- "$@" --build-arg "$_name=$_val"
    done
    unset IFS
    set -- "$@" "$ctx"
    run_step "$_build_log" docker "$@"
}

# The cache flags of the build: read the cache (and, inline, write it into the image).
case $cache_path in
    registry) set -- --cache-from "type=registry,ref=$MAB_CACHE_IMAGE" ;;
    inline)
        if [ "$builder" = buildx ]; then
            set -- --cache-from "type=registry,ref=$MAB_CACHE_IMAGE" --build-arg BUILDKIT_INLINE_CACHE=1
        else
            set -- --cache-from "$MAB_CACHE_IMAGE" --build-arg BUILDKIT_INLINE_CACHE=1
        fi
        ;;
    none) set -- ;;
esac
log "docker build for $MAB_PLATFORM"
build_start=$(now_cs)
if ! docker_build "$work/build.log" "$@"; then
    [ "$cache_path" != none ] || die "docker build failed for $MAB_PLATFORM: $(last_line "$work/build.log")"
    # A broken cache must not fail the build: once more without reading it. Steps that
    # succeeded are in the engine's own cache now, so this re-runs only what failed.
    log "the build with the layer cache failed: $(last_line "$work/build.log"); building once more without reading the cache"
    if [ "$cache_path" = inline ]; then
        set -- --build-arg BUILDKIT_INLINE_CACHE=1
    else
        set --
    fi
    docker_build "$work/build-nocache.log" "$@" ||
        die "docker build failed for $MAB_PLATFORM: $(last_line "$work/build-nocache.log")"
fi

# --- the image really is for the requested platform
step='checking the built image'
built=$(docker image inspect --format '{{.Os}}/{{.Architecture}}' "$MAB_IMAGE" 2>"$work/inspect.err") ||
    die "docker image inspect of $MAB_IMAGE failed after the build: $(last_line "$work/inspect.err")"
if [ "$built" != "linux/$plat_arch" ]; then
    die "the built image is $built, not $MAB_PLATFORM (a base image for the wrong platform, or the build cache of another platform?)"
fi
if [ -n "$plat_variant" ]; then
    built_variant=$(docker image inspect --format '{{.Variant}}' "$MAB_IMAGE" 2>/dev/null) || built_variant=''
    if [ -n "$built_variant" ] && [ "$built_variant" != "$plat_variant" ]; then
        die "the built image is $built/$built_variant, not $MAB_PLATFORM"
    fi
fi
build_secs=$(secs_since "$build_start")
log "build took ${build_secs}s"

# --- push (retried: registries have transient failures)
step="pushing $MAB_IMAGE"
push_start=$(now_cs)
_try=1
while :; do
    log "pushing $MAB_IMAGE (attempt $_try)"
    if run_step "$work/push.log" docker push "$MAB_IMAGE"; then
        break
    fi
    if [ "$_try" -ge 3 ]; then
        die "docker push of $MAB_IMAGE failed: $(last_line "$work/push.log")"
    fi
    sleep $((_try * 5)) &
    child=$!
    wait "$child"
    child=''
    _try=$((_try + 1))
done

step='reading the pushed digest'
digest=$(sed -n 's/.*digest: \(sha256:[0-9a-f]\{64\}\).*/\1/p' "$work/push.log" | tail -n 1)
if [ -z "$digest" ]; then
    digest=$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$MAB_IMAGE" 2>/dev/null |
        grep -F -- "$image_repo@" | sed -n 's/.*@\(sha256:[0-9a-f]\{64\}\)$/\1/p' | tail -n 1)
fi
[ -n "$digest" ] || die "pushed $MAB_IMAGE but could not read its digest from docker push or docker inspect"

log "pushed $image_repo@$digest"
push_secs=$(secs_since "$push_start")
log "push took ${push_secs}s"

# --- write the layer cache (after the push: a failure here is a warning, never a failed build)
step="writing the layer cache $MAB_CACHE_IMAGE"
cache_start=$(now_cs)
case $cache_path in
    registry)
        log "writing the layer cache $MAB_CACHE_IMAGE (mode $MAB_CACHE_MODE; every step is cached locally now)"
        if docker_build "$work/cache-write.log" --cache-to \
            "type=registry,ref=$MAB_CACHE_IMAGE,mode=$MAB_CACHE_MODE,image-manifest=true,oci-mediatypes=true"; then
            log "wrote the layer cache $MAB_CACHE_IMAGE in $(secs_since "$cache_start")s"
        else
            log "warning: could not write the layer cache $MAB_CACHE_IMAGE (the image is pushed; the next build is slower): $(last_line "$work/cache-write.log")"
        fi
        ;;
    inline)
        log "writing the layer cache $MAB_CACHE_IMAGE (the image with its inline cache)"
        if docker tag "$MAB_IMAGE" "$MAB_CACHE_IMAGE" >"$work/cache-write.log" 2>&1 &&
            run_step "$work/cache-write.log" docker push "$MAB_CACHE_IMAGE"; then
            log "wrote the layer cache $MAB_CACHE_IMAGE in $(secs_since "$cache_start")s"
        else
            log "warning: could not write the layer cache $MAB_CACHE_IMAGE (the image is pushed; the next build is slower): $(last_line "$work/cache-write.log")"
        fi
        docker image rm "$MAB_CACHE_IMAGE" >/dev/null 2>&1 || true
        ;;
esac

# Untag locally (the pushed image is in the registry; keep the Batch host's disk tidy).
docker image rm "$MAB_IMAGE" >/dev/null 2>&1 || true
log "times: clone ${clone_secs}s ($clone_path), build ${build_secs}s, push ${push_secs}s"
# The last two stdout lines, read by the controller from the job's log: keep them last.
printf 'commit: %s\ndigest: %s\n' "$commit" "$digest"

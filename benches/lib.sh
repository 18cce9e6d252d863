# shellcheck shell=bash
# benches/lib.sh - what the shell benches share, sourced after BENCH_NAME is set:
# messages, the clock build.sh uses, and the local stack they run on.

say() { printf '%s: %s\n' "$BENCH_NAME" "$*"; }
die() {
    printf '%s: %s\n' "$BENCH_NAME" "$*" >&2
    exit 1
}
now_cs() { # the monotonic clock build.sh uses, in centiseconds
    local up _idle
    read -r up _idle </proc/uptime
    echo $((10#${up%.*}${up#*.}))
}
secs() { # CENTISECONDS -> S.CC
    printf '%d.%02d' $(($1 / 100)) $(($1 % 100))
}
median() { # VALUES... (an odd number of them)
    printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# use_local_stack: the local stack's settings (MAB_*), and IMAGE (the builder image), REGISTRY and
# ARCH (the host's Docker architecture), or die saying what is missing.
# shellcheck disable=SC2034 # IMAGE, REGISTRY and ARCH are for the bench that sources this
use_local_stack() {
    local stack_env
    stack_env=$("$REPO/e2e/local-stack" env) || die "e2e/local-stack env failed (run e2e/local-stack up)"
    eval "$stack_env"
    IMAGE=${MAB_BUILDER_IMAGE:-mab-local-builder:latest}
    REGISTRY=${MAB_REGISTRY:-127.0.0.1:5000}
    [ -S "$DOCKER_SOCK" ] || die "no Docker socket at $DOCKER_SOCK (run e2e/local-stack up)"
    docker image inspect "$IMAGE" >/dev/null 2>&1 || die "builder image $IMAGE not found (run e2e/local-stack up)"
    case $(uname -m) in
        x86_64 | amd64) ARCH=amd64 ;;
        aarch64 | arm64) ARCH=arm64 ;;
        *) die "unsupported host architecture $(uname -m)" ;;
    esac
}

# report_ratio NAME_A NAME_B RATIO_NAME A B K TARGET DETAIL: print the two times (centiseconds A
# and B) and A/B as `bench` lines, then whether A/B <= TARGET (checked as K * A <= B, K = 1 /
# TARGET, in whole numbers); exit 1 when it is not met.
report_ratio() {
    local name_a=$1 name_b=$2 ratio_name=$3 a=$4 b=$5 k=$6 target=$7 detail=$8 ratio
    [ "$b" -gt 0 ] || die "$name_b took 0.00 s: cannot make a ratio"
    ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", a / b }')
    echo "bench $name_a $(secs "$a") s"
    echo "bench $name_b $(secs "$b") s"
    echo "bench $ratio_name $ratio ratio"
    if [ $((k * a)) -le "$b" ]; then
        say "target $ratio_name <= $target met: $(secs "$a") s / $(secs "$b") s = $ratio ($detail)"
    else
        say "target $ratio_name <= $target NOT met: $(secs "$a") s / $(secs "$b") s = $ratio ($detail)"
        exit 1
    fi
}

# shellcheck shell=bash
# e2e/tap.sh - the result lines of the shell tests, sourced by them (bash).
#   ok DESCRIPTION / not_ok DESCRIPTION [DETAIL...] / check DESCRIPTION COMMAND...
#   tap_summary: prints "N passed, M failed" and returns 1 when anything failed
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
tap_summary() {
    echo
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}
